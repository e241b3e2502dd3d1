#!/usr/bin/env python
"""Benchmark mxbn's batch_norm and LeNet side by side with nd.BatchNorm, Gluon and PyTorch.

    python scripts/bench.py                  # full run: table on stdout, JSON in --json
    python scripts/bench.py --quick          # seconds, for smoke tests
    python scripts/bench.py --ops            # batch_norm against nd.BatchNorm alone (interleaved rounds)
    python scripts/bench.py --breakdown      # where one default training step's time goes
    python scripts/bench.py --sweep 32,64,128,256,512   # images/s against batch size, with GFLOP/s

Argument parsing only: mxbn's own timings are mxbn.bench, the peers and the side-by-side run
scripts/bench_peers/.
"""
import argparse
import os
import sys

from _cli import HelpFormatter  # noqa: E402  (scripts/ is on sys.path)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]  # the repository, scripts/ (for bench_peers)

import mxbn  # noqa: E402,F401  (thread defaults before mxnet loads)
from mxbn.atomic import atomic_write_json  # noqa: E402
from mxbn.bench import step_breakdown  # noqa: E402
from mxbn.context import ContextError  # noqa: E402
from bench_peers.suite import (SWEEP_IMAGES, format_ops, format_sweep, format_table, run_bench, run_ops,  # noqa: E402
                               run_sweep)


def batch_sizes(text):
    """--sweep's comma-separated batch sizes, each >= 2."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated batch sizes such as 32,128,512, got {text!r}")
    if not sizes or any(size < 2 for size in sizes):
        raise argparse.ArgumentTypeError(f"every batch size must be >= 2, got {text!r}")
    return sizes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--ctx", default="cpu", help="cpu, gpu (falls back with a warning) or gpu:N")
    p.add_argument("--batch-size", type=int, default=128, help="images per training step")
    p.add_argument("--repeat", type=int, default=20, help="timed repeats per op (median reported)")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved rounds of the model-level variants (median reported)")
    p.add_argument("--quick", action="store_true", help="tiny shapes and few repeats: checks that it runs")
    p.add_argument("--ops", action="store_true",
                   help="only batch_norm (fused, scratch) against nd.BatchNorm at LeNet's shapes and a 2-D one")
    p.add_argument("--breakdown", action="store_true",
                   help="only the per-layer/per-part timing of one default training step")
    p.add_argument("--sweep", type=batch_sizes, metavar="SIZES",
                   help="only images/s of mxbn, Gluon and PyTorch against these batch sizes (e.g. 32,64,128,256,512)")
    p.add_argument("--json", default=os.path.join("runs", "bench.json"), help="where to write the results")
    a = p.parse_args(argv)
    if a.batch_size < 2 or a.repeat < 1 or a.rounds < 1:
        p.error("--batch-size must be >= 2, --repeat and --rounds >= 1")
    if a.breakdown:
        from mxbn.context import resolve_context
        for part, ms in step_breakdown(resolve_context(a.ctx), a.batch_size, a.repeat):
            print(f"{part:<72}{ms:>9.3f} ms")
        return 0
    if a.ops:
        result = run_ops(a.ctx, a.repeat, a.quick, log=lambda m: print(m, file=sys.stderr))
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        atomic_write_json(a.json, result)
        print("\n".join(format_ops(result["ops"])))
        print(f"\n(JSON: {a.json})")
        return 0
    if a.sweep:
        result = run_sweep(a.sweep, "gpu" if a.ctx.startswith("gpu") else "cpu", a.rounds,
                           images=64 * max(a.sweep) if a.quick else SWEEP_IMAGES,
                           log=lambda m: print(m, file=sys.stderr))
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        atomic_write_json(a.json, result)
        print(format_sweep(result))
        print(f"\n(JSON: {a.json})")
        return 0
    try:
        result = run_bench(a.ctx, a.batch_size, a.repeat, a.quick, a.rounds, log=lambda m: print(m, file=sys.stderr))
    except ContextError as e:
        p.error(str(e))
    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    atomic_write_json(a.json, result)
    print(format_table(result))
    print(f"\n(JSON: {a.json})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
