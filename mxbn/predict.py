"""Inference with a trained LeNet: its checkpoint recipe, its forward function, and the
classification of image files (the logic of ``scripts/predict.py``).  Below the training job:
``mxbn.run`` imports this module, never the other way round.

The LeNet sees what it was trained on: one 28x28 grayscale channel scaled to
[0, 1].  Other images are converted (colour to grayscale, any size resized to
28x28), and each conversion is reported with the prediction.  A file that is
not a readable image gets an error of its own; the other files are still
classified.
"""
import functools
import os
from dataclasses import dataclass, field

import numpy as np

from .context import resolve_context
from .data import DATASETS, IMAGE_SIZE, images_to_device
from .checkpoint import CheckpointError, check_compatible, load_checkpoint
from .config import TrainConfig
from .jit import jit
from .models import lenet, lenet_params
from .train import predict

__all__ = ["ImageError", "Prediction", "load_image", "classify_images", "load_lenet_checkpoint", "make_net",
           "lenet_frozen_bn"]


def lenet_frozen_bn(params, state, X, is_training, **options):
    """``models.lenet`` whose batch norms always normalize with, and keep, their moving statistics
    (``--bn-mode frozen``): in training too, whatever ``is_training`` says, so nothing can unfreeze them."""
    return lenet(params, state, X, False, **options)


def net_title(config, dataset_name):
    """"LeNet-BN on Fashion-MNIST": the net's name with its normalization, for titles."""
    suffix = {"none": "", "bn": "-BN", "renorm": "-BRN", "gn": "-GN", "ln": "-LN", "in": "-IN"}
    return f"LeNet{suffix[config.normalization]} on {dataset_name}"


def make_net(config):
    """The LeNet forward function for ``config``: one static graph (mxbn.jit) or the functional ops one by one."""
    forward = lenet_frozen_bn if config.bn_mode == "frozen" else lenet
    net = functools.partial(forward, bn_impl=config.bn_impl, bn_momentum=config.bn_momentum,
                            gn_groups=config.gn_groups)
    return jit(net, layout_pass=config.layout_pass) if config.graph == "static" else net


def load_lenet_checkpoint(path, ctx):
    """(checkpoint, its TrainConfig) of a LeNet checkpoint, checked against the architecture it names."""
    ckpt = load_checkpoint(path, ctx)
    config = TrainConfig.from_dict(ckpt["meta"]["config"])
    if ckpt["meta"].get("model") != "lenet":
        raise CheckpointError(f"{path}: holds a {ckpt['meta'].get('model')!r} model, expected 'lenet'")
    expected_params, expected_state = lenet_params(ctx, init=config.init, seed=0, norm=config.normalization)
    check_compatible(path, expected_params, ckpt["params"], "parameters")
    check_compatible(path, expected_state, ckpt["state"], "batch-norm statistics")
    return ckpt, config


class ImageError(ValueError):
    """A file is not an image mxbn can read."""


@dataclass
class Prediction:
    path: str
    class_name: str = None
    probability: float = None
    notes: list = field(default_factory=list)
    error: str = None


def load_image(path):
    """(uint8 array (28, 28), notes): the image as the LeNet expects it, and what was converted."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as image:
            image.load()
            notes = []
            if image.mode != "L":
                notes.append(f"converted from {image.mode} to grayscale")
                image = image.convert("L")
            if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                notes.append(f"resized from {image.size[0]}x{image.size[1]} to {IMAGE_SIZE}x{IMAGE_SIZE}")
                image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
            pixels = np.asarray(image, dtype=np.uint8)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise ImageError(f"{path}: not a readable image (PNG or JPEG expected): {e}") from None
    return pixels, notes


def classify_images(checkpoint, paths, ctx_spec="cpu", log=print):
    """One :class:`Prediction` per path; a bad checkpoint raises CheckpointError before any file is read."""
    ctx = resolve_context(ctx_spec, warn=log, task="predicting")
    ckpt, config = load_lenet_checkpoint(checkpoint, ctx)
    names = DATASETS[config.dataset].class_names
    net = make_net(config)
    results, images = [], []
    for path in paths:
        try:
            pixels, notes = load_image(path)
        except ImageError as e:
            results.append(Prediction(path, error=str(e)))
            continue
        results.append(Prediction(path, notes=notes))
        images.append(pixels)
    if images:
        X = images_to_device(np.stack(images), ctx)
        index, probability = predict(net, ckpt["params"], ckpt["state"], X, config.batch_size)
        ok = [r for r in results if r.error is None]
        for result, k, p in zip(ok, index, probability):
            result.class_name, result.probability = names[k], float(p)
    return results


def format_prediction(result):
    if result.error:
        return f"error: {result.error}"
    notes = f"  ({'; '.join(result.notes)})" if result.notes else ""
    return f"{os.fspath(result.path)}: {result.class_name} ({result.probability:.3f}){notes}"
