#!/usr/bin/env python
"""Train the tutorial's LeNet with batch norm on Fashion-MNIST.

    python scripts/train_cnn.py --ctx gpu            # the tutorial, on a GPU if one works, else the CPU

Argument parsing only; the job is mxbn.run.train_cnn.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import mxbn  # noqa: E402  (prepares numpy/threads before mxnet loads)
from mxbn.checkpoint import CheckpointError  # noqa: E402
from mxbn.config import GRAPHS, KVSTORE_TYPES, LR_SCHEDULES, ConfigError, TrainConfig  # noqa: E402
from mxbn.context import ContextError  # noqa: E402
from mxbn.data import DATASETS, DataError  # noqa: E402
from mxbn.parallel import KVStoreError  # noqa: E402
from mxbn.optim import OPTIMIZERS  # noqa: E402
from mxbn.run import eval_checkpoint, train_cnn  # noqa: E402
from mxbn.train import TrainingDiverged, TrainingInterrupted  # noqa: E402

D = TrainConfig()


def int_list(text):
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs like 10,15, got {text!r}") from None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ctx", default=D.ctx,
                   help="gpu (falls back to the CPU with a warning), gpu:N, cpu, or a list such as gpu:0,gpu:1 "
                        "(data parallel: each batch is split over the devices)")
    p.add_argument("--kvstore", default=D.kvstore, choices=KVSTORE_TYPES,
                   help="how gradients are summed: device/local within this process (default device for "
                        "several contexts); dist_sync/dist_device_sync across worker processes started by "
                        "scripts/launch_local.py or by hand (see README)")
    p.add_argument("--bn-sync", action="store_true",
                   help="batch-norm statistics over the whole batch across this process's devices "
                        "(needs several contexts)")
    p.add_argument("--dataset", default=D.dataset, choices=sorted(DATASETS))
    p.add_argument("--data-dir", default=D.data_dir,
                   help="folder with the four idx files; else $MXBN_DATA_DIR, MXNet's cache, "
                        "/usr/share/datasets/fashion-mnist, then download")
    p.add_argument("--epochs", type=int, default=D.epochs)
    p.add_argument("--batch-size", type=int, default=D.batch_size)
    p.add_argument("--lr", type=float, default=D.lr, help="learning rate")
    p.add_argument("--lr-schedule", default=D.lr_schedule, choices=LR_SCHEDULES)
    p.add_argument("--warmup-epochs", type=float, default=D.warmup_epochs, help="linear warm-up from 0")
    p.add_argument("--lr-steps", type=int_list, default=D.lr_step_epochs,
                   help="epochs for --lr-schedule step, e.g. 10,15")
    p.add_argument("--lr-factor", type=float, default=D.lr_factor, help="step decay factor")
    p.add_argument("--optimizer", default=D.optimizer, choices=sorted(OPTIMIZERS))
    p.add_argument("--momentum", type=float, default=D.momentum, help="for --optimizer momentum")
    p.add_argument("--weight-decay", type=float, default=D.weight_decay)
    p.add_argument("--no-bn", action="store_true", help="LeNet without batch norm")
    p.add_argument("--bn-momentum", type=float, default=D.bn_momentum,
                   help="moving = m*moving + (1-m)*batch (MXNet convention)")
    p.add_argument("--bn-impl", default=D.bn_impl, choices=mxbn.BATCH_NORM_IMPLS,
                   help="fused kernel or from-primitives batch_norm (same numbers)")
    p.add_argument("--graph", default=D.graph, choices=GRAPHS,
                   help="static: models.lenet through mxbn.jit, one planned MXNet graph (same numbers, "
                        "faster); imperative: mxbn's functional ops one by one")
    p.add_argument("--trace-bn", action="store_true",
                   help="record the 15th/50th/85th percentiles of every BN layer's input and output over "
                        "training on a fixed test batch; writes bn_trace.json and bn_trace.png")
    p.add_argument("--init", default=D.init, choices=mxbn.init.INIT_NAMES)
    p.add_argument("--init-scale", type=float, default=D.init_scale, help="std for --init normal")
    p.add_argument("--seed", type=int, default=D.seed)
    p.add_argument("--augment", action="store_true", help="random horizontal flips and shifts (on the device)")
    p.add_argument("--max-shift", type=int, default=D.max_shift, help="pixels, with --augment")
    p.add_argument("--limit-train", type=int, default=None, help="use the first N training images")
    p.add_argument("--limit-test", type=int, default=None, help="use the first N test images")
    p.add_argument("--out", default=os.path.join("runs", "lenet"), help="output folder")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.add_argument("--eval-only", metavar="CHECKPOINT", help="evaluate a checkpoint and exit")
    p.add_argument("--on-nan", default="stop", choices=("stop", "skip"),
                   help="on a non-finite loss: stop, or skip the batch (at most 10 per epoch; syncs every batch)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p, p.parse_args(argv)


def config_from_args(args):
    return TrainConfig(
        ctx=args.ctx, dataset=args.dataset, data_dir=args.data_dir, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, lr_schedule=args.lr_schedule, warmup_epochs=args.warmup_epochs,
        lr_step_epochs=args.lr_steps, lr_factor=args.lr_factor, optimizer=args.optimizer,
        momentum=args.momentum, weight_decay=args.weight_decay, use_bn=not args.no_bn,
        bn_momentum=args.bn_momentum, bn_impl=args.bn_impl, graph=args.graph, init=args.init,
        init_scale=args.init_scale,
        seed=args.seed, augment=args.augment, max_shift=args.max_shift, limit_train=args.limit_train,
        limit_test=args.limit_test, kvstore=args.kvstore, bn_sync=args.bn_sync,
        trace_bn=args.trace_bn)


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
    sys.exit(main())
