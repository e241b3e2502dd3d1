"""Process set-up that must happen before MXNet is imported: the one place for it.

Two things live here and nowhere else:

1. NumPy aliases.  MXNet 1.9.1 reads ``np.bool`` (and friends) at import time and
   in several operators.  NumPy deprecated these aliases in 1.20 and removed them
   in 1.24, so ``import mxnet`` fails on NumPy 1.24-1.26.  They were plain
   aliases of the Python builtins, so restoring them is behaviour-preserving.
   NumPy 2 breaks MXNet 1.9.1 in ways an alias cannot fix (ABI, removed C API),
   so it is refused with an explanation instead.

2. Thread defaults.  Out of the box MXNet 1.9.1 ran single-threaded on a 2-core
   machine.  ``OMP_NUM_THREADS=<cores>`` lets the convolution and GEMM kernels use
   every core, and ``MXNET_CPU_PARALLEL_SIZE=2000000000`` keeps cheap elementwise
   kernels on one thread (their OpenMP fork/join cost more than it saved).  They
   are only defaults: a value the user exported is never overwritten.  OpenMP reads
   them once, at library load, hence "before MXNet is imported".
"""
import os
import sys

import numpy as np

# The aliases NumPy removed in 1.24 that MXNet 1.9.1 still reads.
_REMOVED_NUMPY_ALIASES = {
    "bool": bool,
    "int": int,
    "float": float,
    "complex": complex,
    "object": object,
    "str": str,
}

# MXNet's threshold (elements) above which elementwise CPU kernels use OpenMP;
# 2e9 effectively means "never": measured faster for LeNet-sized tensors.
_CPU_PARALLEL_SIZE = "2000000000"

# What this module set (name -> value), for logs and benchmark reports.
THREAD_DEFAULTS_APPLIED = {}


def _numpy_major_minor():
    parts = np.__version__.split(".")
    return int(parts[0]), int(parts[1])


def restore_numpy_aliases():
    """Give NumPy 1.24-1.26 back the builtin aliases MXNet 1.9.1 reads.

    Returns the list of alias names that were missing and have been restored.
    Raises ImportError on NumPy 2, which MXNet 1.9.1 cannot run on.
    """
    major, _ = _numpy_major_minor()
    if major >= 2:
        raise ImportError(
            "mxbn needs numpy<2 because mxnet 1.9.1 does not run on numpy "
            f"{np.__version__}; install the pinned versions with "
            "`pip install -r requirements.txt` (numpy>=1.17,<1.24 is tested; 1.24-1.26 work "
            "through mxbn's aliases)")
    restored = []
    for name, builtin in _REMOVED_NUMPY_ALIASES.items():
        # Look in the module dict, not hasattr(): on 1.20-1.23 the names are
        # served by a deprecating __getattr__, on 1.24+ that __getattr__ raises.
        if name not in vars(np):
            setattr(np, name, builtin)
            restored.append(name)
    return restored


def default_num_threads():
    """Cores this process may run on (respects CPU affinity and cgroup pinning)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def apply_thread_defaults(environ=os.environ):
    """Set MXNet/OpenMP thread variables the user has not set. Returns what was set."""
    defaults = {
        "OMP_NUM_THREADS": str(default_num_threads()),
        "MXNET_CPU_PARALLEL_SIZE": _CPU_PARALLEL_SIZE,
    }
    applied = {}
    for name, value in defaults.items():
        if name not in environ:
            environ[name] = value
            applied[name] = value
    return applied


def thread_settings(environ=os.environ):
    """The thread-related variables in force, and which of them mxbn chose."""
    names = ("OMP_NUM_THREADS", "MXNET_CPU_PARALLEL_SIZE", "MXNET_ENGINE_TYPE",
             "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    return {
        "in_force": {n: environ.get(n) for n in names if n in environ},
        "set_by_mxbn": dict(THREAD_DEFAULTS_APPLIED),
        "mxnet_imported_before_mxbn": _MXNET_WAS_PRELOADED,
    }


# Thread variables only take effect if MXNet has not been loaded yet.
_MXNET_WAS_PRELOADED = "mxnet" in sys.modules
restore_numpy_aliases()
if not _MXNET_WAS_PRELOADED:
    THREAD_DEFAULTS_APPLIED.update(apply_thread_defaults())
