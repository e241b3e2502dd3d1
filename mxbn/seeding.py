"""One seeding helper for every random source mxbn uses."""
import random

import numpy as np
import mxnet as mx

__all__ = ["seed_everything", "epoch_seed", "shuffle_rng", "augment_rng"]


def seed_everything(seed):
    """Seed Python's ``random``, NumPy's global generator and MXNet's generators
    (all contexts), for any code that draws from global state.  mxbn's own
    randomness never does: initialisers take a seed, and training draws come
    from the generators below, derived from the seed alone."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    mx.random.seed(seed)


def epoch_seed(seed, epoch):
    """A seed for MXNet's generator at the start of ``epoch``: a resumed run
    reseeds with the same value an uninterrupted run used (MXNet's generator
    state cannot be saved in a checkpoint)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def shuffle_rng(seed, epoch):
    """The generator that shuffles ``epoch``: derived from (seed, epoch) alone, so a
    resumed run draws the same permutation without carrying generator state."""
    return np.random.default_rng([seed, epoch, 0])


def augment_rng(seed, epoch, batch):
    """The generator for the augmentation of one batch, derived from (seed, epoch, batch)."""
    return np.random.default_rng([seed, epoch, batch, 1])


def precise_bn_rng(seed, epoch):
    """The generator that picks --precise-bn's training batches after ``epoch``, derived from (seed, epoch)."""
    return np.random.default_rng([seed, epoch, 2])
