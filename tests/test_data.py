import gzip
import hashlib
import os

import numpy as np
import pytest

import mxnet as mx
from mxbn import data
from mxbn.data import DataError

from helpers import make_idx_dataset


def test_idx_roundtrip_gzip_and_raw(tmp_path):
    a = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28)).astype(np.uint8)
    for name in ("x-idx3-ubyte.gz", "x-idx3-ubyte"):
        data.write_idx(tmp_path / name, a)
        np.testing.assert_array_equal(data.read_idx(tmp_path / name, 3), a)


def test_load_split_and_search_order(tmp_path):
    first = make_idx_dataset(tmp_path / "explicit", seed=1)
    env_dir = make_idx_dataset(tmp_path / "env", seed=2, compress=False)
    home = tmp_path / "mxhome"
    cache = make_idx_dataset(home / "datasets" / "mnist", seed=3)
    environ = {"MXBN_DATA_DIR": env_dir, "MXNET_HOME": str(home)}
    assert data.find_data_dir("mnist", first, environ) == first
    assert data.find_data_dir("mnist", None, environ) == env_dir
    assert data.find_data_dir("mnist", None, {"MXNET_HOME": str(home)}) == cache
    assert data.find_data_dir("mnist", None, {"MXNET_HOME": str(tmp_path / "empty")}) is None
    labels = [label for label, _ in data.candidate_dirs("fashion-mnist", "d", environ)]
    assert labels == ["--data-dir", "$MXBN_DATA_DIR", "MXNet cache", "system package"]
    images, labels = data.load_split(env_dir, "train")
    assert images.shape == (512, 28, 28) and labels.shape == (512,) and labels.max() <= 9


def test_explicit_data_dir_must_hold_the_files(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        data.find_data_dir("mnist", str(tmp_path / "nope"), {})
    half = make_idx_dataset(tmp_path / "half")
    os.remove(tmp_path / "half" / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match=r"missing t10k-images-idx3-ubyte, t10k-labels"):
        data.find_data_dir("mnist", half, {})


@pytest.mark.parametrize("corrupt,pattern", [
    (lambda p: p.write_bytes(b""), r"file is empty"),
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), r"corrupt or truncated gzip"),
    (lambda p: p.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + b"\x00" * 5)),
     r"bad magic number 0x00000801, expected 0x00000803"),
    (lambda p: p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-10])),
     r"header says shape \(512, 28, 28\).*truncated or corrupt"),
])
def test_bad_image_files_are_named(tmp_path, corrupt, pattern):
    d = make_idx_dataset(tmp_path / "d")
    path = tmp_path / "d" / "train-images-idx3-ubyte.gz"
    corrupt(path)
    with pytest.raises(DataError, match=pattern) as info:
        data.load_split(d, "train")
    assert "train-images-idx3-ubyte.gz" in str(info.value)


def test_count_mismatch_and_label_range(tmp_path):
    d = make_idx_dataset(tmp_path / "d")
    data.write_idx(tmp_path / "d" / "train-labels-idx1-ubyte.gz", np.zeros(100, np.uint8))
    with pytest.raises(DataError, match=r"holds 512 images but .*train-labels.* holds 100 labels"):
        data.load_split(d, "train")
    data.write_idx(tmp_path / "d" / "train-labels-idx1-ubyte.gz", np.full(512, 12, np.uint8))
    with pytest.raises(DataError, match=r"label 12 at index 0 is outside 0-9"):
        data.load_split(d, "train")


def test_offline_download_fails_clearly_and_leaves_no_partial_file(tmp_path, monkeypatch):
    # Port 9 on loopback refuses at once: a stand-in for "no network".
    monkeypatch.setenv("MXNET_GLUON_REPO", "http://127.0.0.1:9/")
    environ = {"MXNET_HOME": str(tmp_path / "home")}
    with pytest.raises(DataError, match=r"apt-get install dataset-fashion-mnist.*--data-dir"):
        data.load_dataset("mnist", None, allow_download=True, environ=environ)
    cache = tmp_path / "home" / "datasets" / "mnist"
    assert list(cache.iterdir()) == []


def test_download_checks_sha1_and_moves_files_into_the_cache(tmp_path, monkeypatch):
    """Serve generated files over loopback HTTP; a wrong sha1 is rejected, the right one lands."""
    import functools
    import http.server
    import threading
    src = tmp_path / "repo" / "gluon" / "dataset" / "mnist"
    make_idx_dataset(src, n_train=64, n_test=32)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "repo"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("MXNET_GLUON_REPO", f"http://127.0.0.1:{server.server_port}/")
        environ = {"MXNET_HOME": str(tmp_path / "home")}
        cache = tmp_path / "home" / "datasets" / "mnist"
        with pytest.raises(DataError, match="could not download mnist"):  # published sha1s do not match
            data.download("mnist", environ, retries=1)
        assert sorted(os.listdir(cache)) == []
        real = {f: hashlib.sha1((src / f).read_bytes()).hexdigest() for f in data.DATASETS["mnist"].sha1}
        monkeypatch.setitem(data.DATASETS, "mnist", data.DatasetInfo("mnist", real, ()))
        ds = data.load_dataset("mnist", None, allow_download=True, environ=environ)
        assert ds.source == str(cache) and ds.train_images.shape == (64, 28, 28)
        assert sorted(os.listdir(cache)) == sorted(real)
    finally:
        server.shutdown()


def test_to_device_and_epoch_batches():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(10, 28, 28)).astype(np.uint8)
    labels = np.arange(10, dtype=np.uint8)
    X, y = data.to_device(images, labels, mx.cpu())
    assert X.shape == (10, 1, 28, 28) and X.dtype == np.float32
    np.testing.assert_allclose(X.asnumpy()[:, 0], images / 255.0, rtol=1e-6)
    batches, dropped = data.epoch_batches(X, y, 4)
    assert [b[0].shape[0] for b in batches] == [4, 4, 2] and dropped == 0
    batches, dropped = data.epoch_batches(X[:9], y[:9], 4, min_batch_size=2)
    assert [b[0].shape[0] for b in batches] == [4, 4] and dropped == 1
    order = [np.concatenate([b[1].asnumpy() for b in data.epoch_batches(X, y, 3, np.random.default_rng(s))[0]])
             for s in (5, 5, 6)]
    np.testing.assert_array_equal(order[0], order[1])          # same seed, same order
    assert sorted(order[0]) == list(range(10))                  # every sample exactly once
    assert not np.array_equal(order[0], order[2])
    # images follow their labels through the shuffle
    batch = data.epoch_batches(X, y, 10, np.random.default_rng(5))[0][0]
    np.testing.assert_array_equal(batch[0].asnumpy(), X.asnumpy()[batch[1].asnumpy().astype(int)])
