#!/usr/bin/env python
"""Classify PNG/JPEG files with a checkpoint of scripts/train_cnn.py.

    python scripts/predict.py runs/lenet/checkpoint.params shoe.png shirt.jpg

Prints the class name and its probability per file.  Exit code 0 if every file
was classified, 1 if some file could not be read (the others are still
classified) or the checkpoint is unusable.  Argument parsing only; the logic
is mxbn.predict.
"""
import argparse
import os
import sys

from _cli import HelpFormatter  # noqa: E402  (scripts/ is on sys.path)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import mxbn  # noqa: E402,F401  (prepares numpy/threads before mxnet loads)
from mxbn.checkpoint import CheckpointError  # noqa: E402
from mxbn.context import ContextError  # noqa: E402
from mxbn.predict import classify_images, format_prediction  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("checkpoint", help="checkpoint.params written by scripts/train_cnn.py")
    p.add_argument("images", nargs="+", help="PNG or JPEG files (grayscale 28x28, or converted)")
    p.add_argument("--ctx", default="cpu", help="cpu, gpu (falls back with a warning) or gpu:N")
    a = p.parse_args(argv)
    try:
        results = classify_images(a.checkpoint, a.images, a.ctx, log=lambda m: print(m, file=sys.stderr))
    except ContextError as e:
        p.error(str(e))
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for result in results:
        print(format_prediction(result), file=sys.stderr if result.error else sys.stdout)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
