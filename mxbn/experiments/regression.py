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
import itertools
import os

import numpy as np
from mxnet import autograd, nd

from .. import models
from ..optim import SGD
from ..plot import save_figure, subplots
from .common import save_metrics, verdict

WIDTH, N_TRAIN, N_TEST, NOISE = 32, 1000, 500, 0.1
COEF = np.array([2.0, -1.0, 3.0, 1.0, 2.0])
DEPTHS, ACTS = (1, 2, 3, 4), ("sigmoid", "tanh")
LRS = (0.1, 0.03, 0.01, 0.005, 0.001)


def make_data(ctx, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(N_TRAIN + N_TEST, 5))
    y = (x ** 2) @ COEF + rng.normal(0, NOISE, size=len(x))
    X, Y = nd.array(x, ctx=ctx), nd.array(y, ctx=ctx)
    return (X[:N_TRAIN], Y[:N_TRAIN]), (X[N_TRAIN:], Y[N_TRAIN:])


def mse(pred, y):
    return nd.mean(nd.square(pred.reshape((-1,)) - y))


def train_regression(depth, act, use_bn, lr, batch_size, epochs, train, test, ctx, seed=0):
    """Test MSE after each epoch (reads once at the end); NaN where training diverged."""
    params, state = models.mlp_params(ctx, (5,) + (WIDTH,) * depth + (1,), use_bn=use_bn, init="xavier", seed=seed)
    opt = SGD(lr=lr)
    opt_state = opt.init(params)
    for p in params.values():
        p.attach_grad()
    X, Y = train
    rng = np.random.default_rng(seed)
    test_mse = nd.zeros((epochs,), ctx=ctx)
    for epoch in range(epochs):
        perm = rng.permutation(N_TRAIN)
        # a final batch of one sample has no batch variance: drop it, as the trainer does
        starts = [s for s in range(0, N_TRAIN, batch_size) if len(perm[s:s + batch_size]) >= 2]
        for s in starts:
            idx = nd.array(perm[s:s + batch_size], ctx=ctx, dtype="int32")
            with autograd.record():
                loss = mse(models.mlp(params, state, nd.take(X, idx), True, activation=act), nd.take(Y, idx))
            loss.backward()
            opt.update(params, {k: p.grad for k, p in params.items()}, opt_state)
        test_mse[epoch] = mse(models.mlp(params, state, test[0], False, activation=act), test[1])
    out = test_mse.asnumpy().astype(np.float64)
    out[~np.isfinite(out)] = np.nan
    return out


def _configs():
    return list(itertools.product(DEPTHS, ACTS, (True, False)))


def _label(depth, act, bn):
    return f"{depth} hidden, {act}, {'BN' if bn else 'no BN'}"


def run_batch_size(out_dir, ctx, quick=False, log=print):
    os.makedirs(out_dir, exist_ok=True)
    epochs = 5 if quick else 40
    train, test = make_data(ctx)
    final = {}
    for (depth, act, bn), bs in itertools.product(_configs(), (10, 50)):
        curve = train_regression(depth, act, bn, 0.03, bs, epochs, train, test, ctx)
        final[f"{_label(depth, act, bn)} | batch {bs}"] = float(curve[-1])
    log("batch-size: " + ", ".join(f"{k}: {v:.3f}" for k, v in list(final.items())[:4]) + ", ...")

    def gain(depth, act, bs):  # no-BN MSE / BN MSE: > 1 means BN helps
        return final[f"{_label(depth, act, False)} | batch {bs}"] / final[f"{_label(depth, act, True)} | batch {bs}"]

    fig, ax = subplots(figsize=(8, 5))
    for bs, style in ((10, "o--"), (50, "s-")):
        for act in ACTS:
            ax.plot(DEPTHS, [gain(d, act, bs) for d in DEPTHS], style, label=f"{act}, batch {bs}")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set(xlabel="hidden layers", ylabel="test MSE without BN / with BN (>1: BN helps)", yscale="log",
           title=f"Gain from BN at batch 10 vs 50 (SGD lr 0.03, {epochs} epochs)")
    ax.set_xticks(DEPTHS)
    ax.legend()
    save_figure(fig, os.path.join(out_dir, "batch_size.png"))
    smaller = [(d, a) for d in DEPTHS for a in ACTS if gain(d, a, 10) < gain(d, a, 50)]
    n = len(DEPTHS) * len(ACTS)
    claims = [verdict("BN needs batches of at least ~15-30: its gain is smaller at batch 10 than at batch 50",
                      len(smaller) == n, f"gain smaller at batch 10 in {len(smaller)} of {n} architectures",
                      partly=len(smaller) >= n // 2)]
    return save_metrics(out_dir, dict(
        description=__doc__.split("\n", 1)[1].strip(), experiment="batch-size", title="BN and batch size",
        dataset="synthetic regression", data_source="generated", quick=quick, epochs=epochs, final_test_mse=final,
        gain={f"{d} hidden, {a}, batch {bs}": gain(d, a, bs) for d in DEPTHS for a in ACTS for bs in (10, 50)},
        claims=claims, figures=["batch_size.png"]))


def run_lr_sensitivity(out_dir, ctx, quick=False, log=print):
    os.makedirs(out_dir, exist_ok=True)
    epochs = 5 if quick else 40
    train, test = make_data(ctx)
    final = {}
    for (depth, act, bn), lr in itertools.product(_configs(), LRS):
        final[(depth, act, bn, lr)] = float(train_regression(depth, act, bn, lr, 50, epochs, train, test, ctx)[-1])

    def best(d, a, bn):
        return np.nanmin([final[(d, a, bn, lr)] for lr in LRS])

    def spread(d, a, bn):  # worst / best MSE over the lr grid: how much tuning matters
        vals = [final[(d, a, bn, lr)] for lr in LRS]
        return np.nanmax(vals) / np.nanmin(vals)

    fig, axes = subplots(1, 2, figsize=(13, 5), sharey=True)
    for ax, act in zip(axes, ACTS):
        for d in DEPTHS:
            for bn, style in ((True, "-"), (False, "--")):
                ax.plot(LRS, [final[(d, act, bn, lr)] for lr in LRS], style, marker="o",
                        label=f"{d} hidden, {'BN' if bn else 'no BN'}")
        ax.set(xscale="log", yscale="log", xlabel="learning rate", title=f"{act}, batch 50, {epochs} epochs")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("test MSE")
    save_figure(fig, os.path.join(out_dir, "lr_sensitivity.png"))

    archs = [(d, a) for d in DEPTHS for a in ACTS]
    more_sensitive = [x for x in archs if spread(*x, True) > spread(*x, False)]
    gain = {x: best(*x, False) / best(*x, True) for x in archs}
    deeper = [a for a in ACTS if all(gain[(d1, a)] <= gain[(d2, a)] for d1, d2 in zip(DEPTHS, DEPTHS[1:]))]
    gain_by_depth = {d: float(np.mean([gain[(d, a)] for a in ACTS])) for d in DEPTHS}
    tanh_more = [d for d in DEPTHS if gain[(d, "tanh")] > gain[(d, "sigmoid")]]
    claims = [
        verdict("BN models are more sensitive to the learning rate (worst/best test MSE over the lr grid is larger)",
                len(more_sensitive) == len(archs), f"larger with BN in {len(more_sensitive)} of {len(archs)}",
                partly=len(more_sensitive) >= len(archs) // 2),
        verdict("deeper models gain more from BN (best no-BN MSE / best BN MSE grows with depth)",
                len(deeper) == len(ACTS), "mean gain by depth: " + ", ".join(
                    f"{d}: {g:.2f}" for d, g in gain_by_depth.items()),
                partly=gain_by_depth[DEPTHS[-1]] > gain_by_depth[DEPTHS[0]]),
        verdict("tanh gains more from BN than sigmoid", len(tanh_more) == len(DEPTHS),
                f"tanh gain larger at {len(tanh_more)} of {len(DEPTHS)} depths",
                partly=len(tanh_more) >= len(DEPTHS) // 2),
    ]
    log("lr-sensitivity: " + "; ".join(f"{c['verdict']}" for c in claims))
    return save_metrics(out_dir, dict(
        description=__doc__.split("\n", 1)[1].strip(), experiment="lr-sensitivity",
        title="BN and learning-rate sensitivity", dataset="synthetic regression", data_source="generated",
        quick=quick, epochs=epochs,
        final_test_mse={f"{_label(d, a, bn)} | lr {lr}": v for (d, a, bn, lr), v in final.items()},
        claims=claims, figures=["lr_sensitivity.png"]))
