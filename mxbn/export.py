"""A trained net out of mxbn: its inference graph as a plain MXNet Symbol, batch norm folded, saved in
MXNet's own format (what ``gluon.SymbolBlock.imports`` and the Module API load).

* :func:`inference_graph` traces ``net(params, state, X, False)`` into a Symbol whose inputs carry the
  names of the parameter and state dicts (the images are ``data``, their batch dimension free); each
  batch norm is one ``BatchNorm`` node on its moving statistics (``use_global_stats``).
* :func:`fold_batch_norm` folds each such node into the convolution or dense layer before it, when it
  alone reads that layer's output along its channel axis: the layer's weight scaled per output channel
  by ``s = gamma / sqrt(moving_vari + eps)`` and its bias ``(bias - moving_mean) * s + beta`` (one is
  added where the layer had none); the arithmetic in float64, the result in the parameters' dtype.  A
  batch norm with no such layer before it becomes a per-channel scale and shift (two broadcast ops on
  constants).  The folded graph computes the unfolded one up to float32 rounding.
* :func:`save_mxnet` writes ``PREFIX-symbol.json`` and ``PREFIX-0000.params``, atomically;
  :func:`save_onnx` writes ``PREFIX.onnx`` (opset 13) through MXNet 1.9.1's ONNX exporter, which needs
  onnx < 1.19 (the ``[onnx]`` extra: onnx 1.18.0, which has no wheels for Python 3.14).
"""
import contextlib
import json
import os

import numpy as np
from mxnet import nd, sym

from . import tracing
from ._graph_json import GraphWriter, consumers, entry
from .atomic import atomic_write_bytes, atomic_write_text
from .jit import unjitted

__all__ = ["inference_graph", "fold_batch_norm", "save_mxnet", "save_onnx", "require_onnx", "INPUT_NAME",
           "ExportError", "ONNX_OPSET"]

INPUT_NAME = "data"


class ExportError(ValueError):
    """The net cannot be exported as asked."""


def inference_graph(net, params, state, input_shape, input_name=INPUT_NAME, dtype="float32"):
    """(Symbol of the logits, {name: array} of the parameters and state it reads) of ``net`` in inference mode.

    ``input_shape`` fixes the shapes while tracing; the saved graph does not keep them (the batch
    dimension of ``data`` stays free, since every op of mxbn's nets takes any batch).
    """
    arrays = dict(params)
    clash = sorted(set(params) & set(state) | {input_name} & (set(params) | set(state)))
    if clash:
        raise ExportError(f"export: the names {clash} are used twice (parameters, state, the input)")
    arrays.update(state)
    shapes = {name: tuple(a.shape) for name, a in arrays.items()}
    dtypes = {name: np.dtype(a.dtype).name for name, a in arrays.items()}
    shapes[input_name], dtypes[input_name] = tuple(input_shape), dtype
    param_vars = {name: sym.var(name) for name in params}
    state_vars = {name: sym.var(name) for name in state}
    with tracing.Trace(shapes, dtypes, {name: name for name in shapes}) as trace:
        trace.for_export = True
        logits = unjitted(net)(param_vars, state_vars, sym.var(input_name, dtype=dtype), False)
    if not isinstance(logits, sym.Symbol):
        raise ExportError(f"export: the net returned a {type(logits).__name__}; one array of logits is exported")
    if trace.state_updates or trace.scratch:
        raise ExportError("export: the inference graph writes state or needs scratch arrays; nothing mxbn "
                          "exports does (is the net calling batch_norm with is_training=True?)")
    used = set(logits.list_inputs())
    return logits, {name: a for name, a in arrays.items() if name in used}


def fold_batch_norm(graph, arrays, input_shape, input_name=INPUT_NAME):
    """(folded Symbol, its {name: NDArray}) as the module docstring says; ``graph`` and ``arrays`` are
    :func:`inference_graph`'s."""
    spec = json.loads(graph.tojson())
    nodes = spec["nodes"]
    shapes = _output_shapes(graph, input_shape, input_name)
    values = {name: a.asnumpy() for name, a in arrays.items()}
    folder = _Folder(nodes, values, shapes, consumers(nodes, spec["heads"]))
    folder.plan()
    for nid in range(len(nodes)):
        folder.visit(nid)
    folded = folder.symbol([folder.new_entry((h[0], h[1])) for h in spec["heads"]], spec.get("attrs", {}))
    dtype_of = {name: a.dtype for name, a in arrays.items()}
    out = {}
    for name in folded.list_inputs():
        if name != input_name:
            value = folder.values[name]
            out[name] = nd.array(value, dtype=dtype_of.get(name, np.float32))
    return folded, out


def save_mxnet(graph, arrays, prefix):
    """``PREFIX-symbol.json`` and ``PREFIX-0000.params`` (``arg:NAME`` entries), each written atomically;
    returns the two paths."""
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    symbol_path, params_path = f"{prefix}-symbol.json", f"{prefix}-0000.params"
    aux = set(graph.list_auxiliary_states())
    atomic_write_bytes(params_path, _saved_bytes({("aux:" if name in aux else "arg:") + name: a
                                                  for name, a in arrays.items()}))
    atomic_write_text(symbol_path, graph.tojson())
    return symbol_path, params_path


def _saved_bytes(arrays):
    """The bytes ``nd.save`` writes (MXNet 1.9 saves to a path only: a temporary file in between)."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "params")
        nd.save(path, arrays)
        with open(path, "rb") as f:
            return f.read()


def _output_shapes(graph, input_shape, input_name):
    """{node name: shape of its output 0} over the whole graph."""
    internals = graph.get_internals()
    _, shapes, _ = internals.infer_shape_partial(**{input_name: tuple(input_shape)})
    return {name[:-len("_output")]: tuple(s) for name, s in zip(internals.list_outputs(), shapes)
            if name.endswith("_output")}


def _bool(text):
    return str(text).lower() in ("true", "1")


def _is_inference_batch_norm(node):
    """The node :func:`inference_graph` makes of a batch norm."""
    return node["op"] == "BatchNorm" and _bool(node.get("attrs", {}).get("use_global_stats"))


class _Folder(GraphWriter):
    """Copies the nodes into ``out`` in order, folding or rewriting the batch norms on the way."""

    def __init__(self, nodes, values, shapes, consumers):
        super().__init__()
        self.nodes, self.values, self.shapes = nodes, dict(values), shapes
        self.readers = {e: len(c) for e, c in consumers.items()}   # entry -> how many read it
        self.new = {}         # old entry -> new entry
        self.folds = {}       # old layer node -> the batch norm folded into it

    def plan(self):
        """Which batch norm folds into which layer (a layer takes at most one)."""
        for nid, node in enumerate(self.nodes):
            if _is_inference_batch_norm(node):
                layer = self._foldable_layer(node)
                if layer is not None and layer not in self.folds:
                    self.folds[layer] = nid

    def var(self, name):
        return self.emit("null", name, [])

    def new_entry(self, old):
        """The new entry of an old one (a variable is emitted where it is first read)."""
        if old not in self.new:
            node = self.nodes[old[0]]
            assert node["op"] == "null", node
            self.new[old] = self.emit("null", node["name"], [], node.get("attrs"))
        return self.new[old]

    def visit(self, nid):
        node = self.nodes[nid]
        if node["op"] == "null":
            return
        if _is_inference_batch_norm(node):
            layer = next((layer for layer, bn in self.folds.items() if bn == nid), None)
            if layer is not None:
                self.new[(nid, 0)] = self.new[(layer, 0)]   # folded: the layer's output is the normalized one
            else:
                self.scale_and_shift(nid, node)
            return
        if nid in self.folds:
            weight, bias = self.fold(node, self.nodes[self.folds[nid]])
            inputs = [self.new_entry(entry(node, 0)), self.var(weight), self.var(bias)]
            node = dict(node, attrs=dict(node.get("attrs", {}), no_bias="False"))
        else:
            inputs = [self.new_entry(entry(node, k)) for k in range(len(node["inputs"]))]
        new = self.emit(node["op"], node["name"], inputs, node.get("attrs"))
        self.new[(nid, 0)] = new
        for k in range(1, 4):
            self.new[(nid, k)] = (new[0], k)

    # ---------------------------------------------------------------- one batch norm
    def _stats(self, node):
        names = [self.nodes[e[0]]["name"] for e in node["inputs"][1:5]]
        gamma, beta, mean, vari = (self.values[n].astype(np.float64) for n in names)
        eps = float(node.get("attrs", {}).get("eps", 1e-3))
        scale = gamma / np.sqrt(vari + eps)
        return scale, beta - mean * scale, mean, beta

    def _foldable_layer(self, node):
        """The convolution or dense layer a batch norm can fold into, or None."""
        data = node["inputs"][0]
        layer_id = data[0]
        layer = self.nodes[layer_id]
        if data[1] != 0 or layer["op"] not in ("Convolution", "FullyConnected"):
            return None
        if self.readers.get((layer_id, 0), 0) != 1:
            return None   # another reader needs the unnormalized output
        ndim = len(self.shapes.get(layer["name"], ()))
        axis = int(node.get("attrs", {}).get("axis", 1))
        attrs = layer.get("attrs", {})
        channel_axis = 1 if layer["op"] == "Convolution" or _bool(attrs.get("flatten", "True")) else ndim - 1
        if ndim == 0 or axis % ndim != channel_axis or attrs.get("layout", "None") not in ("NCHW", "NCW",
                                                                                           "NCDHW", "None"):
            return None
        weight = layer["inputs"][1][0]
        if self.nodes[weight]["op"] != "null" or self.readers.get((weight, 0), 0) != 1:
            return None   # a weight shared with another layer cannot take this layer's scale
        return layer_id

    def fold(self, layer, bn):
        """The names of the folded weight and bias of ``layer`` (their values in ``values``)."""
        scale, _, mean, beta = self._stats(bn)
        weight_name = self.nodes[layer["inputs"][1][0]]["name"]
        W = self.values[weight_name]
        has_bias = not _bool(layer.get("attrs", {}).get("no_bias", "False")) and len(layer["inputs"]) > 2
        bias = self.values[self.nodes[layer["inputs"][2][0]]["name"]].astype(np.float64) if has_bias else 0.0
        new_w, new_b = self._folded_names(layer, weight_name)
        self.values[new_w] = (W.astype(np.float64) * scale.reshape((-1,) + (1,) * (W.ndim - 1))).astype(W.dtype)
        self.values[new_b] = ((bias - mean) * scale + beta).astype(W.dtype)
        return new_w, new_b

    def _folded_names(self, layer, weight_name):
        """The layer's own names (``conv1_weight`` -> ``conv1_weight``, ``conv1_bias``) for its folded values,
        unless another node reads one of them; then suffixed ones."""
        own = {self.nodes[e[0]]["name"] for e in layer["inputs"][1:]}
        prefix = weight_name[:-len("_weight")] if weight_name.endswith("_weight") else weight_name
        names = (weight_name, f"{prefix}_bias")
        if any(n in self.values and n not in own for n in names):
            names = (f"{weight_name}_bn_folded", f"{prefix}_bias_bn_folded")
        return names

    def scale_and_shift(self, nid, node):
        """``X * scale + shift`` with per-channel constants shaped to broadcast along the axis."""
        scale, shift, _, _ = self._stats(node)
        data = node["inputs"][0]
        ndim = len(self.shapes.get(self.nodes[data[0]]["name"], ())) or 4
        axis = int(node.get("attrs", {}).get("axis", 1)) % ndim
        shape = [1] * ndim
        shape[axis] = -1
        dtype = self.values[self.nodes[node["inputs"][1][0]]["name"]].dtype
        name = node["name"]
        self.values[f"{name}_scale"] = scale.reshape(shape).astype(dtype)
        self.values[f"{name}_shift"] = shift.reshape(shape).astype(dtype)
        scaled = self.emit("broadcast_mul", f"{name}_scaled", [self.new_entry((data[0], data[1])),
                                                                self.var(f"{name}_scale")])
        self.new[(nid, 0)] = self.emit("broadcast_add", f"{name}_shifted", [scaled, self.var(f"{name}_shift")])


ONNX_OPSET = 13   # what MXNet 1.9.1's translations are written for
ONNX_EXTRA = "pip install -e \".[onnx]\" (onnx 1.18.0 and onnxruntime; Python 3.9-3.13)"


def require_onnx():
    """The onnx module MXNet 1.9.1's exporter can use, or an ExportError saying what to install."""
    try:
        import onnx
    except ImportError:
        raise ExportError(f"--format onnx needs onnx: {ONNX_EXTRA}") from None
    if not hasattr(onnx, "mapping"):
        # MXNet's exporter imports onnx.mapping, which onnx 1.19 removed; it would then report, misleadingly,
        # that onnx is not installed
        raise ExportError(f"--format onnx needs onnx < 1.19 (MXNet 1.9.1's exporter reads onnx.mapping, which "
                          f"onnx {onnx.__version__} no longer has): {ONNX_EXTRA}; no onnx release for Python "
                          f"3.14 has it")
    return onnx


@contextlib.contextmanager
def _onnx_opset(onnx, version):
    """MXNet's exporter asks ``onnx.defs.onnx_opset_version()`` (the installed onnx's newest opset, 23 for
    onnx 1.18) which opset to translate to and check against, and has no argument for it.  Its
    translations are opset 13's at the newest (ReduceMean with ``axes`` as an attribute, which opset 18
    made an input), so it is told 13 while it runs, its graph check included."""
    newest, context = onnx.defs.onnx_opset_version, onnx.checker.DEFAULT_CONTEXT
    imports = context.opset_imports
    onnx.defs.onnx_opset_version = lambda: version
    context.opset_imports = {"": version}     # the graph check the exporter runs, with its default context
    try:
        yield
    finally:
        onnx.defs.onnx_opset_version = newest
        context.opset_imports = imports


def save_onnx(graph, arrays, path, input_shape, input_name=INPUT_NAME, output_name="logits"):
    """``path`` (.onnx, opset 13): input ``input_name`` with a free batch dimension, output ``output_name``;
    written atomically.  ``graph`` must hold only ops MXNet's exporter translates (a folded graph does)."""
    import tempfile

    import mxnet as mx
    onnx = require_onnx()
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "raw.onnx")
        with _onnx_opset(onnx, ONNX_OPSET):
            mx.onnx.export_model(graph, dict(arrays), [tuple(input_shape)], [np.float32], raw, dynamic=True,
                                 dynamic_input_shapes=[(None,) + tuple(input_shape[1:])])
        model = onnx.load(raw)
    # the exporter stamps the installed onnx's newest opset; its translations are opset 13's
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = ONNX_OPSET
    # weights are initializers, not inputs a caller must feed
    weights = {init.name for init in model.graph.initializer}
    kept = [i for i in model.graph.input if i.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    old = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [output_name if o == old else o for o in node.output]
    model.graph.output[0].name = output_name
    onnx.checker.check_model(model)
    atomic_write_bytes(path, model.SerializeToString())
    return path
