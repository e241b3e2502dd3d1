"""MNIST-family data: idx files, where to find them, download, device-resident batches.

The four standard files of a dataset are ``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
``t10k-labels-idx1-ubyte``, each optionally gzipped (``.gz``).  They are read
once into NumPy, converted once to float32 in [0, 1] with shape (N, 1, 28, 28),
and kept on the training context; an epoch is one shuffle index and slices.
"""
import gzip
import os
import shutil
import struct
import tempfile
import zlib
from dataclasses import dataclass

import numpy as np
from mxnet import nd

__all__ = [
    "DataError", "DATASETS", "Dataset", "read_idx", "load_split", "user_dirs", "candidate_dirs", "find_data_dir",
    "download", "load_dataset", "to_device", "images_to_device", "epoch_batches", "write_idx", "validation_split",
    "VALIDATION_SEED", "default_validation_size",
]

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
NUM_CLASSES = 10
IMAGE_SIZE = 28


@dataclass(frozen=True)
class DatasetInfo:
    namespace: str        # folder in MXNet's dataset repository and cache
    sha1: dict            # sha1 of each published .gz file, as MXNet's gluon datasets check them
    system_dirs: tuple    # folders of distribution packages that ship the files
    class_names: tuple = tuple(str(k) for k in range(10))  # label k is class_names[k]


DATASETS = {
    "fashion-mnist": DatasetInfo(
        namespace="fashion-mnist",
        sha1={"train-images-idx3-ubyte.gz": "0cf37b0d40ed5169c6b3aba31069a9770ac9043d",
              "train-labels-idx1-ubyte.gz": "236021d52f1e40852b06a4c3008d8de8aef1e40b",
              "t10k-images-idx3-ubyte.gz": "626ed6a7c06dd17c0eec72fa3be1740f146a2863",
              "t10k-labels-idx1-ubyte.gz": "17f9ab60e7257a1620f4ad76bbbaf857c3920701"},
        # Debian/Ubuntu package dataset-fashion-mnist (recompressed .gz, same content)
        system_dirs=("/usr/share/datasets/fashion-mnist",),
        # the names of Fashion-MNIST's README, in label order
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                     "Ankle boot")),
    "mnist": DatasetInfo(
        namespace="mnist",
        sha1={"train-images-idx3-ubyte.gz": "6c95f4b05d2bf285e1bfb0e7960c31bd3b3f8a7d",
              "train-labels-idx1-ubyte.gz": "2a80914081dc54586dbdf242f9805a6b8d2a15fc",
              "t10k-images-idx3-ubyte.gz": "c3a25af1f52dad7f726cce8cacb138654b760d48",
              "t10k-labels-idx1-ubyte.gz": "763e7fa3757d93b0cdec073cef058b2004252c17"},
        system_dirs=()),
}


class DataError(ValueError):
    """A data file or folder is missing or malformed; the message names it."""


# --------------------------------------------------------------------------- #
# idx files
# --------------------------------------------------------------------------- #
_IDX_UBYTE = 0x08


def _read_bytes(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except PermissionError:
        raise DataError(f"{path}: permission denied; make the file readable") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected an idx file") from None
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise DataError(f"{path}: corrupt or truncated gzip data ({e}); delete it and fetch it again") from None
    return raw


def read_idx(path, ndim):
    """Read an idx file of unsigned bytes with ``ndim`` dimensions (gzip or raw).

    Checks the magic number (two zero bytes, type 0x08 = ubyte, the number of
    dimensions) and that the payload has exactly prod(dims) bytes.
    """
    raw = _read_bytes(path)
    if len(raw) == 0:
        raise DataError(f"{path}: file is empty, expected an idx file")
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an idx header")
    zero1, zero2, dtype, got_ndim = raw[0], raw[1], raw[2], raw[3]
    magic = struct.unpack(">I", raw[:4])[0]
    if zero1 or zero2 or dtype != _IDX_UBYTE or got_ndim != ndim:
        raise DataError(f"{path}: bad magic number 0x{magic:08x}, expected 0x{0x800 + ndim:08x} "
                        f"(unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header ({len(raw)} bytes, expected at least {header})")
    dims = struct.unpack(">" + "I" * ndim, raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    payload = len(raw) - header
    if payload != expected:
        raise DataError(f"{path}: header says shape {dims} ({expected} bytes) but the file holds "
                        f"{payload} bytes of data; the file is truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def write_idx(path, array, compress=None):
    """Write a uint8 array as an idx file (gzip if the name ends in .gz). For tests and tools."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x800 + array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    data = header + array.tobytes()
    compress = str(path).endswith(".gz") if compress is None else compress
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if compress else data)


def _split_paths(directory, split):
    """Paths of the images and labels files of ``split`` in ``directory`` (gz preferred), or None."""
    paths = []
    for stem in SPLIT_FILES[split]:
        for name in (stem + ".gz", stem):
            if os.path.isfile(os.path.join(directory, name)):
                paths.append(os.path.join(directory, name))
                break
        else:
            return None
    return paths


def load_split(directory, split):
    """(images uint8 (N, 28, 28), labels uint8 (N,)) of ``split`` ("train"/"test") in ``directory``."""
    paths = _split_paths(directory, split)
    if paths is None:
        raise DataError(f"{directory}: missing {' or '.join(SPLIT_FILES[split])} (optionally .gz)")
    images_path, labels_path = paths
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, expected "
                        f"{IMAGE_SIZE}x{IMAGE_SIZE}")
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
                        f"{labels.shape[0]} labels; the counts must match")
    if images.shape[0] == 0:
        raise DataError(f"{images_path}: no images")
    if labels.max() >= NUM_CLASSES:
        bad = int(np.argmax(labels >= NUM_CLASSES))
        raise DataError(f"{labels_path}: label {int(labels[bad])} at index {bad} is outside 0-{NUM_CLASSES - 1}")
    return images, labels


# --------------------------------------------------------------------------- #
# where the files are
# --------------------------------------------------------------------------- #
def mxnet_cache_dir(name, environ=os.environ):
    """MXNet's dataset cache for ``name``: $MXNET_HOME/datasets/<name> (default ~/.mxnet)."""
    home = environ.get("MXNET_HOME") or os.path.join(os.path.expanduser("~"), ".mxnet")
    return os.path.join(home, "datasets", DATASETS[name].namespace)


def user_dirs(data_dir=None, environ=os.environ):
    """The folders the user named, searched first for every dataset: --data-dir, then $MXBN_DATA_DIR."""
    dirs = []
    if data_dir:
        dirs.append(("--data-dir", data_dir))
    if environ.get("MXBN_DATA_DIR"):
        dirs.append(("$MXBN_DATA_DIR", environ["MXBN_DATA_DIR"]))
    return dirs


def candidate_dirs(name, data_dir=None, environ=os.environ):
    """Folders searched, in order: --data-dir, $MXBN_DATA_DIR, MXNet's cache, system packages."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    dirs = user_dirs(data_dir, environ)
    dirs.append(("MXNet cache", mxnet_cache_dir(name, environ)))
    dirs.extend(("system package", d) for d in DATASETS[name].system_dirs)
    return dirs


def find_data_dir(name, data_dir=None, environ=os.environ):
    """The first candidate folder holding all four files, or None.

    An explicit ``data_dir`` must hold them: asking for a folder and silently
    reading another would be a surprise.
    """
    if data_dir:
        if not os.path.isdir(data_dir):
            raise DataError(f"--data-dir {data_dir}: not a directory")
        if not os.access(data_dir, os.R_OK | os.X_OK):
            raise DataError(f"--data-dir {data_dir}: permission denied")
        missing = [s for s in SPLIT_FILES if _split_paths(data_dir, s) is None]
        if missing:
            names = [f for s in missing for f in SPLIT_FILES[s]]
            raise DataError(f"--data-dir {data_dir}: missing {', '.join(names)} (optionally .gz)")
        return data_dir
    for _, directory in candidate_dirs(name, None, environ):
        if os.path.isdir(directory) and all(_split_paths(directory, s) for s in SPLIT_FILES):
            return directory
    return None


def download(name, environ=os.environ, retries=2):
    """Download the four files into MXNet's cache with sha1 checks; returns the folder.

    Each file is downloaded into a temporary folder and moved into place only
    after its sha1 matched, so an interrupted or failed download leaves no
    partial file where the search above would find it.
    """
    from mxnet.gluon.utils import _get_repo_file_url, download as gluon_download
    info = DATASETS[name]
    target = mxnet_cache_dir(name, environ)
    os.makedirs(target, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".download-", dir=target)
    try:
        for filename, sha1 in info.sha1.items():
            final = os.path.join(target, filename)
            if os.path.isfile(final):
                continue
            url = _get_repo_file_url("gluon/dataset/" + info.namespace, filename)
            path = gluon_download(url, path=os.path.join(staging, filename), sha1_hash=sha1, retries=retries)
            os.replace(path, final)
    except Exception as e:
        raise DataError(
            f"could not download {name} into {target} ({type(e).__name__}: {e}). Offline, get the files "
            f"another way: `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, Fashion-MNIST), or put "
            f"the four idx files in a folder and pass --data-dir DIR (or set MXBN_DATA_DIR)") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


@dataclass(frozen=True)
class Dataset:
    name: str
    source: str                 # folder the files were read from
    train_images: np.ndarray    # uint8 (N, 28, 28)
    train_labels: np.ndarray    # uint8 (N,)
    test_images: np.ndarray
    test_labels: np.ndarray


def load_dataset(name, data_dir=None, allow_download=True, environ=os.environ):
    """Find (or download) and read ``name``; every file is validated before training starts."""
    directory = find_data_dir(name, data_dir, environ)
    if directory is None:
        if not allow_download:
            searched = "; ".join(f"{label}: {d}" for label, d in candidate_dirs(name, None, environ))
            raise DataError(f"{name} not found (searched {searched}). Get it with `apt-get install "
                            f"dataset-fashion-mnist` (Fashion-MNIST) or pass --data-dir DIR")
        directory = download(name, environ)
    train = load_split(directory, "train")
    test = load_split(directory, "test")
    return Dataset(name, directory, train[0], train[1], test[0], test[1])


# --------------------------------------------------------------------------- #
# device-resident batches
# --------------------------------------------------------------------------- #
# The validation split is the same for every --seed: runs that differ in their seed are compared on the
# same held-out images.
VALIDATION_SEED = 20170
# the default split: 1/12 of the training set, 5,000 of Fashion-MNIST's (and MNIST's) 60,000
DEFAULT_VALIDATION_FRACTION = 12


def default_validation_size(num_train):
    return num_train // DEFAULT_VALIDATION_FRACTION


def validation_split(labels, size, seed=VALIDATION_SEED):
    """(training indices, validation indices), each in the data's order: ``size`` samples held out,
    class-balanced (each class in proportion to its count, the remainders to the largest fractions,
    then by label), drawn by ``seed``.  Raises DataError when the split would leave a class without a
    training sample or ``size`` is not in 0..len(labels) - 1."""
    labels = np.asarray(labels).astype(np.int64)
    n = len(labels)
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or not 0 <= size < n:
        raise DataError(f"the validation split must hold 0..{n - 1} of the {n} training samples, got {size!r}")
    classes, counts = np.unique(labels, return_counts=True)
    exact = size * counts / n
    quota = np.floor(exact).astype(np.int64)
    order = sorted(range(len(classes)), key=lambda i: (-(exact[i] - quota[i]), classes[i]))
    quota[order[:size - int(quota.sum())]] += 1
    rng = np.random.default_rng(seed)
    held = []
    for c, count, q in zip(classes, counts, quota):
        if q >= count:
            raise DataError(f"a validation split of {size} would hold out all {count} training samples of class "
                            f"{c}; choose a smaller one")
        held.append(rng.permutation(np.flatnonzero(labels == c))[:q])
    val = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    keep = np.ones(n, bool)
    keep[val] = False
    return np.flatnonzero(keep), val


def to_device(images, labels, ctx, limit=None):
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1] on ``ctx``; labels float32 (N,).

    Converted once; ``limit`` keeps the first ``limit`` samples (a fixed subset
    for quick runs).
    """
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return images_to_device(images, ctx), nd.array(labels, ctx=ctx, dtype="float32")


def images_to_device(images, ctx):
    """uint8 (N, H, W) -> float32 (N, 1, H, W) in [0, 1] on ``ctx``: what the nets are trained on."""
    X = nd.array(images.reshape(-1, 1, images.shape[1], images.shape[2]), ctx=ctx, dtype="uint8")
    return X.astype("float32") / 255.0  # the uint8 copy is 4x smaller to move to a device


def epoch_batches(X, y, batch_size, rng=None, min_batch_size=1):
    """Slices of one epoch: ``(batches, dropped)``.

    With ``rng`` the epoch is shuffled by one permutation drawn from it (a single
    gather on the device), otherwise kept in order.  The last partial batch is
    kept unless it has fewer than ``min_batch_size`` samples (e.g. one sample
    for a net whose batch norm sees one value per channel); ``dropped`` says how
    many samples were left out.
    """
    n = X.shape[0]
    if rng is not None:
        perm = nd.array(rng.permutation(n), ctx=X.context, dtype="int32")
        X, y = nd.take(X, perm), nd.take(y, perm)
    batches = [(X[i:i + batch_size], y[i:i + batch_size]) for i in range(0, n, batch_size)]
    dropped = 0
    if batches and batches[-1][0].shape[0] < min_batch_size:
        dropped = batches.pop()[0].shape[0]
    return batches, dropped
