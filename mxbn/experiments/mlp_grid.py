"""`mlp-grid`: the "batch normalization in practice" grid on an MLP.

MLP 784-128-128-128-10; weights drawn with std 0.05 ("small") or 10 ("large"),
SGD with lr 0.01 or 2, ReLU or sigmoid, each with and without BN after every
hidden affine; batch 60, 2000 iterations, test accuracy every 100 iterations.
Claims: with BN the net converges faster; without BN, large lr with ReLU fails;
large weights without BN fail while BN reaches ~80-93 %; large weights + large
lr + ReLU stalls even with BN.
"""
import itertools
import os

import numpy as np

from .. import models
from ..optim import SGD
from ..plot import save_figure, subplots
from .common import save_metrics, train_mlp_iterations, tutorial_dataset, verdict

TITLE = "BN in practice: an MLP over weight scale, learning rate and activation"
SIZES = (784, 128, 128, 128, 10)
SCALES = {"small": 0.05, "large": 10.0}
LRS = {"small lr": 0.01, "large lr": 2.0}
ACTIVATIONS = ("relu", "sigmoid")
EARLY = 500  # iteration at which "converges faster" is judged
FAIL = 0.5   # below this final test accuracy a run "fails" (chance is 0.1)


def settings():
    for (w, scale), (l, lr), act in itertools.product(SCALES.items(), LRS.items(), ACTIVATIONS):
        yield f"{w} weights, {l}, {act}", scale, lr, act


def run(out_dir, ctx, quick=False, log=print):
    os.makedirs(out_dir, exist_ok=True)
    iterations, every = (200, 50) if quick else (2000, 100)
    early = min(EARLY, iterations)
    dataset, source, train, test = tutorial_dataset(ctx, limit_train=3000 if quick else None,
                                                    limit_test=500 if quick else None)
    curves = {}
    for name, scale, lr, act in settings():
        for use_bn in (True, False):
            params, state = models.mlp_params(ctx, SIZES, use_bn=use_bn, init="normal", init_scale=scale, seed=0)
            net = lambda p, s, X, t, act=act: models.mlp(p, s, X, t, activation=act)  # noqa: E731
            _, accs = train_mlp_iterations(net, params, state, SGD(lr=lr), train, iterations, 60, 0,
                                           test=test, eval_every=every)
            curves[(name, use_bn)] = accs
            log(f"mlp-grid: {name}, {'BN' if use_bn else 'no BN'}: final test accuracy {accs[-1][1]:.4f}")

    fig, axes = subplots(2, 4, figsize=(16, 7), sharey=True)
    for ax, (name, *_rest) in zip(axes.flat, settings()):
        for use_bn, style in ((True, "-"), (False, "--")):
            its, acc = zip(*curves[(name, use_bn)])
            ax.plot(its, acc, style, label="with BN" if use_bn else "without BN")
        ax.set_title(name, fontsize=9)
        ax.set(xlabel="iteration", ylim=(0, 1))
        ax.legend(fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy")
    fig.suptitle(f"MLP 784-128-128-128-10 on {dataset}, batch 60")
    save_figure(fig, os.path.join(out_dir, "grid.png"))

    final = {f"{n} | {'BN' if bn else 'no BN'}": c[-1][1] for (n, bn), c in curves.items()}
    at_early = {(n, bn): dict(c)[early] if early in dict(c) else c[0][1] for (n, bn), c in curves.items()}
    names = [n for n, *_ in settings()]
    faster = [n for n in names if at_early[(n, True)] > at_early[(n, False)]]
    relu_big_lr = [n for n in names if "large lr" in n and "relu" in n]
    big_w = [n for n in names if n.startswith("large weights")]
    big_w_bn_ok = [n for n in big_w if not ("large lr" in n and "relu" in n)]
    stall = "large weights, large lr, relu"

    def f(n, bn):
        return final[f"{n} | {'BN' if bn else 'no BN'}"]

    claims = [
        verdict(f"with BN the net converges faster (higher test accuracy at iteration {early})",
                len(faster) == len(names), f"BN ahead in {len(faster)} of {len(names)} settings",
                partly=len(faster) >= len(names) // 2),
        verdict("without BN, large lr with ReLU fails", all(f(n, False) < FAIL for n in relu_big_lr),
                "; ".join(f"{n}: {f(n, False):.3f}" for n in relu_big_lr),
                partly=any(f(n, False) < FAIL for n in relu_big_lr)),
        verdict("large weights without BN fail, while BN reaches ~80-93 %",
                all(f(n, False) < FAIL for n in big_w) and all(f(n, True) >= 0.8 for n in big_w_bn_ok),
                "without BN: " + ", ".join(f"{f(n, False):.3f}" for n in big_w)
                + "; with BN (excluding large lr + ReLU): " + ", ".join(f"{f(n, True):.3f}" for n in big_w_bn_ok),
                partly=sum(f(n, False) < FAIL for n in big_w) >= 2 or any(f(n, True) >= 0.8 for n in big_w_bn_ok)),
        verdict("large weights + large lr + ReLU stalls even with BN", f(stall, True) < FAIL,
                f"final test accuracy with BN {f(stall, True):.3f}"),
    ]
    table = ["| setting | with BN | without BN |", "|---|---|---|"] + [
        f"| {n} | {f(n, True):.3f} | {f(n, False):.3f} |" for n in names]
    metrics = dict(description=__doc__.split("\n", 1)[1].strip() + "\n\nFinal test accuracy:\n\n"
                   + "\n".join(table), experiment="mlp-grid", title=TITLE, dataset=dataset, data_source=source,
                   quick=quick, iterations=iterations, final_test_acc=final,
                   curves={f"{n} | {'BN' if bn else 'no BN'}": c for (n, bn), c in curves.items()},
                   claims=claims, figures=["grid.png"])
    return save_metrics(out_dir, metrics)
