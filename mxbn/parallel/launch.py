"""Start a distributed MXNet job on this machine: one scheduler, servers and N workers on 127.0.0.1.

MXNet's kvstore has three roles, chosen by environment variables read when
``mxnet`` is imported: a *scheduler* that introduces the processes to each
other, *servers* that hold and sum the pushed arrays, and *workers* that run
the training script with ``--kvstore dist_sync``.  A scheduler or server
process does its job inside ``import mxnet`` and exits when the workers
finish.  On several machines the same variables are set by hand (README).
"""
import os
import signal
import socket
import subprocess
import sys
import time

from .._runtime import THREAD_DEFAULTS_APPLIED, default_num_threads

__all__ = ["free_port", "role_env", "launch_local"]


def free_port(host="127.0.0.1"):
    """A TCP port that was free a moment ago (the scheduler binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def role_env(role, port, num_workers, num_servers=1, host="127.0.0.1", base=None, threads=None,
             liveness_port=None):
    """The environment of one process of a local job (``role``: scheduler, server or worker)."""
    env = dict(os.environ if base is None else base)
    env.update(DMLC_ROLE=role, DMLC_PS_ROOT_URI=host, DMLC_PS_ROOT_PORT=str(port),
               DMLC_NUM_WORKER=str(num_workers), DMLC_NUM_SERVER=str(num_servers),
               DMLC_NODE_HOST=host)  # every process answers on loopback, whatever interfaces exist
    if liveness_port is not None:   # the roll call's port (mxbn.liveness), when port + 1 is not free
        env["MXBN_LIVENESS_PORT"] = str(liveness_port)
    # a thread count the user chose is kept; mxbn's own default (all cores) is not, for a worker
    if threads is not None and ("OMP_NUM_THREADS" not in env or "OMP_NUM_THREADS" in THREAD_DEFAULTS_APPLIED):
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _stop(procs, sig):
    for p in procs:
        if p.poll() is None:
            try:
                p.send_signal(sig)
            except ProcessLookupError:
                pass


def launch_local(command, num_workers, num_servers=1, timeout=None, grace=10.0, port=None, log=print,
                 poll=0.1):
    """Run ``command`` (a list) as ``num_workers`` workers with a scheduler and servers; return an exit code.

    * 0 when every worker exits 0; the scheduler and servers then end by themselves (killed
      after ``grace`` seconds if not).
    * A worker's non-zero code as soon as one fails: the other processes are stopped, since a
      synchronous job cannot finish without it.
    * 124 when ``timeout`` seconds pass first; everything is killed.
    SIGINT/SIGTERM to the launcher are passed on to the workers (which write a checkpoint at
    their next sync point and exit); the launcher then waits for them as usual.
    """
    if num_workers < 1 or num_servers < 1:
        raise ValueError(f"need at least one worker and one server, got {num_workers} and {num_servers}")
    port = port or free_port()
    liveness_port = free_port()
    while liveness_port == port:
        liveness_port = free_port()
    ports = dict(liveness_port=liveness_port)
    # workers share the cores instead of each starting one OpenMP thread per core
    threads = max(1, default_num_threads() // num_workers)
    # each process in its own session: a Ctrl-C reaches the launcher only, which forwards it to the workers
    start = dict(start_new_session=True)
    service = [sys.executable, "-c", "import mxbn"]  # importing mxnet runs the role; mxbn sets numpy up first
    scheduler = subprocess.Popen(service, env=role_env("scheduler", port, num_workers, num_servers, **ports),
                                 **start)
    servers = [subprocess.Popen(service, env=role_env("server", port, num_workers, num_servers, **ports), **start)
               for _ in range(num_servers)]
    workers = [subprocess.Popen(list(command), env=role_env("worker", port, num_workers, num_servers,
                                                               threads=threads, **ports), **start)
               for _ in range(num_workers)]
    everyone = [scheduler] + servers + workers
    log(f"launched scheduler on 127.0.0.1:{port}, {num_servers} server(s), {num_workers} worker(s)")

    def forward(signum, frame):
        log(f"launcher: passing signal {signum} on to the workers")
        _stop(workers, signum)

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, forward)
        except ValueError:  # not the main thread
            pass
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            codes = [w.poll() for w in workers]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                log(f"launcher: a worker exited with code {failed[0]}; stopping the others")
                _stop(everyone, signal.SIGTERM)
                _wait_or_kill(everyone, grace)
                return failed[0]
            if all(c == 0 for c in codes):
                if not _wait_or_kill([scheduler] + servers, grace):
                    log(f"launcher: scheduler/servers still running {grace:g} s after the workers ended; killed")
                return 0
            if deadline is not None and time.monotonic() > deadline:
                log(f"launcher: timed out after {timeout:g} s; killing every process")
                _stop(everyone, signal.SIGKILL)
                _wait_or_kill(everyone, grace)
                return 124
            time.sleep(poll)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _stop(everyone, signal.SIGKILL)  # nothing outlives the launcher


def _wait_or_kill(procs, grace):
    """Wait up to ``grace`` seconds for ``procs``; kill the rest. True if all ended on their own."""
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    late = [p for p in procs if p.poll() is None]
    for p in late:
        p.kill()
        p.wait()
    return not late
