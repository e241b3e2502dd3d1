"""What the experiments share: data choice, an MLP training loop with loss curves, files."""
from typing import NamedTuple

import numpy as np
from mxnet import nd

from .. import mnist5k, models
from ..data import DataError, find_data_dir, load_dataset, to_device
from ..jit import jit
from ..plot import plot_band, save_figure, subplots
from ..train import TrainStep, evaluate, loss_and_correct

__all__ = ["StudyData", "study_datasets", "load_study_data", "train_mlp_iterations", "AccuracyRecorder", "smooth",
           "seed_list", "MLP_4X100", "mlp_loss_curves", "plot_loss_bands"]

MLP_4X100 = (784, 100, 100, 100, 100, 10)   # the MLP of the optimizer and initialisation chapters


class StudyData(NamedTuple):
    name: str      # "mnist", "mnist-5k" or "fashion-mnist"
    source: str    # where the files were read from
    train: tuple   # (X, y) on the device
    test: tuple


def study_datasets(ctx, limit_train=None, limit_test=None, log=print):
    """The image data a study of the MNIST tutorials runs on, as a list of StudyData:
    real digits first (full MNIST when its files are found, else mnist-5k; a note
    saying how to get them when neither is), then Fashion-MNIST."""
    try:
        has_mnist = find_data_dir("mnist") is not None
    except DataError:
        has_mnist = False
    names = ["mnist"] if has_mnist else [mnist5k.NAME] if mnist5k.find_mnist_5k() is not None else []
    if not names:
        log(f"note: no MNIST digits found, running on Fashion-MNIST only; for {mnist5k.NAME}: {mnist5k.HOW_TO_GET}")
    return [load_study_data(name, ctx, limit_train, limit_test) for name in names + ["fashion-mnist"]]


def load_study_data(name, ctx, limit_train=None, limit_test=None):
    """One dataset of :func:`study_datasets` by its name ("mnist", "mnist-5k" or "fashion-mnist"), on ``ctx``
    (what a worker process loads for its runs)."""
    ds = mnist5k.load_mnist_5k() if name == mnist5k.NAME else load_dataset(name, allow_download=False)
    return StudyData(ds.name, ds.source, to_device(ds.train_images, ds.train_labels, ctx, limit_train),
                     to_device(ds.test_images, ds.test_labels, ctx, limit_test))


def seed_list(seeds):
    """Seeds 0..n-1 for a count, or the given seeds."""
    return list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]


def train_mlp_iterations(net, params, state, optimizer, train, iterations, batch_size, seed, after_step=None):
    """Loss of every iteration of minibatch training (batches taken from successive
    shuffled epochs, as the tutorials' loops did), as a float array.

    The per-iteration losses stay on the device and are read once at the end.
    Pass ``mxbn.jit(net)`` to run each step's forward and backward as one graph.
    ``after_step(iteration, params, state)`` (iteration counted from 1) is called after every update,
    e.g. an :class:`AccuracyRecorder`.
    """
    step = TrainStep(loss_and_correct(net, is_training=True), params, state, optimizer, optimizer.init(params))
    X, y = train
    n = X.shape[0]
    rng = np.random.default_rng(seed)
    losses = nd.zeros((iterations,), ctx=X.context)
    # every batch's indices, drawn up front and sent to the device once
    epochs_needed = -(-iterations * batch_size // n)
    order = np.concatenate([rng.permutation(n) for _ in range(epochs_needed)])[:iterations * batch_size]
    order = nd.array(order, ctx=X.context, dtype="int32")
    for it in range(iterations):
        idx = order[it * batch_size:(it + 1) * batch_size]
        losses[it], _ = step(nd.take(X, idx), nd.take(y, idx))
        if after_step is not None:
            after_step(it + 1, params, state)
    return losses.asnumpy().astype(np.float64)


class AccuracyRecorder:
    """``after_step`` of :func:`train_mlp_iterations`: the test accuracy every ``every`` steps
    (a host read each time), kept as ``points`` = [(step, accuracy), ...]."""

    def __init__(self, net, test, every):
        self.net, self.test, self.every = net, test, every
        self.points = []

    def __call__(self, step, params, state):
        if step % self.every == 0:
            self.points.append((step, evaluate(self.net, params, state, *self.test, 1000)[1]))


def mlp_loss_curves(settings, iterations, seeds, datasets, log, study):
    """Training loss of every iteration of the ReLU MLP 784-100x4-10, batch 128, for each setting
    ``label -> (init, init_scale, make_optimizer)``: ``{dataset: {label: [one curve per seed]}}``.
    The loop the optimizer and initialisation studies share."""
    out = {}
    for data in datasets:
        curves = {label: [] for label in settings}
        for seed in seeds:
            for label, (init, scale, make_optimizer) in settings.items():
                params, state = models.mlp_params(data.train[0].context, MLP_4X100, init=init, init_scale=scale,
                                                  seed=seed)
                curve = train_mlp_iterations(jit(models.mlp), params, state, make_optimizer(), data.train,
                                             iterations, 128, seed)
                curves[label].append(curve)
                log(f"{study} {data.name} seed {seed}: {label} final smoothed loss {smooth(curve)[-1]:.4f}")
        out[data.name] = curves
    return out


def plot_loss_bands(curves, labels, path, title, yscale="linear"):
    """Smoothed loss curves, the mean over seeds with their range as a band; ``labels`` maps key -> legend."""
    fig, ax = subplots(figsize=(7, 5))
    for key, label in labels.items():
        runs = [smooth(c) for c in curves[key]]
        plot_band(ax, list(range(1, len(runs[0]) + 1)), runs, label)
    ax.set(xlabel="iteration", ylabel="training loss (moving average of 50)", yscale=yscale, title=title)
    ax.legend()
    return save_figure(fig, path)


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
