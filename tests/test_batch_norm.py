"""batch_norm against a float64 NumPy reference, finite differences and its invariants.

Tolerances: float32 results are compared with rtol 1e-4 / atol 1e-5 (float32 has
~7 significant digits; a BN forward+backward chains a few dozen roundings);
float64 results with rtol 1e-6 / atol 1e-9.
"""
import numpy as np
import pytest

import mxbn
from mxnet import autograd, nd

import reference as ref

IMPLS = mxbn.BATCH_NORM_IMPLS

# (shape, axis): 2-D, 3-D, 4-D, 5-D and channels-last with both spellings of the axis.
LAYOUTS = [
    ((16, 5), 1),
    ((6, 4, 7), 1),
    ((8, 3, 6, 6), 1),
    ((3, 2, 3, 4, 5), 1),
    ((4, 5, 5, 3), -1),
    ((4, 5, 5, 3), 3),
    ((4, 3, 5, 2), 2),
]

F32 = dict(rtol=1e-4, atol=1e-5)
F64 = dict(rtol=1e-6, atol=1e-9)


def make_inputs(shape, axis, seed, dtype="float64", loc=0.5, scale=2.0):
    rs = np.random.RandomState(seed)
    C = shape[axis]
    x = rs.normal(loc, scale, size=shape)
    gamma = rs.uniform(0.5, 1.5, size=C)
    beta = rs.normal(size=C)
    mm = rs.normal(size=C) * 0.1
    mv = rs.uniform(0.5, 2.0, size=C)
    return x.astype(dtype), gamma.astype(dtype), beta.astype(dtype), mm.astype(dtype), mv.astype(dtype)


def run_bn(x, gamma, beta, mm, mv, is_training, dy=None, impl="fused", **kw):
    """One recorded batch_norm call + backward; returns numpy y, grads and new moving stats."""
    X, G, B = nd.array(x, dtype=x.dtype), nd.array(gamma, dtype=gamma.dtype), nd.array(beta, dtype=beta.dtype)
    MM, MV = nd.array(mm, dtype=mm.dtype), nd.array(mv, dtype=mv.dtype)
    for a in (X, G, B):
        a.attach_grad()
    with autograd.record():
        Y = mxbn.batch_norm(X, G, B, is_training, MM, MV, impl=impl, **kw)
    Y.backward(nd.array(dy, dtype=x.dtype) if dy is not None else None)
    return dict(y=Y.asnumpy(), dx=X.grad.asnumpy(), dgamma=G.grad.asnumpy(), dbeta=B.grad.asnumpy(),
                mm=MM.asnumpy(), mv=MV.asnumpy())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("is_training", [True, False])
@pytest.mark.parametrize("dtype,tol", [("float64", F64), ("float32", F32)])
def test_forward_backward_match_float64_reference(impl, shape, axis, is_training, dtype, tol):
    x, gamma, beta, mm, mv = make_inputs(shape, axis, seed=len(shape) + axis, dtype=dtype)
    dy = np.random.RandomState(1).normal(size=shape).astype(dtype)
    momentum, eps = 0.8, 1e-3
    out = run_bn(x, gamma, beta, mm, mv, is_training, dy, impl=impl, momentum=momentum, eps=eps, axis=axis)
    y, new_mm, new_mv = ref.batch_norm_forward(x, gamma, beta, mm, mv, is_training, momentum, eps, axis)
    dx, dgamma, dbeta = ref.batch_norm_backward(x, gamma, dy, mm, mv, is_training, eps, axis)
    np.testing.assert_allclose(out["y"], y, **tol)
    np.testing.assert_allclose(out["dx"], dx, **tol)
    np.testing.assert_allclose(out["dgamma"], dgamma, **tol)
    np.testing.assert_allclose(out["dbeta"], dbeta, **tol)
    np.testing.assert_allclose(out["mm"], new_mm, **tol)
    np.testing.assert_allclose(out["mv"], new_mv, **tol)


def numeric_grad(f, a, h=1e-6):
    """Central finite differences of scalar f w.r.t. every entry of float64 array a."""
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + h
        fp = f()
        a[i] = old - h
        fm = f()
        a[i] = old
        g[i] = (fp - fm) / (2 * h)
    return g


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape,axis", [((5, 3), 1), ((3, 2, 3, 3), 1), ((2, 3, 3, 2), -1)])
@pytest.mark.parametrize("is_training", [True, False])
def test_gradients_match_central_finite_differences(impl, shape, axis, is_training):
    x, gamma, beta, mm, mv = make_inputs(shape, axis, seed=7)
    w = np.random.RandomState(3).normal(size=shape)  # loss = sum(w * y): a generic head

    def loss():
        X = nd.array(x, dtype="float64")
        Y = mxbn.batch_norm(X, nd.array(gamma, dtype="float64"), nd.array(beta, dtype="float64"),
                            is_training, nd.array(mm, dtype="float64"), nd.array(mv, dtype="float64"),
                            eps=1e-3, axis=axis, impl=impl)
        return float((Y.asnumpy() * w).sum())

    out = run_bn(x, gamma, beta, mm, mv, is_training, dy=w, impl=impl, eps=1e-3, axis=axis)
    # float64 central differences with h=1e-6 are accurate to ~1e-8 relative.
    tol = dict(rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(out["dx"], numeric_grad(loss, x), **tol)
    np.testing.assert_allclose(out["dgamma"], numeric_grad(loss, gamma), **tol)
    np.testing.assert_allclose(out["dbeta"], numeric_grad(loss, beta), **tol)


@pytest.mark.parametrize("impl", IMPLS)
def test_moving_statistics_follow_mxnet_momentum_rule_over_steps(impl):
    shape, axis, momentum = (8, 4, 5, 5), 1, 0.9
    C = shape[axis]
    mm64, mv64 = np.zeros(C), np.ones(C)
    MM, MV = nd.zeros(C), nd.ones(C)
    G, B = nd.ones(C), nd.zeros(C)
    rs = np.random.RandomState(0)
    for step in range(5):
        x = rs.normal(step, 1 + step, size=shape)
        mxbn.batch_norm(nd.array(x), G, B, True, MM, MV, momentum=momentum, impl=impl)
        # closed form of one step: moving = momentum*moving + (1-momentum)*batch_stat (biased var)
        mm64 = momentum * mm64 + (1 - momentum) * x.mean(axis=(0, 2, 3))
        mv64 = momentum * mv64 + (1 - momentum) * x.var(axis=(0, 2, 3))
    np.testing.assert_allclose(MM.asnumpy(), mm64, **F32)
    np.testing.assert_allclose(MV.asnumpy(), mv64, **F32)


@pytest.mark.parametrize("impl", IMPLS)
def test_training_output_is_standardised_per_channel(impl):
    x = np.random.RandomState(0).normal(3.0, 5.0, size=(16, 6, 4, 4)).astype("f4")
    p, s = mxbn.init.batch_norm_params(6, ctx=nd.array(x).context)
    Y = mxbn.batch_norm(nd.array(x), p["gamma"], p["beta"], True, s["moving_mean"], s["moving_vari"],
                        impl=impl).asnumpy().astype(np.float64)
    # gamma=1, beta=0 is the identity affine: output mean 0, biased variance 1 - eps/(var+eps)
    np.testing.assert_allclose(Y.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(Y.var(axis=(0, 2, 3)), 1.0, rtol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_large_mean_data_still_gets_unit_variance(impl):
    # mean 1e4, std 1 in float32: a one-pass E[x^2] - E[x]^2 loses every digit here
    # (1e8 - 1e8 with float32's 7 digits); the two-pass variance does not.
    rs = np.random.RandomState(0)
    x = (1e4 + rs.normal(size=(64, 3, 8, 8))).astype("f4")
    MM, MV = nd.zeros(3), nd.ones(3)
    Y = mxbn.batch_norm(nd.array(x), nd.ones(3), nd.zeros(3), True, MM, MV, momentum=0.0, impl=impl)
    y = Y.asnumpy().astype(np.float64)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1.0, rtol=1e-3)
    np.testing.assert_allclose(MV.asnumpy(), x.astype(np.float64).var(axis=(0, 2, 3)), rtol=1e-3)
    # a float32 sum of 4096 values near 1e4 carries ~sqrt(4096) ulps of rounding: rtol 1e-5
    np.testing.assert_allclose(MM.asnumpy(), x.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_float16_input_keeps_float32_statistics(impl):
    x, gamma, beta, mm, mv = make_inputs((32, 4, 6, 6), 1, seed=5, dtype="float64")
    x16 = x.astype("float16")
    X = nd.array(x16, dtype="float16")
    X.attach_grad()
    MM, MV = nd.array(mm, dtype="float32"), nd.array(mv, dtype="float32")
    G, B = nd.array(gamma, dtype="float32"), nd.array(beta, dtype="float32")
    with autograd.record():
        Y = mxbn.batch_norm(X, G, B, True, MM, MV, impl=impl)
    Y.backward()
    assert Y.dtype == np.float16 and X.grad.dtype == np.float16
    y, new_mm, new_mv = ref.batch_norm_forward(x16.astype(np.float64), gamma, beta, mm, mv, True)
    # output rounded to float16 (11-bit mantissa): rtol 2e-3; statistics stay float32-exact.
    np.testing.assert_allclose(Y.asnumpy().astype(np.float64), y, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(MM.asnumpy(), new_mm, **F32)
    np.testing.assert_allclose(MV.asnumpy(), new_mv, **F32)


@pytest.mark.parametrize("impl", IMPLS)
def test_inference_is_independent_of_batch_composition_and_leaves_state(impl):
    x, gamma, beta, mm, mv = make_inputs((10, 3, 4, 4), 1, seed=2, dtype="float32")
    MM, MV = nd.array(mm), nd.array(mv)
    args = (nd.array(gamma), nd.array(beta), False, MM, MV)
    full = mxbn.batch_norm(nd.array(x), *args, impl=impl).asnumpy()
    alone = mxbn.batch_norm(nd.array(x[3:4]), *args, impl=impl).asnumpy()
    shuffled = mxbn.batch_norm(nd.array(x[::-1].copy()), *args, impl=impl).asnumpy()
    again = mxbn.batch_norm(nd.array(x), *args, impl=impl).asnumpy()
    np.testing.assert_allclose(alone[0], full[3], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(shuffled[::-1], full, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(again, full)  # eval twice: identical
    np.testing.assert_array_equal(MM.asnumpy(), mm)
    np.testing.assert_array_equal(MV.asnumpy(), mv)


@pytest.mark.parametrize("impl", IMPLS)
def test_inference_backward_leaves_moving_statistics_untouched(impl):
    x, gamma, beta, mm, mv = make_inputs((6, 3, 4, 4), 1, seed=4, dtype="float32")
    out = run_bn(x, gamma, beta, mm, mv, False, impl=impl)
    np.testing.assert_array_equal(out["mm"], mm)
    np.testing.assert_array_equal(out["mv"], mv)


@pytest.mark.parametrize("impl", IMPLS)
def test_moving_statistics_carry_no_autograd_history(impl):
    """If the update were recorded, moving_* would depend on X and leak into X.grad."""
    x, gamma, beta, mm, mv = make_inputs((6, 3, 4, 4), 1, seed=4, dtype="float32")
    grads = []
    for add_state_to_loss in (False, True):
        X, G, B, MM, MV = (nd.array(a) for a in (x, gamma, beta, mm, mv))
        X.attach_grad()
        with autograd.record():
            Y = mxbn.batch_norm(X, G, B, True, MM, MV, impl=impl)
            loss = (Y * Y).sum()
            if add_state_to_loss:
                loss = loss + 1e3 * (MM.sum() + MV.sum())
        loss.backward()
        grads.append(X.grad.asnumpy())
        assert MM.grad is None and MV.grad is None
    np.testing.assert_array_equal(grads[0], grads[1])


@pytest.mark.parametrize("impl", IMPLS)
def test_is_training_argument_wins_over_autograd_mode(impl):
    """Training outside autograd.record() still uses batch statistics, and
    inference inside record() still uses the moving ones."""
    x, gamma, beta, mm, mv = make_inputs((8, 3, 4, 4), 1, seed=6, dtype="float32")
    y_train, _, _ = ref.batch_norm_forward(x, gamma, beta, mm, mv, True)
    y_eval, _, _ = ref.batch_norm_forward(x, gamma, beta, mm, mv, False)
    Y = mxbn.batch_norm(*(nd.array(a) for a in (x, gamma, beta)), True, nd.array(mm), nd.array(mv), impl=impl)
    np.testing.assert_allclose(Y.asnumpy(), y_train, **F32)
    with autograd.record(train_mode=True):
        Y = mxbn.batch_norm(*(nd.array(a) for a in (x, gamma, beta)), False, nd.array(mm), nd.array(mv), impl=impl)
    np.testing.assert_allclose(Y.asnumpy(), y_eval, **F32)


def test_fused_and_scratch_agree():
    x, gamma, beta, mm, mv = make_inputs((16, 8, 6, 6), 1, seed=9, dtype="float32")
    dy = np.random.RandomState(2).normal(size=x.shape).astype("f4")
    a = run_bn(x, gamma, beta, mm, mv, True, dy, impl="fused")
    b = run_bn(x, gamma, beta, mm, mv, True, dy, impl="scratch")
    for key in a:
        np.testing.assert_allclose(a[key], b[key], err_msg=key, **F32)


def test_scratch_path_releases_activations_after_backward():
    """A training loop must not accumulate the scratch op's saved activations.

    MXNet keeps a custom op's state (and so the Function object) alive until
    its engine drops the node; the op frees its activations then (measured
    before any release: 1.46 GB peak after 220 LeNet steps, 0.32 GB after).
    The engine's custom-op thread may hold the latest node a little longer, so
    at most one op of the last step may still hold them; without the release
    the count grows by one per step.
    """
    import gc
    from mxbn.batch_norm import _ScratchBatchNorm
    G, B, MM, MV = nd.ones(3), nd.zeros(3), nd.zeros(3), nd.ones(3)
    G.attach_grad()
    holding = []
    for step in range(20):
        X = nd.array(np.random.RandomState(step).normal(size=(8, 3, 4, 4)))
        X.attach_grad()
        with autograd.record():
            Y = mxbn.batch_norm(X, G, B, True, MM, MV, impl="scratch")
            if step == 0:  # held for backward
                ops = [o for o in gc.get_objects() if isinstance(o, _ScratchBatchNorm) and o.saved_tensors]
                assert ops and all(len(op.saved_tensors) == 4 and op.batch_stats is None for op in ops)
            loss = (Y * Y).sum()
        loss.backward()
        nd.waitall()
        holding.append(sum(1 for o in gc.get_objects() if isinstance(o, _ScratchBatchNorm) and o.saved_tensors))
    assert max(holding) <= 1, holding


def test_the_bookkeeping_graphs_give_new_arrays_equal_to_the_ops_one_by_one():
    # batch_norm runs its variance recovery and moving-statistics rule as cached graphs with static memory;
    # what one call returned must survive the next call (of another shape too) and equal the ops run
    # one by one
    import importlib
    bn = importlib.import_module("mxbn.batch_norm")
    rng = np.random.default_rng(0)
    calls = []
    for C in (3, 5, 3):
        mm, mv = nd.array(rng.random(C)), nd.array(rng.random(C) + 0.5)
        mean, vari = nd.array(rng.normal(size=C)), nd.array(rng.random(C))
        got = bn.graph_call(("rule-test", 0.75), lambda a, b, c, d: bn.moving_stats_rule(a, b, c, d, 0.75),
                            mm, mv, mean, vari)
        calls.append(([g.asnumpy().copy() for g in got], got,
                      [r.asnumpy() for r in bn.moving_stats_rule(mm, mv, mean, vari, 0.75)]))
    for copies, arrays, one_by_one in calls:
        for copy, array, expected in zip(copies, arrays, one_by_one):
            np.testing.assert_array_equal(array.asnumpy(), copy)       # not overwritten by later calls
            np.testing.assert_array_equal(copy, expected)


@pytest.mark.parametrize("impl", IMPLS)
def test_two_calls_of_one_shape_in_one_recording_keep_their_own_values(impl):
    # Each call runs cached graphs with static memory, planned once per shape; the second call of a shape
    # must not overwrite what the first one holds for its backward (two layers of one width in a net)
    shape = (6, 3, 4, 4)
    inputs = [make_inputs(shape, 1, seed=seed, dtype="float32") for seed in (1, 2)]
    dys = [np.random.RandomState(seed).normal(size=shape).astype("float32") for seed in (3, 4)]
    Xs = [nd.array(x) for x, *_ in inputs]
    gammas = [nd.array(g) for _, g, *_ in inputs]
    for a in Xs + gammas:
        a.attach_grad()
    with autograd.record():
        Ys = [mxbn.batch_norm(X, G, nd.array(b), True, nd.array(mm), nd.array(mv), impl=impl)
              for X, G, (_, _, b, mm, mv) in zip(Xs, gammas, inputs)]
        loss = sum((Y * nd.array(dy)).sum() for Y, dy in zip(Ys, dys))
    loss.backward()
    for X, G, Y, (x, gamma, beta, mm, mv), dy in zip(Xs, gammas, Ys, inputs, dys):
        y = ref.batch_norm_forward(x, gamma, beta, mm, mv, True, 0.9, 1e-5, 1)[0]
        dx, dgamma, _ = ref.batch_norm_backward(x, gamma, dy, mm, mv, True, 1e-5, 1)
        np.testing.assert_allclose(Y.asnumpy(), y, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(X.grad.asnumpy(), dx, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(G.grad.asnumpy(), dgamma, rtol=1e-3, atol=1e-4)


def test_a_cached_graph_of_a_one_element_tuple_gives_a_list_of_one_array():
    # MXNet's CachedOp returns a lone output as the array itself; a caller that asked for a tuple gets a list
    import importlib
    bn = importlib.import_module("mxbn.batch_norm")
    X = nd.array(np.arange(6.0).reshape(2, 3))
    got = bn.graph_call(("one-tuple-test",), lambda a: (a * 2,), X)
    assert isinstance(got, list) and len(got) == 1
    np.testing.assert_array_equal(got[0].asnumpy(), X.asnumpy() * 2)
