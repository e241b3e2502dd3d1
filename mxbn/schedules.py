"""gluoncv's LR schedulers, importable even where gluoncv itself is not.

``import gluoncv`` raises RuntimeError when PyTorch 2.x is installed next to
it (gluoncv 0.10 checks ``torch<2.0`` at import time, and PyTorch is an
optional second backend we do not use).  The scheduler module itself needs
only MXNet, so when the package import fails for that reason it is loaded
straight from its file, without running gluoncv's ``__init__``.
"""
import importlib.util
import os
import sys

__all__ = ["LRScheduler", "LRSequential"]


def _load_lr_scheduler_module():
    try:
        from gluoncv.utils import lr_scheduler
        return lr_scheduler
    except RuntimeError as e:
        if "torch" not in str(e):
            raise
    spec = importlib.util.find_spec("gluoncv")  # locates the package without executing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("gluoncv is not installed: pip install -r requirements.txt")
    path = os.path.join(list(spec.submodule_search_locations)[0], "utils", "lr_scheduler.py")
    name = "mxbn._gluoncv_lr_scheduler"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module


_module = _load_lr_scheduler_module()
LRScheduler = _module.LRScheduler
LRSequential = _module.LRSequential
