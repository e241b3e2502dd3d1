"""Resolve a ``--ctx`` string to an MXNet context, once, with an honest probe.

``mx.context.num_gpus()`` is not enough: MXNet 1.9.1's CUDA wheels carry kernels
for compute capability 5.0-8.6 and no PTX, so on a Hopper GPU (H100/H200) it
reports the GPU while every kernel fails with "no kernel image is available".
The probe runs a small real computation and reads the result back.
"""
import re

import numpy as np
import mxnet as mx
from mxnet import nd

__all__ = ["resolve_context", "resolve_contexts", "parse_context", "parse_contexts", "probe_context",
           "ContextError"]


class ContextError(ValueError):
    """A context that was asked for explicitly cannot be used."""


_CTX_RE = re.compile(r"^(cpu|gpu)(?::(\d+))?$")


def parse_context(spec):
    """``"cpu"``, ``"cpu:N"``, ``"gpu"`` or ``"gpu:N"`` -> (kind, index or None)."""
    m = _CTX_RE.match(str(spec).strip().lower())
    if not m:
        raise ContextError(f"--ctx must be cpu, gpu, cpu:N or gpu:N, got {spec!r}")
    return m.group(1), (int(m.group(2)) if m.group(2) is not None else None)


def parse_contexts(spec):
    """``"cpu:0,cpu:1"`` or ``"gpu:0,gpu:1,..."`` (or one context) -> list of (kind, index or None).

    A list names every device explicitly: one kind, ``kind:N`` items, no repeats.
    """
    items = str(spec).split(",")
    if len(items) == 1:
        return [parse_context(spec)]
    parsed = []
    for item in items:
        try:
            kind, index = parse_context(item)
        except ContextError:
            raise ContextError(f"--ctx: {item.strip()!r} in {spec!r} is not a context; a list is "
                               f"written like cpu:0,cpu:1 or gpu:0,gpu:1") from None
        if index is None:
            raise ContextError(f"--ctx {spec}: in a list every context needs its index "
                               f"({kind}:N), got {item.strip()!r}")
        parsed.append((kind, index))
    kinds = {k for k, _ in parsed}
    if len(kinds) > 1:
        raise ContextError(f"--ctx {spec}: mixes CPU and GPU contexts; data-parallel training needs "
                           f"devices of one kind")
    seen = [i for _, i in parsed]
    if len(set(seen)) != len(seen):
        raise ContextError(f"--ctx {spec}: names a device more than once")
    return parsed


def resolve_contexts(spec, warn=print, num_gpus=None, probe=None):
    """The list of contexts to train on, for one context or a comma-separated list.

    One context resolves as :func:`resolve_context` (``gpu`` may fall back to
    the CPU).  A list is explicit, so every GPU in it must exist and pass the
    probe, else ``ContextError``; there is no partial fallback.
    """
    num_gpus = num_gpus or _num_gpus
    probe = probe or probe_context
    parsed = parse_contexts(spec)
    if len(parsed) == 1:
        return [resolve_context(spec, warn=warn, num_gpus=num_gpus, probe=probe)]
    return [resolve_context(f"{kind}:{index}", warn=warn, num_gpus=num_gpus, probe=probe)
            for kind, index in parsed]


def _num_gpus():
    try:
        return mx.context.num_gpus()
    except mx.base.MXNetError:  # CPU-only builds may raise instead of returning 0
        return 0


def probe_context(ctx):
    """None if a real op runs correctly on ``ctx``, else the reason it does not."""
    try:
        a = nd.array(np.arange(6, dtype="float32").reshape(2, 3), ctx=ctx)
        got = nd.dot(a, a.T).asnumpy()
    except mx.base.MXNetError as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"a test kernel failed on {ctx}: {first_line}"
    want = np.array([[5.0, 14.0], [14.0, 50.0]], dtype="float32")
    if not np.allclose(got, want):
        return f"a test kernel on {ctx} returned wrong numbers"
    return None


def resolve_context(spec, warn=print, num_gpus=_num_gpus, probe=probe_context, task="training"):
    """The context to run on, resolved once and passed down (``task`` names the work in the warning).

    * ``"gpu"``: GPU 0 if MXNet sees one and a probe kernel runs there; otherwise
      the CPU, after one warning (through ``warn``) saying why.
    * ``"gpu:N"``: GPU N, or ``ContextError`` if it does not exist or cannot run
      kernels (asked for explicitly, so no silent fallback).
    * ``"cpu"``/``"cpu:N"``: the CPU.
    """
    kind, index = parse_context(spec)
    if kind == "cpu":
        return mx.cpu(index or 0)
    n = num_gpus()
    if index is not None:
        if index >= n:
            raise ContextError(f"--ctx {spec}: this machine has {n} GPU(s) visible to MXNet "
                               f"(valid: {', '.join(f'gpu:{i}' for i in range(n)) or 'none'})")
        reason = probe(mx.gpu(index))
        if reason:
            raise ContextError(f"--ctx {spec}: {reason}. {_GPU_HINT}")
        return mx.gpu(index)
    if n == 0:
        warn(f"warning: --ctx gpu requested but MXNet sees no GPU ({_build_note()}); "
             f"{task} on the CPU instead")
        return mx.cpu()
    reason = probe(mx.gpu(0))
    if reason:
        warn(f"warning: --ctx gpu requested but {reason}. {_GPU_HINT} {task.capitalize()} on the CPU instead")
        return mx.cpu()
    return mx.gpu(0)


_GPU_HINT = ("MXNet 1.9.1 CUDA builds run on compute capability 5.0-8.6 (e.g. V100, T4, A100, "
             "RTX 30xx); Hopper and newer GPUs are not supported by any MXNet release.")


def _build_note():
    try:
        has_cuda = mx.runtime.Features().is_enabled("CUDA")
    except Exception:  # very old builds have no feature list
        has_cuda = None
    if has_cuda is False:
        return "this mxnet build has no CUDA support; see README for mxnet-cu112/cu117"
    return "no CUDA device found"
