"""One MXNet model-level variant of the benchmark, in a process of its own: prints one JSON line.

    python scripts/bench_peers/child.py --variant mxbn-static --ctx cpu --steps 200
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(os.path.dirname(HERE)), os.path.dirname(HERE)]  # the repository, scripts/

import mxbn  # noqa: E402,F401  (thread defaults before mxnet loads)
import mxnet as mx  # noqa: E402
from mxbn.bench import MXBN_VARIANTS, TRAIN_IMAGES, synthetic_batches, time_mxbn_variant  # noqa: E402
from mxbn.context import resolve_context  # noqa: E402
from bench_peers.mxnet_peers import PEER_VARIANTS, time_peer_variant  # noqa: E402
from bench_peers.rss import peak_rss_mb  # noqa: E402

LR = 0.1


def gpu_memory_mb(ctx):
    if ctx.device_type != "gpu":
        return None
    try:
        free, total = mx.context.gpu_memory_info(0)
        return (total - free) / 2**20
    except Exception:  # no GPU: the CPU fallback ran
        return None


def measure(variant, ctx_spec, batch_size, steps, warmup):
    ctx = resolve_context(ctx_spec, warn=lambda *_: None)
    batches = synthetic_batches(ctx, batch_size, count=4)
    if variant in PEER_VARIANTS:
        seconds = time_peer_variant(variant, ctx, batches, batch_size, LR, steps, warmup)
    else:
        seconds = time_mxbn_variant(variant, ctx, batches, LR, steps, warmup)
    images_per_sec = steps * batch_size / seconds
    return dict(variant=variant, images_per_sec=images_per_sec, ms_per_step=1e3 * seconds / steps,
                epoch_seconds=TRAIN_IMAGES / images_per_sec, peak_rss_mb=peak_rss_mb(), gpu_mb=gpu_memory_mb(ctx))


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--variant", required=True, choices=MXBN_VARIANTS + PEER_VARIANTS)
    p.add_argument("--ctx", default="cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    a = p.parse_args(argv)
    print(json.dumps(measure(a.variant, a.ctx, a.batch_size, a.steps, a.warmup)))


if __name__ == "__main__":
    main()
