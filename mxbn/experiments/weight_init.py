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

from .. import models
from ..optim import SGD
from ..plot import save_figure, subplots
from .common import save_metrics, smooth, train_mlp_iterations, tutorial_dataset, verdict

TITLE = "Weight initialisation"
LAYERS, UNITS, SAMPLES = 5, 100, 1000
ACT = {"sigmoid": lambda z: 1 / (1 + np.exp(-z)), "tanh": np.tanh, "relu": lambda z: np.maximum(z, 0)}
SETTINGS = [("sigmoid", "std 1", lambda n: 1.0), ("sigmoid", "std 0.01", lambda n: 0.01),
            ("sigmoid", "Xavier", lambda n: math.sqrt(1 / n)), ("tanh", "Xavier", lambda n: math.sqrt(1 / n)),
            ("relu", "He", lambda n: math.sqrt(2 / n))]


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


def run(out_dir, ctx, quick=False, log=print):
    os.makedirs(out_dir, exist_ok=True)
    acts = {f"{a} {name}": activations(a, std) for a, name, std in SETTINGS}
    fig, axes = subplots(len(SETTINGS), LAYERS, figsize=(14, 2.2 * len(SETTINGS)))
    for row, (label, layers) in zip(axes, acts.items()):
        for i, (ax, h) in enumerate(zip(row, layers)):
            rng = (0, 1) if label.startswith("sigmoid") else ((-1, 1) if label.startswith("tanh") else (0, 3))
            ax.hist(h.ravel(), bins=30, range=rng)
            ax.set_title(f"{label}: layer {i + 1}", fontsize=8)
            ax.set_xlabel("activation", fontsize=7)
            ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, os.path.join(out_dir, "histograms.png"))
    stats = {label: dict(std=[float(h.std()) for h in layers],
                         saturated=[float(np.mean((h < 0.05) | (h > 0.95))) for h in layers])
             for label, layers in acts.items()}

    iterations = 100 if quick else 2000
    dataset, source, train, _ = tutorial_dataset(ctx, limit_train=2000 if quick else None, limit_test=100)
    curves = {}
    for init, scale in (("normal", 0.01), ("xavier", None), ("he", None)):
        label = "std 0.01" if init == "normal" else init
        params, state = models.mlp_params(ctx, (784, 100, 100, 100, 100, 10), init=init, seed=0,
                                          init_scale=scale or 0.01)
        curves[label] = train_mlp_iterations(models.mlp, params, state, SGD(lr=0.01), train, iterations, 128, 0)
        log(f"init: {label} final smoothed loss {smooth(curves[label])[-1]:.4f}")
    fig, ax = subplots(figsize=(7, 5))
    for label, c in curves.items():
        ax.plot(smooth(c), label=label)
    ax.set(xlabel="iteration", ylabel="training loss (moving average of 50)",
           title=f"MLP 784-100x4-10 ReLU, SGD lr 0.01, on {dataset}")
    ax.legend()
    save_figure(fig, os.path.join(out_dir, "init_loss.png"))

    final = {k: float(smooth(c)[-1]) for k, c in curves.items()}
    s1, s001 = stats["sigmoid std 1"], stats["sigmoid std 0.01"]
    keep = {k: min(stats[k]["std"]) for k in ("sigmoid Xavier", "tanh Xavier", "relu He")}
    claims = [
        verdict("std 1 saturates sigmoid activations at 0 and 1", min(s1["saturated"]) > 0.5,
                "fraction of activations below 0.05 or above 0.95 per layer: "
                + ", ".join(f"{v:.2f}" for v in s1["saturated"])),
        verdict("std 0.01 collapses sigmoid activations to 0.5", max(s001["std"][1:]) < 0.02,
                "activation std per layer: " + ", ".join(f"{v:.4f}" for v in s001["std"])),
        verdict("Xavier (sigmoid, tanh) and He (ReLU) keep a spread in every layer", min(keep.values()) > 0.05,
                "smallest per-layer activation std: " + ", ".join(f"{k} {v:.3f}" for k, v in keep.items())),
        verdict("with std 0.01 the MLP does not learn (loss stays near ln 10 = 2.30)",
                final["std 0.01"] > 2.0, f"final smoothed loss {final['std 0.01']:.3f} after {iterations} iterations"),
        verdict("He learns fastest", final["he"] < min(final["xavier"], final["std 0.01"]),
                ", ".join(f"{k} {v:.3f}" for k, v in final.items()),
                partly=final["he"] < final["std 0.01"]),
    ]
    metrics = dict(description=__doc__.split('\n', 1)[1].strip(), experiment="init", title=TITLE, dataset=dataset, data_source=source, quick=quick,
                   iterations=iterations, activation_stats=stats, final_smoothed_loss=final,
                   loss_curves={k: c.tolist() for k, c in curves.items()}, claims=claims,
                   figures=["histograms.png", "init_loss.png"])
    return save_metrics(out_dir, metrics)
