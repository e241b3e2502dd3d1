import numpy as np
import pytest

import mxnet as mx
from mxnet import nd

from mxbn import models


@pytest.mark.parametrize("use_bn", [True, False])
def test_lenet_shapes_and_names(use_bn):
    params, state = models.lenet_params(mx.cpu(), use_bn=use_bn, seed=0)
    expected = {"conv1_weight": (20, 1, 5, 5), "conv2_weight": (50, 20, 3, 3), "fc1_weight": (128, 1250),
                "fc1_bias": (128,), "fc2_weight": (10, 128), "fc2_bias": (10,)}
    if use_bn:
        expected.update({"bn1_gamma": (20,), "bn1_beta": (20,), "bn2_gamma": (50,), "bn2_beta": (50,)})
        assert {k: v.shape for k, v in state.items()} == {
            "bn1_moving_mean": (20,), "bn1_moving_vari": (20,), "bn2_moving_mean": (50,), "bn2_moving_vari": (50,)}
    else:
        expected.update({"conv1_bias": (20,), "conv2_bias": (50,)})
        assert state == {}
    assert {k: v.shape for k, v in params.items()} == expected
    logits = models.lenet(params, state, nd.ones((3, 1, 28, 28)), True)
    assert logits.shape == (3, 10)


def test_lenet_same_seed_same_weights():
    a, _ = models.lenet_params(mx.cpu(), seed=4)
    b, _ = models.lenet_params(mx.cpu(), seed=4)
    for k in a:
        np.testing.assert_array_equal(a[k].asnumpy(), b[k].asnumpy())


def test_lenet_training_updates_state_inference_does_not():
    params, state = models.lenet_params(mx.cpu(), seed=0)
    X = nd.array(np.random.default_rng(0).random((4, 1, 28, 28)))
    before = {k: v.asnumpy().copy() for k, v in state.items()}
    models.lenet(params, state, X, False).wait_to_read()
    for k in state:
        np.testing.assert_array_equal(state[k].asnumpy(), before[k])
    models.lenet(params, state, X, True).wait_to_read()
    assert all(not np.array_equal(state[k].asnumpy(), before[k]) for k in state)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_mlp_with_and_without_bn(activation):
    params, state = models.mlp_params(mx.cpu(), (784, 30, 20, 10), use_bn=True, init="xavier", seed=1)
    assert sorted(state) == ["bn1_moving_mean", "bn1_moving_vari", "bn2_moving_mean", "bn2_moving_vari"]
    out = models.mlp(params, state, nd.ones((5, 1, 28, 28)), True, activation=activation)
    assert out.shape == (5, 10)
    assert models.min_train_batch_size(params, dense_bn=True) == 2
    plain, plain_state = models.mlp_params(mx.cpu(), (784, 10), seed=1)
    assert plain_state == {} and models.min_train_batch_size(plain, dense_bn=True) == 1
    with pytest.raises(ValueError, match="at least an input and an output size"):
        models.mlp_params(mx.cpu(), (784,))


def test_mlp_layers_taps_are_the_affine_and_the_activation_input():
    X = nd.array(np.random.default_rng(0).normal(size=(6, 12)))
    for use_bn in (False, True):
        params, state = models.mlp_params(mx.cpu(), (12, 8, 5, 3), use_bn=use_bn, init="xavier", seed=2)
        out, taps = models.mlp_layers(params, state, X, False, activation="sigmoid")
        np.testing.assert_array_equal(out.asnumpy(), models.mlp(params, state, X, False, "sigmoid").asnumpy())
        assert [name for name, *_ in taps] == ["hidden1", "hidden2"]
        p = {k: v.asnumpy().astype(np.float64) for k, v in params.items()}
        affine1 = X.asnumpy() @ p["fc1_weight"].T + p["fc1_bias"]
        np.testing.assert_allclose(taps[0][1].asnumpy(), affine1, rtol=1e-5, atol=1e-6)
        if use_bn:   # inference: the moving statistics (fresh: mean 0, variance 1) and gamma 1, beta 0
            np.testing.assert_allclose(taps[0][2].asnumpy(), affine1 / np.sqrt(1 + 1e-5), rtol=1e-5, atol=1e-6)
        else:
            assert taps[0][2] is taps[0][1]
        hidden1 = 1 / (1 + np.exp(-taps[0][2].asnumpy().astype(np.float64)))
        np.testing.assert_allclose(taps[1][1].asnumpy(), hidden1 @ p["fc2_weight"].T + p["fc2_bias"],
                                   rtol=1e-5, atol=1e-6)


def test_lenet_of_other_widths_runs_through_the_same_forward():
    params, state = models.lenet_params(mx.cpu(), channels=(16, 32))
    assert params["conv1_weight"].shape == (16, 1, 5, 5) and params["conv2_weight"].shape == (32, 16, 3, 3)
    assert params["fc1_weight"].shape == (128, 32 * 5 * 5) and state["bn2_moving_mean"].shape == (32,)
    logits = models.lenet(params, state, nd.ones((2, 1, 28, 28)), is_training=True)
    assert logits.shape == (2, 10)
    default, _ = models.lenet_params(mx.cpu())
    assert {k: v.shape for k, v in default.items()} == \
        {k: v.shape for k, v in models.lenet_params(mx.cpu(), channels=(20, 50))[0].items()}


@pytest.mark.parametrize("channels", [(16,), (16, 0), (16.0, 32), "16,32", (True, 32)])
def test_lenet_widths_that_are_not_two_positive_ints_are_refused(channels):
    with pytest.raises(ValueError, match=r"channels must be 2 positive ints .* got"):
        models.lenet_params(mx.cpu(), channels=channels)
