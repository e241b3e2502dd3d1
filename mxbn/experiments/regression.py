"""`batch-size` and `lr-sensitivity`: the PyTorch BN tuning study on synthetic regression.

y = 2 x1^2 - x2^2 + 3 x3^2 + x4^2 + 2 x5^2 + noise (x uniform in [-1, 1]^5,
noise N(0, 0.1^2)); 1000 training and 500 test samples. MLPs of 1-4 hidden
layers of 32 units with sigmoid or tanh, batch norm before the activation or
none, plain SGD, 40 epochs, mean squared error. `batch-size`: batch 10 vs 50 at
lr 0.03. `lr-sensitivity`: lr in {0.1, 0.03, 0.01, 0.005, 0.001} at batch 50.
Claims: BN needs batches of at least ~15-30; BN models are more sensitive to
the learning rate and gain more from tuning it; deeper models gain more from
BN; tanh gains more than sigmoid.
"""
import functools
import itertools
import os

import numpy as np
from mxnet import nd

from .. import functional as F
from .. import models
from ..data import epoch_batches
from ..jit import jit
from ..optim import SGD
from ..train import TrainStep
from ..plot import plot_range, save_figure, subplots
from . import spread
from .result import StudyResult, describe, verdict
from .common import seed_list

WIDTH, N_TRAIN, N_TEST, NOISE = 32, 1000, 500, 0.1
COEF = np.array([2.0, -1.0, 3.0, 1.0, 2.0])
DEPTHS, ACTS = (1, 2, 3, 4), ("sigmoid", "tanh")
LRS = (0.1, 0.03, 0.01, 0.005, 0.001)
DATA_SEED = 0   # one data set for every seed: the seeds vary the initialisation and the batch order


def make_data(ctx, seed=DATA_SEED):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(N_TRAIN + N_TEST, 5))
    y = (x ** 2) @ COEF + rng.normal(0, NOISE, size=len(x))
    X, Y = nd.array(x, ctx=ctx), nd.array(y, ctx=ctx)
    return (X[:N_TRAIN], Y[:N_TRAIN]), (X[N_TRAIN:], Y[N_TRAIN:])


def mse(pred, y):
    """Mean squared error of (N, 1) predictions against (N,) targets (NDArrays or traced arrays)."""
    error = F.flatten(pred) - y.reshape((-1, 1))
    return (error * error).mean()


def _mse_of(params, state, X, y, is_training, activation):
    return mse(models.mlp(params, state, X, is_training, activation=activation), y)


def train_regression(depth, act, use_bn, lr, batch_size, epochs, train, test, ctx, seed=0):
    """Test MSE after each epoch (reads once at the end); NaN where training diverged."""
    params, state = models.mlp_params(ctx, (5,) + (WIDTH,) * depth + (1,), use_bn=use_bn, init="xavier", seed=seed)
    loss_of = jit(functools.partial(_mse_of, activation=act))   # forward + loss as one graph
    opt = SGD(lr=lr)
    step = TrainStep(lambda p, s, Xb, Yb: loss_of(p, s, Xb, Yb, True), params, state, opt, opt.init(params))
    X, Y = train
    rng = np.random.default_rng(seed)
    test_mse = nd.zeros((epochs,), ctx=ctx)
    for epoch in range(epochs):
        # a final batch of one sample has no batch variance: dropped, as the trainer does
        batches, _ = epoch_batches(X, Y, batch_size, rng, min_batch_size=2)
        for Xb, Yb in batches:
            step(Xb, Yb)
        test_mse[epoch] = loss_of(params, state, test[0], test[1], False)
    out = test_mse.asnumpy().astype(np.float64)
    out[~np.isfinite(out)] = np.nan
    return out


def _configs():
    return list(itertools.product(DEPTHS, ACTS, (True, False)))


def _label(depth, act, bn):
    return f"{depth} hidden, {act}, {'BN' if bn else 'no BN'}"


def _log_gain(no_bn, bn):
    """log(no-BN MSE / BN MSE) per seed: > 0 means BN helps (logs, so that seeds average fairly)."""
    return [float(np.log(a / b)) for a, b in zip(no_bn, bn)]


def run_batch_size(out_dir, ctx, quick=False, log=print, seeds=1):
    os.makedirs(out_dir, exist_ok=True)
    seeds = seed_list(seeds)
    epochs = 5 if quick else 40
    train, test = make_data(ctx)
    final = {}   # key -> test MSE per seed
    for seed in seeds:
        for (depth, act, bn), bs in itertools.product(_configs(), (10, 50)):
            curve = train_regression(depth, act, bn, 0.03, bs, epochs, train, test, ctx, seed)
            final.setdefault(f"{_label(depth, act, bn)} | batch {bs}", []).append(float(curve[-1]))
        log(f"batch-size seed {seed}: " + ", ".join(f"{k}: {v[-1]:.3f}" for k, v in list(final.items())[:4])
            + ", ...")

    def log_gain(depth, act, bs):
        return _log_gain(final[f"{_label(depth, act, False)} | batch {bs}"],
                         final[f"{_label(depth, act, True)} | batch {bs}"])

    fig, ax = subplots(figsize=(8, 5))
    for bs, style in ((10, "o--"), (50, "s-")):
        for act in ACTS:
            plot_range(ax, DEPTHS, [np.exp(log_gain(d, act, bs)) for d in DEPTHS], f"{act}, batch {bs}", style,
                       geometric=True)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set(xlabel="hidden layers", ylabel="test MSE without BN / with BN (>1: BN helps)", yscale="log",
           title=f"Gain from BN at batch 10 vs 50 (SGD lr 0.03, {epochs} epochs; {len(seeds)} seed(s))")
    ax.set_xticks(DEPTHS)
    ax.legend()
    save_figure(fig, os.path.join(out_dir, "batch_size.png"))
    archs = [(d, a) for d in DEPTHS for a in ACTS]
    smaller = [x for x in archs if spread.exceeds(log_gain(*x, 50), log_gain(*x, 10))]
    bn_hurts_at_10 = [x for x in archs if spread.exceeds([0.0] * len(seeds), log_gain(*x, 10))]
    claims = [verdict("BN needs batches of at least ~15-30: its gain is smaller at batch 10 than at batch 50",
                      len(smaller) == len(archs),
                      f"gain smaller at batch 10 by the spread rule in {len(smaller)} of {len(archs)} architectures; "
                      f"BN worse than no BN at batch 10 in {len(bn_hurts_at_10)}",
                      partly=len(smaller) >= len(archs) // 2, dataset="synthetic regression",
                      tutorial="BN needs batches of at least ~15-30 (synthetic regression)")]
    return StudyResult(
        experiment="batch-size", title="BN and batch size", description=describe(__doc__),
        datasets=["synthetic regression"], data_source="generated", quick=quick, seeds=seeds, claims=claims,
        figures=["batch_size.png"],
        measurements=dict(epochs=epochs, final_test_mse={k: spread.summary(v) for k, v in final.items()},
                          log_gain={f"{d} hidden, {a}, batch {bs}": spread.summary(log_gain(d, a, bs))
                                    for d in DEPTHS for a in ACTS for bs in (10, 50)})).save(out_dir)


def _lr_grid_mse(final, d, a, bn):
    """(seeds, lrs) test MSE of one architecture over the learning-rate grid."""
    return np.array([final[(d, a, bn, lr)] for lr in LRS], dtype=np.float64).T


def _lr_sensitivity_figure(final, epochs, n_seeds, path):
    fig, axes = subplots(1, 2, figsize=(13, 5), sharey=True)
    for ax, act in zip(axes, ACTS):
        for d in DEPTHS:
            for bn, style in ((True, "-"), (False, "--")):
                plot_range(ax, LRS, _lr_grid_mse(final, d, act, bn).T, f"{d} hidden, {'BN' if bn else 'no BN'}",
                           style, geometric=True, marker="o")
        ax.set(xscale="log", yscale="log", xlabel="learning rate",
               title=f"{act}, batch 50, {epochs} epochs ({n_seeds} seed(s): geometric mean, range)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("test MSE")
    save_figure(fig, path)


def _lr_sensitivity_claims(final, data):
    def best(d, a, bn):
        return list(np.nanmin(_lr_grid_mse(final, d, a, bn), axis=1))

    def log_spread(d, a, bn):   # log(worst / best MSE over the lr grid): how much tuning matters
        m = _lr_grid_mse(final, d, a, bn)
        return list(np.log(np.nanmax(m, axis=1) / np.nanmin(m, axis=1)))

    archs = [(d, a) for d in DEPTHS for a in ACTS]
    more_sensitive = [x for x in archs if spread.exceeds(log_spread(*x, True), log_spread(*x, False))]
    gain = {x: _log_gain(best(*x, False), best(*x, True)) for x in archs}   # log gain per seed
    deeper = [a for a in ACTS if all(spread.mean(gain[(d1, a)]) <= spread.mean(gain[(d2, a)])
                                     for d1, d2 in zip(DEPTHS, DEPTHS[1:]))]
    gain_by_depth = {d: [float(np.mean(g)) for g in zip(*(gain[(d, a)] for a in ACTS))] for d in DEPTHS}
    tanh_more = [d for d in DEPTHS if spread.exceeds(gain[(d, "tanh")], gain[(d, "sigmoid")])]
    sigmoid_more = [d for d in DEPTHS if spread.exceeds(gain[(d, "sigmoid")], gain[(d, "tanh")])]
    return [
        verdict("BN models are more sensitive to the learning rate (worst/best test MSE over the lr grid is larger)",
                len(more_sensitive) == len(archs),
                f"larger with BN by the spread rule in {len(more_sensitive)} of {len(archs)} architectures",
                partly=len(more_sensitive) >= len(archs) // 2, dataset=data,
                tutorial="BN models gain more from tuning the lr (synthetic regression)"),
        verdict("deeper models gain more from BN (best no-BN MSE / best BN MSE grows with depth)",
                len(deeper) == len(ACTS) and spread.exceeds(gain_by_depth[DEPTHS[-1]], gain_by_depth[DEPTHS[0]]),
                "gain (no-BN / BN best MSE, geometric mean over activations) by depth: " + ", ".join(
                    f"{d}: {spread.fmt(np.exp(g), 2)}" for d, g in gain_by_depth.items())
                + f"; growing with every added layer (mean over seeds) for {', '.join(deeper) or 'neither activation'}",
                partly=spread.exceeds(gain_by_depth[DEPTHS[-1]], gain_by_depth[DEPTHS[0]]), dataset=data,
                tutorial="deeper models gain more (synthetic regression)"),
        verdict("tanh gains more from BN than sigmoid", len(tanh_more) == len(DEPTHS),
                f"tanh gain larger by the spread rule at {len(tanh_more)} of {len(DEPTHS)} depths, "
                f"sigmoid's at {len(sigmoid_more)}",
                partly=len(tanh_more) >= len(DEPTHS) // 2, dataset=data,
                tutorial="tanh gains more than sigmoid (synthetic regression)"),
    ]


def run_lr_sensitivity(out_dir, ctx, quick=False, log=print, seeds=1):
    os.makedirs(out_dir, exist_ok=True)
    seeds = seed_list(seeds)
    epochs = 5 if quick else 40
    train, test = make_data(ctx)
    final = {}   # (depth, act, bn, lr) -> test MSE per seed
    for seed in seeds:
        for (depth, act, bn), lr in itertools.product(_configs(), LRS):
            final.setdefault((depth, act, bn, lr), []).append(
                float(train_regression(depth, act, bn, lr, 50, epochs, train, test, ctx, seed)[-1]))
        log(f"lr-sensitivity seed {seed}: {len(_configs()) * len(LRS)} runs done")
    _lr_sensitivity_figure(final, epochs, len(seeds), os.path.join(out_dir, "lr_sensitivity.png"))
    data = "synthetic regression"
    claims = _lr_sensitivity_claims(final, data)
    log("lr-sensitivity: " + "; ".join(f"{c['verdict']}" for c in claims))
    return StudyResult(
        experiment="lr-sensitivity", title="BN and learning-rate sensitivity", description=describe(__doc__),
        datasets=[data], data_source="generated", quick=quick, seeds=seeds, claims=claims,
        figures=["lr_sensitivity.png"],
        measurements=dict(epochs=epochs,
                          final_test_mse={f"{_label(d, a, bn)} | lr {lr}": spread.summary(v)
                                          for (d, a, bn, lr), v in final.items()})).save(out_dir)
