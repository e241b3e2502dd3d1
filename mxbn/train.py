"""The training loop: per batch record -> loss -> backward -> update; per epoch one evaluation.

``fit`` knows nothing of files, command lines or experiments: it takes a forward
function, the parameters, state and optimizer state, device-resident data, and
returns the history.  Checkpoints, metrics and plots are written by the caller
from ``on_epoch_end``.
"""
import collections
import math
import time

import numpy as np

import mxnet as mx
from mxnet import autograd, nd

from . import functional as F
from .data import epoch_batches
from .jit import jit_like, unjitted
from ._checks import finite_positive
from .optim import clip_by_global_norm
from .seeding import augment_rng, epoch_seed, shuffle_rng

__all__ = ["fit", "evaluate", "predict", "confusion_matrix", "loss_and_correct", "TrainStep", "SingleDeviceStep",
           "GradientClipper", "attach_gradients", "gradients_of", "TrainingDiverged", "TrainingInterrupted",
           "best_epoch", "epochs_without_improvement", "patience_exhausted", "trainable_subset"]

# Batches between two reads of the running metrics.  Reading is a host-device
# sync point; without any, Python would queue the whole epoch on MXNet's
# asynchronous engine and hold every batch's activations in memory at once.
SYNC_EVERY = 50
# Batches Python may run ahead of the device between sync points.  Python's
# signal handlers run only when the main thread is back in Python code, so
# without a bound a Ctrl-C waits until the next sync point (up to SYNC_EVERY
# batches); waiting for the loss of the batch this many back keeps the device
# busy (these batches stay queued) and lets a stop be seen within a few batches.
RUN_AHEAD = 2


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite (or too many batches were skipped for it)."""


class TrainingInterrupted(Exception):
    """A stop was requested (SIGINT/SIGTERM); ``position`` says where training stopped."""

    def __init__(self, position):
        super().__init__(f"interrupted in epoch {position['epoch'] + 1} after batch {position['batch']}")
        self.position = position


def loss_and_correct(net, is_training):
    """``(params, state, X, y) -> (mean cross-entropy, correct count)`` of ``net``.

    When ``net`` is jitted, the loss and the count are traced into the same
    graph as the net (one CachedOp per batch instead of a dozen small ops).
    """
    forward = unjitted(net)

    def batch_loss(params, state, X, y):
        logits = forward(params, state, X, is_training)
        return F.softmax_cross_entropy(logits, y), F.correct_count(logits, y)

    return jit_like(net, batch_loss, key=("loss_and_correct", bool(is_training)))


def evaluate(net, params, state, X, y, batch_size):
    """(mean loss, accuracy) over all of (X, y) in inference mode; one host read at the end.

    Sums per-batch ``loss * batch_len`` and correct counts on the device, so the
    result is the exact mean over samples, not a mean of batch means.
    """
    loss_sum = nd.zeros((1,), ctx=X.context)
    correct = nd.zeros((1,), ctx=X.context)
    batches, _ = epoch_batches(X, y, batch_size)
    batch_loss = loss_and_correct(net, is_training=False)
    for Xb, yb in batches:
        loss, batch_correct = batch_loss(params, state, Xb, yb)
        loss_sum += loss * Xb.shape[0]
        correct += batch_correct
    n = X.shape[0]
    # Python floats: numpy 2 keeps float32 / int in float32 (numpy 1 gave float64)
    return float(loss_sum.asscalar()) / n, float(correct.asscalar()) / n


def predict(net, params, state, X, batch_size):
    """(predicted class, its softmax probability) for every row of X, in inference mode: numpy arrays.

    One host read at the end, like ``evaluate``.
    """
    forward = unjitted(net)

    def classify(params, state, X):
        return F.top_class(F.softmax(forward(params, state, X, False)))

    classify = jit_like(net, classify, key=("classify",))
    labels, probs = zip(*(classify(params, state, X[i:i + batch_size]) for i in range(0, X.shape[0], batch_size)))
    return nd.concat(*labels, dim=0).asnumpy().astype(np.int64), nd.concat(*probs, dim=0).asnumpy()


def confusion_matrix(true_labels, predicted, num_classes):
    """counts[i, j] = how many samples of class i were predicted as class j."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(true_labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return counts


def _first_non_finite(batch_losses, first, stop):
    """Index of the first non-finite loss among batches [first, stop), or None (a sync point)."""
    bad = np.flatnonzero(~np.isfinite(batch_losses[first:stop].asnumpy()))
    return first + int(bad[0]) if bad.size else None


def _diverged(epoch, batch, consequence):
    return TrainingDiverged(f"non-finite training loss in epoch {epoch + 1} at batch {batch + 1}{consequence}")


def attach_gradients(params):
    """Give every parameter a gradient buffer (autograd writes it in ``backward``)."""
    for p in params.values():
        p.attach_grad()


def gradients_of(params):
    """``{name: gradient}`` of the parameters, as the optimizers take it."""
    return {name: p.grad for name, p in params.items()}


class TrainStep:
    """The one training step of mxbn: record -> loss -> backward, then the optimizer's update.

    ``loss_fn(params, state, X, y)`` returns ``(loss, aux)`` (``aux``: any array, e.g. a
    correct count; a bare loss is taken as ``(loss, None)``) -- the shape of an optax/Flax
    train step.  It may be jitted (``mxbn.jit``); BN state is written by the ops inside it.
    ``fit``, the studies' loops and the bench drive a step through ``seed_epoch``,
    ``forward_backward`` and ``apply``; ``mxbn.parallel.DataParallelStep`` is the
    several-device step with the same protocol.
    """
    # several processes that must agree on stopping (see DataParallelStep)
    collective = False

    def __init__(self, loss_fn, params, state, optimizer, opt_state, clip_grad_norm=None, trainable=None):
        self.loss_fn, self.params, self.state = loss_fn, params, state
        self.optimizer, self.opt_state = optimizer, opt_state
        # the parameters that learn (all by default); the others get no gradient and are only read
        self.trainable = trainable_subset(params, trainable)
        attach_gradients(self.trainable)
        self.clipper = GradientClipper(clip_grad_norm, next(iter(params.values())).context)

    def seed_epoch(self, value):
        mx.random.seed(value, ctx=next(iter(self.params.values())).context)

    def forward_backward(self, X, y):
        """(loss, aux) of the batch, detached, on the device; gradients in place."""
        with autograd.record():
            out = self.loss_fn(self.params, self.state, X, y)
        loss, aux = out if isinstance(out, tuple) else (out, None)
        loss.backward()
        return loss.detach(), (aux.detach() if aux is not None else None)

    def apply(self, lr=None):
        grads = gradients_of(self.trainable)
        self.clipper(grads.values())
        self.optimizer.update(self.trainable, grads, self.opt_state, lr=lr)

    def __call__(self, X, y, lr=None):
        """forward_backward, then apply: one whole step; returns (loss, aux)."""
        loss, aux = self.forward_backward(X, y)
        self.apply(lr)
        return loss, aux


class SingleDeviceStep(TrainStep):
    """The trainer's step for a classifier ``net``: mean cross-entropy and the correct count."""

    def __init__(self, net, params, state, optimizer, opt_state, clip_grad_norm=None, trainable=None):
        self.net = net
        super().__init__(loss_and_correct(net, is_training=True), params, state, optimizer, opt_state,
                         clip_grad_norm, trainable)


def trainable_subset(params, names=None):
    """``{name: array}`` of the parameters in ``names`` (all of ``params`` when None), in params' order."""
    if names is None:
        return dict(params)
    names = set(names)
    unknown = sorted(names - set(params))
    if unknown:
        raise KeyError(f"trainable names {unknown} are not parameters (known: {sorted(params)})")
    return {k: v for k, v in params.items() if k in names}


class GradientClipper:
    """Clips gradients by their global norm before each update (``clip_by_global_norm``), or does nothing
    (``max_norm`` None); counts on the device how often it fired, read once per epoch (``take_count``)."""

    def __init__(self, max_norm, ctx):
        if max_norm is not None:
            finite_positive("clip_grad_norm", max_norm)
        self.max_norm = max_norm
        self.count = nd.zeros((1,), ctx=ctx)

    def __call__(self, grads):
        if self.max_norm is not None:
            self.count += clip_by_global_norm(grads, self.max_norm)

    def take_count(self):
        """How often it fired since the last call (a host read), or None when it does not clip."""
        if self.max_norm is None:
            return None
        fired = int(self.count.asscalar())
        self.count[:] = 0
        return fired


def fit(net, params, state, optimizer, opt_state, train_data, test_data, num_epochs, batch_size, seed=0,
        lr_schedule=None, augment=None, min_batch_size=1, start=None, history=None, on_epoch_end=None,
        on_interrupt=None, stop_requested=None, on_nan="stop", max_skipped=10, progress=False, log=print,
        step=None, after_step=None, val_data=None, patience=None, before_evaluation=None):
    """Train ``net`` in place and return the history (a list of per-epoch dicts).

    Parameters
    ----------
    net : callable(params, state, X, is_training) -> logits
    params, state : dict name -> NDArray
        Learned parameters (updated by ``optimizer``) and BN state (updated by the net).
    optimizer, opt_state : an ``mxbn.optim`` optimizer and its state (updated in place)
    train_data, test_data : (X, y) NDArrays on the training context; the test set is evaluated after every
        epoch for the record and the curves, and never decides anything
    val_data : (X, y) or None -- the validation set, evaluated after every epoch: ``best_epoch`` and early
        stopping read it alone
    patience : int or None -- stop after this many epochs without a better validation accuracy
        (needs ``val_data``)
    num_epochs : int -- train until this many epochs are done
    batch_size : int
    seed : int -- every random draw of training derives from it: the shuffle of
        epoch e from (seed, e), the augmentation of batch b from (seed, e, b),
        MXNet's generator is reseeded from (seed, e) at each epoch start
    lr_schedule : callable(iteration) -> lr, or None for the optimizer's lr
    augment : callable(X, rng) -> X, or None
    min_batch_size : int -- a final batch smaller than this is dropped (with a note)
    start : dict or None -- where to resume: ``{"epoch": e, "batch": b, "loss_sum": .., "correct": ..,
        "seen": .., "skipped": ..}`` as passed to ``on_interrupt`` (b = 0: at an epoch start)
    history : list -- epochs already done
    on_epoch_end : callable(epoch, history) -- e.g. write a checkpoint
    on_interrupt : callable(position, history) -- called when ``stop_requested()`` turns true,
        after the batch in flight; then TrainingInterrupted is raised
    stop_requested : callable() -> bool, checked after every batch (a Python flag, no device sync);
        with a collective ``step``, at the sync points only, and agreed among the processes
    on_nan : "stop" or "skip" -- a non-finite loss stops training (TrainingDiverged), or the batch
        is not applied and counted ("skip" reads each loss before its update: one sync per batch)
    max_skipped : int -- with "skip", more skipped batches than this in an epoch stop training
    progress : bool -- tqdm progress bar with running loss/accuracy
    log : callable(str) -- where the per-epoch line goes
    after_step : callable(global step, params, state) or None -- called after every applied update
        (e.g. ``mxbn.bn_trace.BNTrace``); must not read values back to the host
    before_evaluation : callable(epoch, params, state) or None -- called after each epoch's training, before
        its evaluation (e.g. recompute the BN statistics: ``mxbn.precise_bn``, into ``state`` in place)
    step : the training step, or None for ``SingleDeviceStep(net, params, state, optimizer, opt_state)``;
        ``mxbn.parallel.DataParallelStep`` trains on several devices (``params``/``state`` are then
        its first replica, which evaluation reads)
    """
    if on_nan not in ("stop", "skip"):
        raise ValueError(f"on_nan must be 'stop' or 'skip', got {on_nan!r}")
    step = step or SingleDeviceStep(net, params, state, optimizer, opt_state)
    if on_nan == "skip" and step.collective:
        raise ValueError("on_nan='skip' cannot be used across processes: a worker skipping a batch alone "
                         "would leave the others waiting for its gradients")
    if patience is not None and val_data is None:
        raise ValueError("patience stops on the validation accuracy: it needs val_data")
    history = list(history or [])
    start = dict(start or {"epoch": len(history), "batch": 0})
    if _patience_exhausted(history, patience, log):
        return history
    loop = _EpochLoop(step, optimizer, params, state, seed=seed, lr_schedule=lr_schedule, augment=augment,
                      on_nan=on_nan, max_skipped=max_skipped, after_step=after_step, stop_requested=stop_requested,
                      log=log, progress=progress, num_epochs=num_epochs)
    for epoch in range(start["epoch"], num_epochs):
        resumed = start if epoch == start["epoch"] and start["batch"] > 0 else None
        step.seed_epoch(epoch_seed(seed, epoch))
        t0 = time.perf_counter()
        batches, dropped = epoch_batches(*train_data, batch_size, shuffle_rng(seed, epoch), min_batch_size)
        if dropped:
            log(f"note: epoch {epoch + 1}: dropped a final batch of {dropped} sample(s), too small "
                f"for batch statistics (needs >= {min_batch_size})")
        sums, lr = loop.train_epoch(epoch, batches, train_data[0].context, resumed, on_interrupt, history)
        train_seconds = time.perf_counter() - t0
        if before_evaluation is not None:
            before_evaluation(epoch, params, state)
        evaluations = {"val": evaluate(net, params, state, *val_data, batch_size)} if val_data is not None else {}
        evaluations["test"] = evaluate(net, params, state, *test_data, batch_size)
        record = _epoch_record(epoch, lr if lr is not None else optimizer.lr, sums, evaluations,
                               time.perf_counter() - t0, train_seconds, dropped, resumed, _clipped(step, sums))
        history.append(record)
        log(_epoch_line(record, num_epochs))
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, history)
        if _patience_exhausted(history, patience, log):
            break
    return history


def best_epoch(history):
    """The epoch (1-based) of the best validation accuracy (the earliest of equals), or None without one."""
    scored = [h for h in history if h.get("val_acc") is not None]
    if not scored:
        return None
    return max(scored, key=lambda h: (h["val_acc"], -h["epoch"]))["epoch"]


def epochs_without_improvement(history):
    """Finished epochs since the best validation accuracy (0 when the last one is the best)."""
    best = best_epoch(history)
    return 0 if best is None else history[-1]["epoch"] - best


def patience_exhausted(history, patience):
    """Whether ``patience`` epochs (None: never) have passed without a better validation accuracy."""
    return patience is not None and bool(history) and epochs_without_improvement(history) >= patience


def _patience_exhausted(history, patience, log):
    if not patience_exhausted(history, patience):
        return False
    log(f"early stop: {epochs_without_improvement(history)} epoch(s) without a better validation accuracy "
        f"(--patience {patience}); the best is epoch {best_epoch(history)}")
    return True


def _clipped(step, sums):
    """Clipped updates of this epoch so far (with those before an interruption; a host read), or None when
    the step does not clip."""
    clipper = getattr(step, "clipper", None)
    fired = clipper.take_count() if clipper is not None else None
    return None if fired is None else fired + sums.resumed_clipped


def _epoch_line(record, num_epochs):
    line = (f"epoch {record['epoch']}/{num_epochs}  lr {record['lr']:.4g}  train loss {record['train_loss']:.4f} "
            f"acc {record['train_acc']:.4f}  ")
    if "val_loss" in record:
        line += f"val loss {record['val_loss']:.4f} acc {record['val_acc']:.4f}  "
    line += f"test loss {record['test_loss']:.4f} acc {record['test_acc']:.4f}  "
    if record.get("clipped") is not None:
        line += f"clipped {record['clipped']}  "
    return line + f"{record['seconds']:.1f} s ({record['images_per_sec']:.0f} img/s)"


# The columns of an epoch's history entry, in the order metrics.csv shows them.
HISTORY_COLUMNS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                   "seconds", "train_seconds", "images_per_sec", "samples", "dropped", "skipped", "clipped",
                   "resumed_at_batch")


def _epoch_record(epoch, lr, sums, evaluations, seconds, train_seconds, dropped, resumed, clipped):
    """The history entry of one finished epoch (one host read of the running sums); ``evaluations`` maps
    "test" (and "val" when there is a validation set) to (loss, accuracy)."""
    train_loss, train_acc = sums.means()
    record = dict(epoch=epoch + 1, lr=float(lr), train_loss=train_loss, train_acc=train_acc)
    for split in ("val", "test"):
        if split in evaluations:
            record[f"{split}_loss"], record[f"{split}_acc"] = evaluations[split]
    record.update(seconds=seconds, train_seconds=train_seconds,
                  images_per_sec=(sums.seen - sums.seen_before) / train_seconds, samples=sums.seen,
                  dropped=dropped, skipped=sums.skipped, clipped=clipped,
                  resumed_at_batch=resumed["batch"] if resumed else 0)
    if clipped is None:
        del record["clipped"]
    return record


class _RunningSums:
    """One epoch's running loss, correct count and per-batch losses, kept on the device.

    Each batch's loss is copied into ``batch_losses`` (no sync), so a non-finite
    loss found at the next sync point is located exactly.  A resumed epoch
    continues from the saved float32 values of its ``position``.
    """

    def __init__(self, ctx, num_batches, resumed=None):
        resumed = resumed or {}
        self.loss_sum = nd.array([resumed.get("loss_sum", 0.0)], ctx=ctx)
        self.correct = nd.array([resumed.get("correct", 0.0)], ctx=ctx)
        self.seen = resumed.get("seen", 0)
        self.seen_before = self.seen  # samples of a resumed epoch trained before the interruption
        self.skipped = resumed.get("skipped", 0)
        self.resumed_clipped = resumed.get("clipped", 0)
        self.first = resumed.get("batch", 0)
        self.checked = self.first
        self.batch_losses = nd.zeros((num_batches,), ctx=ctx)

    def add(self, b, loss, batch_correct, n):
        self.batch_losses[b] = loss
        self.loss_sum += loss * n
        self.correct += batch_correct
        self.seen += n

    def skip(self, b):
        self.skipped += 1
        self.batch_losses[b] = 0.0

    def first_non_finite(self, stop):
        """Index of the first non-finite loss among the batches not yet checked, up to ``stop`` (a sync)."""
        bad = _first_non_finite(self.batch_losses, self.checked, stop)
        self.checked = stop
        return bad

    def means(self):
        """(mean loss, accuracy) so far (a host read)."""
        seen = max(self.seen, 1)
        return float(self.loss_sum.asscalar()) / seen, float(self.correct.asscalar()) / seen

    def position(self, epoch, batch, clipped=None):
        """Where an interrupted run resumes: what ``fit(start=...)`` takes."""
        position = dict(epoch=epoch, batch=batch, loss_sum=float(self.loss_sum.asscalar()),
                        correct=float(self.correct.asscalar()), seen=self.seen, skipped=self.skipped)
        if clipped is not None:
            position["clipped"] = clipped
        return position


class _EpochLoop:
    """The batch loop of ``fit``: step, non-finite checks at sync points, stop requests, progress."""

    def __init__(self, step, optimizer, params, state, seed, lr_schedule, augment, on_nan, max_skipped,
                 after_step, stop_requested, log, progress, num_epochs):
        self.step, self.optimizer, self.params, self.state = step, optimizer, params, state
        self.seed, self.lr_schedule, self.augment = seed, lr_schedule, augment
        self.on_nan, self.max_skipped, self.after_step = on_nan, max_skipped, after_step
        self.stop_requested, self.log, self.progress, self.num_epochs = stop_requested, log, progress, num_epochs

    def train_epoch(self, epoch, batches, ctx, resumed, on_interrupt, history):
        """Train on ``batches`` (from ``resumed``'s batch on); returns (running sums, last lr applied)."""
        sums = _RunningSums(ctx, len(batches), resumed)
        iteration = epoch * len(batches)
        lr = None
        bar = _progress_bar(len(batches), epoch, self.num_epochs, sums.first) if self.progress else None
        in_flight = collections.deque()
        for b in range(sums.first, len(batches)):
            X, y = batches[b]
            if self.augment is not None:
                X = self.augment(X, augment_rng(self.seed, epoch, b))
            loss, batch_correct = self.step.forward_backward(X, y)
            if self.on_nan == "skip" and not math.isfinite(float(loss.asscalar())):  # per-batch sync, by request
                self._skip(sums, epoch, b)
                continue
            lr = self.lr_schedule(iteration + b) if self.lr_schedule is not None else None
            self.step.apply(lr)
            if self.after_step is not None:
                self.after_step(iteration + b + 1, self.params, self.state)
            sums.add(b, loss, batch_correct, X.shape[0])
            in_flight.append(loss)
            if len(in_flight) > RUN_AHEAD:
                in_flight.popleft().wait_to_read()   # a bounded lag, not a sync: see RUN_AHEAD
            last = b + 1 == len(batches)
            at_sync = (b + 1) % SYNC_EVERY == 0 or last
            stop = self._check(sums, epoch, b, at_sync, lr)
            if at_sync and bar is not None:
                loss_mean, acc = sums.means()
                bar.update(b + 1 - bar.n)
                bar.set_postfix(loss=f"{loss_mean:.4f}", acc=f"{acc:.4f}")
            if stop and not last:
                self._interrupt(sums, epoch, b + 1, bar, on_interrupt, history)
        if bar is not None:
            bar.close()
        if sums.seen == 0:
            raise TrainingDiverged(f"every batch of epoch {epoch + 1} was skipped for a non-finite loss")
        return sums, lr

    def _skip(self, sums, epoch, b):
        sums.skip(b)
        self.log(f"warning: epoch {epoch + 1} batch {b + 1}: non-finite loss, batch skipped "
                 f"({sums.skipped} so far)")
        if sums.skipped > self.max_skipped:
            raise TrainingDiverged(f"more than {self.max_skipped} batches with a non-finite loss in epoch "
                                   f"{epoch + 1}; the learning rate is probably too large")

    def _check(self, sums, epoch, b, at_sync, lr):
        """Raise on a non-finite loss found at a sync point; return whether a stop was requested.

        With a collective step both answers are agreed among the processes at the
        sync points: every process must take the same branch, or one waits forever.
        """
        bad = sums.first_non_finite(b + 1) if at_sync else None  # sync point, see SYNC_EVERY
        collective = self.step.collective
        stop = self.stop_requested is not None and (at_sync or not collective) and self.stop_requested()
        if at_sync and collective:
            any_bad, stop = self.step.agree([bad is not None, stop])
            if any_bad and bad is None:
                raise TrainingDiverged(f"non-finite training loss on another worker in epoch {epoch + 1} "
                                       f"by batch {b + 1}")
        if bad is not None:
            raise _diverged(epoch, bad, f" (lr {lr if lr is not None else self.optimizer.lr:g}); the learning "
                            f"rate is probably too large or the weights too large at initialisation")
        return stop

    def _interrupt(self, sums, epoch, batch, bar, on_interrupt, history):
        """Save where training stopped (after ``batch`` batches of ``epoch``) and raise TrainingInterrupted."""
        position = sums.position(epoch, batch, _clipped(self.step, sums))
        bad = sums.first_non_finite(batch)
        if bad is not None:
            raise _diverged(epoch, bad, "; not saving an interrupted checkpoint")
        if bar is not None:
            bar.close()
        if on_interrupt is not None:
            on_interrupt(position, history)
        raise TrainingInterrupted(position)


def _progress_bar(total, epoch, num_epochs, initial=0):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{num_epochs}", unit="batch",
                leave=False, dynamic_ncols=True)
