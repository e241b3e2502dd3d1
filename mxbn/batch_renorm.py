"""Batch renormalization (Ioffe, 2017): batch norm whose training output is corrected towards the moving
statistics, so that a net trained on small or non-i.i.d. batches computes at inference what it learned.

In training, with the batch mean and biased variance ``mu_B``, ``var_B``, ``sigma_B = sqrt(var_B + eps)`` and
the moving ones ``sigma = sqrt(moving_vari + eps)`` (as they are before this batch updates them)::

    r = clip(sigma_B / sigma, 1/r_max, r_max)          treated as constants:
    d = clip((mu_B - moving_mean) / sigma, -d_max, d_max)   no gradient flows through r or d
    Y = gamma * ((X - mu_B) / sigma_B * r + d) + beta

then the moving statistics follow batch_norm's one rule (momentum, biased variance, a non-finite batch
skipped).  ``r_max=1, d_max=0`` is batch_norm exactly.  Inference is batch_norm's: the moving statistics.
"""
import math

from mxnet import nd, sym

from . import tracing
from ._arrays import accepts_every_array_kind, constant, dtype_of, ops_for, shape_of
from ._checks import is_real
from .batch_norm import (STAT_DTYPE, batch_norm, centered_moments, check_batch_norm_args, check_distinct_state,
                         normalize_per_channel, record_batch_stats, set_traced_stats, update_moving_stats)

__all__ = ["batch_renorm"]


@accepts_every_array_kind
def batch_renorm(X, gamma, beta, is_training, moving_mean, moving_vari, r_max=3.0, d_max=5.0, momentum=0.9,
                 eps=1e-5, axis=1):
    """Batch renormalization over every axis except ``axis``; arguments as :func:`mxbn.batch_norm`'s.

    ``r_max >= 1`` bounds the variance correction r to [1/r_max, r_max], ``d_max >= 0`` the mean correction d
    to [-d_max, d_max].  The paper starts at r_max=1, d_max=0 (plain batch norm, while the moving statistics
    settle) and relaxes them to 3 and 5, the defaults here.  To change them during training without a new
    graph, pass each as an array of shape (1,) in the statistics' dtype (kept in the state, say, and
    written between steps); their values are then not checked here, as that would read the device.
    Returns Y like X; the moving statistics are state, updated in place (imperative) or written back by
    mxbn.jit.
    """
    op = "batch_renorm"
    ax = check_batch_norm_args(X, gamma, beta, is_training, moving_mean, moving_vari, momentum, eps, axis,
                                "scratch", op)
    check_distinct_state(moving_mean, moving_vari, op)
    if momentum is None:
        raise ValueError(f"{op}: momentum must be a number in [0, 1], got None (the cumulative average is "
                         f"batch_norm's)")
    _check_limit(op, "r_max", r_max, 1, "r is clipped to [1/r_max, r_max]", X)
    _check_limit(op, "d_max", d_max, 0, "d is clipped to [-d_max, d_max]", X)
    if not is_training:
        # batch norm's inference, the same numbers (and, under mxbn.export, its one foldable node)
        return batch_norm(X, gamma, beta, False, moving_mean, moving_vari, eps=eps, axis=axis)
    traced = isinstance(X, sym.Symbol)
    trace = tracing.current(op) if traced else None
    in_dtype = dtype_of(X, op)
    stat_dtype = STAT_DTYPE[in_dtype]
    if in_dtype != stat_dtype:
        X = ops_for(X).cast(X, dtype=stat_dtype)
    mean_now, vari_now = ((trace.current_value(moving_mean, op, "moving_mean"),
                           trace.current_value(moving_vari, op, "moving_vari")) if traced
                          else (moving_mean, moving_vari))
    limits = [float(v) if is_real(v) else constant(v) for v in (r_max, d_max)]
    Y, mean, vari = _renormalized(X, gamma, beta, constant(mean_now), constant(vari_now), *limits, eps, ax, trace)
    if traced:
        set_traced_stats(trace, (moving_mean, moving_vari, None), mean, vari, momentum, op)
    else:
        record_batch_stats(moving_mean, moving_vari, mean, vari, X.size // X.shape[ax])
        update_moving_stats(moving_mean, moving_vari, mean, vari, momentum)
    return Y if dtype_of(Y, op) == in_dtype else ops_for(Y).cast(Y, dtype=in_dtype)


def _check_limit(op, name, value, least, meaning, X):
    if isinstance(value, (nd.NDArray, sym.Symbol)):
        expected = STAT_DTYPE[dtype_of(X, op)]
        if shape_of(value, op) != (1,) or dtype_of(value, op) != expected:
            raise ValueError(f"{op}: {name} as an array must have shape (1,) and dtype {expected}, got shape "
                             f"{shape_of(value, op)} and dtype {dtype_of(value, op)}")
        return
    if not is_real(value) or not least <= value < math.inf:
        raise ValueError(f"{op}: {name} must be a finite number >= {least} ({meaning}), got {value!r}")


def _renormalized(X, gamma, beta, moving_mean, moving_vari, r_max, d_max, eps, ax, trace):
    """(Y, batch mean (C,), biased batch variance (C,)) of the training forward, on NDArrays or Symbols.

    The statistics are the scratch batch norm's two-pass GEMV reductions (centered_moments); autograd
    differentiates through them (and not through r and d).  The per-channel arithmetic is
    normalize_per_channel's, with scale = gamma * r / sigma_B and shift = beta + gamma * d.
    """
    ops = ops_for(X)
    shape = shape_of(X, "batch_renorm")
    C = shape[ax]
    xc, mean, vari = centered_moments(X, ax, trace)
    sigma_batch = ops.sqrt(vari + eps)
    sigma_moving = ops.sqrt(moving_vari.reshape((1, C)) + eps)
    r = ops.BlockGrad(_clip(ops, sigma_batch / sigma_moving, 1.0 / r_max, r_max))
    d = ops.BlockGrad(_clip(ops, (mean - moving_mean.reshape((1, C))) / sigma_moving, -1.0 * d_max, d_max))
    gamma = gamma.reshape((1, C))
    scale = gamma * r / sigma_batch
    shift = beta.reshape((1, C)) + gamma * d
    Y3 = normalize_per_channel(xc, scale, shift)
    return Y3.reshape(shape), mean.reshape((C,)), vari.reshape((C,))


def _clip(ops, values, low, high):
    """Clip by maximum and minimum with scalars or (1,) arrays: MXNet's ``clip`` parses its bounds as float32,
    which would cut a float64 r or d at a float32 rounding of r_max or d_max, and takes no arrays."""
    if is_real(low):
        return ops.minimum(ops.maximum(values, low), high)
    return ops.broadcast_minimum(ops.broadcast_maximum(values, low.reshape((1, 1))), high.reshape((1, 1)))
