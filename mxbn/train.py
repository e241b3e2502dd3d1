"""The training loop: per batch record -> loss -> backward -> update; per epoch one evaluation.

``fit`` knows nothing of files, command lines or experiments: it takes a forward
function, the parameters, state and optimizer state, device-resident data, and
returns the history.  Checkpoints, metrics and plots are written by the caller
from ``on_epoch_end``.
"""
import math
import time

import numpy as np

import mxnet as mx
from mxnet import autograd, nd

from . import functional as F
from .data import epoch_batches
from .jit import jit_like, unjitted
from .seeding import augment_rng, epoch_seed, shuffle_rng

__all__ = ["fit", "evaluate", "predict", "confusion_matrix", "loss_and_correct", "SingleDeviceStep", "TrainingDiverged", "TrainingInterrupted"]

# Batches between two reads of the running metrics.  Reading is a host-device
# sync point; without any, Python would queue the whole epoch on MXNet's
# asynchronous engine and hold every batch's activations in memory at once.
SYNC_EVERY = 50


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

    return jit_like(net, batch_loss)


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

    classify = jit_like(net, classify)
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


class SingleDeviceStep:
    """A training step on one device: record -> loss -> backward, then the optimizer's update.

    ``fit`` drives a step object through ``seed_epoch``, ``forward_backward``
    and ``apply``; ``mxbn.parallel.DataParallelStep`` is the several-device one.
    """
    # several processes that must agree on stopping (see DataParallelStep)
    collective = False

    def __init__(self, net, params, state, optimizer, opt_state):
        self.net, self.params, self.state = net, params, state
        self.optimizer, self.opt_state = optimizer, opt_state
        self.batch_loss = loss_and_correct(net, is_training=True)
        for p in params.values():
            p.attach_grad()

    def seed_epoch(self, value):
        mx.random.seed(value, ctx=next(iter(self.params.values())).context)

    def forward_backward(self, X, y):
        """(mean loss, correct count) of the batch, both (1,) arrays on the device; gradients in place."""
        with autograd.record():
            loss, correct = self.batch_loss(self.params, self.state, X, y)
        loss.backward()
        return loss.detach(), correct.detach()

    def apply(self, lr):
        self.optimizer.update(self.params, {k: p.grad for k, p in self.params.items()}, self.opt_state, lr=lr)


def fit(net, params, state, optimizer, opt_state, train_data, test_data, num_epochs, batch_size, seed=0,
        lr_schedule=None, augment=None, min_batch_size=1, start=None, history=None, on_epoch_end=None,
        on_interrupt=None, stop_requested=None, on_nan="stop", max_skipped=10, progress=False, log=print,
        step=None, after_step=None):
    """Train ``net`` in place and return the history (a list of per-epoch dicts).

    Parameters
    ----------
    net : callable(params, state, X, is_training) -> logits
    params, state : dict name -> NDArray
        Learned parameters (updated by ``optimizer``) and BN state (updated by the net).
    optimizer, opt_state : an ``mxbn.optim`` optimizer and its state (updated in place)
    train_data, test_data : (X, y) NDArrays on the training context
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
    history = list(history or [])
    start = dict(start or {"epoch": len(history), "batch": 0})
    X_train, y_train = train_data
    X_test, y_test = test_data
    ctx = X_train.context
    for epoch in range(start["epoch"], num_epochs):
        resume_here = epoch == start["epoch"] and start["batch"] > 0
        step.seed_epoch(epoch_seed(seed, epoch))
        t0 = time.perf_counter()
        batches, dropped = epoch_batches(X_train, y_train, batch_size, shuffle_rng(seed, epoch), min_batch_size)
        if dropped:
            log(f"note: epoch {epoch + 1}: dropped a final batch of {dropped} sample(s), too small "
                f"for batch statistics (needs >= {min_batch_size})")
        iteration = epoch * len(batches)
        first = start["batch"] if resume_here else 0
        # Running sums stay on the device; a resumed epoch continues from the saved float32 values.
        loss_sum = nd.array([start["loss_sum"] if resume_here else 0.0], ctx=ctx)
        correct = nd.array([start["correct"] if resume_here else 0.0], ctx=ctx)
        seen = start["seen"] if resume_here else 0
        seen_before = seen  # samples of a resumed epoch trained before the interruption
        skipped = start.get("skipped", 0) if resume_here else 0
        # Each batch's loss is copied into this device array (no sync), so a
        # non-finite loss found at the next sync point is located exactly.
        batch_losses = nd.zeros((len(batches),), ctx=ctx)
        checked = first
        lr = None
        bar = _progress_bar(len(batches), epoch, num_epochs, first) if progress else None
        for b in range(first, len(batches)):
            X, y = batches[b]
            if augment is not None:
                X = augment(X, augment_rng(seed, epoch, b))
            loss, batch_correct = step.forward_backward(X, y)
            if on_nan == "skip" and not math.isfinite(float(loss.asscalar())):  # per-batch sync, by request
                skipped += 1
                log(f"warning: epoch {epoch + 1} batch {b + 1}: non-finite loss, batch skipped "
                    f"({skipped} so far)")
                if skipped > max_skipped:
                    raise TrainingDiverged(f"more than {max_skipped} batches with a non-finite loss in epoch "
                                           f"{epoch + 1}; the learning rate is probably too large")
                batch_losses[b] = 0.0
                continue
            lr = lr_schedule(iteration + b) if lr_schedule is not None else None
            step.apply(lr)
            if after_step is not None:
                after_step(iteration + b + 1, params, state)
            batch_losses[b] = loss
            loss_sum += loss * X.shape[0]
            correct += batch_correct
            seen += X.shape[0]
            last = b + 1 == len(batches)
            at_sync = (b + 1) % SYNC_EVERY == 0 or last
            bad = None
            if at_sync:  # sync point, see SYNC_EVERY
                bad = _first_non_finite(batch_losses, checked, b + 1)
                checked = b + 1
            stop = stop_requested is not None and (at_sync or not step.collective) and stop_requested()
            if at_sync and step.collective:
                # every process must take the same branch, or one waits forever for the others
                any_bad, stop = step.agree([bad is not None, stop])
                if any_bad and bad is None:
                    raise TrainingDiverged(f"non-finite training loss on another worker in epoch {epoch + 1} "
                                           f"by batch {b + 1}")
            if bad is not None:
                raise _diverged(epoch, bad, f" (lr {lr if lr is not None else optimizer.lr:g}); the learning "
                                f"rate is probably too large or the weights too large at initialisation")
            if at_sync and bar is not None:
                bar.update(b + 1 - bar.n)
                bar.set_postfix(loss=f"{float(loss_sum.asscalar()) / max(seen, 1):.4f}",
                                acc=f"{float(correct.asscalar()) / max(seen, 1):.4f}")
            if stop and not last:
                position = dict(epoch=epoch, batch=b + 1, loss_sum=float(loss_sum.asscalar()),
                                correct=float(correct.asscalar()), seen=seen, skipped=skipped)
                bad = _first_non_finite(batch_losses, checked, b + 1)
                if bad is not None:
                    raise _diverged(epoch, bad, "; not saving an interrupted checkpoint")
                if bar is not None:
                    bar.close()
                if on_interrupt is not None:
                    on_interrupt(position, history)
                raise TrainingInterrupted(position)
        if bar is not None:
            bar.close()
        if seen == 0:
            raise TrainingDiverged(f"every batch of epoch {epoch + 1} was skipped for a non-finite loss")
        train_seconds = time.perf_counter() - t0
        train_loss, train_acc = float(loss_sum.asscalar()) / seen, float(correct.asscalar()) / seen
        test_loss, test_acc = evaluate(net, params, state, X_test, y_test, batch_size)
        seconds = time.perf_counter() - t0
        record = dict(epoch=epoch + 1, lr=float(lr if lr is not None else optimizer.lr),
                      train_loss=train_loss, train_acc=train_acc, test_loss=test_loss, test_acc=test_acc,
                      seconds=seconds, train_seconds=train_seconds,
                      images_per_sec=(seen - seen_before) / train_seconds,
                      samples=seen, dropped=dropped, skipped=skipped, resumed_at_batch=first)
        history.append(record)
        log(f"epoch {epoch + 1}/{num_epochs}  lr {record['lr']:.4g}  train loss {train_loss:.4f} "
            f"acc {train_acc:.4f}  test loss {test_loss:.4f} acc {test_acc:.4f}  "
            f"{seconds:.1f} s ({record['images_per_sec']:.0f} img/s)")
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, history)
    return history


def _progress_bar(total, epoch, num_epochs, initial=0):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{num_epochs}", unit="batch",
                leave=False, dynamic_ncols=True)
