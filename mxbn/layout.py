"""The layout pass of :func:`mxbn.jit`: the same function, rewritten so that oneDNN runs its fast CPU kernels.

MXNet 1.9.1 gives a convolution or batch norm oneDNN's blocked memory layout
only when the channel count is a multiple of the SIMD block (16 floats with
AVX-512, 8 with AVX2); otherwise both fall back to im2col+gemm and a plain C++
batch norm.  MXNet's own ``relu`` operator is not a oneDNN op either, so every
chain of oneDNN layouts is broken by a reorder at it.  The pass, on the traced
graph (MXNet's JSON form, node by node in topological order):

* **pads channels**: a convolution with C output channels (C not a multiple
  of the block, padding to at most twice C) gets zero filters up to the next
  multiple, made inside the graph (``_zeros`` concatenated to the weight and
  bias); the padded channels flow through the ops that act per channel and
  keep them finite (training-mode BatchNorm on mxbn's scratch statistics, with
  gamma padded by ones and beta by zeros; Activation; Pooling) and into the
  next convolution, whose weight gets zero input channels; every other
  consumer, every graph output and BatchNorm's batch statistics see the real
  channels only (a ``slice_axis``).  A padded channel is exactly 0 after the
  convolution and after BN (mean 0, variance 0, ``beta`` 0), and its weights
  in the next convolution are 0, so the real channels' values and gradients
  are those of the unpadded graph up to float32 rounding (the fast kernels
  sum in another order);
* writes the relu of a training batch norm as ``Activation(act_type="relu")``
  (the same numbers for finite values) and moves it after the max-pooling it
  feeds (they commute, forward and backward: max-pooling picks the same
  element, relu masks the same gradient), so that it runs on a quarter of the
  values.  oneDNN's relu turns a NaN into 0 where MXNet's keeps it; a batch
  norm's output is non-finite channel-wide exactly when its batch statistics
  are, so the pass adds their NaN flag (0, or NaN) to the bias of the layer
  that reads the relu's result: a NaN the traced graph had still reaches the
  loss, and the trainer's non-finite check still sees it.  Other relus stay
  MXNet's.

Parameters, state, gradients and checkpoints keep their real shapes: only the
graph changes.  ``mxbn.jit(fn, layout_pass=False)`` turns it off.
"""
import ast
import collections
import functools
import json


from ._graph_json import GraphWriter, consumers, entry

__all__ = ["layout_pass", "simd_block", "padded_channels"]

# MXNet's dtype codes in a var's __dtype__ attribute
_DTYPE_CODES = {"0": "float32", "1": "float64", "2": "float16"}
# the ops a convolution's padded channels pass through (each acts per channel and keeps them finite; a batch
# norm's relu follows its batch norm): a convolution is padded only if one of these, or a convolution, reads it
_PER_CHANNEL = {"Pooling", "BatchNorm"}
# padding a layer to more than this many times its channels costs more than the fast kernel saves
MAX_PAD_RATIO = 2.0


@functools.lru_cache(maxsize=1)
def simd_block():
    """oneDNN's channel block on this CPU: 16 (AVX-512), 8 (AVX2) or 0 (neither known: no padding)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return 0
    return 16 if "avx512f" in flags else 8 if "avx2" in flags else 0


def padded_channels(C, block):
    """C rounded up to a multiple of ``block``, or C itself where padding does not pay."""
    if block <= 0 or C % block == 0:
        return C
    padded = -(-C // block) * block
    return padded if padded <= MAX_PAD_RATIO * C else C


def layout_pass(graph, scratch, block):
    """(graph, scratch) rewritten as the module docstring says.

    ``scratch`` maps the names of mxbn's scratch vars (BatchNorm's throwaway
    aux arrays) to (shape, dtype, fill); a padded BatchNorm gets scratch vars
    of its padded size, and the result holds the scratch vars the new graph uses.
    """
    spec = json.loads(graph.tojson())
    heads = [(h[0], h[1]) for h in spec["heads"]]
    rewriter = _Rewriter(spec["nodes"], heads, scratch, block)
    for nid in range(len(spec["nodes"])):
        rewriter.visit(nid)
    new_graph = rewriter.symbol([rewriter.carrying(h) for h in heads], spec.get("attrs", {}))
    used = set(new_graph.list_inputs())
    return new_graph, {name: s for name, s in rewriter.scratch.items() if name in used}


# a value whose channels were padded: where the padded form is, which axis, the real and the padded size
Padded = collections.namedtuple("Padded", "entry axis real size")


class _Rewriter(GraphWriter):
    """Copies the nodes one by one into ``out``, padding, re-writing and slicing as it goes.

    Entries are (node index, output index) pairs, old ones in the traced graph, new ones in ``out``.
    """

    def __init__(self, nodes, heads, scratch, block):
        super().__init__()
        self.nodes = nodes
        self.scratch = dict(scratch)
        self.block = block
        self.copied = {}      # old node -> new node computing the same real values
        self.real_of = {}     # old entry -> new entry holding its real value
        self.padded = {}      # old entry -> Padded
        self.consumers = consumers(nodes, heads)
        self.deferred = _relus_to_defer(nodes, self.consumers)
        self.poison = {}      # old entry -> new (1,) entry: NaN where the traced graph's value is NaN
        self.poisons = {}     # batch norm node -> its NaN flag
        self.carried = {}     # old entry -> its real value with the NaN flag added

    # ------------------------------------------------------------------ emitting nodes
    def real(self, entry):
        """The new entry holding ``entry``'s real value (for a padded one a slice, made once)."""
        if entry[0] in self.copied:
            return (self.copied[entry[0]], entry[1])
        if entry not in self.real_of:
            p = self.padded[entry]
            name = f"{self.nodes[entry[0]]['name']}_out{entry[1]}_unpadded"
            self.real_of[entry] = self.emit("slice_axis", name, [p.entry], dict(axis=p.axis, begin=0, end=p.real))
        return self.real_of[entry]

    def concat_constant(self, entry, shape, axis, fill, dtype, name):
        """``entry`` concatenated along ``axis`` with a constant block of ``shape`` made in the graph."""
        const = self.emit("_ones" if fill else "_zeros", f"{name}_pad", [], dict(shape=tuple(shape), dtype=dtype))
        return self.emit("Concat", f"{name}_padded", [entry, const], dict(dim=axis, num_args=2))

    def input_shape(self, entry):
        """(shape, dtype) of a graph input, None when the entry is computed or its shape is not recorded."""
        node = self.nodes[entry[0]]
        if node["op"] != "null":
            return None
        if node["name"] in self.scratch:
            shape, dtype, _ = self.scratch[node["name"]]
            return tuple(shape), dtype
        attrs = node.get("attrs", {})
        if "__shape__" not in attrs or attrs.get("__dtype__") not in _DTYPE_CODES:
            return None
        return tuple(ast.literal_eval(attrs["__shape__"])), _DTYPE_CODES[attrs["__dtype__"]]

    # ------------------------------------------------------------------ one node
    def visit(self, nid):
        node = self.nodes[nid]
        if nid in self.deferred:
            return   # a relu moved after the max-pooling it feeds: the pooling writes it
        handler = {"Convolution": self.convolution, "BatchNorm": self.batch_norm, "Pooling": self.pooling,
                   "relu": self.activation, "FullyConnected": self.dense}.get(node["op"])
        if handler is None or not handler(nid, node):
            inputs = [self.carrying(entry(node, k)) for k in range(len(node["inputs"]))]
            self.copied[nid] = self.emit(node["op"], node["name"], inputs, node.get("attrs"))[0]

    def _result(self, nid, new, padded_from=None, poison=None):
        """Record node ``nid``'s output 0: ``new``, padded as ``padded_from`` is (None: real)."""
        if padded_from is None:
            self.real_of[(nid, 0)] = new
        else:
            self.padded[(nid, 0)] = padded_from._replace(entry=new)
        if poison is not None:
            self.poison[(nid, 0)] = poison

    # ------------------------------------------------------------------ NaN propagation
    def carrying(self, entry):
        """``entry``'s real value, NaN where the traced graph's value would be (see bn_poison)."""
        value = self.real(entry)
        if entry not in self.poison:
            return value
        if entry not in self.carried:
            name = f"{self.nodes[entry[0]]['name']}_out{entry[1]}_nan_carrying"
            self.carried[entry] = self.emit("broadcast_add", name, [value, self.poison[entry]])
        return self.carried[entry]

    def bn_poison(self, bn):
        """A (1,) array: 0, or NaN when batch norm ``bn``'s batch statistics are not finite.

        MXNet's relu keeps a NaN; oneDNN's Activation makes it 0.  A batch norm's
        output is non-finite channel-wide exactly when its statistics are, so the
        relu that follows it may be oneDNN's if this flag is added where its
        result is used (a consumer's bias: free), as the traced graph's NaN would have been.
        """
        if bn not in self.poisons:
            mean, invstd = (self.padded[(bn, k)].entry if (bn, k) in self.padded else self.real((bn, k))
                            for k in (1, 2))
            name = self.nodes[bn]["name"]
            both = self.emit("elemwise_add", f"{name}_stats_sum", [mean, invstd])
            total = self.emit("sum", f"{name}_stats_total", [both])
            self.poisons[bn] = self.emit("_mul_scalar", f"{name}_nan_flag", [total], dict(scalar=0.0))
        return self.poisons[bn]

    def with_poison(self, bias, entry, size, dtype, name):
        """The bias of a layer reading ``entry``, carrying its NaN flag (a zero bias made if there is none)."""
        if entry not in self.poison:
            return bias
        if bias is None:
            bias = self.emit("_zeros", f"{name}_bias", [], dict(shape=(size,), dtype=dtype))
        return self.emit("broadcast_add", f"{name}_bias_nan_carrying", [bias, self.poison[entry]])

    # ------------------------------------------------------------------ the ops
    def activation(self, nid, node):
        source = entry(node, 0)
        if not _follows_batch_norm(self.nodes, node):
            return False   # keeps MXNet's relu, whose NaN nothing else would carry
        p = self.padded.get(source)
        new = self.emit("Activation", node["name"], [p.entry if p else self.real(source)], dict(act_type="relu"))
        self._result(nid, new, p, poison=self.bn_poison(source[0]))
        return True

    def pooling(self, nid, node):
        attrs = node.get("attrs", {})
        source = entry(node, 0)
        relu = self.nodes[source[0]] if source[0] in self.deferred else None
        if relu is not None:   # pool first, then the relu it replaces
            source = entry(relu, 0)
        p = self.padded.get(source) if attrs.get("layout", "None") in ("NCHW", "None") else None
        name = node["name"] if relu is None else f"{node['name']}_before_relu"
        new = self.emit("Pooling", name, [p.entry if p else self.real(source)], attrs)
        poison = self.poison.get(source)   # the pooled value is NaN where its input would have been
        if relu is not None:
            new = self.emit("Activation", relu["name"], [new], dict(act_type="relu"))
            poison = self.bn_poison(source[0])
        self._result(nid, new, p, poison)
        return True

    def dense(self, nid, node):
        data = entry(node, 0)
        attrs = node.get("attrs", {})
        known = self.input_shape(entry(node, 1))
        if data not in self.poison or known is None:
            return False
        no_bias = attrs.get("no_bias", "False") in ("True", "1")
        bias = None if no_bias else self.real(entry(node, 2))
        bias = self.with_poison(bias, data, known[0][0], known[1], node["name"])
        attrs = dict(attrs, no_bias=False)
        self._result(nid, self.emit("FullyConnected", node["name"], [self.real(data), self.real(entry(node, 1)),
                                                                     bias], attrs))
        return True

    def convolution(self, nid, node):
        attrs = dict(node.get("attrs", {}))
        data, weight = entry(node, 0), entry(node, 1)
        known = self.input_shape(weight)
        if known is None or attrs.get("num_group", "1") != "1" or attrs.get("layout", "None") not in ("NCHW", "None"):
            return False
        (c_out, c_in, *kernel), dtype = known
        c_new = padded_channels(c_out, self.block)
        if not any(self.nodes[c]["op"] in _PER_CHANNEL | {"Convolution"} and k == 0
                   for c, k in self.consumers.get((nid, 0), ())):
            c_new = c_out   # every consumer needs the real channels: the slice would cost what padding saves
        W = self.real(weight)
        p = self.padded.get(data)
        if p is not None:   # zero weights for the padded input channels
            W = self.concat_constant(W, (c_out, p.size - p.real, *kernel), 1, 0.0, dtype, f"{node['name']}_weight_in")
            c_in = p.size
        if c_new != c_out:
            W = self.concat_constant(W, (c_new - c_out, c_in, *kernel), 0, 0.0, dtype, f"{node['name']}_weight_out")
        inputs = [p.entry if p else self.real(data), W]
        bias = None if attrs.get("no_bias", "False") in ("True", "1") else self.real(entry(node, 2))
        if bias is not None and c_new != c_out:
            bias = self.concat_constant(bias, (c_new - c_out,), 0, 0.0, dtype, f"{node['name']}_bias")
        bias = self.with_poison(bias, data, c_new, dtype, node["name"])
        if bias is not None:
            inputs.append(bias)
            attrs["no_bias"] = False
        attrs["num_filter"] = c_new
        new = self.emit("Convolution", node["name"], inputs, attrs)
        self._result(nid, new, Padded(new, 1, c_out, c_new) if c_new != c_out else None)
        return True

    def batch_norm(self, nid, node):
        attrs = node.get("attrs", {})
        data, gamma, beta, mean, vari = (entry(node, k) for k in range(5))
        p = self.padded.get(data)
        if (p is None or data in self.poison or attrs.get("axis", "1") != "1" or float(attrs.get("eps", "1e-3")) < 1e-30
                or attrs.get("use_global_stats", "False") in ("True", "1")
                or not all(self.nodes[a[0]]["name"] in self.scratch for a in (mean, vari))
                or any(self.input_shape(a) is None for a in (gamma, beta))):
            return False   # the real channels only: mxbn's inference BN, user state, an eps that rounds to 0
        extra = (p.size - p.real,)
        inputs = [p.entry,
                  self.concat_constant(self.real(gamma), extra, 0, 1.0, self.input_shape(gamma)[1],
                                       f"{node['name']}_gamma"),
                  self.concat_constant(self.real(beta), extra, 0, 0.0, self.input_shape(beta)[1],
                                       f"{node['name']}_beta")]
        for aux in (mean, vari):   # the kernel's throwaway statistics, at the padded size
            old = self.nodes[aux[0]]["name"]
            _, dtype, fill = self.scratch[old]
            name = f"{old}_c{p.size}"
            self.scratch[name] = ((p.size,), dtype, fill)
            inputs.append(self.emit("null", name, []))
        new = self.emit("BatchNorm", node["name"], inputs, attrs)
        self.padded[(nid, 0)] = p._replace(entry=new)
        for k in (1, 2):   # the batch mean and inverse std: per channel, axis 0
            self.padded[(nid, k)] = Padded((new[0], k), 0, p.real, p.size)
        return True


def _follows_batch_norm(nodes, node):
    """Is ``node`` MXNet's relu of a training batch norm's output (whose NaN flag its statistics give)?"""
    source = nodes[entry(node, 0)[0]]
    return (node["op"] == "relu" and source["op"] == "BatchNorm" and entry(node, 0)[1] == 0
            and source.get("attrs", {}).get("output_mean_var") in ("True", "1"))


def _relus_to_defer(nodes, consumers):
    """Relus of a batch norm whose only consumer is a max-pooling: the pooling runs first, the relu after it."""
    deferred = set()
    for nid, node in enumerate(nodes):
        if node["op"] == "Pooling" and node.get("attrs", {}).get("pool_type", "max") == "max":
            source = entry(node, 0)
            if _follows_batch_norm(nodes, nodes[source[0]]) and consumers.get(source) == [(nid, 0)]:
                deferred.add(source[0])
    return deferred
