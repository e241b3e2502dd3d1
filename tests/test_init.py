import math

import numpy as np
import pytest

import mxbn  # noqa: F401  (prepares numpy and threads before mxnet loads)
import mxnet as mx
from mxbn import init


@pytest.mark.parametrize("fn,shape,std", [
    (init.xavier, (256, 64), math.sqrt(1 / 64)),
    (init.he, (200, 20, 5, 5), math.sqrt(2 / 500)),
    (lambda s, ctx, rng: init.normal(s, 0.01, ctx, rng), (300, 100), 0.01),
])
def test_initializer_std_follows_fan_in(fn, shape, std):
    w = fn(shape, mx.cpu(), 0).asnumpy()
    assert w.shape == shape and w.dtype == np.float32
    # >= 16,000 draws: the sample std is within 2 % of the target with overwhelming probability
    assert abs(w.std() / std - 1) < 0.02
    assert abs(w.mean()) < 4 * std / math.sqrt(w.size)


def test_same_seed_same_weights_and_generators_advance():
    a = init.he((10, 5), mx.cpu(), 3).asnumpy()
    b = init.he((10, 5), mx.cpu(), 3).asnumpy()
    np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(3)
    c = init.he((10, 5), mx.cpu(), rng).asnumpy()
    d = init.he((10, 5), mx.cpu(), rng).asnumpy()
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(c, d)


def test_batch_norm_params_are_identity_and_standard_statistics():
    params, state = init.batch_norm_params(7, mx.cpu())
    np.testing.assert_array_equal(params["gamma"].asnumpy(), np.ones(7))
    np.testing.assert_array_equal(params["beta"].asnumpy(), np.zeros(7))
    np.testing.assert_array_equal(state["moving_mean"].asnumpy(), np.zeros(7))
    np.testing.assert_array_equal(state["moving_vari"].asnumpy(), np.ones(7))


def test_weight_by_name_and_errors():
    np.testing.assert_array_equal(init.weight("xavier", (4, 3), mx.cpu(), 1).asnumpy(),
                                  init.xavier((4, 3), mx.cpu(), 1).asnumpy())
    with pytest.raises(ValueError, match=r"unknown initializer 'glorot'"):
        init.weight("glorot", (4, 3), mx.cpu(), 1)
    with pytest.raises(TypeError, match=r"non-negative int seed"):
        init.he((4, 3), mx.cpu(), -1)
    with pytest.raises(ValueError, match=r"weight shape \(out, in, \.\.\.\)"):
        init.he((4,), mx.cpu(), 0)
    with pytest.raises(ValueError, match=r"C must be a positive int"):
        init.batch_norm_params(0, mx.cpu())
