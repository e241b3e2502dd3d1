#!/usr/bin/env python
"""Run a distributed (dist_sync) training job on this machine: scheduler, servers and workers on 127.0.0.1.

    python scripts/launch_local.py -n 2 -- python scripts/train_cnn.py --ctx cpu --kvstore dist_sync

Everything after ``--`` is the worker command; each worker gets MXNet's DMLC_* variables.
Argument parsing only; the logic is mxbn.parallel.launch.
"""
import argparse
import os
import sys

from _cli import HelpFormatter  # noqa: E402  (scripts/ is on sys.path)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mxbn.parallel.launch import launch_local  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("-n", "--num-workers", type=int, default=2, help="worker processes")
    p.add_argument("-s", "--num-servers", type=int, default=1, help="parameter-server processes")
    p.add_argument("--port", type=int, default=None, help="scheduler port (default: a free one)")
    p.add_argument("--timeout", type=float, default=None, help="kill the job after this many seconds (exit 124)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="the worker command, after --")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("give the worker command after --, e.g. -- python scripts/train_cnn.py --kvstore dist_sync")
    if args.num_workers < 1 or args.num_servers < 1:
        p.error("--num-workers and --num-servers must be >= 1")
    # workers and services find mxbn from this checkout even when it is not installed
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    return launch_local(command, args.num_workers, args.num_servers, timeout=args.timeout, port=args.port)


if __name__ == "__main__":
    sys.exit(main())
