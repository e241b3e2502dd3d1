"""The static-graph LeNet gives the numbers of the imperative functional LeNet."""
import numpy as np
import pytest

import mxnet as mx
from mxnet import autograd, nd

from mxbn import models
from mxbn.compiled import CompiledLeNet
from mxbn.functional import softmax_cross_entropy

TOL = dict(rtol=1e-4, atol=1e-5)  # float32, same kernels in a different schedule


def step(net, params, state, X, y, is_training):
    for p in params.values():
        p.attach_grad()
    with autograd.record():
        loss = softmax_cross_entropy(net(params, state, X, is_training), y)
    loss.backward()
    return loss.asscalar(), {k: p.grad.asnumpy() for k, p in params.items()}


@pytest.mark.parametrize("use_bn", [True, False])
def test_compiled_matches_imperative_over_steps(use_bn):
    rng = np.random.default_rng(0)
    a_params, a_state = models.lenet_params(mx.cpu(), use_bn=use_bn, init="he", seed=1)
    b_params, b_state = models.lenet_params(mx.cpu(), use_bn=use_bn, init="he", seed=1)
    compiled = CompiledLeNet(use_bn=use_bn, bn_momentum=0.8)
    imperative = lambda p, s, X, t: models.lenet(p, s, X, t, bn_momentum=0.8)  # noqa: E731
    for n in (16, 16, 7):  # the last batch has another shape: the static graph must re-plan
        X = nd.array(rng.random((n, 1, 28, 28)))
        y = nd.array(rng.integers(0, 10, n))
        for is_training in (True, False):
            la, ga = step(imperative, a_params, a_state, X, y, is_training)
            lb, gb = step(compiled, b_params, b_state, X, y, is_training)
            assert lb == pytest.approx(la, rel=1e-5)
            for k in ga:
                np.testing.assert_allclose(gb[k], ga[k], err_msg=k, **TOL)
            for k in a_state:
                np.testing.assert_allclose(b_state[k].asnumpy(), a_state[k].asnumpy(), err_msg=k, **TOL)
        for k in a_params:  # an SGD step on both keeps them in lock-step
            a_params[k] -= 0.1 * a_params[k].grad
            b_params[k] -= 0.1 * b_params[k].grad


def test_inference_leaves_state_untouched():
    params, state = models.lenet_params(mx.cpu(), seed=0)
    before = {k: v.asnumpy().copy() for k, v in state.items()}
    CompiledLeNet()(params, state, nd.ones((4, 1, 28, 28)), False).wait_to_read()
    for k in state:
        np.testing.assert_array_equal(state[k].asnumpy(), before[k])
