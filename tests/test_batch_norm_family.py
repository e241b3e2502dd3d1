"""Batch renormalization, ghost batch norm (virtual_batch_size), the cumulative average (momentum=None) and
precise BN: float64 NumPy references (tests/reference.py), central differences in float64, imperative vs
mxbn.jit, mx.np arrays, the grad_req matrix of every normalization op, and the argument checks.

Tolerances: float64 paths agree with the float64 reference to 1e-10 (a few dozen roundings of 1e-16 on
values of order 1-10); float32 paths to 2e-6 of the largest value (float32's 6e-8 times the same chain).
"""
import itertools

import numpy as np
import pytest

import mxnet as mx
from mxnet import autograd, nd

import mxbn
import reference as ref
from mxbn import models
from mxbn.precise_bn import pooled_moments

F64 = dict(rtol=1e-10, atol=1e-10)


def _bn_inputs(shape, axis=1, seed=0, dtype="float64"):
    rng = np.random.default_rng(seed)
    C = shape[axis]
    x = rng.normal(0.5, 2.0, shape)
    return (x, rng.uniform(0.5, 1.5, C), rng.normal(0, 0.5, C), rng.normal(0, 1, C), rng.uniform(0.2, 3, C))


def _weights(shape, dtype="float32"):
    """Fixed random weights w of a loss sum(w * Y): a BN output's sum(Y**2) has no gradient w.r.t. X."""
    return nd.array(np.random.default_rng(99).normal(size=shape), dtype=dtype)


def _nd(*arrays, dtype="float64"):
    return [nd.array(a, dtype=dtype) for a in arrays]


# ------------------------------------------------------------------ batch renorm

@pytest.mark.parametrize("r_max,d_max", [(3.0, 5.0), (1.2, 0.1), (1.0, 0.0)])
@pytest.mark.parametrize("shape,axis", [((6, 3, 4, 2), 1), ((8, 5), 1), ((4, 3, 5), -1)])
def test_batch_renorm_forward_and_moving_stats_against_float64(r_max, d_max, shape, axis):
    x, g, b, mm, mv = _bn_inputs(shape, axis)
    y_ref, mm_ref, mv_ref, (r, d) = ref.batch_renorm_forward(x, g, b, mm, mv, r_max, d_max, 0.8, 1e-5, axis)
    X, G, B, MM, MV = _nd(x, g, b, mm, mv)
    Y = mxbn.batch_renorm(X, G, B, True, MM, MV, r_max=r_max, d_max=d_max, momentum=0.8, axis=axis)
    np.testing.assert_allclose(Y.asnumpy(), y_ref, **F64)
    np.testing.assert_allclose(MM.asnumpy(), mm_ref, **F64)
    np.testing.assert_allclose(MV.asnumpy(), mv_ref, **F64)
    if r_max == 1.2:   # the chosen statistics put both corrections on their bounds for some channels
        assert np.isclose(np.abs(d), d_max).any() and np.isclose(np.maximum(r, 1 / r), r_max).any()


def test_batch_renorm_gradients_treat_r_and_d_as_constants():
    """Central differences (float64, h=1e-6) of the reference with r and d frozen at their values."""
    shape = (5, 3, 2, 2)
    x, g, b, mm, mv = _bn_inputs(shape, seed=1)
    w = np.random.default_rng(2).normal(size=shape)
    _, _, _, r_d = ref.batch_renorm_forward(x, g, b, mm, mv, 2.0, 0.5)
    X, G, B = _nd(x, g, b)
    for a in (X, G, B):
        a.attach_grad()
    with autograd.record():
        loss = (mxbn.batch_renorm(X, G, B, True, *_nd(mm, mv), r_max=2.0, d_max=0.5) * nd.array(w, dtype="float64")
                ).sum()
    loss.backward()
    h = 1e-6
    for k, (got, base) in enumerate(zip((X, G, B), (x, g, b))):
        numeric = np.zeros_like(base)
        for i in np.ndindex(base.shape):
            values = [x.copy(), g.copy(), b.copy()]
            values[k][i] += h
            up = (ref.batch_renorm_forward(*values, mm, mv, 2.0, 0.5, r_d=r_d)[0] * w).sum()
            values[k][i] -= 2 * h
            down = (ref.batch_renorm_forward(*values, mm, mv, 2.0, 0.5, r_d=r_d)[0] * w).sum()
            numeric[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(got.grad.asnumpy(), numeric, rtol=1e-6, atol=1e-7, err_msg=f"input {k}")


@pytest.mark.parametrize("impl", mxbn.BATCH_NORM_IMPLS)
def test_batch_renorm_with_no_room_to_correct_is_batch_norm(impl):
    """r_max=1, d_max=0: r = 1 and d = 0, so the output, gradients and moving statistics are batch_norm's."""
    x, g, b, mm, mv = _bn_inputs((8, 4, 3, 3), seed=3)
    results = []
    for op in (lambda *a: mxbn.batch_renorm(*a, r_max=1.0, d_max=0.0), lambda *a: mxbn.batch_norm(*a, impl=impl)):
        X, G, B, MM, MV = _nd(*(v.astype(np.float32) for v in (x, g, b, mm, mv)), dtype="float32")
        for a in (X, G, B):
            a.attach_grad()
        with autograd.record():
            loss = (op(X, G, B, True, MM, MV) * _weights(X.shape)).sum()
        loss.backward()
        results.append([v.asnumpy() for v in (X.grad, G.grad, B.grad, MM, MV)])
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(want).max())


def test_batch_renorm_inference_is_batch_norm_inference_and_leaves_the_state():
    x, g, b, mm, mv = _bn_inputs((4, 3, 2, 2), seed=4)
    X, G, B, MM, MV = _nd(x, g, b, mm, mv)
    np.testing.assert_array_equal(mxbn.batch_renorm(X, G, B, False, MM, MV).asnumpy(),
                                  mxbn.batch_norm(X, G, B, False, MM, MV).asnumpy())
    np.testing.assert_array_equal(MM.asnumpy(), mm)
    np.testing.assert_array_equal(MV.asnumpy(), mv)


def _jit_vs_eager(op, arrays, state_idx, grad_idx):
    """op run imperatively and under mxbn.jit on copies: outputs, gradients and state."""
    out = []
    for fn in (op, mxbn.jit(op)):
        values = [a.copy() for a in arrays]
        for i in grad_idx:
            values[i].attach_grad()
        with autograd.record():
            loss = (fn(*values) * _weights(values[0].shape, values[0].dtype)).sum()
        loss.backward()
        out.append([values[i].grad.asnumpy() for i in grad_idx] + [values[i].asnumpy() for i in state_idx])
    return out


@pytest.mark.parametrize("variant", ["renorm", "ghost-fused", "ghost-scratch", "cumulative"])
def test_jit_gives_the_imperative_numbers(variant):
    x, g, b, mm, mv = _bn_inputs((8, 3, 4, 4), seed=5)
    arrays = _nd(*(v.astype(np.float32) for v in (x, g, b, mm, mv)), dtype="float32") + [nd.array([2.0])]
    ops = {
        "renorm": lambda X, G, B, MM, MV, n: mxbn.batch_renorm(X, G, B, True, MM, MV, r_max=1.5, d_max=0.5),
        "ghost-fused": lambda X, G, B, MM, MV, n: mxbn.batch_norm(X, G, B, True, MM, MV, virtual_batch_size=2),
        "ghost-scratch": lambda X, G, B, MM, MV, n: mxbn.batch_norm(X, G, B, True, MM, MV, virtual_batch_size=4,
                                                                     impl="scratch"),
        "cumulative": lambda X, G, B, MM, MV, n: mxbn.batch_norm(X, G, B, True, MM, MV, momentum=None,
                                                                  num_batches=n),
    }
    eager, jitted = _jit_vs_eager(ops[variant], arrays, state_idx=(3, 4, 5), grad_idx=(0, 1, 2))
    for got, want in zip(jitted, eager):
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * max(1.0, np.abs(want).max()))


def test_batch_renorm_takes_numpy_arrays_and_float16():
    x, g, b, mm, mv = _bn_inputs((4, 3, 2, 2), seed=6)
    Y = mxbn.batch_renorm(*(mx.np.array(v, dtype="float32") for v in (x, g, b)), True,
                          *(mx.np.array(v, dtype="float32") for v in (mm, mv)))
    assert isinstance(Y, mx.np.ndarray)
    MM, MV = _nd(mm, mv, dtype="float32")
    Y16 = mxbn.batch_renorm(nd.array(x, dtype="float16"), *_nd(g, b, dtype="float32"), True, MM, MV)
    assert Y16.dtype == np.float16
    y_ref = ref.batch_renorm_forward(x.astype(np.float16).astype(np.float64), g, b, mm, mv, 3.0, 5.0)[0]
    np.testing.assert_allclose(Y16.asnumpy(), y_ref, rtol=0, atol=1e-2 * np.abs(y_ref).max())


# ------------------------------------------------------------------ ghost batch norm

@pytest.mark.parametrize("impl", mxbn.BATCH_NORM_IMPLS)
@pytest.mark.parametrize("k", [2, 3, 6])
def test_ghost_batch_norm_against_float64(impl, k):
    x, g, b, mm, mv = _bn_inputs((6, 3, 2, 3), seed=7)
    y_ref, mm_ref, mv_ref = ref.ghost_batch_norm_forward(x, g, b, mm, mv, k)
    X, G, B, MM, MV = _nd(x, g, b, mm, mv)
    dy = np.random.default_rng(8).normal(size=x.shape)
    X.attach_grad()
    with autograd.record():
        Y = mxbn.batch_norm(X, G, B, True, MM, MV, virtual_batch_size=k, impl=impl)
    Y.backward(nd.array(dy, dtype="float64"))
    np.testing.assert_allclose(Y.asnumpy(), y_ref, **F64)
    np.testing.assert_allclose(MM.asnumpy(), mm_ref, **F64)
    np.testing.assert_allclose(MV.asnumpy(), mv_ref, **F64)
    # each chunk's gradient is its own batch norm's
    dx = np.concatenate([ref.batch_norm_backward(x[i:i + k], g, dy[i:i + k], mm, mv, True)[0]
                         for i in range(0, 6, k)])
    np.testing.assert_allclose(X.grad.asnumpy(), dx, rtol=1e-9, atol=1e-10)


def test_one_ghost_batch_is_batch_norm_to_the_bit():
    x, g, b, mm, mv = _bn_inputs((6, 3, 2, 3), seed=9)
    a, b_ = _nd(x, g, b, mm, mv), _nd(x, g, b, mm, mv)
    Y1 = mxbn.batch_norm(*a[:3], True, *a[3:], virtual_batch_size=6)
    Y2 = mxbn.batch_norm(*b_[:3], True, *b_[3:])
    for got, want in zip([Y1] + a[3:], [Y2] + b_[3:]):
        np.testing.assert_array_equal(got.asnumpy(), want.asnumpy())


# ------------------------------------------------------------------ cumulative average

@pytest.mark.parametrize("impl", mxbn.BATCH_NORM_IMPLS)
def test_momentum_none_is_the_mean_of_every_batch_so_far(impl):
    rng = np.random.default_rng(10)
    params, state = mxbn.init.batch_norm_params(3, mx.cpu(), dtype="float64", cumulative=True)
    state["moving_mean"][:] = 123.0    # the first batch replaces the initial values exactly
    xs = [rng.normal(k, 1 + k, (5, 3, 2)) for k in range(4)]
    for x in xs:
        mxbn.batch_norm(nd.array(x, dtype="float64"), params["gamma"], params["beta"], True, state["moving_mean"],
                        state["moving_vari"], momentum=None, num_batches=state["num_batches"], impl=impl)
    np.testing.assert_allclose(state["moving_mean"].asnumpy(), np.mean([x.mean(axis=(0, 2)) for x in xs], 0), **F64)
    np.testing.assert_allclose(state["moving_vari"].asnumpy(), np.mean([x.var(axis=(0, 2)) for x in xs], 0), **F64)
    assert state["num_batches"].asnumpy().tolist() == [4.0]


def test_momentum_none_skips_a_non_finite_batch_counter_included():
    params, state = mxbn.init.batch_norm_params(2, mx.cpu(), cumulative=True)
    good = nd.array(np.random.default_rng(11).normal(size=(4, 2)))
    bad = good.copy()
    bad[0, 0] = np.nan
    for X in (good, bad):
        mxbn.batch_norm(X, params["gamma"], params["beta"], True, state["moving_mean"], state["moving_vari"],
                        momentum=None, num_batches=state["num_batches"])
    assert state["num_batches"].asnumpy().tolist() == [1.0]
    np.testing.assert_allclose(state["moving_mean"].asnumpy(), good.asnumpy().mean(axis=0), rtol=1e-6)


# ------------------------------------------------------------------ precise BN

def test_pooled_moments_are_those_of_the_concatenated_batches():
    rng = np.random.default_rng(12)
    batches = [rng.normal(3, 2, (n, 4)) for n in (5, 1, 17, 2)]
    got = pooled_moments((b.mean(0), b.var(0), len(b)) for b in batches)
    everything = np.concatenate(batches)
    np.testing.assert_allclose(got[0], everything.mean(0), **F64)
    np.testing.assert_allclose(got[1], everything.var(0), **F64)
    assert got[2] == 25
    nan = (np.full(4, np.nan), np.ones(4), 3)
    assert pooled_moments([nan]) is None
    np.testing.assert_allclose(pooled_moments([nan] + [(b.mean(0), b.var(0), len(b)) for b in batches])[1],
                               everything.var(0), **F64)


@pytest.mark.parametrize("jitted", [False, True])
def test_precise_bn_gives_each_layer_the_statistics_of_all_it_saw(jitted):
    """Against float64 statistics of each BN input over the batches, taken from lenet_layers' taps."""
    params, state = models.lenet_params(mx.cpu(), seed=0, init="he")
    rng = np.random.default_rng(13)
    batches = [nd.array(rng.normal(size=(n, 1, 28, 28))) for n in (16, 16, 7)]
    net = mxbn.jit(models.lenet) if jitted else models.lenet
    before = {k: v.asnumpy() for k, v in state.items()}
    new_state, read = mxbn.precise_bn(net, params, state, ((X, None) for X in batches), num_batches=5)
    assert read == 3
    for k, v in state.items():                                  # the given state is not touched
        np.testing.assert_array_equal(v.asnumpy(), before[k])
    scratch_state = {k: v.copy() for k, v in state.items()}
    inputs = {}
    for X in batches:
        for name, bn_input, _ in models.lenet_layers(params, scratch_state, X, True)[1]:
            inputs.setdefault(name, []).append(bn_input.asnumpy().astype(np.float64))
    for name, seen in inputs.items():
        everything = np.concatenate(seen)
        mean, var = everything.mean(axis=(0, 2, 3)), everything.var(axis=(0, 2, 3))
        np.testing.assert_allclose(new_state[f"{name}_moving_mean"].asnumpy(), mean, rtol=1e-5,
                                   atol=1e-6 * np.abs(mean).max())
        np.testing.assert_allclose(new_state[f"{name}_moving_vari"].asnumpy(), var, rtol=1e-5)


@pytest.mark.parametrize("call,says", [
    (lambda net, p, s: mxbn.precise_bn(net, p, s, [], 3), "data gave no batch"),
    (lambda net, p, s: mxbn.precise_bn(net, p, s, [nd.ones((2, 1, 28, 28))], 0), "num_batches must be a positive"),
    (lambda net, p, s: mxbn.precise_bn(lambda p, s, X, t: X, p, s, [nd.ones((2, 1, 28, 28))], 1),
     "ran no training-mode batch norm"),
])
def test_precise_bn_bad_input(call, says):
    params, state = models.lenet_params(mx.cpu())
    with pytest.raises(ValueError, match=says):
        call(models.lenet, params, state)


# ------------------------------------------------------------------ argument checks

def _bn_args(C=3, shape=(4, 3, 2), dtype="float32"):
    params, state = mxbn.init.batch_norm_params(C, mx.cpu(), dtype=dtype, cumulative=True)
    return nd.ones(shape, dtype=dtype), params, state


@pytest.mark.parametrize("kwargs,says", [
    (dict(r_max=0.5), r"r_max must be a finite number >= 1 .*got 0.5"),
    (dict(d_max=-1.0), r"d_max must be a finite number >= 0 .*got -1.0"),
    (dict(momentum=None), "momentum must be a number in"),
])
def test_batch_renorm_bad_arguments(kwargs, says):
    X, p, s = _bn_args()
    X[0] = 5
    with pytest.raises(ValueError, match=says):
        mxbn.batch_renorm(X, p["gamma"], p["beta"], True, s["moving_mean"], s["moving_vari"], **kwargs)
    assert s["moving_mean"].asnumpy().tolist() == [0.0] * 3 and s["moving_vari"].asnumpy().tolist() == [1.0] * 3


@pytest.mark.parametrize("kwargs,says", [
    (dict(virtual_batch_size=3), r"virtual_batch_size must divide the batch: got virtual_batch_size=3 for a "
                                 r"batch of 4"),
    (dict(virtual_batch_size=0), "virtual_batch_size must be a positive integer or None, got 0"),
    (dict(virtual_batch_size=2, axis=0), "channel axis cannot be 0"),
    (dict(momentum=None), "momentum=None .* needs num_batches"),
    (dict(momentum=None, num_batches="state"), r"num_batches must have shape \(1,\) and dtype float32, got shape "
                                               r"\(3,\)"),
    (dict(num_batches="counter"), "num_batches is the counter of momentum=None's cumulative average, but "
                                  "momentum=0.9"),
])
@pytest.mark.parametrize("jitted", [False, True])
def test_batch_norm_variant_bad_arguments_leave_the_state(kwargs, says, jitted):
    kwargs = dict(kwargs)
    X, p, s = _bn_args()
    X[0] = 5
    if kwargs.get("num_batches") == "state":
        kwargs["num_batches"] = s["moving_mean"].copy()
    elif kwargs.get("num_batches") == "counter":
        kwargs["num_batches"] = s["num_batches"]
    if kwargs.get("axis") == 0:
        X, p, s = _bn_args(C=4)
    op = lambda X, g, b, mm, mv: mxbn.batch_norm(X, g, b, True, mm, mv, **kwargs)  # noqa: E731
    if jitted and not any(isinstance(v, nd.NDArray) for v in kwargs.values()):
        op = mxbn.jit(op)
    with pytest.raises(ValueError, match=says):
        op(X, p["gamma"], p["beta"], s["moving_mean"], s["moving_vari"])
    assert set(s["moving_mean"].asnumpy().tolist()) == {0.0} and set(s["moving_vari"].asnumpy().tolist()) == {1.0}
    assert s["num_batches"].asnumpy().tolist() == [0.0]


def test_sync_batch_norm_refuses_the_cumulative_average():
    from mxbn.parallel import sync_batch_norm
    X, p, s = _bn_args()
    with pytest.raises(ValueError, match="momentum must be a number"):
        sync_batch_norm([X], [p["gamma"]], [p["beta"]], True, [s["moving_mean"]], [s["moving_vari"]],
                        momentum=None)


# ------------------------------------------------------------------ grad_req matrix of every op

GRAD_REQS = ("null", "write", "add")
REQ_MATRIX = [r for r in itertools.product(GRAD_REQS, repeat=3) if r != ("null",) * 3]
START = 7.0


def _norm_ops():
    def state(C):
        return [nd.zeros(C, dtype="float64"), nd.ones(C, dtype="float64")]
    return {
        "layer_norm": ((4, 3, 5), (5,), lambda X, G, B, st: mxbn.layer_norm(X, G, B)),
        "group_norm": ((4, 6, 3), (6,), lambda X, G, B, st: mxbn.group_norm(X, G, B, 3)),
        "instance_norm": ((4, 3, 5), (3,), lambda X, G, B, st: mxbn.instance_norm(X, G, B)),
        "batch_renorm": ((4, 3, 5), (3,), lambda X, G, B, st: mxbn.batch_renorm(X, G, B, True, *st, r_max=1.5,
                                                                                d_max=0.3)),
        "ghost_bn": ((4, 3, 5), (3,), lambda X, G, B, st: mxbn.batch_norm(X, G, B, True, *st,
                                                                          virtual_batch_size=2)),
    }, state


def _grads_for(op, reqs, x_shape, p_shape, steps, state_of, jitted):
    rng = np.random.default_rng(14)
    xs = [rng.normal(0.5, 2, x_shape) for _ in range(steps)]
    dys = [rng.normal(size=x_shape) for _ in range(steps)]
    g0, b0 = rng.uniform(0.5, 1.5, p_shape), rng.normal(size=p_shape)
    arrays = []
    for value, req in zip((xs[0], g0, b0), reqs):
        a = nd.array(value, dtype="float64")
        a.attach_grad(grad_req=req)
        a.grad[:] = START
        arrays.append(a)
    st = state_of(p_shape[0])
    fn = mxbn.jit(op) if jitted else op
    held = []
    for x, dy in zip(xs, dys):
        arrays[0][:] = nd.array(x, dtype="float64")
        with autograd.record():
            Y = fn(*arrays, st)
        Y.backward(nd.array(dy, dtype="float64"))
        held.append([None if a.grad is None else a.grad.asnumpy() for a in arrays])
    return held


@pytest.mark.parametrize("name", ["layer_norm", "group_norm", "instance_norm", "batch_renorm", "ghost_bn"])
@pytest.mark.parametrize("reqs", REQ_MATRIX, ids="-".join)
@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
def test_every_normalization_follows_each_grad_req(name, reqs, jitted):
    """Each buffer after 3 steps: ``write`` = that step's gradient (all-write run), ``add`` = START plus the
    running sum, ``null`` = START or detached; the all-write gradients are checked against references above."""
    ops, state_of = _norm_ops()
    x_shape, p_shape, op = ops[name]
    want = _grads_for(op, ("write",) * 3, x_shape, p_shape, 3, state_of, jitted)
    got = _grads_for(op, reqs, x_shape, p_shape, 3, state_of, jitted)
    for k, req in enumerate(reqs):
        running = START
        for step in range(3):
            running = running + want[step][k]
            if req == "null":
                assert got[step][k] is None or np.all(got[step][k] == START), (step, k)
            else:
                expected = want[step][k] if req == "write" else running
                np.testing.assert_allclose(got[step][k], expected, rtol=1e-9, atol=1e-9, err_msg=f"{step} {k}")


def test_group_norm_with_gamma_shared_in_each_group_is_mxnets_group_norm():
    """MXNet's GroupNorm takes gamma/beta per group; with per-channel values equal within each group the two
    definitions agree."""
    rng = np.random.default_rng(15)
    x = rng.normal(size=(3, 6, 4, 4)).astype(np.float32)
    g_group, b_group = rng.uniform(0.5, 1.5, 2).astype(np.float32), rng.normal(size=2).astype(np.float32)
    ours = mxbn.group_norm(nd.array(x), nd.array(np.repeat(g_group, 3)), nd.array(np.repeat(b_group, 3)), 2)
    theirs = nd.GroupNorm(nd.array(x), nd.array(g_group), nd.array(b_group), num_groups=2, eps=1e-5)
    np.testing.assert_allclose(ours.asnumpy(), theirs.asnumpy(), rtol=1e-5, atol=1e-5)
