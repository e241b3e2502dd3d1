"""Export a trained LeNet checkpoint (``checkpoint.params`` or ``best.params``) for use outside mxbn, and
check the export against mxbn's own inference (the logic of ``scripts/export.py``).

The exported graph is the inference graph with batch norm folded (:mod:`mxbn.export`).  After writing,
the export is loaded back from its files alone (MXNet's ``mx.model.load_checkpoint``) and run on the first
test images of the checkpoint's dataset; the command fails, and removes what it wrote, when a softmax
probability differs from mxbn's by more than ``PARITY_TOLERANCE``.
"""
import json
import os
from dataclasses import dataclass

import numpy as np

from .atomic import writable_dir
from .data import load_dataset, to_device
from .export import ExportError, fold_batch_norm, inference_graph, require_onnx, save_mxnet, save_onnx
from .jit import unjitted
from .predict import load_lenet_checkpoint, make_net

__all__ = ["export_checkpoint", "check_parity", "Parity", "PARITY_TOLERANCE", "FORMATS"]

FORMATS = ("mxnet", "onnx")
# Folding reorders float32 products (w * s instead of BN after the convolution): probabilities agree to
# about 1e-7; a wrong fold or a corrupted file moves them by far more.
PARITY_TOLERANCE = 1e-4
PARITY_IMAGES = 1000


@dataclass
class Parity:
    images: int
    max_probability_difference: float
    top1_agreement: float
    tolerance: float = PARITY_TOLERANCE

    @property
    def ok(self):
        return self.max_probability_difference <= self.tolerance

    def __str__(self):
        return (f"parity on {self.images} test images: max probability difference "
                f"{self.max_probability_difference:.2e} (tolerance {self.tolerance:g}), top-1 agreement "
                f"{self.top1_agreement:.4f}: {'ok' if self.ok else 'FAILED'}")


def _softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z.astype(np.float64))
    return e / e.sum(axis=1, keepdims=True)


def _parity(expected_probabilities, X, logits_of):
    """Parity of ``logits_of`` (a float32 numpy batch -> numpy logits) against mxbn's probabilities on ``X``,
    256 images at a time."""
    images = X.asnumpy().astype(np.float32)
    got = np.concatenate([_softmax(logits_of(images[i:i + 256])) for i in range(0, len(images), 256)])
    return Parity(images=len(images), max_probability_difference=float(np.abs(got - expected_probabilities).max()),
                  top1_agreement=float((got.argmax(1) == expected_probabilities.argmax(1)).mean()))


def check_parity(prefix, expected_probabilities, X):
    """Load ``PREFIX-symbol.json``/``PREFIX-0000.params`` as MXNet's own loader does (the files alone, none of
    mxbn's objects) and compare the softmax of its logits with mxbn's ``expected_probabilities``."""
    import mxnet as mx
    symbol, args, aux = mx.model.load_checkpoint(prefix, 0)
    args = {k: v.as_in_context(X.context) for k, v in args.items()}
    aux = {k: v.as_in_context(X.context) for k, v in aux.items()}

    def logits_of(images):
        batch = mx.nd.array(images, ctx=X.context)
        executor = symbol.bind(X.context, dict(args, data=batch), aux_states=aux, grad_req="null")
        return executor.forward(is_train=False)[0].asnumpy()
    return _parity(expected_probabilities, X, logits_of)


def check_onnx_parity(path, expected_probabilities, X):
    """Run ``path`` in onnxruntime on ``X`` and compare with mxbn's probabilities."""
    try:
        import onnxruntime
    except ImportError:
        raise ExportError("the ONNX parity check needs onnxruntime: pip install -e \".[onnx]\"") from None
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return _parity(expected_probabilities, X, lambda images: session.run(None, {"data": images})[0])


def export_checkpoint(checkpoint, out_dir, fmt="mxnet", name="lenet", ctx=None, data_dir=None,
                      parity_images=PARITY_IMAGES, log=print):
    """Write the export of ``checkpoint`` into ``out_dir``; returns (paths written, Parity)."""
    import mxnet as mx
    ctx = ctx or mx.cpu()
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {list(FORMATS)}, got {fmt!r}")
    if fmt == "onnx":
        require_onnx()   # before any work: which onnx is needed, if this one will not do
    ckpt, config = load_lenet_checkpoint(checkpoint, ctx)
    writable_dir(out_dir, "--out", ExportError)
    dataset = load_dataset(config.dataset, data_dir or config.data_dir)
    X, _ = to_device(dataset.test_images, dataset.test_labels, ctx, parity_images)
    net = unjitted(make_net(config))
    expected = _softmax(net(ckpt["params"], ckpt["state"], X, False).asnumpy())
    one_image = (1,) + X.shape[1:]
    graph, arrays = inference_graph(net, ckpt["params"], ckpt["state"], one_image)
    folded, folded_arrays = fold_batch_norm(graph, arrays, one_image)
    prefix = os.path.join(out_dir, name)
    if fmt == "mxnet":
        paths = save_mxnet(folded, folded_arrays, prefix)
        parity = check_parity(prefix, expected, X)
    else:
        paths = (save_onnx(folded, folded_arrays, prefix + ".onnx", one_image),)
        parity = check_onnx_parity(paths[0], expected, X)
    log(f"wrote {', '.join(paths)} (batch norm folded into {_folded_count(graph, folded)} layer(s))")
    log(str(parity))
    if not parity.ok:
        for path in paths:
            os.remove(path)
        raise ExportError(f"the export of {checkpoint} does not reproduce mxbn's inference ({parity}); "
                          f"removed {', '.join(paths)}")
    return paths, parity


def _ops(graph):
    return [node["op"] for node in json.loads(graph.tojson())["nodes"]]


def _folded_count(graph, folded):
    """Batch norms folded into a layer: those of ``graph`` that ``folded`` holds neither as a BatchNorm nor
    as a scale and shift (the one broadcast_mul each of those becomes)."""
    return _ops(graph).count("BatchNorm") - _ops(folded).count("broadcast_mul") + _ops(graph).count("broadcast_mul")
