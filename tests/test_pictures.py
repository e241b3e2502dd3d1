"""Pictures of every training run, and scripts/predict.py, on tiny generated data.

The checks tie each picture to the numbers it shows: the confusion matrix sums
to the test-set size and its diagonal to the accuracy in metrics.json; the
predictions of scripts/predict.py on test images saved as PNG files are the
evaluator's.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import mxnet as mx

from mxbn import models
from mxbn.checkpoint import load_checkpoint, save_checkpoint
from mxbn.config import TrainConfig
from mxbn.data import DATASETS, load_split
from mxbn.predict import ImageError, load_image
from mxbn.run import train_cnn

from helpers import make_idx_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREDICT = os.path.join(ROOT, "scripts", "predict.py")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    data = make_idx_dataset(tmp_path_factory.mktemp("tiny-pictures"), n_train=600, n_test=150)
    out = str(tmp_path_factory.mktemp("run") / "lenet")
    metrics = train_cnn(TrainConfig(ctx="cpu", data_dir=data, epochs=3, batch_size=64, seed=0), out,
                        log=lambda *_: None, progress=False)
    return data, out, metrics


def test_confusion_matrix_and_pictures_reflect_the_run(run):
    _, out, metrics = run
    evaluation = json.load(open(os.path.join(out, "evaluation.json")))
    counts = np.array(evaluation["confusion"])
    assert counts.shape == (10, 10) and counts.sum() == 150 == evaluation["test_images"]
    # the diagonal is the test accuracy the trainer recorded (same model, same test set)
    assert np.trace(counts) / counts.sum() == pytest.approx(metrics["final"]["test_acc"], abs=1e-9)
    assert evaluation["class_names"] == list(DATASETS["fashion-mnist"].class_names)
    assert len(evaluation["sample"]["predicted"]) == 32
    for name in ("confusion.png", "predictions.png", "curves.png"):
        with open(os.path.join(out, name), "rb") as f:
            assert f.read(8) == PNG_MAGIC, name


def _save_png(pixels, path):
    from PIL import Image
    Image.fromarray(pixels).save(path)
    return path


def test_predict_script_gives_the_evaluators_labels_and_survives_a_bad_file(run, tmp_path):
    data, out, _ = run
    evaluation = json.load(open(os.path.join(out, "evaluation.json")))
    images, _ = load_split(data, "test")
    paths = [_save_png(images[i], str(tmp_path / f"test{i}.png")) for i in range(6)]
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    result = subprocess.run([sys.executable, PREDICT, os.path.join(out, "checkpoint.params"), *paths[:3],
                             str(bad), *paths[3:]], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1  # one file failed
    assert f"error: {bad}: not a readable image" in result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith(str(tmp_path))]
    assert len(lines) == 6  # every other file was classified
    names = evaluation["class_names"]
    for i, line in enumerate(lines):
        path, rest = line.split(": ", 1)
        assert path == paths[i]
        assert rest.startswith(names[evaluation["sample"]["predicted"][i]] + " ("), (line, i)
        probability = float(rest.split("(")[1].split(")")[0])
        assert probability == pytest.approx(evaluation["sample"]["probability"][i], abs=1e-3)


def test_images_are_converted_with_a_note(tmp_path):
    from PIL import Image
    rgb = np.zeros((56, 40, 3), dtype=np.uint8)
    rgb[10:30, 10:20] = (200, 100, 50)
    path = str(tmp_path / "photo.jpg")
    Image.fromarray(rgb).save(path)
    pixels, notes = load_image(path)
    assert pixels.shape == (28, 28) and pixels.dtype == np.uint8
    assert notes == ["converted from RGB to grayscale", "resized from 40x56 to 28x28"]
    with pytest.raises(ImageError, match="no such file"):
        load_image(str(tmp_path / "missing.png"))


def test_a_checkpoint_of_another_architecture_is_a_clear_error(run, tmp_path):
    _, out, _ = run
    ckpt = load_checkpoint(os.path.join(out, "checkpoint.params"), mx.cpu())
    params = {k: v for k, v in ckpt["params"].items() if not k.startswith("bn2_")}  # a LeNet with one BN
    path = str(tmp_path / "other.params")
    save_checkpoint(path, params, {k: v for k, v in ckpt["state"].items() if not k.startswith("bn2_")},
                    ckpt["opt_state"], ckpt["meta"])
    image = _save_png(np.zeros((28, 28), dtype=np.uint8), str(tmp_path / "blank.png"))
    result = subprocess.run([sys.executable, PREDICT, path, image], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "bn2_gamma: missing in checkpoint" in result.stderr


def test_trace_bn_records_the_percentile_bands_without_changing_training(run, tmp_path):
    data, _, plain = run
    out = str(tmp_path / "traced")
    traced = train_cnn(TrainConfig(ctx="cpu", data_dir=data, epochs=3, batch_size=64, seed=0, trace_bn=True), out,
                       log=lambda *_: None, progress=False)
    # the probe reads parameters and moving statistics only: training is the same to the bit
    assert [h["train_loss"] for h in traced["history"]] == [h["train_loss"] for h in plain["history"]]
    trace = json.load(open(os.path.join(out, "bn_trace.json")))
    assert trace["percentiles"] == [15, 50, 85] and set(trace["layers"]) == {"bn1", "bn2"}
    assert trace["steps"][0] == 0 and trace["steps"] == sorted(trace["steps"]) and len(trace["steps"]) > 10
    for layer in trace["layers"].values():
        for side in ("before", "after"):
            bands = np.array(layer[side])
            assert bands.shape == (len(trace["steps"]), 3)
            assert (np.diff(bands, axis=1) >= 0).all()  # 15th <= 50th <= 85th
    # step 0 against an independent computation: bn1's input is conv1 of the initial weights
    images, _ = load_split(data, "test")
    X = images[:256].astype(np.float64)[:, None] / 255.0
    weight = models.lenet_params(mx.cpu(), seed=0)[0]["conv1_weight"].asnumpy()[0, 0].astype(np.float64)
    conv = np.stack([[np.sum(x[0, i:i + 5, j:j + 5] * weight) for j in range(24)] for x in X for i in range(24)])
    values = np.sort(conv.ravel())
    expected = [values[max(1, int(np.ceil(q / 100 * values.size))) - 1] for q in (15, 50, 85)]
    np.testing.assert_allclose(trace["layers"]["bn1"]["before"][0], expected, rtol=1e-4, atol=1e-6)
    with open(os.path.join(out, "bn_trace.png"), "rb") as f:
        assert f.read(8) == PNG_MAGIC


def test_trace_bn_needs_batch_norm():
    from mxbn.config import ConfigError
    with pytest.raises(ConfigError, match="trace_bn follows the batch-norm layers"):
        TrainConfig(use_bn=False, trace_bn=True).validate()
