"""`init`: weight initialisation, activation histograms and training speed.

(a) Activations of a 5-layer, 100-unit network (no bias) on 1000 standard-normal
inputs for weight std 1 and 0.01 and Xavier with sigmoid, Xavier with tanh,
He with ReLU; (b) training loss of an MLP 784-100x4-10 (ReLU, SGD lr 0.01,
batch 128, 2000 iterations) for std 0.01, Xavier and He.
Claims: std 1 saturates sigmoid at 0/1, std 0.01 collapses it to 0.5, Xavier/He
keep a spread; std 0.01 does not learn, He learns fastest.
"""
import math
import os

import numpy as np

from ..optim import SGD
from ..plot import save_figure, subplots
from . import spread
from .result import StudyResult, describe, verdict
from .common import mlp_loss_curves, plot_loss_bands, seed_list, smooth, study_datasets

TITLE = "Weight initialisation"
LAYERS, UNITS, SAMPLES = 5, 100, 1000
ACT = {"sigmoid": lambda z: 1 / (1 + np.exp(-z)), "tanh": np.tanh, "relu": lambda z: np.maximum(z, 0)}
SETTINGS = [("sigmoid", "std 1", lambda n: 1.0), ("sigmoid", "std 0.01", lambda n: 0.01),
            ("sigmoid", "Xavier", lambda n: math.sqrt(1 / n)), ("tanh", "Xavier", lambda n: math.sqrt(1 / n)),
            ("relu", "He", lambda n: math.sqrt(2 / n))]
INITS = (("std 0.01", "normal", 0.01), ("xavier", "xavier", 0.01), ("he", "he", 0.01))
SATURATED = 0.5   # "saturates": more than half of the activations below 0.05 or above 0.95 in every layer
COLLAPSED = 0.02  # "collapses to 0.5": activation std below this after the first layer
SPREAD_KEPT = 0.05
NO_LEARNING = 2.0  # smoothed loss above this after training: not learning (ln 10 = 2.30 is chance)


def activations(activation, std_of_fan_in, seed=0):
    """Activations of each layer (float64 NumPy, like the chapter's experiment)."""
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(SAMPLES, UNITS))
    out = []
    for _ in range(LAYERS):
        w = rng.normal(size=(UNITS, UNITS)) * std_of_fan_in(UNITS)
        h = ACT[activation](h @ w)
        out.append(h)
    return out


def activation_stats(seed):
    """Per setting, per layer: activation std and the fraction saturated (below 0.05 or above 0.95)."""
    acts = {f"{a} {name}": activations(a, std, seed) for a, name, std in SETTINGS}
    return acts, {label: dict(std=[float(h.std()) for h in layers],
                              saturated=[float(np.mean((h < 0.05) | (h > 0.95))) for h in layers])
                  for label, layers in acts.items()}


def _histograms(acts, path):
    fig, axes = subplots(len(SETTINGS), LAYERS, figsize=(14, 2.2 * len(SETTINGS)))
    for row, (label, layers) in zip(axes, acts.items()):
        for i, (ax, h) in enumerate(zip(row, layers)):
            rng = (0, 1) if label.startswith("sigmoid") else ((-1, 1) if label.startswith("tanh") else (0, 3))
            ax.hist(h.ravel(), bins=30, range=rng)
            ax.set_title(f"{label}: layer {i + 1}", fontsize=8)
            ax.set_xlabel("activation", fontsize=7)
            ax.set_yticks([])
    save_figure(fig, path)


def run(out_dir, ctx, quick=False, log=print, seeds=1):
    os.makedirs(out_dir, exist_ok=True)
    seeds = seed_list(seeds)
    per_seed = [activation_stats(seed) for seed in seeds]
    _histograms(per_seed[0][0], os.path.join(out_dir, "histograms.png"))   # the first seed's picture
    stats = {label: {k: [st[label][k] for _, st in per_seed] for k in ("std", "saturated")} for label in per_seed[0][1]}
    s1, s001 = stats["sigmoid std 1"], stats["sigmoid std 0.01"]
    keep = {k: [min(v) for v in stats[k]["std"]] for k in ("sigmoid Xavier", "tanh Xavier", "relu He")}
    numpy_net = "5 x 100 units on N(0, 1) inputs"
    claims = [
        verdict("std 1 saturates sigmoid activations at 0 and 1",
                spread.in_every_seed([min(v) > SATURATED for v in s1["saturated"]]),
                "fraction of activations below 0.05 or above 0.95, smallest over layers: "
                + spread.fmt([min(v) for v in s1["saturated"]], 2), dataset=numpy_net,
                tutorial="histograms piled at 0 and 1"),
        verdict("std 0.01 collapses sigmoid activations to 0.5",
                spread.in_every_seed([max(v[1:]) < COLLAPSED for v in s001["std"]]),
                "activation std, largest over layers 2-5: " + spread.fmt([max(v[1:]) for v in s001["std"]], 4),
                dataset=numpy_net, tutorial="histograms piled at 0.5"),
        verdict("Xavier (sigmoid, tanh) and He (ReLU) keep a spread in every layer",
                all(spread.in_every_seed([v > SPREAD_KEPT for v in vals]) for vals in keep.values()),
                "smallest per-layer activation std: " + ", ".join(f"{k} {spread.fmt(v)}" for k, v in keep.items()),
                dataset=numpy_net, tutorial="histograms spread over the range in every layer"),
    ]

    iterations = 100 if quick else 2000
    figures, final_losses, loss_curves = ["histograms.png"], {}, {}
    settings = {label: (init, scale, lambda: SGD(lr=0.01)) for label, init, scale in INITS}
    datasets = study_datasets(ctx, limit_train=2000 if quick else None, limit_test=100, log=log)
    for dataset, curves in mlp_loss_curves(settings, iterations, seeds, datasets, log, "init").items():
        figures.append(f"init_loss-{dataset}.png")
        plot_loss_bands(curves, {label: label for label in curves}, os.path.join(out_dir, figures[-1]),
                        title=f"MLP 784-100x4-10 ReLU, SGD lr 0.01, on {dataset} ({len(seeds)} seed(s))")
        final = {k: [float(smooth(c)[-1]) for c in cs] for k, cs in curves.items()}
        he_first = spread.exceeds(final["xavier"], final["he"]) and spread.exceeds(final["std 0.01"], final["he"])
        claims += [
            verdict("with std 0.01 the MLP does not learn (loss stays near ln 10 = 2.30)",
                    spread.in_every_seed([v > NO_LEARNING for v in final["std 0.01"]]),
                    f"final smoothed loss {spread.fmt(final['std 0.01'])} after {iterations} iterations",
                    dataset=dataset, tutorial="flat loss curve for std 0.01 (MNIST)"),
            verdict("He learns fastest", he_first,
                    "final smoothed loss " + ", ".join(f"{k} {spread.fmt(v)}" for k, v in final.items())
                    + f"; He below both by the spread rule: {'yes' if he_first else 'no'}",
                    partly=spread.exceeds(final["std 0.01"], final["he"])
                    or (spread.larger_in_every_seed(final["xavier"], final["he"])
                        and spread.larger_in_every_seed(final["std 0.01"], final["he"])), dataset=dataset,
                    tutorial="He's loss curve lowest, Xavier close (MNIST)"),
        ]
        final_losses[dataset] = {k: spread.summary(v) for k, v in final.items()}
        loss_curves[dataset] = {k: [c.tolist() for c in cs] for k, cs in curves.items()}
    result = StudyResult(
        experiment="init", title=TITLE, description=describe(__doc__), datasets=list(final_losses), quick=quick,
        seeds=seeds, claims=claims, figures=figures,
        measurements=dict(iterations=iterations, activation_stats=stats, final_smoothed_loss=final_losses,
                          loss_curves=loss_curves))
    return result.save(out_dir)
