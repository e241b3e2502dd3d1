#!/usr/bin/env python
"""Train the tutorial's LeNet with batch norm on Fashion-MNIST.

    python scripts/train_cnn.py --ctx gpu            # the tutorial, on a GPU if one works, else the CPU

Argument parsing only; the job is mxbn.run.train_cnn.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from _cli import HelpFormatter  # noqa: E402  (scripts/ is on sys.path)

try:
    import mxbn  # noqa: E402,F401  (prepares numpy/threads before mxnet loads)
    from mxbn.checkpoint import CheckpointError  # noqa: E402
    from mxbn.config import ConfigError, cli_options, config_from_options  # noqa: E402
    from mxbn.context import ContextError  # noqa: E402
    from mxbn.data import DataError  # noqa: E402
    from mxbn.parallel import KVStoreError  # noqa: E402
    from mxbn.run import eval_checkpoint, train_cnn  # noqa: E402
    from mxbn.train import TrainingDiverged, TrainingInterrupted  # noqa: E402
except KeyboardInterrupt:   # Ctrl-C while MXNet loads: one line, not a traceback
    print("interrupted during start-up; nothing was written", file=sys.stderr)
    sys.exit(130)


def int_list(text):
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs like 10,15, got {text!r}") from None


def _add_config_flag(p, option):
    """One TrainConfig field as a flag (mxbn.config.cli_options: name, kind, default, help, choices)."""
    if option.kind is bool:
        action = "store_false" if option.negated else "store_true"
        p.add_argument(option.flag, dest=option.field, action=action, help=option.help)
        return
    kind = int_list if option.kind is tuple else option.kind
    p.add_argument(option.flag, dest=option.field, type=kind, default=option.default, choices=option.choices,
                   metavar=None if option.choices else option.flag[2:].upper().replace("-", "_"), help=option.help)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    for option in cli_options():
        _add_config_flag(p, option)
    p.add_argument("--out", default=os.path.join("runs", "lenet"), help="output folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.add_argument("--eval-only", metavar="CHECKPOINT", help="evaluate a checkpoint and exit")
    p.add_argument("--on-nan", default="stop", choices=("stop", "skip"),
                   help="on a non-finite loss: stop, or skip the batch (at most 10 per epoch; syncs every batch)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p, p.parse_args(argv)


def config_from_args(args):
    return config_from_options(vars(args))


def main(argv=None):
    parser, args = parse_args(argv)
    try:
        if args.eval_only:
            eval_checkpoint(args.eval_only, args.ctx, args.data_dir)
            return 0
        config = config_from_args(args).validate()
        train_cnn(config, args.out, resume=args.resume, overwrite=args.overwrite, on_nan=args.on_nan,
                  progress=not args.no_progress and sys.stderr.isatty())
    except (ConfigError, ContextError, KVStoreError) as e:
        parser.error(str(e))  # usage error: exit code 2
    except (DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except TrainingDiverged as e:
        kept = os.path.exists(os.path.join(args.out, "checkpoint.params"))
        print(f"error: {e}" + (f"; the last good checkpoint and metrics in {args.out} are intact" if kept
                               else "; no epoch had finished, nothing was saved"), file=sys.stderr)
        return 3
    except TrainingInterrupted:
        return 130  # the conventional code for "stopped by a signal"; the checkpoint is written
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:   # before training installs its own handler (data loading, tracing)
        print("interrupted before training started; nothing to resume", file=sys.stderr)
        sys.exit(130)
