"""layer_norm, group_norm, instance_norm: float64 NumPy forward, central finite differences (float64), MXNet's
operators where the definitions agree, every array kind, under mxbn.jit, and the argument checks."""
import numpy as np
import pytest

import mxnet as mx
from mxnet import autograd, nd

import mxbn
from mxbn.normalization import group_norm, instance_norm, layer_norm


def ref_layer_norm(x, g, b, axes, eps):
    axes = tuple(a % x.ndim for a in axes)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    view = [x.shape[d] if d in axes else 1 for d in range(x.ndim)]
    return (x - mean) / np.sqrt(var + eps) * g.reshape(view) + b.reshape(view)


def ref_group_norm(x, g, b, groups, eps):
    n, c = x.shape[:2]
    xg = x.reshape(n, groups, -1)
    mean = xg.mean(axis=2, keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=2, keepdims=True)
    y = ((xg - mean) / np.sqrt(var + eps)).reshape(x.shape)
    view = (1, c) + (1,) * (x.ndim - 2)
    return y * g.reshape(view) + b.reshape(view)


CASES = {
    "layer last": (lambda X, g, b: layer_norm(X, g, b), (4, 6), (6,),
                   lambda x, g, b: ref_layer_norm(x, g, b, (-1,), 1e-5)),
    "layer (C,H,W)": (lambda X, g, b: layer_norm(X, g, b, axis=(1, 2, 3)), (3, 2, 3, 3), (2, 3, 3),
                      lambda x, g, b: ref_layer_norm(x, g, b, (1, 2, 3), 1e-5)),
    "group 2 of 4": (lambda X, g, b: group_norm(X, g, b, 2), (3, 4, 3, 2), (4,),
                     lambda x, g, b: ref_group_norm(x, g, b, 2, 1e-5)),
    "instance": (lambda X, g, b: instance_norm(X, g, b, eps=1e-3), (2, 3, 4, 4), (3,),
                 lambda x, g, b: ref_group_norm(x, g, b, 3, 1e-3)),
}


def _inputs(x_shape, p_shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(0.5, 2.0, x_shape).astype(dtype), rng.normal(1, 0.3, p_shape).astype(dtype),
            rng.normal(0, 0.3, p_shape).astype(dtype))


@pytest.mark.parametrize("name", list(CASES))
def test_forward_against_float64(name):
    op, xs, ps, ref = CASES[name]
    x, g, b = _inputs(xs, ps, np.float64)
    np.testing.assert_allclose(op(nd.array(x, dtype="float64"), nd.array(g, dtype="float64"),
                                  nd.array(b, dtype="float64")).asnumpy(), ref(x, g, b), rtol=1e-12, atol=1e-12)
    y32 = op(nd.array(x), nd.array(g), nd.array(b)).asnumpy()
    np.testing.assert_allclose(y32, ref(x, g, b), rtol=0, atol=2e-6 * np.abs(ref(x, g, b)).max())


@pytest.mark.parametrize("name", list(CASES))
def test_gradients_against_central_differences(name):
    op, xs, ps, _ = CASES[name]
    x, g, b = _inputs(xs, ps, np.float64, seed=1)
    w = np.random.default_rng(2).normal(size=xs)   # loss = sum(w * Y)
    arrays = [nd.array(a, dtype="float64") for a in (x, g, b)]
    for a in arrays:
        a.attach_grad()
    with autograd.record():
        loss = (op(*arrays) * nd.array(w, dtype="float64")).sum()
    loss.backward()
    h = 1e-6
    for k, a in enumerate((x, g, b)):
        numeric = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            values = [v.copy() for v in (x, g, b)]
            values[k][i] += h
            up = (op(*[nd.array(v, dtype="float64") for v in values]).asnumpy() * w).sum()
            values[k][i] -= 2 * h
            down = (op(*[nd.array(v, dtype="float64") for v in values]).asnumpy() * w).sum()
            numeric[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(arrays[k].grad.asnumpy(), numeric, rtol=1e-6, atol=1e-7, err_msg=f"input {k}")


@pytest.mark.parametrize("name", list(CASES))
def test_jit_and_numpy_arrays_give_the_same(name):
    op, xs, ps, _ = CASES[name]
    x, g, b = _inputs(xs, ps, np.float32, seed=3)
    eager = op(nd.array(x), nd.array(g), nd.array(b)).asnumpy()
    np.testing.assert_allclose(mxbn.jit(op)(nd.array(x), nd.array(g), nd.array(b)).asnumpy(), eager, rtol=1e-6,
                               atol=1e-6)
    got = op(mx.np.array(x), mx.np.array(g), mx.np.array(b))
    assert isinstance(got, mx.np.ndarray)
    np.testing.assert_array_equal(got.asnumpy(), eager)


def test_float16_input_is_normalized_in_float32():
    x, g, b = _inputs((4, 8), (8,), np.float32, seed=4)
    y = layer_norm(nd.array(x, dtype="float16"), nd.array(g), nd.array(b))
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.asnumpy(), ref_layer_norm(x.astype(np.float16).astype(np.float64), g, b, (-1,),
                                                           1e-5), rtol=0, atol=5e-3)


def test_agrees_with_mxnets_layer_norm_and_instance_norm():
    x, g, b = _inputs((3, 4, 5, 5), (5,), np.float32, seed=5)
    np.testing.assert_allclose(layer_norm(nd.array(x), nd.array(g), nd.array(b)).asnumpy(),
                               nd.LayerNorm(nd.array(x), nd.array(g), nd.array(b), axis=-1, eps=1e-5).asnumpy(),
                               rtol=1e-5, atol=1e-5)
    x, g, b = _inputs((3, 4, 5, 5), (4,), np.float32, seed=6)
    np.testing.assert_allclose(instance_norm(nd.array(x), nd.array(g), nd.array(b), eps=1e-3).asnumpy(),
                               nd.InstanceNorm(nd.array(x), nd.array(g), nd.array(b), eps=1e-3).asnumpy(),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("call,says", [
    (lambda: group_norm(nd.ones((2, 6, 3)), nd.ones(6), nd.zeros(6), 4), "divides the 6 channels of X, got 4"),
    (lambda: group_norm(nd.ones((2, 6, 3)), nd.ones(3), nd.zeros(3), 3), r"gamma has shape \(3,\), expected \(6,\)"),
    (lambda: layer_norm(nd.ones((2, 6)), nd.ones(6), nd.zeros(6), axis=2), r"axis must be .* in \[-2, 1\]"),
    (lambda: layer_norm(nd.ones((2, 6)), nd.ones(6), nd.zeros(5)), r"beta has shape \(5,\), expected \(6,\)"),
    (lambda: instance_norm(nd.ones((2, 6)), nd.ones(6), nd.zeros(6)), "rank >= 3"),
    (lambda: layer_norm(nd.ones((2, 6)), nd.ones(6), nd.zeros(6), eps=0), "eps must be a number > 0"),
])
def test_bad_arguments_name_what_was_expected(call, says):
    with pytest.raises(ValueError, match=says):
        call()


TRACED = {"group": (lambda X, g, b: group_norm(X, g, b, 2), (4,)),
          "instance": (lambda X, g, b: instance_norm(X, g, b), (4,)),
          "layer (C,H,W)": (lambda X, g, b: layer_norm(X, g, b, axis=(1, 2, 3)), (4, 4, 4))}


@pytest.mark.parametrize("name", list(TRACED))
def test_traced_norms_take_row_statistics_from_the_batch_norm_kernel(name):
    """In a graph the statistics come from MXNet's BatchNorm kernel over the rows and gamma/beta are spread by
    ones vectors: MXNet's generic mean over axes and the broadcasts' backward (its generic reduction) made
    a group-norm LeNet step 8x slower than batch norm's."""
    import json
    op, p_shape = TRACED[name]
    x, g, b = _inputs((8, 4, 4, 4), p_shape, np.float32, seed=7)
    jitted = mxbn.jit(op, layout_pass=False)
    np.testing.assert_allclose(jitted(nd.array(x), nd.array(g), nd.array(b)).asnumpy(),
                               op(nd.array(x), nd.array(g), nd.array(b)).asnumpy(), rtol=1e-6, atol=1e-6)
    (compiled,) = jitted._cache.values()
    ops = {node["op"] for node in json.loads(compiled.graph.tojson())["nodes"]}
    assert "BatchNorm" in ops and "dot" in ops
    assert not ops & {"mean", "sum", "broadcast_mul", "broadcast_sub", "broadcast_add", "broadcast_div"}, ops
