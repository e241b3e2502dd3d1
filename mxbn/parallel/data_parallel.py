"""Data-parallel training step: one batch split over several devices (and workers).

Each device holds its own copy (replica) of the parameters, BN state and
optimizer state.  A step: split the batch, run forward and backward on every
device under one ``autograd.record()``, sum the gradients through the kvstore
(push then pull), and apply the optimizer to every replica with the summed
gradient; identical inputs and identical arithmetic keep the replicas equal.
Without synchronized BN each device's moving statistics come from its own
slice, so they are averaged across replicas after every step.

Each device's loss is its slice's summed cross-entropy divided by the global
batch (this worker's batch times the number of workers), so the summed
gradient is the gradient of the mean loss over the global batch: N devices
with B/N samples each take the step one device takes with B samples.
"""
import hashlib

import mxnet as mx
from mxnet import autograd, nd

from .. import functional as F
from ..jit import jit
from ..train import GradientClipper, attach_gradients, gradients_of, trainable_subset
from .kvstore import is_distributed
from .sync_batch_norm import sync_batch_norm

__all__ = ["DataParallelStep", "replicate", "split_sizes", "per_device", "across_devices", "jitted_stages",
           "fingerprint"]


def fingerprint(arrays):
    """sha1 of the values of a dict of arrays (in name order): equal iff the copies are bit-identical."""
    digest = hashlib.sha1()
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(arrays[name].asnumpy().tobytes())
    return digest.hexdigest()


def replicate(arrays, contexts):
    """``[arrays, copy on contexts[1], ...]``: the dict itself serves the first context."""
    first = {a.context for a in arrays.values()}
    if first and first != {contexts[0]}:
        raise ValueError(f"the arrays to replicate are on {sorted(map(str, first))}, expected {contexts[0]}")
    return [arrays] + [{k: v.copyto(ctx) for k, v in arrays.items()} for ctx in contexts[1:]]


def _replicate_opt_state(opt_state, contexts):
    slots = {slot: replicate(arrays, contexts) for slot, arrays in opt_state["slots"].items()}
    return [opt_state] + [{"t": opt_state["t"], "slots": {slot: slots[slot][d] for slot in slots}}
                          for d in range(1, len(contexts))]


def split_sizes(n, parts):
    """Slice lengths for ``n`` samples over ``parts`` devices, as equal as possible."""
    if n < parts:
        raise ValueError(f"a batch of {n} sample(s) cannot be split over {parts} devices")
    return [n // parts + (1 if d < n % parts else 0) for d in range(parts)]


def per_device(net):
    """A single-device forward ``net(params, state, X, is_training)`` run on every device's slice."""
    def forward(replica_params, replica_states, Xs, is_training):
        return [net(p, s, X, is_training) for p, s, X in zip(replica_params, replica_states, Xs)]
    return forward


def jitted_stages(stages, layout_pass=True):
    """Each stage as one static graph per device (mxbn.jit; a new cache per call)."""
    return tuple(jit(stage, layout_pass=layout_pass) for stage in stages)


def across_devices(stages, norms, replica_params, replica_states, Xs, is_training, bn_momentum=0.9):
    """A net given as ``stages`` with batch norms between them, over slices on several devices,
    each batch norm synchronized across them (the model declares its stages, e.g.
    ``models.LENET_STAGES`` and ``models.LENET_STAGE_NORMS``).

    Every stage ``(params, H) -> H`` runs on every device (plain, or :func:`jitted_stages`);
    after stage k the batch norm with parameter prefix ``norms[k]``, if the net has it,
    exchanges statistics between the devices.  Returns the last stage's outputs per device.
    """
    Hs = Xs
    for k, stage in enumerate(stages):
        Hs = [stage(p, H) for p, H in zip(replica_params, Hs)]
        if k < len(norms) and f"{norms[k]}_gamma" in replica_params[0]:
            prefix = norms[k]
            Hs = sync_batch_norm(Hs, [p[f"{prefix}_gamma"] for p in replica_params],
                                 [p[f"{prefix}_beta"] for p in replica_params], is_training,
                                 [s[f"{prefix}_moving_mean"] for s in replica_states],
                                 [s[f"{prefix}_moving_vari"] for s in replica_states], momentum=bn_momentum)
    return Hs


class DataParallelStep:
    """The training step of ``mxbn.train.fit`` over several devices and, with a
    ``dist_*`` kvstore, several processes.

    Parameters
    ----------
    forward : callable(replica_params, replica_states, Xs, is_training) -> list of logits,
        e.g. ``per_device(net)`` or ``functools.partial(across_devices, stages, norms)``
    contexts : list of mx.Context -- the devices of this process
    params, state, opt_state : replica 0 (on ``contexts[0]``); copies are made for the others.
        Parameters and BN state start from worker 0's values (broadcast through the kvstore).
    optimizer : an ``mxbn.optim`` optimizer
    kvstore : an MXNet KVStore (``mxbn.parallel.create_kvstore``)
    stats_synchronized : bool -- the forward synchronizes BN statistics across this process's
        devices (then the moving statistics need averaging only across workers)
    trainable : names of the parameters that learn (None: all); the others get no gradient
    clip_grad_norm : float or None -- clip the summed gradient by its global norm before the update
        (every replica clips the same sums, so they stay equal; replica 0's clipper counts)
    """

    def __init__(self, forward, contexts, params, state, optimizer, opt_state, kvstore,
                 stats_synchronized=False, clip_grad_norm=None, trainable=None):
        self.forward, self.contexts, self.optimizer, self.kv = forward, list(contexts), optimizer, kvstore
        self.params = replicate(params, self.contexts)
        self.states = replicate(state, self.contexts)
        self.opt_states = _replicate_opt_state(opt_state, self.contexts)
        self.collective = is_distributed(kvstore.type)
        self.num_workers = kvstore.num_workers if self.collective else 1
        # identical statistics on every replica need no averaging
        self.average_stats = bool(state) and not (stats_synchronized and self.num_workers == 1)
        self.replicas = len(self.contexts) * self.num_workers
        self.trainable = [trainable_subset(replica, trainable) for replica in self.params]
        for replica in self.trainable:
            attach_gradients(replica)
        self._keys = {name: f"param:{name}" for name in params}
        self._keys.update({name: f"state:{name}" for name in state})
        for name, key in self._keys.items():
            # init stores worker 0's value; the pull gives it to every device of every worker
            source = (self.params if name in params else self.states)
            kvstore.init(key, source[0][name])
            kvstore.pull(key, out=[r[name] for r in source])
        if self.collective:
            kvstore.init("control", nd.zeros((2,), ctx=self.contexts[0]))
        self.clippers = [GradientClipper(clip_grad_norm, ctx) for ctx in self.contexts]
        self.clipper = self.clippers[0]

    def seed_epoch(self, value):
        for ctx in self.contexts:
            mx.random.seed(value, ctx=ctx)

    def forward_backward(self, X, y):
        """(mean loss, correct count) of this worker's batch, on contexts[0]; gradients per device."""
        n = X.shape[0]
        bounds, start = [], 0
        for size in split_sizes(n, len(self.contexts)):
            bounds.append((start, start + size))
            start += size
        Xs = [X[a:b].as_in_context(ctx) for (a, b), ctx in zip(bounds, self.contexts)]
        ys = [y[a:b].as_in_context(ctx) for (a, b), ctx in zip(bounds, self.contexts)]
        global_batch = n * self.num_workers
        with autograd.record():
            logits = self.forward(self.params, self.states, Xs, True)
            losses = [F.softmax_cross_entropy(lg, yd) for lg, yd in zip(logits, ys)]
            heads = [loss * (yd.shape[0] / global_batch) for loss, yd in zip(losses, ys)]
        autograd.backward(heads)
        home = self.contexts[0]
        loss = nd.add_n(*[(loss.detach() * (yd.shape[0] / n)).as_in_context(home) for loss, yd in zip(losses, ys)])
        correct = nd.add_n(*[F.correct_count(lg.detach(), yd).as_in_context(home) for lg, yd in zip(logits, ys)])
        return loss, correct

    def apply(self, lr):
        for priority, name in enumerate(self.trainable[0]):
            grads = [r[name].grad for r in self.trainable]
            # larger priority first: the kvstore starts on the first layers' gradients
            self.kv.push(self._keys[name], grads, priority=-priority)
            self.kv.pull(self._keys[name], out=grads, priority=-priority)
        for params, opt_state, clipper in zip(self.trainable, self.opt_states, self.clippers):
            grads = gradients_of(params)
            clipper(grads.values())
            self.optimizer.update(params, grads, opt_state, lr=lr)
        if self.average_stats:
            for name in self.states[0]:
                copies = [s[name] for s in self.states]
                self.kv.push(self._keys[name], copies)
                self.kv.pull(self._keys[name], out=copies)
                for c in copies:
                    c *= 1.0 / self.replicas

    def replicas_identical(self):
        """True if every device's parameters and BN state equal the first device's, bit for bit."""
        first = (fingerprint(self.params[0]), fingerprint(self.states[0]))
        return all((fingerprint(p), fingerprint(s)) == first for p, s in zip(self.params[1:], self.states[1:]))

    def agree(self, flags):
        """Each flag true on any worker -> true on all (a kvstore round trip; collective steps only)."""
        local = nd.array([1.0 if f else 0.0 for f in flags], ctx=self.contexts[0])
        self.kv.push("control", local)
        self.kv.pull("control", out=local)
        return [bool(v > 0) for v in local.asnumpy()]
