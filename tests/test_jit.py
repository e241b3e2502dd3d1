"""mxbn.jit gives the numbers of the imperative functional ops, and clear errors for what it cannot trace.

Tolerances: float32 through the same kernels in another schedule, rtol 1e-4 /
atol 1e-5 for gradients and statistics; losses to rel 1e-5.
"""
import functools

import numpy as np
import pytest

import mxnet as mx
from mxnet import autograd, gluon, nd

import mxbn
from mxbn import models
from mxbn.functional import softmax_cross_entropy

TOL = dict(rtol=1e-4, atol=1e-5)


def step(net, params, state, X, y, is_training):
    for p in params.values():
        p.attach_grad()
    with autograd.record():
        loss = softmax_cross_entropy(net(params, state, X, is_training), y)
    loss.backward()
    return float(loss.asscalar()), {k: p.grad.asnumpy() for k, p in params.items()}


def channels_last_net(params, state, X, is_training, bn_impl="fused"):
    """dense -> (N, 4, 6) -> BN over the last axis -> relu -> dense: BN on a channels-last array."""
    H = mxbn.dense(X, params["fc1_weight"], params["fc1_bias"]).reshape((X.shape[0], 4, 6))
    H = mxbn.batch_norm(H, params["bn_gamma"], params["bn_beta"], is_training, state["bn_moving_mean"],
                        state["bn_moving_vari"], axis=-1, impl=bn_impl, momentum=0.7)
    return mxbn.dense(mxbn.relu(H), params["fc2_weight"], params["fc2_bias"])


def channels_last_params(ctx, seed):
    rng = np.random.default_rng(seed)
    params = {"fc1_weight": nd.array(rng.normal(0, 0.1, (24, 784)), ctx=ctx), "fc1_bias": nd.zeros(24, ctx=ctx),
              "bn_gamma": nd.ones(6, ctx=ctx), "bn_beta": nd.zeros(6, ctx=ctx),
              "fc2_weight": nd.array(rng.normal(0, 0.1, (10, 24)), ctx=ctx), "fc2_bias": nd.zeros(10, ctx=ctx)}
    return params, {"bn_moving_mean": nd.zeros(6, ctx=ctx), "bn_moving_vari": nd.ones(6, ctx=ctx)}


NETS = {
    "lenet-bn": (lambda ctx: models.lenet_params(ctx, init="he", seed=1), models.lenet),
    "lenet-no-bn": (lambda ctx: models.lenet_params(ctx, use_bn=False, init="he", seed=1), models.lenet),
    "mlp-bn-dense": (lambda ctx: models.mlp_params(ctx, (784, 32, 16, 10), use_bn=True, seed=1),
                     functools.partial(models.mlp, activation="sigmoid")),
    "channels-last": (lambda ctx: channels_last_params(ctx, 1), channels_last_net),
}


@pytest.mark.parametrize("impl", mxbn.BATCH_NORM_IMPLS)
@pytest.mark.parametrize("name", sorted(NETS))
def test_jit_matches_imperative_over_steps(name, impl):
    make_params, net = NETS[name]
    if name == "lenet-no-bn" and impl == "scratch":
        pytest.skip("no batch norm in this net")
    rng = np.random.default_rng(0)
    a_params, a_state = make_params(mx.cpu())
    b_params, b_state = make_params(mx.cpu())
    imperative = functools.partial(net, bn_impl=impl)
    jitted = mxbn.jit(functools.partial(net, bn_impl=impl))
    for n in (16, 16, 7):  # the last batch has another shape: a second graph is traced
        X = nd.array(rng.random((n, 1, 28, 28)))
        y = nd.array(rng.integers(0, 10, n))
        for is_training in (True, False):
            la, ga = step(imperative, a_params, a_state, X, y, is_training)
            lb, gb = step(jitted, b_params, b_state, X, y, is_training)
            assert lb == pytest.approx(la, rel=1e-5)
            for k in ga:
                np.testing.assert_allclose(gb[k], ga[k], err_msg=k, **TOL)
            for k in a_state:
                np.testing.assert_allclose(b_state[k].asnumpy(), a_state[k].asnumpy(), err_msg=k, **TOL)
        for k in a_params:  # an SGD step on both keeps them in lock-step
            a_params[k] -= 0.1 * a_params[k].grad
            b_params[k] -= 0.1 * b_params[k].grad
    assert jitted.cache_size == 4  # (train, inference) x (16, 7)


def test_moving_statistics_follow_the_rule_once_per_training_call_and_not_in_inference():
    params, state = models.lenet_params(mx.cpu(), seed=0)
    jitted = mxbn.jit(functools.partial(models.lenet, bn_momentum=0.8))
    X = nd.array(np.random.default_rng(1).random((8, 1, 28, 28)))
    before = {k: v.asnumpy().copy() for k, v in state.items()}
    jitted(params, state, X, False).wait_to_read()
    for k in state:
        np.testing.assert_array_equal(state[k].asnumpy(), before[k])
    # one training call: moving = 0.8 * moving + 0.2 * batch statistic (biased variance) of bn1's input
    jitted(params, state, X, True).wait_to_read()
    H = mxbn.conv2d(X, params["conv1_weight"]).asnumpy().astype(np.float64)
    mean, vari = H.mean(axis=(0, 2, 3)), H.var(axis=(0, 2, 3))
    np.testing.assert_allclose(state["bn1_moving_mean"].asnumpy(), 0.8 * before["bn1_moving_mean"] + 0.2 * mean,
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(state["bn1_moving_vari"].asnumpy(), 0.8 * before["bn1_moving_vari"] + 0.2 * vari,
                               rtol=1e-4, atol=1e-7)


def test_outputs_may_be_a_tuple_or_a_dict_and_static_arguments_key_the_cache():
    params, state = models.lenet_params(mx.cpu(), seed=0)
    X = nd.array(np.random.default_rng(2).random((6, 1, 28, 28)))
    y = nd.array([1, 2, 3, 4, 5, 6])

    def loss_fn(params, state, X, y, is_training, scale):
        logits = models.lenet(params, state, X, is_training)
        return {"loss": scale * mxbn.softmax_cross_entropy(logits, y),
                "parts": (mxbn.correct_count(logits, y), logits)}

    jitted = mxbn.jit(loss_fn)
    out = jitted(params, state, X, y, False, 2.0)
    ref = loss_fn(params, state, X, y, False, 2.0)
    assert set(out) == {"loss", "parts"} and isinstance(out["parts"], tuple)
    assert float(out["loss"].asscalar()) == pytest.approx(float(ref["loss"].asscalar()), rel=1e-6)
    np.testing.assert_allclose(out["parts"][1].asnumpy(), ref["parts"][1].asnumpy(), **TOL)
    jitted(params, state, X, y, False, 3.0)
    assert jitted.cache_size == 2


def test_numpy_style_arrays_in_and_out():
    from mxnet import np as mnp
    ctx = mx.cpu()
    params, state = models.mlp_params(ctx, (784, 16, 10), use_bn=True, seed=0)
    np_params = {k: v.as_np_ndarray() for k, v in params.items()}
    np_state = {k: v.as_np_ndarray() for k, v in state.items()}
    X = mnp.array(np.random.default_rng(3).random((5, 784)), dtype="float32")
    Y = models.mlp(np_params, np_state, X, True)
    assert isinstance(Y, mnp.ndarray) and Y.shape == (5, 10)
    Yj = mxbn.jit(models.mlp)(np_params, np_state, X, False)
    assert isinstance(Yj, mnp.ndarray)
    np.testing.assert_allclose(Yj.asnumpy(), models.mlp(params, state, X.as_nd_ndarray(), False).asnumpy(), **TOL)
    # gradients reach np parameters through the views
    for p in np_params.values():
        p.attach_grad()
    with autograd.record():
        loss = (mxbn.jit(models.mlp)(np_params, np_state, X, True) ** 2).sum()
    loss.backward()
    assert float(abs(np_params["fc1_weight"].grad).sum()) > 0


# --------------------------------------------------------------------------- errors
def test_a_python_branch_on_a_value_is_named():
    def branchy(X):
        if X.sum() > 0:
            return mxbn.relu(X)
        return X
    with pytest.raises(mxbn.TracingError, match="reads an array's value.*static"):
        mxbn.jit(branchy)(nd.ones((2, 3)))


def test_an_nd_function_without_a_symbol_counterpart_is_named():
    with pytest.raises(mxbn.TracingError, match=r"mx\.nd\.onehot_encode has no Symbol counterpart.*mxbn's ops"):
        mxbn.jit(lambda X: nd.onehot_encode(X, X))(nd.ones((2, 3)))


def test_nd_broadcasting_arithmetic_functions_trace_as_the_operators():
    A, b = nd.array(np.arange(6).reshape(2, 3) + 1.0), nd.array([1.0, 2.0, 3.0])
    fn = lambda A, b: nd.add(A, b) * nd.subtract(2, b) + nd.divide(A, b) + nd.greater(A, b)  # noqa: E731
    np.testing.assert_allclose(mxbn.jit(fn)(A, b).asnumpy(), fn(A, b).asnumpy(), rtol=1e-6)


def test_a_captured_array_and_mixed_contexts_are_refused():
    gamma, beta, mm, mv = nd.ones(3), nd.zeros(3), nd.zeros(3), nd.ones(3)
    with pytest.raises(mxbn.TracingError, match="batch_norm: got a NDArray next to traced arrays.*pass every array"):
        mxbn.jit(lambda X: mxbn.batch_norm(X, gamma, beta, True, mm, mv))(nd.ones((4, 3)))
    labels = nd.array([0, 1, 2, 0])
    with pytest.raises(mxbn.TracingError, match="softmax_cross_entropy: got a NDArray next to traced arrays"):
        mxbn.jit(lambda X: mxbn.softmax_cross_entropy(X, labels))(nd.ones((4, 3)))
    with pytest.raises(ValueError, match=r"is on cpu\(1\) but .* is on cpu\(0\)"):
        mxbn.jit(lambda X, W: mxbn.dense(X, W))(nd.ones((4, 3)), nd.ones((2, 3), ctx=mx.cpu(1)))


def test_validation_errors_are_the_same_inside_jit():
    with pytest.raises(ValueError, match=r"gamma has shape \(4,\), expected \(3,\)"):
        mxbn.jit(lambda X, g, b, mm, mv: mxbn.batch_norm(X, g, b, True, mm, mv))(
            nd.ones((4, 3)), nd.ones(4), nd.zeros(3), nd.zeros(3), nd.ones(3))


def test_batch_norm_in_a_hybridized_gluon_block_says_what_to_use():
    class Block(gluon.HybridBlock):
        def __init__(self):
            super().__init__()
            self.gamma = self.params.get("gamma", shape=(3,), init="ones")
            self.beta = self.params.get("beta", shape=(3,), init="zeros")
            self.mm = self.params.get("mm", shape=(3,), init="zeros", grad_req="null")
            self.mv = self.params.get("mv", shape=(3,), init="ones", grad_req="null")

        def hybrid_forward(self, F, X, gamma, beta, mm, mv):
            return mxbn.batch_norm(X, gamma, beta, True, mm, mv)

    block = Block()
    block.initialize()
    X = nd.array(np.random.default_rng(4).random((4, 3)))
    block(X).wait_to_read()  # not hybridized: NDArrays, mxbn's semantics
    block.hybridize()
    with pytest.raises(mxbn.TracingError, match="outside mxbn.jit.*gluon.nn.BatchNorm.*mxbn.jit"):
        block(X)


@pytest.mark.parametrize("shape,axis", [((16, 6, 5, 5), 1), ((16, 6), 1), ((4, 5, 5, 6), -1)])
def test_traced_scratch_batch_norm_is_the_imperative_forward_bit_for_bit(shape, axis):
    """impl="scratch" in a graph runs the imperative path's GEMV reductions (the same kernels, so the same
    output and moving statistics to the bit; MXNet's generic reduction over axes (0, 2), which the traced
    path used before, is several times slower); its backward is autograd's, equal to the analytic one to
    float32 rounding."""
    rng = np.random.default_rng(3)
    C = shape[axis]
    X = nd.array(rng.normal(0.3, 2.0, shape))
    dY = nd.array(rng.normal(0, 1, shape))
    gamma, beta = rng.normal(1, 0.1, C), rng.normal(0, 0.1, C)
    results = []
    for bn in (mxbn.batch_norm, mxbn.jit(mxbn.batch_norm, layout_pass=False)):
        g, b, mm, mv = nd.array(gamma), nd.array(beta), nd.zeros(C), nd.ones(C)
        X.attach_grad(), g.attach_grad(), b.attach_grad()
        with autograd.record():
            Y = bn(X, g, b, True, mm, mv, impl="scratch", axis=axis)
        Y.backward(dY)
        results.append([a.asnumpy().copy() for a in (Y, mm, mv, X.grad, g.grad, b.grad)])
    for name, imperative, traced in zip(("Y", "moving_mean", "moving_vari"), results[0][:3], results[1][:3]):
        np.testing.assert_array_equal(traced, imperative, err_msg=name)
    for name, imperative, traced in zip(("dX", "dgamma", "dbeta"), results[0][3:], results[1][3:]):
        np.testing.assert_allclose(traced, imperative, rtol=0, atol=1e-5 * np.abs(imperative).max(), err_msg=name)


def test_traced_scratch_batch_norm_has_no_generic_reduction():
    import json
    X = nd.ones((8, 6, 5, 5))
    jitted = mxbn.jit(lambda X, g, b, mm, mv: mxbn.batch_norm(X, g, b, True, mm, mv, impl="scratch"),
                      layout_pass=False)
    jitted(X, nd.ones(6), nd.zeros(6), nd.zeros(6), nd.ones(6))
    (compiled,) = jitted._cache.values()
    ops = {node["op"] for node in json.loads(compiled.graph.tojson())["nodes"]}
    assert "dot" in ops
    assert not ops & {"mean", "sum", "broadcast_mul", "broadcast_sub", "broadcast_add"}, ops


@pytest.mark.parametrize("shape,axis", [((16, 6, 5, 5), 1), ((16, 6), 1), ((4, 5, 5, 6), -1)])
def test_traced_inference_batch_norm_is_the_imperative_one_bit_for_bit(shape, axis):
    """Inference normalization in a graph spreads its per-channel scale and shift with ones vectors (so that
    training through it, frozen BN, has GEMV gradients): the same values as the imperative broadcast."""
    rng = np.random.default_rng(4)
    C = shape[axis]
    X = nd.array(rng.normal(0.3, 2.0, shape))
    args = [nd.array(rng.normal(1, 0.1, C)), nd.array(rng.normal(0, 0.1, C)), nd.array(rng.normal(0, 1, C)),
            nd.array(rng.uniform(0.5, 2, C))]
    dY = nd.array(rng.normal(0, 1, shape))
    results = []
    for bn in (mxbn.batch_norm, mxbn.jit(mxbn.batch_norm, layout_pass=False)):
        g, b, mm, mv = (a.copy() for a in args)
        X.attach_grad(), g.attach_grad(), b.attach_grad()
        with autograd.record():
            Y = bn(X, g, b, False, mm, mv, axis=axis)
        Y.backward(dY)
        results.append([a.asnumpy().copy() for a in (Y, X.grad, g.grad, b.grad)])
    np.testing.assert_array_equal(results[1][0], results[0][0])
    for name, imperative, traced in zip(("dX", "dgamma", "dbeta"), results[0][1:], results[1][1:]):
        np.testing.assert_allclose(traced, imperative, rtol=0, atol=1e-5 * np.abs(imperative).max(), err_msg=name)
