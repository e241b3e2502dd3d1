"""``mxbn.jit``: trace a functional net once per shape into one static MXNet graph (see :func:`jit`)."""
import functools
import traceback
import warnings

import mxnet as mx
import numpy as np
from mxnet import autograd, nd, sym
from mxnet.base import NotImplementedForSymbol

from . import layout, tracing
from ._arrays import dtype_name
from .tracing import TracingError

__all__ = ["jit", "Jitted", "TracingError", "unjitted", "jit_like"]

_FLAGS = [("static_alloc", True), ("static_shape", True)]

# Graphs one Jitted may trace before it warns: each distinct static argument
# (a Python float that changes every call, say) and each input shape traces a
# new graph and keeps it, so an ever-growing cache means a value that should
# be an array is passed as a static.
CACHE_WARN_SIZE = 16


def jit(fn, layout_pass=True):
    """Compile ``fn`` (a function of arrays written with mxbn's ops) into one static graph per shape.

    Write the net once as a function of arrays, for example
    ``lenet(params, state, X, is_training)``; ``jit(lenet)`` returns a callable
    (a :class:`Jitted`) with the same signature and the same numbers that runs
    it as one ``CachedOp`` (``static_alloc``/``static_shape``, what Gluon's
    ``hybridize`` builds).

    Arguments and statics
        Array arguments (NDArray or ``mx.np.ndarray``, alone or in dicts,
        lists and tuples) become graph inputs.  Every other argument
        (``is_training``, a momentum, an activation name) is *static*: part of
        the cache key, so each new value traces a new graph.  One array passed
        twice is one graph input.
    The cache
        A graph is traced per (static arguments, array shapes and dtypes,
        context, the structure of the arguments) and kept; ``.cache_size`` is
        the number traced so far.  Past ``CACHE_WARN_SIZE`` (16) graphs one
        ``RuntimeWarning`` says so: a Python float that changes every call
        (a learning rate, say) traces a new graph every call; pass it as an
        array (``mx.nd.array([lr])``) instead.
    Results
        One array, or a tuple, list or dict of arrays (a loss and a correct
        count, say), as the function returns it, of the kind it was given.
    State
        ``batch_norm``'s moving statistics leave the graph as extra outputs
        that jit writes into the state arrays after every training call (once
        per call, MXNet's momentum direction, outside autograd), exactly as
        the imperative op does; inference leaves them untouched.
    The layout pass
        On a CPU each traced graph is rewritten for oneDNN's fast kernels
        (:mod:`mxbn.layout`): convolution channels zero-padded to the SIMD
        block inside the graph, a batch norm's relu as oneDNN's Activation
        after the max-pooling it feeds (a NaN still reaches the loss).  The
        same function to float32 rounding; parameters,
        state and gradients keep their shapes.  ``layout_pass=False`` traces
        the graph as written.
    Gradients
        Under ``autograd.record()`` the graph is one recorded node: gradients
        reach every array with ``attach_grad`` and honour its ``grad_req``.
    Arithmetic
        Inside the function a traced value behaves as the array it stands
        for: ``+ - * / ** %`` and comparisons broadcast as NDArray's do,
        ``X.shape`` and ``X.ndim`` can be read, and the functions of
        ``mx.np``, ``mx.npx`` and ``mx.nd`` that have a Symbol counterpart
        (``mx.np.exp`` -> ``mx.sym.np.exp``) add that node.
    What cannot be traced
        raises :class:`mxbn.tracing.TracingError` naming the operation: a
        Python branch on an array's value (``if``, ``float()``,
        ``.asnumpy()``); an ``mx.np``/``mx.npx``/``mx.nd`` function without
        a Symbol counterpart (``mx.np.nonzero``); a 0-d ``mx.np`` result
        from legacy arrays; an array the function captures instead of
        taking as an argument; arrays on different contexts.
    """
    return Jitted(fn, layout_pass=layout_pass)


def unjitted(net):
    """The plain function behind ``net`` (itself if it is not jitted)."""
    return net.fn if isinstance(net, Jitted) else net


def jit_like(net, fn, key=None):
    """``fn`` jitted if ``net`` is, so that a loss or a probe built on the net runs the way the net does.

    With a ``key`` (e.g. ``("loss_and_correct", True)``) the jitted graph is built once per net and key
    and kept on ``net``: evaluating the same net every epoch reuses its traces instead of tracing anew.
    """
    if not isinstance(net, Jitted):
        return fn
    if key is None:
        return jit(fn, layout_pass=net.layout_pass)
    if key not in net.derived:
        net.derived[key] = jit(fn, layout_pass=net.layout_pass)
    return net.derived[key]


# ---------------------------------------------------------------------- argument trees
def _flatten(tree, leaves, path):
    """Structure of ``tree`` with every array replaced by its index in ``leaves``."""
    if isinstance(tree, nd.NDArray):
        if isinstance(tree, nd.sparse.BaseSparseNDArray):
            raise TypeError(f"mxbn.jit: {path} is a sparse array ({tree.stype}); pass a dense one")
        leaves.append((path, tree))
        return ("leaf", len(leaves) - 1)
    if isinstance(tree, dict):
        keys = sorted(tree, key=repr)
        return ("dict", tuple((k, _flatten(tree[k], leaves, f"{path}[{k!r}]")) for k in keys))
    if isinstance(tree, (list, tuple)):
        kind = "list" if isinstance(tree, list) else "tuple"
        return (kind, tuple(_flatten(v, leaves, f"{path}[{i}]") for i, v in enumerate(tree)))
    try:
        hash(tree)
    except TypeError:
        raise TypeError(f"mxbn.jit: {path} is neither an array nor a hashable value ({type(tree).__name__}); "
                        f"non-array arguments are static (part of the cache key) and must be hashable") from None
    return ("static", tree)


def _unflatten(structure, values):
    kind, content = structure
    if kind == "leaf":
        return values[content]
    if kind == "dict":
        return {k: _unflatten(v, values) for k, v in content}
    if kind in ("list", "tuple"):
        items = [_unflatten(v, values) for v in content]
        return items if kind == "list" else tuple(items)
    return content


def _flatten_outputs(result, outputs):
    """Structure of the traced function's result with every Symbol replaced by its output index."""
    if isinstance(result, sym.Symbol):
        if len(result.list_outputs()) != 1:
            raise TracingError("mxbn.jit: the function returned a grouped Symbol; return a tuple of arrays instead")
        outputs.append(result)
        return ("leaf", len(outputs) - 1)
    if isinstance(result, dict):
        return ("dict", tuple((k, _flatten_outputs(result[k], outputs)) for k in result))
    if isinstance(result, (list, tuple)):
        kind = "list" if isinstance(result, list) else "tuple"
        return (kind, tuple(_flatten_outputs(v, outputs) for v in result))
    raise TracingError(f"mxbn.jit: the function returned a {type(result).__name__}; a jitted function returns "
                       f"arrays computed from its array arguments (one, or a tuple/list/dict of them)")


# ---------------------------------------------------------------------- one compiled graph
class _Compiled:
    """A traced graph: the CachedOp, where its inputs come from, what its outputs mean."""

    def __init__(self, graph, input_names, out_structure, n_outputs, state_names, scratch, train_mode):
        self.graph = graph                  # the Symbol the CachedOp runs (after the layout pass)
        self.op = nd.CachedOp(graph, flags=list(_FLAGS))
        self.input_names = input_names      # CachedOp input order: "leaf<i>" or a scratch var name
        self.out_structure = out_structure
        self.n_outputs = n_outputs          # the function's own outputs; state updates follow
        self.state_names = state_names      # leaf var names whose new values are the extra outputs
        self.scratch = scratch              # var name -> (shape, dtype, fill): throwaway arrays
        self.train_mode = train_mode
        self.scratch_arrays = {}

    def scratch_inputs(self, ctx):
        if ctx not in self.scratch_arrays:
            self.scratch_arrays[ctx] = {name: nd.full(shape, fill, ctx=ctx, dtype=dtype)
                                        for name, (shape, dtype, fill) in self.scratch.items()}
        return self.scratch_arrays[ctx]


def _leaf_name(i):
    return f"leaf{i}"


def _aliases(leaves):
    """For each leaf, the index of the first leaf that is the same array (its own index if none is)."""
    first = {}
    return tuple(first.setdefault(a.handle.value, i) for i, (_, a) in enumerate(leaves))


_NAMESPACES = (("mxnet.ndarray.numpy_extension", "mx.npx"), ("mxnet.numpy_extension", "mx.npx"),
               ("mxnet.ndarray.numpy", "mx.np"), ("mxnet.numpy", "mx.np"), ("mxnet.ndarray", "mx.nd"))


def _mxnet_call_from(exc):
    """(namespace, name) of the first MXNet function in an exception's traceback: what the user called
    (operators MXNet generates are '<string>' functions; their module says the namespace), or None."""
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        module = frame.f_globals.get("__name__", "")
        name = frame.f_code.co_name
        if module.startswith("mxnet.ndarray.ndarray") and name.startswith("__"):
            return "NDArray", name   # an NDArray's operator, the traced array its operand
        if module == "mxnet.ndarray.register":   # a generated operator: which namespace holds this one
            for namespace, ns in (("mx.npx", mx.npx), ("mx.np", mx.np), ("mx.nd", mx.nd)):
                if getattr(getattr(ns, name, None), "__code__", None) is frame.f_code:
                    return namespace, name
            return "mx.nd", name
        for prefix, namespace in _NAMESPACES:
            if module.startswith(prefix) and name != "_wrap_np_unary_func":
                return namespace, name
    return None


def _untraceable(name, exc):
    """The TracingError for an MXNet call on a traced array (None when ``exc`` is not one)."""
    call = _mxnet_call_from(exc)
    if call is None:
        return None
    namespace, op = call
    if namespace == "NDArray":
        return TracingError(f"mxbn.jit: {name} applies an operator of an NDArray the function captures "
                            f"({op}) to a traced array; pass the NDArray as an argument of the jitted function "
                            f"(constants are not captured)")
    return TracingError(f"mxbn.jit: {name} calls {namespace}.{op} on a traced array; inside a jitted function "
                        f"use mxbn's ops (mxbn.conv2d, mxbn.dense, ...), arithmetic, or mx.sym.{op}")


class Jitted:
    """The callable :func:`jit` returns; ``.fn`` is the original function, ``.cache_size`` the graphs traced."""

    def __init__(self, fn, layout_pass=True):
        self.fn = fn
        self.layout_pass = bool(layout_pass)
        self._cache = {}
        self.derived = {}   # graphs built on this net (loss, prediction), see jit_like
        self._warned = False
        functools.update_wrapper(self, fn)
        self.name = getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", repr(fn))

    @property
    def cache_size(self):
        return len(self._cache)

    def __call__(self, *args, **kwargs):
        leaves = []
        structure = _flatten((args, kwargs), leaves, "argument")
        if not leaves:
            raise TypeError(f"mxbn.jit: {self.name} got no array argument; nothing to compile")
        ctx = self._context(leaves)
        returns_np = any(isinstance(array, mx.numpy.ndarray) for _, array in leaves)
        aliases = _aliases(leaves)
        key = (structure, tuple((a.shape, dtype_name(a.dtype)) for _, a in leaves), ctx, aliases)
        compiled = self._cache.get(key)
        if compiled is None:
            compiled = self._cache[key] = self._trace(structure, leaves, aliases, ctx)
            self._warn_if_growing()
        return self._run(compiled, leaves, ctx, returns_np)

    def _warn_if_growing(self):
        if len(self._cache) > CACHE_WARN_SIZE and not self._warned:
            self._warned = True
            warnings.warn(f"mxbn.jit: {self.name} has traced {len(self._cache)} graphs: every new value of a "
                          f"static (non-array) argument and every new input shape traces and keeps one; pass a "
                          f"changing number as an array (e.g. mx.nd.array([lr])) instead", RuntimeWarning,
                          stacklevel=3)

    @staticmethod
    def _context(leaves):
        first_path, first = leaves[0]
        for path, array in leaves[1:]:
            if array.context != first.context:
                raise ValueError(f"mxbn.jit: {path} is on {array.context} but {first_path} is on {first.context}; "
                                 f"one compiled graph runs on one context: move the arrays "
                                 f"(.as_in_context({first.context}))")
        return first.context

    def _trace(self, structure, leaves, aliases, ctx):
        shapes = {_leaf_name(i): a.shape for i, (_, a) in enumerate(leaves)}
        dtypes = {_leaf_name(i): np.dtype(a.dtype).name for i, (_, a) in enumerate(leaves)}
        paths = {_leaf_name(i): path for i, (path, _) in enumerate(leaves)}
        symbols = [sym.var(_leaf_name(i), shape=a.shape, dtype=a.dtype) for i, (_, a) in enumerate(leaves)]
        # one array passed twice is one graph input (ops that must not alias, such as batch_norm's two
        # moving statistics, can then tell)
        symbols = [symbols[j] for j in aliases]
        args, kwargs = _unflatten(structure, symbols)
        with tracing.Trace(shapes, dtypes, paths) as trace:
            try:
                result = self.fn(*args, **kwargs)
            except NotImplementedForSymbol as e:
                raise TracingError(
                    f"mxbn.jit: {self.name} reads an array's value ({e}). A traced function cannot branch "
                    f"on or read values: make the value a static (non-array) argument, or compute without "
                    f"reading it (e.g. mx.sym.where instead of if)") from None
            except (AssertionError, TypeError) as e:
                # MXNet's own checks: "must have NDArray type" (mx.nd, mx.npx), "type Symbol not supported"
                # (mx.np, an NDArray's operators)
                if isinstance(e, TracingError) or not ("must have NDArray type" in str(e)
                                                       or "Symbol'> not supported" in str(e)):
                    raise
                error = _untraceable(self.name, e)
                if error is None:
                    raise
                raise error from None
        outputs = []
        out_structure = _flatten_outputs(result, outputs)
        state_names = list(trace.state_updates)
        graph = sym.Group(outputs + [trace.state_updates[n] for n in state_names])
        scratch = dict(trace.scratch)
        if self.layout_pass and ctx.device_type == "cpu":
            graph, scratch = layout.layout_pass(graph, scratch, layout.simd_block())
        return _Compiled(graph, graph.list_inputs(), out_structure, len(outputs),
                         state_names, scratch, trace.needs_train_mode)

    @staticmethod
    def _run(compiled, leaves, ctx, returns_np):
        arrays = {_leaf_name(i): (a.as_nd_ndarray() if isinstance(a, mx.numpy.ndarray) else a)
                  for i, (_, a) in enumerate(leaves)}
        arrays.update(compiled.scratch_inputs(ctx))
        inputs = [arrays[name] for name in compiled.input_names]
        if compiled.train_mode:
            with autograd.train_mode():
                results = compiled.op(*inputs)
        else:
            results = compiled.op(*inputs)
        if isinstance(results, nd.NDArray):
            results = [results]
        with autograd.pause():
            for name, value in zip(compiled.state_names, results[compiled.n_outputs:]):
                value.copyto(arrays[name])
        outputs = results[:compiled.n_outputs]
        if returns_np:
            outputs = [o.as_np_ndarray() for o in outputs]
        return _unflatten(compiled.out_structure, outputs)
