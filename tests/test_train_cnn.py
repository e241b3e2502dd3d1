"""The trainer end to end on tiny generated idx files (no data committed)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import mxnet as mx

from mxbn.checkpoint import load_checkpoint
from mxbn.config import ConfigError, TrainConfig
from mxbn.run import OutDirError, eval_checkpoint, train_cnn

from helpers import make_idx_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "train_cnn.py")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_idx_dataset(tmp_path_factory.mktemp("tiny"), n_train=600, n_test=200)


def quiet(*_):
    pass


def config(data_dir, **kw):
    base = dict(ctx="cpu", data_dir=data_dir, epochs=3, batch_size=64, lr=0.2, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_loss_goes_down_and_files_are_written(tiny_data, tmp_path):
    metrics = train_cnn(config(tiny_data, epochs=4), str(tmp_path / "run"), log=quiet, progress=False)
    hist = metrics["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    assert hist[-1]["train_loss"] < 0.5 * hist[0]["train_loss"]
    assert hist[-1]["test_acc"] > 0.9  # the bars task is easy once learned; chance is 0.1
    for f in ("config.json", "checkpoint.params", "metrics.json", "metrics.csv", "curves.png"):
        assert os.path.getsize(tmp_path / "run" / f) > 0
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["history"] == hist and saved["dataset"] == "fashion-mnist"
    csv_lines = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,") and len(csv_lines) == 5
    # exact accuracy over all samples: a multiple of 1/200
    assert abs(hist[-1]["test_acc"] * 200 - round(hist[-1]["test_acc"] * 200)) < 1e-9


def test_same_seed_same_numbers(tiny_data, tmp_path):
    a = train_cnn(config(tiny_data, epochs=2), str(tmp_path / "a"), log=quiet, progress=False)
    b = train_cnn(config(tiny_data, epochs=2), str(tmp_path / "b"), log=quiet, progress=False)
    for ha, hb in zip(a["history"], b["history"]):
        assert ((ha["train_loss"], ha["test_acc"], ha["test_loss"])
                == (hb["train_loss"], hb["test_acc"], hb["test_loss"]))


@pytest.mark.parametrize("kw", [dict(), dict(optimizer="adam", lr=0.01, lr_schedule="cosine", warmup_epochs=1,
                                          augment=True, weight_decay=1e-4)])
def test_resume_is_identical_to_an_uninterrupted_run(tiny_data, tmp_path, kw):
    full = train_cnn(config(tiny_data, epochs=3, **kw), str(tmp_path / "full"), log=quiet, progress=False)
    part_dir = str(tmp_path / "part")
    _train_first_epochs(config(tiny_data, epochs=3, **kw), part_dir, 2)
    resumed = train_cnn(config(tiny_data, epochs=3, **kw), part_dir, resume=True, log=quiet, progress=False)
    keys = ("train_loss", "train_acc", "test_loss", "test_acc", "lr")
    assert [[h[k] for k in keys] for h in resumed["history"]] == [[h[k] for k in keys] for h in full["history"]]
    a = load_checkpoint(os.path.join(tmp_path / "full", "checkpoint.params"), mx.cpu())
    b = load_checkpoint(os.path.join(part_dir, "checkpoint.params"), mx.cpu())
    for group in ("params", "state"):
        for name in a[group]:
            np.testing.assert_array_equal(a[group][name].asnumpy(), b[group][name].asnumpy(), err_msg=name)


def _train_first_epochs(cfg, out_dir, epochs_done):
    """A run of ``cfg`` stopped after ``epochs_done`` epochs, as an interruption would leave it.

    fit logs an epoch's line before writing its checkpoint, so stopping at the
    line of epoch ``epochs_done + 1`` leaves the checkpoint of ``epochs_done``.
    """
    class Stop(Exception):
        pass

    def log(line):
        if line.startswith(f"epoch {epochs_done + 1}/"):
            raise Stop

    with pytest.raises(Stop):
        train_cnn(cfg, out_dir, log=log, progress=False)
    assert load_checkpoint(os.path.join(out_dir, "checkpoint.params"), mx.cpu())["meta"]["epoch"] == epochs_done


def test_eval_only_gives_the_recorded_accuracy(tiny_data, tmp_path):
    metrics = train_cnn(config(tiny_data, epochs=2), str(tmp_path / "run"), log=quiet, progress=False)
    loss, acc, recorded = eval_checkpoint(str(tmp_path / "run" / "checkpoint.params"), "cpu", tiny_data, log=quiet)
    assert acc == recorded == metrics["history"][-1]["test_acc"]
    assert loss == pytest.approx(metrics["history"][-1]["test_loss"], rel=1e-6)


def test_out_dir_with_a_run_is_refused_unless_resume_or_overwrite(tiny_data, tmp_path):
    out = str(tmp_path / "run")
    train_cnn(config(tiny_data, epochs=1), out, log=quiet, progress=False)
    with pytest.raises(OutDirError, match="already holds a run"):
        train_cnn(config(tiny_data, epochs=1), out, log=quiet, progress=False)
    train_cnn(config(tiny_data, epochs=1), out, overwrite=True, log=quiet, progress=False)
    with pytest.raises(ConfigError, match=r"differ from the checkpoint's: lr \(checkpoint 0.2, now 0.1\)"):
        train_cnn(config(tiny_data, epochs=2, lr=0.1), out, resume=True, log=quiet, progress=False)


def test_no_bn_and_scratch_bn_run(tiny_data, tmp_path):
    a = train_cnn(config(tiny_data, epochs=1, use_bn=False), str(tmp_path / "a"), log=quiet, progress=False)
    b = train_cnn(config(tiny_data, epochs=1, bn_impl="scratch", graph="imperative"), str(tmp_path / "b"),
                  log=quiet, progress=False)
    c = train_cnn(config(tiny_data, epochs=1, bn_impl="fused", graph="imperative"), str(tmp_path / "c"),
                  log=quiet, progress=False)
    d = train_cnn(config(tiny_data, epochs=1, layout_pass=False), str(tmp_path / "d"), log=quiet, progress=False)
    assert a["history"][0]["train_loss"] > 0
    # scratch and fused compute the same function with different rounding; static = fused in one graph (the
    # layout pass runs other kernels, whose rounding differences grow over an epoch: tests/test_layout.py)
    assert b["history"][0]["test_acc"] == pytest.approx(c["history"][0]["test_acc"], abs=0.02)
    assert d["history"][0]["train_loss"] == pytest.approx(c["history"][0]["train_loss"], rel=1e-4)
    # scratch under mxbn.jit (the default graph): the same function as the imperative scratch path
    e = train_cnn(config(tiny_data, epochs=1, bn_impl="scratch"), str(tmp_path / "e"), log=quiet, progress=False)
    assert e["history"][0]["train_loss"] == pytest.approx(b["history"][0]["train_loss"], rel=1e-4)


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=timeout)


def test_cli_gpu_falls_back_with_a_warning_and_writes_outputs(tiny_data, tmp_path):
    out = run_cli("--ctx", "gpu", "--data-dir", tiny_data, "--epochs", "1", "--batch-size", "100",
                  "--out", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr
    if mx.context.num_gpus() == 0:
        assert "warning: --ctx gpu requested but" in out.stdout and "training on the CPU" in out.stdout
    assert "epoch 1/1" in out.stdout and "done: 1 epochs" in out.stdout
    assert os.path.exists(tmp_path / "run" / "curves.png")


@pytest.mark.parametrize("args,pattern", [
    (["--lr", "-1"], "lr must be a finite number > 0"),
    (["--epochs", "0"], "epochs must be a positive integer"),
    (["--batch-size", "0"], "batch_size must be a positive integer"),
    (["--limit-train", "0"], "limit_train must be a positive integer"),
    (["--batch-size", "100000"], "batch_size 100000 is larger than the training set"),
    (["--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
    (["--dataset", "cifar"], "invalid choice: 'cifar'"),
    (["--ctx", "gpu:7"], "gpu:7: this machine has"),
    (["--ctx", "tpu"], "--ctx must be cpu, gpu"),
])
def test_cli_bad_arguments_are_usage_errors(tiny_data, tmp_path, args, pattern):
    if args[:2] == ["--ctx", "gpu:7"] and mx.context.num_gpus() > 7:
        pytest.skip("this machine has 8 GPUs")
    out = run_cli("--data-dir", tiny_data, "--out", str(tmp_path / "run"), "--ctx", "cpu", *args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert pattern in out.stderr
    assert not os.path.exists(tmp_path / "run" / "checkpoint.params")
