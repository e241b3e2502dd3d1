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


BAD_LABELS = [(12.0, "12"), (-1.0, "-1"), (2.7, "2.7")]


@pytest.mark.parametrize("bad,shown", BAD_LABELS)
def test_a_label_outside_the_classes_is_never_scored_as_another_class(bad, shown):
    """MXNet's pick clips: label 12 was scored as class 9, -1 as 0, 2.7 as 2."""
    logits = nd.array(np.random.default_rng(0).normal(size=(4, 10)))
    labels = nd.array([1, bad, 3, 0])
    assert np.isnan(mxbn.softmax_cross_entropy(logits, labels).asscalar())       # no sync: NaN, not a number
    assert np.isnan(mxbn.jit(mxbn.softmax_cross_entropy)(logits, labels).asscalar())
    with pytest.raises(ValueError, match=rf"label {shown} at index 1 .*0\.\.9"):
        mxbn.softmax_cross_entropy(logits, labels, check_labels=True)
    # the count agrees with the loss: a bad label is never a hit
    hits_all_1 = nd.array(np.eye(10)[[1, 9 if bad > 9 else 0 if bad < 0 else 2, 3, 0]] * 5)
    assert mxbn.correct_count(hits_all_1, labels).asscalar() == 3


def test_good_labels_keep_the_same_loss_and_gradient():
    rng = np.random.default_rng(1)
    logits, labels = nd.array(rng.normal(size=(8, 10))), nd.array(rng.integers(0, 10, 8))
    logits.attach_grad()
    with autograd.record():
        loss = mxbn.softmax_cross_entropy(logits, labels, check_labels=True)
    loss.backward()
    x = logits.asnumpy().astype(np.float64)
    logp = x - x.max(1, keepdims=True) - np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True))
    y = labels.asnumpy().astype(int)
    np.testing.assert_allclose(loss.asscalar(), -logp[np.arange(8), y].mean(), rtol=1e-6)
    expected = (np.exp(logp) - np.eye(10)[y]) / 8
    np.testing.assert_allclose(logits.grad.asnumpy(), expected, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- #
# reproduce.py: the report never erases the committed results; bad folders are refused up front
# --------------------------------------------------------------------------- #
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reproduce(*args, timeout=None):
    """scripts/reproduce.py's main(args) in this process (MXNet is loaded once): returncode, stdout, stderr."""
    import contextlib
    import importlib.util
    import io
    import types
    if os.path.join(ROOT, "scripts") not in sys.path:
        sys.path.insert(0, os.path.join(ROOT, "scripts"))   # as when the script runs: its folder is on the path
    spec = importlib.util.spec_from_file_location("reproduce_script", os.path.join(ROOT, "scripts", "reproduce.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = script.main(list(args))
        except SystemExit as e:   # argparse's usage errors
            code = e.code
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def _fake_run(runs, name, seeds, quick):
    """A stored study result, as a run of ``name`` with ``seeds`` seeds would leave it."""
    (runs / name).mkdir(parents=True, exist_ok=True)
    (runs / name / "fig.png").write_bytes(b"png")
    claim = dict(claim="c", verdict="partly", reason="r", dataset="d", tutorial="t")
    (runs / name / "metrics.json").write_text(json.dumps(dict(
        experiment=name, title="T", dataset="d", datasets=["d"], seeds=list(range(seeds)), quick=quick,
        claims=[claim], figures=["fig.png"])))


def _committed_report(tmp_path, seeds=3, quick=False):
    """docs/ holding a report made from full ``seeds``-seed runs of two studies."""
    runs, docs = tmp_path / "full", tmp_path / "docs"
    for name in ("optimizers", "init"):
        _fake_run(runs, name, seeds, quick)
    out = _reproduce("report", "--runs", str(runs), "--docs", str(docs))
    assert out.returncode == 0, out.stderr
    return docs, (docs / "results.md").read_text(), sorted(os.listdir(docs / "figures"))


@pytest.mark.parametrize("runs", ["missing", "empty"])
def test_report_with_nothing_to_report_refuses_and_writes_nothing(tmp_path, runs):
    docs, before, figures = _committed_report(tmp_path)
    folder = tmp_path / runs
    if runs == "empty":
        folder.mkdir()
    out = _reproduce("report", "--runs", str(folder), "--docs", str(docs))
    assert out.returncode == 2 and "nothing to report" in out.stderr and str(folder) in out.stderr
    assert (docs / "results.md").read_text() == before and sorted(os.listdir(docs / "figures")) == figures


@pytest.mark.parametrize("seeds,quick,why", [(1, False, "1 seed"), (3, True, "quick")])
def test_report_from_fewer_seeds_or_quick_runs_needs_force(tmp_path, seeds, quick, why):
    docs, before, figures = _committed_report(tmp_path)
    weaker = tmp_path / "weaker"
    for name in ("optimizers", "init"):
        _fake_run(weaker, name, seeds, quick)
    out = _reproduce("report", "--runs", str(weaker), "--docs", str(docs))
    assert out.returncode == 2 and "--force" in out.stderr and why in out.stderr and "optimizers" in out.stderr
    assert (docs / "results.md").read_text() == before and sorted(os.listdir(docs / "figures")) == figures
    forced = _reproduce("report", "--runs", str(weaker), "--docs", str(docs), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (docs / "results.md").read_text() != before


def test_report_that_drops_a_study_needs_force_and_says_what_it_read(tmp_path):
    docs, before, _ = _committed_report(tmp_path)
    one = tmp_path / "one"
    _fake_run(one, "optimizers", 3, False)
    out = _reproduce("report", "--runs", str(one), "--docs", str(docs))
    assert out.returncode == 2 and "init" in out.stderr and (docs / "results.md").read_text() == before
    _fake_run(one, "init", 5, False)   # more seeds than the committed report: no --force needed
    ok = _reproduce("report", "--runs", str(one), "--docs", str(docs))
    assert ok.returncode == 0, ok.stderr
    assert "optimizers: 3 seed(s)" in ok.stdout and "init: 5 seed(s)" in ok.stdout


def test_report_keep_reports_one_study_and_keeps_the_others_word_for_word(tmp_path):
    docs, before, figures = _committed_report(tmp_path)
    init_section = before[before.index('<a id="init"></a>'):before.index("_Generated")].rstrip("\n")
    init_row = next(line for line in before.splitlines() if line.startswith("| [`init`]"))
    one = tmp_path / "one"
    _fake_run(one, "optimizers", 3, False)
    out = _reproduce("report", "--runs", str(one), "--docs", str(docs), "--keep")
    assert out.returncode == 0, out.stderr
    assert "kept init: its section of" in out.stdout
    text = (docs / "results.md").read_text()
    assert init_section in text and init_row in text and "## Not yet run" not in text.split("init")[0]
    assert text.index("[`optimizers`]") < text.index("[`init`]")     # the registry's order, kept or not
    assert sorted(os.listdir(docs / "figures")) == figures


def test_report_names_its_input_folder_runs_not_out(tmp_path):
    _fake_run(tmp_path / "runs", "optimizers", 1, True)
    out = _reproduce("report", "--out", str(tmp_path / "runs"), "--docs", str(tmp_path / "docs"))
    assert out.returncode == 2 and "--runs" in out.stderr and not (tmp_path / "docs").exists()


@pytest.mark.parametrize("bad", ["/etc/passwd/x", "readonly"])
def test_reproduce_refuses_an_unusable_out_before_computing(tmp_path, bad):
    if bad == "readonly":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        bad = tmp_path / "ro"
        bad.mkdir(mode=0o500)
    out = _reproduce("batch-size", "--quick", "--out", str(bad), timeout=60)
    assert out.returncode == 2 and "--out" in out.stderr and "Traceback" not in out.stderr
    assert "seed 0" not in out.stdout   # refused before the first training run


def test_reproduce_accepts_data_dir(tmp_path):
    out = _reproduce("--help")
    assert "--data-dir" in out.stdout
    missing = _reproduce("lenet-bn", "--quick", "--data-dir", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert missing.returncode == 2 and "--data-dir" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_result_files_follow_the_umask(tmp_path, umask):
    """mkstemp makes 0600 files; results are for colleagues too: they get 0666 & ~umask as open() would."""
    from mxbn.atomic import atomic_path, atomic_write_json
    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "m.json", {"a": 1})
        with atomic_path(tmp_path / "f.png") as tmp:   # the path form (savefig, nd.save) too
            with open(tmp, "wb") as f:
                f.write(b"x")
    finally:
        os.umask(old)
    for name in ("m.json", "f.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


# --------------------------------------------------------------------------- #
# batch_norm's arguments
# --------------------------------------------------------------------------- #
def test_batch_norm_refuses_an_infinite_eps():
    X, g, b, m, v = _bn_inputs()
    with pytest.raises(ValueError, match="eps must be a number > 0 and finite, got inf"):
        mxbn.batch_norm(X, g, b, True, m, v, eps=float("inf"))


def test_batch_norm_check_finite_refuses_a_negative_moving_variance():
    X, g, b, m, v = _bn_inputs()
    v[1] = -0.5
    with pytest.raises(ValueError, match=r"moving_vari holds 1 negative value"):
        mxbn.batch_norm(X, g, b, False, m, v, check_finite=True)


@pytest.mark.parametrize("jitted", [False, True], ids=["imperative", "jit"])
def test_batch_norm_refuses_one_array_as_both_moving_statistics(jitted):
    X, g, b, m, _ = _bn_inputs()

    def f(X, g, b, m, v):
        return mxbn.batch_norm(X, g, b, True, m, v)
    with pytest.raises(ValueError, match="moving_mean and moving_vari are the same array"):
        (mxbn.jit(f) if jitted else f)(X, g, b, m, m)


def test_batch_norm_takes_a_numpy_bool_and_names_the_type_it_refuses():
    X, g, b, m, v = _bn_inputs()
    expected = mxbn.batch_norm(X, g, b, True, m.copy(), v.copy()).asnumpy()
    np.testing.assert_array_equal(mxbn.batch_norm(X, g, b, np.bool_(True), m, v).asnumpy(), expected)
    with pytest.raises(TypeError, match=r"is_training must be a bool, got 'yes' \(str\)"):
        mxbn.batch_norm(X, g, b, "yes", m, v)


# --------------------------------------------------------------------------- #
# unreadable checkpoints: the useful line of MXNet's message
# --------------------------------------------------------------------------- #
def _a_checkpoint(path):
    from mxbn import models
    from mxbn.checkpoint import save_checkpoint
    from mxbn.optim import SGD
    params, state = models.lenet_params(mx.cpu(), seed=0)
    save_checkpoint(str(path), params, state, SGD().init(params), dict(config={}, history=[]))
    return path


@pytest.mark.parametrize("kind,reason", [("missing", "No such file or directory"), ("empty", "is empty"),
                                         ("truncated", "Invalid NDArray file format"),
                                         ("png", "Invalid NDArray file format")])
def test_unreadable_checkpoint_says_why(tmp_path, kind, reason):
    from mxbn.checkpoint import CheckpointError, load_checkpoint
    path = tmp_path / "checkpoint.params"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = _a_checkpoint(tmp_path / "full.params").read_bytes()
        path.write_bytes(data[:7])
    elif kind == "png":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(str(path), mx.cpu())
    assert reason in str(err.value) and "Traceback" not in str(err.value) and str(path) in str(err.value)


# --------------------------------------------------------------------------- #
# train_cnn.py's options: bounded, never silently ignored, messages that name the flags
# --------------------------------------------------------------------------- #
from mxbn.config import ConfigError, TrainConfig  # noqa: E402


@pytest.mark.parametrize("options,says", [
    (dict(augment=True, max_shift=40), ["--max-shift", "0..13"]),
    (dict(max_shift=3), ["--max-shift", "--augment"]),
    (dict(lr_step_epochs=(2,), epochs=4), ["--lr-steps", "--lr-schedule step"]),
    (dict(optimizer="sgd", momentum=0.5), ["--momentum", "--optimizer momentum"]),
    (dict(epochs=1, lr_schedule="step", lr_step_epochs=(1,)), ["--lr-steps", "--epochs 1", "at least 2"]),
    (dict(epochs=1, warmup_epochs=1.0), ["--warmup-epochs", "--epochs 1"]),
])
def test_options_out_of_bounds_or_ignored_are_refused_naming_the_flags(options, says):
    with pytest.raises(ConfigError) as err:
        TrainConfig(ctx="cpu", **options).validate()
    for text in says:
        assert text in str(err.value), (text, str(err.value))
    assert "1..0" not in str(err.value) and "use_bn" not in str(err.value)


def test_the_defaults_and_used_options_still_validate():
    TrainConfig(ctx="cpu").validate()
    TrainConfig(ctx="cpu", augment=True, max_shift=13).validate()
    TrainConfig(ctx="cpu", optimizer="momentum", momentum=0.5).validate()
    TrainConfig(ctx="cpu", epochs=4, lr_schedule="step", lr_step_epochs=(2, 3)).validate()


# --------------------------------------------------------------------------- #
# what the trainer says: messages that are true
# --------------------------------------------------------------------------- #
from helpers import make_idx_dataset  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_idx_dataset(tmp_path_factory.mktemp("tiny"), n_train=256, n_test=64)


def _train(tiny, out, log=lambda *_: None, **kw):
    from mxbn.run import train_cnn
    options = dict(ctx="cpu", data_dir=tiny, epochs=1, batch_size=64, seed=0)
    options.update(kw)
    return train_cnn(TrainConfig(**options), str(out), log=log, progress=False)


def test_cpu_fallback_names_the_work_it_does():
    from mxbn.context import resolve_context
    seen = []
    resolve_context("gpu", warn=seen.append, num_gpus=lambda: 0, task="predicting")
    assert "predicting on the CPU" in seen[0] and "training" not in seen[0]
    from mxbn import predict
    import inspect
    assert 'task="predicting"' in inspect.getsource(predict)


def test_eval_only_on_a_mid_epoch_checkpoint_says_so(tiny, tmp_path):
    from mxbn.checkpoint import load_checkpoint, save_checkpoint
    from mxbn.run import eval_checkpoint
    _train(tiny, tmp_path / "run")
    path = str(tmp_path / "run" / "checkpoint.params")
    ckpt = load_checkpoint(path, mx.cpu())
    meta = dict(ckpt["meta"], position=dict(epoch=0, batch=2), history=[], epoch=0)
    save_checkpoint(path, ckpt["params"], ckpt["state"], ckpt["opt_state"], meta)   # as an interruption leaves it
    lines = []
    eval_checkpoint(path, "cpu", tiny, log=lines.append)
    assert "mid-epoch: epoch 1 after batch 2" in lines[-1] and "no epoch finished" in lines[-1]
    assert "nan" not in lines[-1] and "epoch 0" not in lines[-1]


def test_resume_with_nothing_left_says_only_that(tiny, tmp_path):
    _train(tiny, tmp_path / "run")
    lines = []
    from mxbn.run import train_cnn
    train_cnn(TrainConfig(ctx="cpu", data_dir=tiny, epochs=1, batch_size=64), str(tmp_path / "run"), resume=True,
              log=lines.append, progress=False)
    assert any("nothing to do" in line for line in lines)
    assert not any("resuming" in line and "epoch 2" in line for line in lines)


def _csv_header(out):
    return (out / "metrics.csv").read_text().splitlines()[0]


def test_metrics_csv_keeps_its_column_order_after_resume(tiny, tmp_path):
    out = tmp_path / "run"
    _train(tiny, out)
    header = _csv_header(out)
    assert header.startswith("epoch,lr,train_loss")
    from mxbn.run import train_cnn
    train_cnn(TrainConfig(ctx="cpu", data_dir=tiny, epochs=2, batch_size=64), str(out), resume=True,
              log=lambda *_: None, progress=False)
    assert _csv_header(out) == header


def test_overwrite_removes_the_old_runs_files_the_new_run_does_not_write(tiny, tmp_path):
    out = tmp_path / "run"
    _train(tiny, out, trace_bn=True)
    (out / "notes.txt").write_text("mine")
    assert (out / "bn_trace.json").exists() and (out / "bn_trace.png").exists()
    from mxbn.run import train_cnn
    train_cnn(TrainConfig(ctx="cpu", data_dir=tiny, epochs=1, batch_size=64), str(out), overwrite=True,
              log=lambda *_: None, progress=False)
    assert not (out / "bn_trace.json").exists() and not (out / "bn_trace.png").exists()
    assert (out / "notes.txt").read_text() == "mine"     # not mxbn's: kept


def test_a_failed_run_leaves_no_empty_out_behind(tiny, tmp_path):
    from mxbn.run import train_cnn
    out = tmp_path / "new"
    with pytest.raises(ConfigError, match="larger than the training set"):
        train_cnn(TrainConfig(ctx="cpu", data_dir=tiny, batch_size=100000), str(out), log=lambda *_: None,
                  progress=False)
    assert not out.exists()


def test_resume_with_other_threads_warns_and_records_every_part(tiny, tmp_path, monkeypatch):
    from mxbn.run import train_cnn
    out = tmp_path / "run"
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    _train(tiny, out)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    lines = []
    metrics = train_cnn(TrainConfig(ctx="cpu", data_dir=tiny, epochs=2, batch_size=64), str(out), resume=True,
                        log=lines.append, progress=False)
    warning = [line for line in lines if "OMP_NUM_THREADS" in line and "warning" in line]
    assert warning and "'2'" in warning[0] and "'1'" in warning[0] and "bit" in warning[0]
    parts = metrics["threads_per_part"]
    assert [p["from_epoch"] for p in parts] == [1, 2]
    assert [p["threads"]["OMP_NUM_THREADS"] for p in parts] == ["2", "1"]


@pytest.mark.parametrize("after", [0.5, 1.5, 3.0])
def test_ctrl_c_during_start_up_is_one_line(tiny, tmp_path, after):
    import signal
    import time
    def as_from_a_terminal():
        # a child inherits an ignored or blocked SIGINT from the test process (whatever an earlier test or
        # MXNet's threads left there); a user's shell starts the script with the default disposition
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "train_cnn.py"), "--ctx", "cpu",
                             "--data-dir", tiny, "--epochs", "50", "--out", str(tmp_path / "run"), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_terminal)
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err


# --------------------------------------------------------------------------- #
# jit: a traced value behaves as the array it stands for, or a clear TracingError
# --------------------------------------------------------------------------- #
from mxbn.tracing import TracingError  # noqa: E402

_A = np.random.default_rng(3).normal(size=(8, 3)).astype(np.float32)
_B = np.arange(1, 4, dtype=np.float32)
BROADCASTING = {
    "add": lambda A, b: mxbn.relu(A) + b,
    "radd": lambda A, b: b + A,
    "sub": lambda A, b: A - b,
    "rsub": lambda A, b: 1 - A / b,
    "mul": lambda A, b: A * b,
    "div": lambda A, b: b / (A * A + 1),
    "pow": lambda A, b: (A * A) ** b,
    "cmp": lambda A, b: (A > b) + (A <= b) * 2 + (A == b) * 4,
    "same shape": lambda A, b: A + A * 2,
}


@pytest.mark.parametrize("kind", ["nd", "np"])
@pytest.mark.parametrize("name", list(BROADCASTING))
def test_jit_arithmetic_broadcasts_as_the_arrays_do(name, kind):
    arr = nd.array if kind == "nd" else mx.np.array
    A, b = arr(_A), arr(_B)
    fn = BROADCASTING[name]
    expected = fn(A, b).asnumpy()
    got = mxbn.jit(fn)(A, b)
    assert isinstance(got, type(A))
    np.testing.assert_allclose(got.asnumpy(), expected, rtol=1e-6)


def test_jit_broadcasting_is_differentiable():
    A, b = nd.array(_A), nd.array(_B)
    grads = []
    for f in (lambda A, b: (mxbn.relu(A) * b + b).sum(), mxbn.jit(lambda A, b: (mxbn.relu(A) * b + b).sum())):
        A.attach_grad(), b.attach_grad()
        with autograd.record():
            y = f(A, b)
        y.backward()
        grads.append((A.grad.asnumpy().copy(), b.grad.asnumpy().copy()))
    for g0, g1 in zip(*grads):
        np.testing.assert_allclose(g1, g0, rtol=1e-6)


# functions of the array namespaces that have a Symbol counterpart, as the user wrote them
NAMESPACE_FUNCTIONS = {
    "np.exp": (lambda A, b: mx.np.exp(A), "np"),
    "np.maximum broadcasts": (lambda A, b: mx.np.maximum(A, b) * mx.np.tanh(A), "np"),
    "npx.relu": (lambda A, b: mx.npx.relu(A) + b, "np"),
    "np.sum axis": (lambda A, b: mx.np.sum(A * b, axis=1), "np"),
    "np.sum to 0-d": (lambda A, b: mx.np.sum(mx.np.exp(A)), "np"),
    "np.concatenate": (lambda A, b: mx.np.concatenate([A, A * 2], axis=0), "np"),
    "nd.relu": (lambda A, b: mx.nd.relu(A) + b, "nd"),
    "nd.broadcast_mul": (lambda A, b: mx.nd.broadcast_mul(A, b.reshape((1, 3))).sum(axis=1), "nd"),
}


@pytest.mark.parametrize("name", list(NAMESPACE_FUNCTIONS))
def test_jit_traces_the_array_namespaces_functions_that_have_a_symbol_counterpart(name):
    fn, kind = NAMESPACE_FUNCTIONS[name]
    arr = nd.array if kind == "nd" else mx.np.array
    with mx.util.np_shape(kind == "np"), mx.util.np_array(kind == "np"):
        A, b = arr(_A), arr(_B)
        grads = []
        for f in (fn, mxbn.jit(fn)):
            A.attach_grad()
            with autograd.record():
                y = f(A, b)
            y.backward()
            grads.append((y.asnumpy(), A.grad.asnumpy().copy(), type(y)))
    (y0, g0, t0), (y1, g1, t1) = grads
    assert t1 is t0
    np.testing.assert_allclose(y1, y0, rtol=1e-6)
    np.testing.assert_allclose(g1, g0, rtol=1e-6)


@pytest.mark.parametrize("fn,says", [
    (lambda A, b: A * nd.array([2.0]), r"`\*` .*NDArray the function captures .*pass it as an argument"),
    (lambda A, b: nd.array([2.0]) + A, r"captures"),
    (lambda A, b: mx.nd.broadcast_add(A, nd.array([2.0])), r"mx\.nd\.broadcast_add .*captures"),
    (lambda A, b: mx.np.nonzero(A), r"mx\.np\.nonzero has no Symbol counterpart"),
    (lambda A, b: mx.np.isclose(A, b), r"mx\.np\.isclose has no Symbol counterpart"),
    (lambda A, b: mx.npx.load("x"), None),   # no traced argument: MXNet's own error, not a trace's
    (lambda A, b: mx.np.sum(A), r"mx\.np\.sum gives a 0-d array.*set_np"),
])
def test_what_jit_cannot_trace_is_a_tracing_error_naming_the_call(fn, says):
    if says is None:
        with pytest.raises(Exception) as caught:
            mxbn.jit(fn)(nd.array(_A), nd.array(_B))
        assert not isinstance(caught.value, TracingError)
        return
    with pytest.raises(TracingError, match=says):
        mxbn.jit(fn)(nd.array(_A), nd.array(_B))


def test_the_namespaces_are_themselves_again_after_a_trace():
    before = (mx.np.exp, mx.npx.relu, mx.nd.relu)
    mxbn.jit(lambda A: mx.nd.relu(A))(nd.array(_A))
    with pytest.raises(TracingError):
        mxbn.jit(lambda A: mx.np.nonzero(A))(nd.array(_A))
    assert (mx.np.exp, mx.npx.relu, mx.nd.relu) == before


def test_help_of_jit_documents_statics_cache_results_state_and_broadcasting():
    import pydoc
    text = pydoc.render_doc(mxbn.jit)
    for topic in ("static", "cache_size", "CACHE_WARN_SIZE", "dict", "writes", "broadcast", "TracingError"):
        assert topic in text, topic
    assert len(mxbn.jit.__doc__.splitlines()) > 20
