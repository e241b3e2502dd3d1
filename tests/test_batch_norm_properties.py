"""Property-based checks of batch_norm against the float64 reference (hypothesis).

float64 inputs, so the tolerance is rtol 1e-6 plus an absolute term scaled to
the data (atol 1e-9 * (1 + scale^2) for statistics that grow with scale^2).
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mxbn
from mxnet import nd

import reference as ref

shapes = st.sampled_from([(4, 3), (5, 2, 3), (3, 4, 2, 2), (2, 3, 2, 2, 2), (6, 1), (3, 2, 1, 1)])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes, axis_pick=st.integers(0, 10), momentum=st.floats(0, 1), eps=st.floats(1e-6, 1e-1),
       scale=st.sampled_from([1e-3, 1e-1, 1.0, 1e2, 1e4]), loc=st.floats(-1e3, 1e3),
       constant_channel=st.booleans(), impl=st.sampled_from(mxbn.BATCH_NORM_IMPLS),
       is_training=st.booleans(), seed=st.integers(0, 2**16))
def test_matches_reference(shape, axis_pick, momentum, eps, scale, loc, constant_channel, impl, is_training, seed):
    axis = 1 + axis_pick % (len(shape) - 1)
    C = shape[axis]
    rs = np.random.RandomState(seed)
    x = loc + scale * rs.normal(size=shape)
    if constant_channel:
        idx = [slice(None)] * len(shape)
        idx[axis] = 0
        x[tuple(idx)] = loc  # a channel with zero variance
    gamma, beta = rs.uniform(0.5, 2, C), rs.normal(size=C)
    mm, mv = rs.normal(size=C), rs.uniform(0.5, 2, C)
    MM, MV = nd.array(mm, dtype="float64"), nd.array(mv, dtype="float64")
    Y = mxbn.batch_norm(nd.array(x, dtype="float64"), nd.array(gamma, dtype="float64"),
                        nd.array(beta, dtype="float64"), is_training, MM, MV, momentum=momentum, eps=eps,
                        axis=axis, impl=impl)
    y, new_mm, new_mv = ref.batch_norm_forward(x, gamma, beta, mm, mv, is_training, momentum, eps, axis)
    # The output is gamma*x_hat + beta with |x_hat| <= sqrt(m): its error scales
    # with the ratio of data scale to sqrt(var + eps), bounded here by 1e-6 relative.
    np.testing.assert_allclose(Y.asnumpy(), y, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(MM.asnumpy(), new_mm, rtol=1e-6, atol=1e-9 * (1 + abs(loc)))
    np.testing.assert_allclose(MV.asnumpy(), new_mv, rtol=1e-6, atol=1e-9 * (1 + scale ** 2 + eps))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_check_finite_names_the_array(bad):
    x = np.ones((4, 3))
    x[2, 1] = bad
    with pytest.raises(ValueError, match=r"X holds 1 NaN or infinite value\(s\)"):
        mxbn.batch_norm(nd.array(x), nd.ones(3), nd.zeros(3), True, nd.zeros(3), nd.ones(3), check_finite=True)
    mm = nd.array([0.0, bad, 0.0])
    with pytest.raises(ValueError, match="moving_mean holds 1"):
        mxbn.batch_norm(nd.ones((4, 3)), nd.ones(3), nd.zeros(3), False, mm, nd.ones(3), check_finite=True)
