"""Rewriting a traced graph in MXNet's JSON form, node by node: what the layout pass (:mod:`mxbn.layout`) and
the export's batch-norm folding (:mod:`mxbn.export`) share.

An *entry* is a (node index, output index) pair.  A rewrite reads the old nodes in topological order and
emits new ones into a :class:`GraphWriter`, which makes the Symbol at the end.
"""
import json

from mxnet import sym

__all__ = ["entry", "consumers", "GraphWriter"]


def entry(node, k):
    """The (node, output) entry of a node's k-th input."""
    e = node["inputs"][k]
    return (e[0], e[1])


def consumers(nodes, heads):
    """entry -> [(consumer node, input position)]; a graph output (``heads``: entries) counts as (-1, -1)."""
    found = {}
    for nid, node in enumerate(nodes):
        for k, e in enumerate(node["inputs"]):
            found.setdefault((e[0], e[1]), []).append((nid, k))
    for h in heads:
        found.setdefault(tuple(h[:2]), []).append((-1, -1))
    return found


class GraphWriter:
    """The new graph's nodes, emitted in topological order."""

    def __init__(self):
        self.out = []

    def emit(self, op, name, inputs, attrs=None):
        """Append a node reading ``inputs`` (new entries); returns its output-0 entry."""
        node = {"op": op, "name": name, "inputs": [list(e) + [0] for e in inputs]}
        if attrs:
            node["attrs"] = {k: str(v) for k, v in attrs.items()}
        self.out.append(node)
        return (len(self.out) - 1, 0)

    def symbol(self, heads, attrs):
        """The Symbol whose outputs are the new entries ``heads`` (``attrs``: the traced graph's)."""
        spec = {"nodes": self.out, "heads": [list(h) + [0] for h in heads], "attrs": attrs,
                "arg_nodes": [i for i, n in enumerate(self.out) if n["op"] == "null"]}
        return sym.load_json(json.dumps(spec))
