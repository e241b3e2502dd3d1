"""Functional ops on NDArrays: batch normalization and the thin layers of a LeNet/MLP.

Every function here is a plain function of its arguments.  Nothing reads a global
training mode: ``is_training`` is an explicit argument.  The only arguments a
function may change are the ones its docstring calls *state* (``moving_mean`` and
``moving_vari`` of :func:`batch_norm`).
"""
import atexit
import functools
import numbers

import numpy as np
import mxnet as mx
from mxnet import autograd, nd, sym

from . import tracing
from .custom_function import Function

# MXNet registers its engine shutdown with atexit when it is imported; handlers
# run last-in first-out, so this one runs just before it.  Without draining the
# engine first, a process whose last graph went through a custom Function
# (the "scratch" batch_norm) can hang forever in MXNotifyShutdown's WaitForAll.
atexit.register(nd.waitall)

__all__ = [
    "batch_norm", "conv2d", "max_pool2d", "avg_pool2d", "dense", "flatten",
    "relu", "sigmoid", "tanh", "dropout", "softmax", "top_class", "percentiles", "softmax_cross_entropy",
    "accuracy", "correct_count", "BATCH_NORM_IMPLS",
]

BATCH_NORM_IMPLS = ("fused", "scratch")

# Parameter/statistics dtype for each input dtype: float16 activations keep
# float32 statistics (as MXNet and cuDNN do) because a float16 sum over a
# 128x24x24 channel overflows and loses every digit of the variance.
_STAT_DTYPE = {"float16": "float32", "float32": "float32", "float64": "float64"}


# --------------------------------------------------------------------------- #
# every kind of array: legacy NDArray, mx.np.ndarray, Symbol (inside mxbn.jit)
# --------------------------------------------------------------------------- #
def _is_np(value):
    return isinstance(value, mx.numpy.ndarray)


def _accepts_every_array_kind(op):
    """Let ``op`` (written with legacy NDArray/Symbol ops) take and return ``mx.np`` arrays too.

    ``mx.np.ndarray`` arguments are viewed as legacy NDArrays (``as_nd_ndarray``:
    no copy, autograd follows) and array results are viewed back, so the
    caller gets the kind it passed.
    """
    @functools.wraps(op)
    def wrapper(*args, **kwargs):
        values = list(args) + list(kwargs.values())
        if any(isinstance(v, sym.Symbol) for v in values):
            captured = [type(v).__name__ for v in values if isinstance(v, nd.NDArray)]
            if captured:
                raise tracing.TracingError(
                    f"{op.__name__}: got a {captured[0]} next to traced arrays inside mxbn.jit; pass every array "
                    f"as an argument of the jitted function (constants are not captured)")
        if not any(_is_np(v) for v in values):
            return op(*args, **kwargs)
        args = [a.as_nd_ndarray() if _is_np(a) else a for a in args]
        kwargs = {k: v.as_nd_ndarray() if _is_np(v) else v for k, v in kwargs.items()}
        result = op(*args, **kwargs)
        return result.as_np_ndarray() if isinstance(result, nd.NDArray) else result
    return wrapper


def _ops(X):
    """The operator namespace for X: ``mx.sym`` while tracing, ``mx.nd`` otherwise."""
    return sym if isinstance(X, sym.Symbol) else nd


def _shape(X, op):
    """Shape of an NDArray, or of a Symbol traced by mxbn.jit (which knows its inputs' shapes)."""
    if isinstance(X, sym.Symbol):
        return tracing.shape_of(X, op)
    return X.shape


def _dtype_of(X, op):
    if isinstance(X, sym.Symbol):
        return tracing.dtype_of(X, op)
    return _dtype_name(X.dtype)


# --------------------------------------------------------------------------- #
# batch normalization
# --------------------------------------------------------------------------- #
@_accepts_every_array_kind
def batch_norm(X, gamma, beta, is_training, moving_mean, moving_vari,
               momentum=0.9, eps=1e-5, axis=1, impl="fused", check_finite=False):
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
    momentum : float in [0, 1], default 0.9
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
                                  momentum, eps, axis, impl, check_finite)
    ax = _check_batch_norm_args(X, gamma, beta, is_training, moving_mean,
                                moving_vari, momentum, eps, axis, impl)
    if check_finite:
        _check_finite(X=X, gamma=gamma, beta=beta, moving_mean=moving_mean, moving_vari=moving_vari)
    in_dtype = X.dtype
    stat_dtype = _STAT_DTYPE[_dtype_name(in_dtype)]
    if _dtype_name(in_dtype) != stat_dtype:
        X = X.astype(stat_dtype)  # differentiable cast, so gradients flow to float16 X
    if not is_training:
        Y = _batch_norm_inference(X, gamma, beta, moving_mean, moving_vari, eps, ax)
    elif impl == "fused":
        Y, mean, vari = _batch_norm_train_fused(X, gamma, beta, eps, ax)
        _update_moving_stats(moving_mean, moving_vari, mean, vari, momentum)
    else:
        Y, mean, vari = _batch_norm_train_scratch(X, gamma, beta, eps, ax)
        _update_moving_stats(moving_mean, moving_vari, mean, vari, momentum)
    return Y if Y.dtype == in_dtype else Y.astype(in_dtype)


def _dtype_name(dtype):
    return np.dtype(dtype).name


class _Described:
    """Shape, dtype and context of a traced Symbol, read like an NDArray's by the checks below."""

    def __init__(self, symbol, op):
        self.shape = _shape(symbol, op)
        self.dtype = _dtype_of(symbol, op)
        self.ndim = len(self.shape)
        self.size = int(np.prod(self.shape)) if self.shape else 1
        self.context = None  # one context per jitted call, checked by jit


def _check_batch_norm_args(X, gamma, beta, is_training, moving_mean, moving_vari,
                           momentum, eps, axis, impl):
    """Validate batch_norm's arguments; return the non-negative channel axis."""
    arrays = {"X": X, "gamma": gamma, "beta": beta,
              "moving_mean": moving_mean, "moving_vari": moving_vari}
    traced = any(isinstance(value, sym.Symbol) for value in arrays.values())
    for name, value in arrays.items():
        if traced and not isinstance(value, sym.Symbol):
            raise tracing.TracingError(
                f"batch_norm: {name} is a {type(value).__name__} inside mxbn.jit while X is traced; pass every "
                f"array as an argument of the jitted function (constants are not captured)")
        if not traced and not isinstance(value, nd.NDArray):
            raise TypeError(f"batch_norm: {name} must be an mxnet NDArray, got {type(value).__name__}")
        if not traced and isinstance(value, nd.sparse.BaseSparseNDArray):
            raise TypeError(f"batch_norm: {name} must be a dense NDArray, got storage type {value.stype!r}")
    if traced:
        X, gamma, beta, moving_mean, moving_vari = (
            _Described(v, "batch_norm") for v in (X, gamma, beta, moving_mean, moving_vari))
        arrays = {"X": X, "gamma": gamma, "beta": beta,
                  "moving_mean": moving_mean, "moving_vari": moving_vari}
    if not isinstance(is_training, (bool,)) and not (
            isinstance(is_training, numbers.Integral) and is_training in (0, 1)):
        raise TypeError(f"batch_norm: is_training must be a bool, got {is_training!r}")
    if impl not in BATCH_NORM_IMPLS:
        raise ValueError(f"batch_norm: impl must be one of {BATCH_NORM_IMPLS}, got {impl!r}")
    if X.ndim < 2:
        raise ValueError(f"batch_norm: X must have rank >= 2 (batch and channel axes), "
                         f"got shape {X.shape}")
    if not isinstance(axis, numbers.Integral) or not -X.ndim <= axis < X.ndim:
        raise ValueError(f"batch_norm: axis must be an integer in [{-X.ndim}, {X.ndim - 1}] "
                         f"for X of shape {X.shape}, got {axis!r}")
    ax = int(axis) % X.ndim
    x_dtype = _dtype_name(X.dtype)
    if x_dtype not in _STAT_DTYPE:
        raise TypeError(f"batch_norm: X has dtype {x_dtype}, expected float16, float32 or float64")
    stat_dtype = _STAT_DTYPE[x_dtype]
    C = X.shape[ax]
    for name in ("gamma", "beta", "moving_mean", "moving_vari"):
        value = arrays[name]
        if value.shape != (C,):
            raise ValueError(f"batch_norm: {name} has shape {value.shape}, expected ({C},) "
                             f"= channels of X on axis {ax} (X has shape {X.shape})")
        if _dtype_name(value.dtype) != stat_dtype:
            raise TypeError(f"batch_norm: {name} has dtype {_dtype_name(value.dtype)}, expected "
                            f"{stat_dtype} for X of dtype {x_dtype}")
    for name, value in arrays.items():
        if value.context is not None and value.context != X.context:
            raise ValueError(f"batch_norm: {name} is on {value.context} but X is on {X.context}; "
                             f"move every array to one context (e.g. .as_in_context({X.context}))")
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real) or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"batch_norm: momentum must be a number in [0, 1] (weight of the old "
                         f"moving value), got {momentum!r}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not eps > 0:
        raise ValueError(f"batch_norm: eps must be a number > 0, got {eps!r}")
    if is_training and X.size // C < 2:
        raise ValueError(
            f"batch_norm: a training batch needs at least 2 values per channel to have a "
            f"variance; X of shape {X.shape} has 1 per channel. Drop this batch, use a larger "
            f"one, or call with is_training=False (moving statistics were not updated)")
    return ax


def _check_finite(**arrays):
    for name, value in arrays.items():
        with autograd.pause():
            finite = nd.contrib.isfinite(value.astype("float32"))
            bad = value.size - int(finite.sum().asscalar())
        if bad:
            raise ValueError(f"batch_norm: {name} holds {bad} NaN or infinite value(s) "
                             f"(shape {value.shape}); check the input pipeline and the learning rate")


def _three_d_shape(shape, ax):
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


def _per_channel_sum(X3, ones_pre, ones_post):
    """Sum of a (pre, C, post) array over pre and post -> shape (1, C)."""
    pre, C, post = X3.shape
    if post > 1:
        rows = nd.dot(X3.reshape((pre * C, post)), ones_post)  # (pre*C, 1)
        return nd.dot(ones_pre, rows.reshape((pre, C)))        # (1, C)
    return nd.dot(ones_pre, X3.reshape((pre, C)))


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
        pre, C, post = X3.shape
        m = pre * post
        ctx, dtype = X3.context, X3.dtype
        ones_pre = nd.ones((1, pre), ctx=ctx, dtype=dtype)
        ones_post = nd.ones((post, 1), ctx=ctx, dtype=dtype)
        mean = _per_channel_sum(X3, ones_pre, ones_post) / m          # (1, C)
        xc = nd.broadcast_sub(X3, mean.reshape((1, C, 1)))
        vari = _per_channel_sum(nd.square(xc), ones_pre, ones_post) / m
        invstd = nd.rsqrt(vari + self.eps)
        scale = gamma.reshape((1, C)) * invstd
        Y3 = nd.broadcast_add(nd.broadcast_mul(xc, scale.reshape((1, C, 1))),
                              beta.reshape((1, C, 1)))
        self.save_for_backward(xc, invstd, scale, ones_pre, ones_post)
        self.batch_stats = (mean.reshape((C,)), vari.reshape((C,)))
        return Y3

    def backward(self, dY3):
        xc, invstd, scale, ones_pre, ones_post = self.saved_tensors
        pre, C, post = xc.shape
        m = pre * post
        need_dX, need_dgamma, need_dbeta = self.needs_input_grad
        sum_dy = _per_channel_sum(dY3, ones_pre, ones_post)           # dbeta, (1, C)
        sum_dy_xc = _per_channel_sum(dY3 * xc, ones_pre, ones_post)   # (1, C)
        dX3 = None
        if need_dX:  # e.g. not for BN on the input of a net, or on frozen features
            k_xc = -(scale * nd.square(invstd) * sum_dy_xc / m).reshape((1, C, 1))
            k_0 = -(scale * sum_dy / m).reshape((1, C, 1))
            dX3 = nd.broadcast_add(
                nd.broadcast_add(nd.broadcast_mul(dY3, scale.reshape((1, C, 1))),
                                 nd.broadcast_mul(xc, k_xc)), k_0)
        dgamma = (invstd * sum_dy_xc).reshape((C,)) if need_dgamma else None
        dbeta = sum_dy.reshape((C,)) if need_dbeta else None
        return dX3, dgamma, dbeta


def _batch_norm_train_scratch(X, gamma, beta, eps, ax):
    op = _ScratchBatchNorm(eps)
    Y3 = op(X.reshape(_three_d_shape(X.shape, ax)), gamma, beta)
    mean, vari = op.batch_stats
    op.batch_stats = None
    return Y3.reshape(X.shape), mean, vari


def _batch_norm_train_fused(X, gamma, beta, eps, ax):
    """MXNet's fused kernel for the arithmetic; returns (Y, batch mean, biased var)."""
    C = X.shape[ax]
    # Scratch aux states: the kernel updates its aux arrays itself (on the CPU
    # during backward, with cuDNN in forward and unbiased); giving it throwaway
    # arrays keeps the user's moving statistics under mxbn's single rule.
    scratch_mean = nd.zeros((C,), ctx=X.context, dtype=gamma.dtype)
    scratch_vari = nd.ones((C,), ctx=X.context, dtype=gamma.dtype)
    # The kernel picks batch vs. moving statistics from autograd's global
    # train flag; pin it so the explicit is_training argument is what counts.
    with autograd.train_mode():
        Y, mean, invstd = nd.BatchNorm(
            X, gamma, beta, scratch_mean, scratch_vari, eps=eps, momentum=0.0,
            fix_gamma=False, use_global_stats=False, output_mean_var=True, axis=ax)
    with autograd.pause():
        # The kernel reports 1/sqrt(var + eps); invert in float64 so the
        # biased variance keeps float32's relative precision of var + eps.
        vari = (1.0 / nd.square(invstd.astype("float64")) - eps).astype(gamma.dtype)
    return Y, mean, vari


def _batch_norm_inference(X, gamma, beta, moving_mean, moving_vari, eps, ax):
    """Y = X * scale + shift with per-channel scale = gamma/sqrt(vari+eps), shift = beta - mean*scale.

    Composed of ordinary ops so that autograd still differentiates w.r.t. X,
    gamma and beta in inference mode; the moving statistics are only read.
    """
    F = _ops(X)
    shape = _shape(X, "batch_norm")
    pre, C, post = _three_d_shape(shape, ax)
    scale = gamma * F.rsqrt(moving_vari + eps)
    shift = beta - moving_mean * scale
    X3 = X.reshape((pre, C, post))
    Y3 = F.broadcast_add(F.broadcast_mul(X3, scale.reshape((1, C, 1))), shift.reshape((1, C, 1)))
    return Y3.reshape(shape)


def _momentum_weights(momentum):
    """(weight of the old moving value, weight of the batch statistic)."""
    # MXNet parses scalar arguments from text and rejects double subnormals
    # (momentum=1e-313 raised "Out of range value"); they are 0 to any precision.
    keep = float(momentum) if momentum >= np.finfo(np.float64).tiny else 0.0
    return keep, 1.0 - keep


def _batch_norm_traced(X, gamma, beta, is_training, moving_mean, moving_vari, momentum, eps, axis, impl,
                       check_finite):
    """batch_norm inside mxbn.jit: graph nodes, and the new moving statistics handed to the trace.

    Same arithmetic as the imperative paths: "fused" is MXNet's BatchNorm
    kernel on scratch aux arrays with the variance recovered in float64,
    "scratch" the two-pass statistics from primitives (differentiated by
    MXNet's autograd instead of the hand-written backward, which cannot live
    in a graph).
    """
    trace = tracing.current("batch_norm")
    ax = _check_batch_norm_args(X, gamma, beta, is_training, moving_mean, moving_vari, momentum, eps, axis, impl)
    if check_finite:
        raise tracing.TracingError("batch_norm: check_finite=True reads the values, which a traced graph "
                                   "cannot; check outside mxbn.jit (or after the call)")
    in_dtype = _dtype_of(X, "batch_norm")
    stat_dtype = _STAT_DTYPE[in_dtype]
    if in_dtype != stat_dtype:
        X = sym.cast(X, dtype=stat_dtype)
    mean_now = trace.current_value(moving_mean, "batch_norm", "moving_mean")
    vari_now = trace.current_value(moving_vari, "batch_norm", "moving_vari")
    if not is_training:
        Y = _batch_norm_inference(X, gamma, beta, mean_now, vari_now, eps, ax)
    else:
        train = _batch_norm_train_fused_traced if impl == "fused" else _batch_norm_train_scratch_traced
        Y, mean, vari = train(trace, X, gamma, beta, eps, ax, stat_dtype)
        keep, take = _momentum_weights(momentum)
        trace.set_state(moving_mean, sym.BlockGrad(keep * mean_now + take * sym.BlockGrad(mean)),
                        "batch_norm", "moving_mean")
        trace.set_state(moving_vari, sym.BlockGrad(keep * vari_now + take * sym.BlockGrad(vari)),
                        "batch_norm", "moving_vari")
    return Y if in_dtype == stat_dtype else sym.cast(Y, dtype=in_dtype)


def _batch_norm_train_fused_traced(trace, X, gamma, beta, eps, ax, stat_dtype):
    C = _shape(X, "batch_norm")[ax]
    scratch_mean = trace.scratch_var("bn_mean", (C,), stat_dtype, 0.0)
    scratch_vari = trace.scratch_var("bn_vari", (C,), stat_dtype, 1.0)
    trace.needs_train_mode = True  # the kernel takes batch statistics only under autograd's train flag
    out = sym.BatchNorm(X, gamma, beta, scratch_mean, scratch_vari, eps=eps, momentum=0.0, fix_gamma=False,
                        use_global_stats=False, output_mean_var=True, axis=ax)
    # 1/invstd^2 - eps in float64, as the imperative path does
    vari = sym.cast(1.0 / sym.square(sym.cast(out[2], dtype="float64")) - eps, dtype=stat_dtype)
    return out[0], out[1], vari


def _batch_norm_train_scratch_traced(trace, X, gamma, beta, eps, ax, stat_dtype):
    shape = _shape(X, "batch_norm")
    pre, C, post = _three_d_shape(shape, ax)
    X3 = X.reshape((pre, C, post))
    mean = sym.mean(X3, axis=(0, 2))
    xc = sym.broadcast_sub(X3, mean.reshape((1, C, 1)))
    vari = sym.mean(sym.square(xc), axis=(0, 2))           # two passes, biased
    scale = gamma * sym.rsqrt(vari + eps)
    Y3 = sym.broadcast_add(sym.broadcast_mul(xc, scale.reshape((1, C, 1))), beta.reshape((1, C, 1)))
    return Y3.reshape(shape), mean, vari


def _update_moving_stats(moving_mean, moving_vari, mean, vari, momentum):
    """moving = momentum*moving + (1-momentum)*batch, in place, outside the graph."""
    keep, take = _momentum_weights(momentum)
    with autograd.pause():
        moving_mean[:] = keep * moving_mean + take * mean.detach()
        moving_vari[:] = keep * moving_vari + take * vari.detach()


# --------------------------------------------------------------------------- #
# thin layers
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
    return _shape(X, op)


def _check_rank(X, rank, op, layout):
    shape = _check_array(X, op)
    if len(shape) != rank:
        raise ValueError(f"{op}: X must have rank {rank} {layout}, got shape {shape}")
    return shape


@_accepts_every_array_kind
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
        raise ValueError(f"conv2d: bias has shape {_shape(bias, 'conv2d')}, expected ({w_shape[0]},)")
    kwargs = dict(kernel=w_shape[2:], num_filter=w_shape[0],
                  stride=_pair(stride, "stride"), pad=_pair(pad, "pad"))
    F = _ops(X)
    if bias is None:
        return F.Convolution(X, weight, no_bias=True, **kwargs)
    return F.Convolution(X, weight, bias, **kwargs)


def _pool(X, kernel, stride, pool_type, op):
    _check_rank(X, 4, op, "(N, C, H, W)")
    kernel = _pair(kernel, "kernel")
    stride = kernel if stride is None else _pair(stride, "stride")
    return _ops(X).Pooling(X, kernel=kernel, stride=stride, pool_type=pool_type)


@_accepts_every_array_kind
def max_pool2d(X, kernel=2, stride=None):
    """Max pooling over (H, W) of an NCHW array; ``stride`` defaults to ``kernel``."""
    return _pool(X, kernel, stride, "max", "max_pool2d")


@_accepts_every_array_kind
def avg_pool2d(X, kernel=2, stride=None):
    """Average pooling over (H, W) of an NCHW array; ``stride`` defaults to ``kernel``."""
    return _pool(X, kernel, stride, "avg", "avg_pool2d")


@_accepts_every_array_kind
def flatten(X):
    """(N, d1, d2, ...) -> (N, d1*d2*...)."""
    if not isinstance(X, (nd.NDArray, sym.Symbol)) or len(_shape(X, "flatten")) < 1:
        raise ValueError(f"flatten: X must be an NDArray with a batch axis, got {X!r}")
    return X.reshape((_shape(X, "flatten")[0], -1))


@_accepts_every_array_kind
def dense(X, weight, bias=None):
    """Affine layer ``Y = X W^T + b`` (MXNet/PyTorch weight layout).

    Parameters
    ----------
    X : NDArray, shape (N, d_in) or (N, ...) (flattened to (N, d_in))
    weight : NDArray, shape (d_out, d_in)
    bias : NDArray of shape (d_out,) or None
    """
    if not isinstance(X, (nd.NDArray, sym.Symbol)) or len(_shape(X, "dense")) < 2:
        raise ValueError(f"dense: X must be an NDArray of rank >= 2, got {getattr(X, 'shape', X)!r}")
    shape = _shape(X, "dense")
    d_in = int(np.prod(shape[1:]))
    w_shape = _check_array(weight, "dense", "weight")
    if len(w_shape) != 2 or w_shape[1] != d_in:
        raise ValueError(f"dense: weight has shape {w_shape}, expected (d_out, {d_in}) "
                         f"for X of shape {shape}")
    if bias is not None and _check_array(bias, "dense", "bias") != (w_shape[0],):
        raise ValueError(f"dense: bias has shape {_shape(bias, 'dense')}, expected ({w_shape[0]},)")
    F = _ops(X)
    if bias is None:
        return F.FullyConnected(X, weight, num_hidden=w_shape[0], no_bias=True, flatten=True)
    return F.FullyConnected(X, weight, bias, num_hidden=w_shape[0], flatten=True)


@_accepts_every_array_kind
def relu(X):
    """max(X, 0)."""
    _check_array(X, "relu")
    return _ops(X).relu(X)


@_accepts_every_array_kind
def sigmoid(X):
    """1 / (1 + exp(-X))."""
    _check_array(X, "sigmoid")
    return _ops(X).sigmoid(X)


@_accepts_every_array_kind
def tanh(X):
    """Hyperbolic tangent."""
    _check_array(X, "tanh")
    return _ops(X).tanh(X)


@_accepts_every_array_kind
def dropout(X, p, is_training):
    """Inverted dropout: in training, zero each value with probability ``p`` and
    scale the rest by ``1/(1-p)``; in inference, return ``X`` unchanged.

    Randomness comes from MXNet's generator (seed it with ``mx.random.seed`` or
    :func:`mxbn.seeding.seed_everything`).
    """
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be a number in [0, 1), got {p!r}")
    _check_array(X, "dropout")
    if not is_training or p == 0.0:
        return X
    # mode="always" makes the kernel obey is_training instead of autograd's flag.
    return _ops(X).Dropout(X, p=float(p), mode="always")


@_accepts_every_array_kind
def softmax(logits):
    """Class probabilities of (N, K) logits: softmax over axis 1."""
    if len(_check_array(logits, "softmax", "logits")) != 2:
        raise ValueError(f"softmax: logits must have shape (N, K), got {_shape(logits, 'softmax')}")
    return _ops(logits).softmax(logits, axis=1)


def top_class(probs):
    """(index of the largest entry of each row, that entry) of an (N, K) array: two (N,) arrays."""
    if isinstance(probs, mx.numpy.ndarray):
        index, value = top_class(probs.as_nd_ndarray())
        return index.as_np_ndarray(), value.as_np_ndarray()
    if len(_check_array(probs, "top_class", "probs")) != 2:
        raise ValueError(f"top_class: probs must have shape (N, K), got {_shape(probs, 'top_class')}")
    F = _ops(probs)
    return F.argmax(probs, axis=1), F.max(probs, axis=1)


@_accepts_every_array_kind
def percentiles(X, qs, axis=None):
    """Nearest-rank percentiles ``qs`` (numbers in [0, 100]) of the values of X.

    The value of rank ceil(q/100 * n) (1-based, at least 1) of the n sorted
    values; computed on the device (one sort).  With ``axis=None`` over all
    values, a (len(qs),) array; with an axis, along that axis, which then has
    length len(qs) in the result (e.g. per unit of an (N, units) batch: (len(qs), units)).
    """
    shape = _check_array(X, "percentiles")
    if not qs or any(isinstance(q, bool) or not isinstance(q, numbers.Real) or not 0 <= q <= 100 for q in qs):
        raise ValueError(f"percentiles: qs must be numbers in [0, 100], got {qs!r}")
    if axis is None:
        X, axis, n = X.reshape((int(np.prod(shape)),)), 0, int(np.prod(shape))
    else:
        if isinstance(axis, bool) or not isinstance(axis, numbers.Integral) or not -len(shape) <= axis < len(shape):
            raise ValueError(f"percentiles: axis must be None or an int in [-{len(shape)}, {len(shape)}) for "
                             f"shape {shape}, got {axis!r}")
        axis = int(axis) % len(shape)
        n = shape[axis]
    if n == 0:
        raise ValueError(f"percentiles: no values to rank (shape {shape})")
    ranks = [max(1, int(np.ceil(q / 100.0 * n))) - 1 for q in qs]
    F = _ops(X)
    ordered = F.sort(X, axis=axis)
    return F.concat(*[F.slice_axis(ordered, axis=axis, begin=r, end=r + 1) for r in ranks], dim=axis)


@_accepts_every_array_kind
def softmax_cross_entropy(logits, labels):
    """Mean over the batch of ``-log softmax(logits)[label]``.

    Parameters
    ----------
    logits : NDArray, shape (N, K)
    labels : NDArray, shape (N,), integer class indices in [0, K) (any dtype)

    Uses ``log_softmax`` so large logits do not overflow.
    """
    _check_logits_labels(logits, labels, "softmax_cross_entropy")
    F = _ops(logits)
    return -F.mean(F.pick(F.log_softmax(logits, axis=1), labels, axis=1))


@_accepts_every_array_kind
def correct_count(logits, labels):
    """Number of rows whose arg-max equals the label, as a 1-element NDArray.

    Stays on the device: sum it over batches and read it once per epoch.
    """
    _check_logits_labels(logits, labels, "correct_count")
    F = _ops(logits)
    hits = F.broadcast_equal(F.argmax(logits, axis=1), F.cast(labels, dtype=_dtype_of(logits, "correct_count")))
    return F.sum(hits)


@_accepts_every_array_kind
def accuracy(logits, labels):
    """Fraction of rows whose arg-max equals the label, as a 1-element NDArray."""
    return correct_count(logits, labels) / _shape(logits, "accuracy")[0]


def _check_logits_labels(logits, labels, op):
    if not isinstance(logits, (nd.NDArray, sym.Symbol)) or len(_shape(logits, op)) != 2:
        raise ValueError(f"{op}: logits must be an NDArray of shape (N, K), got "
                         f"{getattr(logits, 'shape', type(logits).__name__)}")
    N = _shape(logits, op)[0]
    if not isinstance(labels, (nd.NDArray, sym.Symbol)) or _shape(labels, op) != (N,):
        raise ValueError(f"{op}: labels must be an NDArray of shape ({N},), got "
                         f"{getattr(labels, 'shape', type(labels).__name__)}")
