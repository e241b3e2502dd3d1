"""Parameter initializers.

Random numbers come from a NumPy generator, never from MXNet's global one, so
the same seed gives the same weights on every context (CPU or GPU) and no other
random draw (dropout, shuffling) shifts them.  Weights are created in float32 by
default and then copied to ``ctx``.

Fan-in convention: weights are laid out ``(out, in, *kernel)`` (MXNet/PyTorch),
so ``fan_in = prod(shape[1:])``: ``in`` for a dense layer, ``in*kh*kw`` for a
convolution.
"""
import math
import numbers

import numpy as np
from mxnet import nd

from ._checks import is_real

__all__ = ["as_rng", "fan_in", "normal", "xavier", "he", "zeros", "batch_norm_params",
           "weight", "INIT_NAMES"]


def as_rng(seed_or_rng):
    """A ``np.random.Generator`` from an int seed or an existing Generator."""
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    if isinstance(seed_or_rng, numbers.Integral) and not isinstance(seed_or_rng, bool) and seed_or_rng >= 0:
        return np.random.default_rng(int(seed_or_rng))
    raise TypeError(f"expected a non-negative int seed or a numpy.random.Generator, got {seed_or_rng!r}")


def fan_in(shape):
    """Inputs feeding one output unit: prod(shape[1:]) for an (out, in, ...) weight."""
    shape = tuple(shape)
    if len(shape) < 2 or any(n < 1 for n in shape):
        raise ValueError(f"a weight shape (out, in, ...) with positive sizes is needed, got {shape}")
    return math.prod(shape[1:])


def _from_numpy(values, ctx, dtype):
    return nd.array(values, ctx=ctx, dtype=dtype)


def normal(shape, scale, ctx, rng, dtype="float32"):
    """Gaussian N(0, scale^2) of the given shape (the tutorial's ``scale=0.01``)."""
    if not is_real(scale) or not scale >= 0:
        raise ValueError(f"normal: scale must be a number >= 0, got {scale!r}")
    return _from_numpy(as_rng(rng).normal(0.0, float(scale), size=tuple(shape)), ctx, dtype)


def xavier(shape, ctx, rng, dtype="float32"):
    """Gaussian with std sqrt(1/fan_in) (Glorot & Bengio 2010, in the fan-in form
    used by the "tricks of training" chapter); suits sigmoid and tanh."""
    return normal(shape, math.sqrt(1.0 / fan_in(shape)), ctx, rng, dtype)


def he(shape, ctx, rng, dtype="float32"):
    """Gaussian with std sqrt(2/fan_in) (He et al. 2015); suits ReLU."""
    return normal(shape, math.sqrt(2.0 / fan_in(shape)), ctx, rng, dtype)


def zeros(shape, ctx, dtype="float32"):
    """All zeros (biases)."""
    return nd.zeros(tuple(shape), ctx=ctx, dtype=dtype)


def batch_norm_params(C, ctx, dtype="float32", cumulative=False):
    """Initial batch-norm values for C channels: ``(params, state)``.

    params = {"gamma": ones, "beta": zeros} -- the identity affine map, so an
    untrained BN layer only standardises (the 2017 tutorial drew gamma at random);
    state = {"moving_mean": zeros, "moving_vari": ones} -- the statistics of a
    standardised input (the tutorial started the variance at 0, which makes the
    first inference outputs blow up by 1/sqrt(eps)).
    ``cumulative=True`` adds ``"num_batches": zeros((1,))``, the counter that
    ``batch_norm(..., momentum=None)`` needs.
    """
    if isinstance(C, bool) or not isinstance(C, numbers.Integral) or C < 1:
        raise ValueError(f"batch_norm_params: C must be a positive int, got {C!r}")
    params = {"gamma": nd.ones((C,), ctx=ctx, dtype=dtype), "beta": nd.zeros((C,), ctx=ctx, dtype=dtype)}
    state = {"moving_mean": nd.zeros((C,), ctx=ctx, dtype=dtype),
             "moving_vari": nd.ones((C,), ctx=ctx, dtype=dtype)}
    if cumulative:
        state["num_batches"] = nd.zeros((1,), ctx=ctx, dtype=dtype)
    return params, state


# Names accepted by weight(), for configs and command lines.
INIT_NAMES = ("normal", "xavier", "he")

# The tutorial's weight scale for init="normal".
DEFAULT_NORMAL_SCALE = 0.01


def weight(init, shape, ctx, rng, scale=DEFAULT_NORMAL_SCALE, dtype="float32"):
    """A weight drawn by the initializer named ``init`` ("normal" uses ``scale``)."""
    if init == "normal":
        return normal(shape, scale, ctx, rng, dtype)
    if init == "xavier":
        return xavier(shape, ctx, rng, dtype)
    if init == "he":
        return he(shape, ctx, rng, dtype)
    raise ValueError(f"unknown initializer {init!r}; expected one of {INIT_NAMES}")
