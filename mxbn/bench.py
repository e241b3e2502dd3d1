"""Side-by-side timings: mxbn's batch_norm and LeNet against MXNet's BatchNorm, Gluon and PyTorch.

One command measures everything on the same machine and context, one after the
other.  Op-level timings run in this process.  Each model-level variant runs in
a child process of its own, so that its peak resident memory is its own and no
two thread pools (MXNet's and PyTorch's) compete; the children run one at a time.

Timing rule: every timed region starts and ends with ``mx.nd.waitall()``
(MXNet is asynchronous; without it one times the queueing, not the work), the
first calls are warm-up, and the median of the repeats is reported.
"""
import functools
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from . import _runtime
from . import functional as F
from .jit import jit
from .models import lenet, lenet_params
from .torch_lenet import peak_rss_mb
from .train import SYNC_EVERY

import mxnet as mx
from mxnet import autograd, gluon, nd

__all__ = ["run_bench", "step_breakdown", "OP_SHAPES", "MODEL_VARIANTS", "format_table"]

# LeNet's activations at batch 128 and a 2-D (dense) case.
OP_SHAPES = [(128, 20, 24, 24), (128, 50, 10, 10), (128, 128)]
# "-2dev": data parallel over two devices of the kind (cpu:0,cpu:1 on a CPU), the batch split in halves
MODEL_VARIANTS = ["mxbn-static", "mxbn-fused", "mxbn-scratch", "nd.BatchNorm", "gluon-hybrid", "no-bn",
                  "mxbn-static-2dev", "mxbn-sync-2dev", "torch-eager"]
MXNET_VARIANTS = MODEL_VARIANTS[:-1]
HEADLINE = "gluon-hybrid"
TRAIN_IMAGES = 60000  # Fashion-MNIST training set, for seconds per epoch


def _median_ms(fn, repeat, warmup=2):
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


def tutorial_batch_norm(X, gamma, beta, is_training, moving_mean, moving_vari, eps=1e-5, momentum=0.9):
    """The 2017 tutorial's composed BN (reductions and broadcasts), for reference timings only.

    Like the tutorial it returns new moving statistics computed inside the
    recorded graph instead of updating them in place.
    """
    if len(X.shape) == 2:
        axes, shape = (0,), (1, X.shape[1])
    else:
        axes, shape = (0, 2, 3), (1, X.shape[1], 1, 1)
    if is_training:
        mean = X.mean(axis=axes, keepdims=True)
        vari = ((X - mean) ** 2).mean(axis=axes, keepdims=True)
        X_hat = (X - mean) / nd.sqrt(vari + eps)
        moving_mean = momentum * moving_mean + (1 - momentum) * mean.reshape(moving_mean.shape)
        moving_vari = momentum * moving_vari + (1 - momentum) * vari.reshape(moving_vari.shape)
    else:
        X_hat = (X - moving_mean.reshape(shape)) / nd.sqrt(moving_vari.reshape(shape) + eps)
    return gamma.reshape(shape) * X_hat + beta.reshape(shape), moving_mean, moving_vari


def bench_ops(ctx, repeat, shapes=OP_SHAPES, include_tutorial=True):
    """Rows: shape, implementation, ms for training fwd+bwd and for inference forward."""
    rows = []
    rng = np.random.default_rng(0)
    for shape in shapes:
        C = shape[1]
        X = nd.array(rng.normal(size=shape), ctx=ctx)
        dY = nd.array(rng.normal(size=shape), ctx=ctx)
        gamma, beta = nd.ones(C, ctx=ctx), nd.zeros(C, ctx=ctx)
        mm, mv = nd.zeros(C, ctx=ctx), nd.ones(C, ctx=ctx)
        for a in (X, gamma, beta):
            a.attach_grad()

        def mxbn_op(impl):
            return lambda is_training: F.batch_norm(X, gamma, beta, is_training, mm, mv, impl=impl)

        def mxnet_op(is_training):
            return nd.BatchNorm(X, gamma, beta, mm, mv, eps=1e-5, momentum=0.9, fix_gamma=False,
                                use_global_stats=not is_training)

        impls = [("mxbn fused", mxbn_op("fused")), ("mxbn scratch", mxbn_op("scratch")),
                 ("nd.BatchNorm", mxnet_op)]
        if include_tutorial:
            impls.append(("tutorial composed",
                          lambda is_training: tutorial_batch_norm(X, gamma, beta, is_training, mm, mv)[0]))
        for name, op in impls:
            def train_step(op=op):
                with autograd.record():
                    Y = op(True)
                Y.backward(dY)

            def infer(op=op):
                op(False)
            # the composed reference is ~40x slower: fewer repeats keep the run short
            reps = max(3, repeat // 5) if name == "tutorial composed" else repeat
            rows.append(dict(shape="x".join(map(str, shape)), impl=name,
                             train_ms=_median_ms(train_step, reps), infer_ms=_median_ms(infer, reps)))
    return rows


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
    (X, y), = _synthetic_batches(ctx, batch_size, count=1)

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
        rows.append((f"layer {name} fwd+bwd", _median_ms(run, repeat)))
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

    rows += [("whole graph: forward (train mode, loss in graph, state written back)", _median_ms(forward_only, repeat)),
             ("whole graph: forward+backward", _median_ms(forward_backward, repeat)),
             ("SGD update of the 10 parameters", _median_ms(update, repeat))]
    return rows


def _synthetic_batches(ctx, batch_size, count, seed=0):
    rng = np.random.default_rng(seed)
    X = nd.array(rng.random((batch_size * count, 1, 28, 28)), ctx=ctx)
    y = nd.array(rng.integers(0, 10, batch_size * count), ctx=ctx)
    return [(X[i * batch_size:(i + 1) * batch_size], y[i * batch_size:(i + 1) * batch_size]) for i in range(count)]


def _raw_nd_batchnorm_lenet(params, state, X, is_training):
    """The raw-NDArray LeNet with MXNet's fused operator in place of mxbn.batch_norm."""
    H = X
    for i in (1, 2):
        H = F.conv2d(H, params[f"conv{i}_weight"])
        H = nd.BatchNorm(H, params[f"bn{i}_gamma"], params[f"bn{i}_beta"], state[f"bn{i}_moving_mean"],
                         state[f"bn{i}_moving_vari"], eps=1e-5, momentum=0.9, fix_gamma=False,
                         use_global_stats=not is_training)
        H = F.max_pool2d(F.relu(H), 2)
    H = F.relu(F.dense(H, params["fc1_weight"], params["fc1_bias"]))
    return F.dense(H, params["fc2_weight"], params["fc2_bias"])


def _time_raw_loop(net, params, state, batches, lr, steps, warmup):
    """The trainer's own step (``mxbn.train.SingleDeviceStep``: record, loss, backward, SGD) on ``net``."""
    from .optim import SGD
    from .train import SingleDeviceStep
    opt = SGD(lr=lr)
    trainer_step = SingleDeviceStep(net, params, state, opt, opt.init(params))

    def step(X, y):
        trainer_step.forward_backward(X, y)
        trainer_step.apply(None)

    return _time_steps(step, batches, steps, warmup)


def _time_steps(step, batches, steps, warmup):
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

    return _time_steps(step, batches, steps, warmup)


def _gluon_lenet():
    from mxnet.gluon import nn
    net = nn.HybridSequential()
    net.add(nn.Conv2D(20, kernel_size=5, use_bias=False), nn.BatchNorm(), nn.Activation("relu"),
            nn.MaxPool2D(2, 2), nn.Conv2D(50, kernel_size=3, use_bias=False), nn.BatchNorm(),
            nn.Activation("relu"), nn.MaxPool2D(2, 2), nn.Flatten(), nn.Dense(128, activation="relu"),
            nn.Dense(10))
    return net


def _time_gluon(ctx, batches, batch_size, lr, steps, warmup):
    net = _gluon_lenet()
    net.initialize(mx.init.Normal(0.01), ctx=ctx)
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": lr})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

    def step(X, y):
        with autograd.record():
            loss = loss_fn(net(X), y)
        loss.backward()
        trainer.step(batch_size)

    return _time_steps(step, batches, steps, warmup)


def model_child(variant, ctx_spec, batch_size, steps, warmup):
    """Run one model-level variant here and return its measurements (called in a child process)."""
    from .context import resolve_context
    lr = 0.1
    ctx = resolve_context(ctx_spec, warn=lambda *_: None)
    batches = _synthetic_batches(ctx, batch_size, count=4)
    if variant == "gluon-hybrid":
        seconds = _time_gluon(ctx, batches, batch_size, lr, steps, warmup)
    elif variant.endswith("-2dev"):
        seconds = _time_data_parallel(ctx, variant, batches, lr, steps, warmup)
    else:
        params, state = lenet_params(ctx, use_bn=variant != "no-bn", seed=0)
        if variant == "nd.BatchNorm":
            net = _raw_nd_batchnorm_lenet
        elif variant == "mxbn-static":
            net = jit(lenet)
        else:
            impl = "scratch" if variant == "mxbn-scratch" else "fused"
            net = lambda p, s, X, t, impl=impl: lenet(p, s, X, t, bn_impl=impl)  # noqa: E731
        seconds = _time_raw_loop(net, params, state, batches, lr, steps, warmup)
    images_per_sec = steps * batch_size / seconds
    gpu_mb = None
    if ctx.device_type == "gpu":
        try:
            free, total = mx.context.gpu_memory_info(0)
            gpu_mb = (total - free) / 2**20
        except Exception:  # no GPU: the CPU fallback ran
            gpu_mb = None
    return dict(variant=variant, images_per_sec=images_per_sec, ms_per_step=1e3 * seconds / steps,
                epoch_seconds=TRAIN_IMAGES / images_per_sec, peak_rss_mb=peak_rss_mb(), gpu_mb=gpu_mb)


def _run_child(variant, ctx_spec, batch_size, steps, warmup, timeout):
    args = ["--batch-size", str(batch_size), "--steps", str(steps), "--warmup", str(warmup)]
    if variant == "torch-eager":
        # run as a file, not through the package: the child must not load MXNet
        cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_lenet.py"), *args]
    else:
        cmd = [sys.executable, "-m", "mxbn.bench", "--child", variant, "--ctx", ctx_spec, *args]
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return dict(variant=variant, error=last)
    return json.loads(out.stdout.strip().splitlines()[-1])


def torch_available():
    try:
        import importlib.util
        return importlib.util.find_spec("torch") is not None
    except ValueError:
        return False


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

    return _median_ms(one_epoch, repeat, warmup=1) / 1e3


def _median_run(variant, results):
    ok = [r for r in results if "error" not in r]
    if not ok:
        return results[-1]
    ok.sort(key=lambda r: r["images_per_sec"])
    best = dict(ok[len(ok) // 2])
    best["images_per_sec_all"] = [r["images_per_sec"] for r in results if "error" not in r]
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in ok)
    return best


def run_bench(ctx_spec="cpu", batch_size=128, repeat=20, quick=False, model_rounds=3, log=print):
    """Everything above, side by side; returns a JSON-able dict (see ``format_table``)."""
    from .context import resolve_context
    ctx = resolve_context(ctx_spec, warn=log)
    shapes = OP_SHAPES
    steps, warmup = 200, 20
    if quick:
        repeat, steps, warmup = 3, 3, 1
        shapes = [(16, 20, 24, 24), (16, 128)]
    log(f"op level: {len(shapes)} shapes x {repeat} repeats on {ctx}")
    ops = bench_ops(ctx, repeat, shapes, include_tutorial=not quick)
    variants = [v for v in MODEL_VARIANTS if v != "torch-eager" or torch_available()]
    # Rounds interleave the variants (A B C .. A B C ..) and the median per variant
    # is reported: on a shared machine load drifts over minutes, and interleaving
    # spreads that drift over all variants instead of penalising whichever ran
    # during a bad stretch.
    rounds = 1 if quick else model_rounds
    runs = {v: [] for v in variants}
    for r in range(rounds):
        for v in variants:
            log(f"model level, round {r + 1}/{rounds}: {v} ({steps} steps of batch {batch_size})")
            runs[v].append(_run_child(v, "gpu" if ctx.device_type == "gpu" else "cpu", batch_size, steps, warmup,
                                      timeout=1800))
    models = [_median_run(v, runs[v]) for v in variants]
    pipeline_s = bench_pipeline(ctx, batch_size, max(1, repeat // 5))
    head = next((m for m in models if m["variant"] == HEADLINE and "error" not in m), None)
    for m in models:
        if head and "error" not in m:
            m["ratio_to_gluon"] = m["images_per_sec"] / head["images_per_sec"]
    torch = next((m for m in models if m["variant"] == "torch-eager" and "error" not in m), None)
    for m in models:
        if torch and "error" not in m:
            m["ratio_to_torch"] = m["images_per_sec"] / torch["images_per_sec"]
    default = next((m for m in models if m["variant"] == "mxbn-static" and "error" not in m), None)
    return dict(
        context=str(ctx), batch_size=batch_size, quick=quick, model_rounds=rounds, threads=_runtime.thread_settings(),
        mxnet=mx.__version__, cpu_count=os.cpu_count(), ops=ops, models=models,
        pipeline=dict(seconds_per_epoch=pipeline_s,
                      fraction_of_mxbn_epoch=(pipeline_s / default["epoch_seconds"]) if default else None),
        torch_available=torch_available())


def format_table(result):
    """Plain-text tables of a run_bench result."""
    lines = [f"context {result['context']}, batch {result['batch_size']}, mxnet {result['mxnet']}, "
             f"threads {result['threads']['in_force']}", "",
             f"{'shape':<16}{'implementation':<20}{'train fwd+bwd ms':>18}{'infer fwd ms':>14}{'train vs nd':>13}"]
    base = {r["shape"]: r for r in result["ops"] if r["impl"] == "nd.BatchNorm"}
    for r in result["ops"]:
        ratio = r["train_ms"] / base[r["shape"]]["train_ms"]
        lines.append(f"{r['shape']:<16}{r['impl']:<20}{r['train_ms']:>18.3f}{r['infer_ms']:>14.3f}{ratio:>12.2f}x")
    lines += ["", f"LeNet training, median of {result.get('model_rounds', 1)} interleaved round(s)",
              f"{'LeNet variant':<16}{'images/s':>10}{'ms/step':>10}{'s/epoch':>10}{'peak RSS MB':>13}"
              f"{'vs gluon':>10}  all rounds (img/s)"]
    for m in result["models"]:
        if "error" in m:
            lines.append(f"{m['variant']:<16}  failed: {m['error']}")
            continue
        lines.append(f"{m['variant']:<16}{m['images_per_sec']:>10.0f}{m['ms_per_step']:>10.2f}"
                     f"{m['epoch_seconds']:>10.2f}{m['peak_rss_mb']:>13.0f}"
                     f"{m.get('ratio_to_gluon', float('nan')):>9.2f}x"
                     + "  " + " ".join(f"{x:.0f}" for x in m.get("images_per_sec_all", []))
                     + (f"  ({m['note']})" if m.get("note") else ""))
    default = next((m for m in result["models"] if m["variant"] == "mxbn-static" and "error" not in m), None)
    if default:
        lines += ["", "default trainer (mxbn-static: models.lenet through mxbn.jit, the trainer's own step): "
                      f"{default.get('ratio_to_gluon', float('nan')):.2f}x Gluon hybridized, "
                      f"{default.get('ratio_to_torch', float('nan')):.2f}x PyTorch eager"]
    p = result["pipeline"]
    frac = p["fraction_of_mxbn_epoch"]
    lines += ["", f"input pipeline alone: {p['seconds_per_epoch']:.3f} s per epoch"
                  + (f" = {100 * frac:.2f} % of an mxbn-static (default) epoch" if frac is not None else "")]
    if not result["torch_available"]:
        lines.append("torch-eager: skipped (torch not importable)")
    return "\n".join(lines)


def _child_main(argv):
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument("--child", required=True, choices=MXNET_VARIANTS)
    p.add_argument("--ctx", default="cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    a = p.parse_args(argv)
    print(json.dumps(model_child(a.child, a.ctx, a.batch_size, a.steps, a.warmup)))


if __name__ == "__main__":
    _child_main(sys.argv[1:])
