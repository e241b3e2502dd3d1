"""Atomic file writes: the one place where mxbn writes results to disk.

A reader (or a crash) sees either the old file or the complete new one, never
a truncated mix: the bytes go to a temporary file in the same directory, are
fsync'ed, and the temporary file is renamed over the target (rename is atomic
within one file system).  The directory is fsync'ed too, so the rename itself
survives a power cut.
"""
import contextlib
import json
import os
import tempfile

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_path", "writable_dir"]


def _umask():
    """The process's umask, read without changing it where Linux shows it (os.umask can only set)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def writable_dir(path, name, error=ValueError):
    """Create the folder ``path`` if needed and check it can be written; ``error(message)`` names it as
    ``name`` (the flag the user gave, say) otherwise.  Called before any work whose results go there."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise error(f"{name} {path}: exists and is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise error(f"{name} {path}: cannot create it ({e.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise error(f"{name} {path}: not writable")
    return path


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. not permitted on some platforms; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; on success fsync it and rename it onto ``path``.

    For writers that insist on a file name (``mx.nd.save``, ``savefig``).  On
    error the temporary file is removed and ``path`` is untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    # mkstemp makes the file 0600 whatever the umask; results are meant to be shared like any file open() makes
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def atomic_write_bytes(path, data):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")
