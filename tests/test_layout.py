"""mxbn.jit's layout pass: the same function as the graph it rewrites, on LeNet and on other nets.

Tolerance: each result within 1e-4 of its largest magnitude.  The padded
graph runs other kernels (oneDNN's blocked JIT convolutions and batch norm
instead of im2col+gemm), which sum the same products in another order:
float32 rounding of sums over up to ~3,000 terms, measured at <= 3e-5 here.
A wrong padding (a padded channel leaking into a real one, a lost scale)
shows as an O(1) difference.  A gradient that is 0 in exact arithmetic (a
convolution's bias before a batch norm, which removes it) is rounding noise in
both graphs: gradients are compared at the scale of the largest one of the
net: never below a tenth of the largest.
"""
import importlib
import json

import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, nd

import mxbn
from mxbn import layout, models
from mxbn import functional as F
from mxbn.train import loss_and_correct

jit_module = importlib.import_module("mxbn.jit")
TOL = 1e-4


@pytest.fixture(autouse=True)
def avx512_block(monkeypatch):
    """The pass as it runs on an AVX-512 CPU, whatever this machine has."""
    monkeypatch.setattr(layout, "simd_block", lambda: 16)


def close(a, b, what, floor=1e-30):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, what
    scale = max(float(np.abs(b).max()), floor)
    assert float(np.abs(a - b).max()) <= TOL * scale, f"{what}: {np.abs(a - b).max() / scale:.2e} of its scale"


def batch(n=16, c=1, hw=28, seed=0):
    rng = np.random.default_rng(seed)
    return nd.array(rng.random((n, c, hw, hw))), nd.array(rng.integers(0, 10, n))


def one_step(net, params, state, X, y, is_training=True):
    """(loss, gradients, state after the call, logits) of one recorded call of ``net``'s loss."""
    params = {k: v.copy() for k, v in params.items()}
    state = {k: v.copy() for k, v in state.items()}
    for p in params.values():
        p.attach_grad()
    with autograd.record():
        loss, _ = loss_and_correct(net, is_training)(params, state, X, y)
    loss.backward()
    logits = net(params, state, X, False)
    return (loss.asnumpy(), {k: p.grad.asnumpy() for k, p in params.items()},
            {k: v.asnumpy() for k, v in state.items()}, logits.asnumpy())


def assert_same_function(fn, params, state, X, y):
    reference = one_step(fn, params, state, X, y)            # imperative: the ops one by one
    plain = one_step(mxbn.jit(fn, layout_pass=False), params, state, X, y)
    passed = one_step(mxbn.jit(fn), params, state, X, y)
    floor = 0.1 * max(float(np.abs(g).max()) for g in reference[1].values())
    for other, name in ((plain, "unpadded graph"), (reference, "imperative net")):
        close(passed[0], other[0], f"loss vs {name}")
        for k in other[1]:
            close(passed[1][k], other[1][k], f"gradient of {k} vs {name}", floor)
        for k in other[2]:
            close(passed[2][k], other[2][k], f"{k} vs {name}")
        close(passed[3], other[3], f"inference logits vs {name}")


def compiled_ops(net):
    """{op: [attrs]} of the graph(s) ``net`` compiled."""
    ops = {}
    for compiled in net._cache.values():
        graph = json.loads(compiled.graph.tojson())
        for node in graph["nodes"]:
            ops.setdefault(node["op"], []).append(node.get("attrs", {}))
    return ops


# --------------------------------------------------------------------------- #
def test_lenet_is_the_same_function_with_the_pass():
    params, state = models.lenet_params(mx.cpu(), seed=0)
    assert_same_function(models.lenet, params, state, *batch())


def test_lenet_graph_is_padded_and_its_relus_are_onednn_activations_after_pooling():
    params, state = models.lenet_params(mx.cpu(), seed=0)
    X, y = batch()
    on, off = mxbn.jit(models.lenet), mxbn.jit(models.lenet, layout_pass=False)
    on(params, state, X, True)
    off(params, state, X, True)
    filters_on = sorted(int(a["num_filter"]) for a in compiled_ops(on)["Convolution"])
    filters_off = sorted(int(a["num_filter"]) for a in compiled_ops(off)["Convolution"])
    assert (filters_off, filters_on) == ([20, 50], [32, 64])
    assert "relu" in compiled_ops(off) and len(compiled_ops(on)["Activation"]) == 2
    # both conv relus run after their max-pooling; the dense layer's relu stays MXNet's
    assert len(compiled_ops(on)["relu"]) == 1


def test_parameters_state_and_gradients_keep_their_shapes():
    params, state = models.lenet_params(mx.cpu(), seed=0)
    shapes = {k: v.shape for k, v in {**params, **state}.items()}
    _, grads, new_state, _ = one_step(mxbn.jit(models.lenet), params, state, *batch())
    assert {k: g.shape for k, g in grads.items()} == {k: shapes[k] for k in grads}
    assert {k: s.shape for k, s in new_state.items()} == {k: shapes[k] for k in new_state}


def test_the_pass_can_be_turned_off_and_derived_graphs_follow_the_net():
    params, state = models.lenet_params(mx.cpu(), seed=0)
    X, y = batch()
    off = mxbn.jit(models.lenet, layout_pass=False)
    loss_and_correct(off, True)(params, state, X, y)
    derived = next(iter(off.derived.values()))
    assert derived.layout_pass is False
    assert sorted(int(a["num_filter"]) for a in compiled_ops(derived)["Convolution"]) == [20, 50]


def conv_net(channels, bias, placement, in_channels=1):
    """A functional conv net: conv layers of ``channels`` (bias or not), BN placed as ``placement`` says,
    then a dense head; returns (fn, params, state)."""
    rng = np.random.default_rng(3)
    params, state = {}, {}
    c_in = in_channels
    for i, c in enumerate(channels):
        params[f"w{i}"] = nd.array(rng.normal(0, 0.3, (c, c_in, 3, 3)))
        if bias:
            params[f"b{i}"] = nd.array(rng.normal(0, 0.1, (c,)))
        params[f"g{i}"] = nd.array(rng.uniform(0.5, 1.5, (c,)))
        params[f"be{i}"] = nd.array(rng.normal(0, 0.1, (c,)))
        state[f"m{i}"], state[f"v{i}"] = nd.zeros(c), nd.ones(c)
        c_in = c
    hw = 12
    for _ in channels:
        hw = hw - 2
        if placement == "bn-relu-pool":
            hw //= 2
    params["fc_w"] = nd.array(rng.normal(0, 0.1, (10, c_in * hw * hw)))
    params["fc_b"] = nd.zeros(10)

    def fn(params, state, X, is_training):
        H = X
        for i in range(len(channels)):
            H = F.conv2d(H, params[f"w{i}"], params.get(f"b{i}"))

            def bn(Z, i=i):
                return F.batch_norm(Z, params[f"g{i}"], params[f"be{i}"], is_training, state[f"m{i}"], state[f"v{i}"])
            if placement == "bn-relu-pool":
                H = F.max_pool2d(F.relu(bn(H)), 2)
            elif placement == "relu-bn":
                H = bn(F.relu(H))
            elif placement == "bn-sigmoid":
                H = F.sigmoid(bn(H))
            else:   # "bn" then the next conv directly
                H = bn(H)
        return F.dense(H, params["fc_w"], params["fc_b"])
    return fn, params, state


@pytest.mark.parametrize("channels", [(20, 50), (16, 32), (1, 3), (7, 12)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("placement", ["bn-relu-pool", "relu-bn", "bn-sigmoid", "bn"])
def test_nets_with_any_channel_counts_are_the_same_function(channels, bias, placement):
    fn, params, state = conv_net(channels, bias, placement, in_channels=3)
    assert_same_function(fn, params, state, *batch(n=8, c=3, hw=12, seed=1))


def test_padded_channels_pay_rule():
    assert [layout.padded_channels(c, 16) for c in (1, 6, 8, 12, 16, 20, 50, 64, 100)] == \
        [1, 6, 16, 16, 16, 32, 64, 64, 112]
    assert layout.padded_channels(20, 8) == 24 and layout.padded_channels(20, 0) == 20


@pytest.mark.parametrize("use_bn", [True, False])
def test_a_nan_pixel_gives_a_non_finite_loss_where_the_unpadded_graph_does(use_bn):
    """oneDNN's relu turns a NaN into 0, MXNet's keeps it: the pass must not hide a NaN the graph had.
    (Without BN, max-pooling in both graphs may drop an isolated NaN: the loss is then finite in both.)"""
    params, state = models.lenet_params(mx.cpu(), use_bn=use_bn, seed=0)
    X, y = batch()
    pixels = X.asnumpy()
    pixels[3, 0, 5, 5] = np.nan
    X = nd.array(pixels)
    finite = []
    for net in (mxbn.jit(models.lenet), mxbn.jit(models.lenet, layout_pass=False)):
        loss, _ = loss_and_correct(net, True)(params, {k: v.copy() for k, v in state.items()}, X, y)
        finite.append(bool(np.isfinite(loss.asscalar())))
    assert finite[0] == finite[1]
    if use_bn:   # the batch statistics of every channel of bn1 hold the NaN
        assert finite == [False, False]


def test_no_padding_without_a_known_block(monkeypatch):
    monkeypatch.setattr(layout, "simd_block", lambda: 0)
    params, state = models.lenet_params(mx.cpu(), seed=0)
    net = mxbn.jit(models.lenet)
    net(params, state, batch()[0], True)
    assert sorted(int(a["num_filter"]) for a in compiled_ops(net)["Convolution"]) == [20, 50]


def _lenet_relu_after_pool(params, state, X, is_training):
    """models.lenet with each block's relu after its max-pooling (what the pass does inside the graph)."""
    H = X
    for i in models.LENET_BLOCKS:
        H = F.batch_norm(models.lenet_conv(params, i, H), params[f"bn{i}_gamma"], params[f"bn{i}_beta"],
                         is_training, state[f"bn{i}_moving_mean"], state[f"bn{i}_moving_vari"])
        H = F.relu(F.max_pool2d(H, 2))
    return models.lenet_head(params, H)


def test_relu_and_max_pooling_commute_bit_for_bit_imperatively_and_in_a_graph():
    """0.2.0 saw 'very different conv1 gradients' with relu moved after pooling; with MXNet 1.9.1's
    kernels, both orders give the same gradients to the bit, op by op and in one unpadded graph."""
    params, state = models.lenet_params(mx.cpu(), seed=0)
    X, y = batch()
    before = one_step(models.lenet, params, state, X, y)
    for net in (_lenet_relu_after_pool, mxbn.jit(_lenet_relu_after_pool, layout_pass=False)):
        after = one_step(net, params, state, X, y)
        assert after[0] == before[0]
        for k in before[1]:
            assert np.array_equal(after[1][k], before[1][k]), k
