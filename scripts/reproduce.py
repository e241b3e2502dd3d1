#!/usr/bin/env python
"""Re-run the batch-normalization tutorials' claims as named experiments.

    python scripts/reproduce.py optimizers [--quick] [--ctx cpu] [--out runs/optimizers]
    python scripts/reproduce.py all [--quick] [--seeds N]
    python scripts/reproduce.py report [--runs runs] [--keep]   # docs/results.md from the saved metrics

Every setting runs once per seed (0..N-1; 3 by default, 1 with --quick) and the
verdicts account for the spread between seeds (mxbn/experiments/spread.py).
Every training run is computed on one OpenMP thread, in worker processes, one
per core (--jobs): the numbers are the same alone or in `all`, on any machine
(mxbn/experiments/runner.py).

Argument parsing only; the experiments live in mxbn.experiments.
"""
import argparse
import os
import sys
import time

from _cli import HelpFormatter  # noqa: E402  (scripts/ is on sys.path)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import mxbn  # noqa: E402,F401  (thread defaults before mxnet loads)
from mxbn.context import ContextError, resolve_context  # noqa: E402
from mxbn.data import DataError  # noqa: E402
from mxbn.experiments import EXPERIMENTS, PLANNED  # noqa: E402
from mxbn.atomic import writable_dir  # noqa: E402
from mxbn.experiments.report import ReportError, write_report  # noqa: E402
from mxbn.experiments.runner import run_studies  # noqa: E402
from mxbn.experiments.workers import default_jobs  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("name", choices=sorted(EXPERIMENTS) + ["all", "report"])
    p.add_argument("--quick", action="store_true", help="a few minutes in all: fewer iterations, less data")
    p.add_argument("--seeds", type=int, default=None,
                   help="runs per setting, seeds 0..N-1 (default 3, or 1 with --quick)")
    p.add_argument("--ctx", default="cpu", help="cpu, gpu (falls back with a warning) or gpu:N")
    p.add_argument("--data-dir", default=None,
                   help="a folder searched first for the datasets (the idx files, mnist_5k.csv.gz); the same as "
                        "setting MXBN_DATA_DIR (default: MXBN_DATA_DIR, then the system's datasets)")
    p.add_argument("--jobs", type=int, default=None,
                   help="worker processes of one OpenMP thread each: the runs of bn-paper and small-batch, and "
                        "with all the other studies side by side; the numbers do not depend on it (default: one "
                        "per core)")
    p.add_argument("--out", default=None, help="output folder (default runs/NAME; with all: runs/)")
    p.add_argument("--runs", default=None, help="report: the folder holding NAME/metrics.json (default runs)")
    p.add_argument("--docs", default=os.path.join(ROOT, "docs"), help="where report writes results.md "
                                                                       "(default: the repository's docs/)")
    p.add_argument("--force", action="store_true",
                   help="report: replace a report made from more seeds or full runs with this one")
    p.add_argument("--keep", action="store_true",
                   help="report: keep the current report's section of every study --runs does not hold, word "
                        "for word (report one re-run study without re-running the others)")
    a = p.parse_args(argv)
    if a.name == "report" and a.out is not None:
        p.error("report reads the runs from --runs DIR (--out is where an experiment writes)")
    if a.name != "report" and (a.runs is not None or a.force or a.keep):
        p.error("--runs, --force and --keep belong to report")
    a.seeds = a.seeds if a.seeds is not None else (1 if a.quick else 3)
    if a.seeds < 1:
        p.error(f"--seeds must be at least 1, got {a.seeds}")
    if a.jobs is not None and a.jobs < 1:
        p.error(f"--jobs must be at least 1, got {a.jobs}")
    if a.data_dir is not None:
        if not os.path.isdir(a.data_dir):
            p.error(f"--data-dir {a.data_dir}: not a directory")
        os.environ["MXBN_DATA_DIR"] = os.path.abspath(a.data_dir)
    return p, a


def out_dirs(a, names):
    """{name: its output folder}: runs/NAME, or --out for one experiment."""
    runs = a.out or "runs"
    return {name: os.path.join(runs, name) if (a.name == "all" or a.out is None) else a.out for name in names}


def main(argv=None):
    p, a = parse_args(argv)
    if a.name == "report":
        try:
            print(write_report(a.runs or "runs", a.docs, list(EXPERIMENTS), PLANNED, force=a.force, keep=a.keep))
        except ReportError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    names = list(EXPERIMENTS) if a.name == "all" else [a.name]
    outs = out_dirs(a, names)
    try:
        ctx = resolve_context(a.ctx)
    except ContextError as e:
        p.error(str(e))
    for out_dir in outs.values():   # before the first run: a bad --out must not cost an hour
        try:
            writable_dir(out_dir, "--out")
        except ValueError as e:
            p.error(str(e))
    start = time.perf_counter()

    def report(name, result, seconds):
        print(f"{name}: {len(result.claims)} claims on {result.dataset}, {a.seeds} seed(s), in "
              f"{seconds:.0f} s -> {outs[name]}", flush=True)
        for c in result.claims:
            where = f" [{c['dataset']}]" if c.get("dataset") else ""
            print(f"  [{c['verdict']}]{where} {c['claim']}: {c['reason']}", flush=True)

    try:
        run_studies(names, outs, ctx, a.quick, a.seeds, a.jobs or default_jobs(), report)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:   # the workers are stopped; a study that had finished keeps its metrics.json
        print(f"interrupted after {time.perf_counter() - start:.0f} s; the studies reported above are saved",
              file=sys.stderr)
        return 130
    if len(names) > 1:
        print(f"all: {len(names)} experiments in {time.perf_counter() - start:.0f} s (wall clock, "
              f"{a.jobs or default_jobs()} worker(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
