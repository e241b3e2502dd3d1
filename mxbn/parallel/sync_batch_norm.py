"""Batch normalization whose statistics span several devices (synchronized BN).

With data parallelism each device holds a slice of the batch.  Plain BN
normalizes each slice with its own statistics; ``sync_batch_norm`` normalizes
every slice with the mean and variance of the whole batch, so N devices with
B/N samples each compute what one device computes with B samples: the same
outputs, gradients and moving statistics (up to float rounding).

How: each device reduces its slice to per-channel moments (count, mean, sum of
squared deviations M2), only these C-vectors cross devices, and the global
moments are combined on the first device with Chan et al.'s parallel formula

    mean = sum_d n_d mean_d / N,   M2 = sum_d (M2_d + n_d (mean_d - mean)^2),   var = M2 / N

which keeps the two-pass accuracy of the single-device op (no E[x^2] - E[x]^2
cancellation).  The global mean and variance are copied back and every device
normalizes its slice.  The two per-device steps are :class:`mxbn.custom_function.Function`s
with analytic backwards; the exchange between them is made of ordinary
recorded ops and MXNet's differentiable cross-device copy, so the backward
pass exchanges the per-channel gradient sums the same way, in reverse.  Every
op runs on one device: nothing here assumes the devices share memory.
"""

from mxnet import nd

from .._arrays import dtype_name
from ..batch_norm import (STAT_DTYPE, batch_norm, check_batch_norm_args, check_distinct_state, normalize_per_channel,
                          three_d_shape, update_moving_stats)
from ..custom_function import Function

__all__ = ["sync_batch_norm"]


def _channel_sum(X3):
    """(pre, C, post) -> (C,): sum over pre and post.

    Not the GEMV trick of the single-device scratch path: with several CPU
    contexts MXNet runs one engine thread per context, and two ``nd.dot`` calls
    at once hang in the OpenMP-threaded OpenBLAS inside MXNet's wheel (seen
    with MXNet 1.9.1: both threads stuck in ``exec_blas``).
    """
    return nd.sum(X3, axis=(0, 2))


class _LocalMoments(Function):
    """(pre, C, post) slice -> per-channel (mean, M2) over pre and post.

    backward: d mean/dX = 1/n,  d M2/dX = 2 (X - mean)  (the mean's own
    dependence on X cancels because sum(X - mean) = 0).
    """

    def forward(self, X3):
        pre, C, post = X3.shape
        mean = _channel_sum(X3) / (pre * post)
        xc = nd.broadcast_sub(X3, mean.reshape((1, C, 1)))
        self.save_for_backward(xc)
        return mean, _channel_sum(nd.square(xc))

    def backward(self, d_mean, d_m2):
        (xc,) = self.saved_tensors
        pre, C, post = xc.shape
        return nd.broadcast_add(nd.broadcast_mul(xc, (2.0 * d_m2).reshape((1, C, 1))),
                                (d_mean / (pre * post)).reshape((1, C, 1)))


class _NormalizeWithStats(Function):
    """Y = (X - mean) * gamma / sqrt(var + eps) + beta with mean and var as inputs.

    backward, with invstd = 1/sqrt(var + eps), scale = gamma * invstd, xc = X - mean:
        dX = dY * scale,  dgamma = invstd * sum(dY xc),  dbeta = sum(dY),
        dmean = -scale * sum(dY),  dvar = -scale * invstd^2 * sum(dY xc) / 2
    (dmean and dvar go back through the exchange to every device's moments).
    """

    def __init__(self, eps):
        super().__init__()
        self.eps = eps

    def forward(self, X3, mean, vari, gamma, beta):
        _, C, _ = X3.shape
        invstd = nd.rsqrt(vari + self.eps)
        scale = gamma * invstd
        xc = nd.broadcast_sub(X3, mean.reshape((1, C, 1)))
        self.save_for_backward(xc, invstd, scale)
        return normalize_per_channel(xc, scale, beta)

    def backward(self, dY3):
        xc, invstd, scale = self.saved_tensors
        _, C, _ = xc.shape
        need_dX, need_dmean, need_dvari, need_dgamma, _ = self.needs_input_grad
        sum_dy = _channel_sum(dY3)
        sum_dy_xc = _channel_sum(dY3 * xc)
        dX3 = nd.broadcast_mul(dY3, scale.reshape((1, C, 1))) if need_dX else None
        d_mean = -scale * sum_dy if need_dmean else None
        d_vari = -0.5 * scale * nd.square(invstd) * sum_dy_xc if need_dvari else None
        dgamma = invstd * sum_dy_xc if need_dgamma else None
        return dX3, d_mean, d_vari, dgamma, sum_dy


def _global_moments(local, counts, home):
    """Per-device (mean, M2) and counts -> global (mean, biased var) on ``home`` (recorded ops)."""
    total = float(sum(counts))
    means = [m.as_in_context(home) for m, _ in local]
    m2s = [s.as_in_context(home) for _, s in local]
    mean = nd.add_n(*[(n / total) * m for n, m in zip(counts, means)])
    m2 = nd.add_n(*[s + n * nd.square(m - mean) for n, m, s in zip(counts, means, m2s)])
    return mean, m2 / total


def _check_across(Xs, gammas, betas, moving_means, moving_varis, is_training, momentum, eps, axis):
    lists = dict(gammas=gammas, betas=betas, moving_means=moving_means, moving_varis=moving_varis)
    if momentum is None:
        raise ValueError("sync_batch_norm: momentum must be a number in [0, 1]; the cumulative average "
                         "(momentum=None) is batch_norm's alone")
    if not isinstance(Xs, (list, tuple)) or not Xs:
        raise TypeError(f"sync_batch_norm: Xs must be a non-empty list of NDArrays (one per device), "
                        f"got {type(Xs).__name__}")
    for name, values in lists.items():
        if not isinstance(values, (list, tuple)) or len(values) != len(Xs):
            raise ValueError(f"sync_batch_norm: {name} must be a list with one array per device "
                             f"({len(Xs)}), got {type(values).__name__} of length "
                             f"{len(values) if hasattr(values, '__len__') else '?'}")
    axes = set()
    for d, X in enumerate(Xs):
        # per device: types, shapes, dtypes, one context; the "2 values per channel"
        # rule applies to the whole batch, checked below
        axes.add(check_batch_norm_args(X, gammas[d], betas[d], False, moving_means[d], moving_varis[d],
                                        momentum, eps, axis, "fused"))
    shapes = {X.shape[1:] for X in Xs}
    if len(shapes) > 1:
        raise ValueError(f"sync_batch_norm: slices must differ only in the batch axis, got shapes "
                         f"{[X.shape for X in Xs]}")
    contexts = [X.context for X in Xs]
    if len(set(contexts)) != len(contexts):
        raise ValueError(f"sync_batch_norm: two slices are on the same context ({contexts}); pass one per device")
    ax = axes.pop()
    if ax == 0:
        raise ValueError("sync_batch_norm: axis 0 is the axis the batch is split on, so it cannot be the "
                         f"channel axis here; got axis={axis!r} (use batch_norm on one device for axis 0)")
    C = Xs[0].shape[ax]
    if is_training and sum(X.size for X in Xs) // C < 2:
        raise ValueError("sync_batch_norm: a training batch needs at least 2 values per channel in all")
    for moving_mean, moving_vari in zip(moving_means, moving_varis):
        check_distinct_state(moving_mean, moving_vari)
    return ax


def sync_batch_norm(Xs, gammas, betas, is_training, moving_means, moving_varis, momentum=0.9, eps=1e-5,
                    axis=1):
    """Batch normalization of a batch split across devices, with statistics of the whole batch.

    Same conventions as :func:`mxbn.batch_norm` (MXNet's momentum direction,
    biased moving variance, moving statistics updated in place in the forward
    pass, outside autograd), with a list where ``batch_norm`` takes one array:

    Parameters
    ----------
    Xs : list of NDArray, one slice of the batch per device (distinct contexts),
        equal shapes except on axis 0
    gammas, betas : list of NDArray (C,), each device's copy of the parameters
    is_training : bool -- False: every slice uses its device's moving statistics
    moving_means, moving_varis : list of NDArray (C,) -- *state*, each updated
        with the global batch statistics (so the copies stay equal)
    momentum, eps, axis : as ``batch_norm``

    Returns the list of normalized slices.  Each device's ``gamma``/``beta``
    gradient is its slice's share; summing them across devices (what the
    kvstore does) gives the gradient of the whole batch.
    """
    ax = _check_across(Xs, gammas, betas, moving_means, moving_varis, is_training, momentum, eps, axis)
    if not is_training:
        return [batch_norm(X, g, b, False, mm, mv, momentum=momentum, eps=eps, axis=ax)
                for X, g, b, mm, mv in zip(Xs, gammas, betas, moving_means, moving_varis)]
    stat_dtype = STAT_DTYPE[dtype_name(Xs[0].dtype)]
    in_dtype = Xs[0].dtype
    views = []
    for X in Xs:
        X3 = X.reshape(three_d_shape(X.shape, ax))
        views.append(X3 if X3.dtype == stat_dtype else X3.astype(stat_dtype))
    local = [_LocalMoments()(X3) for X3 in views]
    counts = [X3.shape[0] * X3.shape[2] for X3 in views]
    mean, vari = _global_moments(local, counts, home=Xs[0].context)
    outputs = []
    for X, X3, g, b, mm, mv in zip(Xs, views, gammas, betas, moving_means, moving_varis):
        mean_d, vari_d = mean.as_in_context(X.context), vari.as_in_context(X.context)
        Y3 = _NormalizeWithStats(float(eps))(X3, mean_d, vari_d, g, b)
        update_moving_stats(mm, mv, mean_d, vari_d, momentum)
        Y = Y3.reshape(X.shape)
        outputs.append(Y if Y.dtype == in_dtype else Y.astype(in_dtype))
    return outputs
