"""Import mxbn before any test module imports mxnet.

mxbn sets MXNet's thread defaults (OMP_NUM_THREADS, MXNET_CPU_PARALLEL_SIZE)
only if MXNet is not loaded yet.  Training numbers are bit-for-bit reproducible
for a given thread count, not across thread counts, so the test process must
run with the same settings as the scripts it starts as subprocesses.
"""
import mxbn  # noqa: F401

import pytest  # noqa: E402

from helpers import make_idx_dataset  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """600 training and 200 test images of the learnable bars task, written once per session (a module may
    define its own)."""
    return make_idx_dataset(tmp_path_factory.mktemp("tiny"), n_train=600, n_test=200)
