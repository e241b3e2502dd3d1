"""Faults users hit: divergence, interruption (SIGINT, SIGTERM, SIGKILL), corrupt files, bad arguments."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import mxnet as mx
from mxnet import nd

from mxbn import models
from mxbn.checkpoint import CheckpointError, check_compatible, load_checkpoint
from mxbn.config import TrainConfig
from mxbn.run import train_cnn
from mxbn.train import TrainingDiverged

from helpers import make_idx_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "train_cnn.py")
KEYS = ("train_loss", "train_acc", "test_loss", "test_acc", "lr")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_idx_dataset(tmp_path_factory.mktemp("tiny"), n_train=1280, n_test=200)


def cfg(data_dir, **kw):
    return TrainConfig(**{**dict(ctx="cpu", data_dir=data_dir, epochs=2, batch_size=32, seed=0), **kw})


def quiet(*_):
    pass


def sha1(path):
    return hashlib.sha1(open(path, "rb").read()).hexdigest()


def nan_at(epoch_batch_pairs, monkeypatch):
    """Make LeNet's loss NaN at the given (epoch, batch) calls (1-based), counting training calls."""
    real = models.lenet
    calls = {"n": 0}
    per_epoch = 40  # 1280 / 32

    def poisoned(params, state, X, is_training, **kw):
        out = real(params, state, X, is_training, **kw)
        if is_training:
            calls["n"] += 1
            epoch, batch = divmod(calls["n"] - 1, per_epoch)
            if (epoch + 1, batch + 1) in epoch_batch_pairs:
                out = out * float("nan")
        return out
    monkeypatch.setattr("mxbn.predict.lenet", poisoned)  # make_net builds the trainer's net there


def test_divergence_names_epoch_and_batch_and_keeps_the_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    out = str(tmp_path / "run")
    # the poisoned net is the imperative functional LeNet
    train_cnn(cfg(tiny, epochs=1, graph="imperative"), out, log=quiet, progress=False)
    before = {f: sha1(os.path.join(out, f)) for f in ("checkpoint.params", "metrics.json", "metrics.csv")}
    # the poisoned counter starts at the resumed run's first training call (the run's epoch 2)
    nan_at({(1, 7)}, monkeypatch)
    with pytest.raises(TrainingDiverged, match=r"non-finite training loss in epoch 2 at batch 7"):
        train_cnn(cfg(tiny, epochs=3, graph="imperative"), out, resume=True, log=quiet, progress=False)
    assert {f: sha1(os.path.join(out, f)) for f in before} == before


def test_on_nan_skip_counts_and_is_bounded(tiny, tmp_path, monkeypatch):
    nan_at({(1, 3), (1, 9)}, monkeypatch)
    # every training image (no validation split): the count is of the whole generated set
    m = train_cnn(cfg(tiny, epochs=1, graph="imperative", val_size=0), str(tmp_path / "a"), on_nan="skip",
                  log=quiet, progress=False)
    assert m["history"][0]["skipped"] == 2 and m["history"][0]["samples"] == 1280 - 64
    nan_at({(1, b) for b in range(1, 13)}, monkeypatch)
    with pytest.raises(TrainingDiverged, match="more than 10 batches with a non-finite loss in epoch 1"):
        train_cnn(cfg(tiny, epochs=1, graph="imperative"), str(tmp_path / "b"), on_nan="skip", log=quiet,
                  progress=False)


def test_cli_huge_lr_exits_nonzero_with_the_cause(tiny, tmp_path):
    out = subprocess.run([sys.executable, SCRIPT, "--ctx", "cpu", "--data-dir", tiny, "--lr", "1e4", "--no-bn",
                          "--init", "he", "--epochs", "1", "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 3, out.stderr
    assert "non-finite training loss in epoch 1 at batch" in out.stderr and "learning rate" in out.stderr
    assert not os.path.exists(tmp_path / "run" / "checkpoint.params")


def start(args, tmp_path, name):
    log = open(tmp_path / f"{name}.log", "w")
    proc = subprocess.Popen([sys.executable, "-u", SCRIPT, *args], stdout=log, stderr=subprocess.STDOUT)
    return proc, tmp_path / f"{name}.log"


def wait_for(path, text, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if text in path.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended before {text!r}:\n{path.read_text()}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {text!r}")


def history(out_dir):
    return [[h[k] for k in KEYS] for h in json.loads(open(os.path.join(out_dir, "metrics.json")).read())["history"]]


@pytest.fixture(scope="module")
def reference_run(tiny, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ref") / "run")
    train_cnn(cfg(tiny, epochs=3), out, log=quiet, progress=False)
    return out


ARGS = ["--ctx", "cpu", "--epochs", "3", "--batch-size", "32", "--seed", "0", "--no-progress"]


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 130)])
def test_signal_writes_a_resumable_checkpoint_and_resume_matches(tiny, tmp_path, reference_run, sig, code):
    out = str(tmp_path / "run")
    proc, log = start([*ARGS, "--data-dir", tiny, "--out", out], tmp_path, "first")
    wait_for(log, "epoch 1/3", proc)
    time.sleep(0.3)  # land inside epoch 2
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == code, log.read_text()
    text = log.read_text()
    assert "interrupted in epoch" in text and "--resume" in text
    ckpt = load_checkpoint(os.path.join(out, "checkpoint.params"), mx.cpu())
    assert ckpt["meta"]["position"]["epoch"] >= 1
    done = subprocess.run([sys.executable, SCRIPT, *ARGS, "--data-dir", tiny, "--out", out, "--resume"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert history(out) == history(reference_run)


def test_sigkill_at_several_points_never_corrupts_and_resume_matches(tiny, tmp_path, reference_run):
    out = str(tmp_path / "run")
    first = True

    def continuation():
        # what a user passes next: --resume once a checkpoint exists; before that a killed run may
        # still have left its config.json (nothing to resume), which only --overwrite replaces
        if not first:
            return ["--resume"]
        return ["--overwrite"] if os.path.isdir(out) and os.listdir(out) else []

    for delay in (1.0, 0.6, 1.5, 0.3):
        args = [*ARGS, "--data-dir", tiny, "--out", out] + continuation()
        proc, log = start(args, tmp_path, f"kill{delay}")
        wait_for(log, "data:", proc)  # killed during training, not during start-up
        time.sleep(delay)
        proc.kill()
        proc.wait(timeout=60)
        ckpt_path = os.path.join(out, "checkpoint.params")
        if os.path.exists(ckpt_path):
            load_checkpoint(ckpt_path, mx.cpu())  # never truncated: loads or raises
            first = False
        for name in os.listdir(out):
            if name.endswith(".json"):
                json.loads(open(os.path.join(out, name)).read())  # complete JSON, never half-written
    args = [*ARGS, "--data-dir", tiny, "--out", out] + continuation()
    done = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert history(out) == history(reference_run)
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_bad_data_is_an_error_before_training(tiny, tmp_path):
    bad = make_idx_dataset(tmp_path / "bad", n_train=64, n_test=32)
    with open(os.path.join(bad, "t10k-labels-idx1-ubyte.gz"), "r+b") as f:
        f.truncate(10)
    out = subprocess.run([sys.executable, SCRIPT, "--ctx", "cpu", "--data-dir", bad, "--batch-size", "16",
                          "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert "t10k-labels-idx1-ubyte.gz" in out.stderr and "corrupt or truncated gzip" in out.stderr
    assert "epoch 1" not in out.stdout


def test_out_that_is_a_file_is_a_usage_error(tiny, tmp_path):
    target = tmp_path / "file"
    target.write_text("keep me")
    out = subprocess.run([sys.executable, SCRIPT, "--ctx", "cpu", "--data-dir", tiny, "--out", str(target)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "exists and is not a directory" in out.stderr
    assert target.read_text() == "keep me"


def test_checkpoint_of_another_architecture_lists_the_mismatches(tiny, tmp_path):
    out = str(tmp_path / "run")
    train_cnn(cfg(tiny, epochs=1), out, log=quiet, progress=False)
    ckpt = load_checkpoint(os.path.join(out, "checkpoint.params"), mx.cpu())
    assert ckpt["meta"]["mxbn_version"] and ckpt["meta"]["config"]["use_bn"] is True
    no_bn, _ = models.lenet_params(mx.cpu(), use_bn=False)
    with pytest.raises(CheckpointError) as info:
        check_compatible("ckpt", no_bn, ckpt["params"], "parameters")
    msg = str(info.value)
    assert "bn1_gamma: in checkpoint (20,), not in this model" in msg
    assert "conv1_bias: missing in checkpoint (model expects (20,))" in msg


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "checkpoint.params"
    path.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="not a readable mxbn checkpoint"):
        load_checkpoint(str(path), mx.cpu())
    nd.save(str(path), {"w": nd.ones(2)})
    with pytest.raises(CheckpointError, match="no 'meta' entry"):
        load_checkpoint(str(path), mx.cpu())


needs_non_root = pytest.mark.skipif(os.geteuid() == 0, reason="root bypasses file permissions")


@needs_non_root
def test_unreadable_data_dir_and_unwritable_out(tiny, tmp_path):
    locked = make_idx_dataset(tmp_path / "locked", n_train=64, n_test=32)
    os.chmod(locked, 0)
    try:
        out = subprocess.run([sys.executable, SCRIPT, "--ctx", "cpu", "--data-dir", locked,
                              "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
        assert out.returncode == 1 and "permission denied" in out.stderr
    finally:
        os.chmod(locked, 0o755)
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    try:
        out = subprocess.run([sys.executable, SCRIPT, "--ctx", "cpu", "--data-dir", tiny, "--out", str(ro)],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and "not writable" in out.stderr
    finally:
        os.chmod(ro, 0o755)
