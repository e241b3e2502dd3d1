"""The four optimizers against a float64 NumPy transcription of the chapter's rules,
on f(x, y) = x^2/20 + y^2 from (-7, 2), 30 steps (float32 parameters: rtol 1e-5, atol 1e-6)."""
import numpy as np
import pytest

from mxbn import optim
from mxnet import nd

import reference as ref

CASES = [("sgd", 0.95, {}), ("momentum", 0.1, {"momentum": 0.9}), ("adagrad", 1.5, {}), ("adam", 0.3, {})]


def run(opt, steps=30, lr_per_step=None):
    params = {"x": nd.array([-7.0]), "y": nd.array([2.0])}
    state = opt.init(params)
    path = [[-7.0, 2.0]]
    for t in range(steps):
        grads = {"x": params["x"] / 10.0, "y": 2.0 * params["y"]}
        opt.update(params, grads, state, lr=None if lr_per_step is None else lr_per_step(t))
        path.append([params["x"].asscalar(), params["y"].asscalar()])
    return np.array(path), state


@pytest.mark.parametrize("name,lr,hyper", CASES)
def test_trajectory_matches_numpy_transcription(name, lr, hyper):
    path, state = run(optim.make_optimizer(name, lr, **hyper))
    np.testing.assert_allclose(path, ref.optimizer_trajectory(name, lr, 30, **hyper), rtol=1e-5, atol=1e-6)
    assert state["t"] == 30


@pytest.mark.parametrize("name,lr,hyper", CASES)
def test_weight_decay_is_l2_folded_into_the_gradient(name, lr, hyper):
    wd = 0.05
    path, _ = run(optim.make_optimizer(name, lr, weight_decay=wd, **hyper))
    want = ref.optimizer_trajectory(name, lr, 30, grad=lambda p: np.array([p[0] / 10, 2 * p[1]]) + wd * p, **hyper)
    np.testing.assert_allclose(path, want, rtol=1e-5, atol=1e-6)


def test_lr_override_per_step():
    path, _ = run(optim.SGD(lr=1.0), steps=2, lr_per_step=lambda t: [0.5, 0.25][t])
    x, y = -7.0, 2.0
    for lr in (0.5, 0.25):
        x, y = x - lr * x / 10, y - lr * 2 * y
    np.testing.assert_allclose(path[-1], [x, y], rtol=1e-6)


def test_bad_hyper_parameters_and_missing_gradients():
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        optim.SGD(lr=0)
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\)"):
        optim.Momentum(lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0"):
        optim.Adam(lr=0.1, weight_decay=-1)
    with pytest.raises(ValueError, match=r"unknown optimizer 'rmsprop'"):
        optim.make_optimizer("rmsprop", 0.1)
    opt = optim.Adam(lr=0.1)
    params = {"w": nd.ones(2)}
    with pytest.raises(KeyError, match=r"no gradient for parameters \['w'\]"):
        opt.update(params, {}, opt.init(params))


# --------------------------------------------------------------------------- #
# multi-tensor updates (one kernel call per group of parameters)
def _many_params(seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(20, 1, 5, 5), (20,), (50, 20, 3, 3), (128, 1250), (10,)] * 4   # 20: more than one chunk
    params = {f"p{i}": nd.array(rng.normal(size=s)) for i, s in enumerate(shapes)}
    params["double"] = nd.array(rng.normal(size=(3, 4)), dtype="float64")    # a group of its own
    grads = {k: nd.array(rng.normal(size=v.shape), dtype=v.dtype) for k, v in params.items()}
    return params, grads


def _one_kernel_per_parameter(opt, params, grads, state, lr):
    for name in params:
        if isinstance(opt, optim.Momentum):
            nd.sgd_mom_update(params[name], grads[name], state["slots"]["v"][name], lr=lr, momentum=opt.momentum,
                              wd=opt.weight_decay, out=params[name])
        else:
            nd.sgd_update(params[name], grads[name], lr=lr, wd=opt.weight_decay, out=params[name])


@pytest.mark.parametrize("make", [lambda: optim.SGD(lr=0.1), lambda: optim.SGD(lr=0.05, weight_decay=5e-4),
                                  lambda: optim.Momentum(lr=0.05, momentum=0.9),
                                  lambda: optim.Momentum(lr=0.05, momentum=0.9, weight_decay=1e-3)])
def test_multi_tensor_updates_are_bit_identical_to_one_kernel_per_parameter(make):
    opt = make()
    params, grads = _many_params()
    reference = {k: v.copy() for k, v in params.items()}
    state, ref_state = opt.init(params), opt.init(reference)
    for lr in (None, 0.02, 0.0):
        opt.update(params, grads, state, lr)
        _one_kernel_per_parameter(opt, reference, grads, ref_state, opt._lr(lr))
    for name in params:
        assert np.array_equal(params[name].asnumpy(), reference[name].asnumpy()), name
        for slot in ref_state["slots"]:
            assert np.array_equal(state["slots"][slot][name].asnumpy(), ref_state["slots"][slot][name].asnumpy())
