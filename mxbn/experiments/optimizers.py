"""`optimizers`: the "tricks of training" comparison of SGD, Momentum, AdaGrad and Adam.

(a) Trajectories on f(x, y) = x^2/20 + y^2 from (-7, 2), 30 steps, with the
chapter's learning rates; (b) training loss of an MLP 784-100x4-10 (ReLU, He
init) for 2000 iterations of batch 128 per optimizer.
Claims: SGD zig-zags on (a); AdaGrad, Adam and Momentum train the MLP faster than SGD.
"""
import os

import numpy as np
from mxnet import nd

from ..optim import make_optimizer
from ..plot import save_figure, subplots
from . import spread
from .result import StudyResult, describe, verdict
from .common import mlp_loss_curves, plot_loss_bands, seed_list, smooth, study_datasets

TITLE = "Optimizers: SGD, Momentum, AdaGrad, Adam"
# (name, lr on f(x, y), lr for the MLP): the chapter's values
OPTIMIZERS = [("sgd", 0.95, 0.01), ("momentum", 0.1, 0.01), ("adagrad", 1.5, 0.01), ("adam", 0.3, 0.001)]
START, STEPS = (-7.0, 2.0), 30


def f(x, y):
    return x ** 2 / 20.0 + y ** 2


def trajectory(name, lr, steps=STEPS):
    """Points visited by mxbn.optim's optimizer on f from START (float32 parameters)."""
    params = {"x": nd.array([START[0]]), "y": nd.array([START[1]])}
    opt = make_optimizer(name, lr)
    state = opt.init(params)
    path = [START]
    for _ in range(steps):
        grads = {"x": params["x"] / 10.0, "y": 2.0 * params["y"]}
        opt.update(params, grads, state)
        path.append((float(params["x"].asscalar()), float(params["y"].asscalar())))
    return np.array(path, dtype=np.float64)


def sign_changes(values):
    steps = np.diff(values)
    return int(np.sum(np.sign(steps[1:]) * np.sign(steps[:-1]) < 0))


def run(out_dir, ctx, quick=False, log=print, seeds=1):
    os.makedirs(out_dir, exist_ok=True)
    seeds = seed_list(seeds)
    paths = {name: trajectory(name, lr) for name, lr, _ in OPTIMIZERS}
    fig, axes = subplots(2, 2, figsize=(10, 8))
    gx, gy = np.meshgrid(np.linspace(-10, 10, 200), np.linspace(-5, 5, 200))
    for ax, (name, lr, _) in zip(axes.flat, OPTIMIZERS):
        p = paths[name]
        ax.contour(gx, gy, f(gx, gy), levels=20, cmap="Greens", linewidths=0.7)
        ax.plot(p[:, 0], p[:, 1], "o-", color="red", markersize=3, label=f"{name} (lr {lr})")
        ax.plot(0, 0, "+", color="black", markersize=12)
        ax.set(xlim=(-10, 10), ylim=(-5, 5), xlabel="x", ylabel="y", title=f"{name}, lr {lr}, {STEPS} steps")
        ax.legend(loc="lower right")
    fig.suptitle("f(x, y) = x²/20 + y² from (-7, 2)")
    save_figure(fig, os.path.join(out_dir, "trajectories.png"))
    changes = {name: sign_changes(p[:, 1]) for name, p in paths.items()}
    claims = [verdict("SGD zig-zags on x²/20 + y² (its y-steps change sign at almost every step)",
                      changes["sgd"] >= STEPS - 2 and changes["sgd"] > max(changes[n] for n in changes if n != "sgd"),
                      f"y-step sign changes in {STEPS} steps (deterministic): "
                      + ", ".join(f"{n} {c}" for n, c in changes.items()),
                      dataset="f(x, y)", tutorial="figure: SGD zig-zags, the others curve towards (0, 0)")]

    iterations = 100 if quick else 2000
    figures, final_losses, loss_curves = ["trajectories.png"], {}, {}
    settings = {name: ("he", 0.01, lambda name=name, lr=lr: make_optimizer(name, lr)) for name, _, lr in OPTIMIZERS}
    datasets = study_datasets(ctx, limit_train=2000 if quick else None, limit_test=100, log=log)
    for dataset, curves in mlp_loss_curves(settings, iterations, seeds, datasets, log, "optimizers").items():
        figures.append(f"mlp_loss-{dataset}.png")
        plot_loss_bands(curves, {name: f"{name} (lr {lr})" for name, _, lr in OPTIMIZERS},
                        os.path.join(out_dir, figures[-1]), yscale="log",
                        title=f"MLP 784-100x4-10 on {dataset}, batch 128 ({len(seeds)} seed(s): mean and range)")
        final = {name: [float(smooth(c)[-1]) for c in cs] for name, cs in curves.items()}
        faster = [n for n in ("momentum", "adagrad", "adam") if spread.exceeds(final["sgd"], final[n])]
        claims.append(verdict(
            "AdaGrad, Adam and Momentum train the MLP faster than SGD", len(faster) == 3,
            f"final smoothed loss after {iterations} iterations: "
            + ", ".join(f"{n} {spread.fmt(v)}" for n, v in final.items())
            + f"; below SGD by the spread rule: {', '.join(faster) or 'none'}",
            partly=bool(faster) or any(spread.larger_in_every_seed(final["sgd"], final[n])
                                       for n in ("momentum", "adagrad", "adam")), dataset=dataset,
                                   tutorial="figure: SGD's loss curve above the others (MNIST)"))
        final_losses[dataset] = {n: spread.summary(v) for n, v in final.items()}
        loss_curves[dataset] = {n: [c.tolist() for c in cs] for n, cs in curves.items()}
    result = StudyResult(
        experiment="optimizers", title=TITLE, description=describe(__doc__), datasets=list(final_losses), quick=quick,
        seeds=seeds, claims=claims, figures=figures,
        measurements=dict(iterations=iterations, trajectories={n: p.tolist() for n, p in paths.items()},
                          y_sign_changes=changes, final_smoothed_loss=final_losses, loss_curves=loss_curves))
    return result.save(out_dir)
