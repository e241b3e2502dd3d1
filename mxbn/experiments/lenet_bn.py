"""`lenet-bn`: the MXNet "batch norm from scratch" tutorial and its exercise.

LeNet with and without batch norm, the same init (N(0, 0.01^2)), plain SGD with
lr 0.2, batch 128, 5 epochs on Fashion-MNIST; then lr in {0.2, 0.5, 1.0, 2.0}
with and without batch norm.
Claims: BN gives clearly higher test accuracy, especially in the first epochs;
BN tolerates larger learning rates.
"""
import math
import os

from .. import models
from ..data import load_dataset, to_device
from ..jit import jit
from ..optim import SGD
from ..plot import save_figure, subplots
from ..train import TrainingDiverged, fit
from .common import save_metrics, verdict

TITLE = "LeNet with and without batch norm (the MXNet tutorial)"
LRS = (0.2, 0.5, 1.0, 2.0)
# "clearly higher": more than the ~1 % epoch-to-epoch noise of this net at lr 0.2
CLEAR_MARGIN = 0.02


def train_one(use_bn, lr, train, test, epochs, ctx, log):
    """History of one run, or None if the loss became non-finite."""
    params, state = models.lenet_params(ctx, use_bn=use_bn, init="normal", seed=0)
    try:
        return fit(jit(models.lenet), params, state, SGD(lr=lr), SGD(lr=lr).init(params), train, test,
                   epochs, 128, seed=0, log=lambda *_: None)
    except TrainingDiverged as e:
        log(f"lenet-bn: {'BN' if use_bn else 'no BN'} lr {lr}: {e}")
        return None


def run(out_dir, ctx, quick=False, log=print):
    os.makedirs(out_dir, exist_ok=True)
    ds = load_dataset("fashion-mnist", allow_download=False)
    limit_train, limit_test, epochs = (5120, 1000, 2) if quick else (None, None, 5)
    train = to_device(ds.train_images, ds.train_labels, ctx, limit_train)
    test = to_device(ds.test_images, ds.test_labels, ctx, limit_test)
    runs = {}
    for lr in LRS:
        for use_bn in (True, False):
            h = train_one(use_bn, lr, train, test, epochs, ctx, log)
            runs[f"{'bn' if use_bn else 'no-bn'} lr {lr}"] = h
            log(f"lenet-bn: {'BN' if use_bn else 'no BN'} lr {lr}: "
                + ("diverged" if h is None else " ".join(f"{e['test_acc']:.4f}" for e in h)))

    def accs(key):
        h = runs[key]
        return [e["test_acc"] for e in h] if h else None

    fig, ax = subplots(figsize=(7, 5))
    for key, style in (("bn lr 0.2", "o-"), ("no-bn lr 0.2", "s--")):
        if accs(key):
            ax.plot(range(1, epochs + 1), accs(key), style, label=key.replace("bn", "BN").replace("no-BN", "no BN"))
    ax.set(xlabel="epoch", ylabel="test accuracy", title=f"LeNet on {ds.name}, SGD lr 0.2, batch 128")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend()
    save_figure(fig, os.path.join(out_dir, "bn_vs_nobn.png"))

    final = {key: (h[-1]["test_acc"] if h else float("nan")) for key, h in runs.items()}
    fig, ax = subplots(figsize=(7, 5))
    for prefix, style, label in (("bn", "o-", "with BN"), ("no-bn", "s--", "without BN")):
        ax.plot(LRS, [final[f"{prefix} lr {lr}"] for lr in LRS], style, label=label)
    ax.set(xscale="log", xlabel="learning rate", ylabel=f"test accuracy after {epochs} epochs",
           title="learning-rate tolerance (missing points: diverged)")
    ax.set_xticks(LRS, [str(lr) for lr in LRS])
    ax.legend()
    save_figure(fig, os.path.join(out_dir, "lr_sweep.png"))

    bn, nobn = accs("bn lr 0.2"), accs("no-bn lr 0.2")
    first_gap = bn[0] - (nobn[0] if nobn else 0.0)
    final_gap = bn[-1] - (nobn[-1] if nobn else 0.0)
    high = [lr for lr in LRS[1:] if not math.isnan(final[f"bn lr {lr}"])]
    bn_better = [lr for lr in LRS[1:] if final[f"bn lr {lr}"] > final[f"no-bn lr {lr}"]
                 or math.isnan(final[f"no-bn lr {lr}"])]
    claims = [
        verdict("BN gives clearly higher test accuracy, especially in the first epochs",
                first_gap > CLEAR_MARGIN and final_gap > 0 and first_gap >= final_gap,
                f"test accuracy with minus without BN: epoch 1 {first_gap:+.4f}, epoch {epochs} {final_gap:+.4f}",
                partly=first_gap > 0 or final_gap > 0),
        verdict("BN tolerates larger learning rates",
                len(bn_better) == len(LRS) - 1 and len(high) == len(LRS) - 1,
                "final test accuracy BN / no BN: " + ", ".join(
                    f"lr {lr} {final[f'bn lr {lr}']:.4f} / "
                    + ("diverged" if math.isnan(final[f'no-bn lr {lr}']) else f"{final[f'no-bn lr {lr}']:.4f}")
                    for lr in LRS),
                partly=bool(bn_better)),
    ]
    metrics = dict(description=__doc__.split("\n", 1)[1].strip(), experiment="lenet-bn", title=TITLE,
                   dataset=ds.name, data_source=ds.source, quick=quick, epochs=epochs,
                   histories=runs, final_test_acc={k: (None if math.isnan(v) else v) for k, v in final.items()},
                   claims=claims, figures=["bn_vs_nobn.png", "lr_sweep.png"])
    return save_metrics(out_dir, metrics)
