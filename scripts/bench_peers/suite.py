"""The benchmark's side-by-side run: mxbn against its peers, op level in this process, each model-level
variant in a child process of its own (its peak resident memory its own; no two thread pools, MXNet's and
PyTorch's, competing), one at a time."""
import json
import os
import subprocess
import sys

import numpy as np

import mxnet as mx

from mxbn import _runtime
from mxbn.bench import (BLOCK_CHANNELS, KERNEL_ONLY, MXBN_VARIANTS, OP_SHAPES, bench_pipeline, mxbn_ops, op_inputs,
                        time_op)

from bench_peers.mxnet_peers import PEER_VARIANTS, peer_ops

HERE = os.path.dirname(os.path.abspath(__file__))
# the row order of the table
MODEL_VARIANTS = ["mxbn-static", "mxbn-static-no-pass", "mxbn-static-scratch", "mxbn-fused", "mxbn-scratch",
                  "nd.BatchNorm", "gluon-hybrid", "no-bn", "mxbn-static-2dev", "mxbn-sync-2dev", "mxbn-static-c16",
                  "gluon-hybrid-c16", "torch-eager"]
assert set(MODEL_VARIANTS) == set(MXBN_VARIANTS + PEER_VARIANTS + ["torch-eager"])
HEADLINE = "gluon-hybrid"


OP_ROUNDS = 5   # interleaved rounds at op level: one op's time moves by +-20 % over minutes on a shared machine


def bench_ops(ctx, repeat, shapes=OP_SHAPES, include_tutorial=True, rounds=OP_ROUNDS):
    """Rows: shape, implementation, ms for training fwd+bwd and for inference forward: the median over
    ``rounds`` rounds that each time every implementation (``repeat`` calls, their median), interleaved so
    that the ratios between implementations are taken at the same moments."""
    rows = []
    rng = np.random.default_rng(0)
    for shape in shapes:
        inputs = op_inputs(shape, ctx, rng)
        ops = mxbn_ops(inputs) + peer_ops(inputs, include_tutorial)
        times = {name: [] for name, _ in ops}
        for _ in range(rounds):
            for name, op in ops:
                # the composed reference is ~40x slower: fewer repeats keep the run short
                reps = max(3, repeat // 5) if name == "tutorial composed" else repeat
                times[name].append(time_op(op, inputs["dY"], reps, infer=name != KERNEL_ONLY))
        for name, _ in ops:
            train_ms = float(np.median([t[0] for t in times[name]]))
            infer_ms = None if name == KERNEL_ONLY else float(np.median([t[1] for t in times[name]]))
            rows.append(dict(shape="x".join(map(str, shape)), impl=name, train_ms=train_ms, infer_ms=infer_ms,
                             train_ms_all=[t[0] for t in times[name]]))
    return rows


def _run_child(variant, ctx_spec, batch_size, steps, warmup, timeout):
    args = ["--batch-size", str(batch_size), "--steps", str(steps), "--warmup", str(warmup)]
    if variant == "torch-eager":
        # run as a file, not through the package: the child must not load MXNet
        cmd = [sys.executable, os.path.join(HERE, "torch_lenet.py"), *args]
    else:
        cmd = [sys.executable, os.path.join(HERE, "child.py"), "--variant", variant, "--ctx", ctx_spec, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
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


def _median_run(variant, results):
    ok = [r for r in results if "error" not in r]
    if not ok:
        return results[-1]
    ok.sort(key=lambda r: r["images_per_sec"])
    best = dict(ok[len(ok) // 2])
    best["images_per_sec_all"] = [r["images_per_sec"] for r in results if "error" not in r]
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in ok)
    return best


def interleaved_medians(variants, rounds, ctx_spec, batch_size, steps, warmup, what, log):
    """Each variant's median run over ``rounds`` rounds that interleave the variants (A B C .. A B C ..): on
    a shared machine load drifts over minutes, and interleaving spreads that drift over all variants instead
    of penalising whichever ran during a bad stretch."""
    runs = {v: [] for v in variants}
    for r in range(rounds):
        for v in variants:
            log(f"{what}, round {r + 1}/{rounds}: {v} ({steps} steps of batch {batch_size})")
            runs[v].append(_run_child(v, ctx_spec, batch_size, steps, warmup, timeout=1800))
    return [_median_run(v, runs[v]) for v in variants]


def run_bench(ctx_spec="cpu", batch_size=128, repeat=20, quick=False, model_rounds=3, log=print):
    """Everything above, side by side; returns a JSON-able dict (see ``format_table``)."""
    from mxbn.context import resolve_context
    ctx = resolve_context(ctx_spec, warn=log)
    shapes = OP_SHAPES
    steps, warmup = 200, 20
    if quick:
        repeat, steps, warmup = 3, 3, 1
        shapes = [(16, 20, 24, 24), (16, 128)]
    log(f"op level: {len(shapes)} shapes x {repeat} repeats on {ctx}")
    ops = bench_ops(ctx, repeat, shapes, include_tutorial=not quick, rounds=1 if quick else OP_ROUNDS)
    variants = [v for v in MODEL_VARIANTS if v != "torch-eager" or torch_available()]
    rounds = 1 if quick else model_rounds
    models = interleaved_medians(variants, rounds, "gpu" if ctx.device_type == "gpu" else "cpu", batch_size, steps,
                                 warmup, "model level", log)
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


def run_ops(ctx_spec="cpu", repeat=20, quick=False, log=print):
    """The op level alone (bench_ops at OP_SHAPES, the tutorial's composed op left out): a JSON-able dict."""
    from mxbn.context import resolve_context
    ctx = resolve_context(ctx_spec, warn=log)
    shapes, rounds = ([(16, 20, 24, 24), (16, 128)], 1) if quick else (OP_SHAPES, OP_ROUNDS)
    log(f"op level: {len(shapes)} shapes x {rounds} interleaved rounds x {repeat} repeats on {ctx}")
    return dict(context=str(ctx), mxnet=mx.__version__, threads=_runtime.thread_settings(), rounds=rounds,
                ops=bench_ops(ctx, repeat, shapes, include_tutorial=False, rounds=rounds))


def format_ops(ops):
    """Lines of the op-level table: every implementation's ms and its ratio to nd.BatchNorm of the shape."""
    lines = [f"{'shape':<16}{'implementation':<20}{'train fwd+bwd ms':>18}{'infer fwd ms':>14}{'train vs nd':>13}"]
    base = {r["shape"]: r for r in ops if r["impl"] == "nd.BatchNorm"}
    fused = {r["shape"]: r for r in ops if r["impl"] == "mxbn fused"}
    for r in ops:
        ratio = r["train_ms"] / base[r["shape"]]["train_ms"]
        infer = "-" if r["infer_ms"] is None else f"{r['infer_ms']:.3f}"
        lines.append(f"{r['shape']:<16}{r['impl']:<20}{r['train_ms']:>18.3f}{infer:>14}{ratio:>12.2f}x"
                     + (f"  ({r['train_ms'] / fused[r['shape']]['train_ms']:.2f}x fused)"
                        if r["impl"] == "mxbn scratch" else ""))
    return lines


def format_table(result):
    """Plain-text tables of a run_bench result."""
    lines = [f"context {result['context']}, batch {result['batch_size']}, mxnet {result['mxnet']}, "
             f"threads {result['threads']['in_force']}", ""] + format_ops(result["ops"])
    lines += ["", f"LeNet training, median of {result.get('model_rounds', 1)} interleaved round(s)",
              f"{'LeNet variant':<22}{'images/s':>10}{'ms/step':>10}{'s/epoch':>10}{'peak RSS MB':>13}"
              f"{'vs gluon':>10}  all rounds (img/s)"]
    for m in result["models"]:
        if "error" in m:
            lines.append(f"{m['variant']:<22}  failed: {m['error']}")
            continue
        lines.append(f"{m['variant']:<22}{m['images_per_sec']:>10.0f}{m['ms_per_step']:>10.2f}"
                     f"{m['epoch_seconds']:>10.2f}{m['peak_rss_mb']:>13.0f}"
                     f"{m.get('ratio_to_gluon', float('nan')):>9.2f}x"
                     + "  " + " ".join(f"{x:.0f}" for x in m.get("images_per_sec_all", []))
                     + (f"  ({m['note']})" if m.get("note") else ""))
    default = next((m for m in result["models"] if m["variant"] == "mxbn-static" and "error" not in m), None)
    if default:
        lines += ["", "default trainer (mxbn-static: models.lenet through mxbn.jit, the trainer's own step): "
                      f"{default.get('ratio_to_gluon', float('nan')):.2f}x Gluon hybridized, "
                      f"{default.get('ratio_to_torch', float('nan')):.2f}x PyTorch eager"]
    by_name = {m["variant"]: m for m in result["models"] if "error" not in m}
    if "mxbn-static-scratch" in by_name and "mxbn-scratch" in by_name:
        ratio = by_name["mxbn-static-scratch"]["images_per_sec"] / by_name["mxbn-scratch"]["images_per_sec"]
        lines.append(f"impl='scratch' in one graph (mxbn-static-scratch) vs imperatively (mxbn-scratch): {ratio:.2f}x")
    if "mxbn-static-c16" in by_name and "gluon-hybrid-c16" in by_name:
        ratio = by_name["mxbn-static-c16"]["images_per_sec"] / by_name["gluon-hybrid-c16"]["images_per_sec"]
        lines.append(f"LeNet with {BLOCK_CHANNELS[0]}/{BLOCK_CHANNELS[1]} channels (no padding needed) through "
                     f"mxbn.jit vs the same layers in Gluon hybridized: {ratio:.2f}x")
    p = result["pipeline"]
    frac = p["fraction_of_mxbn_epoch"]
    lines += ["", f"input pipeline alone: {p['seconds_per_epoch']:.3f} s per epoch"
                  + (f" = {100 * frac:.2f} % of an mxbn-static (default) epoch" if frac is not None else "")]
    if not result["torch_available"]:
        lines.append("torch-eager: skipped (torch not importable)")
    return "\n".join(lines)


SWEEP_VARIANTS = ["mxbn-static", "gluon-hybrid", "torch-eager"]
SWEEP_IMAGES = 12800   # images timed per variant and batch size (equal work at every batch size)


def run_sweep(batch_sizes, ctx_spec="cpu", rounds=3, images=SWEEP_IMAGES, log=print):
    """Images/s of the default trainer's step, Gluon hybridized and PyTorch eager at each batch size, in
    interleaved rounds (medians), with GFLOP/s against the CPU's peak and each variant's peak RSS."""
    from mxbn.bench import cpu_peak_gflops, lenet_training_flops
    variants = [v for v in SWEEP_VARIANTS if v != "torch-eager" or torch_available()]
    flops = lenet_training_flops()
    peak, peak_basis = cpu_peak_gflops()
    rows = []
    for batch_size in batch_sizes:
        steps = max(10, images // batch_size)
        for m in interleaved_medians(variants, rounds, ctx_spec, batch_size, steps, max(3, steps // 10), "sweep",
                                     log):
            if "error" not in m:
                m["gflops"] = m["images_per_sec"] * flops * 1e-9
                m["fraction_of_peak"] = m["gflops"] / peak if peak else None
            rows.append(dict(m, batch_size=batch_size))
    return dict(batch_sizes=list(batch_sizes), rounds=rounds, images_per_measurement=images,
                training_flops_per_image=flops, peak_gflops=peak, peak_basis=peak_basis, rows=rows,
                threads=_runtime.thread_settings(), torch_available=torch_available())


def format_sweep(result):
    """The sweep as a table: images/s, ratios to Gluon and PyTorch, GFLOP/s and peak RSS per batch size."""
    peak = result["peak_gflops"]
    lines = [f"LeNet-BN training step against batch size, median of {result['rounds']} interleaved round(s), "
             f"{result['images_per_measurement']} images per measurement; "
             f"{result['training_flops_per_image'] / 1e6:.2f} MFLOP per image; peak "
             + (f"{peak:.0f} GFLOP/s ({result['peak_basis']})" if peak else f"unknown ({result['peak_basis']})"),
             "", f"{'batch':>6}  {'variant':<14}{'images/s':>10}{'vs gluon':>10}{'vs torch':>10}{'GFLOP/s':>9}"
             f"{'of peak':>9}{'peak RSS MB':>13}"]
    by_batch = {}
    for row in result["rows"]:
        by_batch.setdefault(row["batch_size"], {})[row["variant"]] = row
    for batch_size, rows in by_batch.items():
        for variant, m in rows.items():
            if "error" in m:
                lines.append(f"{batch_size:>6}  {variant:<14}  failed: {m['error']}")
                continue
            ratio = {peer: m["images_per_sec"] / rows[peer]["images_per_sec"]
                     if peer in rows and "error" not in rows[peer] else float("nan")
                     for peer in ("gluon-hybrid", "torch-eager")}
            of_peak = f"{100 * m['fraction_of_peak']:.0f} %" if m.get("fraction_of_peak") else "?"
            lines.append(f"{batch_size:>6}  {variant:<14}{m['images_per_sec']:>10.0f}{ratio['gluon-hybrid']:>9.2f}x"
                         f"{ratio['torch-eager']:>9.2f}x{m['gflops']:>9.1f}{of_peak:>9}{m['peak_rss_mb']:>13.0f}")
    if not result["torch_available"]:
        lines.append("torch-eager: skipped (torch not importable)")
    return "\n".join(lines)

