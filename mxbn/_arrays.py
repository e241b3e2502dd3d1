"""Every kind of array an mxbn op takes: legacy NDArray, ``mx.np.ndarray``, and Symbol inside mxbn.jit.

Package-internal: the ops of :mod:`mxbn.functional`, :mod:`mxbn.batch_norm` and
:mod:`mxbn.parallel` ask here which namespace computes on an argument and what
its shape and dtype are, so that one definition of each op serves imperative
calls and traced graphs alike.
"""
import functools

import numpy as np
import mxnet as mx
from mxnet import nd, sym

from . import tracing

__all__ = ["accepts_every_array_kind", "constant", "ops_for", "shape_of", "dtype_of", "dtype_name", "is_np"]


def is_np(value):
    return isinstance(value, mx.numpy.ndarray)


def accepts_every_array_kind(op):
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
        if not any(is_np(v) for v in values):
            return op(*args, **kwargs)
        args = [a.as_nd_ndarray() if is_np(a) else a for a in args]
        kwargs = {k: v.as_nd_ndarray() if is_np(v) else v for k, v in kwargs.items()}
        result = op(*args, **kwargs)
        return result.as_np_ndarray() if isinstance(result, nd.NDArray) else result
    return wrapper


def ops_for(X):
    """The operator namespace for X: ``mx.sym`` while tracing, ``mx.nd`` otherwise."""
    return sym if isinstance(X, sym.Symbol) else nd


def constant(X):
    """X with its gradient blocked: a value autograd (or the traced graph) treats as a constant."""
    return sym.BlockGrad(X) if isinstance(X, sym.Symbol) else X.detach()


def shape_of(X, op):
    """Shape of an NDArray, or of a Symbol traced by mxbn.jit (which knows its inputs' shapes)."""
    if isinstance(X, sym.Symbol):
        return tracing.shape_of(X, op)
    return X.shape


@functools.lru_cache(maxsize=None)
def _dtype_name(dtype):
    return np.dtype(dtype).name


def dtype_name(dtype):
    """"float32" for np.float32, np.dtype("float32") or "float32" (cached: numpy's lookup costs ~8 us, and
    batch_norm asks ~10 times a call)."""
    try:
        return _dtype_name(dtype)
    except TypeError:   # an unhashable description
        return np.dtype(dtype).name


def dtype_of(X, op):
    if isinstance(X, sym.Symbol):
        return tracing.dtype_of(X, op)
    return dtype_name(X.dtype)
