"""Timings of mxbn's own code: its batch_norm, its LeNet through the trainer's step, the input pipeline.

The peers it is compared with (MXNet's ``nd.BatchNorm`` net, Gluon, PyTorch, the
2017 tutorial's batch norm) and the side-by-side orchestration live beside the
benchmark, in ``scripts/bench_peers/``; they build on the helpers here.

Timing rule: every timed region starts and ends with ``mx.nd.waitall()``
(MXNet is asynchronous; without it one times the queueing, not the work), the
first calls are warm-up, and the median of the repeats is reported.
"""
import functools
import statistics
import time

import numpy as np

from . import functional as F
from .batch_norm import _batch_norm_train_fused
from .jit import jit
from .models import LENET_CONV, LENET_FLAT, LENET_HIDDEN, NUM_CLASSES, lenet, lenet_params
from .train import SYNC_EVERY

import mxnet as mx
from mxnet import autograd, nd

__all__ = ["lenet_training_flops", "cpu_peak_gflops",
           "median_ms", "op_inputs", "mxbn_ops", "time_op", "step_breakdown", "synthetic_batches", "time_steps",
           "time_trainer_step", "time_mxbn_variant", "bench_pipeline", "OP_SHAPES", "KERNEL_ONLY", "MXBN_VARIANTS",
           "BLOCK_CHANNELS", "TRAIN_IMAGES"]

# LeNet's activations at batch 128 and a 2-D (dense) case.
OP_SHAPES = [(128, 20, 24, 24), (128, 50, 10, 10), (128, 128)]
# mxbn's LeNet variants.  "-2dev": data parallel over two devices of the kind
# (cpu:0,cpu:1 on a CPU), the batch split in halves; "-no-pass": mxbn.jit without its layout pass;
# "mxbn-static-scratch": batch_norm's scratch path in the graph (against "mxbn-scratch", imperative).
# "-c16": LeNet with 16 and 32 channels, widths that are already multiples of oneDNN's block (against
# "gluon-hybrid-c16", the same layers in Gluon): a user's net the layout pass does not need to pad.
MXBN_VARIANTS = ["mxbn-static", "mxbn-static-no-pass", "mxbn-static-scratch", "mxbn-fused", "mxbn-scratch", "no-bn",
                 "mxbn-static-2dev", "mxbn-sync-2dev", "mxbn-static-c16"]
BLOCK_CHANNELS = (16, 32)
TRAIN_IMAGES = 60000  # Fashion-MNIST training set, for seconds per epoch


def lenet_training_flops(image_size=28):
    """Floating-point operations of one LeNet training step per image: 2 per multiply-add of the
    convolutions and dense layers, forward, weight gradient and data gradient (none for the first
    convolution, whose input is the images).  Batch norm, pooling and activations (< 1 %) are left out."""
    flops, hw = 0, image_size
    for layer, (out_c, in_c, k) in enumerate(LENET_CONV):
        hw = hw - k + 1
        passes = 2 if layer == 0 else 3
        flops += 2 * out_c * in_c * k * k * hw * hw * passes
        hw //= 2
    return flops + 2 * (LENET_FLAT * LENET_HIDDEN + LENET_HIDDEN * NUM_CLASSES) * 3


def cpu_peak_gflops(cpuinfo="/proc/cpuinfo", cores=None):
    """(peak float32 GFLOP/s, how it was derived) of this CPU, or (None, why not): cores x clock x FLOPs per
    cycle.  Per cycle: 64 for an Intel CPU with AVX-512 (two 16-float FMA units; parts with one have half),
    32 for AVX2, and 32 for AMD's AVX-512 (Zen 4 runs a 512-bit FMA as two 256-bit halves on its two FMA
    pipes).  The clock is the one /proc/cpuinfo reports, not a turbo clock."""
    try:
        with open(cpuinfo) as f:
            text = f.read()
    except OSError as e:
        return None, f"cannot read {cpuinfo}: {e.strerror}"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    mhz = [float(line.split(":", 1)[1]) for line in text.splitlines() if line.startswith("cpu MHz")]
    amd = "AuthenticAMD" in text
    per_cycle = (32 if amd else 64) if "avx512f" in flags else 32 if "avx2" in flags else None
    if not mhz or per_cycle is None:
        return None, "clock or vector width unknown"
    from ._runtime import default_num_threads
    cores = cores or default_num_threads()
    return cores * mhz[0] * 1e-3 * per_cycle, f"{cores} cores x {mhz[0]:.0f} MHz x {per_cycle} FLOP/cycle"


def median_ms(fn, repeat, warmup=2):
    for _ in range(warmup):
        fn()
    nd.waitall()
    times = []
    for _ in range(repeat):
        nd.waitall()
        t0 = time.perf_counter()
        fn()
        nd.waitall()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def op_inputs(shape, ctx, rng):
    """Arrays for timing one batch norm of ``shape``: X, its output gradient dY, gamma/beta (with
    gradients attached) and the moving statistics."""
    C = shape[1]
    inputs = dict(X=nd.array(rng.normal(size=shape), ctx=ctx), dY=nd.array(rng.normal(size=shape), ctx=ctx),
                  gamma=nd.ones(C, ctx=ctx), beta=nd.zeros(C, ctx=ctx),
                  moving_mean=nd.zeros(C, ctx=ctx), moving_vari=nd.ones(C, ctx=ctx))
    for k in ("X", "gamma", "beta"):
        inputs[k].attach_grad()
    return inputs


# A diagnostic row of the op level: the cached graph that batch_norm(impl="fused") runs for its arithmetic (the
# kernel and the variance recovery), without the argument checks and the moving-statistics update around it;
# training only.  Its distance to nd.BatchNorm is the graph's; the rest of "mxbn fused" is mxbn's bookkeeping.
KERNEL_ONLY = "fused kernel only"


def mxbn_ops(inputs):
    """[(name, op)]: mxbn's batch_norm in both implementations, and the fused path's kernel graph alone
    (KERNEL_ONLY); ``op(is_training)`` runs it on ``inputs``."""
    a = inputs

    def op(impl):
        return lambda is_training: F.batch_norm(a["X"], a["gamma"], a["beta"], is_training, a["moving_mean"],
                                                a["moving_vari"], impl=impl)

    def kernel_only(is_training):
        assert is_training, "the kernel graph is the training arithmetic"
        return _batch_norm_train_fused(a["X"], a["gamma"], a["beta"], 1e-5, 1)[0]
    return [("mxbn fused", op("fused")), ("mxbn scratch", op("scratch")), (KERNEL_ONLY, kernel_only)]


def time_op(op, dY, repeat, infer=True):
    """(train_ms, infer_ms): median ms of ``op(True)`` forward+backward (output gradient dY) and of ``op(False)``
    (None when ``infer`` is false)."""
    def train_step():
        with autograd.record():
            Y = op(True)
        Y.backward(dY)
    return median_ms(train_step, repeat), (median_ms(lambda: op(False), repeat) if infer else None)


# --------------------------------------------------------------------------- #
# model level (each variant in a child process)
# --------------------------------------------------------------------------- #
def step_breakdown(ctx, batch_size=128, repeat=30):
    """Where one default training step's time goes: each LeNet layer as its own jitted graph
    (forward+backward), then the whole step's parts.  Rows: (part, median ms)."""
    from .optim import SGD
    from .train import TrainStep, loss_and_correct
    params, state = lenet_params(ctx, seed=0)
    batch_loss = loss_and_correct(jit(lenet), is_training=True)
    opt = SGD(lr=0.1)
    step = TrainStep(batch_loss, params, state, opt, opt.init(params))  # attaches the parameters' gradients
    (X, y), = synthetic_batches(ctx, batch_size, count=1)

    def layer(name, fn, inp):
        """Time fn's graph forward+backward on inp; returns its output, the next layer's input."""
        jitted = jit(fn)
        inp.attach_grad()

        def run():
            with autograd.record():
                out = jitted(params, state, inp, y)
            out.backward()
            return out
        out = run().detach()
        rows.append((f"layer {name} fwd+bwd", median_ms(run, repeat)))
        return out

    rows = []
    H = layer("conv1 20@5x5", lambda p, s, X, y: F.conv2d(X, p["conv1_weight"]), X)
    H = layer("bn1", lambda p, s, H, y: F.batch_norm(H, p["bn1_gamma"], p["bn1_beta"], True, s["bn1_moving_mean"],
                                                     s["bn1_moving_vari"]), H)
    H = layer("relu+pool1", lambda p, s, H, y: F.max_pool2d(F.relu(H), 2), H)
    H = layer("conv2 50@3x3", lambda p, s, H, y: F.conv2d(H, p["conv2_weight"]), H)
    H = layer("bn2", lambda p, s, H, y: F.batch_norm(H, p["bn2_gamma"], p["bn2_beta"], True, s["bn2_moving_mean"],
                                                     s["bn2_moving_vari"]), H)
    H = layer("relu+pool2", lambda p, s, H, y: F.max_pool2d(F.relu(H), 2), H)
    layer("dense+relu+dense+loss", lambda p, s, H, y: F.softmax_cross_entropy(
        F.dense(F.relu(F.dense(H, p["fc1_weight"], p["fc1_bias"])), p["fc2_weight"], p["fc2_bias"]), y), H)

    def forward_only():
        batch_loss(params, state, X, y)

    def forward_backward():
        step.forward_backward(X, y)

    def update():
        step.apply()

    rows += [("whole graph: forward (train mode, loss in graph, state written back)", median_ms(forward_only, repeat)),
             ("whole graph: forward+backward", median_ms(forward_backward, repeat)),
             ("SGD update of the 10 parameters", median_ms(update, repeat))]
    return rows


def synthetic_batches(ctx, batch_size, count, seed=0):
    rng = np.random.default_rng(seed)
    X = nd.array(rng.random((batch_size * count, 1, 28, 28)), ctx=ctx)
    y = nd.array(rng.integers(0, 10, batch_size * count), ctx=ctx)
    return [(X[i * batch_size:(i + 1) * batch_size], y[i * batch_size:(i + 1) * batch_size]) for i in range(count)]


def time_trainer_step(net, params, state, batches, lr, steps, warmup):
    """The trainer's own step (``mxbn.train.SingleDeviceStep``: record, loss, backward, SGD) on ``net``."""
    from .optim import SGD
    from .train import SingleDeviceStep
    opt = SGD(lr=lr)
    trainer_step = SingleDeviceStep(net, params, state, opt, opt.init(params))

    def step(X, y):
        trainer_step.forward_backward(X, y)
        trainer_step.apply(None)

    return time_steps(step, batches, steps, warmup)


def time_steps(step, batches, steps, warmup):
    """Seconds for ``steps`` training steps after ``warmup`` untimed ones.

    Every variant syncs every SYNC_EVERY steps, as mxbn's trainer does: with no
    sync at all Python queues hundreds of steps on MXNet's engine and competes
    with its workers for the cores, which measured up to 40 % slower on 2 cores.
    """
    for i in range(warmup):
        step(*batches[i % len(batches)])
    nd.waitall()
    t0 = time.perf_counter()
    for i in range(steps):
        step(*batches[i % len(batches)])
        if (i + 1) % SYNC_EVERY == 0:
            nd.waitall()
    nd.waitall()
    return time.perf_counter() - t0


def _time_data_parallel(ctx, variant, batches, lr, steps, warmup):
    """mxbn-static per device (BN per slice) or the synchronized-BN LeNet, on two devices of ctx's kind."""
    from .optim import SGD
    from .models import LENET_STAGE_NORMS, LENET_STAGES
    from .parallel import DataParallelStep, across_devices, create_kvstore, jitted_stages, per_device
    make = mx.gpu if ctx.device_type == "gpu" else mx.cpu
    if ctx.device_type == "gpu" and mx.context.num_gpus() < 2:
        raise RuntimeError("needs two GPUs")
    params, state = lenet_params(make(0), seed=0)
    opt = SGD(lr=lr)
    synced = variant == "mxbn-sync-2dev"
    forward = (functools.partial(across_devices, jitted_stages(LENET_STAGES), LENET_STAGE_NORMS) if synced
               else per_device(jit(lenet)))
    dp = DataParallelStep(forward, [make(0), make(1)], params, state, opt, opt.init(params),
                          create_kvstore("device"), stats_synchronized=synced)

    def step(X, y):
        dp.forward_backward(X, y)
        dp.apply(None)

    return time_steps(step, batches, steps, warmup)


def time_mxbn_variant(variant, ctx, batches, lr, steps, warmup):
    """Seconds for ``steps`` training steps of one of MXBN_VARIANTS on ``batches``."""
    if variant not in MXBN_VARIANTS:
        raise ValueError(f"unknown mxbn variant {variant!r}; expected one of {MXBN_VARIANTS}")
    if variant.endswith("-2dev"):
        return _time_data_parallel(ctx, variant, batches, lr, steps, warmup)
    params, state = lenet_params(ctx, use_bn=variant != "no-bn", seed=0,
                                 channels=BLOCK_CHANNELS if variant.endswith("-c16") else None)
    if variant.startswith("mxbn-static"):
        impl = "scratch" if variant == "mxbn-static-scratch" else "fused"
        net = jit(functools.partial(lenet, bn_impl=impl), layout_pass=variant != "mxbn-static-no-pass")
    else:
        impl = "scratch" if variant == "mxbn-scratch" else "fused"
        net = functools.partial(lenet, bn_impl=impl)
    return time_trainer_step(net, params, state, batches, lr, steps, warmup)


def bench_pipeline(ctx, batch_size, repeat):
    """Seconds per epoch of the input pipeline alone: one shuffle gather + slicing 60,000 images."""
    from .data import epoch_batches, to_device
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(TRAIN_IMAGES, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=TRAIN_IMAGES).astype(np.uint8)
    X, y = to_device(images, labels, ctx)

    def one_epoch():
        batches, _ = epoch_batches(X, y, batch_size, rng)
        for Xb, yb in batches:
            Xb.wait_to_read()  # touch each batch as the training loop would

    return median_ms(one_epoch, repeat, warmup=1) / 1e3
