"""LeNet as one static MXNet graph: the same function as ``models.lenet``, run faster.

Imperative MXNet pays per op: Python dispatch, engine pushes and, on the CPU,
oneDNN layout reorders between ops.  A ``CachedOp`` with ``static_alloc`` and
``static_shape`` (what Gluon's ``hybridize`` builds) runs the whole forward and
backward as one planned graph.  mxbn's batch-norm semantics are kept: the graph
uses MXNet's fused BatchNorm kernel fed scratch aux arrays (as
``batch_norm(impl="fused")`` does) and computes mxbn's moving-statistics rule
from the kernel's batch mean and inverse std as extra, gradient-free outputs,
copied into the state arrays once per training call.  In inference the graph reads
the moving statistics and leaves them untouched.

``CompiledLeNet(...)`` has the signature of ``models.lenet`` and gives the same
numbers (tests compare outputs, gradients and moving statistics), so ``fit``
takes either.
"""
from mxnet import autograd, nd, sym

from .models import LENET_CONV, LENET_HIDDEN, NUM_CLASSES

__all__ = ["CompiledLeNet", "lenet_symbol"]

_FLAGS = [("static_alloc", True), ("static_shape", True)]


def _moving_update(moving, batch_stat, momentum):
    """moving*momentum + (1-momentum)*batch_stat, as a graph output outside autograd."""
    return sym.BlockGrad(momentum * moving + (1.0 - momentum) * batch_stat)


def lenet_symbol(use_bn, is_training, eps=1e-5, bn_momentum=0.9):
    """(symbol, number of BN layers).

    Outputs: logits, then in training per BN layer the updated moving mean and
    moving variance (MXNet's rule, biased batch variance recovered from the
    kernel's inverse std: ``1/invstd^2 - eps``), which the caller copies into
    the state arrays.  Computing them inside the graph replaces a dozen small
    imperative ops per layer and step.
    """
    H = sym.var("data")
    stats = []
    for i, (out_c, _, k) in enumerate(LENET_CONV, start=1):
        if use_bn:
            H = sym.Convolution(H, sym.var(f"conv{i}_weight"), kernel=(k, k), num_filter=out_c, no_bias=True)
            if is_training:
                aux = (sym.var(f"bn{i}_scratch_mean"), sym.var(f"bn{i}_scratch_vari"))
            else:
                aux = (sym.var(f"bn{i}_moving_mean"), sym.var(f"bn{i}_moving_vari"))
            out = sym.BatchNorm(H, sym.var(f"bn{i}_gamma"), sym.var(f"bn{i}_beta"), *aux, eps=eps,
                                momentum=0.0, fix_gamma=False, use_global_stats=not is_training,
                                output_mean_var=True)
            H = out[0]
            if is_training:
                batch_vari = 1.0 / sym.square(out[2]) - eps
                stats += [_moving_update(sym.var(f"bn{i}_moving_mean"), out[1], bn_momentum),
                          _moving_update(sym.var(f"bn{i}_moving_vari"), batch_vari, bn_momentum)]
        else:
            H = sym.Convolution(H, sym.var(f"conv{i}_weight"), sym.var(f"conv{i}_bias"), kernel=(k, k),
                                num_filter=out_c)
        H = sym.Pooling(sym.relu(H), kernel=(2, 2), stride=(2, 2), pool_type="max")
    H = sym.relu(sym.FullyConnected(H, sym.var("fc1_weight"), sym.var("fc1_bias"), num_hidden=LENET_HIDDEN))
    logits = sym.FullyConnected(H, sym.var("fc2_weight"), sym.var("fc2_bias"), num_hidden=NUM_CLASSES)
    return sym.Group([logits] + stats), len(stats) // 2


class CompiledLeNet:
    """Callable ``(params, state, X, is_training) -> logits`` running LeNet as a static graph.

    Parameters
    ----------
    use_bn : bool
    bn_momentum : float -- as ``batch_norm``'s ``momentum`` (MXNet convention)
    eps : float -- as ``batch_norm``'s ``eps``
    """

    def __init__(self, use_bn=True, bn_momentum=0.9, eps=1e-5):
        self.use_bn, self.bn_momentum, self.eps = use_bn, bn_momentum, eps
        self._graphs = {}
        self._scratch = {}

    def _graph(self, is_training):
        if is_training not in self._graphs:
            symbol, n_bn = lenet_symbol(self.use_bn, is_training, self.eps, self.bn_momentum)
            self._graphs[is_training] = (nd.CachedOp(symbol, flags=_FLAGS), symbol.list_inputs(), n_bn)
        return self._graphs[is_training]

    def _scratch_aux(self, state, ctx):
        """Throwaway aux arrays the kernel may overwrite (it updates them itself)."""
        if ctx not in self._scratch:
            self._scratch[ctx] = {
                k.replace("_moving_", "_scratch_"): nd.zeros(v.shape, ctx=ctx) for k, v in state.items()}
        return self._scratch[ctx]

    def __call__(self, params, state, X, is_training):
        op, names, n_bn = self._graph(bool(is_training))
        env = dict(params)
        env["data"] = X
        env.update(state)
        if is_training:
            env.update(self._scratch_aux(state, X.context))
            # the kernel takes batch statistics only when autograd's train flag is set
            with autograd.train_mode():
                outputs = op(*[env[n] for n in names])
        else:
            outputs = op(*[env[n] for n in names])
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        logits = outputs[0]
        if is_training:
            with autograd.pause():
                for i in range(1, n_bn + 1):
                    outputs[2 * i - 1].copyto(state[f"bn{i}_moving_mean"])
                    outputs[2 * i].copyto(state[f"bn{i}_moving_vari"])
        return logits
