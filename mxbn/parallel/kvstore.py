"""MXNet's kvstore, as mxbn uses it: gradient sums across devices and processes.

The kvstore runs without an optimizer (no ``set_optimizer``): a push of
per-device arrays followed by a pull returns their sum on every device (and,
for ``dist_*``, the sum over every worker's devices, aggregated by MXNet's
parameter servers).  The update itself is mxbn's optimizer, applied to each
device's copy of the parameters with the same summed gradient, so the copies
stay identical.  This is what Gluon's ``Trainer`` does with
``update_on_kvstore=False``.
"""
import os

import mxnet as mx

__all__ = ["KVSTORE_TYPES", "DIST_ENV", "KVStoreError", "check_kvstore", "create_kvstore", "is_distributed", "shard"]

# "device": sums on the devices (GPU peer copies); "local": sums on the CPU.
# "dist_sync": several processes, synchronous, through scheduler/server processes;
# "dist_device_sync": the same with the local sum done on the devices.
# dist_async is left out on purpose: workers' copies would no longer be identical.
KVSTORE_TYPES = ("device", "local", "dist_sync", "dist_device_sync")

# What a process of a distributed job needs (set by scripts/launch_local.py or by hand).
DIST_ENV = ("DMLC_ROLE", "DMLC_PS_ROOT_URI", "DMLC_PS_ROOT_PORT", "DMLC_NUM_SERVER", "DMLC_NUM_WORKER")


class KVStoreError(ValueError):
    """The kvstore cannot be created as asked (unknown type, missing launch variables)."""


def is_distributed(kind):
    return kind is not None and kind.startswith("dist")


def check_kvstore(kind, environ=os.environ):
    """Raise KVStoreError unless ``mx.kv.create(kind)`` can work in this process.

    A ``dist_*`` kvstore connects to the scheduler named by the DMLC_* variables
    and waits for every worker; without them MXNet would stop with an
    unhelpful message, so the missing ones are named here.
    """
    if kind not in KVSTORE_TYPES:
        raise KVStoreError(f"--kvstore must be one of {list(KVSTORE_TYPES)}, got {kind!r}")
    if is_distributed(kind):
        missing = [v for v in DIST_ENV if not environ.get(v)]
        if missing:
            raise KVStoreError(f"--kvstore {kind} runs as one worker of a distributed job, but "
                               f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set; start the "
                               f"job with scripts/launch_local.py (one machine) or see README "
                               f"'Several machines'")
        if environ["DMLC_ROLE"] != "worker":
            raise KVStoreError(f"--kvstore {kind}: DMLC_ROLE is {environ['DMLC_ROLE']!r}; the trainer runs "
                               f"as a 'worker' (scheduler and servers are started by importing mxbn)")


def create_kvstore(kind, environ=os.environ):
    """``mx.kv.create(kind)`` after checking that it can work (:func:`check_kvstore`)."""
    check_kvstore(kind, environ)
    return mx.kv.create(kind)


def shard(X, y, rank, num_workers):
    """Worker ``rank``'s contiguous share of (X, y): ``len // num_workers`` samples each.

    Equal shares give every worker the same number of batches per epoch, which
    a synchronous kvstore needs (a worker with one batch more would wait for
    the others forever); the last ``len % num_workers`` samples are left out.
    Returns (X, y, samples left out).
    """
    if not 0 <= rank < num_workers:
        raise ValueError(f"rank must be in [0, {num_workers}), got {rank}")
    n = X.shape[0] // num_workers
    if n == 0:
        raise ValueError(f"{X.shape[0]} training samples cannot be shared among {num_workers} workers")
    return X[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n], X.shape[0] - n * num_workers
