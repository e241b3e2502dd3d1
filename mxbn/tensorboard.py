"""A training run in TensorBoard (``train_cnn.py --tensorboard DIR``), through tensorboardX.

What goes in, all read from what the run computes anyway (no host sync inside an epoch):

* ``config`` (text): the resolved configuration, once;
* per epoch (step = epoch): ``loss/train``, ``loss/validation``, ``loss/test``, the same under
  ``accuracy/``, ``lr``, ``images_per_sec`` and, when clipping, ``clipped``;
* per epoch, the BN layers' inputs on a fixed batch of test images as histograms
  (``bn/<layer>/input``: one inference forward per epoch);
* with ``--trace-bn``, its percentile bands as scalars (``bn_trace/<layer>/<before|after>_p<q>``, step =
  training step), at the end;
* at the end, ``confusion.png`` and ``predictions.png`` as images.

tensorboardX is an optional dependency (the ``[tensorboard]`` extra); without it ``--tensorboard`` is a
usage error that names the extra.
"""
import json

__all__ = ["TensorBoardLog", "require_tensorboardx", "EXTRA"]

EXTRA = "pip install -e \".[tensorboard]\" (tensorboardX)"
HISTOGRAM_IMAGES = 256


def require_tensorboardx():
    """tensorboardX's SummaryWriter, or ImportError naming the extra."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ImportError(f"--tensorboard needs tensorboardX: {EXTRA}") from None
    return SummaryWriter


class TensorBoardLog:
    """Writes a run's event file into ``log_dir``; ``bn_inputs(params, state)`` -> {layer: NDArray} or None."""

    def __init__(self, log_dir, config, bn_inputs=None):
        self.writer = require_tensorboardx()(logdir=log_dir)
        self.bn_inputs = bn_inputs
        self.writer.add_text("config", "```\n" + json.dumps(config.to_dict(), indent=1, sort_keys=True) + "\n```", 0)

    def epoch(self, record, params, state):
        step = record["epoch"]
        for split, label in (("train", "train"), ("val", "validation"), ("test", "test")):
            if f"{split}_loss" in record:
                self.writer.add_scalar(f"loss/{label}", record[f"{split}_loss"], step)
                self.writer.add_scalar(f"accuracy/{label}", record[f"{split}_acc"], step)
        self.writer.add_scalar("lr", record["lr"], step)
        self.writer.add_scalar("images_per_sec", record["images_per_sec"], step)
        if record.get("clipped") is not None:
            self.writer.add_scalar("clipped", record["clipped"], step)
        if self.bn_inputs is not None:
            for layer, values in self.bn_inputs(params, state).items():
                self.writer.add_histogram(f"bn/{layer}/input", values.asnumpy().ravel(), step)
        self.writer.flush()

    def bn_trace(self, data):
        """The --trace-bn bands (``bn_trace.json``'s data) as scalars over training steps."""
        for layer, bands in data["layers"].items():
            for side in ("before", "after"):
                for t, step in enumerate(data["steps"]):
                    for q, value in zip(data["percentiles"], bands[side][t]):
                        self.writer.add_scalar(f"bn_trace/{layer}/{side}_p{q:g}", value, step)

    def images(self, paths, step):
        """PNG files (by tag) as images."""
        import matplotlib.image
        for tag, path in paths.items():
            pixels = matplotlib.image.imread(path)[..., :3]   # RGB, floats in [0, 1]
            self.writer.add_image(tag, pixels, step, dataformats="HWC")

    def close(self):
        self.writer.close()
