"""The trainer's typed configuration. Defaults reproduce the MXNet "batch norm from scratch" tutorial."""
import math
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Optional, Tuple

from . import _checks as checks
from ._checks import is_real
from .context import ContextError, parse_contexts
from .data import DATASETS
from .batch_norm import BATCH_NORM_IMPLS
from .init import INIT_NAMES
from .models import BATCH_NORMS, DEFAULT_GN_GROUPS, LENET_CONV, NORMS
from .optim import OPTIMIZERS
from .parallel.kvstore import KVSTORE_TYPES

__all__ = ["TrainConfig", "ConfigError", "CliOption", "cli_options", "config_from_options", "LR_SCHEDULES", "GRAPHS",
           "BN_MODES", "RESUME_MAY_CHANGE", "KVSTORE_TYPES"]

LR_SCHEDULES = ("constant", "step", "cosine")
GRAPHS = ("static", "imperative")
BN_MODES = ("train", "frozen")

# Options a resumed run may change; every other one must match the checkpoint.
RESUME_MAY_CHANGE = ("ctx", "data_dir", "epochs", "trace_bn", "tensorboard")


class ConfigError(ValueError):
    """An option value is invalid; the message names the option and what is expected."""


def _option(default, help, choices=None, flag=None):
    """A TrainConfig field with what its command-line flag needs: the help text, the choices, and the flag
    when it is not ``--`` + the field name with dashes (``use_bn`` is ``--no-bn``)."""
    return field(default=default, metadata=dict(help=help, choices=choices, flag=flag))


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run; ``scripts/train_cnn.py``'s flags are derived from these fields
    (``cli_options``), their help text from each field's metadata."""
    ctx: str = _option("gpu", "gpu (the tutorial's mx.gpu(); falls back to the CPU with a warning), gpu:N, cpu, "
                       "or a list such as gpu:0,gpu:1 (data parallel: each batch is split over the devices)")
    dataset: str = _option("fashion-mnist", "the tutorial's dataset, or another of the same format",
                           choices=sorted(DATASETS))
    data_dir: Optional[str] = _option(None, "folder with the four idx files; else $MXBN_DATA_DIR, MXNet's cache, "
                                            "/usr/share/datasets/fashion-mnist, then download")
    epochs: int = _option(5, "passes over the training set (the tutorial's 5)")
    batch_size: int = _option(128, "images per step (the tutorial's 128)")
    lr: float = _option(0.2, "learning rate (the tutorial's 0.2)")
    lr_schedule: str = _option("constant", "learning-rate schedule after the warm-up (the tutorial's constant)",
                               choices=LR_SCHEDULES)
    warmup_epochs: float = _option(0.0, "linear warm-up from 0 to --lr over this many epochs")
    lr_step_epochs: Tuple[int, ...] = _option((), "epochs at which --lr-schedule step multiplies the learning rate "
                                                  "by --lr-factor, e.g. 10,15", flag="--lr-steps")
    lr_factor: float = _option(0.1, "step decay factor")
    optimizer: str = _option("sgd", "the tutorial's plain SGD, or another", choices=sorted(OPTIMIZERS))
    momentum: float = _option(0.9, "for --optimizer momentum")
    weight_decay: float = _option(0.0, "L2 penalty on the weights (the tutorial's none); BN gamma/beta and biases "
                                       "are spared unless --wd-all")
    wd_all: bool = _option(False, "with --weight-decay: decay every parameter, BN gamma/beta and biases too (as "
                                  "some tutorials did)")
    clip_grad_norm: Optional[float] = _option(None, "clip the gradients by their global L2 norm to at most this "
                                                    "before each update (computed on the device; counted per epoch)")
    use_bn: bool = _option(True, "LeNet without batch norm (the same as --norm none)", flag="--no-bn")
    norm: str = _option("bn", "the normalization after each convolution: bn batch norm (the tutorial's), renorm "
                              "batch renormalization (r_max 3, d_max 5), gn group norm, ln layer norm (over C, H, "
                              "W, per-channel gamma/beta), in instance norm, none", choices=NORMS)
    gn_groups: int = _option(DEFAULT_GN_GROUPS, "groups of --norm gn; must divide LeNet's 20 and 50 channels")
    precise_bn: Optional[int] = _option(None, "before every evaluation, recompute the batch norms' statistics "
                                              "exactly (mxbn.precise_bn) over N training batches, weights fixed")
    bn_mode: str = _option("train", "train: BN normalizes with batch statistics and updates its moving ones; "
                                    "frozen: BN normalizes with the moving statistics and keeps them (fine-tuning, "
                                    "as Gluon's use_global_stats)", choices=BN_MODES)
    freeze_affine: bool = _option(False, "BN gamma and beta are not trained")
    bn_momentum: float = _option(0.9, "moving = m*moving + (1-m)*batch (MXNet convention; the tutorial's 0.9)")
    bn_impl: str = _option("fused", "fused kernel or from-primitives batch_norm (same numbers)",
                           choices=BATCH_NORM_IMPLS)
    graph: str = _option("static", "static: models.lenet through mxbn.jit, one planned MXNet graph (with --bn-sync, "
                                   "one per stage between the synchronized BN); imperative: mxbn's functional ops "
                                   "one by one", choices=GRAPHS)
    layout_pass: bool = _option(True, "without mxbn.jit's layout pass (channels padded for oneDNN's fast kernels, "
                                      "relu as oneDNN's Activation after pooling: the same function to float32 "
                                      "rounding, faster on a CPU)", flag="--no-layout-pass")
    init: str = _option("normal", "weight initializer (the tutorial's N(0, 0.01^2))", choices=INIT_NAMES)
    init_scale: float = _option(0.01, "std for --init normal")
    seed: int = _option(0, "seeds the initialisation, the batch order and the augmentation")
    augment: bool = _option(False, "random horizontal flips and shifts (on the device)")
    max_shift: int = _option(2, "pixels, with --augment")
    val_size: Optional[int] = _option(None, "training images held out for validation (class-balanced, the same "
                                            "for every --seed, before --limit-train); the best epoch and --patience "
                                            "use it, never the test set; default 1/12 of the training set (5,000 of "
                                            "Fashion-MNIST's 60,000); 0: train on all, as the tutorial did")
    patience: Optional[int] = _option(None, "stop after N epochs without a better validation accuracy")
    init_from: Optional[str] = _option(None, "start from the parameters and BN statistics of this checkpoint "
                                             "(another run's checkpoint.params or best.params, same architecture)")
    limit_train: Optional[int] = _option(None, "use the first N training images (quick runs)")
    limit_test: Optional[int] = _option(None, "use the first N test images")
    kvstore: Optional[str] = _option(None, "how gradients are summed: device/local within this process (default "
                                           "device for several contexts); dist_sync/dist_device_sync across "
                                           "worker processes started by scripts/launch_local.py or by hand "
                                           "(see README)", choices=KVSTORE_TYPES)
    bn_sync: bool = _option(False, "batch-norm statistics over the whole batch across this process's devices "
                                   "(needs several contexts)")
    tensorboard: Optional[str] = _option(None, "write a TensorBoard event file into this folder: per-epoch "
                                               "scalars, BN input histograms, the pictures, the configuration "
                                               "(needs the tensorboard extra: tensorboardX)")
    trace_bn: bool = _option(False, "record the 15th/50th/85th percentiles of every BN layer's input and output "
                                    "over training on a fixed test batch; writes bn_trace.json and bn_trace.png")

    def validate(self):
        """Raise ConfigError for the first invalid option; returns self."""
        _one_of("dataset", self.dataset, sorted(DATASETS))
        _one_of("optimizer", self.optimizer, sorted(OPTIMIZERS))
        _one_of("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _one_of("bn_impl", self.bn_impl, BATCH_NORM_IMPLS)
        _one_of("init", self.init, INIT_NAMES)
        _one_of("graph", self.graph, GRAPHS)
        if self.kvstore is not None:
            _one_of("kvstore", self.kvstore, KVSTORE_TYPES)
        try:
            devices = parse_contexts(self.ctx)
        except ContextError as e:
            raise ConfigError(str(e)) from None
        self._check_norm()
        if self.bn_sync:
            if self.normalization != "bn":
                raise ConfigError(f"bn_sync synchronizes batch norm's statistics across devices; it cannot be "
                                  f"combined with {self._norm_flag()} (use --norm bn)")
            if len(devices) < 2:
                raise ConfigError(f"bn_sync synchronizes the devices of one process, and ctx {self.ctx!r} names "
                                  f"one; list several (e.g. --ctx gpu:0,gpu:1) or leave out --bn-sync")
        if self.normalization == "renorm" and (len(devices) > 1 or self.kvstore is not None):
            raise ConfigError("--norm renorm trains on one device: its r_max/d_max schedule is written into one "
                              "state between steps; use one --ctx and no --kvstore")
        if self.trace_bn and self.normalization != "bn":
            raise ConfigError(f"trace_bn follows the batch-norm layers; it cannot be combined with "
                              f"{self._norm_flag()}")
        self._check_fine_tuning()
        if (len(devices) > 1 and devices[0][0] == "cpu" and self.bn_impl == "scratch"
                and self.graph == "imperative"):
            # its imperative statistics are GEMVs; MXNet's OpenBLAS hangs when two CPU contexts call it at
            # once (traced by mxbn.jit, the scratch path reduces without BLAS)
            raise ConfigError("bn_impl 'scratch' with graph 'imperative' cannot run on several CPU contexts "
                              "(its BLAS reductions would run concurrently, which hangs MXNet's OpenBLAS); use "
                              "graph 'static' or bn_impl 'fused'")
        self._check_ranges()
        self._check_schedule()
        self._check_used()
        return self

    @property
    def normalization(self):
        """The norm LeNet has: ``norm``, or "none" with --no-bn."""
        return self.norm if self.use_bn else "none"

    def _norm_flag(self):
        return "--no-bn" if not self.use_bn else f"--norm {self.norm}"

    def _check_norm(self):
        _one_of("norm", self.norm, NORMS)
        if not self.use_bn and self.norm != "bn":
            raise ConfigError(f"--no-bn is --norm none; it cannot be combined with --norm {self.norm}")
        _positive_int(flag_of("gn_groups"), self.gn_groups)
        widths = [out_c for out_c, _, _ in LENET_CONV]
        if any(c % self.gn_groups for c in widths):
            raise ConfigError(f"gn_groups ({flag_of('gn_groups')}) must divide LeNet's {widths[0]} and {widths[1]} "
                              f"channels (1, 2, 5 or 10), got {self.gn_groups}")
        if self.precise_bn is not None:
            _positive_int(flag_of("precise_bn"), self.precise_bn)
            if self.normalization not in BATCH_NORMS:
                raise ConfigError(f"precise_bn ({flag_of('precise_bn')}) recomputes batch statistics; "
                                  f"{self._norm_flag()} has none (use --norm bn or renorm)")

    def _check_fine_tuning(self):
        _one_of("bn_mode", self.bn_mode, BN_MODES)
        if self.bn_mode != "train" and self.normalization not in BATCH_NORMS:
            raise ConfigError(f"{flag_of('bn_mode')} applies to batch norm's statistics; it cannot be combined "
                              f"with {self._norm_flag()}")
        if self.freeze_affine and self.normalization == "none":
            raise ConfigError(f"{flag_of('freeze_affine')} applies to a norm's gamma and beta; it cannot be "
                              f"combined with {self._norm_flag()}")
        if self.bn_mode == "frozen" and self.bn_sync:
            raise ConfigError("--bn-mode frozen normalizes with the moving statistics, so there are no batch "
                              "statistics to synchronize: leave out --bn-sync")
        if self.init_from is not None and not (isinstance(self.init_from, str) and self.init_from):
            raise ConfigError(f"init_from ({flag_of('init_from')}) must be a checkpoint path, got {self.init_from!r}")

    def _check_ranges(self):
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        _positive_float("lr", self.lr)
        _positive_float("init_scale", self.init_scale)
        _positive_float("lr_factor", self.lr_factor)
        _in_range("momentum", self.momentum, 0.0, 1.0, hi_open=True)
        _in_range("bn_momentum", self.bn_momentum, 0.0, 1.0)
        _in_range("weight_decay", self.weight_decay, 0.0, math.inf, hi_open=True)
        _non_negative_int("seed", self.seed)
        _non_negative_int("max_shift", self.max_shift)
        if self.max_shift > MAX_SHIFT:
            raise ConfigError(f"max_shift ({flag_of('max_shift')}) must be in 0..{MAX_SHIFT} pixels: a shift of "
                              f"half the 28-pixel image or more leaves less than half of it; got {self.max_shift}")
        for name in ("limit_train", "limit_test"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        # the options of this release are named by their flags
        if self.patience is not None:
            _positive_int(flag_of("patience"), self.patience)
        if self.val_size is not None:
            _non_negative_int(flag_of("val_size"), self.val_size)
        if self.clip_grad_norm is not None:
            _positive_float(flag_of("clip_grad_norm"), self.clip_grad_norm)
        if self.patience is not None and self.val_size == 0:
            raise ConfigError(f"patience ({flag_of('patience')}) stops on the validation accuracy, and "
                              f"--val-size 0 holds out no validation set")

    def _check_schedule(self):
        """The warm-up and the step epochs lie within the run (bounds named by --epochs' value)."""
        if not (is_real(self.warmup_epochs) and 0.0 <= self.warmup_epochs < self.epochs):
            raise ConfigError(f"warmup_epochs ({flag_of('warmup_epochs')}) must be at least 0 and less than "
                              f"--epochs {self.epochs}, got {self.warmup_epochs!r}")
        if self.lr_schedule != "step":
            return
        flag = flag_of("lr_step_epochs")
        if not self.lr_step_epochs:
            raise ConfigError(f"lr_schedule 'step' needs lr_step_epochs ({flag}, e.g. {flag} 10,15)")
        if self.epochs < 2:
            raise ConfigError(f"lr_step_epochs ({flag}) are epochs after which the rate drops, before the last "
                              f"one: they need --epochs {self.epochs} to be at least 2")
        for e in self.lr_step_epochs:
            if not isinstance(e, int) or not 0 < e < self.epochs:
                raise ConfigError(f"lr_step_epochs ({flag}) must be epochs in 1..{self.epochs - 1} (before the "
                                  f"last of --epochs {self.epochs}), got {list(self.lr_step_epochs)}")

    def _check_used(self):
        """An option that the others make inert is an error, not silently ignored."""
        inert = [("max_shift", not self.augment, "--augment"),
                 ("lr_step_epochs", self.lr_schedule != "step", "--lr-schedule step"),
                 ("momentum", self.optimizer != "momentum", "--optimizer momentum"),
                 ("layout_pass", self.graph != "static", "--graph static"),
                 ("wd_all", self.weight_decay == 0, "--weight-decay > 0"),
                 ("gn_groups", self.norm != "gn", "--norm gn")]
        for name, unused, needs in inert:
            if unused and getattr(self, name) != _DEFAULTS[name]:
                raise ConfigError(f"{flag_of(name)} applies only with {needs}; it would be ignored here "
                                  f"(leave it out, or add {needs})")

    def optimizer_options(self):
        """(name, lr, weight_decay, {hyperparameter: value}) for ``optim.make_optimizer``: of the
        hyperparameters the chosen optimizer declares, those this config has an option for (``momentum``);
        the others (Adam's betas) keep the optimizer's defaults."""
        options = {f.name for f in fields(self)}
        hyper = {h: getattr(self, h) for h in OPTIMIZERS[self.optimizer].hyperparameters() if h in options}
        return self.optimizer, self.lr, self.weight_decay, hyper

    def to_dict(self):
        d = asdict(self)
        d["lr_step_epochs"] = list(self.lr_step_epochs)
        return d

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown configuration keys {unknown}")
        d = dict(d)
        # a configuration written before validation splits existed trained on every training image
        d.setdefault("val_size", 0)
        if "lr_step_epochs" in d:
            d["lr_step_epochs"] = tuple(d["lr_step_epochs"])
        return cls(**d)

    def resume_differences(self, saved):
        """Options (other than RESUME_MAY_CHANGE) whose value differs from ``saved``."""
        mine, theirs = self.to_dict(), saved.to_dict()
        return {k: (theirs[k], mine[k]) for k in mine if k not in RESUME_MAY_CHANGE and mine[k] != theirs[k]}


@dataclass(frozen=True)
class CliOption:
    """One command-line flag of a TrainConfig field: ``kind`` is bool, int, float, str or tuple (of ints,
    written comma-separated); a ``negated`` bool flag (``--no-bn``) sets its field to False."""
    field: str
    flag: str
    kind: type
    default: object
    help: str
    choices: Optional[tuple] = None
    negated: bool = False


def _kind(annotation):
    """bool/int/float/str/tuple of a field's annotation (Optional[X] is X)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is tuple:
        return tuple
    return _kind(args[0]) if args else annotation


def cli_options():
    """[CliOption] of every TrainConfig field, in field order."""
    options = []
    for f in fields(TrainConfig):
        kind = _kind(f.type)
        choices = f.metadata["choices"]
        options.append(CliOption(f.name, flag_of(f.name), kind, f.default, f.metadata["help"],
                                 tuple(choices) if choices is not None else None,
                                 negated=kind is bool and f.default is True))
    return options


def config_from_options(values):
    """TrainConfig from ``{field: value}`` as the flags of ``cli_options`` give them (not validated)."""
    return TrainConfig(**{o.field: values[o.field] for o in cli_options()})


_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}
MAX_SHIFT = 13   # pixels: less than half a 28x28 image


def flag_of(name):
    """The command-line flag of a TrainConfig field (``use_bn`` -> ``--no-bn``)."""
    meta = next(f.metadata for f in fields(TrainConfig) if f.name == name)
    return meta["flag"] or "--" + name.replace("_", "-")


def _one_of(name, value, allowed):
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _positive_int(name, value):
    checks.positive_int(name, value, ConfigError)


def _non_negative_int(name, value):
    checks.non_negative_int(name, value, ConfigError)


def _positive_float(name, value):
    checks.finite_positive(name, value, ConfigError)


def _in_range(name, value, lo, hi, hi_open=False):
    checks.in_range(name, value, lo, hi, hi_open, ConfigError)
