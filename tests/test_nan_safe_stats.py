"""A training call whose batch statistics are non-finite leaves the moving statistics untouched (decided on
the device), in every path that writes them; a skipped NaN batch then leaves the whole model usable."""
import functools

import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, nd

import mxbn
from mxbn import models
from mxbn.data import epoch_batches
from mxbn.models import LENET_STAGE_NORMS, LENET_STAGES
from mxbn.optim import SGD, Momentum
from mxbn.parallel import DataParallelStep, across_devices, create_kvstore, jitted_stages, sync_batch_norm
from mxbn.seeding import epoch_seed, shuffle_rng
from mxbn.train import SingleDeviceStep, evaluate, fit


def _inputs(bad):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3, 4, 4)).astype(np.float32)
    if bad is not None:
        x[2, 1, 0, 0] = bad
    m, v = rng.normal(size=3).astype(np.float32), rng.uniform(0.5, 2, 3).astype(np.float32)
    return nd.array(x), nd.ones(3), nd.zeros(3), nd.array(m), nd.array(v)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("impl", ["fused", "scratch"])
@pytest.mark.parametrize("jitted", [False, True], ids=["imperative", "jit"])
def test_a_non_finite_batch_leaves_the_moving_statistics_untouched(bad, impl, jitted):
    X, g, b, m, v = _inputs(bad)
    m0, v0 = m.asnumpy().copy(), v.asnumpy().copy()

    def f(X, g, b, m, v):
        return mxbn.batch_norm(X, g, b, True, m, v, impl=impl)
    with autograd.record():
        (mxbn.jit(f) if jitted else f)(X, g, b, m, v)
    np.testing.assert_array_equal(m.asnumpy(), m0)
    np.testing.assert_array_equal(v.asnumpy(), v0)


@pytest.mark.parametrize("impl", ["fused", "scratch"])
def test_a_finite_batch_still_updates_them_by_the_rule(impl):
    X, g, b, m, v = _inputs(None)
    m0, v0 = m.asnumpy().astype(np.float64), v.asnumpy().astype(np.float64)
    mxbn.batch_norm(X, g, b, True, m, v, impl=impl)
    x = X.asnumpy().astype(np.float64)
    np.testing.assert_allclose(m.asnumpy(), 0.9 * m0 + 0.1 * x.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(v.asnumpy(), 0.9 * v0 + 0.1 * x.var(axis=(0, 2, 3)), rtol=1e-5)


def test_synchronized_bn_over_two_devices_leaves_them_untouched():
    X, g, b, m, v = _inputs(np.nan)
    ctxs = [mx.cpu(0), mx.cpu(1)]
    Xs = [X[:4].as_in_context(ctxs[0]), X[4:].as_in_context(ctxs[1])]
    mms = [m.copyto(c) for c in ctxs]
    mvs = [v.copyto(c) for c in ctxs]
    with autograd.record():
        sync_batch_norm(Xs, [g.copyto(c) for c in ctxs], [b.copyto(c) for c in ctxs], True, mms, mvs)
    for mm, mv in zip(mms, mvs):
        np.testing.assert_array_equal(mm.asnumpy(), m.asnumpy())
        np.testing.assert_array_equal(mv.asnumpy(), v.asnumpy())


def _nan_pixel_data(n=256, bad=37):
    rng = np.random.default_rng(1)
    X = rng.random((n, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.float32)
    X[bad, 0, 5, 5] = np.nan                               # one pixel of one training image
    return X, y, (nd.array(X[np.r_[0:bad, bad + 1:n]][:64]), nd.array(y[:64]))


def _net(graph, impl):
    net = functools.partial(models.lenet, bn_impl=impl)
    return mxbn.jit(net) if graph == "static" else net


def _sync_step(graph, impl, params, state, opt, opt_state):
    stages = jitted_stages(LENET_STAGES) if graph == "static" else LENET_STAGES
    forward = functools.partial(across_devices, stages, LENET_STAGE_NORMS)
    return DataParallelStep(forward, [mx.cpu(0), mx.cpu(1)], params, state, opt, opt_state,
                            create_kvstore("device"), stats_synchronized=True)


@pytest.mark.parametrize("graph,impl,devices", [("static", "fused", 1), ("imperative", "fused", 1),
                                                ("static", "scratch", 1), ("imperative", "scratch", 1),
                                                ("static", "fused", 2)])
def test_a_skipped_nan_pixel_batch_leaves_a_usable_model(graph, impl, devices):
    X, y, test = _nan_pixel_data()
    params, state = models.lenet_params(mx.cpu(), seed=0)
    net = _net(graph, impl)
    opt = SGD(lr=0.1)
    opt_state = opt.init(params)
    step = _sync_step(graph, impl, params, state, opt, opt_state) if devices == 2 else None
    history = fit(net, params, state, opt, opt_state, (nd.array(X), nd.array(y)), test, 1, 64, seed=0,
                  on_nan="skip", log=lambda *_: None, step=step)
    assert history[0]["skipped"] == 1
    for name, s in state.items():
        assert np.isfinite(s.asnumpy()).all(), name
    loss, _ = evaluate(net, params, state, *test, 64)
    assert np.isfinite(loss)


@pytest.mark.parametrize("graph", ["static", "imperative"])
def test_skipping_a_batch_is_training_without_it(graph):
    """on_nan="skip": parameters, optimizer state and BN state end bit for bit as after the same steps on the
    same batches with the bad one left out."""
    X, y, test = _nan_pixel_data()
    train = (nd.array(X), nd.array(y))
    opt = Momentum(lr=0.05)   # a velocity, so that the optimizer state is compared too
    skipped_params, skipped_state = models.lenet_params(mx.cpu(), seed=0)
    skipped_opt = opt.init(skipped_params)
    fit(_net(graph, "fused"), skipped_params, skipped_state, opt, skipped_opt, train, test, 1, 64, seed=0,
        on_nan="skip", log=lambda *_: None)

    params, state = models.lenet_params(mx.cpu(), seed=0)
    opt_state = opt.init(params)
    step = SingleDeviceStep(_net(graph, "fused"), params, state, opt, opt_state)
    step.seed_epoch(epoch_seed(0, 0))
    batches, _ = epoch_batches(*train, 64, shuffle_rng(0, 0))
    clean = [b for b in batches if np.isfinite(b[0].asnumpy()).all()]
    assert len(clean) == len(batches) - 1
    for Xb, yb in clean:
        step(Xb, yb)
    for mine, theirs in ((params, skipped_params), (state, skipped_state),
                         (opt_state["slots"]["v"], skipped_opt["slots"]["v"])):
        for name in mine:
            np.testing.assert_array_equal(theirs[name].asnumpy(), mine[name].asnumpy(), err_msg=name)
    assert opt_state["t"] == skipped_opt["t"] == len(clean)
