"""The trainer's typed configuration. Defaults reproduce the MXNet "batch norm from scratch" tutorial."""
import math
from dataclasses import asdict, dataclass, fields
from typing import Optional, Tuple

from . import _checks as checks
from .context import ContextError, parse_contexts
from .data import DATASETS
from .batch_norm import BATCH_NORM_IMPLS
from .init import INIT_NAMES
from .optim import OPTIMIZERS
from .parallel.kvstore import KVSTORE_TYPES

__all__ = ["TrainConfig", "ConfigError", "LR_SCHEDULES", "GRAPHS", "RESUME_MAY_CHANGE", "KVSTORE_TYPES"]

LR_SCHEDULES = ("constant", "step", "cosine")
GRAPHS = ("static", "imperative")

# Options a resumed run may change; every other one must match the checkpoint.
RESUME_MAY_CHANGE = ("ctx", "data_dir", "epochs", "trace_bn")


class ConfigError(ValueError):
    """An option value is invalid; the message names the option and what is expected."""


@dataclass(frozen=True)
class TrainConfig:
    ctx: str = "gpu"                    # tutorial: mx.gpu(); falls back to the CPU with a warning;
                                        # "gpu:0,gpu:1": data-parallel over the listed devices
    dataset: str = "fashion-mnist"      # tutorial dataset
    data_dir: Optional[str] = None      # None: search path, then download
    epochs: int = 5                     # tutorial
    batch_size: int = 128               # tutorial
    lr: float = 0.2                     # tutorial
    lr_schedule: str = "constant"       # tutorial: constant
    warmup_epochs: float = 0.0          # linear warm-up from 0 to lr before the schedule
    lr_step_epochs: Tuple[int, ...] = ()  # "step": epochs at which lr is multiplied by lr_factor
    lr_factor: float = 0.1
    optimizer: str = "sgd"              # tutorial: plain SGD
    momentum: float = 0.9               # for optimizer="momentum"
    weight_decay: float = 0.0           # tutorial: none
    use_bn: bool = True                 # the tutorial's point
    bn_momentum: float = 0.9            # tutorial: moving = 0.9*moving + 0.1*batch
    bn_impl: str = "fused"
    graph: str = "static"               # "static": models.lenet through mxbn.jit (one planned MXNet graph;
                                        # with bn_sync, one per stage between the synchronized BNs);
                                        # "imperative": the functional ops one by one
    init: str = "normal"                # tutorial: N(0, 0.01^2) weights
    init_scale: float = 0.01
    seed: int = 0
    augment: bool = False               # random horizontal flips + shifts, on the device
    max_shift: int = 2                  # pixels, with augment
    limit_train: Optional[int] = None   # first N training samples (quick runs)
    limit_test: Optional[int] = None
    kvstore: Optional[str] = None       # None: "device" for several contexts, no kvstore for one;
                                        # "dist_sync"/"dist_device_sync": one worker of several processes
    bn_sync: bool = False               # BN statistics over the whole batch across this process's devices
    trace_bn: bool = False              # percentiles of each BN layer's input over training (bn_trace.png)

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
        if self.bn_sync:
            if not self.use_bn:
                raise ConfigError("bn_sync needs batch norm; it cannot be combined with --no-bn")
            if len(devices) < 2:
                raise ConfigError(f"bn_sync synchronizes the devices of one process, and ctx {self.ctx!r} names "
                                  f"one; list several (e.g. --ctx gpu:0,gpu:1) or leave out --bn-sync")
        if self.trace_bn and not self.use_bn:
            raise ConfigError("trace_bn follows the batch-norm layers; it cannot be combined with --no-bn")
        if (len(devices) > 1 and devices[0][0] == "cpu" and self.bn_impl == "scratch"
                and self.graph == "imperative"):
            # its imperative statistics are GEMVs; MXNet's OpenBLAS hangs when two CPU contexts call it at
            # once (traced by mxbn.jit, the scratch path reduces without BLAS)
            raise ConfigError("bn_impl 'scratch' with graph 'imperative' cannot run on several CPU contexts "
                              "(its BLAS reductions would run concurrently, which hangs MXNet's OpenBLAS); use "
                              "graph 'static' or bn_impl 'fused'")
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        _positive_float("lr", self.lr)
        _positive_float("init_scale", self.init_scale)
        _positive_float("lr_factor", self.lr_factor)
        _in_range("momentum", self.momentum, 0.0, 1.0, hi_open=True)
        _in_range("bn_momentum", self.bn_momentum, 0.0, 1.0)
        _in_range("weight_decay", self.weight_decay, 0.0, math.inf, hi_open=True)
        _in_range("warmup_epochs", self.warmup_epochs, 0.0, self.epochs, hi_open=True)
        _non_negative_int("seed", self.seed)
        _non_negative_int("max_shift", self.max_shift)
        for name in ("limit_train", "limit_test"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if self.lr_schedule == "step":
            if not self.lr_step_epochs:
                raise ConfigError("lr_schedule 'step' needs lr_step_epochs (e.g. --lr-steps 10,15)")
            for e in self.lr_step_epochs:
                if not isinstance(e, int) or not 0 < e < self.epochs:
                    raise ConfigError(f"lr_step_epochs must be epochs in 1..{self.epochs - 1}, got "
                                      f"{list(self.lr_step_epochs)}")
        return self

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
        if "lr_step_epochs" in d:
            d["lr_step_epochs"] = tuple(d["lr_step_epochs"])
        return cls(**d)

    def resume_differences(self, saved):
        """Options (other than RESUME_MAY_CHANGE) whose value differs from ``saved``."""
        mine, theirs = self.to_dict(), saved.to_dict()
        return {k: (theirs[k], mine[k]) for k in mine if k not in RESUME_MAY_CHANGE and mine[k] != theirs[k]}


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
