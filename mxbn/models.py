"""Models as data plus a forward function: LeNet (the tutorial's net) and an MLP.

``*_params`` returns ``(params, state)``: ``params`` are the learned NDArrays
(the optimizer updates them), ``state`` the batch-norm moving statistics (only
``batch_norm`` updates them).  Forward functions take both explicitly and keep
no hidden state.  Names: ``conv1_weight``, ``bn1_gamma``, ``bn1_moving_mean``, ...
"""
from . import functional as F
from . import init as I

__all__ = ["lenet_params", "lenet", "lenet_layers", "lenet_conv", "lenet_pool", "lenet_head", "LENET_BLOCKS",
           "LENET_STAGES", "LENET_STAGE_NORMS", "mlp_params",
           "mlp", "mlp_layers", "ACTIVATIONS", "min_train_batch_size", "uses_batch_norm"]

ACTIVATIONS = {"relu": F.relu, "sigmoid": F.sigmoid, "tanh": F.tanh}

# The tutorial's LeNet: conv 20@5x5 -> BN -> ReLU -> max-pool 2 -> conv 50@3x3 -> BN -> ReLU
# -> max-pool 2 -> flatten -> dense 128 -> ReLU -> dense 10, on 1x28x28 images.
LENET_CONV = ((20, 1, 5), (50, 20, 3))      # (out channels, in channels, kernel)
LENET_HIDDEN = 128
LENET_FLAT = 50 * 5 * 5                      # 28 -5+1=24 -pool-> 12 -3+1=10 -pool-> 5
NUM_CLASSES = 10


def _add_bn(params, state, prefix, channels, ctx):
    p, s = I.batch_norm_params(channels, ctx)
    params.update({f"{prefix}_{k}": v for k, v in p.items()})
    state.update({f"{prefix}_{k}": v for k, v in s.items()})


def lenet_params(ctx, use_bn=True, init="normal", seed=0, init_scale=I.DEFAULT_NORMAL_SCALE):
    """Parameters and BN state of the tutorial's LeNet.

    Parameters
    ----------
    ctx : mx.Context
    use_bn : bool, default True
        Batch norm after each convolution (then the convolutions have no bias:
        BN's beta makes it redundant).
    init : {"normal", "xavier", "he"}, default "normal"
        Weight initializer; "normal" uses ``init_scale`` (the tutorial's 0.01).
    seed : int or np.random.Generator, default 0
    """
    rng = I.as_rng(seed)
    params, state = {}, {}
    for i, (out_c, in_c, k) in enumerate(LENET_CONV, start=1):
        params[f"conv{i}_weight"] = I.weight(init, (out_c, in_c, k, k), ctx, rng, init_scale)
        if use_bn:
            _add_bn(params, state, f"bn{i}", out_c, ctx)
        else:
            params[f"conv{i}_bias"] = I.zeros((out_c,), ctx)
    params["fc1_weight"] = I.weight(init, (LENET_HIDDEN, LENET_FLAT), ctx, rng, init_scale)
    params["fc1_bias"] = I.zeros((LENET_HIDDEN,), ctx)
    params["fc2_weight"] = I.weight(init, (NUM_CLASSES, LENET_HIDDEN), ctx, rng, init_scale)
    params["fc2_bias"] = I.zeros((NUM_CLASSES,), ctx)
    return params, state


def _bn(params, state, prefix, X, is_training, bn_impl, bn_momentum):
    return F.batch_norm(X, params[f"{prefix}_gamma"], params[f"{prefix}_beta"], is_training,
                        state[f"{prefix}_moving_mean"], state[f"{prefix}_moving_vari"],
                        momentum=bn_momentum, impl=bn_impl)


# LeNet in three stages around its batch norms, so that a data-parallel forward
# (mxbn.parallel) can run each stage on every device and synchronize the BN between.
LENET_BLOCKS = (1, 2)


def lenet_conv(params, i, H):
    """Convolution of block ``i`` (before its batch norm)."""
    return F.conv2d(H, params[f"conv{i}_weight"], params.get(f"conv{i}_bias"))


def lenet_pool(H):
    """What follows a block's (optional) batch norm: ReLU, then 2x2 max-pooling."""
    return F.max_pool2d(F.relu(H), 2)


def lenet_head(params, H):
    """Dense 128 -> ReLU -> dense 10: the logits."""
    H = F.relu(F.dense(H, params["fc1_weight"], params["fc1_bias"]))
    return F.dense(H, params["fc2_weight"], params["fc2_bias"])


def _lenet_input_stage(params, X):
    """Input -> block 1's convolution (before its batch norm)."""
    return lenet_conv(params, 1, X)


def _lenet_middle_stage(params, H):
    """Block 1's ReLU and pooling -> block 2's convolution."""
    return lenet_conv(params, 2, lenet_pool(H))


def _lenet_output_stage(params, H):
    """The last block's ReLU and pooling -> logits."""
    return lenet_head(params, lenet_pool(H))


# LeNet as the stages between its batch norms, for a data-parallel forward that
# synchronizes each BN across devices (mxbn.parallel.across_devices): stage k's
# output goes through the batch norm named LENET_STAGE_NORMS[k] (when the net has
# it) before stage k + 1.  The same layers as ``lenet``.
LENET_STAGES = (_lenet_input_stage, _lenet_middle_stage, _lenet_output_stage)
LENET_STAGE_NORMS = tuple(f"bn{i}" for i in LENET_BLOCKS)


def lenet_layers(params, state, X, is_training, bn_impl="fused", bn_momentum=0.9):
    """(logits, taps): the LeNet forward, and per batch-norm layer ``(name, its input, its output)``.

    Under mxbn.jit only what the caller returns is computed, so ``lenet`` (the
    logits alone) pays nothing for the taps.
    """
    H = X
    taps = []
    for i in LENET_BLOCKS:
        H = lenet_conv(params, i, H)
        if f"bn{i}_gamma" in params:
            normalized = _bn(params, state, f"bn{i}", H, is_training, bn_impl, bn_momentum)
            taps.append((f"bn{i}", H, normalized))
            H = normalized
        H = lenet_pool(H)
    return lenet_head(params, H), taps


def lenet(params, state, X, is_training, bn_impl="fused", bn_momentum=0.9):
    """Logits (N, 10) of LeNet for images X (N, 1, 28, 28). BN is used iff ``params`` has it."""
    return lenet_layers(params, state, X, is_training, bn_impl, bn_momentum)[0]


def mlp_params(ctx, sizes, use_bn=False, init="he", seed=0, init_scale=I.DEFAULT_NORMAL_SCALE):
    """An MLP with layer sizes ``sizes`` (e.g. (784, 100, 100, 10)); BN after each hidden affine.

    Hidden affines keep their bias even with BN, as in the studies this
    reproduces (BN's beta makes it redundant, but harmless).
    """
    if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
        raise ValueError(f"mlp sizes must list at least an input and an output size, got {sizes!r}")
    rng = I.as_rng(seed)
    params, state = {}, {}
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        params[f"fc{i}_weight"] = I.weight(init, (d_out, d_in), ctx, rng, init_scale)
        params[f"fc{i}_bias"] = I.zeros((d_out,), ctx)
        if use_bn and i < len(sizes) - 1:
            _add_bn(params, state, f"bn{i}", d_out, ctx)
    return params, state


def mlp_layers(params, state, X, is_training, activation="relu", bn_impl="fused", bn_momentum=0.9):
    """(output, taps): the MLP forward, and per hidden layer ``(name, affine output, activation input)``
    (the same array without BN; BN's output with it).  Under mxbn.jit unused taps cost nothing."""
    act = ACTIVATIONS[activation]
    n_layers = sum(1 for k in params if k.endswith("_weight"))
    H = X
    taps = []
    for i in range(1, n_layers + 1):
        H = F.dense(H, params[f"fc{i}_weight"], params[f"fc{i}_bias"])
        if i < n_layers:
            affine = H
            if f"bn{i}_gamma" in params:
                H = _bn(params, state, f"bn{i}", H, is_training, bn_impl, bn_momentum)
            taps.append((f"hidden{i}", affine, H))
            H = act(H)
    return H, taps


def mlp(params, state, X, is_training, activation="relu", bn_impl="fused", bn_momentum=0.9):
    """Output of the MLP for X (N, ...) (flattened): affine -> [BN] -> activation per hidden layer."""
    return mlp_layers(params, state, X, is_training, activation, bn_impl, bn_momentum)[0]


def uses_batch_norm(params):
    return any(k.endswith("_gamma") for k in params)


def min_train_batch_size(params, dense_bn):
    """Smallest training batch the net's batch norm accepts: 2 when BN normalises
    dense features (one value per channel per sample), else 1."""
    return 2 if dense_bn and uses_batch_norm(params) else 1
