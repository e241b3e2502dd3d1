"""A study's independent training runs in worker processes of one OpenMP thread each.

A study of many small nets (bn-paper's sweep: datasets x weight scales x learning rates x BN or not x seeds)
is bound by the per-step cost of launching ops, not by arithmetic.  Measured on a 2-core machine, an MLP
784-100x3-10 step at batch 60 with BN takes 2.5 ms on one OpenMP thread and 4.0-4.4 ms on two (the threads'
fork and join cost more than they save on 60x100 matrices), so two processes of one thread each do about 3x
the work of one process of two.

A run's numbers depend on the thread count (a GEMM splits its sums differently), so the runs are always
computed in workers of one thread, whatever ``jobs`` is: the same numbers with ``jobs`` 1 or 8, on any
machine.  Workers are spawned (never forked: MXNet's engine does not survive a fork) and kept for all the
runs of one call, so a worker loads a dataset once (``worker_cache``).  On a GPU the runs are made one after
the other in this process, which has the device.
"""
import concurrent.futures
import contextlib
import multiprocessing
import os
import signal

from .._runtime import default_num_threads

__all__ = ["map_runs", "default_jobs", "worker_cache", "RUN_THREADS"]

RUN_THREADS = 1
_CACHE = {}


def default_jobs():
    """One worker per core this process may use."""
    return default_num_threads()


def worker_cache(key, make):
    """``make()`` once per worker process for ``key`` (a dataset on the device, say)."""
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


@contextlib.contextmanager
def _environment(**values):
    """os.environ with ``values`` set, restored afterwards (a spawned child copies it as it starts)."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _leave_interrupts_to_the_parent():
    """Pool initializer: Ctrl-C reaches the whole process group; the parent alone handles it and stops the
    workers (each would otherwise print a traceback of its own)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def map_runs(fn, tasks, jobs, on_result=None, in_process=False):
    """``[fn(task) for task in tasks]``, each computed in one of ``jobs`` worker processes with one OpenMP
    thread (or here, one after the other, when ``in_process``: a GPU run).  ``fn`` must be a module-level
    function and the tasks picklable.  ``on_result(task, result)`` is called in this process as each result
    arrives, in the tasks' order (a progress line, say).  An exception in a worker is raised here."""
    tasks = list(tasks)
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    results = []
    if in_process:
        for task in tasks:
            results.append(fn(task))
            if on_result is not None:
                on_result(task, results[-1])
        return results
    if not tasks:
        return results
    spawn = multiprocessing.get_context("spawn")
    # the workers read OMP_NUM_THREADS when they load MXNet, so it is set only while they start
    # (a ProcessPoolExecutor, not a Pool: a Pool replaces a worker that dies and waits forever for its task)
    with _environment(OMP_NUM_THREADS=str(RUN_THREADS)):
        pool = concurrent.futures.ProcessPoolExecutor(
            min(jobs, len(tasks)), mp_context=spawn, initializer=_leave_interrupts_to_the_parent)
        try:
            futures = [pool.submit(fn, task) for task in tasks]   # the workers start here
        except BaseException:
            _stop(pool)
            raise
    try:
        for task, future in zip(tasks, futures):
            try:
                results.append(future.result())
            except concurrent.futures.process.BrokenProcessPool as e:
                raise RuntimeError(
                    f"a worker process ended before returning the result of task {task!r} (killed, out of "
                    "memory, or a crash in native code); the remaining tasks were not computed") from e
            if on_result is not None:
                on_result(task, results[-1])
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown()
    return results


def _stop(pool):
    """Stop the workers now, their running tasks too (an error, or Ctrl-C: nothing else is waited for)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())   # no public way before 3.14
    for process in processes:
        if process.is_alive():
            process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)
