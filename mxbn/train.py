"""The training loop: per batch record -> loss -> backward -> update; per epoch one evaluation.

``fit`` knows nothing of files, command lines or experiments: it takes a forward
function, the parameters, state and optimizer state, device-resident data, and
returns the history.  Checkpoints, metrics and plots are written by the caller
from ``on_epoch_end``.
"""
import math
import time

import mxnet as mx
from mxnet import autograd, nd

from . import functional as F
from .data import epoch_batches
from .seeding import epoch_seed

__all__ = ["fit", "evaluate", "TrainingDiverged"]

# Batches between two reads of the running metrics.  Reading is a host-device
# sync point; without any, Python would queue the whole epoch on MXNet's
# asynchronous engine and hold every batch's activations in memory at once.
SYNC_EVERY = 50


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def evaluate(net, params, state, X, y, batch_size):
    """(mean loss, accuracy) over all of (X, y) in inference mode; one host read at the end.

    Sums per-batch ``loss * batch_len`` and correct counts on the device, so the
    result is the exact mean over samples, not a mean of batch means.
    """
    loss_sum = nd.zeros((1,), ctx=X.context)
    correct = nd.zeros((1,), ctx=X.context)
    batches, _ = epoch_batches(X, y, batch_size)
    for Xb, yb in batches:
        logits = net(params, state, Xb, False)
        loss_sum += F.softmax_cross_entropy(logits, yb) * Xb.shape[0]
        correct += F.correct_count(logits, yb)
    n = X.shape[0]
    return loss_sum.asscalar() / n, correct.asscalar() / n


def fit(net, params, state, optimizer, opt_state, train_data, test_data, num_epochs, batch_size, rng,
        seed=0, lr_schedule=None, augment=None, min_batch_size=1, start_epoch=0, history=None,
        on_epoch_end=None, progress=False, log=print):
    """Train ``net`` in place and return the history (a list of per-epoch dicts).

    Parameters
    ----------
    net : callable(params, state, X, is_training) -> logits
    params, state : dict name -> NDArray
        Learned parameters (updated by ``optimizer``) and BN state (updated by the net).
    optimizer, opt_state : an ``mxbn.optim`` optimizer and its state (updated in place)
    train_data, test_data : (X, y) NDArrays on the training context
    num_epochs : int -- train epochs ``start_epoch .. num_epochs-1``
    batch_size : int
    rng : np.random.Generator -- shuffling and augmentation draws (checkpoint its state)
    seed : int -- reseeds MXNet's generator at each epoch start (see ``seeding.epoch_seed``)
    lr_schedule : callable(iteration) -> lr, or None for the optimizer's lr
    augment : callable(X, rng) -> X, or None
    min_batch_size : int -- a final batch smaller than this is dropped (with a note)
    start_epoch, history : for resuming
    on_epoch_end : callable(epoch, history) -- e.g. write a checkpoint
    progress : bool -- tqdm progress bar with running loss/accuracy
    log : callable(str) -- where the per-epoch line goes
    """
    history = list(history or [])
    X_train, y_train = train_data
    X_test, y_test = test_data
    ctx = X_train.context
    for p in params.values():
        p.attach_grad()
    for epoch in range(start_epoch, num_epochs):
        mx.random.seed(epoch_seed(seed, epoch), ctx=ctx)
        t0 = time.perf_counter()
        batches, dropped = epoch_batches(X_train, y_train, batch_size, rng, min_batch_size)
        if dropped:
            log(f"note: epoch {epoch + 1}: dropped a final batch of {dropped} sample(s), too small "
                f"for batch statistics (needs >= {min_batch_size})")
        iteration = epoch * len(batches)
        loss_sum = nd.zeros((1,), ctx=ctx)
        correct = nd.zeros((1,), ctx=ctx)
        seen = 0
        lr = None
        bar = _progress_bar(len(batches), epoch, num_epochs) if progress else None
        for b, (X, y) in enumerate(batches):
            if augment is not None:
                X = augment(X, rng)
            with autograd.record():
                logits = net(params, state, X, True)
                loss = F.softmax_cross_entropy(logits, y)
            loss.backward()
            lr = lr_schedule(iteration + b) if lr_schedule is not None else None
            optimizer.update(params, {k: p.grad for k, p in params.items()}, opt_state, lr=lr)
            loss_sum += loss.detach() * X.shape[0]
            correct += F.correct_count(logits.detach(), y)
            seen += X.shape[0]
            if (b + 1) % SYNC_EVERY == 0 or b + 1 == len(batches):
                running_loss = loss_sum.asscalar() / seen  # sync point, see SYNC_EVERY
                if not math.isfinite(running_loss):
                    raise TrainingDiverged(
                        f"training loss became {running_loss} in epoch {epoch + 1} by batch {b + 1}; "
                        f"the learning rate is probably too large")
                if bar is not None:
                    bar.update(b + 1 - bar.n)
                    bar.set_postfix(loss=f"{running_loss:.4f}", acc=f"{correct.asscalar() / seen:.4f}")
        if bar is not None:
            bar.close()
        train_seconds = time.perf_counter() - t0
        train_loss, train_acc = loss_sum.asscalar() / seen, correct.asscalar() / seen
        test_loss, test_acc = evaluate(net, params, state, X_test, y_test, batch_size)
        seconds = time.perf_counter() - t0
        record = dict(epoch=epoch + 1, lr=float(lr if lr is not None else optimizer.lr),
                      train_loss=train_loss, train_acc=train_acc, test_loss=test_loss, test_acc=test_acc,
                      seconds=seconds, train_seconds=train_seconds, images_per_sec=seen / train_seconds,
                      samples=seen, dropped=dropped)
        history.append(record)
        log(f"epoch {epoch + 1}/{num_epochs}  lr {record['lr']:.4g}  train loss {train_loss:.4f} "
            f"acc {train_acc:.4f}  test loss {test_loss:.4f} acc {test_acc:.4f}  "
            f"{seconds:.1f} s ({record['images_per_sec']:.0f} img/s)")
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, history)
    return history


def _progress_bar(total, epoch, num_epochs):
    from tqdm import tqdm
    return tqdm(total=total, desc=f"epoch {epoch + 1}/{num_epochs}", unit="batch", leave=False,
                dynamic_ncols=True)
