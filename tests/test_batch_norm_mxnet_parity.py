"""batch_norm against MXNet's own fused operator, mx.nd.BatchNorm, on the CPU.

The operator is called with fix_gamma=False and eps given explicitly (its defaults
are fix_gamma=True, eps=1e-3).  On the CPU it writes its aux states during the
backward pass, mxbn during the forward pass, so moving statistics are compared
after full steps.  float32 throughout: rtol 1e-4, atol 1e-5.
"""
import numpy as np
import pytest

import mxbn
from mxnet import autograd, nd

TOL = dict(rtol=1e-4, atol=1e-5)


def mxnet_step(x, gamma, beta, MM, MV, is_training, dy, momentum, eps, axis):
    X, G, B = nd.array(x), nd.array(gamma), nd.array(beta)
    for a in (X, G, B):
        a.attach_grad()
    with autograd.record(train_mode=is_training):
        Y = nd.BatchNorm(X, G, B, MM, MV, eps=eps, momentum=momentum, fix_gamma=False,
                         use_global_stats=not is_training, axis=axis)
    Y.backward(nd.array(dy))
    return [a.asnumpy() for a in (Y, X.grad, G.grad, B.grad)]


def mxbn_step(x, gamma, beta, MM, MV, is_training, dy, momentum, eps, axis, impl):
    X, G, B = nd.array(x), nd.array(gamma), nd.array(beta)
    for a in (X, G, B):
        a.attach_grad()
    with autograd.record():
        Y = mxbn.batch_norm(X, G, B, is_training, MM, MV, momentum=momentum, eps=eps, axis=axis, impl=impl)
    Y.backward(nd.array(dy))
    return [a.asnumpy() for a in (Y, X.grad, G.grad, B.grad)]


@pytest.mark.parametrize("impl", mxbn.BATCH_NORM_IMPLS)
@pytest.mark.parametrize("shape,axis", [((32, 10), 1), ((8, 6, 5, 5), 1), ((4, 5, 5, 6), -1), ((128, 20, 4, 4), 1)])
@pytest.mark.parametrize("momentum,eps", [(0.9, 1e-5), (0.5, 1e-3), (0.0, 2e-5), (1.0, 1e-5)])
def test_matches_nd_batchnorm_over_several_steps(impl, shape, axis, momentum, eps):
    rs = np.random.RandomState(abs(hash((shape, axis, momentum))) % 2**31)
    C = shape[axis]
    gamma = rs.uniform(0.5, 1.5, size=C).astype("f4")
    beta = rs.normal(size=C).astype("f4")
    ours = (nd.zeros(C), nd.ones(C))
    theirs = (nd.zeros(C), nd.ones(C))
    for step in range(3):
        x = rs.normal(step * 0.5, 1.0 + step, size=shape).astype("f4")
        dy = rs.normal(size=shape).astype("f4")
        for is_training in (True, False):
            got = mxbn_step(x, gamma, beta, *ours, is_training, dy, momentum, eps, axis, impl)
            want = mxnet_step(x, gamma, beta, *theirs, is_training, dy, momentum, eps, axis)
            for name, g, w in zip(("y", "dx", "dgamma", "dbeta"), got, want):
                np.testing.assert_allclose(g, w, err_msg=f"{name} step {step} training={is_training}", **TOL)
            np.testing.assert_allclose(ours[0].asnumpy(), theirs[0].asnumpy(), **TOL)
            np.testing.assert_allclose(ours[1].asnumpy(), theirs[1].asnumpy(), **TOL)
