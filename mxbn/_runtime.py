"""Process set-up that must happen before MXNet is imported: the one place for it.

Three things live here and nowhere else:

1. NumPy names.  MXNet 1.9.1 (2022) reads names that later NumPy releases removed:
   the builtin aliases ``np.bool`` and ``np.int`` (removed in 1.24), and in
   numpy 2 the constants ``np.PZERO``, ``np.NAN``, ..., ``np.alltrue``,
   ``np.sometrue``, ``np.msort``, the financial functions and ``np.compat``
   (removed in 2.0),
   ``np.in1d`` and ``np.trapz`` (removed later in 2.x).  ``mxnet.numpy`` binds
   several of them at import and registers NumPy's dispatch protocol for others
   by name, so ``import mxnet`` fails without them.
   ``libmxnet.so`` is loaded through ctypes and uses no NumPy C API, so with
   the names back MXNet 1.9.1 runs on NumPy 1.24-1.26 and on NumPy 2.  Only
   the names the installed NumPy lacks are restored, each with the value or
   function it had (``tests/test_compat.py`` derives the list of names from the
   installed mxnet's source, so it cannot go stale).  MXNet also imports
   ``distutils.version``, which left the standard library in Python 3.12;
   setuptools provides it.

2. System libraries.  ``libmxnet.so`` links ``libgomp.so.1`` and
   ``libquadmath.so.0``, which a minimal Linux may lack; without them ctypes
   raises a bare OSError.  They are checked first, with an error that names
   the package to install.

3. Thread defaults.  Out of the box MXNet 1.9.1 ran single-threaded on a 2-core
   machine.  ``OMP_NUM_THREADS=<cores>`` lets the convolution and GEMM kernels use
   every core, and ``MXNET_CPU_PARALLEL_SIZE=2000000000`` keeps cheap elementwise
   kernels on one thread (their OpenMP fork/join cost more than it saved).  They
   are only defaults: a value the user exported is never overwritten.  OpenMP reads
   them once, at library load, hence "before MXNet is imported".

4. sys.path.  MXNet imports OpenCV's ``cv2`` when it is installed (gluoncv pulls it
   in).  opencv-python puts its own package directory at the front of sys.path while
   it loads and leaves it there when its native library fails to load, as on a
   minimal Debian without libxcb.  That directory holds a package named ``typing``;
   every process spawned afterwards copies sys.path, and on Python 3.13 such a
   worker died at start, importing it instead of the standard library's.  So MXNet
   is imported here, and sys.path is put back as it was before.
"""
import ctypes
import importlib
import math
import os
import sys
import types

import numpy as np


def _removed_financial_function(name):
    def removed(*args, **kwargs):
        raise NotImplementedError(f"numpy.{name} was removed in numpy 1.20 (moved to the numpy-financial "
                                  f"package); mxnet.numpy.{name} forwards to it, so it is unavailable here")
    removed.__name__ = name
    return removed


def _in1d(ar1, ar2, assume_unique=False, invert=False):
    """numpy<2.5's in1d: isin on the flattened first argument."""
    return np.isin(np.ravel(ar1), ar2, assume_unique=assume_unique, invert=invert)


def _msort(a):
    """numpy<2's msort: sort along the first axis."""
    return np.sort(a, axis=0)


def _trapz(y, x=None, dx=1.0, axis=-1):
    return np.trapezoid(y, x=x, dx=dx, axis=axis)


# Every name MXNet 1.9.1 reads from numpy that a numpy release removed, with a
# function returning the value it had.  Only names the installed numpy lacks
# are set.  np.bool is absent from 1.24-1.26 only: numpy 2 has its own again,
# which is left alone.
_REMOVED_NUMPY_NAMES = {
    # builtin aliases, removed in 1.24 (mxnet reads these two of them)
    "bool": lambda: bool, "int": lambda: int,
    # removed in 2.0
    "PZERO": lambda: 0.0, "NZERO": lambda: -0.0, "NAN": lambda: math.nan, "NaN": lambda: math.nan,
    "Inf": lambda: math.inf, "PINF": lambda: math.inf, "NINF": lambda: -math.inf,
    "alltrue": lambda: np.all, "sometrue": lambda: np.any, "product": lambda: np.prod,
    "round_": lambda: np.round, "msort": lambda: _msort,
    "compat": lambda: types.SimpleNamespace(basestring=str),  # mx.np.pad reads compat.basestring
    "mirr": lambda: _removed_financial_function("mirr"), "npv": lambda: _removed_financial_function("npv"),
    "pmt": lambda: _removed_financial_function("pmt"), "ppmt": lambda: _removed_financial_function("ppmt"),
    "pv": lambda: _removed_financial_function("pv"), "rate": lambda: _removed_financial_function("rate"),
    # removed later in 2.x
    "in1d": lambda: _in1d, "trapz": lambda: _trapz,
}

# Shared libraries libmxnet.so links that minimal systems lack, and who provides them.
_SYSTEM_LIBRARIES = {
    "libgomp.so.1": "libgomp1",
    "libquadmath.so.0": "libquadmath0",
}

# MXNet's threshold (elements) above which elementwise CPU kernels use OpenMP;
# 2e9 effectively means "never": measured faster for LeNet-sized tensors.
_CPU_PARALLEL_SIZE = "2000000000"

# What this module set (name -> value), for logs and benchmark reports.
THREAD_DEFAULTS_APPLIED = {}
# The numpy names this process had restored, for tests and logs.
RESTORED_NUMPY_NAMES = []


def restore_numpy_names(module=np):
    """Give numpy back the names MXNet 1.9.1 reads that this numpy release removed.

    Returns the list of names that were missing and have been restored.
    """
    restored = []
    for name, value in _REMOVED_NUMPY_NAMES.items():
        # Look in the module dict, not hasattr(): numpy serves removed names
        # from a __getattr__ that raises (1.24+, 2.x) or warns (1.20-1.23).
        if name not in vars(module):
            setattr(module, name, value())
            restored.append(name)
    return restored


def ensure_distutils():
    """Make ``distutils.version`` importable (setuptools provides it on Python 3.12+)."""
    try:
        import distutils.version  # noqa: F401
        return
    except ImportError:
        pass
    try:
        import setuptools  # noqa: F401  (puts its distutils in place of the standard library's)
        import distutils.version  # noqa: F401,F811
    except ImportError as e:
        raise ImportError(
            f"mxnet 1.9.1 imports distutils, which Python {sys.version_info.major}.{sys.version_info.minor} "
            "no longer ships; install setuptools (`pip install setuptools`, or "
            "`pip install -r requirements.txt`)") from e


def check_system_libraries(load=ctypes.CDLL):
    """Raise ImportError naming the package to install if libmxnet.so's system libraries are missing."""
    missing = []
    for library, package in _SYSTEM_LIBRARIES.items():
        try:
            load(library)
        except OSError:
            missing.append((library, package))
    if missing:
        names = ", ".join(library for library, _ in missing)
        packages = " ".join(package for _, package in missing)
        raise ImportError(
            f"mxnet's libmxnet.so needs {names}, which this system lacks; install them with "
            f"`sudo apt-get install {packages}` (Debian/Ubuntu) or your distribution's "
            "libgomp/libquadmath packages (GCC's OpenMP and quad-math runtimes)")


def check_import_order(modules=sys.modules):
    """Refuse to go on after an ``import mxnet`` that failed before mxbn could prepare numpy.

    A failed import leaves mxnet's submodules half-initialized in sys.modules;
    importing mxnet again on top of them fails in confusing ways.
    """
    leftovers = [name for name in modules if name.startswith("mxnet.")]
    if leftovers and "mxnet" not in modules:
        raise ImportError(
            f"mxnet was imported before mxbn and failed (numpy {np.__version__} lacks names mxnet 1.9.1 "
            "reads); restart Python and `import mxbn` before `import mxnet`: mxbn restores those names")


def import_keeping_sys_path(name, path=sys.path):
    """Import module ``name``; whatever its import added to or removed from ``path`` is undone."""
    before = list(path)
    try:
        return importlib.import_module(name)
    finally:
        path[:] = before


def run_service_role(role):
    """A scheduler's or server's whole life: MXNet runs the role inside its import and then calls sys.exit().
    mxbn's roll call (:mod:`mxbn.liveness`) starts first, so that a lost process stops the job."""
    from . import liveness   # imports no MXNet
    roll_call = liveness.start_for_role(role)
    try:
        import_keeping_sys_path("mxnet")
    except SystemExit:
        if roll_call is not None:
            roll_call.finish()   # the job ended normally: members leaving now is no loss
        raise


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
check_import_order()
RESTORED_NUMPY_NAMES.extend(restore_numpy_names())
ensure_distutils()
if not _MXNET_WAS_PRELOADED:
    check_system_libraries()
    THREAD_DEFAULTS_APPLIED.update(apply_thread_defaults())
    if os.environ.get("DMLC_ROLE") in ("scheduler", "server"):
        run_service_role(os.environ["DMLC_ROLE"])
    import_keeping_sys_path("mxnet")
