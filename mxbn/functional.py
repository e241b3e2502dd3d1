"""Functional ops on NDArrays: the thin layers of a LeNet/MLP, activations, losses and metrics.

Every function here is a plain function of its arguments.  Nothing reads a global
training mode: ``is_training`` is an explicit argument.  Batch normalization,
the one op with *state*, lives in :mod:`mxbn.batch_norm` and is re-exported here
(``mxbn.functional.batch_norm`` keeps working).
"""
import numbers

import numpy as np
import mxnet as mx
from mxnet import nd, sym

from ._checks import is_integer, is_real
from .tracing import TracingError
from ._arrays import accepts_every_array_kind, dtype_of, ops_for, shape_of
from .batch_norm import BATCH_NORM_IMPLS, batch_norm

__all__ = [
    "batch_norm", "conv2d", "max_pool2d", "avg_pool2d", "dense", "flatten",
    "relu", "sigmoid", "tanh", "dropout", "softmax", "top_class", "percentiles", "softmax_cross_entropy",
    "accuracy", "correct_count", "BATCH_NORM_IMPLS",
]


# --------------------------------------------------------------------------- #
def _pair(value, name):
    if isinstance(value, numbers.Integral):
        return (int(value), int(value))
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, numbers.Integral) for v in value):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


def _check_array(X, op, what="X"):
    """X must be an NDArray (legacy or, after the wrapper, viewed from mx.np) or a traced Symbol."""
    if not isinstance(X, (nd.NDArray, sym.Symbol)):
        raise TypeError(f"{op}: {what} must be an mxnet NDArray, got {type(X).__name__}")
    return shape_of(X, op)


def _check_rank(X, rank, op, layout):
    shape = _check_array(X, op)
    if len(shape) != rank:
        raise ValueError(f"{op}: X must have rank {rank} {layout}, got shape {shape}")
    return shape


@accepts_every_array_kind
def conv2d(X, weight, bias=None, stride=1, pad=0):
    """2-D convolution (cross-correlation), NCHW.

    Parameters
    ----------
    X : NDArray, shape (N, C_in, H, W)
    weight : NDArray, shape (C_out, C_in, kh, kw)
    bias : NDArray of shape (C_out,) or None (no bias; use None before batch_norm,
        whose beta makes a bias redundant)
    stride, pad : int or (int, int), default 1 and 0
    """
    shape = _check_rank(X, 4, "conv2d", "(N, C, H, W)")
    w_shape = _check_array(weight, "conv2d", "weight")
    if len(w_shape) != 4 or w_shape[1] != shape[1]:
        raise ValueError(f"conv2d: weight has shape {w_shape}, expected (C_out, {shape[1]}, kh, kw) "
                         f"for X of shape {shape}")
    if bias is not None and _check_array(bias, "conv2d", "bias") != (w_shape[0],):
        raise ValueError(f"conv2d: bias has shape {shape_of(bias, 'conv2d')}, expected ({w_shape[0]},)")
    kwargs = dict(kernel=w_shape[2:], num_filter=w_shape[0],
                  stride=_pair(stride, "stride"), pad=_pair(pad, "pad"))
    ops = ops_for(X)
    if bias is None:
        return ops.Convolution(X, weight, no_bias=True, **kwargs)
    return ops.Convolution(X, weight, bias, **kwargs)


def _pool(X, kernel, stride, pool_type, op):
    _check_rank(X, 4, op, "(N, C, H, W)")
    kernel = _pair(kernel, "kernel")
    stride = kernel if stride is None else _pair(stride, "stride")
    return ops_for(X).Pooling(X, kernel=kernel, stride=stride, pool_type=pool_type)


@accepts_every_array_kind
def max_pool2d(X, kernel=2, stride=None):
    """Max pooling over (H, W) of an NCHW array; ``stride`` defaults to ``kernel``."""
    return _pool(X, kernel, stride, "max", "max_pool2d")


@accepts_every_array_kind
def avg_pool2d(X, kernel=2, stride=None):
    """Average pooling over (H, W) of an NCHW array; ``stride`` defaults to ``kernel``."""
    return _pool(X, kernel, stride, "avg", "avg_pool2d")


@accepts_every_array_kind
def flatten(X):
    """(N, d1, d2, ...) -> (N, d1*d2*...)."""
    if not isinstance(X, (nd.NDArray, sym.Symbol)) or len(shape_of(X, "flatten")) < 1:
        raise ValueError(f"flatten: X must be an NDArray with a batch axis, got {X!r}")
    return X.reshape((shape_of(X, "flatten")[0], -1))


@accepts_every_array_kind
def dense(X, weight, bias=None):
    """Affine layer ``Y = X W^T + b`` (MXNet/PyTorch weight layout).

    Parameters
    ----------
    X : NDArray, shape (N, d_in) or (N, ...) (flattened to (N, d_in))
    weight : NDArray, shape (d_out, d_in)
    bias : NDArray of shape (d_out,) or None
    """
    if not isinstance(X, (nd.NDArray, sym.Symbol)) or len(shape_of(X, "dense")) < 2:
        raise ValueError(f"dense: X must be an NDArray of rank >= 2, got {getattr(X, 'shape', X)!r}")
    shape = shape_of(X, "dense")
    d_in = int(np.prod(shape[1:]))
    w_shape = _check_array(weight, "dense", "weight")
    if len(w_shape) != 2 or w_shape[1] != d_in:
        raise ValueError(f"dense: weight has shape {w_shape}, expected (d_out, {d_in}) "
                         f"for X of shape {shape}")
    if bias is not None and _check_array(bias, "dense", "bias") != (w_shape[0],):
        raise ValueError(f"dense: bias has shape {shape_of(bias, 'dense')}, expected ({w_shape[0]},)")
    ops = ops_for(X)
    if bias is None:
        return ops.FullyConnected(X, weight, num_hidden=w_shape[0], no_bias=True, flatten=True)
    return ops.FullyConnected(X, weight, bias, num_hidden=w_shape[0], flatten=True)


@accepts_every_array_kind
def relu(X):
    """max(X, 0)."""
    _check_array(X, "relu")
    return ops_for(X).relu(X)


@accepts_every_array_kind
def sigmoid(X):
    """1 / (1 + exp(-X))."""
    _check_array(X, "sigmoid")
    return ops_for(X).sigmoid(X)


@accepts_every_array_kind
def tanh(X):
    """Hyperbolic tangent."""
    _check_array(X, "tanh")
    return ops_for(X).tanh(X)


@accepts_every_array_kind
def dropout(X, p, is_training):
    """Inverted dropout: in training, zero each value with probability ``p`` and
    scale the rest by ``1/(1-p)``; in inference, return ``X`` unchanged.

    Randomness comes from MXNet's generator (seed it with ``mx.random.seed`` or
    :func:`mxbn.seeding.seed_everything`).
    """
    if not is_real(p) or not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be a number in [0, 1), got {p!r}")
    _check_array(X, "dropout")
    if not is_training or p == 0.0:
        return X
    # mode="always" makes the kernel obey is_training instead of autograd's flag.
    return ops_for(X).Dropout(X, p=float(p), mode="always")


@accepts_every_array_kind
def softmax(logits):
    """Class probabilities of (N, K) logits: softmax over axis 1."""
    if len(_check_array(logits, "softmax", "logits")) != 2:
        raise ValueError(f"softmax: logits must have shape (N, K), got {shape_of(logits, 'softmax')}")
    return ops_for(logits).softmax(logits, axis=1)


def top_class(probs):
    """(index of the largest entry of each row, that entry) of an (N, K) array: two (N,) arrays."""
    if isinstance(probs, mx.numpy.ndarray):
        index, value = top_class(probs.as_nd_ndarray())
        return index.as_np_ndarray(), value.as_np_ndarray()
    if len(_check_array(probs, "top_class", "probs")) != 2:
        raise ValueError(f"top_class: probs must have shape (N, K), got {shape_of(probs, 'top_class')}")
    ops = ops_for(probs)
    return ops.argmax(probs, axis=1), ops.max(probs, axis=1)


@accepts_every_array_kind
def percentiles(X, qs, axis=None):
    """Nearest-rank percentiles ``qs`` (numbers in [0, 100]) of the values of X.

    The value of rank ceil(q/100 * n) (1-based, at least 1) of the n sorted
    values; computed on the device (one sort).  With ``axis=None`` over all
    values, a (len(qs),) array; with an axis, along that axis, which then has
    length len(qs) in the result (e.g. per unit of an (N, units) batch: (len(qs), units)).
    """
    shape = _check_array(X, "percentiles")
    if not qs or any(not is_real(q) or not 0 <= q <= 100 for q in qs):
        raise ValueError(f"percentiles: qs must be numbers in [0, 100], got {qs!r}")
    if axis is None:
        X, axis, n = X.reshape((int(np.prod(shape)),)), 0, int(np.prod(shape))
    else:
        if not is_integer(axis) or not -len(shape) <= axis < len(shape):
            raise ValueError(f"percentiles: axis must be None or an int in [-{len(shape)}, {len(shape)}) for "
                             f"shape {shape}, got {axis!r}")
        axis = int(axis) % len(shape)
        n = shape[axis]
    if n == 0:
        raise ValueError(f"percentiles: no values to rank (shape {shape})")
    ranks = [max(1, int(np.ceil(q / 100.0 * n))) - 1 for q in qs]
    ops = ops_for(X)
    ordered = ops.sort(X, axis=axis)
    return ops.concat(*[ops.slice_axis(ordered, axis=axis, begin=r, end=r + 1) for r in ranks], dim=axis)


@accepts_every_array_kind
def softmax_cross_entropy(logits, labels, check_labels=False):
    """Mean over the batch of ``-log softmax(logits)[label]``.

    Parameters
    ----------
    logits : NDArray, shape (N, K)
    labels : NDArray, shape (N,), integer class indices in [0, K) (any dtype)
    check_labels : bool, default False
        Raise ValueError naming the first label that is not an integer in
        ``0..K-1``.  Reads the labels on the host (a device sync), so it is off
        by default and not available inside mxbn.jit.

    Uses ``log_softmax`` so large logits do not overflow.  A label outside
    ``0..K-1`` or not integral makes the loss NaN (checked on the device, no
    sync, also inside mxbn.jit) instead of scoring the nearest class as
    MXNet's ``pick`` would (it clips: 12 would count as class K-1, 2.7 as 2);
    the trainer's non-finite check then stops, and ``correct_count`` never
    counts such a label as a hit.
    """
    _check_logits_labels(logits, labels, "softmax_cross_entropy")
    K = shape_of(logits, "softmax_cross_entropy")[1]
    if check_labels:
        _check_label_values(labels, K, "softmax_cross_entropy")
    ops = ops_for(logits)
    picked = ops.pick(ops.log_softmax(logits, axis=1), labels, axis=1)
    lab = ops.cast(labels, dtype="float32")
    valid = (lab >= 0) * (lab < K) * (lab == ops.floor(lab))
    return -ops.mean(ops.where(valid, picked, ops.ones_like(picked) * float("nan")))


def _check_label_values(labels, K, op):
    if isinstance(labels, sym.Symbol):
        raise TracingError(f"{op}: check_labels=True reads the labels, which a traced graph cannot; check them "
                           f"outside mxbn.jit (inside it a bad label makes the loss NaN)")
    values = labels.asnumpy().astype(np.float64)
    bad = ~((values >= 0) & (values < K) & (values == np.floor(values)))
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{op}: label {values[i]:g} at index {i} is not a class index: labels must be integers "
                         f"in 0..{K - 1} (one per column of the logits)")


@accepts_every_array_kind
def correct_count(logits, labels):
    """Number of rows whose arg-max equals the label, as a 1-element NDArray.

    Stays on the device: sum it over batches and read it once per epoch.
    """
    _check_logits_labels(logits, labels, "correct_count")
    ops = ops_for(logits)
    hits = ops.broadcast_equal(ops.argmax(logits, axis=1), ops.cast(labels, dtype=dtype_of(logits, "correct_count")))
    return ops.sum(hits)


@accepts_every_array_kind
def accuracy(logits, labels):
    """Fraction of rows whose arg-max equals the label, as a 1-element NDArray."""
    return correct_count(logits, labels) / shape_of(logits, "accuracy")[0]


def _check_logits_labels(logits, labels, op):
    if not isinstance(logits, (nd.NDArray, sym.Symbol)) or len(shape_of(logits, op)) != 2:
        raise ValueError(f"{op}: logits must be an NDArray of shape (N, K), got "
                         f"{getattr(logits, 'shape', type(logits).__name__)}")
    N = shape_of(logits, op)[0]
    if not isinstance(labels, (nd.NDArray, sym.Symbol)) or shape_of(labels, op) != (N,):
        raise ValueError(f"{op}: labels must be an NDArray of shape ({N},), got "
                         f"{getattr(labels, 'shape', type(labels).__name__)}")
