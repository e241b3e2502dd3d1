"""How each batch-norm layer's input distribution moves during training (the BN paper's Figure 1b,c).

Ioffe & Szegedy (2015) show the 15th, 50th and 85th percentiles of the input to
one unit over training: without BN the distribution drifts, with BN it stays
put.  :class:`BNTrace` records the same for every BN layer of a LeNet, before
and after normalization, for one channel (as the paper follows one unit), on a
fixed probe batch in inference mode (so the moving statistics are only read).

Every ``every`` steps one small graph computes the percentiles on the device
and appends them to a device-side list; nothing is read by the host until
:meth:`BNTrace.read`, so tracing adds no host sync to the training loop.
"""
import numpy as np
from mxnet import nd

from . import functional as F
from .jit import jit
from .models import lenet_layers

__all__ = ["BNTrace", "PercentileProbe", "PERCENTILES", "merge"]

PERCENTILES = (15, 50, 85)  # the paper's bands (also bn-paper's)


class PercentileProbe:
    """``after_step`` hook: every ``every`` steps, ``fn(params, state, probe_X)`` (an array, or a list of
    arrays of one shape, of percentiles) is computed and kept on the device; :meth:`read` is the one host read.

    Used by ``--trace-bn`` (:class:`BNTrace`) and by the bn-paper study.
    """

    def __init__(self, fn, probe_X, every):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.fn, self.probe_X, self.every = fn, probe_X, int(every)
        self.steps, self._rows = [], []

    def __call__(self, step, params, state):
        """Record at ``step`` (a global training-step count) if it is a multiple of ``every``."""
        if step % self.every == 0:
            self.steps.append(int(step))
            values = self.fn(params, state, self.probe_X)
            self._rows.append(nd.stack(*values) if isinstance(values, (list, tuple)) else values)

    def read(self):
        """(records, ...) float64 NumPy array of everything recorded (None before the first record)."""
        if not self._rows:
            return None
        return nd.stack(*self._rows).asnumpy().astype(np.float64)


def _probe_function(bn_impl, bn_momentum, channel, qs):
    def probe(params, state, X):
        _, taps = lenet_layers(params, state, X, False, bn_impl, bn_momentum)
        rows = []
        for _, before, after in taps:
            for values in (before, after):
                unit = values.reshape((values.shape[0], values.shape[1], -1))
                rows.append(F.percentiles(F.flatten(_channel(unit, channel)), qs))
        return rows
    return probe


def _channel(values, channel):
    """values[:, channel] of an (N, C, L) array, for NDArrays and traced arrays alike."""
    return values.slice_axis(axis=1, begin=channel, end=channel + 1)


class BNTrace:
    """Percentiles of every BN layer's input (before) and output (after) of one channel on a probe batch.

    Parameters
    ----------
    probe_X : NDArray (N, 1, 28, 28) -- a fixed batch (e.g. the first test images)
    every : int -- record after every ``every``-th training step (and at step 0 when asked)
    graph : "static" (one jitted probe graph) or "imperative"
    channel : int -- which channel of each layer to follow (the paper follows one unit)
    """

    def __init__(self, probe_X, every, graph="static", bn_impl="fused", bn_momentum=0.9, channel=0,
                 qs=PERCENTILES):
        if every < 1:
            raise ValueError(f"BNTrace: every must be >= 1, got {every}")
        self.channel, self.qs = int(channel), tuple(qs)
        probe = _probe_function(bn_impl, bn_momentum, self.channel, self.qs)
        self._probe = PercentileProbe(jit(probe) if graph == "static" else probe, probe_X, every)

    def __call__(self, step, params, state):
        """Record at ``step`` (a global training-step count) if it is a multiple of ``every``."""
        self._probe(step, params, state)

    def read(self, layer_names):
        """The recorded trace as plain data (one host read): steps, and per layer "before"/"after" bands."""
        values = self._probe.read()   # (T, 2 * layers, len(qs))
        if values is None:
            return dict(steps=[], percentiles=list(self.qs), channel=self.channel, layers={})
        layers = {name: dict(before=values[:, 2 * i].tolist(), after=values[:, 2 * i + 1].tolist())
                  for i, name in enumerate(layer_names)}
        return dict(steps=list(self._probe.steps), percentiles=list(self.qs), channel=self.channel, layers=layers)


def merge(earlier, later):
    """A resumed run's trace: the earlier session's records, then this one's."""
    if not earlier or not earlier.get("steps"):
        return later
    merged = dict(later, steps=earlier["steps"] + later["steps"], layers={})
    for name in later["layers"]:
        merged["layers"][name] = {side: earlier["layers"][name][side] + later["layers"][name][side]
                                  for side in ("before", "after")}
    return merged
