"""Manual optimizers over a dict of parameters: SGD, Momentum, AdaGrad, Adam.

Each optimizer is a small immutable object holding hyper-parameters, with

* ``init(params) -> state``: the optimizer state, ``{"t": 0, "slots": {slot: {name: NDArray}}}``;
* ``update(params, grads, state, lr=None)``: one step, **in place** on ``params``
  and ``state`` (``lr`` overrides the default, for schedules).

State goes in and comes out explicitly so that a checkpoint can hold it.  The
formulas are those of the "tricks of training" chapter (Saito, *Deep Learning
from Scratch*, ch. 6), with optional L2 weight decay folded into the gradient,
``g <- g + weight_decay * p`` -- for every parameter except those whose name ends
with one of ``wd_exclude`` (``NO_DECAY_SUFFIXES``: batch-norm gamma/beta and biases,
which the trainer spares by default: decaying gamma fights the normalization, and a
bias or beta has no scale to regularize):

* SGD       ``p -= lr * g``
* Momentum  ``v = momentum*v - lr*g;  p += v``
* AdaGrad   ``h += g*g;  p -= lr * g / (sqrt(h) + 1e-7)``
* Adam      ``t += 1;  lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t)``
            ``m += (1-beta1)*(g - m);  v += (1-beta2)*(g*g - v);  p -= lr_t * m / (sqrt(v) + 1e-7)``

SGD and Momentum call MXNet's fused update kernels (``sgd_update``,
``sgd_mom_update``) explicitly, which compute exactly these formulas in one pass
per parameter.  AdaGrad has no dense fused kernel in MXNet 1.9, and its
``adam_update`` kernel rounds ``1 - beta2`` in float32 (0.999f gives
0.00099999 instead of 0.001, a 1e-5 relative error in every step), so both are
written out with the coefficients taken in double precision.
"""
import math
from dataclasses import dataclass, fields

import numpy as np
from mxnet import nd

from ._checks import finite_non_negative, finite_positive, is_real

__all__ = ["SGD", "Momentum", "AdaGrad", "Adam", "OPTIMIZERS", "make_optimizer", "NO_DECAY_SUFFIXES",
           "clip_by_global_norm"]

# Parameter-name endings that the trainer's weight decay spares (Gluon users set wd_mult=0 on these).
NO_DECAY_SUFFIXES = ("_gamma", "_beta", "_bias")

# The chapter's epsilon for AdaGrad and Adam.
_EPS = 1e-7


def _check_unit_interval(name, value):
    if not is_real(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")


def _check_weight_decay(value, exclude=()):
    finite_non_negative("weight_decay", value)
    if not isinstance(exclude, tuple) or not all(isinstance(e, str) and e for e in exclude):
        raise ValueError(f"wd_exclude must be a tuple of parameter-name endings (e.g. {NO_DECAY_SUFFIXES}), "
                         f"got {exclude!r}")


def _zeros_like_all(params):
    return {name: nd.zeros(p.shape, ctx=p.context, dtype=p.dtype) for name, p in params.items()}


def _check_grads(params, grads):
    missing = sorted(set(params) - set(grads))
    if missing:
        raise KeyError(f"no gradient for parameters {missing}")


# Parameters per multi-tensor update call (MXNet's kernels take a bounded list; Gluon's Trainer takes 4 by default).
MULTI_TENSOR_CHUNK = 16


def _multi_tensor_groups(params):
    """Lists of parameter names that one multi-tensor kernel call may update: float32 arrays of one
    context, in chunks of MULTI_TENSOR_CHUNK; every other parameter alone."""
    groups, singles = {}, []
    for name, p in params.items():
        if p.dtype == np.float32 and p.stype == "default":
            groups.setdefault(p.context, []).append(name)
        else:
            singles.append([name])
    chunks = [names[i:i + MULTI_TENSOR_CHUNK] for names in groups.values()
              for i in range(0, len(names), MULTI_TENSOR_CHUNK)]
    return chunks + singles


class _Optimizer:
    slot_names = ()

    @classmethod
    def hyperparameters(cls):
        """The hyperparameters this optimizer takes besides ``lr`` and ``weight_decay`` (its own fields)."""
        return tuple(f.name for f in fields(cls) if f.name not in ("lr", "weight_decay", "wd_exclude"))

    def wd_of(self, name):
        """The weight decay of parameter ``name``: ``weight_decay``, or 0 for a name ending in ``wd_exclude``."""
        return 0.0 if name.endswith(self.wd_exclude) else float(self.weight_decay)

    def init(self, params):
        """Fresh optimizer state for ``params`` (a dict name -> NDArray)."""
        return {"t": 0, "slots": {slot: _zeros_like_all(params) for slot in self.slot_names}}

    def _lr(self, lr):
        if lr is None:
            return float(self.lr)
        # 0 is a valid scheduled value (the first step of a linear warm-up).
        finite_non_negative("lr", lr)
        return float(lr)

    def update(self, params, grads, state, lr=None):
        """One in-place step on every parameter in ``params``; returns ``state``."""
        _check_grads(params, grads)
        lr = self._lr(lr)
        state["t"] += 1
        self._apply(params, grads, state, lr)
        return state

    def _apply(self, params, grads, state, lr):
        """The step itself, on every parameter (``state["t"]`` already counts it)."""
        for name in params:
            self._step(name, params[name], grads[name], state, lr)


@dataclass(frozen=True)
class SGD(_Optimizer):
    """``p -= lr * (g + weight_decay * p)``."""
    lr: float = 0.1
    weight_decay: float = 0.0
    wd_exclude: tuple = ()

    def __post_init__(self):
        finite_positive("lr", self.lr)
        _check_weight_decay(self.weight_decay, self.wd_exclude)

    def _apply(self, params, grads, state, lr):
        """Without weight decay one ``multi_sgd_update`` per group of parameters (bit-identical to
        ``sgd_update``; with weight decay it is not, so each parameter then has its own)."""
        if self.weight_decay:
            return super()._apply(params, grads, state, lr)
        for names in _multi_tensor_groups(params):
            pairs = [a for n in names for a in (params[n], grads[n])]
            nd.multi_sgd_update(*pairs, lrs=(lr,) * len(names), wds=(0.0,) * len(names), num_weights=len(names),
                                out=[params[n] for n in names])

    def _step(self, name, p, g, state, lr):
        nd.sgd_update(p, g, lr=lr, wd=self.wd_of(name), out=p)


@dataclass(frozen=True)
class Momentum(_Optimizer):
    """``v = momentum*v - lr*g;  p += v``."""
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    wd_exclude: tuple = ()
    slot_names = ("v",)

    def __post_init__(self):
        finite_positive("lr", self.lr)
        _check_unit_interval("momentum", self.momentum)
        _check_weight_decay(self.weight_decay, self.wd_exclude)

    def _apply(self, params, grads, state, lr):
        """One ``multi_sgd_mom_update`` per group of parameters (bit-identical to ``sgd_mom_update``, with or
        without weight decay)."""
        velocity = state["slots"]["v"]
        for names in _multi_tensor_groups(params):
            triples = [a for n in names for a in (params[n], grads[n], velocity[n])]
            nd.multi_sgd_mom_update(*triples, lrs=(lr,) * len(names), wds=tuple(self.wd_of(n) for n in names),
                                    momentum=self.momentum, num_weights=len(names), out=[params[n] for n in names])


@dataclass(frozen=True)
class AdaGrad(_Optimizer):
    """``h += g*g;  p -= lr * g / (sqrt(h) + 1e-7)``."""
    lr: float = 0.01
    weight_decay: float = 0.0
    wd_exclude: tuple = ()
    slot_names = ("h",)

    def __post_init__(self):
        finite_positive("lr", self.lr)
        _check_weight_decay(self.weight_decay, self.wd_exclude)

    def _step(self, name, p, g, state, lr):
        if self.wd_of(name):
            g = g + self.wd_of(name) * p
        h = state["slots"]["h"][name]
        h += nd.square(g)
        p -= lr * g / (nd.sqrt(h) + _EPS)


@dataclass(frozen=True)
class Adam(_Optimizer):
    """Adam (Kingma & Ba 2015) with the bias correction folded into the step size."""
    lr: float = 0.001
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    wd_exclude: tuple = ()
    slot_names = ("m", "v")

    def __post_init__(self):
        finite_positive("lr", self.lr)
        _check_unit_interval("beta1", self.beta1)
        _check_unit_interval("beta2", self.beta2)
        _check_weight_decay(self.weight_decay, self.wd_exclude)

    def _apply(self, params, grads, state, lr):
        t = state["t"]
        # Bias correction on the host: one float per step, no device work.
        lr_t = lr * math.sqrt(1.0 - self.beta2 ** t) / (1.0 - self.beta1 ** t)
        slots = state["slots"]
        for name, p in params.items():
            g = grads[name]
            if self.wd_of(name):
                g = g + self.wd_of(name) * p
            m, v = slots["m"][name], slots["v"][name]
            m += (1.0 - self.beta1) * (g - m)
            v += (1.0 - self.beta2) * (nd.square(g) - v)
            p -= lr_t * m / (nd.sqrt(v) + _EPS)


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "adagrad": AdaGrad, "adam": Adam}


def make_optimizer(name, lr, weight_decay=0.0, wd_exclude=(), **hyper):
    """Build an optimizer by its command-line name (``sgd``, ``momentum``, ``adagrad``, ``adam``);
    ``wd_exclude``: parameter-name endings that get no weight decay (``NO_DECAY_SUFFIXES``)."""
    try:
        cls = OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(OPTIMIZERS)}") from None
    return cls(lr=lr, weight_decay=weight_decay, wd_exclude=tuple(wd_exclude), **hyper)


def clip_by_global_norm(grads, max_norm):
    """Scale every gradient in place by ``min(1, max_norm / (norm + 1e-6))``, ``norm`` the L2 norm of all of
    them together (PyTorch's ``clip_grad_norm_``); returns a (1,) array, 1 where the clip fired.

    Computed on the device (float32 sums of squares, one per gradient): no host sync.
    """
    grads = list(grads)
    if not grads:
        raise ValueError("clip_by_global_norm: no gradients")
    squares = [nd.sum(nd.square(g.astype("float32"))) for g in grads]
    norm = nd.sqrt(nd.add_n(*squares) if len(squares) > 1 else squares[0])
    scale = nd.minimum(nd.ones_like(norm), float(max_norm) / (norm + 1e-6))
    for g in grads:
        g *= scale.astype(g.dtype)
    return norm > float(max_norm)
