"""docs/tutorial.ipynb runs top to bottom in a real Jupyter kernel, and is committed with its outputs.

The test runs it on a small generated dataset (MXBN_TUTORIAL_QUICK=1: one epoch
on a subset); any cell error fails.
"""
import os

import pytest

from helpers import make_idx_dataset

nbformat = pytest.importorskip("nbformat", reason="the notebook tools come with the test extra: pip install -e .[test]")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "docs", "tutorial.ipynb")


def test_committed_notebook_shows_its_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs for c in code if "import" not in c.source.splitlines()[0]), \
        "re-run the notebook and commit it with its outputs"
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # accuracy comparison, curves, confusion matrix, predictions
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    data = make_idx_dataset(tmp_path / "data", n_train=600, n_test=200)
    monkeypatch.setenv("MXBN_TUTORIAL_QUICK", "1")
    monkeypatch.setenv("MXBN_TUTORIAL_OUT", str(tmp_path / "runs"))
    monkeypatch.setenv("MXBN_DATA_DIR", data)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": os.path.join(ROOT, "docs")}})
    client.execute()  # raises CellExecutionError naming the cell on any error
    for name in ("bn", "no-bn"):
        for picture in ("curves.png", "confusion.png", "predictions.png"):
            assert os.path.exists(tmp_path / "runs" / name / picture)
