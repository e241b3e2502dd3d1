"""mxbn: exact, fast functional batch normalization and a small CNN trainer on MXNet.

Importing mxbn first prepares the process for MXNet (NumPy aliases and thread
defaults, see :mod:`mxbn._runtime`), then exposes the functional ops::

    import mxbn
    Y = mxbn.batch_norm(X, gamma, beta, True, moving_mean, moving_vari)
"""
from . import _runtime  # noqa: F401  (must run before anything imports mxnet)

from .functional import (  # noqa: E402
    BATCH_NORM_IMPLS, accuracy, avg_pool2d, batch_norm, conv2d, correct_count, dense,
    dropout, flatten, max_pool2d, relu, sigmoid, softmax_cross_entropy, tanh,
)
from . import init, optim  # noqa: E402
from .jit import jit  # noqa: E402  (the function; the module stays importable as mxbn.jit)
from .tracing import TracingError  # noqa: E402
from .export import fold_batch_norm, inference_graph  # noqa: E402
from .normalization import group_norm, instance_norm, layer_norm  # noqa: E402
from .batch_renorm import batch_renorm  # noqa: E402
from .precise_bn import precise_bn  # noqa: E402

__version__ = "0.3.0"

__all__ = [
    "batch_norm", "conv2d", "max_pool2d", "avg_pool2d", "dense", "flatten", "relu",
    "sigmoid", "tanh", "dropout", "softmax_cross_entropy", "accuracy", "correct_count",
    "BATCH_NORM_IMPLS", "init", "optim", "jit", "TracingError", "fold_batch_norm", "inference_graph",
    "layer_norm", "group_norm", "instance_norm", "batch_renorm", "precise_bn", "__version__",
]
