"""The restructured house: one training step, cached derived graphs, jit's cache warning and trace lock,
batch norm in its own module."""
import threading
import warnings

import numpy as np
import mxnet as mx
from mxnet import nd

import mxbn
from mxbn import models
from mxbn.jit import CACHE_WARN_SIZE, Jitted, jit
from mxbn.optim import SGD
from mxbn.train import TrainStep, evaluate, loss_and_correct, predict


def _lenet_batch(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return nd.array(rng.random((n, 1, 28, 28))), nd.array(rng.integers(0, 10, n))


def test_batch_norm_lives_in_its_module_and_keeps_its_old_names():
    import importlib
    import mxbn.functional
    # the package attribute mxbn.batch_norm is the function; the module is importable by its name
    bn_module = importlib.import_module("mxbn.batch_norm")
    assert mxbn.batch_norm is bn_module.batch_norm is mxbn.functional.batch_norm
    assert mxbn.BATCH_NORM_IMPLS == bn_module.BATCH_NORM_IMPLS


def test_train_step_is_one_sgd_step_on_the_loss():
    """TrainStep's update equals p - lr * grad computed separately (float32, same ops)."""
    params, state = models.lenet_params(mx.cpu(), seed=0)
    before = {k: v.copy() for k, v in params.items()}
    X, y = _lenet_batch()
    reference = {k: v.copy() for k, v in params.items()}
    ref_state = {k: v.copy() for k, v in state.items()}
    for p in reference.values():
        p.attach_grad()
    with mx.autograd.record():
        ref_loss, _ = loss_and_correct(models.lenet, True)(reference, ref_state, X, y)
    ref_loss.backward()
    step = TrainStep(loss_and_correct(models.lenet, True), params, state, SGD(lr=0.1), SGD(lr=0.1).init(params))
    loss, correct = step(X, y)
    assert float(loss.asscalar()) == float(ref_loss.asscalar())
    assert 0 <= float(correct.asscalar()) <= 16
    for k in params:
        expected = before[k].asnumpy() - np.float32(0.1) * reference[k].grad.asnumpy()
        np.testing.assert_allclose(params[k].asnumpy(), expected, rtol=1e-6, atol=1e-7)
    for k in state:
        np.testing.assert_array_equal(state[k].asnumpy(), ref_state[k].asnumpy())


def test_train_step_takes_a_bare_loss():
    params, state = models.mlp_params(mx.cpu(), (4, 3, 1), seed=0)
    X, y = nd.array(np.ones((5, 4))), nd.array(np.zeros(5))
    step = TrainStep(lambda p, s, X, y: (models.mlp(p, s, X, True).reshape((-1,)) - y).square().mean(),
                     params, state, SGD(lr=0.1), SGD(lr=0.1).init(params))
    loss, aux = step(X, y)
    assert aux is None and loss.shape == (1,)


def test_evaluate_and_predict_reuse_the_nets_graphs():
    net = jit(models.lenet)
    params, state = models.lenet_params(mx.cpu(), seed=0)
    X, y = _lenet_batch(32)
    first = evaluate(net, params, state, X, y, 16)
    derived = dict(net.derived)
    sizes = {k: v.cache_size for k, v in derived.items()}
    assert evaluate(net, params, state, X, y, 16) == first
    predict(net, params, state, X, 16)
    predict(net, params, state, X, 16)
    assert all(net.derived[k] is v for k, v in derived.items())
    assert {k: net.derived[k].cache_size for k in sizes} == sizes
    assert set(net.derived) == {("loss_and_correct", False), ("classify",)}
    assert net.derived[("classify",)].cache_size == 1


def test_a_growing_cache_warns_once():
    scale = jit(lambda X, factor: X * factor)
    X = nd.ones((2,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(CACHE_WARN_SIZE + 5):
            scale(X, float(i))
    growing = [w for w in caught if "has traced" in str(w.message)]
    assert len(growing) == 1 and issubclass(growing[0].category, RuntimeWarning)
    assert "mx.nd.array" in str(growing[0].message)
    assert scale.cache_size == CACHE_WARN_SIZE + 5


def test_traces_in_two_threads_do_not_break_each_other():
    """Symbol.shape is patched process-wide during a trace: two threads tracing at once must both succeed."""
    errors, results = [], {}

    def run(name, n):
        try:
            f = Jitted(lambda X: mxbn.relu(X) * X.shape[0])
            for k in range(5):
                results[(name, k)] = f(nd.ones((n + k, 3))).asnumpy()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(name, n)) for name, n in (("a", 2), ("b", 7))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for (name, k), value in results.items():
        n = (2 if name == "a" else 7) + k
        np.testing.assert_array_equal(value, np.full((n, 3), float(n)))


def test_library_holds_no_peer():
    """The benchmark's peers (PyTorch, Gluon layers) live in scripts/bench_peers/, not in mxbn/."""
    import ast
    import os
    root = os.path.dirname(mxbn.__file__)
    offenders = []
    for folder, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            for node in ast.walk(ast.parse(open(path).read())):
                if isinstance(node, ast.ImportFrom):
                    modules = [node.module or ""]
                elif isinstance(node, ast.Import):
                    modules = [a.name for a in node.names]
                else:
                    continue
                if any(m.split(".")[0] == "torch" or m.startswith("mxnet.gluon.nn") for m in modules):
                    offenders.append(os.path.relpath(path, root))
                if isinstance(node, ast.ImportFrom) and node.module == "mxnet" and any(
                        a.name == "gluon" for a in node.names):
                    offenders.append(os.path.relpath(path, root))
    assert offenders == []


def test_one_study_result_type_round_trips_through_metrics_json(tmp_path):
    import pytest
    from mxbn.experiments import EXPERIMENTS, StudyResult
    from mxbn.experiments.result import verdict
    assert all(callable(run) for run in EXPERIMENTS.values())
    result = StudyResult(experiment="x", title="T", claims=[verdict("c", True, "r", dataset="d")], datasets=["a", "b"],
                         seeds=[0, 1], figures=["f.png"], measurements=dict(curves=[1.0, 2.0]))
    stored = result.save(str(tmp_path)).to_json()
    assert stored["dataset"] == "a, b" and stored["curves"] == [1.0, 2.0]
    assert stored["claims"][0]["verdict"] == "reproduced"
    assert StudyResult.load(str(tmp_path)) == result
    with pytest.raises(ValueError, match="may not be named"):
        StudyResult(experiment="x", title="T", claims=[], datasets=[], measurements=dict(seeds=[3])).to_json()


def test_trace_bn_and_bn_paper_share_one_percentile_probe():
    from mxbn import bn_trace
    from mxbn.experiments import bn_paper
    assert bn_paper.PERCENTILES is bn_trace.PERCENTILES
    probe = bn_trace.PercentileProbe(lambda p, s, X: [X.sum(), X.max()], nd.arange(4), every=2)
    for step in range(5):
        probe(step, {}, {})
    assert probe.steps == [0, 2, 4] and probe.read().tolist() == [[[6.0], [3.0]]] * 3


def test_history_columns_are_the_keys_of_an_epoch_record():
    """metrics.csv orders its columns by train.HISTORY_COLUMNS; an epoch's record must have those keys."""
    from mxbn.train import HISTORY_COLUMNS, SingleDeviceStep, fit
    params, state = models.lenet_params(mx.cpu(), seed=0)
    X, y = _lenet_batch(32)
    opt = SGD(lr=0.1)
    history = fit(jit(models.lenet), params, state, opt, opt.init(params), (X, y), (X, y), 1, 16, seed=0,
                  log=lambda *_: None, val_data=(X, y),
                  step=SingleDeviceStep(jit(models.lenet), params, state, opt, opt.init(params), clip_grad_norm=1.0))
    assert tuple(history[0]) == HISTORY_COLUMNS
    # without a validation set or clipping those columns are left out, the others keep their order
    plain = fit(jit(models.lenet), params, state, opt, opt.init(params), (X, y), (X, y), 1, 16, seed=0,
                log=lambda *_: None)
    assert tuple(plain[0]) == tuple(c for c in HISTORY_COLUMNS if c not in ("val_loss", "val_acc", "clipped"))
