"""The LeNet job behind ``scripts/train_cnn.py``: config in, files out.

Joins the pieces: context, seeding, data, model, optimizer, LR schedule and
``fit``; writes ``config.json``, ``checkpoint.params`` (after every epoch),
``metrics.json``, ``metrics.csv``, ``curves.png``, and at the end ``evaluation.json`` with
``confusion.png`` and ``predictions.png`` into the output folder,
each atomically.
"""
import contextlib
import csv
import functools
import io
import json
import os
import signal
import sys

import mxnet as mx
import numpy as np

from . import __version__, _runtime
from .atomic import atomic_write_json, atomic_write_text, writable_dir
from .bn_trace import BNTrace, merge as merge_traces
from .augment import random_flip_shift
from .checkpoint import check_compatible, load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig
from .context import resolve_context, resolve_contexts
from .data import (DATASETS, DataError, default_validation_size, epoch_batches, load_dataset, to_device,
                   validation_split)
from .jit import jit
from .models import (LENET_BLOCKS, LENET_STAGE_NORMS, LENET_STAGES, lenet_layers, lenet_params, min_train_batch_size,
                     renorm_schedule)
from .optim import NO_DECAY_SUFFIXES, make_optimizer
from .parallel import (DataParallelStep, across_devices, check_kvstore, create_kvstore, fingerprint,
                       is_distributed, jitted_stages, per_device, shard)
from . import liveness
from .precise_bn import precise_bn
from .predict import load_lenet_checkpoint, make_net, net_title
from .plot import plot_bn_trace, plot_confusion, plot_history, plot_predictions
from .seeding import precise_bn_rng, seed_everything
from .train import (HISTORY_COLUMNS, SingleDeviceStep, TrainingDiverged, TrainingInterrupted, best_epoch,
                    confusion_matrix, evaluate, fit, patience_exhausted, predict, trainable_subset)

__all__ = ["train_cnn", "eval_checkpoint", "prepare_out_dir", "make_lr_schedule",
           "RUN_FILES", "OutDirError"]

CHECKPOINT = "checkpoint.params"
BEST = "best.params"   # the epoch of the best validation accuracy, in the checkpoint's format
METRICS = "metrics.json"
EVALUATION = "evaluation.json"
BN_TRACE = "bn_trace.json"
RUN_FILES = ("config.json", CHECKPOINT, BEST, METRICS, "metrics.csv", "curves.png", EVALUATION, "confusion.png",
             "predictions.png", BN_TRACE, "bn_trace.png")


class OutDirError(ConfigError):
    """--out cannot be used as asked (not writable, or holds another run)."""


def run_files(config):
    """The files of RUN_FILES a run with ``config`` writes (the BN trace only with trace_bn, best.params only
    with a validation split)."""
    return tuple(f for f in RUN_FILES if (config.trace_bn or f not in (BN_TRACE, "bn_trace.png"))
                 and (config.val_size != 0 or f != BEST))


def prepare_out_dir(out_dir, resume=False, overwrite=False, writes=RUN_FILES):
    """Create ``out_dir`` or check it may be used.

    A folder that already holds a run is refused unless ``resume`` (continue it)
    or ``overwrite`` (its files are replaced as the new run writes them; those
    of mxbn's files the new run will not write, ``writes`` says which it will,
    are removed now, so that none of the old run is left beside the new one).
    Nothing else is ever deleted.
    """
    if resume and overwrite:
        raise OutDirError("--resume and --overwrite exclude each other")
    writable_dir(out_dir, "--out", OutDirError)
    if resume or overwrite:
        _remove_stale_temp_files(out_dir)
    existing = [f for f in RUN_FILES if os.path.exists(os.path.join(out_dir, f))]
    has_checkpoint = os.path.exists(os.path.join(out_dir, CHECKPOINT))
    if resume and not has_checkpoint:
        raise OutDirError(f"--resume: no {CHECKPOINT} in {out_dir} to resume from")
    if existing and not (resume or overwrite):
        raise OutDirError(f"--out {out_dir} already holds a run ({', '.join(existing)}); pass --resume "
                          f"to continue it, --overwrite to replace it, or choose another --out")
    if overwrite:
        for name in existing:
            if name not in writes:
                os.remove(os.path.join(out_dir, name))
    return out_dir


def _remove_failed_out(out_dir):
    """After a run that failed before its first checkpoint in a folder it created: remove what it wrote
    (mxbn's files only) and the folder if that leaves it empty."""
    if os.path.exists(os.path.join(out_dir, CHECKPOINT)):
        return
    _remove_stale_temp_files(out_dir)
    for name in RUN_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(out_dir, name))
    with contextlib.suppress(OSError):
        os.rmdir(out_dir)   # only if empty


def _remove_stale_temp_files(out_dir):
    """Temp files of atomic writes that a hard kill (SIGKILL) left behind; never a result file."""
    for name in os.listdir(out_dir):
        if name.endswith(".tmp") and any(name.startswith("." + f + ".") for f in RUN_FILES):
            os.remove(os.path.join(out_dir, name))


def make_lr_schedule(config, iters_per_epoch):
    """A gluoncv LR scheduler (callable: iteration -> lr), or None for a constant lr.

    Warm-up, if any, is linear from 0 to ``lr`` over ``warmup_epochs`` and is
    followed by the named schedule over the remaining iterations.
    """
    from .schedules import LRScheduler, LRSequential
    warmup_iters = int(round(config.warmup_epochs * iters_per_epoch))
    if config.lr_schedule == "constant" and warmup_iters == 0:
        return None
    main_iters = config.epochs * iters_per_epoch - warmup_iters
    kwargs = dict(base_lr=config.lr, niters=main_iters)
    if config.lr_schedule == "step":
        kwargs.update(step_iter=[e * iters_per_epoch - warmup_iters for e in config.lr_step_epochs],
                      step_factor=config.lr_factor)
    elif config.lr_schedule == "cosine":
        kwargs.update(target_lr=0.0)
    main = LRScheduler(config.lr_schedule, **kwargs)
    if warmup_iters == 0:
        return main
    # gluoncv's linear mode divides by niters - 1, so a warm-up needs >= 2 iterations.
    warmup = LRScheduler("linear", base_lr=0.0, target_lr=config.lr, niters=max(warmup_iters, 2))
    return LRSequential([warmup, main])


def _history_csv(history):
    # one column order whatever the entries' (a resumed run's come back from JSON sorted)
    columns = [c for c in HISTORY_COLUMNS if c in history[0]] + sorted(set(history[0]) - set(HISTORY_COLUMNS))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def _best_record(history):
    """metrics.json's "best": the epoch chosen by validation accuracy alone, its validation numbers and, for
    the report, the test accuracy of that epoch's model (best.params); None without a validation split."""
    epoch = best_epoch(history)
    if epoch is None:
        return None
    h = history[epoch - 1]
    return dict(epoch=epoch, selected_by="validation accuracy", file=BEST, val_acc=h["val_acc"],
                val_loss=h["val_loss"], test_acc=h["test_acc"], test_loss=h["test_loss"])


def _write_results(out_dir, config, dataset, ctx, history, workers=1, threads_per_part=(), early_stopped=False):
    metrics = dict(
        mxbn_version=__version__, config=config.to_dict(), dataset=dataset.name, data_source=dataset.source,
        context=str(ctx), workers=workers, threads=_runtime.thread_settings(),
        threads_per_part=list(threads_per_part), history=history,
        # the test numbers belong to the model of the epoch named beside them (checkpoint.params)
        final=dict(epoch=history[-1]["epoch"], file=CHECKPOINT, test_acc=history[-1]["test_acc"],
                   test_loss=history[-1]["test_loss"], train_acc=history[-1]["train_acc"],
                   val_acc=history[-1].get("val_acc")),
        best=_best_record(history), early_stopped=early_stopped)
    atomic_write_json(os.path.join(out_dir, METRICS), metrics)
    atomic_write_text(os.path.join(out_dir, "metrics.csv"), _history_csv(history))
    plot_history(history, os.path.join(out_dir, "curves.png"), title=net_title(config, dataset.name))
    return metrics


TRACE_PROBE_IMAGES = 256   # the fixed test batch whose BN inputs --trace-bn follows
TRACE_POINTS_PER_EPOCH = 20
PREDICTION_GRID = 32  # test images shown in predictions.png


def evaluate_predictions(net, params, state, test, dataset_name, batch_size):
    """The saved result behind the pictures: confusion matrix and the first test predictions."""
    X, y = test
    predicted, probability = predict(net, params, state, X, batch_size)
    true = y.asnumpy().astype(np.int64)
    names = DATASETS[dataset_name].class_names
    counts = confusion_matrix(true, predicted, len(names))
    n = min(PREDICTION_GRID, len(true))
    return dict(dataset=dataset_name, class_names=list(names), test_images=int(len(true)),
                accuracy=float(np.trace(counts)) / len(true), confusion=counts.tolist(),
                sample=dict(true=true[:n].tolist(), predicted=predicted[:n].tolist(),
                            probability=[float(p) for p in probability[:n]]))


def draw_pictures(out_dir, evaluation, test_images, title):
    """confusion.png and predictions.png from a saved evaluation and the test images it refers to."""
    names = evaluation["class_names"]
    sample = evaluation["sample"]
    plot_confusion(evaluation["confusion"], names, os.path.join(out_dir, "confusion.png"),
                   title=f"{title}: test-set confusion matrix")
    plot_predictions(test_images[:len(sample["true"])], sample["true"], sample["predicted"],
                     sample["probability"], names, os.path.join(out_dir, "predictions.png"),
                     title=f"{title}: the first test images")


def _write_bn_trace(out_dir, trace, layer_names, dataset_name):
    """bn_trace.json (this session's records after a resumed run's earlier ones) and bn_trace.png."""
    path = os.path.join(out_dir, BN_TRACE)
    earlier = None
    if os.path.exists(path):
        with open(path) as f:
            earlier = json.load(f)
    data = merge_traces(earlier, trace.read(layer_names))
    atomic_write_json(path, data)
    plot_bn_trace(data, os.path.join(out_dir, "bn_trace.png"),
                  title=f"LeNet-BN on {dataset_name}: one channel per BN layer on {TRACE_PROBE_IMAGES} test images")
    return data


def _build(config, ctx, log, rank=0, workers=1):
    """Data on the device (worker ``rank``'s share of the training set), model, optimizer and schedule."""
    dataset = load_dataset(config.dataset, config.data_dir)
    images, labels, val = _split_validation(config, dataset)
    images, labels = images[:config.limit_train], labels[:config.limit_train]
    if workers > 1:
        images, labels, left_out = shard(images, labels, rank, workers)
        log(f"worker {rank} of {workers}: training samples {rank * len(labels)}..{(rank + 1) * len(labels) - 1}"
            + (f" ({left_out} left out so that every worker has as many)" if left_out else ""))
    if config.batch_size > len(labels):
        raise ConfigError(f"batch_size {config.batch_size} is larger than the training set "
                          f"({len(labels)} samples{' per worker' if workers > 1 else ''})")
    train = to_device(images, labels, ctx)
    val = to_device(*val, ctx) if val is not None else None
    test = to_device(dataset.test_images, dataset.test_labels, ctx, config.limit_test)
    params, state = lenet_params(ctx, init=config.init, seed=config.seed, init_scale=config.init_scale,
                                 norm=config.normalization)
    name, lr, weight_decay, hyper = config.optimizer_options()
    optimizer = make_optimizer(name, lr, weight_decay, wd_exclude=() if config.wd_all else NO_DECAY_SUFFIXES, **hyper)
    iters_per_epoch = steps_per_epoch(train, config)
    schedule = make_lr_schedule(config, iters_per_epoch)
    log(f"data: {dataset.name} from {dataset.source}: {train[0].shape[0]} train / "
        + (f"{val[0].shape[0]} validation / " if val is not None else "")
        + f"{test[0].shape[0]} test images on {ctx}")
    return dataset, train, val, test, params, state, optimizer, schedule


def _split_validation(config, dataset):
    """(training images, their labels, (validation images, labels) or None): --val-size held out of the
    whole training set, before --limit-train takes the first of the rest."""
    size = config.val_size if config.val_size is not None else default_validation_size(len(dataset.train_labels))
    if size == 0:
        return dataset.train_images, dataset.train_labels, None
    try:
        keep, held = validation_split(dataset.train_labels, size)
    except DataError as e:
        raise ConfigError(f"--val-size {size}: {e}") from None
    return (dataset.train_images[keep], dataset.train_labels[keep],
            (dataset.train_images[held], dataset.train_labels[held]))


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag the training loop polls after each batch."""

    def __init__(self):
        self.signal = None

    def __call__(self):
        return self.signal is not None

    def __enter__(self):
        self._old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with their owner
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second Ctrl-C: stop waiting for the batch
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False


def _parallel(config, log):
    """(contexts, kvstore or None, rank, number of workers, roll call or None) for ``config``.

    A worker of a ``dist_*`` job joins the scheduler's roll call first (:mod:`mxbn.liveness`):
    if another process of the job is lost, this one is told and leaves instead of waiting forever."""
    contexts = resolve_contexts(config.ctx, warn=log)
    kind = config.kvstore or ("device" if len(contexts) > 1 else None)
    if kind is None:
        return contexts, None, 0, 1, None
    check_kvstore(kind)
    roll_call = None
    if is_distributed(kind):
        try:
            roll_call = liveness.start_for_role("worker")
        except (ValueError, ConnectionError) as e:
            raise ConfigError(str(e)) from None
    kv = create_kvstore(kind)
    rank, workers = (kv.rank, kv.num_workers) if is_distributed(kind) else (0, 1)
    if roll_call is not None:
        roll_call.tell(rank=rank)
    return contexts, kv, rank, workers, roll_call


def _resume(ckpt_path, config, ctx, params, state, log):
    """(params, state, opt_state, history, position) from the checkpoint, which must match ``config``."""
    ckpt = load_checkpoint(ckpt_path, ctx)
    saved = TrainConfig.from_dict(ckpt["meta"]["config"])
    diffs = config.resume_differences(saved)
    if diffs:
        raise ConfigError("--resume with options that differ from the checkpoint's: " + ", ".join(
            f"{k} (checkpoint {a!r}, now {b!r})" for k, (a, b) in sorted(diffs.items())))
    check_compatible(ckpt_path, params, ckpt["params"], "parameters")
    check_compatible(ckpt_path, state, ckpt["state"], "batch-norm statistics")
    start = ckpt["meta"]["position"]
    if start["epoch"] >= config.epochs:
        log(f"nothing to do: {ckpt_path} has {start['epoch']} finished epoch(s), --epochs is {config.epochs}")
    else:
        log(f"resuming from {ckpt_path} at epoch {start['epoch'] + 1}, batch {start['batch'] + 1}")
    parts = ckpt["meta"].get("threads_per_part", [])
    then, now = (parts[-1]["threads"] if parts else None), _runtime.thread_settings()["in_force"]
    if then is not None and then != now:
        changed = ", ".join(f"{k} {then.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(then) | set(now))
                            if then.get(k) != now.get(k))
        log(f"warning: resuming with other thread settings than the checkpoint was written with ({changed}); "
            f"the resumed run is then not bit-for-bit the one an uninterrupted run would give")
    return ckpt["params"], ckpt["state"], ckpt["opt_state"], ckpt["meta"]["history"], start, parts


def _threads_part(start):
    """This session's entry of ``threads_per_part``: where it starts and the thread settings in force."""
    return dict(from_epoch=start["epoch"] + 1 if start else 1, from_batch=start["batch"] if start else 0,
                threads=_runtime.thread_settings()["in_force"])


class _RunFiles:
    """What ``fit``'s epoch-end and interruption hooks write: the checkpoint of the (in-place updated)
    params/state/opt_state and the results files; only the primary worker writes."""

    def __init__(self, out_dir, config, dataset, devices, workers, primary, params, state, opt_state, log,
                 threads_per_part):
        self.out_dir, self.config, self.dataset, self.devices, self.workers = out_dir, config, dataset, devices, workers
        self.primary, self.params, self.state, self.opt_state, self.log = primary, params, state, opt_state, log
        self.threads_per_part = threads_per_part
        self.ckpt_path = os.path.join(out_dir, CHECKPOINT)
        self.tensorboard = None   # a TensorBoardLog with --tensorboard (primary only)

    def save(self, position, history, path=None):
        meta = dict(mxbn_version=__version__, config=self.config.to_dict(), position=position, history=history,
                    epoch=position["epoch"], model="lenet", threads_per_part=self.threads_per_part)
        save_checkpoint(path or self.ckpt_path, self.params, self.state, self.opt_state, meta)

    def on_epoch_end(self, epoch, history):
        if self.workers > 1:   # equal lines in every worker's log: the copies are identical after each epoch
            self.log(f"epoch {epoch}: parameters sha1 {fingerprint(self.params)}, "
                     f"BN statistics sha1 {fingerprint(self.state)}")
        if self.primary:
            self.save(dict(epoch=epoch, batch=0), history)
            if best_epoch(history) == epoch:
                self.save(dict(epoch=epoch, batch=0), history, os.path.join(self.out_dir, BEST))
            self.write_results(history)
            if self.tensorboard is not None:
                self.tensorboard.epoch(history[-1], self.params, self.state)

    def write_results(self, history):
        early = patience_exhausted(history, self.config.patience) and len(history) < self.config.epochs
        return _write_results(self.out_dir, self.config, self.dataset, self.devices, history, self.workers,
                              self.threads_per_part, early_stopped=early)

    def on_interrupt(self, position, history):
        if self.primary:
            self.save(position, history)
        self.log(f"interrupted in epoch {position['epoch'] + 1} after batch {position['batch']}: checkpoint "
                 f"{'written to' if self.primary else 'written by worker 0 to'} {self.ckpt_path}; continue with "
                 f"the same command and --resume")


def trainable_names(config, params):
    """The parameters that learn: all, or all but BN gamma/beta with --freeze-affine."""
    frozen = ("_gamma", "_beta") if config.freeze_affine else ()
    return [name for name in params if not name.endswith(frozen)]


def _training_step(config, net, contexts, params, state, optimizer, opt_state, kv):
    """The step on one device, or over several devices or workers (with a kvstore)."""
    trainable = trainable_names(config, params)
    if kv is None:
        return SingleDeviceStep(net, params, state, optimizer, opt_state, config.clip_grad_norm, trainable)
    stages = jitted_stages(LENET_STAGES, config.layout_pass) if config.graph == "static" else LENET_STAGES
    forward = (functools.partial(across_devices, stages, LENET_STAGE_NORMS, bn_momentum=config.bn_momentum)
               if config.bn_sync else per_device(net))
    return DataParallelStep(forward, contexts, params, state, optimizer, opt_state, kv,
                            stats_synchronized=config.bn_sync, clip_grad_norm=config.clip_grad_norm,
                            trainable=trainable)


def _read_initial_values(config):
    """--init-from's checkpoint, read once on the CPU and checked against this run's architecture (the
    mismatch named) before anything is written."""
    ckpt, _ = load_lenet_checkpoint(config.init_from, mx.cpu())
    params, state = lenet_params(mx.cpu(), seed=0, norm=config.normalization)
    check_compatible(config.init_from, params, ckpt["params"], "parameters")
    check_compatible(config.init_from, state, ckpt["state"], "batch-norm statistics")
    return ckpt


def _start_from(initial, params, state, path, log):
    """Copy the parameters and BN statistics of the checkpoint ``initial`` into ``params`` and ``state``."""
    for mine, theirs in ((params, initial["params"]), (state, initial["state"])):
        for name, value in theirs.items():
            value.copyto(mine[name])
    log(f"initialized from {path} (epoch {initial['meta'].get('epoch')} of its run)")


def _bn_trace(config, train, test, params, state, resumed):
    """--trace-bn's recorder (None without it), with the distribution before any training on a fresh run."""
    if not config.trace_bn:
        return None
    iters_per_epoch = steps_per_epoch(train, config)
    trace = BNTrace(test[0][:TRACE_PROBE_IMAGES], max(1, iters_per_epoch // TRACE_POINTS_PER_EPOCH),
                    config.graph, config.bn_impl, config.bn_momentum)
    if not resumed:
        trace(0, params, state)
    return trace


def _tensorboard_log(config, test):
    """--tensorboard's writer (None without it), with the BN inputs on the first test images as histograms."""
    if config.tensorboard is None:
        return None
    from .tensorboard import HISTOGRAM_IMAGES, TensorBoardLog
    probe = test[0][:HISTOGRAM_IMAGES]

    def bn_inputs(params, state, X):
        return {name: before for name, before, _ in lenet_layers(params, state, X, False, config.bn_impl)[1]}
    read = jit(bn_inputs, layout_pass=config.layout_pass) if config.graph == "static" else bn_inputs
    return TensorBoardLog(config.tensorboard, config,
                          (lambda params, state: read(params, state, probe)) if config.normalization == "bn"
                          else None)


def steps_per_epoch(train, config):
    """Batches in an epoch of ``train`` (the last one may be partial)."""
    return -(-train[0].shape[0] // config.batch_size)


def _renorm_schedule(config, steps_per_epoch, state, fresh):
    """--norm renorm: models.renorm_schedule over the run (started at plain batch norm on a fresh run; a
    resumed one continues from the checkpoint's limits); None for the other norms."""
    if config.normalization != "renorm":
        return None
    relax = renorm_schedule(config.epochs * steps_per_epoch)
    if fresh:
        relax(0, None, state)
    return relax


def _chained(*callbacks):
    """One after_step calling each of ``callbacks`` that is not None, in order (None when none is)."""
    present = [c for c in callbacks if c is not None]
    if not present:
        return None

    def call(*args):
        for callback in present:
            callback(*args)
    return call


def _precise_bn_hook(config, net, train, log):
    """--precise-bn N: after each epoch's training, the BN statistics recomputed over N batches of training
    images (drawn by precise_bn_rng) with the weights fixed, written into the state that evaluation reads and
    the checkpoint saves.  None without the option."""
    if config.precise_bn is None:
        return None

    logged = []

    def recompute(epoch, params, state):
        batches, _ = epoch_batches(*train, config.batch_size, precise_bn_rng(config.seed, epoch))
        new_state, read = precise_bn(net, params, state, batches, config.precise_bn)
        for name, value in new_state.items():
            value.copyto(state[name])
        if not logged:   # once per run, resumed ones too
            logged.append(read)
            log(f"precise BN: statistics recomputed over {read} training batches before every evaluation")
    return recompute


def _log_fingerprint(step, params, contexts, log):
    # equal fingerprints in every worker's log show that the copies stayed identical
    same = step.replicas_identical()
    log(f"parameters sha1 {fingerprint(params)}" + (
        "" if len(contexts) == 1 else f", the same on all {len(contexts)} devices" if same
        else ", but the devices' copies DIFFER"))


def _finish(files, history, net, test, trace):
    """The primary's files after training: metrics, evaluation, pictures, the BN trace; returns the metrics."""
    config, dataset, out_dir = files.config, files.dataset, files.out_dir
    metrics = files.write_results(history)
    evaluation = evaluate_predictions(net, files.params, files.state, test, dataset.name, config.batch_size)
    atomic_write_json(os.path.join(out_dir, EVALUATION), evaluation)
    draw_pictures(out_dir, evaluation, dataset.test_images[:config.limit_test], net_title(config, dataset.name))
    data = _write_bn_trace(out_dir, trace, [f"bn{i}" for i in LENET_BLOCKS], dataset.name) if trace else None
    if files.tensorboard is not None:
        if data is not None:
            files.tensorboard.bn_trace(data)
        files.tensorboard.images({name[:-4]: os.path.join(out_dir, name) for name in ("confusion.png",
                                                                                     "predictions.png")},
                                 history[-1]["epoch"])
        files.tensorboard.close()
    return metrics


def print_line(message):
    """``message`` and its newline on stdout in one write, flushed: the workers of a job share one stream (the
    launcher's), and print writes the text and the newline separately when stdout is unbuffered
    (PYTHONUNBUFFERED=1), so another worker's line could land inside this one.  One write of a line is
    atomic on a pipe."""
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def train_cnn(config, out_dir, resume=False, overwrite=False, progress=True, on_nan="stop", log=print_line):
    """Train the LeNet described by ``config``; returns the metrics dict written to metrics.json.

    SIGINT/SIGTERM finish the batch in flight, write a resumable checkpoint and
    raise TrainingInterrupted.  A non-finite loss raises TrainingDiverged and
    leaves the last epoch's checkpoint and metrics as they were.

    With several contexts the batch is split over them (``mxbn.parallel``);
    with a ``dist_*`` kvstore this process is one worker of several: it trains
    on its share of the data, and only worker 0 writes files (every worker
    reads the checkpoint on ``resume``).
    """
    config = config.validate()
    if is_distributed(config.kvstore) and on_nan == "skip":
        raise ConfigError("--on-nan skip cannot be used with a distributed kvstore: a worker skipping a batch "
                          "alone would leave the others waiting for its gradients")
    contexts, kv, rank, workers, roll_call = _parallel(config, log)
    primary = rank == 0
    if not primary:
        log = _prefixed(log, f"[worker {rank}] ")
    ckpt_path = os.path.join(out_dir, CHECKPOINT)
    if config.tensorboard is not None and primary:
        from .tensorboard import require_tensorboardx
        try:
            require_tensorboardx()
        except ImportError as e:
            raise ConfigError(str(e)) from None
        writable_dir(config.tensorboard, "--tensorboard", OutDirError)
    # a missing, corrupt or other-architecture --init-from is refused before --out is touched
    initial = _read_initial_values(config) if config.init_from is not None and not resume else None
    created = primary and not os.path.exists(out_dir)
    if primary:
        prepare_out_dir(out_dir, resume, overwrite, writes=run_files(config))
    elif resume and not os.path.exists(ckpt_path):
        raise OutDirError(f"--resume: worker {rank} cannot read {ckpt_path}; every worker needs the checkpoint")
    try:
        metrics = _train_job(config, out_dir, resume, progress, on_nan, log, contexts, kv, rank, workers, initial)
    except BaseException as e:
        # an interruption or a divergence is decided by all the workers together (README 'Several
        # machines'): an orderly end, not a loss
        if roll_call is not None and isinstance(e, (TrainingInterrupted, TrainingDiverged)):
            roll_call.finish()
        if created:
            _remove_failed_out(out_dir)
        raise
    if roll_call is not None:
        roll_call.finish()
    return metrics


def _train_job(config, out_dir, resume, progress, on_nan, log, contexts, kv, rank, workers, initial=None):
    """train_cnn once its folder is ready: data, model (from the checkpoint ``initial``, if given), fit, the
    files."""
    primary = rank == 0
    ctx, devices = contexts[0], ",".join(map(str, contexts))
    ckpt_path = os.path.join(out_dir, CHECKPOINT)
    log("config: " + json.dumps(config.to_dict(), sort_keys=True))
    log(f"threads: {_runtime.thread_settings()['in_force']}")
    if kv is not None:
        log(f"data parallel: {len(contexts)} device(s) {devices}, kvstore {kv.type}"
            + (f", worker {rank} of {workers}" if workers > 1 else "")
            + (", batch norm synchronized across devices" if config.bn_sync else ""))
    seed_everything(config.seed)
    dataset, train, val, test, params, state, optimizer, schedule = _build(config, ctx, log, rank, workers)
    opt_state = optimizer.init(trainable_subset(params, trainable_names(config, params)))
    start, history, parts = None, [], []
    if resume:
        params, state, opt_state, history, start, parts = _resume(ckpt_path, config, ctx, params, state, log)
    elif initial is not None:
        _start_from(initial, params, state, config.init_from, log)
    parts = parts + [_threads_part(start)]
    if primary:
        atomic_write_json(os.path.join(out_dir, "config.json"), config.to_dict())
    files = _RunFiles(out_dir, config, dataset, devices, workers, primary, params, state, opt_state, log, parts)
    files.tensorboard = _tensorboard_log(config, test) if primary else None
    net = make_net(config)
    step = _training_step(config, net, contexts, params, state, optimizer, opt_state, kv)
    augment = (functools.partial(random_flip_shift, max_shift=config.max_shift) if config.augment else None)
    # each device's slice needs the batch statistics' minimum
    min_batch = len(contexts) * min_train_batch_size(params, dense_bn=False)
    trace = _bn_trace(config, train, test, params, state, resumed=start is not None)
    after_step = _chained(trace, _renorm_schedule(config, steps_per_epoch(train, config), state, start is None))
    with _StopFlag() as stop:
        history = fit(net, params, state, optimizer, opt_state, train, test, config.epochs, config.batch_size,
                      seed=config.seed, lr_schedule=schedule, augment=augment, min_batch_size=min_batch,
                      start=start, history=history, on_epoch_end=files.on_epoch_end,
                      on_interrupt=files.on_interrupt, stop_requested=stop, on_nan=on_nan,
                      progress=progress and primary, log=log, step=step, after_step=after_step, val_data=val,
                      patience=config.patience, before_evaluation=_precise_bn_hook(config, net, train, log))
    if kv is not None:
        _log_fingerprint(step, params, contexts, log)
    if not primary:
        return None
    metrics = _finish(files, history, net, test, trace)
    final, best = metrics["final"], metrics["best"]
    log(f"done: {len(history)} epochs, test accuracy {final['test_acc']:.4f} after epoch {final['epoch']}"
        + (f"; best validation accuracy {best['val_acc']:.4f} at epoch {best['epoch']} ({BEST}, test "
           f"accuracy {best['test_acc']:.4f})" if best else "")
        + f", {sum(h['seconds'] for h in history):.1f} s in all; results in {out_dir}")
    return metrics


def _prefixed(log, prefix):
    return lambda message: log(prefix + message)


def eval_checkpoint(path, ctx_spec="gpu", data_dir=None, log=print):
    """Evaluate a checkpoint on its dataset's test split; returns (loss, accuracy, recorded accuracy)."""
    ctx = resolve_context(ctx_spec, warn=log, task="evaluating")
    ckpt, config = load_lenet_checkpoint(path, ctx)
    dataset = load_dataset(config.dataset, data_dir or config.data_dir)
    X, y = to_device(dataset.test_images, dataset.test_labels, ctx, config.limit_test)
    net = make_net(config)
    loss, acc = evaluate(net, ckpt["params"], ckpt["state"], X, y, config.batch_size)
    history, position = ckpt["meta"]["history"], ckpt["meta"]["position"]
    recorded = history[-1]["test_acc"] if history else float("nan")
    if position["batch"]:
        when = (f"written mid-epoch: epoch {position['epoch'] + 1} after batch {position['batch']}, "
                + (f"the last finished epoch {len(history)} recorded {recorded:.4f}" if history
                   else "no epoch finished yet"))
    else:
        when = f"epoch {position['epoch']}, recorded {recorded:.4f}"
    log(f"{path}: test loss {loss:.4f}, test accuracy {acc:.4f} ({when}) on {X.shape[0]} {dataset.name} "
        f"test images")
    return loss, acc, recorded
