"""`bn-paper`: Figure 1 of Ioffe & Szegedy (2015), the paper behind every tutorial.

MNIST digits (mnist-5k, or full MNIST when found) and Fashion-MNIST; a fully
connected net 784-100-100-100-10 with sigmoid units, weights from N(0, 0.1²),
plain SGD lr 0.5, batch 60, with and without batch norm before each sigmoid.
The paper names "small random Gaussian" weights and no learning rate: the
scale 0.1 and lr 0.5 are ours, fixed before the first run and not tuned.
Every 200 steps: the test accuracy, and the 15th, 50th and 85th percentiles of
the input to each sigmoid of the last hidden layer over 1,000 fixed test
images (inference mode: BN reads its moving statistics).  The paper trained
50,000 steps; here 20,000, to fit the time budget: how much the curves still
move over the second half is given below.
Claims: (a) with BN the test accuracy is higher, and reached sooner; (b, c)
without BN the distribution of a sigmoid's input drifts during training, with
BN it stays put. The drift is the distance the median moves between 10 % of
training and the end, in units of the 15-85 percentile width at 10 %.
"""
import functools
import os

import numpy as np

from .. import functional as F
from .. import models
from ..bn_trace import PERCENTILES, PercentileProbe
from ..jit import jit
from ..optim import SGD
from ..plot import plot_band, save_figure, subplots
from . import spread
from .result import StudyResult, describe, verdict
from .common import AccuracyRecorder, seed_list, study_datasets, train_mlp_iterations

TITLE = "The batch-norm paper's Figure 1: accuracy and a sigmoid's input over training"
SIZES = (784, 100, 100, 100, 10)
INIT_STD = 0.1          # "small random Gaussian values": N(0, 0.1^2)
LR, BATCH = 0.5, 60
STEPS, EVERY = 20000, 200
QUICK_STEPS, QUICK_EVERY = 600, 100
UNIT = 0                # the sigmoid of the last hidden layer the figures follow (the drift is given for all)
PROBE_SIZE = 1000       # fixed test images the percentiles are taken over
EARLY_FRACTION = 0.1    # "sooner": the accuracy after this fraction of training; the drift is measured from here
TUTORIAL = {
    "accuracy": "Figure 1(a): the BN curve above, and reaching its plateau far earlier (MNIST, 50,000 steps; "
                "a plot, no number in the text)",
    "drift": "Figure 1(b, c): without BN the 15/50/85th percentiles move over training, with BN they stay put (MNIST)",
}


def _sigmoid_input_percentiles(params, state, X):
    """(3, units): the percentiles of the last hidden layer's sigmoid input per unit (inference mode)."""
    _, taps = models.mlp_layers(params, state, X, False, activation="sigmoid")
    return F.percentiles(taps[-1][2], PERCENTILES, axis=0)


class Recorder(AccuracyRecorder):
    """The test accuracy and the percentiles every ``every`` steps (the percentiles stay on the device)."""

    def __init__(self, net, data, every):
        super().__init__(net, data.test, every)
        self.percentiles = PercentileProbe(jit(_sigmoid_input_percentiles), data.test[0][:PROBE_SIZE], every)

    def __call__(self, step, params, state):
        super().__call__(step, params, state)
        self.percentiles(step, params, state)

    def bands(self):
        """(records, 3, units) float64."""
        return self.percentiles.read()


def train_one(data, use_bn, steps, every, seed, ctx):
    params, state = models.mlp_params(ctx, SIZES, use_bn=use_bn, init="normal", init_scale=INIT_STD, seed=seed)
    net = jit(functools.partial(models.mlp, activation="sigmoid"))
    recorder = Recorder(net, data, every)
    recorder(0, params, state)
    train_mlp_iterations(net, params, state, SGD(lr=LR), data.train, steps, BATCH, seed, after_step=recorder)
    steps, accuracy = zip(*recorder.points)
    return dict(steps=list(steps), test_acc=list(accuracy), bands=recorder.bands())


def drift(bands, steps, total):
    """Per unit: |median at the end - median at EARLY_FRACTION of training| / (85th - 15th) there."""
    k = int(np.searchsorted(steps, EARLY_FRACTION * total))
    width = bands[k, 2] - bands[k, 0]
    return np.abs(bands[-1, 1] - bands[k, 1]) / np.maximum(width, 1e-12)


def _second_half_change(runs):
    """Mean over seeds of the test accuracy at the end minus at the middle of training."""
    steps = runs[0]["steps"]
    middle = int(np.searchsorted(steps, steps[-1] // 2))
    return float(np.mean([r["test_acc"][-1] - r["test_acc"][middle] for r in runs]))


def _accuracy_figure(results, name, n_seeds, path):
    fig, ax = subplots(figsize=(7, 5))
    for use_bn, style, label in ((True, "-", "with BN"), (False, "--", "without BN")):
        runs = results[use_bn]
        plot_band(ax, runs[0]["steps"], [r["test_acc"] for r in runs], label, style)
    ax.set(xlabel="training step", ylabel="test accuracy", ylim=(0, 1),
           title=f"{name}: MLP 784-100x3-10, sigmoid, batch {BATCH}\n(mean and range of {n_seeds} seed(s))")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def _percentile_figure(results, name, path):
    fig, axes = subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, use_bn, label in ((axes[0], False, "without BN"), (axes[1], True, "with BN")):
        r = results[use_bn][0]
        for i, (q, style) in enumerate(zip(PERCENTILES, ("--", "-", ":"))):
            ax.plot(r["steps"], r["bands"][:, i, UNIT], style, color="C0" if use_bn else "C1", label=f"{q}th")
        ax.set(xlabel="training step", title=f"{label}: input to sigmoid {UNIT} of the last hidden layer")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("15th, 50th, 85th percentile")
    fig.suptitle(f"{name}, first seed, over {PROBE_SIZE} test images")
    save_figure(fig, path)


def _claims(results, name, steps):
    bn, no_bn = results[True], results[False]
    k = int(np.searchsorted(bn[0]["steps"], EARLY_FRACTION * steps))
    early_step = bn[0]["steps"][k]
    early = spread.difference([r["test_acc"][k] for r in bn], [r["test_acc"][k] for r in no_bn])
    final = spread.difference([r["test_acc"][-1] for r in bn], [r["test_acc"][-1] for r in no_bn])
    target = spread.mean([r["test_acc"][-1] for r in no_bn])

    def reached(r):  # first recorded step at which the run reached no BN's final mean accuracy
        hits = [s for s, a in zip(r["steps"], r["test_acc"]) if a >= target]
        return hits[0] if hits else None

    bn_reach = [reached(r) for r in bn]
    per_unit = {use_bn: [drift(r["bands"], r["steps"], steps) for r in results[use_bn]] for use_bn in (True, False)}
    unit_drift = {use_bn: [float(d[UNIT]) for d in ds] for use_bn, ds in per_unit.items()}
    median_drift = {use_bn: [float(np.median(d)) for d in ds] for use_bn, ds in per_unit.items()}
    sooner = early["counts"] and early["mean"] > 0
    higher = final["counts"] and final["mean"] > 0
    return [
        verdict("BN reaches a higher test accuracy, sooner", sooner and higher,
                f"with BN minus without: {spread.fmt(early['values'])} at step {early_step}, "
                f"{spread.fmt(final['values'])} at step {steps} (BN {spread.fmt([r['test_acc'][-1] for r in bn])}, "
                f"no BN {spread.fmt([r['test_acc'][-1] for r in no_bn])}); BN reached no BN's final accuracy "
                f"at step {spread.fmt(bn_reach, 0, missing='never reached')}",
                partly=sooner or higher or spread.larger_in_every_seed(early["values"], [0.0] * len(bn))
                or spread.larger_in_every_seed(final["values"], [0.0] * len(bn)),
                dataset=name, tutorial=TUTORIAL["accuracy"]),
        verdict("without BN a sigmoid's input distribution drifts during training; with BN it is stable",
                spread.exceeds(unit_drift[False], unit_drift[True])
                and spread.exceeds(median_drift[False], median_drift[True]),
                f"median's move after the first 10 % of training, in 15-85 widths, sigmoid {UNIT}: without BN "
                f"{spread.fmt(unit_drift[False], 2)}, with BN {spread.fmt(unit_drift[True], 2)}; median over the "
                f"100 sigmoids: without {spread.fmt(median_drift[False], 2)}, with {spread.fmt(median_drift[True], 2)}",
                partly=spread.exceeds(median_drift[False], median_drift[True])
                or spread.exceeds(unit_drift[False], unit_drift[True])
                or (spread.larger_in_every_seed(median_drift[False], median_drift[True])
                    and spread.larger_in_every_seed(unit_drift[False], unit_drift[True])),
                dataset=name, tutorial=TUTORIAL["drift"]),
    ], dict(unit=unit_drift, median_over_units=median_drift)


def run(out_dir, ctx, quick=False, log=print, seeds=1):
    os.makedirs(out_dir, exist_ok=True)
    seeds = seed_list(seeds)
    steps, every = (QUICK_STEPS, QUICK_EVERY) if quick else (STEPS, EVERY)
    datasets = study_datasets(ctx, limit_train=3000 if quick else None, limit_test=PROBE_SIZE if quick else None,
                              log=log)
    claims, figures, records, drifts, settled = [], [], {}, {}, []
    for data in datasets:
        results = {True: [], False: []}
        for seed in seeds:
            for use_bn in (True, False):
                r = train_one(data, use_bn, steps, every, seed, ctx)
                results[use_bn].append(r)
                log(f"bn-paper {data.name} seed {seed}: {'BN' if use_bn else 'no BN'}: test accuracy "
                    f"{r['test_acc'][len(r['test_acc']) // 10]:.4f} at step {r['steps'][len(r['steps']) // 10]}, "
                    f"{r['test_acc'][-1]:.4f} at step {steps}")
        figures += [f"accuracy-{data.name}.png", f"percentiles-{data.name}.png"]
        _accuracy_figure(results, data.name, len(seeds), os.path.join(out_dir, figures[-2]))
        _percentile_figure(results, data.name, os.path.join(out_dir, figures[-1]))
        data_claims, drifts[data.name] = _claims(results, data.name, steps)
        settled.append(f"{data.name}: with BN {_second_half_change(results[True]):+.3f}, "
                       f"without {_second_half_change(results[False]):+.3f}")
        claims += data_claims
        records[data.name] = {("BN" if use_bn else "no BN"): [
            dict(steps=r["steps"], test_acc=r["test_acc"],
                 percentiles_unit=r["bands"][:, :, UNIT].tolist()) for r in runs] for use_bn, runs in results.items()}
    description = (describe(__doc__) + "\n\nChange of the mean test accuracy over the second "
                   f"half of training (step {steps // 2} to {steps}): " + "; ".join(settled) + ".")
    result = StudyResult(
        experiment="bn-paper", title=TITLE, description=description, datasets=list(records),
        data_source={d.name: d.source for d in datasets}, quick=quick, seeds=seeds, claims=claims, figures=figures,
        measurements=dict(steps=steps, every=every, percentiles=list(PERCENTILES), unit=UNIT, drift=_json_keys(drifts),
                          records=records))
    return result.save(out_dir)


def _json_keys(drifts):
    return {name: {kind: {("BN" if bn else "no BN"): v for bn, v in d.items()} for kind, d in per.items()}
            for name, per in drifts.items()}
