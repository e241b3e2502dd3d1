"""`mlp-sigmoid`: the NumPy MLP study of initialisation, input scale and batch norm.

(a) 6000 training / 1000 test images (on mnist-5k its 4000 / 1000), MLP 784-200-50-10 with sigmoid, batch 128,
SGD lr 0.1, 50 epochs: N(0, 1)*0.01 weights without BN, the same with BN, and
Xavier without BN. (b) All data, MLP 784-100-100-100-10 with ReLU, Xavier, batch
256, SGD lr 0.1, 30 epochs, on raw 0-255 pixels with and without BN, and
without BN after L2-normalising each image. (c) MLP 784-100x4-10, ReLU + BN,
Adam lr 0.01, batch 256, 30 epochs.
Claims (MNIST in the study): (a) random init without BN does not learn
(~11-13 %), with BN ~87 %, Xavier without BN ~88 %; (b) with BN 97.2 %, without
BN no convergence on raw pixels, 86 % after L2 normalisation; (c) ~97.8-98.0 %.
"""
import functools
import os

from mxnet import nd

from .. import models
from ..jit import jit
from ..optim import SGD, Adam
from ..plot import plot_band, save_figure, subplots
from ..train import TrainingDiverged, fit
from . import spread
from .result import StudyResult, describe, verdict
from .common import seed_list, study_datasets

TITLE = "Sigmoid MLPs, input scale and batch norm (the NumPy MLP study)"
LEARNS = 0.7   # final test accuracy above which a run "learns" (chance is 0.1)
FAILS = 0.2
# (a)'s subset: the first 6000 / 1000 images (all of mnist-5k's 4000 / 1000)
SUBSET_TRAIN, SUBSET_TEST = 6000, 1000
A_RUNS = ("(a) N(0,1)*0.01, no BN", "(a) N(0,1)*0.01, BN", "(a) Xavier, no BN")
B_RUNS = ("(b) raw pixels, BN", "(b) raw pixels, no BN", "(b) L2-normalised, no BN")
C_RUN = "(c) ReLU + BN, Adam lr 0.01"
# What the study reported (MNIST)
TUTORIAL = {
    "a": "random init without BN 0.126, with BN 0.875, Xavier without BN 0.884 (MNIST, 6000/1000 images)",
    "b": "with BN 0.972; without BN no convergence on raw pixels, 0.86 after L2 normalisation (MNIST)",
    "c": "0.978-0.980 (MNIST)",
}


def _train(sizes, activation, use_bn, init, scale, optimizer, train, test, epochs, batch_size, ctx, seed, log,
           label):
    params, state = models.mlp_params(ctx, sizes, use_bn=use_bn, init=init, init_scale=scale, seed=seed)
    net = jit(functools.partial(models.mlp, activation=activation))
    try:
        h = fit(net, params, state, optimizer, optimizer.init(params), train, test, epochs, batch_size, seed=seed,
                min_batch_size=models.min_train_batch_size(params, dense_bn=True), log=lambda *_: None)
        log(f"mlp-sigmoid seed {seed}: {label}: final test accuracy {h[-1]['test_acc']:.4f}")
        return [e["test_acc"] for e in h]
    except TrainingDiverged as e:
        log(f"mlp-sigmoid seed {seed}: {label}: diverged ({e})")
        return None


def _l2_normalised(X):
    flat = X.reshape((X.shape[0], -1))
    return (flat / nd.sqrt(nd.sum(flat * flat, axis=1, keepdims=True))).reshape(X.shape)


def _part_a(data, epochs, ctx, seed, log):
    train = (data.train[0][:SUBSET_TRAIN], data.train[1][:SUBSET_TRAIN])   # slices: no copy
    test = (data.test[0][:SUBSET_TEST], data.test[1][:SUBSET_TEST])
    sizes = (784, 200, 50, 10)
    settings = {A_RUNS[0]: (False, "normal"), A_RUNS[1]: (True, "normal"), A_RUNS[2]: (False, "xavier")}
    return {label: _train(sizes, "sigmoid", bn, init, 0.01, SGD(lr=0.1), train, test, epochs, 128, ctx, seed, log,
                          f"{label} on {data.name}")
            for label, (bn, init) in settings.items()}


def _parts_b_c(data, ep, ctx, seed, log):
    raw = (data.train[0] * 255.0, data.train[1]), (data.test[0] * 255.0, data.test[1])
    l2 = (_l2_normalised(data.train[0]), data.train[1]), (_l2_normalised(data.test[0]), data.test[1])
    sizes = (784, 100, 100, 100, 10)
    runs = {}
    for label, use_bn, (train, test) in ((B_RUNS[0], True, raw), (B_RUNS[1], False, raw), (B_RUNS[2], False, l2)):
        runs[label] = _train(sizes, "relu", use_bn, "xavier", 0.01, SGD(lr=0.1), train, test, ep(30), 256, ctx,
                             seed, log, label)
    runs[C_RUN] = _train((784, 100, 100, 100, 100, 10), "relu", True, "he", 0.01, Adam(lr=0.01), data.train,
                         data.test, ep(30), 256, ctx, seed, log, C_RUN)
    return runs


def _figure(runs, parts_data, n_seeds, path):
    fig, axes = subplots(1, len(parts_data), figsize=(5 * len(parts_data), 4.5), sharey=True)
    for ax, (title, labels) in zip(axes, parts_data):
        for label in labels:
            curves = [c for c in runs[label] if c]
            if curves:
                plot_band(ax, list(range(1, len(curves[0]) + 1)), curves, label.split(") ", 1)[1].split(" [")[0])
        ax.set(xlabel="epoch", title=title, ylim=(0, 1))
        ax.legend(fontsize=8)
    axes[0].set_ylabel("test accuracy")
    fig.suptitle(f"MLPs: mean and range of {n_seeds} seed(s) (diverged runs left out)")
    save_figure(fig, path)


def run(out_dir, ctx, quick=False, log=print, seeds=1):
    os.makedirs(out_dir, exist_ok=True)
    seeds = seed_list(seeds)
    scale_epochs = 0.1 if quick else 1.0
    ep = lambda n: max(1, int(n * scale_epochs))  # noqa: E731
    datasets = study_datasets(ctx, SUBSET_TRAIN if quick else None, SUBSET_TEST if quick else None, log=log)
    # (b) and (c) need a full training set: MNIST when found, else Fashion-MNIST (not mnist-5k)
    full = next((d for d in datasets if d.name == "mnist"), datasets[-1])
    runs = {}   # "label [dataset]" -> one test-accuracy curve per seed (None: diverged)
    for seed in seeds:
        for data in datasets:
            for label, curve in _part_a(data, ep(50), ctx, seed, log).items():
                runs.setdefault(f"{label} [{data.name}]", []).append(curve)
        for label, curve in _parts_b_c(full, ep, ctx, seed, log).items():
            runs.setdefault(label, []).append(curve)

    parts = [(f"(a) on {d.name}", [f"{k} [{d.name}]" for k in A_RUNS]) for d in datasets]
    parts += [(f"(b) on {full.name}", list(B_RUNS)), (f"(c) on {full.name}", [C_RUN])]
    _figure(runs, parts, len(seeds), os.path.join(out_dir, "curves.png"))

    final = {k: [c[-1] if c else None for c in v] for k, v in runs.items()}

    def learns(k):
        return spread.in_every_seed([v is not None and v >= LEARNS for v in final[k]])

    def fails(k):
        return spread.in_every_seed([v is None or v < FAILS for v in final[k]])

    def some_fail(k):
        return spread.in_some_seed([v is None or v < FAILS for v in final[k]])

    def show(keys, strip=4):
        return ", ".join(f"{k[strip:].split(' [')[0]} {spread.fmt(final[k])}" for k in keys)

    claims = []
    for d in datasets:
        a = [f"{k} [{d.name}]" for k in A_RUNS]
        claims.append(verdict(
            "(a) sigmoid MLP with N(0,1)*0.01 weights does not learn without BN, but does with BN or Xavier",
            fails(a[0]) and learns(a[1]) and learns(a[2]), show(a), partly=some_fail(a[0]) or learns(a[1]),
            dataset=d.name, tutorial=TUTORIAL["a"]))
    claims.append(verdict(
        "(b) on raw 0-255 pixels BN converges and no BN does not; L2 normalisation rescues no BN",
        learns(B_RUNS[0]) and fails(B_RUNS[1]) and learns(B_RUNS[2]), show(B_RUNS),
        partly=learns(B_RUNS[0]) and some_fail(B_RUNS[1]), dataset=full.name, tutorial=TUTORIAL["b"]))
    others = [k for k in list(B_RUNS) + [f"{k} [{full.name}]" for k in A_RUNS]]
    best_other = [max(spread.accuracy_or_chance(final[k][i]) for k in others) for i in range(len(seeds))]
    c_final = [spread.accuracy_or_chance(v) for v in final[C_RUN]]
    claims.append(verdict(
        "(c) ReLU + BN with Adam gives the best accuracy of the study (97.8-98.0 % on MNIST)",
        spread.in_every_seed([c >= b for c, b in zip(c_final, best_other)]),
        f"{spread.fmt(c_final)} vs the best other run {spread.fmt(best_other)} on {full.name}",
        partly=spread.mean(c_final) >= spread.mean(best_other) - 0.01, dataset=full.name, tutorial=TUTORIAL["c"]))
    result = StudyResult(
        experiment="mlp-sigmoid", title=TITLE, description=describe(__doc__), datasets=[d.name for d in datasets],
        data_source={d.name: d.source for d in datasets}, quick=quick, seeds=seeds, claims=claims,
        figures=["curves.png"],
        measurements=dict(test_acc_per_epoch=runs, final_test_acc={k: spread.summary(v) for k, v in final.items()}))
    return result.save(out_dir)
