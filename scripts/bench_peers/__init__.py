"""The benchmark's peers and plumbing, outside the library.

PyTorch, Gluon and raw-NDArray LeNets and the 2017 tutorial's batch norm are
here, beside the benchmark that runs them (``scripts/bench.py``); mxbn itself
(``mxbn.bench``) times only its own code.  Each model-level variant runs as a
child process (``child.py``, or ``torch_lenet.py`` for PyTorch, which must not
load MXNet).
"""
