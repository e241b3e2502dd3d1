"""Data parallelism: synchronized BN, several CPU contexts, the kvstore, and a local dist_sync job.

Reference for "same as one device": a single context with the full batch and
``bn_impl="scratch"`` (float32 statistics accurate to ~1e-6).  MXNet's fused
CPU kernel is not used as the reference here: its float32 gradients for
LeNet-sized channels are ~10x less accurate (naive sums over 73,728 values per
channel; see docs/batch_norm.md), which alone exceeds rtol 1e-5 after one step.
"""
import functools
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

import mxnet as mx
from mxnet import autograd, nd

import mxbn
from mxbn.config import ConfigError, TrainConfig
from mxbn.context import ContextError, parse_contexts, resolve_contexts
from mxbn.models import LENET_STAGE_NORMS, LENET_STAGES, lenet, lenet_params
from mxbn.optim import make_optimizer
from mxbn.parallel import (DataParallelStep, KVStoreError, across_devices, create_kvstore, fingerprint, jitted_stages,
                           per_device, shard, split_sizes, sync_batch_norm)
from mxbn.run import train_cnn
from mxbn.train import SingleDeviceStep, TrainingDiverged, TrainingInterrupted, fit

from helpers import learnable_images, make_idx_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWO = [mx.cpu(0), mx.cpu(1)]


def quiet(*_):
    pass


# --------------------------------------------------------------------------- contexts
def test_context_lists():
    assert parse_contexts("cpu:0,cpu:1") == [("cpu", 0), ("cpu", 1)]
    assert parse_contexts("gpu:1") == [("gpu", 1)]
    assert resolve_contexts("cpu:0, cpu:1") == TWO
    assert resolve_contexts("cpu") == [mx.cpu()]
    for spec, msg in [("cpu:0,gpu:1", "mixes CPU and GPU"), ("cpu:0,cpu:0", "more than once"),
                      ("cpu,cpu:1", "needs its index"), ("cpu:0,tpu:1", "'tpu:1' in 'cpu:0,tpu:1' is not")]:
        with pytest.raises(ContextError, match=msg):
            parse_contexts(spec)
    # a list is explicit: a GPU in it that cannot run kernels is an error, never a silent fallback
    with pytest.raises(ContextError, match="gpu:1: a test kernel failed"):
        resolve_contexts("gpu:0,gpu:1", num_gpus=lambda: 2,
                         probe=lambda c: "a test kernel failed on gpu(1): no kernel image" if c.device_id else None)


def test_split_sizes_and_shards():
    assert split_sizes(7, 2) == [4, 3] and split_sizes(8, 3) == [3, 3, 2]
    with pytest.raises(ValueError, match="cannot be split over 3 devices"):
        split_sizes(2, 3)
    X, y = np.arange(11), np.arange(11) * 10
    parts = [shard(X, y, r, 3) for r in range(3)]
    assert [list(p[0]) for p in parts] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert all(p[2] == 2 for p in parts) and list(parts[1][1]) == [30, 40, 50]


def test_dist_kvstore_without_launch_variables_is_refused():
    with pytest.raises(KVStoreError, match="DMLC_ROLE, DMLC_PS_ROOT_URI.* are not set; start the job with"):
        create_kvstore("dist_sync", environ={})
    with pytest.raises(KVStoreError, match="must be one of"):
        create_kvstore("nccl", environ={})


@pytest.mark.parametrize("kw,msg", [
    (dict(ctx="cpu", bn_sync=True, graph="imperative"), "names one; list several"),
    (dict(ctx="cpu:0,cpu:1", bn_sync=True, graph="imperative", use_bn=False), "cannot be combined with --no-bn"),
    (dict(ctx="cpu:0,cpu:1", graph="imperative", bn_impl="scratch"), "cannot run on several CPU contexts"),
    (dict(ctx="cpu:0,cpu:1", graph="imperative", bn_impl="scratch", bn_sync=True), "cannot run on several CPU"),
    (dict(ctx="cpu:0,gpu:0"), "mixes CPU and GPU"),
    (dict(kvstore="dist_async"), "kvstore must be one of"),
])
def test_parallel_options_are_validated(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        TrainConfig(**kw).validate()


# --------------------------------------------------------------------------- sync_batch_norm
def _bn_inputs(rng, shape, dtype):
    C = shape[1]
    return (rng.normal(3.0, 2.0, size=shape).astype(dtype), rng.normal(size=shape).astype(dtype),
            rng.normal(1.0, 0.3, size=C).astype(dtype), rng.normal(size=C).astype(dtype))


def _single_device(X, W, g, b, dtype):
    x, gamma, beta = nd.array(X, dtype=dtype), nd.array(g, dtype=dtype), nd.array(b, dtype=dtype)
    mm, mv = nd.zeros(len(g), dtype=dtype), nd.ones(len(g), dtype=dtype)
    for a in (x, gamma, beta):
        a.attach_grad()
    with autograd.record():
        Y = mxbn.batch_norm(x, gamma, beta, True, mm, mv, impl="scratch")
        loss = (Y * nd.array(W, dtype=dtype)).sum()
    loss.backward()
    return [a.asnumpy() for a in (Y, x.grad, gamma.grad, beta.grad, mm, mv)]


def _across(X, W, g, b, dtype, sizes, contexts):
    bounds = np.cumsum([0] + list(sizes))
    xs = [nd.array(X[a:e], ctx=c, dtype=dtype) for a, e, c in zip(bounds, bounds[1:], contexts)]
    gs = [nd.array(g, ctx=c, dtype=dtype) for c in contexts]
    bs = [nd.array(b, ctx=c, dtype=dtype) for c in contexts]
    mms = [nd.zeros(len(g), ctx=c, dtype=dtype) for c in contexts]
    mvs = [nd.ones(len(g), ctx=c, dtype=dtype) for c in contexts]
    for a in xs + gs + bs:
        a.attach_grad()
    with autograd.record():
        Ys = sync_batch_norm(xs, gs, bs, True, mms, mvs)
        losses = [(Y * nd.array(W[a:e], ctx=c, dtype=dtype)).sum()
                  for Y, a, e, c in zip(Ys, bounds, bounds[1:], contexts)]
    autograd.backward(losses)
    assert [Y.context for Y in Ys] == [x.grad.context for x in xs] == list(contexts)
    for copies in (mms, mvs):  # every device's moving statistics are the same numbers
        assert all((m.asnumpy() == copies[0].asnumpy()).all() for m in copies[1:])
    return [np.concatenate([Y.asnumpy() for Y in Ys]), np.concatenate([x.grad.asnumpy() for x in xs]),
            sum(a.grad.asnumpy() for a in gs), sum(a.grad.asnumpy() for a in bs), mms[0].asnumpy(),
            mvs[0].asnumpy()]


@pytest.mark.parametrize("shape,sizes,n_ctx", [((10, 4, 5, 5), (3, 7), 2), ((9, 6), (3, 3, 3), 3),
                                               ((8, 3, 7), (5, 3), 2)])
def test_sync_batch_norm_equals_one_device_with_the_whole_batch_float64(shape, sizes, n_ctx):
    """Outputs, input gradients, summed gamma/beta gradients and moving statistics, to float64 rounding."""
    X, W, g, b = _bn_inputs(np.random.default_rng(sum(shape)), shape, "float64")
    want = _single_device(X, W, g, b, "float64")
    got = _across(X, W, g, b, "float64", sizes, [mx.cpu(i) for i in range(n_ctx)])
    for name, w, h in zip(["Y", "dX", "dgamma", "dbeta", "moving_mean", "moving_vari"], want, got):
        np.testing.assert_allclose(h, w, rtol=1e-10, atol=1e-12, err_msg=name)


def test_sync_batch_norm_float32_and_large_mean():
    """Chan's combination keeps two-pass accuracy where E[x^2]-E[x]^2 would lose every digit."""
    rng = np.random.default_rng(3)
    X = (1e4 + rng.normal(size=(16, 3, 4, 4))).astype("float32")
    W = rng.normal(size=X.shape).astype("float32")
    g, b = np.ones(3, "float32"), np.zeros(3, "float32")
    ref = _single_device(X.astype("float64"), W.astype("float64"), g.astype("float64"), b.astype("float64"),
                         "float64")
    got = _across(X, W, g, b, "float32", (8, 8), TWO)
    assert np.abs(got[5] - ref[5]).max() / ref[5].max() < 1e-2   # variance ~1 under a mean of 1e4
    np.testing.assert_allclose(got[0], ref[0], atol=2e-2)


def test_sync_batch_norm_inference_uses_each_devices_moving_statistics():
    rng = np.random.default_rng(1)
    xs = [nd.array(rng.normal(size=(4, 3)), ctx=c) for c in TWO]
    mm, mv = [nd.array([1.0, 2.0, 3.0], ctx=c) for c in TWO], [nd.array([4.0, 1.0, 0.25], ctx=c) for c in TWO]
    gs, bs = [nd.ones(3, ctx=c) for c in TWO], [nd.zeros(3, ctx=c) for c in TWO]
    Ys = sync_batch_norm(xs, gs, bs, False, mm, mv)
    for x, Y in zip(xs, Ys):
        want = (x.asnumpy() - [1, 2, 3]) / np.sqrt(np.array([4.0, 1.0, 0.25]) + 1e-5)
        np.testing.assert_allclose(Y.asnumpy(), want, rtol=1e-5)
    assert mm[0].asnumpy().tolist() == [1.0, 2.0, 3.0]


def test_sync_batch_norm_bad_input():
    xs = [nd.ones((2, 3), ctx=c) for c in TWO]
    one = [nd.ones(3, ctx=c) for c in TWO]
    with pytest.raises(ValueError, match="gammas must be a list with one array per device"):
        sync_batch_norm(xs, one[:1], one, True, one, one)
    with pytest.raises(ValueError, match="differ only in the batch axis"):
        sync_batch_norm([xs[0], nd.ones((2, 3, 1), ctx=mx.cpu(1))], one, one, True, one, one)
    with pytest.raises(ValueError, match="same context"):
        sync_batch_norm([nd.ones((2, 3)), nd.ones((2, 3))], [nd.ones(3)] * 2, [nd.ones(3)] * 2, True,
                        [nd.ones(3)] * 2, [nd.ones(3)] * 2)
    with pytest.raises(ValueError, match=r"gamma is on cpu\(0\) but X is on cpu\(1\)"):
        sync_batch_norm(xs, [one[0], one[0]], one, True, one, one)
    with pytest.raises(ValueError, match="at least 2 values per channel in all"):
        sync_batch_norm([nd.ones((1, 3))], [one[0]], [one[0]], True, [one[0]], [one[0]])


# --------------------------------------------------------------------------- data-parallel steps
def _batch(n=64, seed=0):
    images, labels = learnable_images(n, np.random.default_rng(seed))
    return (nd.array(images.reshape(n, 1, 28, 28).astype("float32") / 255.0),
            nd.array(labels.astype("float32")))


def _train_steps(step, X, y, k, batch=32):
    losses = []
    for i in range(k):
        j = (i * batch) % X.shape[0]
        loss, _ = step.forward_backward(X[j:j + batch], y[j:j + batch])
        step.apply(None)
        losses.append(loss.asscalar())
    return np.array(losses)


def _lenet_and_step(kind, optimizer, contexts=TWO):
    params, state = lenet_params(mx.cpu(0), seed=3)
    opt_state = optimizer.init(params)
    if kind == "single":
        step = SingleDeviceStep(functools.partial(lenet, bn_impl="scratch"), params, state, optimizer, opt_state)
    else:
        forward = {"sync": functools.partial(across_devices, LENET_STAGES, LENET_STAGE_NORMS),
                   "sync-jit": functools.partial(across_devices, jitted_stages(LENET_STAGES), LENET_STAGE_NORMS),
                   "plain": per_device(mxbn.jit(lenet))}[kind]
        step = DataParallelStep(forward, contexts, params, state, optimizer, opt_state, create_kvstore("device"),
                                stats_synchronized=kind.startswith("sync"))
    return params, state, step


@pytest.mark.parametrize("kind", ["sync", "sync-jit"])
@pytest.mark.parametrize("optimizer", [make_optimizer("sgd", 0.1), make_optimizer("momentum", 0.05, momentum=0.9)],
                         ids=["sgd", "momentum"])
def test_two_contexts_with_bn_sync_equal_one_context_with_the_full_batch(optimizer, kind):
    X, y = _batch()
    k = 3
    p1, s1, single = _lenet_and_step("single", optimizer)
    p2, s2, para = _lenet_and_step(kind, optimizer)
    want, got = _train_steps(single, X, y, k), _train_steps(para, X, y, k)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for name in p1:   # atol: parameters ~1e-2..1, float32 sums in another order differ by ~1e-7
        np.testing.assert_allclose(p2[name].asnumpy(), p1[name].asnumpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    for name in s1:
        np.testing.assert_allclose(s2[name].asnumpy(), s1[name].asnumpy(), rtol=1e-5, atol=1e-6, err_msg=name)
    assert para.replicas_identical()
    assert p2["bn1_gamma"].asnumpy().tolist() != [1.0] * 20  # it trained


def test_without_sync_each_device_normalizes_its_slice_and_copies_stay_identical():
    optimizer = make_optimizer("sgd", 0.1)
    X, y = _batch()
    _, _, synced = _lenet_and_step("sync", optimizer)
    p, s, plain = _lenet_and_step("plain", optimizer)
    a, b = _train_steps(synced, X, y, 3), _train_steps(plain, X, y, 3)
    assert plain.replicas_identical()
    assert fingerprint(plain.params[0]) == fingerprint(plain.params[1])
    assert not np.allclose(a[1:], b[1:], rtol=1e-6)  # per-slice statistics are a different model
    # the moving statistics are the average of the devices' own (one step from 0/1, momentum 0.9)
    _, s_one, one = _lenet_and_step("plain", optimizer)
    one.forward_backward(X[:32], y[:32])
    halves = []
    for half in (slice(0, 16), slice(16, 32)):
        params, state = lenet_params(mx.cpu(0), seed=3)
        mxbn.jit(lenet)(params, state, X[half], True)
        halves.append(state["bn2_moving_mean"].asnumpy())
    one.apply(None)
    np.testing.assert_allclose(s_one["bn2_moving_mean"].asnumpy(), (halves[0] + halves[1]) / 2, rtol=1e-5,
                               atol=1e-7)
    assert one.replicas_identical()


class _FakeCollective(SingleDeviceStep):
    """A one-process stand-in for a worker whose peers report through ``agree``."""
    collective = True

    def __init__(self, *args, answer):
        super().__init__(*args)
        self.answer, self.calls = answer, []

    def agree(self, flags):
        self.calls.append(list(flags))
        return self.answer(flags)


@pytest.mark.parametrize("answer,error", [
    (lambda f: [True, f[1]], TrainingDiverged),    # another worker saw a NaN
    (lambda f: [f[0], True], TrainingInterrupted),  # another worker was asked to stop
])
def test_collective_steps_decide_together_at_sync_points(answer, error, monkeypatch):
    import mxbn.train as T
    monkeypatch.setattr(T, "SYNC_EVERY", 2)
    X, y = _batch(96)
    params, state = lenet_params(mx.cpu(0), seed=0)
    optimizer = make_optimizer("sgd", 0.1)
    opt_state = optimizer.init(params)
    step = _FakeCollective(lenet, params, state, optimizer, opt_state, answer=answer)
    with pytest.raises(error) as info:
        fit(lenet, params, state, optimizer, opt_state, (X, y), (X, y), 1, 16, step=step, log=quiet,
            stop_requested=lambda: False)
    assert step.calls == [[False, False]]  # asked once, at the first sync point (batch 2), then acted on it
    if error is TrainingDiverged:
        assert "on another worker in epoch 1 by batch 2" in str(info.value)
    else:
        assert info.value.position["batch"] == 2
    with pytest.raises(ValueError, match="on_nan='skip' cannot be used across processes"):
        fit(lenet, params, state, optimizer, opt_state, (X, y), (X, y), 1, 16, step=step, on_nan="skip")


# --------------------------------------------------------------------------- the trainer
@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_idx_dataset(tmp_path_factory.mktemp("tiny-parallel"), n_train=256, n_test=64)


def test_train_cnn_on_two_contexts_with_and_without_bn_sync(tiny_data, tmp_path):
    base = dict(ctx="cpu:0,cpu:1", data_dir=tiny_data, epochs=2, batch_size=32, lr=0.2, seed=0)
    lines = []
    a = train_cnn(TrainConfig(**base), str(tmp_path / "a"), log=lines.append, progress=False)
    # --bn-sync with the default graph: the stages between the synchronized BNs run through mxbn.jit
    b = train_cnn(TrainConfig(bn_sync=True, **base), str(tmp_path / "b"), log=quiet, progress=False)
    d = train_cnn(TrainConfig(graph="imperative", bn_sync=True, **base), str(tmp_path / "d"), log=quiet,
                  progress=False)
    for hb, hd in zip(b["history"], d["history"]):  # the same arithmetic, op by op or in graphs (float32)
        assert hb["train_loss"] == pytest.approx(hd["train_loss"], rel=1e-4)
        assert hb["test_acc"] == pytest.approx(hd["test_acc"], abs=1e-2)
    assert any("kvstore device" in line for line in lines)
    assert any(re.search(r"parameters sha1 [0-9a-f]{40}, the same on all 2 devices", line) for line in lines)
    for m in (a, b, d):
        assert m["context"] == "cpu(0),cpu(1)" and len(m["history"]) == 2
        assert m["history"][-1]["train_loss"] < m["history"][0]["train_loss"]
    # resuming a 2-context run continues it
    c = train_cnn(TrainConfig(**dict(base, epochs=3)), str(tmp_path / "a"), resume=True, log=quiet,
                  progress=False)
    assert [h["epoch"] for h in c["history"]] == [1, 2, 3] and c["history"][:2] == a["history"]


def _launch(tmp_path, data_dir, *extra, workers=2, timeout=240):
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "launch_local.py"), "-n", str(workers), "--timeout",
           str(timeout - 30), "--", sys.executable, os.path.join(ROOT, "scripts", "train_cnn.py"),
           "--ctx", "cpu", "--kvstore", "dist_sync", "--data-dir", data_dir, "--batch-size", "32",
           "--out", str(tmp_path / "run"), *extra]
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return out, time.monotonic() - t0


def test_dist_sync_two_workers_one_server_end_with_identical_parameters(tiny_data, tmp_path):
    out, seconds = _launch(tmp_path, tiny_data, "--epochs", "2", "--val-size", "0")   # shards of all 256
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout + out.stderr
    sums = re.findall(r"^(?:\[worker 1\] )?parameters sha1 ([0-9a-f]{40})$", text, re.M)
    assert len(sums) == 2 and sums[0] == sums[1], text   # both workers, same bits
    per_epoch = re.findall(r"^(\[worker 1\] )?(epoch \d+: parameters sha1 .*)$", text, re.M)
    assert sorted(line for worker, line in per_epoch if worker) == sorted(line for worker, line in per_epoch
                                                                          if not worker), text
    assert len(per_epoch) == 4
    assert "worker 0 of 2: training samples 0..127" in text and "worker 1 of 2: training samples 128..255" in text
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["workers"] == 2 and len(metrics["history"]) == 2
    assert metrics["history"][0]["samples"] == 128   # worker 0's shard: 4 batches of 32
    assert not (tmp_path / "run" / "worker-1").exists()
    assert seconds < 200  # every process ended by itself, the launcher did not need its timeout


def test_launcher_stops_everything_when_a_worker_fails(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "launch_local.py"), "-n", "2", "--timeout", "60", "--",
           sys.executable, "-c", "import os, sys, time; sys.exit(5 if os.environ['DMLC_ROLE'] == 'worker' else 0)"]
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert out.returncode == 5, out.stdout + out.stderr
    assert "a worker exited with code 5; stopping the others" in out.stdout
    assert time.monotonic() - t0 < 40   # scheduler and server were stopped, not waited for


def test_the_trainer_writes_each_log_line_in_one_write(monkeypatch):
    # The workers of one job share the launcher's stdout; with PYTHONUNBUFFERED=1 print writes the text and
    # the newline separately, so another worker's line could land between them (seen: two fingerprint lines
    # merged into one). One write per line is atomic on a pipe.
    import inspect
    from mxbn import run

    class Recorder:
        def __init__(self):
            self.writes = []

        def write(self, text):
            self.writes.append(text)

        def flush(self):
            pass
    recorder = Recorder()
    monkeypatch.setattr(sys, "stdout", recorder)
    log = inspect.signature(run.train_cnn).parameters["log"].default
    log("epoch 1: parameters sha1 0123")
    assert recorder.writes == ["epoch 1: parameters sha1 0123\n"]
