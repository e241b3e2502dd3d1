"""Precise batch-norm statistics: recompute every BN layer's population mean and variance after training.

The moving averages a net ends training with are an exponential average over batches drawn while the
weights were still changing.  ``precise_bn`` (as in Detectron2/fvcore) runs the net with the weights fixed
over some batches, in training mode, and replaces each layer's moving statistics by the exact mean and
biased variance of everything that layer saw: the batches' statistics pooled by Chan et al.'s parallel
formula in float64, not averaged.  Each layer sees its input as training mode computes it (the layers
before it normalized with batch statistics), as fvcore does.
"""
import numbers

import numpy as np
from mxnet import autograd, nd

from .batch_norm import recording_batch_stats
from .jit import unjitted

__all__ = ["precise_bn", "pooled_moments"]


def pooled_moments(batches):
    """(mean, biased variance, count) of the union of batches given as ``(mean, biased var, count)``
    (float64 arrays (C,)), by Chan's pairwise merge; batches with a non-finite statistic are left out.
    None when no batch is finite."""
    total, mean, m2 = 0, None, None
    for batch_mean, batch_vari, count in batches:
        if not (np.isfinite(batch_mean).all() and np.isfinite(batch_vari).all()):
            continue
        if total == 0:
            total, mean, m2 = count, batch_mean.copy(), batch_vari * count
            continue
        merged = total + count
        delta = batch_mean - mean
        mean = mean + delta * (count / merged)
        m2 = m2 + batch_vari * count + delta ** 2 * (total * count / merged)
        total = merged
    return None if total == 0 else (mean, m2 / total, total)


def precise_bn(net, params, state, data, num_batches):
    """A new state with every batch norm's moving statistics recomputed over ``num_batches`` batches of data.

    Parameters
    ----------
    net : callable ``net(params, state, X, is_training)`` (mxbn.jit'ed or not: it is run imperatively)
    params, state : the trained parameters (only read) and the state (not modified: copies are returned)
    data : iterable of input batches X, or of (X, label) pairs
    num_batches : int >= 1, how many batches of ``data`` to read (fewer if it runs out first)

    Returns ``(new_state, batches_read)``.  A batch norm's layer whose every batch held a NaN or an infinity
    keeps its moving statistics; ``momentum=None`` counters are left as they were.
    """
    if isinstance(num_batches, bool) or not isinstance(num_batches, numbers.Integral) or num_batches < 1:
        raise ValueError(f"precise_bn: num_batches must be a positive integer, got {num_batches!r}")
    new_state = {name: value.copy() for name, value in state.items()}
    forward = unjitted(net)
    read = 0
    with recording_batch_stats() as recorded, autograd.pause():
        for batch in data:
            if read == num_batches:
                break
            X = batch[0] if isinstance(batch, (tuple, list)) else batch
            forward(params, new_state, X, True)
            read += 1
    if read == 0:
        raise ValueError("precise_bn: data gave no batch")
    if not recorded:
        raise ValueError("precise_bn: the net ran no training-mode batch norm on the state it was given "
                         "(does it take its moving statistics from `state`?)")
    for (moving_mean, moving_vari), batches in recorded.values():
        pooled = pooled_moments((mean.asnumpy().astype(np.float64), vari.asnumpy().astype(np.float64), count)
                                for mean, vari, count in batches)
        if pooled is not None:
            moving_mean[:] = nd.array(pooled[0], ctx=moving_mean.context, dtype=moving_mean.dtype)
            moving_vari[:] = nd.array(pooled[1], ctx=moving_vari.context, dtype=moving_vari.dtype)
    return new_state, read
