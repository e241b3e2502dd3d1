"""`bn-paper`: Figure 1 of Ioffe & Szegedy (2015), the paper behind every tutorial, over learning rates.

MNIST digits (mnist-5k, or full MNIST when found) and Fashion-MNIST; a fully
connected net 784-100-100-100-10 with sigmoid units, plain SGD, batch 60, with
and without batch norm before each sigmoid.  The paper names "small random
Gaussian" weights and no learning rate, and its argument is that BN makes
*higher* learning rates usable, which one learning rate cannot show: so the
study sweeps the learning rate (0.1, 0.5, 2, 8, then x4 until the net without
BN fails in every seed, at most 128) and two weight scales, N(0, 0.1²) and
N(0, 0.01²), each with and without BN.  Every 200 steps: the test accuracy,
and the 15th, 50th and 85th percentiles of the input to each sigmoid of the
last hidden layer over 1,000 fixed test images (inference mode: BN reads its
moving statistics).  The paper trained 50,000 steps; here 5,000 per run, so
that the whole sweep fits the time budget: the change of each setting's
accuracy over the second half of its run is given below, so that one sees
where the curves have settled and where they still move.
Claims: (a) with BN the test accuracy is higher, and reached sooner, judged
setting by setting and for each net at its best setting of the sweep; the
paper's argument, BN lets higher learning rates train; (b, c) without BN the
distribution of a sigmoid's input drifts during training, with BN it stays
put (at the setting of the earlier report, scale 0.1 and lr 0.5). The drift
is the distance the median moves between 10 % of training and the end, in
units of the 15-85 percentile width at 10 %.
"""
import functools
import os
from typing import NamedTuple

import numpy as np

from .. import functional as F
from .. import models
from ..bn_trace import PERCENTILES, PercentileProbe
from ..jit import jit
from ..optim import SGD
from ..plot import plot_band, plot_range, save_figure, subplots
from . import spread
from .result import StudyResult, describe, verdict
from .common import AccuracyRecorder, load_study_data, seed_list, study_datasets, train_mlp_iterations
from .workers import default_jobs, map_runs, worker_cache

TITLE = "The batch-norm paper's Figure 1: accuracy and a sigmoid's input over training, learning rates and scales"
SIZES = (784, 100, 100, 100, 10)
SCALES = (0.1, 0.01)         # N(0, s^2): ours of the earlier report, and one closer to "small random Gaussian"
LRS = (0.1, 0.5, 2.0, 8.0)   # at least these; then x LR_FACTOR while the net without BN still learns
LR_FACTOR, LR_CAP = 4, 128.0
HEADLINE = (0.1, 0.5)        # (scale, lr) of the earlier report: the drift claim and the percentile figure
BATCH = 60
STEPS, EVERY = 5000, 200
QUICK_STEPS, QUICK_EVERY = 600, 100
QUICK_SCALES, QUICK_LRS = (0.1,), (0.5, 8.0)
FAILS_BELOW = 0.2            # a net fails at a setting when its final test accuracy is below this (chance is 0.1)
LEARNS_FROM = 0.5            # ... and learns at a setting when it is at least this
UNIT = 0                # the sigmoid of the last hidden layer the figures follow (the drift is given for all)
PROBE_SIZE = 1000       # fixed test images the percentiles are taken over
EARLY_FRACTION = 0.1    # "sooner": the accuracy after this fraction of training; the drift is measured from here
TUTORIAL = {
    "accuracy": "Figure 1(a): the BN curve above, and reaching its plateau far earlier (MNIST, 50,000 steps; "
                "a plot, no number in the text)",
    "lr": "Section 3.3 / 4.2: BN makes higher learning rates usable (shown on Inception, not on the MNIST net)",
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


class RunTask(NamedTuple):
    """One training run of the sweep, as a worker process receives it."""
    dataset: str
    limits: tuple       # (limit_train, limit_test) of the dataset
    scale: float
    lr: float
    use_bn: bool
    seed: int
    steps: int
    every: int
    device: tuple       # (device_type, device_id)


def run_task(task):
    """One run of the sweep (in a worker process): ``train_one`` on the task's dataset, loaded once per worker."""
    import mxnet as mx
    ctx = mx.Context(*task.device)
    data = worker_cache((task.dataset, task.limits, task.device), lambda: load_study_data(task.dataset, ctx,
                                                                                          *task.limits))
    return train_one(data, task.use_bn, task.steps, task.every, task.seed, ctx, lr=task.lr, scale=task.scale)


def train_one(data, use_bn, steps, every, seed, ctx, lr=HEADLINE[1], scale=HEADLINE[0]):
    params, state = models.mlp_params(ctx, SIZES, use_bn=use_bn, init="normal", init_scale=scale, seed=seed)
    net = jit(functools.partial(models.mlp, activation="sigmoid"))
    recorder = Recorder(net, data, every)
    recorder(0, params, state)
    losses = train_mlp_iterations(net, params, state, SGD(lr=lr), data.train, steps, BATCH, seed,
                                  after_step=recorder)
    steps, accuracy = zip(*recorder.points)
    return dict(steps=list(steps), test_acc=list(accuracy), bands=recorder.bands(),
                diverged=not bool(np.all(np.isfinite(losses))))


def next_learning_rates(results, dataset, scales, lr_cap):
    """The learning rates to add after a round: per scale, the top one x LR_FACTOR while the net without BN
    has not failed there in every seed (and within ``lr_cap``)."""
    added = []
    for scale in scales:
        top = max(lr for (d, s, lr, _) in results if d == dataset and s == scale)
        failed = spread.in_every_seed([final_accuracy(r) < FAILS_BELOW for r in results[dataset, scale, top, False]])
        if not failed and top * LR_FACTOR <= lr_cap:
            added.append((scale, top * LR_FACTOR))
    return added


def final_accuracy(run):
    """A run's last test accuracy; chance for a run whose loss became non-finite."""
    return spread.DIVERGED_ACCURACY if run["diverged"] else run["test_acc"][-1]


def _sweep(names, limits, scales, lrs, lr_cap, seeds, steps, every, jobs, ctx, log):
    """{(dataset, scale, lr, use_bn): [run per seed]} over the grid, extended round by round (next_learning_rates)."""
    results = {}
    pending = [(name, scale, lr) for name in names for scale in scales for lr in lrs]
    while pending:
        tasks = [RunTask(name, limits, scale, lr, use_bn, seed, steps, every, (ctx.device_type, ctx.device_id))
                 for name, scale, lr in pending for seed in seeds for use_bn in (True, False)]

        def progress(task, r):
            k = int(np.searchsorted(r["steps"], EARLY_FRACTION * task.steps))
            log(f"bn-paper {task.dataset} scale {task.scale:g} lr {task.lr:g} seed {task.seed}: "
                f"{'BN' if task.use_bn else 'no BN'}: test accuracy {r['test_acc'][k]:.4f} at step {r['steps'][k]}, "
                f"{r['test_acc'][-1]:.4f} at step {task.steps}" + (" (diverged)" if r["diverged"] else ""))

        for task, r in zip(tasks, map_runs(run_task, tasks, jobs, progress, in_process=ctx.device_type != "cpu")):
            results.setdefault((task.dataset, task.scale, task.lr, task.use_bn), []).append(r)
        pending = [(name, scale, lr) for name in names
                   for scale, lr in next_learning_rates(results, name, scales, lr_cap)]
    return results


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


def first_reached(run, target):
    """The first recorded step at which a run's test accuracy is at least ``target`` (None: never)."""
    hits = [s for s, a in zip(run["steps"], run["test_acc"]) if a >= target]
    return hits[0] if hits else None


def compare_setting(bn, no_bn, steps):
    """BN against no BN at one setting: the differences early and at the end, the step at which each reached
    the other's final mean accuracy, and whether "higher, sooner" holds (by the spread rules)."""
    k = int(np.searchsorted(bn[0]["steps"], EARLY_FRACTION * steps))
    early = spread.difference([r["test_acc"][k] for r in bn], [r["test_acc"][k] for r in no_bn])
    final = spread.difference([final_accuracy(r) for r in bn], [final_accuracy(r) for r in no_bn])
    sooner = early["counts"] and early["mean"] > 0
    higher = final["counts"] and final["mean"] > 0
    partly = sooner or higher or spread.larger_in_every_seed(early["values"], [0.0] * len(bn)) \
        or spread.larger_in_every_seed(final["values"], [0.0] * len(bn))
    return dict(early_step=bn[0]["steps"][k], early=early, final=final,
                bn_final=[final_accuracy(r) for r in bn], no_bn_final=[final_accuracy(r) for r in no_bn],
                bn_reached=[first_reached(r, spread.mean([final_accuracy(x) for x in no_bn])) for r in bn],
                no_bn_reached=[first_reached(r, spread.mean([final_accuracy(x) for x in bn])) for r in no_bn],
                second_half=dict(bn=_second_half_change(bn), no_bn=_second_half_change(no_bn)),
                verdict="reproduced" if sooner and higher else "partly" if partly else "not reproduced")


def _setting_reason(c, steps):
    return (f"with BN minus without: {spread.fmt(c['early']['values'])} at step {c['early_step']}, "
            f"{spread.fmt(c['final']['values'])} at step {steps} (BN {spread.fmt(c['bn_final'])}, no BN "
            f"{spread.fmt(c['no_bn_final'])}); BN reached no BN's final accuracy at step "
            f"{spread.fmt(c['bn_reached'], 0, missing='never reached')}")


def _best_setting(results, name, use_bn, settings):
    """(scale, lr) with the highest mean final test accuracy of the net (with or without BN)."""
    return max(settings, key=lambda sl: spread.mean([final_accuracy(r) for r in results[(name,) + sl + (use_bn,)]]))


def _largest_learning_lr(results, name, scale, use_bn, lrs):
    """The largest learning rate at which the net learns (final accuracy >= LEARNS_FROM in every seed)."""
    learned = [lr for lr in lrs if spread.in_every_seed([final_accuracy(r) >= LEARNS_FROM
                                                          for r in results[name, scale, lr, use_bn]])]
    return max(learned) if learned else None


def _overall_claims(results, name, steps, settings, comparisons):
    """The claims over the whole sweep: higher (each net at its best setting), sooner (there), setting by
    setting, and higher learning rates."""
    best = {use_bn: _best_setting(results, name, use_bn, settings) for use_bn in (True, False)}
    at_best = {use_bn: results[(name,) + best[use_bn] + (use_bn,)] for use_bn in (True, False)}
    finals = {use_bn: [final_accuracy(r) for r in runs] for use_bn, runs in at_best.items()}
    higher = spread.difference(finals[True], finals[False])
    target = min(spread.mean(finals[True]), spread.mean(finals[False]))   # what both reach at their best
    recorded = at_best[True][0]["steps"]
    never = steps + recorded[1] - recorded[0]   # a run that never reached the target: one record after the end
    reach = {use_bn: [first_reached(r, target) or never for r in runs] for use_bn, runs in at_best.items()}
    sooner = spread.difference(reach[False], reach[True])
    held = [sl for sl in settings if comparisons[sl]["verdict"] == "reproduced"]
    some = [sl for sl in settings if comparisons[sl]["verdict"] != "not reproduced"]
    scales = sorted({s for s, _ in settings}, reverse=True)
    lrs = sorted({lr for _, lr in settings})
    usable = {s: {use_bn: _largest_learning_lr(results, name, s, use_bn, [lr for sc, lr in settings if sc == s])
                  for use_bn in (True, False)} for s in scales}
    wider = [s for s in scales if (usable[s][True] or 0) > (usable[s][False] or 0)]

    def where(sls):
        return ", ".join(f"{s:g}/{lr:g}" for s, lr in sls) or "none"

    def lr_text(lr):
        return "none" if lr is None else f"{lr:g}" + (" (the largest swept)" if lr == max(lrs) else "")

    return [
        verdict("BN reaches a higher test accuracy: each net at its best setting of the sweep",
                higher["counts"] and higher["mean"] > 0,
                f"best of the sweep (by mean final test accuracy; scale/lr): BN {spread.fmt(finals[True])} at "
                f"{where([best[True]])}, no BN {spread.fmt(finals[False])} at {where([best[False]])}; BN minus "
                f"no BN {spread.fmt(higher['values'])}",
                partly=spread.larger_in_every_seed(finals[True], finals[False]), dataset=name,
                tutorial=TUTORIAL["accuracy"]),
        verdict("BN reaches it sooner: each net at its best setting",
                sooner["counts"] and sooner["mean"] > 0,
                f"first step at which the test accuracy reached {target:.3f} (the lower of the two best means): "
                f"BN {spread.fmt(reach[True], 0)}, no BN {spread.fmt(reach[False], 0)} (a run that never reached "
                f"it counts as step {never})",
                partly=spread.larger_in_every_seed(reach[False], reach[True]), dataset=name,
                tutorial=TUTORIAL["accuracy"]),
        verdict("with BN the test accuracy is higher and reached sooner, setting by setting",
                len(held) == len(settings),
                f"higher and sooner by the spread rules at {len(held)} of {len(settings)} settings "
                f"(scale/lr: {where(held)}); in part at {where([sl for sl in some if sl not in held])}; see the "
                f"table above for each setting",
                partly=bool(some), dataset=name, tutorial=TUTORIAL["accuracy"]),
        verdict("BN makes higher learning rates usable",
                len(wider) == len(scales),
                "largest learning rate swept (" + ", ".join(f"{lr:g}" for lr in lrs) + ") at which the "
                f"net learns (test accuracy >= {LEARNS_FROM} in every seed): " + "; ".join(
                    f"scale {s:g}: BN {lr_text(usable[s][True])}, no BN {lr_text(usable[s][False])}"
                    for s in scales),
                partly=bool(wider), dataset=name, tutorial=TUTORIAL["lr"]),
    ]


def _drift_claim(results, name, steps):
    """Claims (b, c) at the headline setting."""
    per_unit = {use_bn: [drift(r["bands"], r["steps"], steps) for r in results[(name,) + HEADLINE + (use_bn,)]]
                for use_bn in (True, False)}
    unit_drift = {use_bn: [float(d[UNIT]) for d in ds] for use_bn, ds in per_unit.items()}
    median_drift = {use_bn: [float(np.median(d)) for d in ds] for use_bn, ds in per_unit.items()}
    claim = verdict(
        "without BN a sigmoid's input distribution drifts during training; with BN it is stable",
        spread.exceeds(unit_drift[False], unit_drift[True]) and spread.exceeds(median_drift[False], median_drift[True]),
        f"at scale {HEADLINE[0]:g}, lr {HEADLINE[1]:g}: median's move after the first 10 % of training, in 15-85 "
        f"widths, sigmoid {UNIT}: without BN {spread.fmt(unit_drift[False], 2)}, with BN "
        f"{spread.fmt(unit_drift[True], 2)}; median over the 100 sigmoids: without "
        f"{spread.fmt(median_drift[False], 2)}, with {spread.fmt(median_drift[True], 2)}",
        partly=spread.exceeds(median_drift[False], median_drift[True])
        or spread.exceeds(unit_drift[False], unit_drift[True])
        or (spread.larger_in_every_seed(median_drift[False], median_drift[True])
            and spread.larger_in_every_seed(unit_drift[False], unit_drift[True])),
        dataset=name, tutorial=TUTORIAL["drift"])
    return claim, dict(unit={"BN": unit_drift[True], "no BN": unit_drift[False]},
                       median_over_units={"BN": median_drift[True], "no BN": median_drift[False]})


def _reading(name, settings, comparisons, claims, steps, train_images):
    """A plain paragraph: what the paper's figure shows, what we see on ``name``, and which of our choices the
    verdicts depend on (from the measurements, not written by hand)."""
    by_claim = {c["claim"].split(":")[0]: c["verdict"] for c in claims}
    held = [sl for sl in settings if comparisons[sl]["verdict"] == "reproduced"]
    verdicts = sorted({comparisons[sl]["verdict"] for sl in settings})
    final = {True: "bn_final", False: "no_bn_final"}
    best = {bn: max(settings, key=lambda sl: spread.mean(comparisons[sl][final[bn]])) for bn in (True, False)}
    gap = spread.mean(comparisons[best[True]]["bn_final"]) - spread.mean(comparisons[best[False]]["no_bn_final"])
    moves = {(sl, bn): comparisons[sl]["second_half"]["bn" if bn else "no_bn"]
             for sl in settings for bn in (True, False)}
    at_best = (moves[best[True], True], moves[best[False], False])
    most = max(moves, key=lambda k: abs(moves[k]))
    sentences = [
        f"**Reading ({name}).** The paper's Figure 1(a) shows the BN net above the plain one from the first steps "
        f"to 50,000 (MNIST, 60,000 training digits, a learning rate it does not give).",
        f"At the setting of our earlier report (weights N(0, {HEADLINE[0]:g}²), lr {HEADLINE[1]:g}) \"higher and "
        f"sooner\" is **{comparisons[HEADLINE]['verdict']}** here; over the sweep it holds by the spread rules at "
        f"{len(held)} of {len(settings)} settings, so the verdict of one setting "
        + (f"depends on the learning rate and weight scale we pick ({', '.join(verdicts)} across the sweep)."
           if len(verdicts) > 1 else "does not depend on which one we pick."),
        f"Each net at its own best setting: \"higher\" is **{by_claim['BN reaches a higher test accuracy']}**, "
        f"\"sooner\" **{by_claim['BN reaches it sooner']}**; the paper's argument that BN makes higher learning "
        f"rates usable is **{by_claim['BN makes higher learning rates usable']}**.",
        f"Training length: {steps} steps a run (the paper: 50,000). Over the second half of the runs the mean "
        f"accuracy at each net's best setting moved by {at_best[0]:+.3f} (BN) and {at_best[1]:+.3f} (no BN), "
        + (f"less than the best-against-best difference ({gap:+.3f})" if max(map(abs, at_best)) < abs(gap) else
           f"as much as the best-against-best difference ({gap:+.3f}), so longer runs could change that verdict")
        + f"; the largest move was {moves[most]:+.3f} ({'BN' if most[1] else 'no BN'} at scale/lr "
        f"{most[0][0]:g}/{most[0][1]:g}), where longer runs could change that setting's verdict.",
        f"Dataset size: {train_images:,} training images"
        + (" (the paper: 60,000 digits), which both nets can fit; the study takes full MNIST instead when its "
           "files are found." if name == "mnist-5k" else "."),
    ]
    return " ".join(sentences)


def _settings_table(name, settings, comparisons, steps):
    """Markdown: one row per setting of the sweep, with its verdict."""
    rows = [f"Setting by setting on {name} ({steps} steps; accuracy mean ± std (min–max) over seeds; \"second "
            "half\": the change of the mean accuracy over the second half of the run, BN / no BN):", "",
            "| scale | lr | with BN | without BN | BN minus no BN at 10 % | at the end | BN reached no BN's final "
            "at step | no BN reached BN's final at step | second half | higher, sooner |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for scale, lr in settings:
        c = comparisons[scale, lr]
        rows.append(f"| {scale:g} | {lr:g} | {spread.fmt(c['bn_final'])} | {spread.fmt(c['no_bn_final'])} | "
                    f"{spread.fmt(c['early']['values'])} | {spread.fmt(c['final']['values'])} | "
                    f"{spread.fmt(c['bn_reached'], 0, missing='never')} | "
                    f"{spread.fmt(c['no_bn_reached'], 0, missing='never')} | "
                    f"{c['second_half']['bn']:+.3f} / {c['second_half']['no_bn']:+.3f} | {c['verdict']} |")
    return "\n".join(rows)


def _accuracy_figure(results, name, settings, n_seeds, path):
    scales = sorted({s for s, _ in settings}, reverse=True)
    lrs = sorted({lr for _, lr in settings})
    fig, axes = subplots(len(scales), len(lrs), figsize=(3.2 * len(lrs), 2.8 * len(scales)), squeeze=False,
                         sharex=True, sharey=True)
    for row, scale in zip(axes, scales):
        for ax, lr in zip(row, lrs):
            for use_bn, style, label in ((True, "-", "with BN"), (False, "--", "without BN")):
                runs = results.get((name, scale, lr, use_bn))
                if runs:
                    plot_band(ax, runs[0]["steps"], [r["test_acc"] for r in runs], label, style)
            ax.set(title=f"scale {scale:g}, lr {lr:g}", ylim=(0, 1))
            ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("training step")
    for row in axes:
        row[0].set_ylabel("test accuracy")
    axes[0][0].legend(loc="lower right")
    fig.suptitle(f"{name}: MLP 784-100x3-10, sigmoid, batch {BATCH} (mean and range of {n_seeds} seed(s))")
    save_figure(fig, path)


def _best_figure(results, name, settings, path):
    """Final test accuracy against the learning rate, one panel per weight scale."""
    scales = sorted({s for s, _ in settings}, reverse=True)
    fig, axes = subplots(1, len(scales), figsize=(6 * len(scales), 4.5), squeeze=False, sharey=True)
    for ax, scale in zip(axes[0], scales):
        lrs = sorted(lr for s, lr in settings if s == scale)
        for use_bn, style, label in ((True, "o-", "with BN"), (False, "s--", "without BN")):
            plot_range(ax, lrs, [[final_accuracy(r) for r in results[name, scale, lr, use_bn]] for lr in lrs], label,
                       style)
        ax.set(xscale="log", xlabel="learning rate", ylim=(0, 1), title=f"{name}: weights N(0, {scale:g}²)")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0][0].set_ylabel("test accuracy at the end (mean, range over seeds)")
    save_figure(fig, path)


def _percentile_figure(results, name, path):
    fig, axes = subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, use_bn, label in ((axes[0], False, "without BN"), (axes[1], True, "with BN")):
        r = results[(name,) + HEADLINE + (use_bn,)][0]
        for i, (q, style) in enumerate(zip(PERCENTILES, ("--", "-", ":"))):
            ax.plot(r["steps"], r["bands"][:, i, UNIT], style, color="C0" if use_bn else "C1", label=f"{q}th")
        ax.set(xlabel="training step", title=f"{label}: input to sigmoid {UNIT} of the last hidden layer")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("15th, 50th, 85th percentile")
    fig.suptitle(f"{name}, scale {HEADLINE[0]:g}, lr {HEADLINE[1]:g}, first seed, over {PROBE_SIZE} test images")
    save_figure(fig, path)


def _records(results, name, settings):
    """What metrics.json keeps of each run: the accuracy curves, and sigmoid UNIT's percentiles at the headline."""
    out = {}
    for scale, lr in settings:
        for use_bn in (True, False):
            out[f"scale {scale:g} lr {lr:g} {'BN' if use_bn else 'no BN'}"] = [
                dict(steps=r["steps"], test_acc=r["test_acc"], diverged=r["diverged"],
                     **(dict(percentiles_unit=r["bands"][:, :, UNIT].tolist()) if (scale, lr) == HEADLINE else {}))
                for r in results[name, scale, lr, use_bn]]
    return out


def run(out_dir, ctx, quick=False, log=print, seeds=1, jobs=None):
    """The sweep; its runs go to ``jobs`` worker processes of one thread each (default: one per core)."""
    os.makedirs(out_dir, exist_ok=True)
    seeds = seed_list(seeds)
    steps, every = (QUICK_STEPS, QUICK_EVERY) if quick else (STEPS, EVERY)
    scales, lrs, lr_cap = (QUICK_SCALES, QUICK_LRS, max(QUICK_LRS)) if quick else (SCALES, LRS, LR_CAP)
    limits = (3000, PROBE_SIZE) if quick else (None, None)
    datasets = study_datasets(ctx, *limits, log=log)
    results = _sweep([d.name for d in datasets], limits, scales, lrs, lr_cap, seeds, steps, every,
                     jobs or default_jobs(), ctx, log)
    claims, figures, records, drifts, tables, swept = [], [], {}, {}, [], {}
    for data in datasets:
        name = data.name
        settings = sorted({(s, lr) for (d, s, lr, _) in results if d == name}, key=lambda sl: (-sl[0], sl[1]))
        comparisons = {sl: compare_setting(results[(name,) + sl + (True,)], results[(name,) + sl + (False,)], steps)
                       for sl in settings}
        figures += [f"accuracy-{name}.png", f"best-{name}.png", f"percentiles-{name}.png"]
        _accuracy_figure(results, name, settings, len(seeds), os.path.join(out_dir, figures[-3]))
        _best_figure(results, name, settings, os.path.join(out_dir, figures[-2]))
        _percentile_figure(results, name, os.path.join(out_dir, figures[-1]))
        drift_claim, drifts[name] = _drift_claim(results, name, steps)
        data_claims = _overall_claims(results, name, steps, settings, comparisons) + [drift_claim]
        claims += data_claims
        tables += [_settings_table(name, settings, comparisons, steps),
                   _reading(name, settings, comparisons, data_claims, steps, int(data.train[0].shape[0]))]
        swept[name] = [[s, lr] for s, lr in settings]
        records[name] = _records(results, name, settings)
    result = StudyResult(
        experiment="bn-paper", title=TITLE, description=describe(__doc__) + "\n\n" + "\n\n".join(tables),
        datasets=list(records), data_source={d.name: d.source for d in datasets}, quick=quick, seeds=seeds,
        claims=claims, figures=figures,
        measurements=dict(steps=steps, every=every, settings=swept, headline=list(HEADLINE),
                          percentiles=list(PERCENTILES), unit=UNIT, drift=drifts, records=records))
    return result.save(out_dir)
