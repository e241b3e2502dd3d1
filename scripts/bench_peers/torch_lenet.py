"""The same LeNet-BN training step in PyTorch eager, for the benchmark's comparison row.

Run as a file in its own process (``python scripts/bench_peers/torch_lenet.py``):
that process must not load MXNet, whose OpenMP threads would compete with
PyTorch's.  Prints one JSON line with the measurements.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # scripts/
from bench_peers.rss import peak_rss_mb  # noqa: E402

TRAIN_IMAGES = 60000


def time_torch_lenet(batch_size, steps, warmup, lr=0.1):
    import torch
    import torch.nn.functional as TF
    torch.manual_seed(0)
    threads = int(os.environ.get("OMP_NUM_THREADS", "0")) or torch.get_num_threads()
    torch.set_num_threads(threads)
    p = {"w1": torch.randn(20, 1, 5, 5) * 0.01, "g1": torch.ones(20), "b1": torch.zeros(20),
         "w2": torch.randn(50, 20, 3, 3) * 0.01, "g2": torch.ones(50), "b2": torch.zeros(50),
         "f1": torch.randn(128, 1250) * 0.01, "c1": torch.zeros(128),
         "f2": torch.randn(10, 128) * 0.01, "c2": torch.zeros(10)}
    for t in p.values():
        t.requires_grad_(True)
    stats = {k: (torch.zeros(c), torch.ones(c)) for k, c in (("1", 20), ("2", 50))}
    X = torch.rand(batch_size * 4, 1, 28, 28)
    y = torch.randint(0, 10, (batch_size * 4,))

    def step(i):
        j = i % 4
        xb, yb = X[j * batch_size:(j + 1) * batch_size], y[j * batch_size:(j + 1) * batch_size]
        h = xb
        for k in ("1", "2"):
            h = TF.conv2d(h, p["w" + k])
            # PyTorch's momentum 0.1 is mxbn's 0.9
            h = TF.batch_norm(h, stats[k][0], stats[k][1], p["g" + k], p["b" + k], training=True, momentum=0.1)
            h = TF.max_pool2d(TF.relu(h), 2)
        h = TF.relu(TF.linear(h.flatten(1), p["f1"], p["c1"]))
        loss = TF.cross_entropy(TF.linear(h, p["f2"], p["c2"]), yb)
        for t in p.values():
            t.grad = None
        loss.backward()
        with torch.no_grad():
            for t in p.values():
                t -= lr * t.grad

    for i in range(warmup):
        step(i)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    seconds = time.perf_counter() - t0  # eager CPU PyTorch is synchronous
    ips = steps * batch_size / seconds
    return dict(variant="torch-eager", images_per_sec=ips, ms_per_step=1e3 * seconds / steps,
                epoch_seconds=TRAIN_IMAGES / ips,
                peak_rss_mb=peak_rss_mb(), gpu_mb=None,
                note=f"torch {torch.__version__}, {threads} threads")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    a = ap.parse_args()
    print(json.dumps(time_torch_lenet(a.batch_size, a.steps, a.warmup)))
