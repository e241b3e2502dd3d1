"""Batch normalization: the imperative op (fused kernel or from primitives), its traced form inside
mxbn.jit, the argument checks, and the one rule by which the moving statistics change.

The per-channel arithmetic ``Y = X * scale + shift`` on a ``(pre, C, post)`` view is
written once (:func:`normalize_per_channel`) and shared by the scratch Function,
the inference path, the traced path and synchronized BN; further normalizations
(layer, group, instance norm) belong in modules beside this one and reuse it.
"""
import atexit
import contextlib
import math
import numbers
import threading

import numpy as np
from mxnet import autograd, nd, sym
from mxnet.ndarray import CachedOp

from . import tracing
from ._checks import is_integer, is_real
from ._arrays import accepts_every_array_kind, constant, dtype_name, dtype_of, ops_for, shape_of
from .custom_function import Function

# MXNet registers its engine shutdown with atexit when it is imported; handlers
# run last-in first-out, so this one runs just before it.  Without draining the
# engine first, a process whose last graph went through a custom Function
# (the "scratch" batch_norm) can hang forever in MXNotifyShutdown's WaitForAll.
atexit.register(nd.waitall)

__all__ = ["batch_norm", "BATCH_NORM_IMPLS", "STAT_DTYPE", "check_batch_norm_args", "three_d_shape",
           "update_moving_stats", "moving_stats_rule", "cumulative_stats_rule", "check_distinct_state",
           "normalize_per_channel", "recording_batch_stats", "record_batch_stats"]

BATCH_NORM_IMPLS = ("fused", "scratch")

# Parameter/statistics dtype for each input dtype: float16 activations keep
# float32 statistics (as MXNet and cuDNN do) because a float16 sum over a
# 128x24x24 channel overflows and loses every digit of the variance.
STAT_DTYPE = {"float16": "float32", "float32": "float32", "float64": "float64"}


def normalize_per_channel(X3, scale, shift, broadcast=False):
    """``X3 * scale + shift`` for a (pre, C, post) view and per-channel (C,) or (1, C) scale and shift.

    The one place the per-channel arithmetic of every BN path is written (the
    scratch Function's forward, inference, the traced scratch path and
    synchronized BN): the same multiply and add, so the paths agree to the bit.
    In a traced graph scale and shift are spread to X3's shape by products with
    ones vectors (exact copies) rather than broadcast, so that their gradients
    are GEMVs and not MXNet's generic reduction over axes (0, 2); ``broadcast``: broadcast them in a graph
    too (one that nobody differentiates, such as the scratch Function's cached forward).
    """
    ops = ops_for(X3)
    if ops is sym and not broadcast:
        pre, C, post = shape = shape_of(X3, "batch_norm")
        ones = _ones_vectors(tracing.current("batch_norm"), pre, post, dtype_of(X3, "batch_norm"))
        return X3 * _spread(scale.reshape((1, C)), *ones, shape) + _spread(shift.reshape((1, C)), *ones, shape)
    return ops.broadcast_add(ops.broadcast_mul(X3, scale.reshape((1, -1, 1))), shift.reshape((1, -1, 1)))


@accepts_every_array_kind
def batch_norm(X, gamma, beta, is_training, moving_mean, moving_vari,
               momentum=0.9, eps=1e-5, axis=1, impl="fused", check_finite=False, virtual_batch_size=None,
               num_batches=None):
    r"""Batch normalization (Ioffe & Szegedy, 2015) over every axis except ``axis``.

    ``Y = gamma * (X - mean) / sqrt(var + eps) + beta``, per channel.

    Parameters
    ----------
    X : NDArray, float16/float32/float64, rank >= 2
        Activations.  The channel axis is ``axis``; statistics are taken over all
        other axes, so ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)``, ``(N, C, D, H, W)``
        and channels-last ``(N, H, W, C)`` with ``axis=-1`` all work.
    gamma, beta : NDArray, shape ``(C,)``
        Scale and shift.  Initialise to 1 and 0 (:func:`mxbn.init.batch_norm_params`).
    is_training : bool
        True: normalise with the batch statistics and update the moving statistics.
        False: normalise with the moving statistics, which are left untouched; the
        output for a sample then does not depend on the rest of the batch.
    moving_mean, moving_vari : NDArray, shape ``(C,)``  -- *state, updated in place*
        Running estimates used at inference.  Initialise to 0 and 1.  In training
        they are updated once per call, in the forward pass, outside autograd::

            moving = momentum * moving + (1 - momentum) * batch_stat

        This is MXNet's (and Keras') convention: ``momentum=0.9`` keeps 90 % of the
        old value.  PyTorch's ``momentum=0.1`` means the opposite (the weight of the
        *new* value); convert with ``momentum_mxbn = 1 - momentum_torch``.
        ``batch_stat`` for the variance is the **biased** batch variance (divide by
        the number of values per channel, m), the same numbers ``mx.nd.BatchNorm``
        leaves in its aux states on the CPU.  (PyTorch and MXNet's cuDNN path store
        the unbiased ``m/(m-1) * var``.)  The update is never recorded by autograd
        and does not change any gradient.
    momentum : float in [0, 1] or None, default 0.9
        None: the cumulative average of every batch seen so far (PyTorch's
        ``momentum=None``), ``moving += (batch_stat - moving) / n`` with ``n``
        the number of batches including this one, kept in ``num_batches``.
    eps : float > 0, default 1e-5
        Added to the variance before the square root.  Note ``mx.nd.BatchNorm``'s
        own default is 1e-3.
    axis : int, default 1
        The channel axis; negative values count from the end.  Any axis is
        accepted, as by MXNet's operator; ``axis=0`` normalizes each row over
        all other axes (the rows are then the channels).
    impl : {"fused", "scratch"}, default "fused"
        How the training-mode arithmetic is done; both give the same numbers.
        "fused" runs MXNet's fused BatchNorm kernel for the arithmetic (fed
        scratch aux arrays, so the kernel never touches ``moving_*``) and keeps
        mxbn's semantics around it.  "scratch" is built from primitives: the
        statistics as contiguous GEMV reductions, one folded per-channel scale
        and shift, and the analytic backward
        ``dX = gamma/sigma * (dY - mean(dY) - x_hat * mean(dY * x_hat))``.

    check_finite : bool, default False
        Raise ValueError if ``X`` (or gamma, beta, the moving statistics) holds
        NaN or infinity.  Costs a device-to-host sync, so it is off by default.
    virtual_batch_size : int or None, default None
        Ghost batch norm (Hoffer et al., 2017): in training, the batch (axis 0)
        is cut into consecutive chunks of this many samples, each normalized
        with its own statistics; the moving statistics are updated once, with
        the mean over the chunks of their means and of their (biased)
        variances.  Must divide the batch; the channel axis cannot be 0.
        Inference is unchanged.
    num_batches : NDArray, shape ``(1,)``, stats dtype -- *state, updated in place*
        Required with ``momentum=None`` (and refused otherwise): how many
        batches the cumulative average holds.  Initialise to 0
        (``mxbn.init.batch_norm_params(C, ctx, cumulative=True)``); counted in
        the statistics' dtype, exact up to 2**24 batches in float32.

    Returns
    -------
    Y : same kind, shape and dtype as ``X``.  Every array argument may be a
        legacy ``NDArray`` or an ``mx.np.ndarray`` (``Y`` is then one too), or,
        inside :func:`mxbn.jit`, a traced ``Symbol``: the state then leaves the
        graph as an extra output that jit writes back, with the same rule.
        A Symbol outside mxbn.jit (a hybridized Gluon block) raises TypeError:
        use ``gluon.nn.BatchNorm`` there, or mxbn.jit.

    Notes
    -----
    Statistics are computed in float32 for float16 input (``gamma``, ``beta`` and
    the moving statistics must then be float32) and in the input dtype otherwise.
    The variance is a two-pass ``mean((X - mean)^2)``, stable for data with a
    large mean.

    A training batch with a single value per channel (e.g. ``(1, C)`` or
    ``(1, C, 1, 1)``) has no variance: MXNet silently outputs ``beta``, cuDNN
    gives NaN, PyTorch raises.  mxbn raises ``ValueError`` and leaves the moving
    statistics untouched; drop such a batch or use ``is_training=False``.

    Raises
    ------
    TypeError
        An argument is not an NDArray, or has an unsupported dtype.
    ValueError
        Wrong rank, shapes that do not match ``(C,)``, arrays on different
        contexts, ``momentum`` outside [0, 1], ``eps <= 0``, unknown ``impl``,
        or a training batch with one value per channel.
    """
    if any(isinstance(a, sym.Symbol) for a in (X, gamma, beta, moving_mean, moving_vari)):
        return _batch_norm_traced(X, gamma, beta, is_training, moving_mean, moving_vari,
                                  momentum, eps, axis, impl, check_finite, virtual_batch_size, num_batches)
    ax = check_batch_norm_args(X, gamma, beta, is_training, moving_mean,
                                moving_vari, momentum, eps, axis, impl)
    check_variants(X, is_training, ax, moving_mean, moving_vari, momentum, virtual_batch_size, num_batches)
    check_distinct_state(moving_mean, moving_vari)
    if check_finite:
        _check_finite(X=X, gamma=gamma, beta=beta, moving_mean=moving_mean, moving_vari=moving_vari)
    in_dtype = X.dtype
    stat_dtype = STAT_DTYPE[dtype_name(in_dtype)]
    if dtype_name(in_dtype) != stat_dtype:
        X = X.astype(stat_dtype)  # differentiable cast, so gradients flow to float16 X
    if not is_training:
        Y = _batch_norm_inference(X, gamma, beta, moving_mean, moving_vari, eps, ax)
    else:
        train = _batch_norm_train_fused if impl == "fused" else _batch_norm_train_scratch

        def train_part(part):
            Y, mean, vari = train(part, gamma, beta, eps, ax)
            record_batch_stats(moving_mean, moving_vari, mean, vari, part.size // part.shape[ax])
            return Y, mean, vari
        Y, mean, vari = in_ghost_batches(train_part, X, virtual_batch_size)
        update_moving_stats(moving_mean, moving_vari, mean, vari, momentum, num_batches)
    return Y if Y.dtype == in_dtype else Y.astype(in_dtype)


class _Described:
    """Shape, dtype and context of an NDArray or a traced Symbol, read once for the checks below (an NDArray's
    shape, dtype and context are each a call into MXNet, ~3 us, and the checks read them ~40 times)."""

    def __init__(self, array, op):
        if isinstance(array, sym.Symbol):
            self.shape, self.dtype = shape_of(array, op), dtype_of(array, op)
            self.context = None  # one context per jitted call, checked by jit
        else:
            self.shape, self.dtype, self.context = array.shape, array.dtype, array.context
        self.ndim = len(self.shape)
        self.size = math.prod(self.shape)


def check_batch_norm_args(X, gamma, beta, is_training, moving_mean, moving_vari,
                           momentum, eps, axis, impl, op="batch_norm"):
    """Validate batch_norm's arguments (or those of the op named ``op`` that shares them); return the
    non-negative channel axis."""
    arrays = {"X": X, "gamma": gamma, "beta": beta,
              "moving_mean": moving_mean, "moving_vari": moving_vari}
    traced = any(isinstance(value, sym.Symbol) for value in arrays.values())
    for name, value in arrays.items():
        if traced and not isinstance(value, sym.Symbol):
            raise tracing.TracingError(
                f"{op}: {name} is a {type(value).__name__} inside mxbn.jit while X is traced; pass every "
                f"array as an argument of the jitted function (constants are not captured)")
        if not traced and not isinstance(value, nd.NDArray):
            raise TypeError(f"{op}: {name} must be an mxnet NDArray, got {type(value).__name__}")
        if not traced and isinstance(value, nd.sparse.BaseSparseNDArray):
            raise TypeError(f"{op}: {name} must be a dense NDArray, got storage type {value.stype!r}")
    arrays = {name: _Described(value, op) for name, value in arrays.items()}
    X = arrays["X"]
    if not isinstance(is_training, (bool, np.bool_)) and not (
            isinstance(is_training, numbers.Integral) and is_training in (0, 1)):
        raise TypeError(f"{op}: is_training must be a bool, got {is_training!r} "
                        f"({type(is_training).__name__})")
    if impl not in BATCH_NORM_IMPLS:
        raise ValueError(f"{op}: impl must be one of {BATCH_NORM_IMPLS}, got {impl!r}")
    if X.ndim < 2:
        raise ValueError(f"{op}: X must have rank >= 2 (batch and channel axes), "
                         f"got shape {X.shape}")
    if not isinstance(axis, numbers.Integral) or not -X.ndim <= axis < X.ndim:
        raise ValueError(f"{op}: axis must be an integer in [{-X.ndim}, {X.ndim - 1}] "
                         f"for X of shape {X.shape}, got {axis!r}")
    ax = int(axis) % X.ndim
    x_dtype = dtype_name(X.dtype)
    if x_dtype not in STAT_DTYPE:
        raise TypeError(f"{op}: X has dtype {x_dtype}, expected float16, float32 or float64")
    stat_dtype = STAT_DTYPE[x_dtype]
    C = X.shape[ax]
    for name in ("gamma", "beta", "moving_mean", "moving_vari"):
        value = arrays[name]
        if value.shape != (C,):
            raise ValueError(f"{op}: {name} has shape {value.shape}, expected ({C},) "
                             f"= channels of X on axis {ax} (X has shape {X.shape})")
        if dtype_name(value.dtype) != stat_dtype:
            raise TypeError(f"{op}: {name} has dtype {dtype_name(value.dtype)}, expected "
                            f"{stat_dtype} for X of dtype {x_dtype}")
    for name, value in arrays.items():
        if value.context is not None and value.context != X.context:
            raise ValueError(f"{op}: {name} is on {value.context} but X is on {X.context}; "
                             f"move every array to one context (e.g. .as_in_context({X.context}))")
    if momentum is not None and (not is_real(momentum) or not 0.0 <= momentum <= 1.0):
        raise ValueError(f"{op}: momentum must be a number in [0, 1] (weight of the old "
                         f"moving value) or None (cumulative average), got {momentum!r}")
    if not is_real(eps) or not 0 < eps < math.inf:
        raise ValueError(f"{op}: eps must be a number > 0 and finite, got {eps!r}")
    if is_training and X.size // C < 2:
        raise ValueError(
            f"{op}: a training batch needs at least 2 values per channel to have a "
            f"variance; X of shape {X.shape} has 1 per channel. Drop this batch, use a larger "
            f"one, or call with is_training=False (moving statistics were not updated)")
    return ax


def check_distinct_state(moving_mean, moving_vari, op="batch_norm"):
    """The two moving statistics must be two arrays (one NDArray handle, or one traced graph input, is one)."""
    if _handle(moving_mean) == _handle(moving_vari):
        raise ValueError(f"{op}: moving_mean and moving_vari are the same array; each statistic needs "
                         "its own (C,) array (mxbn.init.batch_norm_params makes both)")


def check_variants(X, is_training, ax, moving_mean, moving_vari, momentum, virtual_batch_size, num_batches):
    """Check ghost BN's ``virtual_batch_size`` and the cumulative average's ``num_batches`` (X may be a traced
    Symbol's description)."""
    if virtual_batch_size is not None:
        N = X.shape[0]
        if not is_integer(virtual_batch_size) or virtual_batch_size < 1:
            raise ValueError(f"batch_norm: virtual_batch_size must be a positive integer or None, got "
                             f"{virtual_batch_size!r}")
        if ax == 0:
            raise ValueError("batch_norm: virtual_batch_size splits axis 0 (the batch), so the channel axis "
                             "cannot be 0 with it; got axis 0")
        if is_training and N % virtual_batch_size:
            raise ValueError(f"batch_norm: virtual_batch_size must divide the batch: got virtual_batch_size="
                             f"{virtual_batch_size} for a batch of {N} (X has shape {X.shape})")
        if is_training and virtual_batch_size * (X.size // (N * X.shape[ax])) < 2:
            raise ValueError(f"batch_norm: a ghost batch of {virtual_batch_size} sample(s) of X's shape "
                             f"{X.shape} has 1 value per channel, so no variance; use virtual_batch_size >= 2")
    if momentum is None:
        if num_batches is None:
            raise ValueError("batch_norm: momentum=None (the cumulative average) needs num_batches, the (1,) "
                             "state array counting the batches averaged so far (start it at 0: "
                             "mxbn.init.batch_norm_params(C, ctx, cumulative=True))")
        expected = STAT_DTYPE[dtype_name(X.dtype)]
        if not isinstance(num_batches, (nd.NDArray, sym.Symbol)):
            raise TypeError(f"batch_norm: num_batches must be an NDArray of shape (1,), got "
                            f"{type(num_batches).__name__}")
        described = _Described(num_batches, "batch_norm") if isinstance(num_batches, sym.Symbol) else num_batches
        if described.shape != (1,) or dtype_name(described.dtype) != expected:
            raise ValueError(f"batch_norm: num_batches must have shape (1,) and dtype {expected}, got shape "
                             f"{described.shape} and dtype {dtype_name(described.dtype)}")
        names = {_handle(a) for a in (moving_mean, moving_vari)}
        if _handle(num_batches) in names:
            raise ValueError("batch_norm: num_batches is the same array as a moving statistic; it needs its own")
    elif num_batches is not None:
        raise ValueError(f"batch_norm: num_batches is the counter of momentum=None's cumulative average, but "
                         f"momentum={momentum!r}; pass momentum=None or leave num_batches out")


def _handle(array):
    return array.name if isinstance(array, sym.Symbol) else array.handle.value


def _check_finite(**arrays):
    for name, value in arrays.items():
        with autograd.pause():
            finite = nd.contrib.isfinite(value.astype("float32"))
            bad = value.size - int(finite.sum().asscalar())
            negative = int((value < 0).sum().asscalar()) if name == "moving_vari" else 0
        if bad:
            raise ValueError(f"batch_norm: {name} holds {bad} NaN or infinite value(s) "
                             f"(shape {value.shape}); check the input pipeline and the learning rate")
        if negative:
            raise ValueError(f"batch_norm: moving_vari holds {negative} negative value(s); a variance is >= 0 "
                             f"(initialise it to ones, mxbn.init.batch_norm_params)")


def three_d_shape(shape, ax):
    """(pre, C, post): a view of X with the channel axis in the middle.

    Reductions over pre and post of a C-contiguous array are then two GEMVs
    with a ones vector, each reading memory in order.  MXNet 1.9.1's generic
    reduction over axes (0, 2, 3) is several times slower on the CPU.
    """
    pre = 1
    for n in shape[:ax]:
        pre *= n
    post = 1
    for n in shape[ax + 1:]:
        post *= n
    return pre, shape[ax], post


def _per_channel_sum(X3, ones_pre, ones_post, ops=nd, shape=None):
    """Sum of a (pre, C, post) array over pre and post -> shape (1, C): NDArrays, or Symbols (``ops=sym``,
    with the shape the trace knows)."""
    pre, C, post = X3.shape if shape is None else shape
    if post > 1:
        rows = ops.dot(X3.reshape((pre * C, post)), ones_post)  # (pre*C, 1)
        return ops.dot(ones_pre, rows.reshape((pre, C)))        # (1, C)
    return ops.dot(ones_pre, X3.reshape((pre, C)))


class _ScratchBatchNorm(Function):
    """Training-mode BN from primitives with the analytic backward.

    forward:  mean = sum(X)/m,  xc = X - mean,  var = sum(xc^2)/m   (two passes)
              Y = xc * (gamma * invstd) + beta,  invstd = 1/sqrt(var + eps)
    backward: with x_hat = xc * invstd,
              dbeta  = sum(dY)
              dgamma = sum(dY * x_hat) = invstd * sum(dY * xc)
              dX     = gamma*invstd * (dY - dbeta/m - x_hat * dgamma/m)
                     = dY*scale - xc*(scale*invstd^2*sum(dY*xc)/m) - scale*dbeta/m
    (d mean/dX and d var/dX are folded in; d var/d mean = 0 because sum(xc) = 0.)
    """

    def __init__(self, eps):
        super().__init__()
        self.eps = eps

    def forward(self, X3, gamma, beta):
        shape3, ctx, dtype = X3.shape, X3.context, dtype_name(X3.dtype)
        pre, C, post = shape3
        ones = _made_once(("bn_ones", pre, post, ctx, dtype), lambda: (
            nd.ones((1, pre), ctx=ctx, dtype=dtype), nd.ones((post, 1), ctx=ctx, dtype=dtype)))
        # every array of both graphs has a shape that follows from X3's (checked), so X3's shape, context and
        # dtype are their signature
        self.signature = (ctx, shape3, dtype)
        Y3, xc, mean, vari, invstd, scale = graph_call(
            ("scratch_forward", self.eps), lambda *a: _scratch_forward(*a, self.eps, shape3), X3, gamma, beta, *ones,
            signature=self.signature)
        self.save_for_backward(xc, invstd, scale, ones)
        self.batch_stats = (mean.reshape((C,)), vari.reshape((C,)))
        return Y3

    def backward(self, dY3):
        xc, invstd, scale, ones = self.saved_tensors
        shape3 = self.signature[1]
        needs = tuple(self.needs_input_grad)
        grads = graph_call(("scratch_backward", needs), lambda *a: _scratch_backward(*a, needs, shape3),
                           dY3, xc, invstd, scale, *ones, signature=self.signature)
        grads = iter(grads)
        return tuple(next(grads) if need else None for need in needs)


def _scratch_forward(X3, gamma, beta, ones_pre, ones_post, eps, shape3):
    """_ScratchBatchNorm's forward on Symbols of a (pre, C, post) X3: (Y3, xc, mean, vari, invstd, scale)."""
    pre, C, post = shape3
    m = pre * post
    mean = _per_channel_sum(X3, ones_pre, ones_post, sym, shape3) / m          # (1, C)
    xc = sym.broadcast_sub(X3, mean.reshape((1, C, 1)))
    vari = _per_channel_sum(sym.square(xc), ones_pre, ones_post, sym, shape3) / m
    invstd = sym.rsqrt(vari + eps)
    scale = gamma.reshape((1, C)) * invstd
    return normalize_per_channel(xc, scale, beta, broadcast=True), xc, mean, vari, invstd, scale


def _scratch_backward(dY3, xc, invstd, scale, ones_pre, ones_post, needs, shape3):
    """_ScratchBatchNorm's backward on Symbols: the gradients of (X3, gamma, beta) that ``needs`` asks for."""
    pre, C, post = shape3
    m = pre * post
    need_dX, need_dgamma, need_dbeta = needs
    sum_dy = _per_channel_sum(dY3, ones_pre, ones_post, sym, shape3)           # dbeta, (1, C)
    sum_dy_xc = _per_channel_sum(dY3 * xc, ones_pre, ones_post, sym, shape3)   # (1, C)
    grads = []
    if need_dX:  # e.g. not for BN on the input of a net, or on frozen features
        k_xc = -(scale * sym.square(invstd) * sum_dy_xc / m).reshape((1, C, 1))
        k_0 = -(scale * sum_dy / m).reshape((1, C, 1))
        grads.append(sym.broadcast_add(
            sym.broadcast_add(sym.broadcast_mul(dY3, scale.reshape((1, C, 1))), sym.broadcast_mul(xc, k_xc)), k_0))
    if need_dgamma:
        grads.append((invstd * sum_dy_xc).reshape((C,)))
    if need_dbeta:
        grads.append(sum_dy.reshape((C,)))
    return tuple(grads)


def _batch_norm_train_scratch(X, gamma, beta, eps, ax):
    op = _ScratchBatchNorm(eps)
    Y3 = op(X.reshape(three_d_shape(X.shape, ax)), gamma, beta)
    mean, vari = op.batch_stats
    op.batch_stats = None
    return Y3.reshape(X.shape), mean, vari


def fused_kernel(X, gamma, beta, scratch_mean, scratch_vari, eps, ax, stat_dtype):
    """(Y, batch mean, biased batch variance) by MXNet's fused BatchNorm kernel, on Symbols: traced by
    mxbn.jit, or inside the cached graph of an imperative call (``_batch_norm_train_fused``)."""
    # Scratch aux states: the kernel updates its aux arrays itself (on the CPU during backward, with cuDNN in
    # forward and unbiased); giving it throwaway arrays keeps the user's moving statistics under mxbn's
    # single rule.
    out = sym.BatchNorm(X, gamma, beta, scratch_mean, scratch_vari, eps=eps, momentum=0.0, fix_gamma=False,
                        use_global_stats=False, output_mean_var=True, axis=ax)
    return out[0], out[1], variance_from_invstd(out[2], eps, stat_dtype)


def _batch_norm_train_fused(X, gamma, beta, eps, ax):
    """(Y, batch mean, biased var) of one (ghost) batch: fused_kernel on NDArrays as one cached graph, which
    autograd differentiates as a whole."""
    stat_dtype = dtype_name(gamma.dtype)
    shape, ctx = X.shape, X.context
    C = shape[ax]
    # Throwaway aux arrays (mean 0, variance 1): the kernel writes them and nothing reads them
    scratch = _made_once(("bn_aux", C, ctx, stat_dtype), lambda: (
        nd.zeros((C,), ctx=ctx, dtype=stat_dtype), nd.ones((C,), ctx=ctx, dtype=stat_dtype)))
    # The kernel picks batch vs. moving statistics from autograd's global train flag; pin it so the explicit
    # is_training argument is what counts.
    with autograd.train_mode():
        # every other array is (C,) on X's context (checked), so X's shape and context are the signature
        return graph_call(("fused_kernel", eps, ax, stat_dtype),
                          lambda *arrays: fused_kernel(*arrays, eps, ax, stat_dtype), X, gamma, beta, *scratch,
                          signature=(ctx, shape))


def variance_from_invstd(invstd, eps, stat_dtype):
    """The biased variance from the kernel's ``1/sqrt(var + eps)``, inverted in float64 so that it keeps
    float32's relative precision of var + eps.  NDArray or Symbol."""
    ops = ops_for(invstd)
    return ops.cast(1.0 / ops.square(ops.cast(invstd, dtype="float64")) - eps, dtype=stat_dtype)


# Arrays and small graphs that every imperative training call needs.  An imperative MXNet op costs ~30 us of
# Python and engine time however small it is, and batch_norm's bookkeeping around the kernel (throwaway aux
# arrays, the variance, the moving-statistics rule) was ~25 of them: 5x the kernel's own time on a (128, 128)
# batch.  The constant arrays are made once per kind, and each piece of arithmetic runs as one CachedOp built
# from the same function the traced path uses.
_MADE_ONCE = {}
_GRAPHS = {}


def _made_once(key, make):
    """``make()``'s arrays, made on the first call with ``key`` (which must name their shapes, context and
    dtype) and the same arrays on every later one: the fused kernel's throwaway aux arrays, the scratch
    path's ones vectors."""
    if key not in _MADE_ONCE:
        _MADE_ONCE[key] = make()
    return _MADE_ONCE[key]


def graph_call(key, fn, *arrays, signature=None):
    """``fn(*arrays)`` for NDArrays, run as one CachedOp: ``fn`` is traced on Symbols once per ``key`` (which
    must name everything ``fn`` depends on besides its arguments) and per shapes and context of the arrays,
    so that the graph's memory is planned once (static_alloc/static_shape: 70 us a call instead of 110).
    ``signature``: what determines the context and every array's shape, when the caller knows it (reading
    them costs ~3 us an array).  A tuple result gives a list of new arrays."""
    full_key = (key,) + (signature if signature is not None else
                         (arrays[0].context,) + tuple(a.shape for a in arrays))
    entry = _GRAPHS.get(full_key)
    if entry is None:
        inputs = [sym.var(f"arg{i}") for i in range(len(arrays))]
        out = fn(*inputs)
        grouped = sym.Group(list(out)) if isinstance(out, tuple) else out
        order = [int(name[3:]) for name in grouped.list_inputs()]
        op = CachedOp(grouped, flags=[("static_alloc", True), ("static_shape", True)])
        entry = _GRAPHS[full_key] = (op, order, isinstance(out, tuple))
    op, order, several = entry
    result = op(*[arrays[i] for i in order])
    if several:  # a CachedOp with one output returns the array itself, not a list of one
        return result if isinstance(result, list) else [result]
    return result


def _batch_norm_inference(X, gamma, beta, moving_mean, moving_vari, eps, ax):
    """Y = X * scale + shift with per-channel scale = gamma/sqrt(vari+eps), shift = beta - mean*scale.

    Composed of ordinary ops so that autograd still differentiates w.r.t. X,
    gamma and beta in inference mode; the moving statistics are only read, as
    constants: they receive no gradient (as with ``nd.BatchNorm``), so updating
    every array that has a ``.grad`` cannot move them.
    """
    ops = ops_for(X)
    shape = shape_of(X, "batch_norm")
    pre, C, post = three_d_shape(shape, ax)
    moving_mean, moving_vari = constant(moving_mean), constant(moving_vari)
    scale = gamma * ops.rsqrt(moving_vari + eps)
    shift = beta - moving_mean * scale
    X3 = X.reshape((pre, C, post))
    Y3 = normalize_per_channel(X3, scale, shift)
    return Y3.reshape(shape)


_FLOAT64_TINY = float(np.finfo(np.float64).tiny)   # read once: numpy's finfo costs ~10 us a call


def _momentum_weights(momentum):
    """(weight of the old moving value, weight of the batch statistic)."""
    # MXNet parses scalar arguments from text and rejects double subnormals
    # (momentum=1e-313 raised "Out of range value"); they are 0 to any precision.
    keep = float(momentum) if momentum >= _FLOAT64_TINY else 0.0
    return keep, 1.0 - keep


def _batch_norm_traced(X, gamma, beta, is_training, moving_mean, moving_vari, momentum, eps, axis, impl,
                       check_finite, virtual_batch_size, num_batches):
    """batch_norm inside mxbn.jit: graph nodes, and the new moving statistics handed to the trace.

    Same arithmetic as the imperative paths: "fused" is MXNet's BatchNorm
    kernel on scratch aux arrays with the variance recovered in float64,
    "scratch" the two-pass statistics from primitives (differentiated by
    MXNet's autograd instead of the hand-written backward, which cannot live
    in a graph).
    """
    trace = tracing.current("batch_norm")
    ax = check_batch_norm_args(X, gamma, beta, is_training, moving_mean, moving_vari, momentum, eps, axis, impl)
    check_variants(_Described(X, "batch_norm"), is_training, ax, moving_mean, moving_vari, momentum,
                   virtual_batch_size, num_batches)
    check_distinct_state(moving_mean, moving_vari)
    if check_finite:
        raise tracing.TracingError("batch_norm: check_finite=True reads the values, which a traced graph "
                                   "cannot; check outside mxbn.jit (or after the call)")
    in_dtype = dtype_of(X, "batch_norm")
    stat_dtype = STAT_DTYPE[in_dtype]
    if in_dtype != stat_dtype:
        X = sym.cast(X, dtype=stat_dtype)
    mean_now = trace.current_value(moving_mean, "batch_norm", "moving_mean")
    vari_now = trace.current_value(moving_vari, "batch_norm", "moving_vari")
    if not is_training and trace.for_export:
        # one recognizable node that mxbn.export folds (or turns into a scale and shift); never run by mxbn
        Y = sym.BatchNorm(X, gamma, beta, mean_now, vari_now, eps=eps, fix_gamma=False, use_global_stats=True,
                          axis=ax)
    elif not is_training:
        Y = _batch_norm_inference(X, gamma, beta, mean_now, vari_now, eps, ax)
    else:
        train = _batch_norm_train_fused_traced if impl == "fused" else _batch_norm_train_scratch_traced
        Y, mean, vari = in_ghost_batches(lambda part: train(trace, part, gamma, beta, eps, ax, stat_dtype), X,
                                         virtual_batch_size)
        set_traced_stats(trace, (moving_mean, moving_vari, num_batches), mean, vari, momentum, "batch_norm")
    return Y if in_dtype == stat_dtype else sym.cast(Y, dtype=in_dtype)


def set_traced_stats(trace, state, mean, vari, momentum, op):
    """Hand the trace the new values of ``state`` = (moving_mean, moving_vari, num_batches or None) after a
    training batch with statistics ``mean``, ``vari`` (the graph computes them; jit writes them back).  The new
    values are gradient-blocked, and with them every path from ``mean`` and ``vari`` to the state: the statistics
    need no block of their own (a graph pays ~15 us per node)."""
    moving_mean, moving_vari, num_batches = state
    now = [trace.current_value(moving_mean, op, "moving_mean"), trace.current_value(moving_vari, op, "moving_vari")]
    if momentum is None:
        now.append(trace.current_value(num_batches, op, "num_batches"))
    new = new_moving_stats(now, mean, vari, momentum)
    for array, value, role in zip(state, new, ("moving_mean", "moving_vari", "num_batches")):
        trace.set_state(array, sym.BlockGrad(value), op, role)


def in_ghost_batches(train, X, virtual_batch_size):
    """``train(X) -> (Y, mean, vari)`` on each consecutive chunk of ``virtual_batch_size`` samples of X (all of
    X when None): the outputs concatenated, the chunks' means and variances averaged.  NDArrays or Symbols."""
    N = shape_of(X, "batch_norm")[0]
    if virtual_batch_size is None or virtual_batch_size >= N:
        return train(X)
    ops = ops_for(X)
    parts = [train(ops.slice_axis(X, axis=0, begin=start, end=start + virtual_batch_size))
             for start in range(0, N, virtual_batch_size)]
    Y = ops.concat(*[p[0] for p in parts], dim=0)
    mean = ops.add_n(*[p[1] for p in parts]) / len(parts)
    vari = ops.add_n(*[p[2] for p in parts]) / len(parts)
    return Y, mean, vari


def _batch_norm_train_fused_traced(trace, X, gamma, beta, eps, ax, stat_dtype):
    C = shape_of(X, "batch_norm")[ax]
    scratch_mean = trace.scratch_var("bn_mean", (C,), stat_dtype, 0.0)
    scratch_vari = trace.scratch_var("bn_vari", (C,), stat_dtype, 1.0)
    trace.needs_train_mode = True  # the kernel takes batch statistics only under autograd's train flag
    return fused_kernel(X, gamma, beta, scratch_mean, scratch_vari, eps, ax, stat_dtype)


def _batch_norm_train_scratch_traced(trace, X, gamma, beta, eps, ax, stat_dtype):
    """The imperative scratch forward as graph nodes: the same GEMV reductions (the ones vectors are
    scratch inputs of the graph), two passes, biased variance.  MXNet differentiates the graph, so the
    backward is autograd's of these ops, equal to the analytic one to float32 rounding."""
    shape = shape_of(X, "batch_norm")
    C = shape[ax]
    xc, mean, vari = centered_moments(X, ax, trace)
    scale = gamma.reshape((1, C)) * sym.rsqrt(vari + eps)
    Y3 = normalize_per_channel(xc, scale, beta)
    return Y3.reshape(shape), mean.reshape((C,)), vari.reshape((C,))


def centered_moments(X, ax, trace=None):
    """``(xc, mean, vari)`` of X over every axis but ``ax``, as differentiable ops: xc the (pre, C, post) view
    minus the mean, mean and the biased variance (1, C), both two-pass GEMV reductions with ones vectors.

    NDArrays (autograd records them), or Symbols of ``trace`` (the ones vectors are then its scratch inputs
    and the mean is spread by products with them, so that its gradient is a GEMV too)."""
    ops = ops_for(X)
    shape3 = three_d_shape(shape_of(X, "batch_norm"), ax)
    pre, C, post = shape3
    dtype = dtype_of(X, "batch_norm")
    if trace is not None:
        ones = _ones_vectors(trace, pre, post, dtype)
    else:
        ones = (nd.ones((1, pre), ctx=X.context, dtype=dtype),
                nd.ones((post, 1), ctx=X.context, dtype=dtype) if post > 1 else None)
    X3 = X.reshape(shape3)
    mean = _per_channel_sum(X3, *ones, ops, shape3) / (pre * post)
    spread = (_spread(mean, *ones, shape3) if trace is not None
              else ops.broadcast_like(mean.reshape((1, C, 1)), X3))
    xc = X3 - spread
    return xc, mean, _per_channel_sum(ops.square(xc), *ones, ops, shape3) / (pre * post)


def _ones_vectors(trace, pre, post, dtype):
    """The (1, pre) and (post, 1) ones of the traced GEMV reductions, scratch inputs of the graph (the
    second None when post is 1)."""
    ones_pre = trace.constant_var("bn_ones_pre", (1, pre), dtype, 1.0)
    ones_post = trace.constant_var("bn_ones_post", (post, 1), dtype, 1.0) if post > 1 else None
    return ones_pre, ones_post


def _spread(v, ones_pre, ones_post, shape):
    """A traced (1, C) -> (pre, C, post) by products with the ones vectors: exact copies, and a gradient
    that is a GEMV (a broadcast's is MXNet's generic reduction over axes (0, 2), several times slower)."""
    pre, C, post = shape
    rows = sym.dot(ones_pre, v, transpose_a=True)                            # (pre, C)
    if ones_post is None:
        return rows.reshape(shape)
    return sym.dot(rows.reshape((pre * C, 1)), ones_post, transpose_b=True).reshape(shape)


def _all_finite(mean, vari, like):
    """1 where every batch statistic is finite, else 0, broadcast like ``like`` (decided on the device)."""
    ops = ops_for(mean)
    # one node (MXNet's AMP check, float32 (1,)): a graph pays ~15 us per node, and x - x == 0 over both
    # statistics took six
    finite = ops.multi_all_finite(mean, vari, num_arrays=2)
    return ops.broadcast_like(finite, like)


def moving_stats_rule(moving_mean, moving_vari, mean, vari, momentum):
    """The new moving statistics: ``momentum*moving + (1-momentum)*batch``, or the old ones unchanged when
    the batch statistics hold a NaN or an infinity (decided on the device, no host sync), so that a
    non-finite batch never poisons the state.  NDArrays or traced Symbols alike."""
    ops = ops_for(mean)
    keep, take = _momentum_weights(momentum)
    finite = _all_finite(mean, vari, moving_mean)
    return (ops.where(finite, keep * moving_mean + take * mean, moving_mean),
            ops.where(finite, keep * moving_vari + take * vari, moving_vari))


def cumulative_stats_rule(moving_mean, moving_vari, num_batches, mean, vari):
    """momentum=None: with n = num_batches + 1, ``moving = (1 - 1/n)*moving + (1/n)*batch`` (the first batch
    replaces the initial values exactly) and the counter becomes n; a non-finite batch changes nothing."""
    ops = ops_for(mean)
    count = num_batches + 1
    take = ops.broadcast_like(1.0 / count, moving_mean)
    finite = _all_finite(mean, vari, moving_mean)
    new_mean = ops.where(finite, (1 - take) * moving_mean + take * mean, moving_mean)
    new_vari = ops.where(finite, (1 - take) * moving_vari + take * vari, moving_vari)
    return new_mean, new_vari, ops.where(finite.slice_axis(axis=0, begin=0, end=1), count, num_batches)


def new_moving_stats(now, mean, vari, momentum):
    """The new values of the state ``now`` = (moving_mean, moving_vari) after a batch with statistics ``mean``,
    ``vari``: moving_stats_rule; with momentum None ``now`` ends with num_batches and cumulative_stats_rule
    gives it too.  NDArrays or Symbols."""
    if momentum is None:
        return cumulative_stats_rule(*now, mean, vari)
    return moving_stats_rule(*now, mean, vari, momentum)


def _rule_key(momentum):
    """What the moving-statistics rule of ``momentum`` depends on: the rule's weights, or None (cumulative)."""
    return None if momentum is None else _momentum_weights(momentum)


def update_moving_stats(moving_mean, moving_vari, mean, vari, momentum, num_batches=None):
    """The moving statistics (and with momentum=None the counter) updated in place, outside the graph, by
    moving_stats_rule or cumulative_stats_rule."""
    state = (moving_mean, moving_vari) + ((num_batches,) if momentum is None else ())
    with autograd.pause():
        new = graph_call(("moving_stats", _rule_key(momentum)),
                         lambda *now_and_batch: new_moving_stats(now_and_batch[:-2], *now_and_batch[-2:], momentum),
                         *state, mean.detach(), vari.detach())
        # identity into the state: one op either way, but `[:] =` costs ~0.2 ms of Python per call and
        # copyto ~35 us more than this
        for array, value in zip(state, new):
            nd.identity(value, out=array)


# Batch statistics seen by imperative training calls, for mxbn.precise_bn: while a recorder is open every
# training-mode batch norm on this thread adds (mean, biased var, values per channel) under its moving_mean's
# handle.  A hook rather than an argument because the recorder must see inside a user's net without changing
# its signature.
_RECORDING = threading.local()


@contextlib.contextmanager
def recording_batch_stats():
    """Collect the batch statistics of every imperative training-mode batch norm inside the block: yields a
    dict ``{moving_mean handle: ((moving_mean, moving_vari), [(mean, vari, count), ...])}`` (NDArrays (C,))."""
    previous = getattr(_RECORDING, "stats", None)
    _RECORDING.stats = {}
    try:
        yield _RECORDING.stats
    finally:
        _RECORDING.stats = previous


def record_batch_stats(moving_mean, moving_vari, mean, vari, count):
    """Give an open recorder (recording_batch_stats) one batch's statistics; nothing when none is open."""
    stats = getattr(_RECORDING, "stats", None)
    if stats is not None:
        entry = stats.setdefault(moving_mean.handle.value, ((moving_mean, moving_vari), []))
        entry[1].append((mean.detach(), vari.detach(), count))
