"""scripts/bench.py --quick runs and produces every row (no timing assertions: machines are noisy)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from bench_peers.suite import MODEL_VARIANTS, torch_available  # noqa: E402


def test_quick_bench_produces_every_row(tmp_path):
    out_json = tmp_path / "bench.json"
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--quick", "--ctx", "cpu",
                          "--json", str(out_json)], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    result = json.loads(out_json.read_text())
    impls = {(r["shape"], r["impl"]) for r in result["ops"]}
    shapes = {r["shape"] for r in result["ops"]}
    assert len(shapes) >= 2
    for shape in shapes:
        for impl in ("mxbn fused", "mxbn scratch", "fused kernel only", "nd.BatchNorm"):
            assert (shape, impl) in impls
    for r in result["ops"]:
        assert r["train_ms"] > 0 and (r["infer_ms"] > 0 if r["impl"] != "fused kernel only" else r["infer_ms"] is None)
    expected = [v for v in MODEL_VARIANTS if v != "torch-eager" or torch_available()]
    assert [m["variant"] for m in result["models"]] == expected
    for m in result["models"]:
        assert "error" not in m, m
        assert m["images_per_sec"] > 0 and m["peak_rss_mb"] > 0 and m["ratio_to_gluon"] > 0
    assert result["pipeline"]["seconds_per_epoch"] > 0
    assert "set_by_mxbn" in result["threads"]
    for variant in expected:
        assert variant in out.stdout


def test_quick_sweep_gives_every_variant_at_every_batch_size(tmp_path):
    out_json = tmp_path / "sweep.json"
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--sweep", "8", "--quick",
                          "--rounds", "1", "--json", str(out_json)], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    result = json.loads(out_json.read_text())
    expected = ["mxbn-static", "gluon-hybrid"] + (["torch-eager"] if torch_available() else [])
    assert [(r["batch_size"], r["variant"]) for r in result["rows"]] == [(8, v) for v in expected]
    for r in result["rows"]:
        assert "error" not in r, r
        assert r["gflops"] == r["images_per_sec"] * result["training_flops_per_image"] * 1e-9
    assert result["training_flops_per_image"] == 7519680   # LeNet's convolutions and dense layers, worked by hand
    assert "GFLOP/s" in out.stdout


def test_ops_alone_gives_every_implementation_at_every_shape(tmp_path):
    out_json = tmp_path / "ops.json"
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--ops", "--quick",
                          "--repeat", "2", "--json", str(out_json)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out_json.read_text())["ops"]
    assert {(r["shape"], r["impl"]) for r in rows} == {
        (shape, impl) for shape in ("16x20x24x24", "16x128")
        for impl in ("mxbn fused", "mxbn scratch", "fused kernel only", "nd.BatchNorm")}
    assert "x fused)" in out.stdout and "train vs nd" in out.stdout


def test_a_bad_sweep_is_a_usage_error():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--sweep", "64,1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "every batch size must be >= 2, got '64,1'" in out.stderr


def test_the_peak_is_derived_from_the_cpu_it_names(tmp_path):
    from mxbn.bench import cpu_peak_gflops
    intel = tmp_path / "intel"
    intel.write_text("vendor_id\t: GenuineIntel\ncpu MHz\t\t: 2000.000\nflags\t\t: fpu avx2 avx512f\n")
    amd = tmp_path / "amd"
    amd.write_text("vendor_id\t: AuthenticAMD\ncpu MHz\t\t: 2000.000\nflags\t\t: fpu avx2 avx512f\n")
    assert cpu_peak_gflops(str(intel), cores=2) == (256.0, "2 cores x 2000 MHz x 64 FLOP/cycle")
    assert cpu_peak_gflops(str(amd), cores=2)[0] == 128.0
    assert cpu_peak_gflops(str(tmp_path / "none"))[0] is None


def test_the_gluon_peer_is_mxbn_lenet_at_the_same_widths():
    """The "-c16" pair (and the default pair) compare the same function: Gluon's layers given mxbn's
    parameters give mxbn's logits in training mode."""
    import mxnet as mx
    import numpy as np
    from mxnet import autograd, nd
    from bench_peers.mxnet_peers import gluon_lenet
    from mxbn.bench import BLOCK_CHANNELS
    from mxbn.models import lenet, lenet_params
    X = nd.array(np.random.default_rng(0).normal(size=(4, 1, 28, 28)))
    for channels in (None, BLOCK_CHANNELS):
        params, state = lenet_params(mx.cpu(), seed=1, channels=channels)
        net = gluon_lenet(*(() if channels is None else (channels,)))
        net.initialize()
        net(X)
        ours = [params[k] for k in ("conv1_weight", "bn1_gamma", "bn1_beta")] + [state["bn1_moving_mean"],
                state["bn1_moving_vari"]] + [params[k] for k in ("conv2_weight", "bn2_gamma", "bn2_beta")] + [
                state["bn2_moving_mean"], state["bn2_moving_vari"]] + [
                params[k] for k in ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")]
        theirs = list(net.collect_params().values())
        assert [p.shape for p in theirs] == [a.shape for a in ours]
        for p, a in zip(theirs, ours):
            p.set_data(a)
        with autograd.record():
            expected = net(X)
        got = lenet(params, state, X, is_training=True)
        np.testing.assert_allclose(got.asnumpy(), expected.asnumpy(), rtol=1e-4, atol=1e-6)
