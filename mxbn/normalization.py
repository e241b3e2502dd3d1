"""Normalizations that need no batch statistics: layer, group and instance norm (Ba et al. 2016; Wu & He
2018; Ulyanov et al. 2016), beside :mod:`mxbn.batch_norm` and with its conventions.

Each normalizes per sample, so training and inference are the same computation and there is no state:
``Y = (X - mean) / sqrt(var + eps) * gamma + beta``, the mean and the biased variance (two passes) taken
over

* ``layer_norm``: the axes in ``axis`` (default the last); gamma and beta have those axes' shape;
* ``group_norm``: each sample's channels split into ``num_groups`` groups of consecutive channels, with
  all spatial positions; gamma and beta are **per channel**, shape ``(C,)``, as in the paper and PyTorch
  (MXNet 1.9.1's ``nd.GroupNorm`` takes them per group, shape ``(num_groups,)``);
* ``instance_norm``: each sample's channel alone (``group_norm`` with one channel per group).

float16 input is normalized in float32 (gamma and beta then float32), as batch_norm does.  Every array
kind works (legacy NDArray, ``mx.np``, traced inside :func:`mxbn.jit`); autograd differentiates the ops.

How it is computed: the normalized axes are viewed as the rows of a (R, M) array, and each row's mean and
variance are taken by MXNet's batch-norm kernel on a (1, R, M) view, whose channel is the row (gamma 1, beta
0, throwaway aux arrays: the kernel's batch statistics, as batch_norm's fused path).  gamma and beta are then
applied by :func:`mxbn.batch_norm.normalize_per_channel`, in a graph as products with ones vectors.  MXNet's
generic ``mean`` over axes and its broadcast gradients are 5-8x slower on the CPU (a jitted LeNet step with
group norm at batch 128: 179 ms that way, 22 ms with batch norm).  The one exception is a graph traced for
export (:func:`mxbn.inference_graph`): the row view and the ones vectors would fix the batch size there, so
it keeps ``mean`` and broadcasting, the same function to float32 rounding.
"""
import math
import numbers

from mxnet import nd, sym

from . import tracing
from ._arrays import accepts_every_array_kind, dtype_of, ops_for, shape_of
from ._checks import is_real
from .batch_norm import (STAT_DTYPE, _batch_norm_train_fused, _batch_norm_train_fused_traced,
                         normalize_per_channel)

__all__ = ["layer_norm", "group_norm", "instance_norm"]


def _check_common(op, X, gamma, beta, eps, expected_shape, min_rank):
    shape = shape_of(X, op)
    if len(shape) < min_rank:
        raise ValueError(f"{op}: X must have rank >= {min_rank}, got shape {shape}")
    x_dtype = dtype_of(X, op)
    if x_dtype not in STAT_DTYPE:
        raise TypeError(f"{op}: X has dtype {x_dtype}, expected float16, float32 or float64")
    for name, value in (("gamma", gamma), ("beta", beta)):
        if shape_of(value, op) != tuple(expected_shape):
            raise ValueError(f"{op}: {name} has shape {shape_of(value, op)}, expected {tuple(expected_shape)} "
                             f"(X has shape {shape})")
        if dtype_of(value, op) != STAT_DTYPE[x_dtype]:
            raise TypeError(f"{op}: {name} has dtype {dtype_of(value, op)}, expected {STAT_DTYPE[x_dtype]} for X "
                            f"of dtype {x_dtype}")
    if not is_real(eps) or not 0 < eps < math.inf:
        raise ValueError(f"{op}: eps must be a number > 0 and finite, got {eps!r}")
    return shape, x_dtype


def _batch_free_graph(X):
    """True inside a trace for export, whose graph must take any batch size (no shape fixed by it)."""
    return isinstance(X, sym.Symbol) and tracing.current("normalization").for_export


def _normalize_rows(X2, rows, eps):
    """Each row of the (rows, M) array X2 minus its mean, over sqrt(its biased variance + eps): MXNet's
    batch-norm kernel on the (1, rows, M) view, whose channels are the rows."""
    dtype = dtype_of(X2, "normalization")
    X3 = X2.reshape((1, rows, -1))
    if isinstance(X2, sym.Symbol):
        trace = tracing.current("normalization")
        ones = trace.constant_var("norm_ones", (rows,), dtype, 1.0)
        zeros = trace.constant_var("norm_zeros", (rows,), dtype, 0.0)
        Y3 = _batch_norm_train_fused_traced(trace, X3, ones, zeros, eps, 1, dtype)[0]
    else:
        ones, zeros = nd.ones((rows,), ctx=X2.context, dtype=dtype), nd.zeros((rows,), ctx=X2.context, dtype=dtype)
        Y3 = _batch_norm_train_fused(X3, ones, zeros, eps, 1)[0]
    return Y3.reshape((rows, -1))


def _normalize(X, axes, eps):
    """(X - mean) * rsqrt(var + eps) over ``axes`` (kept), two-pass biased variance: generic reductions, for
    the graphs that must not fix the batch size."""
    ops = ops_for(X)
    mean = ops.mean(X, axis=axes, keepdims=True)
    centered = ops.broadcast_sub(X, mean)
    vari = ops.mean(ops.square(centered), axis=axes, keepdims=True)
    # 1/sqrt rather than rsqrt: MXNet's ONNX exporter has no rsqrt, so an exported net could not hold it
    return ops.broadcast_div(centered, ops.sqrt(vari + eps))


def _in_stat_dtype(X, x_dtype, fn):
    """fn(X) computed in the statistics' dtype (float32 for float16 input), returned in X's."""
    ops = ops_for(X)
    stat = STAT_DTYPE[x_dtype]
    if stat == x_dtype:
        return fn(X)
    return ops.cast(fn(ops.cast(X, dtype=stat)), dtype=x_dtype)


@accepts_every_array_kind
def layer_norm(X, gamma, beta, axis=-1, eps=1e-5):
    """Layer normalization over ``axis`` (an int or a tuple of ints); gamma/beta have those axes' shape."""
    shape = shape_of(X, "layer_norm")
    axes = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis) if isinstance(axis, (tuple, list)) else None
    if not axes or not all(isinstance(a, numbers.Integral) and -len(shape) <= a < len(shape) for a in axes):
        raise ValueError(f"layer_norm: axis must be an int or a tuple of ints in [{-len(shape)}, {len(shape) - 1}] "
                         f"for X of shape {shape}, got {axis!r}")
    axes = tuple(sorted({int(a) % len(shape) for a in axes}))
    _, x_dtype = _check_common("layer_norm", X, gamma, beta, eps, [shape[a] for a in axes], 1)
    # gamma and beta broadcast along the normalized axes (a 1 everywhere else)
    view = tuple(shape[d] if d in axes else 1 for d in range(len(shape)))

    trailing = axes == tuple(range(len(shape) - len(axes), len(shape)))
    M = math.prod(shape[a] for a in axes)

    def compute(X):
        ops = ops_for(X)
        if trailing and not _batch_free_graph(X):
            rows = math.prod(shape) // M
            Y2 = _normalize_rows(X.reshape((rows, M)), rows, eps)
            return normalize_per_channel(Y2.reshape((rows, M, 1)), gamma.reshape((M,)), beta.reshape((M,))) \
                .reshape(shape)
        return ops.broadcast_add(ops.broadcast_mul(_normalize(X, axes, eps), gamma.reshape(view)), beta.reshape(view))
    return _in_stat_dtype(X, x_dtype, compute)


@accepts_every_array_kind
def group_norm(X, gamma, beta, num_groups, eps=1e-5):
    """Group normalization of X (N, C, ...) with ``num_groups`` groups of C / num_groups channels; gamma and
    beta per channel, shape (C,)."""
    shape = shape_of(X, "group_norm")
    if len(shape) < 2:
        raise ValueError(f"group_norm: X must have rank >= 2 (batch and channel axes), got shape {shape}")
    C = shape[1]
    if not isinstance(num_groups, numbers.Integral) or isinstance(num_groups, bool) or num_groups < 1 \
            or C % num_groups:
        raise ValueError(f"group_norm: num_groups must be a positive integer that divides the {C} channels of X, "
                         f"got {num_groups!r}")
    _, x_dtype = _check_common("group_norm", X, gamma, beta, eps, (C,), 2)
    view = (1, C) + (1,) * (len(shape) - 2)

    def compute(X):
        ops = ops_for(X)
        if not _batch_free_graph(X):
            N, G = shape[0], int(num_groups)
            Y2 = _normalize_rows(X.reshape((N * G, -1)), N * G, eps)
            return normalize_per_channel(Y2.reshape((N, C, -1)), gamma, beta).reshape(shape)
        # each group's channels and positions; 0 keeps the batch size out of the graph, so that an exported
        # inference graph (traced at one image) takes any batch
        grouped = X.reshape((0, int(num_groups), -1))
        normalized = _normalize(grouped, (2,), eps).reshape((0,) + tuple(shape[1:]))
        return ops.broadcast_add(ops.broadcast_mul(normalized, gamma.reshape(view)), beta.reshape(view))
    return _in_stat_dtype(X, x_dtype, compute)


@accepts_every_array_kind
def instance_norm(X, gamma, beta, eps=1e-5):
    """Instance normalization of X (N, C, spatial...): each sample's channel over its positions."""
    shape = shape_of(X, "instance_norm")
    if len(shape) < 3:
        raise ValueError(f"instance_norm: X must have rank >= 3 (batch, channel and spatial axes), got shape "
                         f"{shape}")
    return group_norm(X, gamma, beta, shape[1], eps)
