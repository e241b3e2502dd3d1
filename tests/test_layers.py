"""The thin layers against float64 NumPy references (float32 results: rtol 1e-4, atol 1e-5)."""
import numpy as np
import pytest

import mxbn
from mxbn import functional as F
import mxnet as mx
from mxnet import autograd, nd

import reference as ref

TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stride,pad,bias", [(1, 0, True), (2, 1, False), (1, 2, True)])
def test_conv2d_matches_direct_convolution(stride, pad, bias):
    rs = np.random.RandomState(0)
    x = rs.normal(size=(2, 3, 9, 8)).astype("f4")
    w = rs.normal(size=(4, 3, 3, 2)).astype("f4")
    b = rs.normal(size=4).astype("f4") if bias else None
    got = mxbn.conv2d(nd.array(x), nd.array(w), nd.array(b) if bias else None, stride=stride, pad=pad)
    np.testing.assert_allclose(got.asnumpy(), ref.conv2d(x, w, b, stride, pad), **TOL)


def test_pooling_matches_reference():
    x = np.random.RandomState(1).normal(size=(2, 3, 8, 8)).astype("f4")
    np.testing.assert_allclose(mxbn.max_pool2d(nd.array(x), 2).asnumpy(), ref.pool2d(x, 2, 2, np.max), **TOL)
    np.testing.assert_allclose(mxbn.avg_pool2d(nd.array(x), 3, 1).asnumpy(), ref.pool2d(x, 3, 1, np.mean), **TOL)


def test_dense_and_flatten():
    rs = np.random.RandomState(2)
    x = rs.normal(size=(5, 2, 3, 2)).astype("f4")
    w = rs.normal(size=(7, 12)).astype("f4")
    b = rs.normal(size=7).astype("f4")
    flat = x.reshape(5, -1).astype(np.float64)
    assert mxbn.flatten(nd.array(x)).shape == (5, 12)
    np.testing.assert_allclose(mxbn.dense(nd.array(x), nd.array(w), nd.array(b)).asnumpy(), flat @ w.T + b, **TOL)
    np.testing.assert_allclose(mxbn.dense(nd.array(x), nd.array(w)).asnumpy(), flat @ w.T, **TOL)


def test_activations():
    x = np.linspace(-5, 5, 11).astype("f4")
    np.testing.assert_allclose(mxbn.relu(nd.array(x)).asnumpy(), np.maximum(x, 0), **TOL)
    np.testing.assert_allclose(mxbn.sigmoid(nd.array(x)).asnumpy(), 1 / (1 + np.exp(-x.astype(np.float64))), **TOL)
    np.testing.assert_allclose(mxbn.tanh(nd.array(x)).asnumpy(), np.tanh(x.astype(np.float64)), **TOL)


def test_softmax_cross_entropy_value_gradient_and_stability():
    rs = np.random.RandomState(3)
    z = rs.normal(size=(6, 4)).astype("f4") * 3
    y = np.array([0, 3, 1, 2, 2, 0])
    Z = nd.array(z)
    Z.attach_grad()
    with autograd.record():
        loss = mxbn.softmax_cross_entropy(Z, nd.array(y))
    loss.backward()
    np.testing.assert_allclose(loss.asscalar(), ref.softmax_cross_entropy(z, y), **TOL)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(6), y] -= 1
    np.testing.assert_allclose(Z.grad.asnumpy(), p / 6, **TOL)  # d mean CE / dz = (softmax - onehot)/N
    big = mxbn.softmax_cross_entropy(nd.array([[1000.0, 0.0]]), nd.array([1]))
    np.testing.assert_allclose(big.asscalar(), 1000.0, rtol=1e-6)


def test_accuracy_and_correct_count():
    z = nd.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    y = nd.array([1, 1, 1, 0])
    assert mxbn.correct_count(z, y).asscalar() == 3
    assert mxbn.accuracy(z, y).asscalar() == pytest.approx(0.75)


def test_dropout_train_and_inference():
    X = nd.ones((200, 50))
    assert mxbn.dropout(X, 0.3, False) is X
    mx.random.seed(0)
    a = mxbn.dropout(X, 0.3, True).asnumpy()
    mx.random.seed(0)
    b = mxbn.dropout(X, 0.3, True).asnumpy()
    np.testing.assert_array_equal(a, b)  # seeded: reproducible
    kept = a != 0
    assert 0.65 < kept.mean() < 0.75  # 10,000 draws: the binomial std of the mean is 0.005
    np.testing.assert_allclose(a[kept], 1 / 0.7, rtol=1e-6)
    with pytest.raises(ValueError, match=r"p must be a number in \[0, 1\)"):
        mxbn.dropout(X, 1.0, True)


@pytest.mark.parametrize("call,pattern", [
    (lambda: mxbn.conv2d(nd.ones((2, 3, 5)), nd.ones((4, 3, 3, 3))), r"conv2d: X must have rank 4"),
    (lambda: mxbn.conv2d(nd.ones((2, 3, 5, 5)), nd.ones((4, 2, 3, 3))), r"expected \(C_out, 3, kh, kw\)"),
    (lambda: mxbn.dense(nd.ones((2, 6)), nd.ones((4, 5))), r"expected \(d_out, 6\)"),
    (lambda: mxbn.dense(nd.ones((2, 6)), nd.ones((4, 6)), nd.ones(3)), r"bias has shape \(3,\), expected \(4,\)"),
    (lambda: mxbn.softmax_cross_entropy(nd.ones((2, 3)), nd.ones(3)), r"labels must be an NDArray of shape \(2,\)"),
    (lambda: mxbn.max_pool2d(nd.ones((2, 3)), 2), r"max_pool2d: X must have rank 4"),
])
def test_layer_errors_name_the_problem(call, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        call()


def _nearest_rank(values, q, axis):
    """Reference: the value of rank ceil(q/100 n) (1-based, at least 1) along ``axis``, in float64."""
    ordered = np.sort(np.asarray(values, dtype=np.float64), axis=axis)
    n = ordered.shape[axis]
    return np.take(ordered, max(1, int(np.ceil(q / 100.0 * n))) - 1, axis=axis)


@pytest.mark.parametrize("shape, axis", [((7,), None), ((20, 3), None), ((20, 3), 0), ((4, 9), 1), ((4, 9), -1),
                                         ((5, 6, 2), 1)])
def test_percentiles_per_axis_are_nearest_rank(shape, axis):
    from mxbn.jit import jit
    X = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    qs = (0, 15, 50, 85, 100)
    got = F.percentiles(nd.array(X), qs, axis=axis).asnumpy()
    jitted = jit(lambda X: F.percentiles(X, qs, axis=axis))(nd.array(X)).asnumpy()
    if axis is None:
        want = np.array([_nearest_rank(X.ravel(), q, 0) for q in qs])
    else:
        want = np.stack([_nearest_rank(X, q, axis) for q in qs], axis=axis % len(shape))
    np.testing.assert_array_equal(got, want.astype(np.float32))
    np.testing.assert_array_equal(jitted, got)


def test_percentiles_refuse_a_bad_axis():
    with pytest.raises(ValueError, match=r"axis must be None or an int in \[-2, 2\)"):
        F.percentiles(nd.ones((3, 4)), (50,), axis=2)
