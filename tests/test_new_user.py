"""Defects a new user found by using mxbn from its docs alone; each test failed before its fix."""
import numpy as np
import pytest
import mxnet as mx
from mxnet import autograd, nd

import mxbn


def _bn_inputs(kind="nd", C=3, seed=0):
    rng = np.random.default_rng(seed)
    arr = nd.array if kind == "nd" else mx.np.array
    X = arr(rng.normal(size=(6, C, 4, 4)).astype(np.float32))
    g, b = arr(rng.uniform(0.5, 1.5, C).astype(np.float32)), arr(rng.normal(size=C).astype(np.float32))
    m, v = arr(rng.normal(size=C).astype(np.float32)), arr(rng.uniform(0.5, 2, C).astype(np.float32))
    return X, g, b, m, v


@pytest.mark.parametrize("kind", ["nd", "np"])
@pytest.mark.parametrize("impl", ["fused", "scratch"])
@pytest.mark.parametrize("jitted", [False, True], ids=["imperative", "jit"])
def test_inference_mode_sends_no_gradient_into_the_moving_statistics(kind, impl, jitted):
    """nd.BatchNorm(use_global_stats=True) gives the moving statistics a zero gradient; so must mxbn."""
    X, g, b, m, v = _bn_inputs(kind)
    for a in (X, g, b, m, v):
        a.attach_grad()

    def f(X, g, b, m, v):
        return mxbn.batch_norm(X, g, b, False, m, v, impl=impl)
    fn = mxbn.jit(f) if jitted else f
    with autograd.record():
        Y = fn(X, g, b, m, v)
    Y.backward()
    np.testing.assert_array_equal(m.grad.asnumpy(), 0.0)
    np.testing.assert_array_equal(v.grad.asnumpy(), 0.0)
    # X, gamma and beta still get theirs (inference mode is differentiable in them)
    assert np.abs(X.grad.asnumpy()).sum() > 0 and np.abs(g.grad.asnumpy()).sum() > 0
    np.testing.assert_allclose(b.grad.asnumpy(), np.full(3, 6 * 16), rtol=1e-6)
