"""Models as data plus a forward function: LeNet (the tutorial's net) and an MLP.

``*_params`` returns ``(params, state)``: ``params`` are the learned NDArrays
(the optimizer updates them), ``state`` the batch-norm moving statistics (only
``batch_norm`` updates them).  Forward functions take both explicitly and keep
no hidden state.  Names: ``conv1_weight``, ``bn1_gamma``, ``bn1_moving_mean``, ...

A normalization layer's prefix names its kind (``norm`` of ``*_params``): ``bn`` batch norm, ``renorm``
batch renormalization (both with moving statistics in ``state``), ``gn`` group norm, ``ln`` layer norm,
``in`` instance norm (no state).  So the params dict alone says which net it is, and one forward serves all.
"""
from . import functional as F
from . import init as I
from .batch_renorm import batch_renorm
from .normalization import group_norm, instance_norm, layer_norm

__all__ = ["lenet_params", "lenet", "lenet_layers", "lenet_conv", "lenet_pool", "lenet_head", "LENET_BLOCKS",
           "LENET_STAGES", "LENET_STAGE_NORMS", "mlp_params", "NORMS", "BATCH_NORMS", "DEFAULT_GN_GROUPS",
           "RENORM_LIMITS", "renorm_limits", "renorm_schedule",
           "mlp", "mlp_layers", "ACTIVATIONS", "min_train_batch_size", "uses_batch_norm", "norm_of"]

ACTIVATIONS = {"relu": F.relu, "sigmoid": F.sigmoid, "tanh": F.tanh}

# The tutorial's LeNet: conv 20@5x5 -> BN -> ReLU -> max-pool 2 -> conv 50@3x3 -> BN -> ReLU
# -> max-pool 2 -> flatten -> dense 128 -> ReLU -> dense 10, on 1x28x28 images.
LENET_CONV = ((20, 1, 5), (50, 20, 3))      # (out channels, in channels, kernel)
LENET_HIDDEN = 128
LENET_MAP = 5 * 5                            # 28 -5+1=24 -pool-> 12 -3+1=10 -pool-> 5
LENET_FLAT = LENET_CONV[-1][0] * LENET_MAP
NUM_CLASSES = 10


NORMS = ("bn", "renorm", "gn", "ln", "in", "none")
BATCH_NORMS = ("bn", "renorm")       # the norms that use batch statistics and keep moving ones
# Groups of group norm: 5 divides both LeNet widths (20 and 50 channels: 4 and 10 per group).  Wu & He's 32
# groups need 32 | C, which LeNet's widths are not.
DEFAULT_GN_GROUPS = 5
# Batch renorm's limits live in the state as (1,) arrays, so that a schedule can relax them between steps
# without a new graph (Ioffe 2017 starts at r_max=1, d_max=0: plain batch norm); these are the final values.
RENORM_LIMITS = {"renorm_r_max": 3.0, "renorm_d_max": 5.0}


def _norm_name(use_bn, norm):
    """The norm kind from ``*_params``' arguments: ``norm`` when given, else bn or none by ``use_bn``."""
    norm = ("bn" if use_bn else "none") if norm is None else norm
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def _add_norm(params, state, norm, i, channels, ctx):
    """gamma/beta of norm layer ``i`` (and, for the batch norms, its moving statistics) under its kind's prefix."""
    if norm == "none":
        return
    p, s = I.batch_norm_params(channels, ctx)
    params.update({f"{norm}{i}_{k}": v for k, v in p.items()})
    if norm in BATCH_NORMS:
        state.update({f"{norm}{i}_{k}": v for k, v in s.items()})
    if norm == "renorm":
        for name, value in RENORM_LIMITS.items():
            state.setdefault(name, I.zeros((1,), ctx) + value)


def renorm_limits(fraction):
    """(r_max, d_max) after ``fraction`` of a run's steps: Ioffe's schedule in shape (plain batch norm first,
    then the limits relaxed linearly; his ran 5k steps at r_max=1, d_max=0, then opened r_max to 3 over 40k
    and d_max to 5 over 25k), stretched for runs of a few thousand steps: plain batch norm for the first
    30 %, the final limits from 80 %.  Opened sooner (5 % .. 25 %), LeNet at lr 0.2 lost most of its first
    epoch (train loss 3.4 against batch norm's 1.2 on 6,000 images)."""
    ramp = min(1.0, max(0.0, (fraction - 0.30) / 0.50))
    r_max, d_max = RENORM_LIMITS.values()
    return 1.0 + ramp * (r_max - 1.0), ramp * d_max


def renorm_schedule(total_steps):
    """An ``after_step(global_step, params, state)`` that writes renorm_limits for the next step into the
    state's r_max and d_max (call it with step 0 before training to start from plain batch norm)."""
    def relax(global_step, params, state):
        for name, value in zip(RENORM_LIMITS, renorm_limits(global_step / total_steps)):
            state[name][:] = value
    return relax


def norm_of(params, i):
    """The kind of norm layer ``i`` in ``params`` (its prefix), or None when the layer has none."""
    return next((kind for kind in NORMS[:-1] if f"{kind}{i}_gamma" in params), None)


def _lenet_conv_shapes(channels):
    """LENET_CONV with the two convolutions' output channels replaced by ``channels`` (None: as they are)."""
    if channels is None:
        return LENET_CONV
    if (not isinstance(channels, (tuple, list)) or len(channels) != len(LENET_CONV)
            or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels)):
        raise ValueError(f"channels must be {len(LENET_CONV)} positive ints (the convolutions' output channels), "
                         f"got {channels!r}")
    in_channels = (LENET_CONV[0][1],) + tuple(channels[:-1])
    return tuple((out_c, in_c, k) for out_c, in_c, (_, _, k) in zip(channels, in_channels, LENET_CONV))


def lenet_params(ctx, use_bn=True, init="normal", seed=0, init_scale=I.DEFAULT_NORMAL_SCALE, norm=None,
                 channels=None):
    """Parameters and normalization state of the tutorial's LeNet.

    Parameters
    ----------
    ctx : mx.Context
    use_bn : bool, default True
        Batch norm after each convolution (then the convolutions have no bias:
        BN's beta makes it redundant).  Overridden by ``norm``.
    norm : one of NORMS or None
        The normalization after each convolution (None: ``use_bn`` decides between "bn" and "none");
        every norm but "none" has a beta, so the convolutions then have no bias.
    init : {"normal", "xavier", "he"}, default "normal"
        Weight initializer; "normal" uses ``init_scale`` (the tutorial's 0.01).
    seed : int or np.random.Generator, default 0
    channels : (int, int) or None
        Output channels of the two convolutions (None: the tutorial's 20 and 50).  ``lenet`` reads every
        width from the parameters, so the same forward serves a wider or narrower LeNet.
    """
    norm = _norm_name(use_bn, norm)
    conv = _lenet_conv_shapes(channels)
    rng = I.as_rng(seed)
    params, state = {}, {}
    for i, (out_c, in_c, k) in enumerate(conv, start=1):
        params[f"conv{i}_weight"] = I.weight(init, (out_c, in_c, k, k), ctx, rng, init_scale)
        if norm != "none":
            _add_norm(params, state, norm, i, out_c, ctx)
        else:
            params[f"conv{i}_bias"] = I.zeros((out_c,), ctx)
    params["fc1_weight"] = I.weight(init, (LENET_HIDDEN, conv[-1][0] * LENET_MAP), ctx, rng, init_scale)
    params["fc1_bias"] = I.zeros((LENET_HIDDEN,), ctx)
    params["fc2_weight"] = I.weight(init, (NUM_CLASSES, LENET_HIDDEN), ctx, rng, init_scale)
    params["fc2_bias"] = I.zeros((NUM_CLASSES,), ctx)
    return params, state


def _normalize(params, state, kind, i, X, is_training, options, spatial):
    """Norm layer ``i`` of kind ``kind`` on X; ``options`` holds bn_impl, bn_momentum and gn_groups.

    Layer norm of a feature map (``spatial``) normalizes each sample over (C, H, W) with a per-channel
    gamma and beta, as in Wu & He (2018): group norm with one group; of features (N, C), over C."""
    prefix = f"{kind}{i}"
    gamma, beta = params[f"{prefix}_gamma"], params[f"{prefix}_beta"]
    if kind in BATCH_NORMS:
        moving = (state[f"{prefix}_moving_mean"], state[f"{prefix}_moving_vari"])
        if kind == "bn":
            return F.batch_norm(X, gamma, beta, is_training, *moving, momentum=options["bn_momentum"],
                                impl=options["bn_impl"])
        return batch_renorm(X, gamma, beta, is_training, *moving, *(state[name] for name in RENORM_LIMITS),
                            momentum=options["bn_momentum"])
    if kind == "gn":
        return group_norm(X, gamma, beta, options["gn_groups"])
    if kind == "ln":
        return group_norm(X, gamma, beta, 1) if spatial else layer_norm(X, gamma, beta)
    return instance_norm(X, gamma, beta)


def _options(bn_impl, bn_momentum, gn_groups):
    return dict(bn_impl=bn_impl, bn_momentum=bn_momentum, gn_groups=gn_groups)


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


def lenet_layers(params, state, X, is_training, bn_impl="fused", bn_momentum=0.9, gn_groups=DEFAULT_GN_GROUPS):
    """(logits, taps): the LeNet forward, and per normalization layer ``(name, its input, its output)``.

    Under mxbn.jit only what the caller returns is computed, so ``lenet`` (the
    logits alone) pays nothing for the taps.
    """
    options = _options(bn_impl, bn_momentum, gn_groups)
    H = X
    taps = []
    for i in LENET_BLOCKS:
        H = lenet_conv(params, i, H)
        kind = norm_of(params, i)
        if kind is not None:
            normalized = _normalize(params, state, kind, i, H, is_training, options, spatial=True)
            taps.append((f"{kind}{i}", H, normalized))
            H = normalized
        H = lenet_pool(H)
    return lenet_head(params, H), taps


def lenet(params, state, X, is_training, bn_impl="fused", bn_momentum=0.9, gn_groups=DEFAULT_GN_GROUPS):
    """Logits (N, 10) of LeNet for images X (N, 1, 28, 28), with the normalization ``params`` has (if any)."""
    return lenet_layers(params, state, X, is_training, bn_impl, bn_momentum, gn_groups)[0]


def mlp_params(ctx, sizes, use_bn=False, init="he", seed=0, init_scale=I.DEFAULT_NORMAL_SCALE, norm=None):
    """An MLP with layer sizes ``sizes`` (e.g. (784, 100, 100, 10)); a norm after each hidden affine.

    ``norm`` as lenet_params' (None: ``use_bn`` picks "bn" or "none"); "in" needs spatial axes, so an MLP
    refuses it.  Hidden affines keep their bias even with a norm, as in the studies this reproduces (the
    norm's beta makes it redundant, but harmless).
    """
    if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
        raise ValueError(f"mlp sizes must list at least an input and an output size, got {sizes!r}")
    norm = _norm_name(use_bn, norm)
    if norm == "in":
        raise ValueError("norm 'in' (instance norm) needs spatial axes; an MLP's features have none")
    rng = I.as_rng(seed)
    params, state = {}, {}
    for i, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        params[f"fc{i}_weight"] = I.weight(init, (d_out, d_in), ctx, rng, init_scale)
        params[f"fc{i}_bias"] = I.zeros((d_out,), ctx)
        if i < len(sizes) - 1:
            _add_norm(params, state, norm, i, d_out, ctx)
    return params, state


def mlp_layers(params, state, X, is_training, activation="relu", bn_impl="fused", bn_momentum=0.9,
               gn_groups=DEFAULT_GN_GROUPS):
    """(output, taps): the MLP forward, and per hidden layer ``(name, affine output, activation input)``
    (the same array without a norm; the norm's output with it).  Under mxbn.jit unused taps cost nothing."""
    act = ACTIVATIONS[activation]
    options = _options(bn_impl, bn_momentum, gn_groups)
    n_layers = sum(1 for k in params if k.endswith("_weight"))
    H = X
    taps = []
    for i in range(1, n_layers + 1):
        H = F.dense(H, params[f"fc{i}_weight"], params[f"fc{i}_bias"])
        if i < n_layers:
            affine = H
            kind = norm_of(params, i)
            if kind is not None:
                H = _normalize(params, state, kind, i, H, is_training, options, spatial=False)
            taps.append((f"hidden{i}", affine, H))
            H = act(H)
    return H, taps


def mlp(params, state, X, is_training, activation="relu", bn_impl="fused", bn_momentum=0.9,
        gn_groups=DEFAULT_GN_GROUPS):
    """Output of the MLP for X (N, ...) (flattened): affine -> [norm] -> activation per hidden layer."""
    return mlp_layers(params, state, X, is_training, activation, bn_impl, bn_momentum, gn_groups)[0]


def uses_batch_norm(params):
    """Whether the net has a norm layer with batch statistics (batch norm or batch renorm)."""
    return any(k.endswith("_gamma") and k.startswith(BATCH_NORMS) for k in params)


def min_train_batch_size(params, dense_bn):
    """Smallest training batch the net's batch norm accepts: 2 when BN normalises
    dense features (one value per channel per sample), else 1."""
    return 2 if dense_bn and uses_batch_norm(params) else 1
