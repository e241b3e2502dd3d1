"""Pictures of a run from its saved results (matplotlib, Agg backend: no display needed):
training curves, the test-set confusion matrix, and a grid of test predictions.

gluoncv's TrainingHistory draws one panel with a fixed [0, 1] y-range, which
cuts off losses above 1, so the curves are drawn here: loss and accuracy side by side.
"""
import warnings

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .atomic import atomic_path

__all__ = ["plot_history", "plot_confusion", "plot_predictions", "plot_bn_trace", "plot_band", "plot_range",
           "save_figure",
           "subplots"]


def subplots(nrows=1, ncols=1, figsize=None, **kwargs):
    """(figure, axes) like ``pyplot.subplots``, without pyplot.

    A bare Figure draws with the Agg canvas, needs no display, and stays out of
    pyplot's global figure list and its IPython event-loop hooks (which failed
    with some IPython/matplotlib pairs inside Jupyter).
    """
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def plot_history(history, path, title="LeNet training"):
    """Write a PNG of train/validation/test loss and accuracy per epoch (validation when the history has
    it); returns ``path``."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = subplots(1, 2, figsize=(10, 4))
    splits = [("train", "o-"), ("val", "^-"), ("test", "s-")]
    for split, style in splits:
        if history and f"{split}_loss" in history[0]:
            label = "validation" if split == "val" else split
            ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], style, label=label)
            ax_acc.plot(epochs, [h[f"{split}_acc"] for h in history], style, label=label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_confusion(counts, class_names, path, title="confusion matrix"):
    """Write a PNG of a confusion matrix (rows: true class, columns: predicted), counts in the cells."""
    counts = np.asarray(counts)
    k = len(class_names)
    fig, ax = subplots(figsize=(1.0 + 0.7 * k, 0.8 + 0.6 * k))
    image = ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(k), labels=class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), labels=class_names)
    ax.set(xlabel="predicted", ylabel="true")
    limit = counts.max() / 2 if counts.size else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if counts[i, j] > limit else "black")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(f"{title}\n{counts.sum()} test images, accuracy {accuracy:.4f}")
    fig.colorbar(image, ax=ax, fraction=0.046)
    return save_figure(fig, path)


def plot_predictions(images, true_labels, predicted, probabilities, class_names, path, columns=8,
                     title="test predictions"):
    """Write a PNG grid of images titled "predicted (probability)", with the true class under
    each mistake, which is framed in red."""
    n = len(images)
    rows = max(1, -(-n // columns))
    fig, axes = subplots(rows, columns, figsize=(1.6 * columns, 2.2 * rows), squeeze=False)
    mistakes = 0
    for ax, i in zip(axes.flat, range(rows * columns)):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        wrong = predicted[i] != true_labels[i]
        mistakes += int(wrong)
        ax.set_title(f"{class_names[predicted[i]]} ({probabilities[i]:.2f})", fontsize=8,
                     color="red" if wrong else "black")
        if wrong:
            ax.set_xlabel(f"true: {class_names[true_labels[i]]}", fontsize=8, color="red")
            for spine in ax.spines.values():
                spine.set_edgecolor("red")
                spine.set_linewidth(2)
    fig.suptitle(f"{title}: {n - mistakes} of {n} right (mistakes in red)")
    return save_figure(fig, path)


def plot_bn_trace(trace, path, title="batch-norm inputs over training"):
    """Write a PNG of the BN paper's percentile bands per BN layer, before and after normalization."""
    layers = list(trace["layers"])
    q_low, q_mid, q_high = trace["percentiles"]
    fig, axes = subplots(max(1, len(layers)), 2, figsize=(10, 3 * max(1, len(layers))), squeeze=False)
    for row, name in zip(axes, layers):
        for ax, side, label in zip(row, ("before", "after"), ("input (before normalization)",
                                                             "output (normalized, moving statistics)")):
            bands = np.asarray(trace["layers"][name][side])
            ax.fill_between(trace["steps"], bands[:, 0], bands[:, 2], alpha=0.3,
                            label=f"{q_low}th-{q_high}th percentile")
            ax.plot(trace["steps"], bands[:, 1], label=f"{q_mid}th percentile (median)")
            ax.set(xlabel="training step", title=f"{name} channel {trace['channel']}: {label}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_band(ax, x, runs, label, style="-", **kwargs):
    """One curve per seed drawn as their mean (a line) and their range (a shaded band).

    ``runs`` is a sequence of equally long curves; NaN (a diverged run) is left
    out of the mean and the band at that point.  Returns the line.
    """
    runs = np.asarray(runs, dtype=np.float64).reshape(-1, len(x))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all seeds NaN at a point: no line there
        centre, low, high = np.nanmean(runs, axis=0), np.nanmin(runs, axis=0), np.nanmax(runs, axis=0)
    (line,) = ax.plot(x, centre, style, label=label, **kwargs)
    if len(runs) > 1:
        ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    return line


def plot_range(ax, x, values, label, style="o-", geometric=False, **kwargs):
    """Points with error bars: per x, the mean of its values (one per seed; geometric for ratios) and
    their range.  NaN values (diverged runs) are left out."""
    values = [np.asarray(v, dtype=np.float64) for v in values]
    values = [v[np.isfinite(v)] for v in values]
    centre = np.array([(np.exp(np.mean(np.log(v))) if geometric else np.mean(v)) if v.size else np.nan
                       for v in values])
    low = np.array([v.min() if v.size else np.nan for v in values])
    high = np.array([v.max() if v.size else np.nan for v in values])
    # the centre lies inside the range; max(0, ...) only absorbs rounding
    yerr = [np.maximum(centre - low, 0), np.maximum(high - centre, 0)]
    return ax.errorbar(x, centre, yerr=yerr, fmt=style, capsize=3, label=label, **kwargs)


def save_figure(fig, path, dpi=100):
    """Write ``fig`` as PNG atomically and close it; returns ``path``."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path
