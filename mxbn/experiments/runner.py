"""Running named studies: each on one OpenMP thread, two (one per core) at a time.

Every training run of a study is computed on one thread, so that its numbers do not depend on the machine's
core count nor on whether the study ran alone or inside ``reproduce.py all`` (a GEMM splits its sums by
thread, and the numbers move with it).  A study that spreads its own runs over worker processes (it takes a
``jobs`` argument: bn-paper, small-batch) runs here and hands its runs to them; every other study runs as a
whole in one worker process of one thread, and ``all`` runs ``jobs`` such studies side by side.  On a GPU
everything runs here, one study after the other.
"""
import functools
import inspect
import time

from ..seeding import seed_everything
from .workers import map_runs

__all__ = ["run_studies", "has_own_workers"]


def has_own_workers(study):
    """True for a study that takes ``jobs`` and spreads its runs over worker processes itself."""
    return "jobs" in inspect.signature(study).parameters


def _progress(start, message):
    """One line per training run, with the time since ``start`` (seconds since the epoch)."""
    print(f"[{time.time() - start:6.0f} s] {message}", flush=True)


def _run_study(task):
    """(result, seconds) of one study (in a worker process, or here on a GPU)."""
    import mxnet as mx
    from . import EXPERIMENTS
    name, out_dir, device, quick, seeds, jobs, start = task
    study = EXPERIMENTS[name]
    seed_everything(0)
    t0 = time.perf_counter()
    kwargs = dict(jobs=jobs) if has_own_workers(study) else {}
    result = study(out_dir, mx.Context(*device), quick=quick, log=functools.partial(_progress, start), seeds=seeds,
                   **kwargs)
    return result, time.perf_counter() - t0


def run_studies(names, out_dirs, ctx, quick, seeds, jobs, on_result):
    """Run the studies ``names`` (``out_dirs[name]`` each); ``on_result(name, result, seconds)`` as each ends.

    The studies with their own workers run first, one after the other; the rest then run ``jobs`` at a
    time, each in a worker process of one thread, the longest first (in the order given)."""
    from . import EXPERIMENTS
    start = time.time()
    device = (ctx.device_type, ctx.device_id)
    on_gpu = ctx.device_type != "cpu"
    tasks = [(name, out_dirs[name], device, quick, seeds, jobs, start) for name in names]
    here = [t for t in tasks if on_gpu or has_own_workers(EXPERIMENTS[t[0]])]
    for task in here:
        on_result(task[0], *_run_study(task))
    rest = [t for t in tasks if t not in here]
    map_runs(_run_study, rest, jobs, on_result=lambda task, r: on_result(task[0], *r))
