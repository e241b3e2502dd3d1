"""The experiments' --quick paths and the report, on real data (skipped without it)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mxbn.experiments import optimizers
from mxbn.experiments.common import smooth
from mxbn.experiments.report import write_report

from helpers import FASHION_DIR, has_fashion_mnist

import reference as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_trajectories_are_the_optimizers_of_mxbn_optim():
    for name, lr, _ in optimizers.OPTIMIZERS:
        np.testing.assert_allclose(optimizers.trajectory(name, lr), ref.optimizer_trajectory(name, lr, 30),
                                   rtol=1e-5, atol=1e-6)


def test_smooth_is_a_trailing_mean():
    np.testing.assert_allclose(smooth([1, 2, 3, 4], window=2), [1, 1.5, 2.5, 3.5])


@pytest.mark.realdata
@pytest.mark.skipif(not has_fashion_mnist(), reason=f"Fashion-MNIST not found in {FASHION_DIR}")
def test_quick_experiments_and_report(tmp_path):
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "reproduce.py"), "all", "--quick",
                          "--out", str(runs)], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    for name in ("lenet-bn", "mlp-grid", "mlp-sigmoid", "optimizers", "init", "batch-size", "lr-sensitivity"):
        m = json.loads((runs / name / "metrics.json").read_text())
        assert m["dataset"] in ("mnist", "fashion-mnist", "synthetic regression") and m["quick"] is True
        assert m["claims"] and all(c["verdict"] in ("reproduced", "partly", "not reproduced") for c in m["claims"])
        for fig in m["figures"]:
            assert (runs / name / fig).stat().st_size > 1000
    rep = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "reproduce.py"), "report",
                          "--out", str(runs), "--docs", str(docs)], capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr
    text = (docs / "results.md").read_text()
    assert "## `optimizers`" in text and "## `init`" in text and "## `lenet-bn`" in text
    assert "(quick run)" in text and "## `lr-sensitivity`" in text
    assert "figures/optimizers-trajectories.png" in text and (docs / "figures" / "init-histograms.png").exists()


def test_report_lists_experiments_not_yet_run(tmp_path):
    path = write_report(str(tmp_path / "runs"), str(tmp_path / "docs"), ["optimizers"], planned=["x"])
    text = open(path).read()
    assert "## Not yet run" in text and "## Not yet reproduced" in text and "`x`" in text


def test_regression_data_follows_the_formula():
    import mxnet as mx
    from mxbn.experiments.regression import COEF, NOISE, make_data
    (X, Y), _ = make_data(mx.cpu())
    resid = Y.asnumpy() - (X.asnumpy().astype(np.float64) ** 2) @ COEF
    assert abs(resid.std() - NOISE) < 0.01 and abs(resid.mean()) < 0.01
