"""--norm, --gn-groups and --precise-bn: one LeNet and one MLP definition for every normalization, the
norm recorded in checkpoints, batch renorm's schedule, and the options that do not combine."""
import json

import numpy as np
import pytest

import mxnet as mx
from mxnet import nd

import mxbn
from mxbn import models
from mxbn.checkpoint import load_checkpoint
from mxbn.config import ConfigError, TrainConfig
from mxbn.predict import load_lenet_checkpoint
from mxbn.run import eval_checkpoint, train_cnn

from helpers import quiet


def config(data_dir, **kw):
    base = dict(ctx="cpu", data_dir=data_dir, epochs=1, batch_size=64, lr=0.2, seed=0, val_size=100, init="he")
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("norm", models.NORMS)
def test_each_norm_trains_records_itself_and_evaluates_from_its_checkpoint(tiny_data, tmp_path, norm):
    out = tmp_path / norm
    metrics = train_cnn(config(tiny_data, norm=norm), str(out), log=quiet, progress=False)
    assert json.loads((out / "config.json").read_text())["norm"] == norm
    ckpt, saved = load_lenet_checkpoint(str(out / "checkpoint.params"), mx.cpu())
    assert saved.normalization == norm
    kinds = {models.norm_of(ckpt["params"], i) for i in models.LENET_BLOCKS}
    assert kinds == {None if norm == "none" else norm}
    loss, acc, recorded = eval_checkpoint(str(out / "checkpoint.params"), "cpu", log=quiet)
    assert acc == pytest.approx(recorded) and acc == pytest.approx(metrics["final"]["test_acc"])


def test_the_norm_layers_compute_their_ops():
    """LeNet's first norm layer output is the op's on the first convolution's output (taps)."""
    X = nd.array(np.random.default_rng(0).normal(size=(4, 1, 28, 28)))
    expected = {"gn": lambda H, g, b: mxbn.group_norm(H, g, b, models.DEFAULT_GN_GROUPS),
                "ln": lambda H, g, b: mxbn.group_norm(H, g, b, 1),
                "in": lambda H, g, b: mxbn.instance_norm(H, g, b)}
    for norm, op in expected.items():
        params, state = models.lenet_params(mx.cpu(), norm=norm, init="he")
        params[f"{norm}1_gamma"][:] = nd.array(np.linspace(0.5, 1.5, 20))
        name, before, after = models.lenet_layers(params, state, X, True)[1][0]
        assert name == f"{norm}1"
        np.testing.assert_array_equal(after.asnumpy(), op(before, params[f"{norm}1_gamma"],
                                                          params[f"{norm}1_beta"]).asnumpy())


def test_an_mlp_takes_every_norm_but_instance_norm():
    for norm in ("bn", "renorm", "gn", "ln", "none"):
        params, state = models.mlp_params(mx.cpu(), (12, 10, 10, 3), norm=norm)
        assert models.mlp(params, state, nd.ones((4, 12)), True).shape == (4, 3)
    params, state = models.mlp_params(mx.cpu(), (12, 10, 3), norm="ln")
    H = models.mlp_layers(params, state, nd.array(np.arange(48).reshape(4, 12)), True)[1][0]
    np.testing.assert_array_equal(H[2].asnumpy(), mxbn.layer_norm(H[1], params["ln1_gamma"],
                                                                  params["ln1_beta"]).asnumpy())
    with pytest.raises(ValueError, match="needs spatial axes"):
        models.mlp_params(mx.cpu(), (12, 10, 3), norm="in")


def test_renorm_starts_as_batch_norm_and_relaxes_to_its_limits():
    assert models.renorm_limits(0.0) == (1.0, 0.0) and models.renorm_limits(0.3) == (1.0, 0.0)
    assert models.renorm_limits(0.8) == (3.0, 5.0) and models.renorm_limits(1.0) == (3.0, 5.0)
    r, d = models.renorm_limits(0.55)
    assert r == pytest.approx(2.0) and d == pytest.approx(2.5)


def test_renorm_in_the_trainer_ends_with_the_final_limits(tiny_data, tmp_path):
    train_cnn(config(tiny_data, norm="renorm", epochs=2), str(tmp_path / "r"), log=quiet, progress=False)
    state = load_checkpoint(str(tmp_path / "r" / "checkpoint.params"), mx.cpu())["state"]
    assert state["renorm_r_max"].asnumpy().tolist() == [3.0] and state["renorm_d_max"].asnumpy().tolist() == [5.0]


def test_precise_bn_changes_the_statistics_and_nothing_else(tiny_data, tmp_path):
    """BN's moving statistics never feed back into training, so with --precise-bn the parameters are
    bit-identical to a run without it; the statistics differ, and are what evaluation used."""
    lines = []
    train_cnn(config(tiny_data, epochs=2), str(tmp_path / "a"), log=quiet, progress=False)
    precise = train_cnn(config(tiny_data, epochs=2, precise_bn=4), str(tmp_path / "b"), log=lines.append,
                        progress=False)
    a = load_checkpoint(str(tmp_path / "a" / "checkpoint.params"), mx.cpu())
    b = load_checkpoint(str(tmp_path / "b" / "checkpoint.params"), mx.cpu())
    for name, value in a["params"].items():
        np.testing.assert_array_equal(b["params"][name].asnumpy(), value.asnumpy(), err_msg=name)
    assert not np.allclose(b["state"]["bn1_moving_vari"].asnumpy(), a["state"]["bn1_moving_vari"].asnumpy())
    assert any("precise BN: statistics recomputed over 4 training batches" in line for line in lines)
    _, acc, _ = eval_checkpoint(str(tmp_path / "b" / "checkpoint.params"), "cpu", log=quiet)
    assert acc == pytest.approx(precise["final"]["test_acc"])


@pytest.mark.parametrize("kw,says", [
    (dict(norm="gn", ctx="cpu:0,cpu:1", bn_sync=True), "bn_sync synchronizes batch norm's statistics"),
    (dict(norm="gn", use_bn=False), "--no-bn is --norm none"),
    (dict(norm="gn", gn_groups=4), r"must divide LeNet's 20 and 50 channels .* got 4"),
    (dict(gn_groups=2), "--gn-groups applies only with --norm gn"),
    (dict(norm="ln", precise_bn=3), "--norm ln has none"),
    (dict(precise_bn=0), "--precise-bn must be a positive integer"),
    (dict(norm="gn", bn_mode="frozen"), "--bn-mode applies to batch norm's statistics"),
    (dict(norm="none", freeze_affine=True), "--freeze-affine applies to a norm's gamma and beta"),
    (dict(norm="renorm", ctx="cpu:0,cpu:1"), "--norm renorm trains on one device"),
    (dict(norm="in", trace_bn=True), "trace_bn follows the batch-norm layers"),
    (dict(norm="xx"), r"norm must be one of \['bn', 'renorm', 'gn', 'ln', 'in', 'none'\]"),
])
def test_options_that_do_not_combine_are_named(tiny_data, kw, says):
    with pytest.raises(ConfigError, match=says):
        config(tiny_data, **kw).validate()


def test_a_checkpoint_of_one_norm_is_not_loaded_as_another(tiny_data, tmp_path):
    train_cnn(config(tiny_data, norm="gn"), str(tmp_path / "gn"), log=quiet, progress=False)
    with pytest.raises(Exception, match="gn1_gamma"):
        train_cnn(config(tiny_data, norm="ln", init_from=str(tmp_path / "gn" / "checkpoint.params")),
                  str(tmp_path / "ln"), log=quiet, progress=False)
