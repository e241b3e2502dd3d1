"""One seeding helper for every random source mxbn uses."""
import random

import numpy as np
import mxnet as mx

__all__ = ["seed_everything", "epoch_seed"]


def seed_everything(seed):
    """Seed Python's ``random``, NumPy's global generator and MXNet's generators
    (all contexts).  Returns a fresh ``np.random.Generator`` for the caller to pass
    around explicitly: mxbn's own randomness (init, shuffling, augmentation)
    comes from such generators, never from global state."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    mx.random.seed(seed)
    return np.random.default_rng(seed)


def epoch_seed(seed, epoch):
    """A seed for MXNet's generator at the start of ``epoch``: a resumed run
    reseeds with the same value an uninterrupted run used (MXNet's generator
    state cannot be saved in a checkpoint)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
