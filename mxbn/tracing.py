"""What mxbn's ops need to know while :func:`mxbn.jit` traces a function into a graph.

During a trace every array argument of the jitted function is a ``Symbol``
(one ``var`` per array).  The functional ops then build graph nodes instead of
computing, and ask the active :class:`Trace` for

* the shape and dtype of a Symbol (the inputs' are known, the rest inferred),
  so that they validate their arguments exactly as they do for NDArrays (the
  traced function itself may read ``X.shape`` and ``X.ndim`` too);
* state: ``batch_norm`` does not write ``moving_mean`` in place inside a
  graph; it hands the trace the new value, which leaves the graph as an extra
  output that jit copies into the state array after the call;
* scratch arrays (the fused BatchNorm kernel's throwaway aux states) that jit
  allocates once per compiled graph.

While a trace is active a Symbol's arithmetic and comparisons (``+ - * / ** %``,
``== != < <= > >=``) broadcast as NDArray's do (legacy Symbols do not: their
``+`` needs equal shapes), and an NDArray the function captures, used with one
of them, is a TracingError naming the operator.  So are the functions of
``mx.np``, ``mx.npx`` and ``mx.nd``: called with a traced array, one that has a
Symbol counterpart (``mx.sym.np.exp``, ``mx.sym.relu``) adds that node, and one
that has none is a TracingError naming the function as the user called it.

This module imports nothing of mxbn, so the math can depend on it.
"""
import inspect
import operator
import threading

import mxnet as mx
import numpy as np
from mxnet import nd, sym

__all__ = ["Trace", "TracingError", "current", "shape_of", "dtype_of"]

_ACTIVE = threading.local()
# The Symbol.shape/ndim properties below are process-wide while a trace is
# thread-local: one trace at a time in the whole process, so that a second
# thread's trace cannot remove the properties under the first one's feet.
_TRACING = threading.Lock()


class TracingError(TypeError):
    """Something in a jitted function cannot become part of a static graph."""


# Symbol method -> (the operator as written, MXNet's broadcasting op, operands swapped)
_BINARY = {
    "__add__": ("+", "broadcast_add", False), "__radd__": ("+", "broadcast_add", True),
    "__sub__": ("-", "broadcast_sub", False), "__rsub__": ("-", "broadcast_sub", True),
    "__mul__": ("*", "broadcast_mul", False), "__rmul__": ("*", "broadcast_mul", True),
    "__truediv__": ("/", "broadcast_div", False), "__rtruediv__": ("/", "broadcast_div", True),
    "__pow__": ("**", "broadcast_power", False), "__rpow__": ("**", "broadcast_power", True),
    "__mod__": ("%", "broadcast_mod", False), "__rmod__": ("%", "broadcast_mod", True),
    "__eq__": ("==", "broadcast_equal", False), "__ne__": ("!=", "broadcast_not_equal", False),
    "__lt__": ("<", "broadcast_lesser", False), "__le__": ("<=", "broadcast_lesser_equal", False),
    "__gt__": (">", "broadcast_greater", False), "__ge__": (">=", "broadcast_greater_equal", False),
}


def _broadcasting(method, written, op, swapped, original):
    def binary(self, other):
        if isinstance(other, nd.NDArray):   # mx.np.ndarray is one too
            raise TracingError(f"mxbn.jit: `{written}` between a traced array and an {type(other).__name__} the "
                               f"function captures (shape {other.shape}); pass it as an argument of the jitted "
                               f"function (constants are not captured)")
        if not isinstance(other, sym.Symbol):
            return original(self, other)        # a Python number: MXNet's scalar op
        trace = _ACTIVE.trace
        if trace.shape_of(self) == trace.shape_of(other):
            return original(self, other)        # the same node an untraced graph would have
        a, b = (other, self) if swapped else (self, other)
        return getattr(sym, op)(a, b)
    binary.__name__ = method
    return binary


# array namespace (as a user writes it) -> (its module, the Symbol namespace with the same functions,
# whether those take numpy-style Symbols)
_NAMESPACES = {"mx.np": (mx.np, mx.sym.np, True), "mx.npx": (mx.npx, mx.sym.npx, True),
               "mx.nd": (mx.nd, mx.sym, False)}


# mx.nd's broadcasting arithmetic has no function of that name in mx.sym: a traced array's operator is its
# counterpart (which broadcasts while a trace is active, see _BINARY)
_ND_ARITHMETIC = {
    "add": operator.add, "subtract": operator.sub, "multiply": operator.mul, "divide": operator.truediv,
    "true_divide": operator.truediv, "modulo": operator.mod, "equal": operator.eq, "not_equal": operator.ne,
    "greater": operator.gt, "greater_equal": operator.ge, "lesser": operator.lt, "lesser_equal": operator.le,
}


def _traced_in(value):
    """Whether a (possibly nested list/tuple) argument holds a traced Symbol."""
    if isinstance(value, (list, tuple)):
        return any(_traced_in(v) for v in value)
    return isinstance(value, sym.Symbol)


def _as_symbol_arg(value, written, numpy_style):
    if isinstance(value, (list, tuple)):
        return type(value)(_as_symbol_arg(v, written, numpy_style) for v in value)
    if isinstance(value, nd.NDArray):
        raise TracingError(f"mxbn.jit: {written} between a traced array and an {type(value).__name__} the "
                           f"function captures (shape {value.shape}); pass it as an argument of the jitted "
                           f"function (constants are not captured)")
    if isinstance(value, sym.Symbol) and numpy_style:
        return value.as_np_ndarray()
    return value


def _as_traced(result, written):
    """A Symbol function's result as the legacy Symbols the trace works in."""
    if isinstance(result, (list, tuple)):
        return type(result)(_as_traced(r, written) for r in result)
    if isinstance(result, sym.Symbol) and hasattr(result, "as_nd_ndarray"):
        result = result.as_nd_ndarray()
        if not mx.util.is_np_shape() and _ACTIVE.trace.shape_of(result) == ():
            # outside numpy-shape semantics () means "unknown": the graph would fail when it runs
            raise TracingError(f"mxbn.jit: {written} gives a 0-d array, which legacy NDArrays cannot hold; call "
                               f"mx.npx.set_np() and pass mx.np arrays, or keep a dimension (keepdims=True)")
    return result


def _on_symbols(namespace, name, original, counterpart, numpy_style):
    """``original`` (e.g. mx.np.exp) that, given a traced array, adds its Symbol counterpart instead."""
    written = f"{namespace}.{name}"

    def function(*args, **kwargs):
        if not (_traced_in(args) or _traced_in(list(kwargs.values()))):
            return original(*args, **kwargs)
        if counterpart is None:
            raise TracingError(f"mxbn.jit: {written} has no Symbol counterpart, so it cannot be traced; use "
                               f"mxbn's ops, arithmetic, or an mx.np/mx.sym function that has one")
        args = _as_symbol_arg(args, written, numpy_style)
        kwargs = {k: _as_symbol_arg(v, written, numpy_style) for k, v in kwargs.items()}
        return _as_traced(counterpart(*args, **kwargs), written)
    function.__name__ = name
    function.__doc__ = getattr(original, "__doc__", None)
    return function


_PATCHES = []


def _namespace_patches():
    """(module, name, original, traced version) for every function of the array namespaces, built once."""
    if _PATCHES:
        return _PATCHES
    patches = []
    for namespace, (module, symbols, numpy_style) in _NAMESPACES.items():
        for name, original in vars(module).items():
            if name.startswith("_") or inspect.isclass(original) or not callable(original):
                continue
            counterpart = getattr(symbols, name, None)
            if module is mx.nd and name in _ND_ARITHMETIC:
                counterpart = _ND_ARITHMETIC[name]
            if counterpart is not None and (inspect.isclass(counterpart) or not callable(counterpart)):
                counterpart = None
            patches.append((module, name, original,
                            _on_symbols(namespace, name, original, counterpart, numpy_style)))
    _PATCHES.extend(patches)
    return _PATCHES


class Trace:
    """The bookkeeping of one trace; used as a context manager by mxbn.jit."""

    def __init__(self, input_shapes, input_dtypes, leaf_names):
        self.shapes = dict(input_shapes)     # var name -> shape, for every input and scratch var
        self.dtypes = dict(input_dtypes)     # var name -> numpy dtype name
        self.leaf_names = dict(leaf_names)   # var name -> how the user passed it, for messages
        self.state_updates = {}              # var name of a state input -> Symbol of its new value
        self.scratch = {}                    # var name -> (shape, dtype, fill value)
        self.needs_train_mode = False        # a kernel must see autograd's train flag (BatchNorm)
        self.for_export = False              # inference batch norm as one BatchNorm node (mxbn.export)
        self._cache = {}
        self._constants = {}                 # (prefix, shape, dtype, fill) -> its shared scratch var

    def __enter__(self):
        if getattr(_ACTIVE, "trace", None) is not None:
            raise TracingError("mxbn.jit: a jitted function was called while another one is being traced; "
                               "call the inner function's undecorated version inside the outer one")
        _TRACING.acquire()
        _ACTIVE.trace = self
        # Shapes are static within a trace, so a traced function may read them
        # as it would an NDArray's (``X.shape[0]``); MXNet's Symbol has no such
        # attributes, so they exist only while tracing.
        sym.Symbol.shape = property(lambda symbol: self.shape_of(symbol))
        sym.Symbol.ndim = property(lambda symbol: len(self.shape_of(symbol)))
        self._originals = {m: sym.Symbol.__dict__[m] for m in _BINARY}
        for method, (written, op, swapped) in _BINARY.items():
            setattr(sym.Symbol, method, _broadcasting(method, written, op, swapped, self._originals[method]))
        for module, name, _, traced in _namespace_patches():
            setattr(module, name, traced)
        return self

    def __exit__(self, *exc):
        _ACTIVE.trace = None
        del sym.Symbol.shape, sym.Symbol.ndim
        for method, original in self._originals.items():
            setattr(sym.Symbol, method, original)
        for module, name, original, _ in _namespace_patches():
            setattr(module, name, original)
        _TRACING.release()
        return False

    # ---------------------------------------------------------------- shapes and dtypes
    def _infer(self, symbol):
        key = symbol.handle.value
        if key not in self._cache:
            names = symbol.list_inputs()
            shapes = {n: self.shapes[n] for n in names if n in self.shapes}
            dtypes = {n: self.dtypes[n] for n in names if n in self.dtypes}
            _, out_shapes, _ = symbol.infer_shape_partial(**shapes)
            _, out_types, _ = symbol.infer_type_partial(**dtypes)
            # the Symbol is kept alive with its entry, so its handle cannot be reused by another
            self._cache[key] = (tuple(out_shapes[0]), out_types[0], symbol)
        return self._cache[key]

    def shape_of(self, symbol):
        return self._infer(symbol)[0]

    def dtype_of(self, symbol):
        return np.dtype(self._infer(symbol)[1]).name

    # ---------------------------------------------------------------- state
    def _state_var(self, symbol, op, role):
        name = symbol.name
        if symbol.list_inputs() != [name] or name not in self.shapes:
            raise TracingError(f"mxbn.jit: {op}'s {role} must be an array passed to the jitted function (state "
                               f"is written back into it after the call), got a computed value")
        return name

    def current_value(self, symbol, op, role):
        """The latest value of a state input: its own var, or what an earlier op in this trace set."""
        return self.state_updates.get(self._state_var(symbol, op, role), symbol)

    def set_state(self, symbol, new_value, op, role):
        self.state_updates[self._state_var(symbol, op, role)] = new_value

    # ---------------------------------------------------------------- scratch arrays
    def constant_var(self, prefix, shape, dtype, fill):
        """A scratch var that no op writes (ones vectors, say): one per (prefix, shape, dtype, fill), shared by
        every op of the trace that asks for it."""
        key = (prefix, tuple(shape), dtype, fill)
        if key not in self._constants:
            self._constants[key] = self.scratch_var(prefix, shape, dtype, fill)
        return self._constants[key]

    def scratch_var(self, prefix, shape, dtype, fill):
        name = f"_mxbn_scratch{len(self.scratch)}_{prefix}"
        self.scratch[name] = (tuple(shape), dtype, fill)
        self.shapes[name] = tuple(shape)
        self.dtypes[name] = dtype
        return sym.var(name)


def current(op):
    """The active trace; a Symbol outside mxbn.jit gets an error that says what to use."""
    trace = getattr(_ACTIVE, "trace", None)
    if trace is None:
        raise TracingError(
            f"{op}: got an mxnet Symbol outside mxbn.jit. mxbn's ops take Symbols only while mxbn.jit traces a "
            f"function (it knows the shapes and writes batch-norm state back). In a hybridized Gluon block use "
            f"Gluon's layers (gluon.nn.BatchNorm, F.Convolution, ...), or write the net as a function of arrays "
            f"and wrap it in mxbn.jit")
    return trace


def shape_of(symbol, op):
    return current(op).shape_of(symbol)


def dtype_of(symbol, op):
    return current(op).dtype_of(symbol)
