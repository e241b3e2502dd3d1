"""The trainer as a careful ML engineer trains: a validation split that alone chooses, weight decay that
spares BN and biases, gradient clipping, early stopping with best.params, fine-tuning with frozen BN."""
import json
import os

import numpy as np
import pytest

import mxnet as mx
from mxnet import nd

from mxbn import models
from mxbn.checkpoint import CheckpointError, load_checkpoint
from mxbn.config import ConfigError, TrainConfig
from mxbn.data import DataError, validation_split
from mxbn.optim import NO_DECAY_SUFFIXES, SGD, AdaGrad, Adam, Momentum, clip_by_global_norm
from mxbn.run import train_cnn
from mxbn.train import SingleDeviceStep, best_epoch, epochs_without_improvement, fit

from helpers import quiet


def config(data_dir, **kw):
    base = dict(ctx="cpu", data_dir=data_dir, epochs=2, batch_size=64, lr=0.2, seed=0, val_size=100)
    base.update(kw)
    return TrainConfig(**base)


# ---------------------------------------------------------------------------------------------- validation split
def test_the_validation_split_is_deterministic_disjoint_and_class_balanced():
    labels = np.repeat(np.arange(10), 6000)
    np.random.default_rng(0).shuffle(labels)
    train, val = validation_split(labels, 5000)
    again_train, again_val = validation_split(labels, 5000)
    np.testing.assert_array_equal(val, again_val)
    np.testing.assert_array_equal(train, again_train)
    assert len(val) == 5000 and len(train) == 55000
    assert not set(train) & set(val) and sorted(set(train) | set(val)) == list(range(60000))
    assert np.bincount(labels[val]).tolist() == [500] * 10
    assert (np.diff(train) > 0).all() and (np.diff(val) > 0).all()   # the data's order is kept
    assert validation_split(labels, 0)[1].size == 0


def test_an_uneven_split_follows_the_class_proportions():
    labels = np.array([0] * 70 + [1] * 20 + [2] * 10)
    _, val = validation_split(labels, 11)
    assert np.bincount(labels[val], minlength=3).tolist() == [8, 2, 1]


@pytest.mark.parametrize("size,says", [(-1, "0..99"), (100, "0..99"), (2.5, "0..99")])
def test_a_split_out_of_range_is_refused(size, says):
    with pytest.raises(DataError, match=says):
        validation_split(np.arange(100) % 10, size)


def test_a_split_that_empties_a_class_is_refused():
    with pytest.raises(DataError, match="all 1 training samples of class 2"):
        validation_split(np.array([0] * 50 + [1] * 49 + [2]), 90)


def test_limit_train_counts_training_images_after_the_split(tiny_data, tmp_path):
    metrics = train_cnn(config(tiny_data, epochs=1, limit_train=320, val_size=150), str(tmp_path / "r"), log=quiet,
                        progress=False)
    h = metrics["history"][0]
    assert h["samples"] == 320
    assert {"val_loss", "val_acc", "test_loss", "test_acc"} <= set(h)
    assert abs(h["val_acc"] * 150 - round(h["val_acc"] * 150)) < 1e-9   # a mean over the 150 held out


def test_val_size_zero_reports_no_validation_numbers_and_no_best(tiny_data, tmp_path):
    metrics = train_cnn(config(tiny_data, epochs=1, val_size=0), str(tmp_path / "r"), log=quiet, progress=False)
    assert "val_acc" not in metrics["history"][0]
    assert metrics["best"] is None
    assert metrics["history"][0]["samples"] == 600
    assert not os.path.exists(tmp_path / "r" / "best.params")


@pytest.mark.parametrize("kw,says", [
    (dict(val_size=600), r"--val-size 600: .*0\.\.599"),
    (dict(val_size=-1), "--val-size must be a non-negative integer, got -1"),
    (dict(patience=0), "--patience must be a positive integer, got 0"),
    (dict(val_size=0, patience=2), r"\(--patience\) .*--val-size 0"),
    (dict(wd_all=True), "--wd-all applies only with --weight-decay > 0"),
    (dict(use_bn=False, bn_mode="frozen"), "--bn-mode applies to batch norm"),
    (dict(clip_grad_norm=0.0), "--clip-grad-norm must be a finite number > 0"),
])
def test_bad_options_are_usage_errors_naming_them(tiny_data, tmp_path, kw, says):
    with pytest.raises(ConfigError, match=says):
        train_cnn(config(tiny_data, **kw), str(tmp_path / "r"), log=quiet, progress=False)
    assert not os.path.exists(tmp_path / "r")


def test_a_configuration_from_before_validation_splits_trained_on_everything():
    old = TrainConfig().to_dict()
    del old["val_size"]
    assert TrainConfig.from_dict(old).val_size == 0


# ---------------------------------------------------------------------------------------------- best and patience
def _history(val, test):
    return [dict(epoch=i + 1, val_acc=v, test_acc=t) for i, (v, t) in enumerate(zip(val, test))]


def test_best_is_chosen_on_validation_even_where_the_test_set_disagrees():
    history = _history(val=[0.5, 0.8, 0.7, 0.8], test=[0.5, 0.6, 0.9, 0.7])
    assert best_epoch(history) == 2                  # the test set would say 3; equals go to the earlier
    assert epochs_without_improvement(history) == 2
    assert best_epoch([dict(epoch=1, test_acc=0.9)]) is None


def test_best_params_hold_the_validation_best_epoch(tiny_data, tmp_path):
    out = tmp_path / "r"
    metrics = train_cnn(config(tiny_data, epochs=3), str(out), log=quiet, progress=False)
    history = metrics["history"]
    chosen = max(history, key=lambda h: (h["val_acc"], -h["epoch"]))
    assert metrics["best"]["epoch"] == chosen["epoch"] and metrics["best"]["selected_by"] == "validation accuracy"
    assert metrics["best"]["test_acc"] == chosen["test_acc"]
    assert metrics["final"]["epoch"] == 3 and metrics["final"]["file"] == "checkpoint.params"
    best = load_checkpoint(str(out / "best.params"), mx.cpu())
    assert best["meta"]["position"] == {"epoch": chosen["epoch"], "batch": 0}
    assert [h["epoch"] for h in best["meta"]["history"]] == list(range(1, chosen["epoch"] + 1))


def test_patience_stops_when_validation_stops_improving():
    rng = np.random.default_rng(0)
    X, y = nd.array(rng.random((128, 1, 28, 28))), nd.array(rng.integers(0, 10, 128))
    params, state = models.lenet_params(mx.cpu(), seed=0)
    opt = SGD(lr=1e-30)   # nothing moves: the validation accuracy of epoch 1 is never beaten
    lines = []
    history = fit(models.lenet, params, state, opt, opt.init(params), (X, y), (X[:32], y[:32]), 10, 64,
                  val_data=(X[:64], y[:64]), patience=2, log=lines.append)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert any("early stop: 2 epoch(s) without a better validation accuracy" in line for line in lines)
    # resumed with that history, it stops at once
    assert fit(models.lenet, params, state, opt, opt.init(params), (X, y), (X[:32], y[:32]), 10, 64,
               val_data=(X[:64], y[:64]), patience=2, history=history, log=quiet) == history
    with pytest.raises(ValueError, match="needs val_data"):
        fit(models.lenet, params, state, opt, opt.init(params), (X, y), (X, y), 1, 64, patience=2)


def test_an_early_stopped_run_says_so_and_resumes_to_nothing(tiny_data, tmp_path):
    out = str(tmp_path / "r")
    cfg = config(tiny_data, epochs=6, lr=1e-30, patience=1)
    metrics = train_cnn(cfg, out, log=quiet, progress=False)
    assert len(metrics["history"]) == 2 and metrics["early_stopped"] is True
    lines = []
    again = train_cnn(cfg, out, resume=True, log=lines.append, progress=False)
    assert again["history"] == metrics["history"]
    assert any("early stop" in line for line in lines)


# ---------------------------------------------------------------------------------------------- weight decay
def _params(rng):
    return {"conv_weight": nd.array(rng.normal(size=(4, 3))), "conv_bias": nd.array(rng.normal(size=4)),
            "bn_gamma": nd.array(rng.normal(size=4)), "bn_beta": nd.array(rng.normal(size=4))}


@pytest.mark.parametrize("cls", [SGD, Momentum, AdaGrad, Adam])
def test_weight_decay_spares_the_excluded_names(cls):
    rng = np.random.default_rng(0)
    start, grads = _params(rng), _params(rng)
    runs = {}
    # a decay that dominates the gradient: Adam's and AdaGrad's first steps are about lr * sign(g + wd * p)
    for label, kw in (("masked", dict(weight_decay=10.0, wd_exclude=NO_DECAY_SUFFIXES)),
                      ("all", dict(weight_decay=10.0)), ("none", dict(weight_decay=0.0))):
        opt = cls(lr=0.01, **kw)
        params = {k: v.copy() for k, v in start.items()}
        opt.update(params, {k: v.copy() for k, v in grads.items()}, opt.init(params))
        runs[label] = {k: v.asnumpy() for k, v in params.items()}
    for name in start:
        like = "all" if name == "conv_weight" else "none"
        np.testing.assert_array_equal(runs["masked"][name], runs[like][name], err_msg=name)
    assert not np.array_equal(runs["all"]["bn_gamma"], runs["none"]["bn_gamma"])


def test_sgd_weight_decay_against_float64():
    rng = np.random.default_rng(1)
    start, grads = _params(rng), _params(rng)
    opt = SGD(lr=0.1, weight_decay=0.01, wd_exclude=NO_DECAY_SUFFIXES)
    params = {k: v.copy() for k, v in start.items()}
    opt.update(params, grads, opt.init(params))
    for name, p in start.items():
        p64, g64 = p.asnumpy().astype(np.float64), grads[name].asnumpy().astype(np.float64)
        wd = 0.0 if name.endswith(NO_DECAY_SUFFIXES) else 0.01
        expected = p64 - 0.1 * (g64 + wd * p64)
        np.testing.assert_allclose(params[name].asnumpy(), expected, rtol=0, atol=1e-6 * np.abs(expected).max(),
                                   err_msg=name)   # float32 rounding of the largest value


def test_the_trainer_decays_weights_only_unless_wd_all(tiny_data):
    from mxbn.run import _build
    for wd_all in (False, True):
        cfg = config(tiny_data, weight_decay=5e-4, wd_all=wd_all)
        optimizer = _build(cfg, mx.cpu(), quiet)[6]
        params, _ = models.lenet_params(mx.cpu(), seed=0)
        for name in params:
            spared = name.endswith(("_gamma", "_beta", "_bias")) and not wd_all
            assert optimizer.wd_of(name) == (0.0 if spared else 5e-4), (name, wd_all)


# ---------------------------------------------------------------------------------------------- clipping
def test_clip_by_global_norm_against_float64():
    rng = np.random.default_rng(2)
    grads = [nd.array(rng.normal(size=s)) for s in [(20, 1, 5, 5), (20,), (10, 50)]]
    g64 = [g.asnumpy().astype(np.float64) for g in grads]
    norm = np.sqrt(sum((g ** 2).sum() for g in g64))
    fired = clip_by_global_norm(grads, 5.0)
    assert fired.asscalar() == 1.0
    for g, ref in zip(grads, g64):
        np.testing.assert_allclose(g.asnumpy(), ref * 5.0 / (norm + 1e-6), rtol=1e-5)
    small = [nd.array([0.3, 0.4])]
    assert clip_by_global_norm(small, 1.0).asscalar() == 0.0
    np.testing.assert_array_equal(small[0].asnumpy(), np.float32([0.3, 0.4]))


def test_the_step_clips_before_the_update_and_counts():
    rng = np.random.default_rng(3)
    X, y = nd.array(rng.random((32, 1, 28, 28))), nd.array(rng.integers(0, 10, 32))
    results = {}
    for max_norm in (None, 1e-3):
        params, state = models.lenet_params(mx.cpu(), seed=0)
        before = {k: v.asnumpy().copy() for k, v in params.items()}
        opt = SGD(lr=1.0)
        step = SingleDeviceStep(models.lenet, params, state, opt, opt.init(params), clip_grad_norm=max_norm)
        step(X, y)
        moved = np.sqrt(sum(((params[k].asnumpy() - before[k]).astype(np.float64) ** 2).sum() for k in params))
        results[max_norm] = (moved, step.clipper.take_count())
    assert results[None][1] is None
    assert results[1e-3][1] == 1
    assert results[1e-3][0] == pytest.approx(1e-3, rel=1e-3)   # lr 1: the step is the clipped gradient
    assert results[None][0] > 10 * 1e-3


def test_clipped_counts_per_epoch_reach_the_history(tiny_data, tmp_path):
    metrics = train_cnn(config(tiny_data, epochs=2, clip_grad_norm=1e-3), str(tmp_path / "r"), log=quiet,
                        progress=False)
    iters = -(-500 // 64)
    assert [h["clipped"] for h in metrics["history"]] == [iters, iters]
    assert "clipped" in (tmp_path / "r" / "metrics.csv").read_text().splitlines()[0]


# ---------------------------------------------------------------------------------------------- fine-tuning
@pytest.fixture(scope="module")
def pretrained(tiny_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pre") / "run")
    train_cnn(config(tiny_data, epochs=1), out, log=quiet, progress=False)
    return os.path.join(out, "checkpoint.params")


@pytest.mark.parametrize("graph", ["static", "imperative"])
def test_frozen_bn_fine_tuning_keeps_the_moving_statistics_bit_for_bit(tiny_data, tmp_path, pretrained, graph):
    start = load_checkpoint(pretrained, mx.cpu())
    train_cnn(config(tiny_data, epochs=2, init_from=pretrained, bn_mode="frozen", graph=graph),
              str(tmp_path / "ft"), log=quiet, progress=False)
    tuned = load_checkpoint(str(tmp_path / "ft" / "checkpoint.params"), mx.cpu())
    for name, value in start["state"].items():
        np.testing.assert_array_equal(tuned["state"][name].asnumpy(), value.asnumpy(), err_msg=name)
    assert not np.array_equal(tuned["params"]["bn1_gamma"].asnumpy(), start["params"]["bn1_gamma"].asnumpy())
    assert not np.array_equal(tuned["params"]["conv1_weight"].asnumpy(), start["params"]["conv1_weight"].asnumpy())


def test_freeze_affine_keeps_gamma_and_beta(tiny_data, tmp_path, pretrained):
    start = load_checkpoint(pretrained, mx.cpu())
    train_cnn(config(tiny_data, epochs=1, init_from=pretrained, freeze_affine=True), str(tmp_path / "ft"),
              log=quiet, progress=False)
    tuned = load_checkpoint(str(tmp_path / "ft" / "checkpoint.params"), mx.cpu())
    for name, value in start["params"].items():
        same = np.array_equal(tuned["params"][name].asnumpy(), value.asnumpy())
        assert same == name.endswith(("_gamma", "_beta")), name
    assert not np.array_equal(tuned["state"]["bn1_moving_mean"].asnumpy(), start["state"]["bn1_moving_mean"].asnumpy())


def test_init_from_starts_at_the_other_runs_values(tiny_data, tmp_path, pretrained):
    lines = []
    metrics = train_cnn(config(tiny_data, epochs=1, init_from=pretrained, lr=1e-30), str(tmp_path / "ft"),
                        log=lines.append, progress=False)
    before = json.loads(open(os.path.join(os.path.dirname(pretrained), "metrics.json")).read())
    assert metrics["history"][0]["test_acc"] == pytest.approx(before["history"][-1]["test_acc"], abs=0.02)
    assert any(line.startswith(f"initialized from {pretrained}") for line in lines)


@pytest.mark.parametrize("make,says", [
    (lambda d: os.path.join(d, "missing.params"), "No such file|not found|missing"),
    (lambda d: _write(os.path.join(d, "empty.params"), b""), "empty|Invalid|truncated|read"),
    (lambda d: d, "parameters"),   # replaced below by a checkpoint of another architecture
])
def test_init_from_a_bad_checkpoint_is_refused_before_out_is_touched(tiny_data, tmp_path, make, says):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    source = make(str(tmp_path))
    if source == str(tmp_path):   # a --no-bn run's checkpoint into a BN net
        train_cnn(config(tiny_data, epochs=1, use_bn=False), str(tmp_path / "nobn"), log=quiet, progress=False)
        source = str(tmp_path / "nobn" / "checkpoint.params")
    with pytest.raises((CheckpointError, ConfigError), match=says):
        train_cnn(config(tiny_data, epochs=1, init_from=source), str(out), log=quiet, progress=False)
    assert sorted(os.listdir(out)) == ["keep.txt"]


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path
