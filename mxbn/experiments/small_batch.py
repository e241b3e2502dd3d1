"""`small-batch`: what to do when batches are small (Wu & He 2018; Ioffe 2017; precise BN).

LeNet on Fashion-MNIST (the first 4,800 training images, the first 5,000 test images) with batch norm, group norm
(5 groups), layer norm, batch renormalization and no normalization, at batch sizes 2, 4, 8, 16, 32 and
128. **Equal epochs** (2 for every batch size), as in Wu & He's Figure 1, so that every run sees the same
images equally often, with the learning rate scaled linearly with the batch (plain SGD, lr 0.2 at 128:
0.2 * B / 128, Goyal et al.'s rule that Wu & He used); equal steps would give the small batches a small
fraction of the data.  He initialization, so that the net without normalization learns too.  Batch renorm
follows Ioffe's schedule in shape (plain BN for the first 30 % of the steps, r_max 3 and d_max 5 from
80 %).  After training, every BN net is also evaluated with precise statistics (mxbn.precise_bn over 20
training batches of 128, the weights fixed) instead of its moving averages.

What transfers from the papers (ResNet-50 / Inception on ImageNet, 100+ epochs on 8 GPUs): the
mechanism (batch statistics of 2 or 4 samples are noisy estimates, and the moving averages used at
inference then disagree with what training normalized by).  What does not: the absolute numbers, the
depth (LeNet has two normalization layers, ResNet-50 has 53), and the training length (a few thousand
steps here).
"""
import os
from typing import NamedTuple

from .. import models
from ..data import epoch_batches, load_dataset
from ..jit import jit
from ..optim import SGD
from ..plot import plot_range, save_figure, subplots
from ..precise_bn import precise_bn
from ..seeding import precise_bn_rng
from ..train import TrainingDiverged, evaluate, fit
from . import spread
from .common import load_study_data, seed_list
from .result import StudyResult, describe, verdict
from .workers import default_jobs, map_runs, worker_cache

TITLE = "Small batches: batch norm, group norm, layer norm, batch renorm, precise BN"
BATCH_SIZES = (2, 4, 8, 16, 32, 128)
NORMS = ("bn", "gn", "ln", "renorm", "none")
LABELS = {"bn": "batch norm", "gn": "group norm", "ln": "layer norm", "renorm": "batch renorm",
          "none": "no norm", "bn-precise": "batch norm, precise statistics"}
BASE_LR, BASE_BATCH = 0.2, 128
SMALL = (2, 4)                 # "small batches" of the claims; the reference batch is 32 (Wu & He's)
REFERENCE_BATCH = 32
PRECISE_BATCHES, PRECISE_BATCH_SIZE = 20, 128
FLAT_MARGIN = 0.02             # "stays flat": within 2 points of its batch-32 accuracy, LeNet's epoch noise
# Wu & He 2018, Figure 1 / Table (ResNet-50, ImageNet val error per images per GPU: 32, 16, 8, 4, 2)
WU_HE = ("ResNet-50 on ImageNet, error at 32/16/8/4/2 images per GPU: BN 23.6/23.7/24.8/27.3/34.7 %, "
         "GN 24.1/24.2/24.0/24.0/24.1 %")
IOFFE = ("Inception-v3 on ImageNet, microbatches of 4: BN 74.2 % top-1, batch renorm 76.5 %, batch 32 "
         "baseline 78.3 %")


def _key(norm, batch_size):
    return f"{norm} batch {batch_size}"


def train_one(norm, batch_size, train, test, epochs, ctx, seed, log):
    """(history, params, state, net) of one run; history None if the loss became non-finite."""
    params, state = models.lenet_params(ctx, init="he", seed=seed, norm=norm)
    net = jit(models.lenet)
    lr = BASE_LR * batch_size / BASE_BATCH
    total = epochs * -(-train[0].shape[0] // batch_size)
    after_step = models.renorm_schedule(total) if norm == "renorm" else None
    if after_step is not None:
        after_step(0, params, state)
    try:
        history = fit(net, params, state, SGD(lr=lr), SGD(lr=lr).init(params), train, test, epochs, batch_size,
                      seed=seed, log=lambda *_: None, after_step=after_step)
    except TrainingDiverged as e:
        log(f"small-batch seed {seed}: {norm} batch {batch_size}: {e}")
        history = None
    return history, params, state, net


def _precise_accuracy(net, params, state, train, test, seed):
    batches, _ = epoch_batches(*train, PRECISE_BATCH_SIZE, precise_bn_rng(seed, 0))
    new_state, _ = precise_bn(net, params, state, batches, PRECISE_BATCHES)
    return evaluate(net, params, new_state, *test, PRECISE_BATCH_SIZE)[1]


class RunTask(NamedTuple):
    """One training run, as a worker process receives it."""
    norm: str
    batch_size: int
    seed: int
    epochs: int
    limits: tuple       # (limit_train, limit_test) of Fashion-MNIST
    device: tuple       # (device_type, device_id)


def run_task(task):
    """(final test accuracy or None if diverged, with precise statistics for BN or None) of one run, in a
    worker process (the data loaded once per worker)."""
    import mxnet as mx
    ctx = mx.Context(*task.device)
    data = worker_cache(("fashion-mnist", task.limits, task.device),
                        lambda: load_study_data("fashion-mnist", ctx, *task.limits))
    train, test = data.train, data.test
    messages = []
    history, params, state, net = train_one(task.norm, task.batch_size, train, test, task.epochs, ctx, task.seed,
                                            log=messages.append)
    if history is None:
        return None, None, messages[0]
    precise = _precise_accuracy(net, params, state, train, test, task.seed) if task.norm == "bn" else None
    return history[-1]["test_acc"], precise, None


def _train_all(limits, epochs, batch_sizes, ctx, seeds, jobs, log):
    """{key: final test accuracy per seed (None if diverged)}, with "bn-precise" keys for the BN nets."""
    tasks = [RunTask(norm, b, seed, epochs, limits, (ctx.device_type, ctx.device_id))
             for seed in seeds for norm in NORMS for b in batch_sizes]

    def progress(task, result):
        final, precise, diverged = result
        if diverged is not None:
            log(diverged)
        line = f"small-batch seed {task.seed}: {task.norm} batch {task.batch_size}: test accuracy " + (
            "diverged" if final is None else f"{final:.4f}")
        log(line + ("" if precise is None else f", with precise statistics {precise:.4f}"))

    acc = {}
    for task, (final, precise, _) in zip(tasks, map_runs(run_task, tasks, jobs, progress,
                                                          in_process=ctx.device_type != "cpu")):
        acc.setdefault(_key(task.norm, task.batch_size), []).append(final)
        if task.norm == "bn":
            acc.setdefault(_key("bn-precise", task.batch_size), []).append(precise)
    return acc


def _figure(final, batch_sizes, epochs, n_seeds, dataset_name, out_dir):
    fig, ax = subplots(figsize=(7, 5))
    styles = {"bn": "o-", "gn": "s-", "ln": "^-", "renorm": "D-", "none": "x:", "bn-precise": "o--"}
    for norm in NORMS[:1] + ("bn-precise",) + NORMS[1:]:
        plot_range(ax, batch_sizes, [final[_key(norm, b)] for b in batch_sizes], LABELS[norm], styles[norm])
    ax.set(xscale="log", xlabel="batch size (images per step)", ylabel=f"test accuracy after {epochs} epoch(s)",
           title=f"LeNet on {dataset_name}, equal epochs, lr 0.2 x batch/128 (mean, range of {n_seeds} seed(s))")
    ax.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
    ax.legend()
    save_figure(fig, os.path.join(out_dir, "accuracy_vs_batch.png"))


def _gaps(final, norm, small, reference):
    """Per-seed accuracy at ``reference`` minus at each small batch size: {batch: difference summary}."""
    return {b: spread.difference(final[_key(norm, reference)], final[_key(norm, b)]) for b in small}


def _claims(final, batch_sizes, dataset_name):
    small = [b for b in SMALL if b in batch_sizes]
    reference = REFERENCE_BATCH if REFERENCE_BATCH in batch_sizes else max(batch_sizes)
    bn_loss = _gaps(final, "bn", small, reference)
    gn_loss = _gaps(final, "gn", small, reference)
    bn_degrades = all(d["counts"] and d["mean"] > 0 for d in bn_loss.values())
    gn_flat = all(abs(d["mean"]) < FLAT_MARGIN for d in gn_loss.values())

    def at(norm):
        return "; ".join(f"{b}: {spread.fmt(final[_key(norm, b)])}" for b in batch_sizes)

    renorm_gain = {b: spread.difference(final[_key("renorm", b)], final[_key("bn", b)]) for b in small}
    # "much of" the loss: at least half of what BN lost against its batch-32 accuracy
    recovers_much = all(renorm_gain[b]["counts"] and renorm_gain[b]["mean"] >= 0.5 * bn_loss[b]["mean"] > 0
                        for b in small)
    precise_gain = {b: spread.difference(final[_key("bn-precise", b)], final[_key("bn", b)]) for b in small}
    return [
        verdict("GN's accuracy stays flat while BN's degrades as the batch shrinks",
                bn_degrades and gn_flat,
                f"test accuracy by batch size, BN {at('bn')}; GN {at('gn')}; batch {reference} minus batch "
                + ", ".join(f"{b}: BN {spread.fmt(bn_loss[b]['values'])}, GN {spread.fmt(gn_loss[b]['values'])}"
                            for b in small),
                partly=bn_degrades or gn_flat, dataset=dataset_name, tutorial=WU_HE),
        verdict("Batch renorm recovers much of BN's small-batch loss",
                recovers_much,
                f"batch renorm {at('renorm')}; renorm minus BN " + ", ".join(
                    f"at {b}: {spread.fmt(renorm_gain[b]['values'])} (BN lost {spread.fmt(bn_loss[b]['values'])})"
                    for b in small),
                partly=any(spread.exceeds(final[_key("renorm", b)], final[_key("bn", b)]) for b in small),
                dataset=dataset_name, tutorial=IOFFE),
        verdict("Recomputed (precise) statistics close part of BN's train/inference gap at small batches",
                all(d["counts"] and d["mean"] > 0 for d in precise_gain.values()),
                f"BN with precise statistics {at('bn-precise')}; minus BN's moving averages " + ", ".join(
                    f"at {b}: {spread.fmt(precise_gain[b]['values'])}" for b in small),
                partly=any(spread.larger_in_every_seed(final[_key("bn-precise", b)], final[_key("bn", b)])
                           for b in small),
                dataset=dataset_name, tutorial="Detectron2/fvcore's PreciseBN (no figure for small batches)"),
    ]


def run(out_dir, ctx, quick=False, log=print, seeds=1, jobs=None):
    """The study; its runs go to ``jobs`` worker processes of one thread each (default: one per core)."""
    os.makedirs(out_dir, exist_ok=True)
    seeds = seed_list(seeds)
    ds = load_dataset("fashion-mnist", allow_download=False)
    limit_train, limit_test, epochs, batch_sizes = (512, 500, 1, (4, 32)) if quick else (4800, 5000, 2, BATCH_SIZES)
    final = _train_all((limit_train, limit_test), epochs, batch_sizes, ctx, seeds, jobs or default_jobs(), log)
    final = {k: [spread.accuracy_or_chance(v) for v in vs] for k, vs in final.items()}
    _figure(final, batch_sizes, epochs, len(seeds), ds.name, out_dir)
    result = StudyResult(
        experiment="small-batch", title=TITLE, description=describe(__doc__), datasets=[ds.name],
        data_source=ds.source, quick=quick, seeds=seeds, claims=_claims(final, batch_sizes, ds.name),
        figures=["accuracy_vs_batch.png"],
        measurements=dict(epochs=epochs, batch_sizes=list(batch_sizes),
                          train_images=min(limit_train, len(ds.train_labels)),
                          final_test_acc={k: spread.summary(v) for k, v in final.items()}))
    return result.save(out_dir)

