#!/usr/bin/env python
"""Export a checkpoint of scripts/train_cnn.py for use outside mxbn, batch norm folded.

    python scripts/export.py runs/lenet/best.params --out runs/lenet/export

writes NAME-symbol.json and NAME-0000.params (MXNet's own format: input "data", N x 1 x 28 x 28 float32,
any batch size; output the logits), loadable with gluon.SymbolBlock.imports or the Module API, then
checks them against mxbn's own inference on the first test images (exit 1 if they disagree; the files
are then removed).  Exit code 2 for a bad argument or an unusable checkpoint.  Argument parsing only;
the logic is mxbn.export_checkpoint.
"""
import argparse
import os
import sys

from _cli import HelpFormatter  # noqa: E402  (scripts/ is on sys.path)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import mxbn  # noqa: E402,F401  (prepares numpy/threads before mxnet loads)
from mxbn.checkpoint import CheckpointError  # noqa: E402
from mxbn.context import ContextError, resolve_context  # noqa: E402
from mxbn.data import DataError  # noqa: E402
from mxbn.export import ExportError  # noqa: E402
from mxbn.export_checkpoint import FORMATS, PARITY_IMAGES, export_checkpoint  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("checkpoint", help="checkpoint.params or best.params written by scripts/train_cnn.py")
    p.add_argument("--format", default="mxnet", choices=FORMATS, help="what to write")
    p.add_argument("--out", help="output folder (default: export/ beside the checkpoint)")
    p.add_argument("--name", default="lenet", help="file name prefix")
    p.add_argument("--ctx", default="cpu", help="cpu, gpu (falls back with a warning) or gpu:N")
    p.add_argument("--data-dir", help="folder of the checkpoint's dataset, for the parity check (default: where "
                                      "training found it)")
    p.add_argument("--parity-images", type=int, default=PARITY_IMAGES, help="test images the check runs on")
    a = p.parse_args(argv)
    if a.parity_images < 1:
        p.error(f"--parity-images must be at least 1, got {a.parity_images}")
    out = a.out or os.path.join(os.path.dirname(os.path.abspath(a.checkpoint)), "export")
    try:
        ctx = resolve_context(a.ctx, warn=lambda m: print(m, file=sys.stderr), task="exporting")
        export_checkpoint(a.checkpoint, out, a.format, a.name, ctx, a.data_dir, a.parity_images)
    except (ContextError, CheckpointError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1 if "does not reproduce" in str(e) else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
