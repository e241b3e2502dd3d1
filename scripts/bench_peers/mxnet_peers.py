"""MXNet peers of mxbn's LeNet and batch_norm: a raw-NDArray LeNet with ``nd.BatchNorm``, Gluon hybridized,
and the 2017 tutorial's composed batch norm (reference timings only)."""
import mxnet as mx
from mxnet import autograd, gluon, nd

from mxbn.bench import BLOCK_CHANNELS, time_steps, time_trainer_step
from mxbn.models import LENET_BLOCKS, LENET_CONV, lenet_conv, lenet_head, lenet_params, lenet_pool

PEER_VARIANTS = ["nd.BatchNorm", "gluon-hybrid", "gluon-hybrid-c16"]
LENET_CHANNELS = tuple(out_c for out_c, _, _ in LENET_CONV)


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


def nd_batch_norm(X, gamma, beta, is_training, moving_mean, moving_vari):
    """MXNet's fused operator with mxbn's defaults (eps 1e-5, momentum 0.9, gamma learned)."""
    return nd.BatchNorm(X, gamma, beta, moving_mean, moving_vari, eps=1e-5, momentum=0.9, fix_gamma=False,
                        use_global_stats=not is_training)


def peer_ops(inputs, include_tutorial=True):
    """[(name, op)] of the peers at op level, on mxbn.bench.op_inputs' arrays."""
    a = inputs
    args = (a["X"], a["gamma"], a["beta"])
    stats = (a["moving_mean"], a["moving_vari"])
    ops = [("nd.BatchNorm", lambda is_training: nd_batch_norm(*args, is_training, *stats))]
    if include_tutorial:
        ops.append(("tutorial composed", lambda is_training: tutorial_batch_norm(*args, is_training, *stats)[0]))
    return ops


def raw_nd_batchnorm_lenet(params, state, X, is_training):
    """mxbn's LeNet layers (models.lenet_conv/pool/head) with MXNet's fused operator in place of mxbn.batch_norm."""
    H = X
    for i in LENET_BLOCKS:
        H = nd_batch_norm(lenet_conv(params, i, H), params[f"bn{i}_gamma"], params[f"bn{i}_beta"], is_training,
                          state[f"bn{i}_moving_mean"], state[f"bn{i}_moving_vari"])
        H = lenet_pool(H)
    return lenet_head(params, H)


def gluon_lenet(channels=LENET_CHANNELS):
    """mxbn's LeNet (models.lenet_params with these conv widths) as Gluon layers."""
    from mxnet.gluon import nn
    net = nn.HybridSequential()
    net.add(nn.Conv2D(channels[0], kernel_size=5, use_bias=False), nn.BatchNorm(), nn.Activation("relu"),
            nn.MaxPool2D(2, 2), nn.Conv2D(channels[1], kernel_size=3, use_bias=False), nn.BatchNorm(),
            nn.Activation("relu"), nn.MaxPool2D(2, 2), nn.Flatten(), nn.Dense(128, activation="relu"),
            nn.Dense(10))
    return net


def time_gluon(ctx, batches, batch_size, lr, steps, warmup, channels=LENET_CHANNELS):
    net = gluon_lenet(channels)
    net.initialize(mx.init.Normal(0.01), ctx=ctx)
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": lr})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()

    def step(X, y):
        with autograd.record():
            loss = loss_fn(net(X), y)
        loss.backward()
        trainer.step(batch_size)

    return time_steps(step, batches, steps, warmup)


def time_peer_variant(variant, ctx, batches, batch_size, lr, steps, warmup):
    """Seconds for ``steps`` training steps of one of PEER_VARIANTS."""
    if variant == "gluon-hybrid":
        return time_gluon(ctx, batches, batch_size, lr, steps, warmup)
    if variant == "gluon-hybrid-c16":
        return time_gluon(ctx, batches, batch_size, lr, steps, warmup, BLOCK_CHANNELS)
    if variant == "nd.BatchNorm":
        params, state = lenet_params(ctx, seed=0)
        return time_trainer_step(raw_nd_batchnorm_lenet, params, state, batches, lr, steps, warmup)
    raise ValueError(f"unknown peer variant {variant!r}; expected one of {PEER_VARIANTS}")
