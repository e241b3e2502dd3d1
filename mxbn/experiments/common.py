"""What the experiments share: data choice, an MLP training loop with loss curves, files."""
import os

import numpy as np
from mxnet import autograd, nd

from .. import functional as F
from ..atomic import atomic_write_json
from ..data import DataError, find_data_dir, load_dataset, to_device
from ..train import evaluate

__all__ = ["tutorial_dataset", "train_mlp_iterations", "smooth", "save_metrics", "verdict"]


def tutorial_dataset(ctx, limit_train=None, limit_test=None):
    """MNIST when its files are found (the tutorials used it), else Fashion-MNIST.

    Returns (name, source, (X_train, y_train), (X_test, y_test)) on ``ctx``.
    """
    name = "fashion-mnist"
    try:
        if find_data_dir("mnist") is not None:
            name = "mnist"
    except DataError:
        pass
    ds = load_dataset(name, allow_download=False)
    train = to_device(ds.train_images, ds.train_labels, ctx, limit_train)
    test = to_device(ds.test_images, ds.test_labels, ctx, limit_test)
    return ds.name, ds.source, train, test


def train_mlp_iterations(net, params, state, optimizer, train, iterations, batch_size, seed,
                         test=None, eval_every=None):
    """Loss of every iteration of minibatch training (batches taken from successive
    shuffled epochs, as the tutorials' loops did).  Returns a float array, or with
    ``test`` and ``eval_every`` also the list of (iteration, test accuracy).

    The per-iteration losses stay on the device and are read once at the end.
    """
    X, y = train
    n = X.shape[0]
    rng = np.random.default_rng(seed)
    losses = nd.zeros((iterations,), ctx=X.context)
    opt_state = optimizer.init(params)
    for p in params.values():
        p.attach_grad()
    order = np.array([], dtype=np.int64)
    accuracies = []
    for it in range(iterations):
        if order.size < batch_size:
            order = np.concatenate([order, rng.permutation(n)])
        idx, order = order[:batch_size], order[batch_size:]
        idx_nd = nd.array(idx, ctx=X.context, dtype="int32")
        Xb, yb = nd.take(X, idx_nd), nd.take(y, idx_nd)
        with autograd.record():
            loss = F.softmax_cross_entropy(net(params, state, Xb, True), yb)
        loss.backward()
        optimizer.update(params, {k: p.grad for k, p in params.items()}, opt_state)
        losses[it] = loss.detach()
        if eval_every and (it + 1) % eval_every == 0:
            accuracies.append((it + 1, evaluate(net, params, state, test[0], test[1], 1000)[1]))
    losses = losses.asnumpy().astype(np.float64)
    return (losses, accuracies) if eval_every else losses


def smooth(values, window=50):
    """Trailing moving average (the tutorials plotted smoothed loss curves)."""
    values = np.asarray(values, dtype=np.float64)
    window = max(1, min(window, len(values)))
    c = np.cumsum(np.insert(values, 0, 0.0))
    out = np.empty_like(values)
    for i in range(len(values)):
        lo = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def verdict(claim, holds, reason, partly=False):
    return dict(claim=claim, verdict="reproduced" if holds else ("partly" if partly else "not reproduced"),
                reason=reason)


def save_metrics(out_dir, metrics):
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_json(os.path.join(out_dir, "metrics.json"), metrics)
    return metrics
