"""On-device augmentation of NCHW image batches: random horizontal flips and shifts.

The random decisions are drawn on the host from an explicit NumPy generator (so
they are reproducible and checkpointable); the pixels never leave the device.
A flip and an integer shift are one affine map per sample, applied with
MXNet's GridGenerator + BilinearSampler: at integer offsets bilinear sampling
reads one source pixel (weights 1 and 0 up to float32 rounding, ~1e-7), so the
result is a flip/shift with zero fill.
"""
import numpy as np
from mxnet import nd

__all__ = ["flip_shift", "random_flip_shift"]


def flip_shift(X, flip, shift_x, shift_y):
    """Flip (where ``flip[i]``) then shift sample i by (shift_x[i], shift_y[i]) pixels, zero fill.

    X: (N, C, H, W) NDArray; flip: bool array (N,); shifts: int arrays (N,)
    (positive = content moves right / down).
    """
    n, _, h, w = X.shape
    flip = np.asarray(flip, dtype=bool)
    # GridGenerator maps output coords (x, y) in [-1, 1] to input coords
    # theta @ (x, y, 1); one pixel is 2/(W-1) in those units.
    sx = np.where(flip, -1.0, 1.0)
    tx = -np.asarray(shift_x, dtype=np.float64) * 2.0 / (w - 1)
    ty = -np.asarray(shift_y, dtype=np.float64) * 2.0 / (h - 1)
    # A flip is x -> -x applied to the source; a shift samples from x - dx.
    theta = np.stack([sx, np.zeros(n), sx * tx, np.zeros(n), np.ones(n), ty], axis=1)
    grid = nd.GridGenerator(nd.array(theta, ctx=X.context, dtype="float32"), transform_type="affine",
                            target_shape=(h, w))
    return nd.BilinearSampler(X, grid)


def random_flip_shift(X, rng, flip=True, max_shift=2):
    """Each sample flipped with probability 1/2 (if ``flip``) and shifted by an integer
    in [-max_shift, max_shift] on each axis, drawn from ``rng``."""
    n = X.shape[0]
    flips = rng.random(n) < 0.5 if flip else np.zeros(n, dtype=bool)
    shifts = rng.integers(-max_shift, max_shift + 1, size=(2, n)) if max_shift else np.zeros((2, n), int)
    return flip_shift(X, flips, shifts[0], shifts[1])
