"""Checkpoints: one ``.params`` file (``mx.nd.save``) holding everything to resume.

Keys: ``param:NAME`` (learned parameters), ``state:NAME`` (BN moving statistics),
``opt:SLOT:NAME`` (optimizer slots) and ``meta``, a uint8 array holding UTF-8
JSON: format version, mxbn version, the configuration that produced the run,
the epoch, the optimizer step count, the NumPy generator state and the history.
One file, written atomically, so a checkpoint is never half of one thing and
half of another.
"""
import json
import os

import numpy as np
from mxnet import nd

from .atomic import atomic_path

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError", "check_compatible", "FORMAT_VERSION"]

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is unreadable or does not fit the model it is loaded into."""


def save_checkpoint(path, params, state, opt_state, meta):
    """Write params, state, optimizer state and ``meta`` (JSON-able dict) atomically to ``path``."""
    arrays = {f"param:{k}": v for k, v in params.items()}
    arrays.update({f"state:{k}": v for k, v in state.items()})
    for slot, per_param in opt_state["slots"].items():
        arrays.update({f"opt:{slot}:{k}": v for k, v in per_param.items()})
    meta = dict(meta, format=FORMAT_VERSION, opt_t=int(opt_state["t"]))
    blob = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    arrays["meta"] = nd.array(blob, dtype="uint8")
    with atomic_path(path) as tmp:
        nd.save(tmp, arrays)


def _reason(error):
    """The useful part of MXNet's message: its last line after the last "Check failed: ...:" (MXNet puts
    a C++ traceback first), e.g. "No such file or directory", "Invalid NDArray file format"."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    last = lines[-1]
    return last.rsplit(": ", 1)[-1] if "Check failed" in last else last


def load_checkpoint(path, ctx):
    """Read a checkpoint onto ``ctx``: dict with params, state, opt_state, meta."""
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: not a readable mxbn checkpoint (the file is empty)")
    try:
        arrays = nd.load(path)
    except Exception as e:  # MXNetError for garbage, OSError for unreadable files
        raise CheckpointError(f"{path}: not a readable mxbn checkpoint ({_reason(e)})") from None
    if not isinstance(arrays, dict) or "meta" not in arrays:
        raise CheckpointError(f"{path}: not an mxbn checkpoint (no 'meta' entry)")
    try:
        meta = json.loads(arrays.pop("meta").asnumpy().tobytes().decode("utf-8"))
    except ValueError as e:
        raise CheckpointError(f"{path}: corrupt metadata ({e})") from None
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {meta.get('format')!r}, this mxbn reads "
                              f"format {FORMAT_VERSION}")
    params, state, slots = {}, {}, {}
    for key, value in arrays.items():
        kind, _, rest = key.partition(":")
        value = value.as_in_context(ctx)
        if kind == "param":
            params[rest] = value
        elif kind == "state":
            state[rest] = value
        elif kind == "opt":
            slot, _, name = rest.partition(":")
            slots.setdefault(slot, {})[name] = value
    return dict(params=params, state=state, opt_state={"t": meta["opt_t"], "slots": slots}, meta=meta)


def check_compatible(path, expected, loaded, what):
    """Raise CheckpointError listing every name/shape mismatch between two dicts of arrays."""
    problems = []
    for name in sorted(set(expected) | set(loaded)):
        if name not in loaded:
            problems.append(f"{name}: missing in checkpoint (model expects {expected[name].shape})")
        elif name not in expected:
            problems.append(f"{name}: in checkpoint {loaded[name].shape}, not in this model")
        elif expected[name].shape != loaded[name].shape:
            problems.append(f"{name}: checkpoint {loaded[name].shape}, model {expected[name].shape}")
    if problems:
        raise CheckpointError(f"{path}: {what} do not match this model:\n  " + "\n  ".join(problems))
