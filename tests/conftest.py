"""Import mxbn before any test module imports mxnet.

mxbn sets MXNet's thread defaults (OMP_NUM_THREADS, MXNET_CPU_PARALLEL_SIZE)
only if MXNet is not loaded yet.  Training numbers are bit-for-bit reproducible
for a given thread count, not across thread counts, so the test process must
run with the same settings as the scripts it starts as subprocesses.
"""
import mxbn  # noqa: F401
