"""`mlp-grid`: the "batch normalization in practice" grid on an MLP.

MLP 784-128-128-128-10; weights drawn with std 0.05 ("small") or 10 ("large"),
SGD with lr 0.01 or 2, ReLU or sigmoid, each with and without BN after every
hidden affine; batch 60, 2000 iterations, test accuracy every 100 iterations.
Claims: with BN the net converges faster; without BN, large lr with ReLU fails;
large weights without BN fail while BN reaches ~80-93 %; large weights + large
lr + ReLU stalls even with BN.
"""
import functools
import itertools
import os

from .. import models
from ..jit import jit
from ..optim import SGD
from ..plot import plot_band, save_figure, subplots
from . import spread
from .result import StudyResult, describe, verdict
from .common import AccuracyRecorder, seed_list, study_datasets, train_mlp_iterations

TITLE = "BN in practice: an MLP over weight scale, learning rate and activation"
SIZES = (784, 128, 128, 128, 10)
SCALES = {"small": 0.05, "large": 10.0}
LRS = {"small lr": 0.01, "large lr": 2.0}
ACTIVATIONS = ("relu", "sigmoid")
EARLY = 500  # iteration at which "converges faster" is judged
FAIL = 0.5   # below this final test accuracy a run "fails" (chance is 0.1)
BN_REACHES = 0.8  # the study's "~80-93 %"


def settings():
    for (w, scale), (lr_name, lr), act in itertools.product(SCALES.items(), LRS.items(), ACTIVATIONS):
        yield f"{w} weights, {lr_name}, {act}", scale, lr, act


def _key(name, use_bn):
    return f"{name} | {'BN' if use_bn else 'no BN'}"


def _train(data, name, scale, lr, act, use_bn, iterations, every, seed, ctx):
    params, state = models.mlp_params(ctx, SIZES, use_bn=use_bn, init="normal", init_scale=scale, seed=seed)
    net = jit(functools.partial(models.mlp, activation=act))
    recorder = AccuracyRecorder(net, data.test, every)
    train_mlp_iterations(net, params, state, SGD(lr=lr), data.train, iterations, 60, seed, after_step=recorder)
    return recorder.points


def _figure(curves, names, dataset, n_seeds, path):
    fig, axes = subplots(2, 4, figsize=(16, 7), sharey=True)
    for ax, name in zip(axes.flat, names):
        for use_bn, style in ((True, "-"), (False, "--")):
            runs = curves[_key(name, use_bn)]
            its = [i for i, _ in runs[0]]
            plot_band(ax, its, [[a for _, a in r] for r in runs], "with BN" if use_bn else "without BN", style)
        ax.set_title(name, fontsize=9)
        ax.set(xlabel="iteration", ylim=(0, 1))
        ax.legend(fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy")
    fig.suptitle(f"MLP 784-128-128-128-10 on {dataset}, batch 60 (mean and range of {n_seeds} seed(s))")
    save_figure(fig, path)


def _claims(curves, names, early, dataset):
    def final(name, bn):
        return [r[-1][1] for r in curves[_key(name, bn)]]

    def at(name, bn, it):
        return [dict(r).get(it, r[0][1]) for r in curves[_key(name, bn)]]

    def below(values, threshold):
        return spread.in_every_seed([v < threshold for v in values])

    faster = [n for n in names if spread.exceeds(at(n, True, early), at(n, False, early))]
    relu_big_lr = [n for n in names if "large lr" in n and "relu" in n]
    big_w = [n for n in names if n.startswith("large weights")]
    big_w_bn_ok = [n for n in big_w if not ("large lr" in n and "relu" in n)]
    stall = "large weights, large lr, relu"
    bn_reaches = [n for n in big_w_bn_ok if spread.in_every_seed([v >= BN_REACHES for v in final(n, True)])]
    no_bn_fails = [n for n in big_w if below(final(n, False), FAIL)]
    return [
        verdict(f"with BN the net converges faster (higher test accuracy at iteration {early})",
                len(faster) == len(names), f"BN ahead by the spread rule in {len(faster)} of {len(names)} settings",
                partly=len(faster) >= len(names) // 2, dataset=dataset,
                tutorial="BN curves above no-BN curves from the start (MNIST)"),
        verdict("without BN, large lr with ReLU fails", all(below(final(n, False), FAIL) for n in relu_big_lr),
                "; ".join(f"{n}: {spread.fmt(final(n, False))}" for n in relu_big_lr),
                partly=any(below(final(n, False), FAIL) for n in relu_big_lr), dataset=dataset,
                tutorial="no-BN accuracy stays at chance (MNIST)"),
        verdict("large weights without BN fail, while BN reaches ~80-93 %",
                len(no_bn_fails) == len(big_w) and len(bn_reaches) == len(big_w_bn_ok),
                "without BN: " + ", ".join(spread.fmt(final(n, False)) for n in big_w)
                + "; with BN (excluding large lr + ReLU): " + ", ".join(spread.fmt(final(n, True))
                                                                        for n in big_w_bn_ok),
                partly=len(no_bn_fails) >= 2 or bool(bn_reaches), dataset=dataset,
                tutorial="BN 80-93 % test accuracy, no BN at chance (MNIST)"),
        verdict("large weights + large lr + ReLU stalls even with BN", below(final(stall, True), FAIL),
                f"final test accuracy with BN {spread.fmt(final(stall, True))}",
                partly=spread.in_some_seed([v < FAIL for v in final(stall, True)]), dataset=dataset,
                tutorial="BN does not rescue this setting (MNIST)"),
    ]


def run(out_dir, ctx, quick=False, log=print, seeds=1):
    os.makedirs(out_dir, exist_ok=True)
    seeds = seed_list(seeds)
    iterations, every = (200, 50) if quick else (2000, 100)
    early = min(EARLY, iterations)
    names = [n for n, *_ in settings()]
    datasets = study_datasets(ctx, limit_train=3000 if quick else None, limit_test=500 if quick else None, log=log)
    claims, figures, finals, all_curves, sources = [], [], {}, {}, {}
    for data in datasets:
        curves = {_key(n, bn): [] for n in names for bn in (True, False)}   # key -> per seed [(it, acc)]
        for seed in seeds:
            for name, scale, lr, act in settings():
                for use_bn in (True, False):
                    accs = _train(data, name, scale, lr, act, use_bn, iterations, every, seed, ctx)
                    curves[_key(name, use_bn)].append(accs)
                log(f"mlp-grid {data.name} seed {seed}: {name}: final test accuracy BN "
                    f"{curves[_key(name, True)][-1][-1][1]:.4f}, no BN {curves[_key(name, False)][-1][-1][1]:.4f}")
        figure = f"grid-{data.name}.png"
        _figure(curves, names, data.name, len(seeds), os.path.join(out_dir, figure))
        figures.append(figure)
        claims += _claims(curves, names, early, data.name)
        finals[data.name] = {k: spread.summary([r[-1][1] for r in runs]) for k, runs in curves.items()}
        all_curves[data.name] = curves
        sources[data.name] = data.source
    tables = []
    for dataset, final in finals.items():
        tables += [f"Final test accuracy on {dataset} (mean ± std over seeds):", "",
                   "| setting | with BN | without BN |", "|---|---|---|"] + [
            f"| {n} | {spread.fmt(final[_key(n, True)]['values'])} | {spread.fmt(final[_key(n, False)]['values'])} |"
            for n in names] + [""]
    result = StudyResult(
        experiment="mlp-grid", title=TITLE, description=describe(__doc__) + "\n\n" + "\n".join(tables),
        datasets=list(finals), data_source=sources, quick=quick, seeds=seeds, claims=claims, figures=figures,
        measurements=dict(iterations=iterations, final_test_acc=finals, curves=all_curves))
    return result.save(out_dir)
