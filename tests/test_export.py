"""A trained net out of mxbn: batch norm folded exactly, MXNet's own format loadable by Gluon and Module,
and a parity check that catches a wrong export."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import mxnet as mx
from mxnet import gluon, nd

import mxbn
from mxbn import models
from mxbn.export import fold_batch_norm, inference_graph, save_mxnet
from mxbn.export_checkpoint import ExportError, check_parity, export_checkpoint
from mxbn.run import train_cnn
from mxbn.config import TrainConfig

from helpers import FASHION_DIR, has_fashion_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "export.py")


def _trained_state(state, rng):
    """Moving statistics as training leaves them (not the 0/1 they start at, where BN is the identity)."""
    for name, value in state.items():
        variance = name.endswith(("_vari", "_mv"))
        value[:] = nd.array(rng.uniform(0.2, 3.0, value.shape) if variance else rng.normal(0, 0.5, value.shape))
    return state


def _affine(params, rng):
    for name, value in params.items():
        if name.endswith("_gamma"):
            value[:] = nd.array(rng.normal(1.0, 0.3, value.shape))
        elif name.endswith("_beta"):
            value[:] = nd.array(rng.normal(0.0, 0.3, value.shape))
    return params


def odd_net(params, state, X, is_training):
    """BN on the raw input (no layer before it), a conv with a bias, BN; a dense layer whose output is also
    read elsewhere before its BN (cannot fold); a channels-last BN on a dense output (axis -1)."""
    H = mxbn.batch_norm(X, params["in_gamma"], params["in_beta"], is_training, state["in_mm"], state["in_mv"])
    H = mxbn.conv2d(H, params["c_weight"], params["c_bias"])
    H = mxbn.relu(mxbn.batch_norm(H, params["c_gamma"], params["c_beta"], is_training, state["c_mm"], state["c_mv"]))
    D = mxbn.dense(H, params["d_weight"], params["d_bias"])
    H = mxbn.batch_norm(D, params["d_gamma"], params["d_beta"], is_training, state["d_mm"], state["d_mv"]) + D
    E = mxbn.dense(mxbn.relu(H), params["e_weight"])
    return mxbn.batch_norm(E, params["e_gamma"], params["e_beta"], is_training, state["e_mm"], state["e_mv"],
                           axis=-1)


def odd_params(rng):
    shapes = {"in": 1, "c": 4, "d": 8, "e": 5}
    params = {"c_weight": (4, 1, 3, 3), "c_bias": (4,), "d_weight": (8, 4 * 6 * 6), "d_bias": (8,),
              "e_weight": (5, 8)}
    params = {k: nd.array(rng.normal(0, 0.3, s)) for k, s in params.items()}
    state = {}
    for prefix, C in shapes.items():
        params[f"{prefix}_gamma"], params[f"{prefix}_beta"] = nd.ones(C), nd.zeros(C)
        state[f"{prefix}_mm"], state[f"{prefix}_mv"] = nd.zeros(C), nd.ones(C)
    return _affine(params, rng), _trained_state(state, rng)


NETS = {
    "lenet (convs without bias)": (lambda rng: (_affine(models.lenet_params(mx.cpu(), seed=0)[0], rng),
                                                 _trained_state(models.lenet_params(mx.cpu(), seed=0)[1], rng)),
                                   models.lenet, (6, 1, 28, 28), 2, 0),
    "mlp, BN on dense outputs": (lambda rng: (lambda p, s: (_affine(p, rng), _trained_state(s, rng)))(
                                     *models.mlp_params(mx.cpu(), (784, 32, 16, 10), use_bn=True, seed=0)),
                                 models.mlp, (6, 784), 2, 0),
    "odd": (odd_params, odd_net, (6, 1, 8, 8), 2, 2),
}


def _run(graph, arrays, X):
    args = {k: v for k, v in arrays.items() if k in graph.list_arguments()}
    aux = {k: v for k, v in arrays.items() if k in graph.list_auxiliary_states()}
    return graph.bind(mx.cpu(), dict(args, data=X), aux_states=aux).forward()[0].asnumpy()


def _ops(graph):
    return [n["op"] for n in json.loads(graph.tojson())["nodes"]]


@pytest.mark.parametrize("name", list(NETS))
def test_folding_is_exact_to_float32_rounding(name):
    make, net, shape, folded_count, scale_shift_count = NETS[name]
    rng = np.random.default_rng(0)
    params, state = make(rng)
    X = nd.array(rng.random(shape))
    expected = net(params, state, X, False).asnumpy()
    assert np.isfinite(expected).all()
    graph, arrays = inference_graph(net, params, state, shape)
    assert _ops(graph).count("BatchNorm") == folded_count + scale_shift_count
    folded, folded_arrays = fold_batch_norm(graph, arrays, shape)
    ops = _ops(folded)
    assert "BatchNorm" not in ops and ops.count("broadcast_mul") == scale_shift_count
    scale = np.abs(expected).max()
    np.testing.assert_allclose(_run(graph, arrays, X), expected, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(_run(folded, folded_arrays, X), expected, rtol=0, atol=1e-5 * scale)
    # the state the user passed is untouched and not part of the folded model
    assert not any(k.endswith(("_moving_mean", "_moving_vari", "_mm", "_mv")) for k in folded_arrays)


def test_the_folded_weights_are_the_formula():
    rng = np.random.default_rng(1)
    params, state = NETS["lenet (convs without bias)"][0](rng)
    graph, arrays = inference_graph(models.lenet, params, state, (1, 1, 28, 28))
    _, folded = fold_batch_norm(graph, arrays, (1, 1, 28, 28))
    g, b = params["bn1_gamma"].asnumpy().astype(np.float64), params["bn1_beta"].asnumpy().astype(np.float64)
    m, v = state["bn1_moving_mean"].asnumpy().astype(np.float64), state["bn1_moving_vari"].asnumpy().astype(np.float64)
    s = g / np.sqrt(v + 1e-5)
    np.testing.assert_allclose(folded["conv1_weight"].asnumpy(),
                               params["conv1_weight"].asnumpy() * s[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(folded["conv1_bias"].asnumpy(), b - m * s, rtol=1e-6, atol=1e-7)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data):
    data = tiny_data
    out = str(tmp_path_factory.mktemp("run") / "run")
    train_cnn(TrainConfig(ctx="cpu", data_dir=data, epochs=2, batch_size=64, seed=0), out, log=lambda *_: None,
              progress=False)
    return data, out


@pytest.mark.parametrize("checkpoint", ["checkpoint.params", "best.params"])
def test_export_loads_in_gluon_and_module_and_equals_mxbn(trained, tmp_path, checkpoint):
    data, run = trained
    paths, parity = export_checkpoint(os.path.join(run, checkpoint), str(tmp_path), log=lambda *_: None)
    assert parity.ok and parity.top1_agreement == 1.0 and parity.images == 200
    assert parity.max_probability_difference < 1e-5
    ckpt, config = mxbn.predict.load_lenet_checkpoint(os.path.join(run, checkpoint), mx.cpu())
    X = nd.array(np.random.default_rng(2).random((7, 1, 28, 28)))   # another batch size than traced
    expected = models.lenet(ckpt["params"], ckpt["state"], X, False).asnumpy()
    block = gluon.SymbolBlock.imports(paths[0], ["data"], paths[1])
    np.testing.assert_allclose(block(X).asnumpy(), expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    symbol, args, aux = mx.model.load_checkpoint(os.path.join(str(tmp_path), "lenet"), 0)
    module = mx.mod.Module(symbol, data_names=["data"], label_names=None)
    module.bind(data_shapes=[("data", (3, 1, 28, 28))], for_training=False)
    module.set_params(args, aux)
    module.forward(mx.io.DataBatch([X[:3]]), is_train=False)
    np.testing.assert_allclose(module.get_outputs()[0].asnumpy(), expected[:3], rtol=0,
                               atol=1e-5 * np.abs(expected).max())


def test_the_parity_check_fails_on_a_corrupted_export(trained, tmp_path):
    _, run = trained
    prefix = str(tmp_path / "lenet")
    ckpt, config = mxbn.predict.load_lenet_checkpoint(os.path.join(run, "checkpoint.params"), mx.cpu())
    X = nd.array(np.random.default_rng(3).random((32, 1, 28, 28)))
    graph, arrays = inference_graph(models.lenet, ckpt["params"], ckpt["state"], (1, 1, 28, 28))
    folded, folded_arrays = fold_batch_norm(graph, arrays, (1, 1, 28, 28))
    logits = models.lenet(ckpt["params"], ckpt["state"], X, False).asnumpy()
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    save_mxnet(folded, folded_arrays, prefix)
    assert check_parity(prefix, expected, X).ok
    folded_arrays["conv2_bias"] = folded_arrays["conv2_bias"] + 0.5   # a wrong fold of one layer
    save_mxnet(folded, folded_arrays, prefix)
    assert not check_parity(prefix, expected, X).ok


def test_a_failed_parity_check_removes_the_export(trained, tmp_path, monkeypatch):
    import mxbn.export_checkpoint as ec
    _, run = trained

    def broken_fold(graph, arrays, shape):
        folded, out = fold_batch_norm(graph, arrays, shape)
        out["fc2_bias"][0] += 3.0   # one class's logit: the probabilities move (a shift of all would not)
        return folded, out
    monkeypatch.setattr(ec, "fold_batch_norm", broken_fold)
    with pytest.raises(ExportError, match="does not reproduce mxbn's inference"):
        export_checkpoint(os.path.join(run, "checkpoint.params"), str(tmp_path / "out"), log=lambda *_: None)
    assert os.listdir(tmp_path / "out") == []


def _cli(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=300)


def test_cli_writes_and_reports_parity(trained, tmp_path):
    _, run = trained
    out = _cli(os.path.join(run, "best.params"), "--out", str(tmp_path / "e"))
    assert out.returncode == 0, out.stderr
    assert "parity on 200 test images" in out.stdout and ": ok" in out.stdout
    assert sorted(os.listdir(tmp_path / "e")) == ["lenet-0000.params", "lenet-symbol.json"]


@pytest.mark.parametrize("case", ["missing", "truncated", "png", "format", "out"])
def test_cli_bad_input_is_one_line_and_exit_2(trained, tmp_path, case):
    _, run = trained
    ckpt = os.path.join(run, "checkpoint.params")
    args = {"missing": [str(tmp_path / "nope.params")],
            "truncated": [str(tmp_path / "cut.params")],
            "png": [os.path.join(run, "curves.png")],
            "format": [ckpt, "--format", "tflite"],
            "out": [ckpt, "--out", "/etc/passwd/x"]}[case]
    if case == "truncated":
        with open(ckpt, "rb") as f, open(args[0], "wb") as g:
            g.write(f.read()[:1000])
    out = _cli(*args)
    assert out.returncode == 2, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert "Traceback" not in out.stderr and "error:" in last, out.stderr   # argparse's usage, then one line
    if case != "format":
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.realdata
@pytest.mark.skipif(not has_fashion_mnist(), reason="Fashion-MNIST not installed")
def test_export_parity_on_real_test_images(tmp_path):
    out = str(tmp_path / "run")
    train_cnn(TrainConfig(ctx="cpu", data_dir=FASHION_DIR, epochs=1, limit_train=40 * 128, limit_test=1000), out,
              log=lambda *_: None, progress=False)
    _, parity = export_checkpoint(os.path.join(out, "best.params"), str(tmp_path / "e"), log=lambda *_: None)
    assert parity.ok and parity.images == 1000 and parity.top1_agreement >= 0.999


def _onnx_usable():
    try:
        import onnx
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return hasattr(onnx, "mapping")


needs_onnx = pytest.mark.skipif(not _onnx_usable(), reason="the onnx extra is not installed (pip install -e .[onnx])")


@needs_onnx
@pytest.mark.parametrize("name", list(NETS))
def test_onnx_runs_the_folded_graph_in_onnxruntime(name, tmp_path):
    import onnx
    import onnxruntime
    from mxbn.export import save_onnx
    make, net, shape, _, _ = NETS[name]
    rng = np.random.default_rng(5)
    params, state = make(rng)
    graph, arrays = inference_graph(net, params, state, (1,) + shape[1:])
    folded, folded_arrays = fold_batch_norm(graph, arrays, (1,) + shape[1:])
    path = save_onnx(folded, folded_arrays, str(tmp_path / "m.onnx"), (1,) + shape[1:])
    model = onnx.load(path)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [13]
    assert [i.name for i in model.graph.input] == ["data"] and [o.name for o in model.graph.output] == ["logits"]
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    for n in (1, 9):   # the batch dimension is free
        X = rng.random((n,) + shape[1:]).astype(np.float32)
        expected = net(params, state, nd.array(X), False).asnumpy()
        got = session.run(None, {"data": X})[0]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


@needs_onnx
def test_onnx_export_of_a_checkpoint_passes_parity_and_a_corrupted_one_fails(trained, tmp_path, monkeypatch):
    import mxbn.export_checkpoint as ec
    _, run = trained
    paths, parity = export_checkpoint(os.path.join(run, "best.params"), str(tmp_path / "ok"), fmt="onnx",
                                      log=lambda *_: None)
    assert [os.path.basename(p) for p in paths] == ["lenet.onnx"] and parity.ok and parity.top1_agreement == 1.0

    def broken_fold(graph, arrays, shape):
        folded, out = fold_batch_norm(graph, arrays, shape)
        out["conv1_weight"] = out["conv1_weight"] * 3.0
        return folded, out
    monkeypatch.setattr(ec, "fold_batch_norm", broken_fold)
    with pytest.raises(ExportError, match="does not reproduce"):
        export_checkpoint(os.path.join(run, "best.params"), str(tmp_path / "bad"), fmt="onnx", log=lambda *_: None)
    assert os.listdir(tmp_path / "bad") == []


def test_onnx_missing_or_too_new_is_one_clear_error(monkeypatch, trained, tmp_path):
    import types
    _, run = trained
    monkeypatch.setitem(sys.modules, "onnx", None)   # not installed
    with pytest.raises(ExportError, match=r"needs onnx: pip install -e \".\[onnx\]\""):
        export_checkpoint(os.path.join(run, "best.params"), str(tmp_path / "a"), fmt="onnx", log=lambda *_: None)
    monkeypatch.setitem(sys.modules, "onnx", types.SimpleNamespace(__version__="1.19.0"))   # no onnx.mapping
    with pytest.raises(ExportError, match="needs onnx < 1.19 .*onnx 1.19.0 no longer has"):
        export_checkpoint(os.path.join(run, "best.params"), str(tmp_path / "b"), fmt="onnx", log=lambda *_: None)
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


@pytest.fixture(scope="module")
def norm_runs(tmp_path_factory, tiny_data):
    """One short run per norm, trained when a test first asks for it and shared by both formats."""
    runs = {}

    def run_of(norm):
        if norm not in runs:
            runs[norm] = str(tmp_path_factory.mktemp(norm) / "run")
            train_cnn(TrainConfig(ctx="cpu", data_dir=tiny_data, epochs=1, batch_size=64, seed=0, norm=norm,
                                  init="he", limit_train=320), runs[norm], log=lambda *_: None, progress=False)
        return runs[norm]
    return run_of


@pytest.mark.parametrize("norm", ["renorm", "gn", "ln", "in", "none"])
@pytest.mark.parametrize("fmt", ["mxnet", pytest.param("onnx", marks=needs_onnx)])
def test_every_norm_exports_and_takes_any_batch_size(norm_runs, tmp_path, norm, fmt):
    """Traced at one image, the graph must not hold the batch size (group norm reshapes by it) and must
    hold only ops the ONNX exporter translates at opset 13 (group norm's mean and 1/sqrt)."""
    run = norm_runs(norm)
    paths, parity = export_checkpoint(os.path.join(run, "checkpoint.params"), str(tmp_path / "out"), fmt=fmt,
                                      log=lambda *_: None)
    assert parity.ok and parity.images == 200 and parity.max_probability_difference < 1e-5
