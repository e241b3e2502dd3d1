import numpy as np

import mxnet as mx
from mxnet import nd

from mxbn.augment import flip_shift, random_flip_shift


def shifted(img, flip, dx, dy):
    """Float64 reference: flip, then move content by (dx, dy) with zero fill."""
    img = img[..., ::-1] if flip else img
    out = np.zeros_like(img)
    h, w = img.shape[-2:]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = img[..., ys, xs]
    return out


def test_flip_shift_matches_reference():
    rng = np.random.default_rng(0)
    x = rng.random((6, 2, 9, 8)).astype("f4")
    flips = [False, True, False, True, True, False]
    dxs, dys = [0, 0, 2, -1, 3, -2], [0, 1, -2, 0, 2, 1]
    got = flip_shift(nd.array(x), flips, dxs, dys).asnumpy()
    for i in range(6):
        # bilinear weights at integer offsets are 1 and 0 up to float32 rounding
        np.testing.assert_allclose(got[i], shifted(x[i], flips[i], dxs[i], dys[i]), rtol=1e-5, atol=1e-5)


def test_random_flip_shift_is_seeded_and_stays_on_the_context():
    x = nd.array(np.random.default_rng(1).random((8, 1, 28, 28)))
    a = random_flip_shift(x, np.random.default_rng(5))
    b = random_flip_shift(x, np.random.default_rng(5))
    assert a.context == mx.cpu() and a.shape == x.shape
    np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())
    same = random_flip_shift(x, np.random.default_rng(5), flip=False, max_shift=0)
    np.testing.assert_allclose(same.asnumpy(), x.asnumpy(), rtol=1e-5, atol=1e-5)  # sampling-weight rounding
