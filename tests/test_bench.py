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
        for impl in ("mxbn fused", "mxbn scratch", "nd.BatchNorm"):
            assert (shape, impl) in impls
    for r in result["ops"]:
        assert r["train_ms"] > 0 and r["infer_ms"] > 0
    expected = [v for v in MODEL_VARIANTS if v != "torch-eager" or torch_available()]
    assert [m["variant"] for m in result["models"]] == expected
    for m in result["models"]:
        assert "error" not in m, m
        assert m["images_per_sec"] > 0 and m["peak_rss_mb"] > 0 and m["ratio_to_gluon"] > 0
    assert result["pipeline"]["seconds_per_epoch"] > 0
    assert "set_by_mxbn" in result["threads"]
    for variant in expected:
        assert variant in out.stdout
