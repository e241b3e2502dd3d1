#!/usr/bin/env python
"""Re-run the batch-normalization tutorials' claims as named experiments.

    python scripts/reproduce.py optimizers [--quick] [--ctx cpu] [--out runs/optimizers]
    python scripts/reproduce.py all [--quick]
    python scripts/reproduce.py report          # docs/results.md from the saved metrics

Argument parsing only; the experiments live in mxbn.experiments.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import mxbn  # noqa: E402,F401  (thread defaults before mxnet loads)
from mxbn.context import ContextError, resolve_context  # noqa: E402
from mxbn.data import DataError  # noqa: E402
from mxbn.experiments import EXPERIMENTS, PLANNED  # noqa: E402
from mxbn.experiments.report import write_report  # noqa: E402
from mxbn.seeding import seed_everything  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=sorted(EXPERIMENTS) + ["all", "report"])
    p.add_argument("--quick", action="store_true", help="a few minutes in all: fewer iterations, less data")
    p.add_argument("--ctx", default="cpu", help="cpu, gpu (falls back with a warning) or gpu:N")
    p.add_argument("--out", default=None, help="output folder (default runs/NAME; with all: runs/)")
    p.add_argument("--docs", default=os.path.join(ROOT, "docs"), help="where report writes results.md")
    a = p.parse_args(argv)
    runs = a.out or "runs"
    if a.name == "report":
        print(write_report(runs, a.docs, sorted(EXPERIMENTS), PLANNED))
        return 0
    try:
        ctx = resolve_context(a.ctx)
    except ContextError as e:
        p.error(str(e))
    names = sorted(EXPERIMENTS) if a.name == "all" else [a.name]
    for name in names:
        out_dir = os.path.join(runs, name) if (a.name == "all" or a.out is None) else a.out
        seed_everything(0)
        t0 = time.perf_counter()
        try:
            metrics = EXPERIMENTS[name].run(out_dir, ctx, quick=a.quick)
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{name}: {len(metrics['claims'])} claims on {metrics['dataset']} in "
              f"{time.perf_counter() - t0:.0f} s -> {out_dir}")
        for c in metrics["claims"]:
            print(f"  [{c['verdict']}] {c['claim']}: {c['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
