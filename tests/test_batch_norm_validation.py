"""Every documented batch_norm argument error, with a message that names the problem."""
import numpy as np
import pytest

import mxbn
import mxnet as mx
from mxnet import nd


def args(shape=(4, 3, 2, 2), C=None, dtype="float32"):
    C = shape[1] if C is None else C
    return dict(X=nd.ones(shape, dtype=dtype), gamma=nd.ones(C), beta=nd.zeros(C), is_training=True,
                moving_mean=nd.zeros(C), moving_vari=nd.ones(C))


@pytest.mark.parametrize("impl", mxbn.BATCH_NORM_IMPLS)
@pytest.mark.parametrize("change,error,pattern", [
    (dict(X=nd.ones((5,))), ValueError, r"rank >= 2.*\(5,\)"),
    (dict(gamma=nd.ones(4)), ValueError, r"gamma has shape \(4,\), expected \(3,\)"),
    (dict(beta=nd.ones((3, 1))), ValueError, r"beta has shape \(3, 1\), expected \(3,\)"),
    (dict(moving_mean=nd.zeros(2)), ValueError, r"moving_mean has shape \(2,\), expected \(3,\)"),
    (dict(moving_vari=nd.ones(5)), ValueError, r"moving_vari has shape \(5,\), expected \(3,\)"),
    (dict(momentum=1.5), ValueError, r"momentum must be a number in \[0, 1\]"),
    (dict(momentum=-0.1), ValueError, r"momentum"),
    (dict(eps=0.0), ValueError, r"eps must be a number > 0"),
    (dict(eps=-1e-5), ValueError, r"eps"),
    (dict(axis=4), ValueError, r"axis must be an integer in \[-4, 3\]"),
    (dict(axis=-5), ValueError, r"axis must be an integer in \[-4, 3\]"),
    (dict(X=np.ones((4, 3))), TypeError, r"X must be an mxnet NDArray, got ndarray"),
    (dict(gamma=[1.0, 1.0, 1.0]), TypeError, r"gamma must be an mxnet NDArray"),
    (dict(X=nd.ones((4, 3, 2, 2), dtype="int32")), TypeError, r"X has dtype int32"),
    (dict(gamma=nd.ones(3, dtype="float64")), TypeError, r"gamma has dtype float64, expected float32"),
    (dict(is_training="yes"), TypeError, r"is_training must be a bool"),
    (dict(impl="cudnn"), ValueError, r"impl must be one of"),
])
def test_bad_arguments_raise_clear_errors(impl, change, error, pattern):
    kwargs = dict(args(), impl=impl)
    kwargs.update(change)
    with pytest.raises(error, match=pattern):
        mxbn.batch_norm(**kwargs)


@pytest.mark.parametrize("impl", mxbn.BATCH_NORM_IMPLS)
def test_arrays_on_different_contexts_are_rejected(impl):
    kwargs = args()
    kwargs["gamma"] = nd.ones(3, ctx=mx.cpu(1))  # a distinct CPU context
    with pytest.raises(ValueError, match=r"gamma is on cpu\(1\) but X is on cpu\(0\)"):
        mxbn.batch_norm(impl=impl, **kwargs)


@pytest.mark.parametrize("impl", mxbn.BATCH_NORM_IMPLS)
@pytest.mark.parametrize("shape,axis", [((1, 3), 1), ((1, 3, 1, 1), 1), ((1, 3, 1), 1),
                                        # axis 0: the channels are the rows, one value each
                                        ((4, 1), 0), ((3, 1, 1), 0)])
def test_single_value_per_channel_training_batch_raises_and_keeps_state(impl, shape, axis):
    C = shape[axis]
    mm, mv = nd.array(np.arange(C, dtype="f4")), nd.array(np.arange(C, dtype="f4") + 1)
    X = nd.array(np.random.RandomState(0).normal(size=shape))
    with pytest.raises(ValueError, match=r"at least 2 values per channel.*moving statistics were not updated"):
        mxbn.batch_norm(X, nd.ones(C), nd.zeros(C), True, mm, mv, axis=axis, impl=impl)
    np.testing.assert_array_equal(mm.asnumpy(), np.arange(C))
    np.testing.assert_array_equal(mv.asnumpy(), np.arange(C) + 1)
    # the same batch is fine in inference
    mxbn.batch_norm(X, nd.ones(C), nd.zeros(C), False, mm, mv, axis=axis, impl=impl).wait_to_read()


def test_help_shows_the_conventions():
    doc = mxbn.batch_norm.__doc__
    for phrase in ("momentum * moving + (1 - momentum) * batch_stat", "PyTorch", "biased",
                   "in place", "is_training", "single value per channel", "axis"):
        assert phrase in doc
