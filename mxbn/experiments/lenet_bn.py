"""`lenet-bn`: the MXNet "batch norm from scratch" tutorial and its exercise.

LeNet with and without batch norm, the same init (N(0, 0.01^2)), plain SGD with
lr 0.2, batch 128, 5 epochs on Fashion-MNIST; then lr in {0.2, 0.5, 1.0, 2.0}
with and without batch norm.
Claims: BN gives clearly higher test accuracy, especially in the first epochs;
BN tolerates larger learning rates.
"""
import os

from .. import models
from ..data import load_dataset, to_device
from ..jit import jit
from ..optim import SGD
from ..plot import plot_band, plot_range, save_figure, subplots
from ..train import TrainingDiverged, fit
from . import spread
from .result import StudyResult, describe, verdict
from .common import seed_list

TITLE = "LeNet with and without batch norm (the MXNet tutorial)"
LRS = (0.2, 0.5, 1.0, 2.0)
# "clearly higher": more than the ~1 % epoch-to-epoch noise of this net at lr 0.2
CLEAR_MARGIN = 0.02
# What the tutorial printed (2017 edition, Fashion-MNIST, 5 epochs, lr 0.2)
TUTORIAL_ACCURACY = ("test accuracy after 5 epochs 0.879 with its scratch BN, 0.900 with Gluon's BatchNorm "
                     "(Fashion-MNIST)")


def _key(use_bn, lr):
    return f"{'bn' if use_bn else 'no-bn'} lr {lr}"


def train_one(use_bn, lr, train, test, epochs, ctx, seed, log):
    """History of one run, or None if the loss became non-finite."""
    params, state = models.lenet_params(ctx, use_bn=use_bn, init="normal", seed=seed)
    try:
        return fit(jit(models.lenet), params, state, SGD(lr=lr), SGD(lr=lr).init(params), train, test,
                   epochs, 128, seed=seed, log=lambda *_: None)
    except TrainingDiverged as e:
        log(f"lenet-bn seed {seed}: {'BN' if use_bn else 'no BN'} lr {lr}: {e}")
        return None


def _train_all(train, test, epochs, ctx, seeds, log):
    """{key: one history per seed (None for a diverged run)} for every learning rate, with and without BN."""
    runs = {_key(bn, lr): [] for lr in LRS for bn in (True, False)}
    for seed in seeds:
        for lr in LRS:
            for use_bn in (True, False):
                h = train_one(use_bn, lr, train, test, epochs, ctx, seed, log)
                runs[_key(use_bn, lr)].append(h)
                log(f"lenet-bn seed {seed}: {'BN' if use_bn else 'no BN'} lr {lr}: test accuracy per epoch "
                    + ("diverged" if h is None else " ".join(f"{e['test_acc']:.4f}" for e in h)))
    return runs


def _accuracies(runs, key, epoch):
    """Test accuracy after ``epoch`` (1-based) per seed; chance for a diverged run."""
    return [spread.accuracy_or_chance(h[epoch - 1]["test_acc"] if h else None) for h in runs[key]]


def _figures(runs, final, epochs, n_seeds, dataset_name, out_dir):
    def curves(key):
        return [[e["test_acc"] for e in h] if h else [float("nan")] * epochs for h in runs[key]]

    fig, ax = subplots(figsize=(7, 5))
    for key, style, label in (("bn lr 0.2", "o-", "with BN"), ("no-bn lr 0.2", "s--", "without BN")):
        plot_band(ax, list(range(1, epochs + 1)), curves(key), label, style)
    ax.set(xlabel="epoch", ylabel="test accuracy",
           title=f"LeNet on {dataset_name}, SGD lr 0.2, batch 128: mean and range of {n_seeds} seed(s)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend()
    save_figure(fig, os.path.join(out_dir, "bn_vs_nobn.png"))

    fig, ax = subplots(figsize=(7, 5))
    for prefix, style, label in (("bn", "o-", "with BN"), ("no-bn", "s--", "without BN")):
        plot_range(ax, LRS, [final[f"{prefix} lr {lr}"] for lr in LRS], label, style)
    ax.set(xscale="log", xlabel="learning rate", ylabel=f"test accuracy after {epochs} epochs",
           title="learning-rate tolerance (mean, range over seeds; diverged = chance)")
    ax.set_xticks(LRS, [str(lr) for lr in LRS])
    ax.legend()
    save_figure(fig, os.path.join(out_dir, "lr_sweep.png"))


def _claims(runs, final, epochs, n_seeds, dataset_name):
    first_gap = spread.difference(_accuracies(runs, "bn lr 0.2", 1), _accuracies(runs, "no-bn lr 0.2", 1))
    final_gap = spread.difference(final["bn lr 0.2"], final["no-bn lr 0.2"])
    bn_better = [lr for lr in LRS[1:] if spread.exceeds(final[_key(True, lr)], final[_key(False, lr)])]
    bn_trains = [lr for lr in LRS[1:] if all(h is not None for h in runs[_key(True, lr)])]
    diverged = {key: sum(h is None for h in hs) for key, hs in runs.items()}

    def diverged_note(key):
        return f" ({diverged[key]} of {n_seeds} diverged)" if diverged[key] else ""

    early_clear = first_gap["counts"] and first_gap["mean"] > CLEAR_MARGIN
    return [
        verdict("BN gives clearly higher test accuracy, especially in the first epochs",
                early_clear and final_gap["counts"] and final_gap["mean"] > 0
                and first_gap["mean"] >= final_gap["mean"],
                f"with BN {spread.fmt(final['bn lr 0.2'], 4)}, without {spread.fmt(final['no-bn lr 0.2'], 4)} "
                f"after {epochs} epochs; BN minus no BN: epoch 1 {spread.fmt(first_gap['values'], 4)}, "
                f"epoch {epochs} {spread.fmt(final_gap['values'], 4)}",
                partly=early_clear or (final_gap["counts"] and final_gap["mean"] > 0)
                or spread.larger_in_every_seed(first_gap["values"], [0.0] * n_seeds),
                dataset=dataset_name, tutorial=TUTORIAL_ACCURACY),
        verdict("BN tolerates larger learning rates",
                len(bn_better) == len(LRS) - 1 and len(bn_trains) == len(LRS) - 1,
                "final test accuracy BN / no BN: " + "; ".join(
                    f"lr {lr} {spread.fmt(final[_key(True, lr)])}{diverged_note(_key(True, lr))} / "
                    f"{spread.fmt(final[_key(False, lr)])}{diverged_note(_key(False, lr))}" for lr in LRS)
                + f"; BN ahead by the spread rule at lr {', '.join(map(str, bn_better)) or 'none'} of "
                  f"{', '.join(map(str, LRS[1:]))}",
                partly=bool(bn_better) or any(spread.larger_in_every_seed(final[_key(True, lr)], final[_key(False, lr)])
                                              for lr in LRS[1:]), dataset=dataset_name,
                tutorial="the tutorial's exercise, no figure given (Fashion-MNIST)"),
    ]


def run(out_dir, ctx, quick=False, log=print, seeds=1):
    os.makedirs(out_dir, exist_ok=True)
    seeds = seed_list(seeds)
    ds = load_dataset("fashion-mnist", allow_download=False)
    limit_train, limit_test, epochs = (5120, 1000, 2) if quick else (None, None, 5)
    train = to_device(ds.train_images, ds.train_labels, ctx, limit_train)
    test = to_device(ds.test_images, ds.test_labels, ctx, limit_test)
    runs = _train_all(train, test, epochs, ctx, seeds, log)
    final = {key: _accuracies(runs, key, epochs) for key in runs}
    _figures(runs, final, epochs, len(seeds), ds.name, out_dir)
    result = StudyResult(
        experiment="lenet-bn", title=TITLE, description=describe(__doc__), datasets=[ds.name], data_source=ds.source,
        quick=quick, seeds=seeds, claims=_claims(runs, final, epochs, len(seeds), ds.name),
        figures=["bn_vs_nobn.png", "lr_sweep.png"],
        measurements=dict(epochs=epochs, histories=runs,
                          final_test_acc={k: spread.summary(v) for k, v in final.items()}))
    return result.save(out_dir)
