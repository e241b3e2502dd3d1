"""`mlp-sigmoid`: the NumPy MLP study of initialisation, input scale and batch norm.

(a) 6000 training / 1000 test images, MLP 784-200-50-10 with sigmoid, batch 128,
SGD lr 0.1, 50 epochs: N(0, 1)*0.01 weights without BN, the same with BN, and
Xavier without BN. (b) All data, MLP 784-100-100-100-10 with ReLU, Xavier, batch
256, SGD lr 0.1, 30 epochs, on raw 0-255 pixels with and without BN, and
without BN after L2-normalising each image. (c) MLP 784-100x4-10, ReLU + BN,
Adam lr 0.01, batch 256, 30 epochs.
Claims (MNIST in the study): (a) random init without BN does not learn
(~11-13 %), with BN ~87 %, Xavier without BN ~88 %; (b) with BN 97.2 %, without
BN no convergence on raw pixels, 86 % after L2 normalisation; (c) ~97.8-98.0 %.
"""
import functools
import os

from mxnet import nd

from .. import models
from ..optim import SGD, Adam
from ..plot import save_figure, subplots
from ..train import TrainingDiverged, fit
from .common import save_metrics, tutorial_dataset, verdict

TITLE = "Sigmoid MLPs, input scale and batch norm (the NumPy MLP study)"
LEARNS = 0.7   # final test accuracy above which a run "learns" (chance is 0.1)
FAILS = 0.2


def _train(sizes, activation, use_bn, init, scale, optimizer, train, test, epochs, batch_size, ctx, log, label):
    params, state = models.mlp_params(ctx, sizes, use_bn=use_bn, init=init, init_scale=scale, seed=0)
    net = functools.partial(models.mlp, activation=activation)
    try:
        h = fit(net, params, state, optimizer, optimizer.init(params), train, test, epochs, batch_size, seed=0,
                min_batch_size=models.min_train_batch_size(params, dense_bn=True), log=lambda *_: None)
        log(f"mlp-sigmoid: {label}: final test accuracy {h[-1]['test_acc']:.4f}")
        return [e["test_acc"] for e in h]
    except TrainingDiverged as e:
        log(f"mlp-sigmoid: {label}: diverged ({e})")
        return None


def _l2_normalised(X):
    flat = X.reshape((X.shape[0], -1))
    return (flat / nd.sqrt(nd.sum(flat * flat, axis=1, keepdims=True))).reshape(X.shape)


def run(out_dir, ctx, quick=False, log=print):
    os.makedirs(out_dir, exist_ok=True)
    scale_epochs = 0.1 if quick else 1.0
    ep = lambda n: max(1, int(n * scale_epochs))  # noqa: E731
    dataset, source, full_train, full_test = tutorial_dataset(ctx, 6000 if quick else None,
                                                              1000 if quick else None)
    # (a)'s subset is the first 6000/1000 images: slices of the same device arrays, read once
    small_train = (full_train[0][:6000], full_train[1][:6000])
    small_test = (full_test[0][:1000], full_test[1][:1000])
    runs = {}
    a_sizes = (784, 200, 50, 10)
    runs["(a) N(0,1)*0.01, no BN"] = _train(a_sizes, "sigmoid", False, "normal", 0.01, SGD(lr=0.1), small_train,
                                             small_test, ep(50), 128, ctx, log, "(a) N(0,1)*0.01, no BN")
    runs["(a) N(0,1)*0.01, BN"] = _train(a_sizes, "sigmoid", True, "normal", 0.01, SGD(lr=0.1), small_train,
                                          small_test, ep(50), 128, ctx, log, "(a) N(0,1)*0.01, BN")
    runs["(a) Xavier, no BN"] = _train(a_sizes, "sigmoid", False, "xavier", 0.01, SGD(lr=0.1), small_train,
                                        small_test, ep(50), 128, ctx, log, "(a) Xavier, no BN")
    raw = (full_train[0] * 255.0, full_train[1]), (full_test[0] * 255.0, full_test[1])
    l2 = (_l2_normalised(full_train[0]), full_train[1]), (_l2_normalised(full_test[0]), full_test[1])
    b_sizes = (784, 100, 100, 100, 10)
    for label, use_bn, data in (("(b) raw pixels, BN", True, raw), ("(b) raw pixels, no BN", False, raw),
                                ("(b) L2-normalised, no BN", False, l2)):
        runs[label] = _train(b_sizes, "relu", use_bn, "xavier", 0.01, SGD(lr=0.1), data[0], data[1], ep(30), 256,
                             ctx, log, label)
    runs["(c) ReLU + BN, Adam lr 0.01"] = _train((784, 100, 100, 100, 100, 10), "relu", True, "he", 0.01,
                                                 Adam(lr=0.01), full_train, full_test, ep(30), 256, ctx, log,
                                                 "(c) ReLU + BN, Adam lr 0.01")

    fig, axes = subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for ax, part in zip(axes, "abc"):
        for label, accs in runs.items():
            if label.startswith(f"({part})") and accs:
                ax.plot(range(1, len(accs) + 1), accs, label=label[4:])
        ax.set(xlabel="epoch", title=f"({part})", ylim=(0, 1))
        ax.legend(fontsize=8)
    axes[0].set_ylabel("test accuracy")
    fig.suptitle(f"MLPs on {dataset} (missing curves: diverged)")
    save_figure(fig, os.path.join(out_dir, "curves.png"))

    final = {k: (v[-1] if v else None) for k, v in runs.items()}

    def fmt(k):
        return "diverged" if final[k] is None else f"{final[k]:.3f}"

    def learns(k):
        return final[k] is not None and final[k] >= LEARNS

    def fails(k):
        return final[k] is None or final[k] < FAILS

    a = ["(a) N(0,1)*0.01, no BN", "(a) N(0,1)*0.01, BN", "(a) Xavier, no BN"]
    b = ["(b) raw pixels, BN", "(b) raw pixels, no BN", "(b) L2-normalised, no BN"]
    c = "(c) ReLU + BN, Adam lr 0.01"
    best_other = max(v for k, v in final.items() if v is not None and k != c)
    claims = [
        verdict("(a) sigmoid MLP with N(0,1)*0.01 weights does not learn without BN, but does with BN or Xavier",
                fails(a[0]) and learns(a[1]) and learns(a[2]), ", ".join(f"{k[4:]} {fmt(k)}" for k in a),
                partly=fails(a[0]) or learns(a[1])),
        verdict("(b) on raw 0-255 pixels BN converges and no BN does not; L2 normalisation rescues no BN",
                learns(b[0]) and fails(b[1]) and learns(b[2]), ", ".join(f"{k[4:]} {fmt(k)}" for k in b),
                partly=learns(b[0]) and fails(b[1])),
        verdict("(c) ReLU + BN with Adam gives the best accuracy of the study (97.8-98.0 % on MNIST)",
                final[c] is not None and final[c] >= best_other,
                f"{fmt(c)} on {dataset} vs best other run {best_other:.3f}"
                + ("" if dataset == "mnist" else "; absolute numbers differ on Fashion-MNIST"),
                partly=final[c] is not None and final[c] >= best_other - 0.01),
    ]
    metrics = dict(description=__doc__.split("\n", 1)[1].strip(), experiment="mlp-sigmoid", title=TITLE,
                   dataset=dataset, data_source=source, quick=quick, test_acc_per_epoch=runs, final_test_acc=final,
                   claims=claims, figures=["curves.png"])
    return save_metrics(out_dir, metrics)
