"""Gradients for every grad_req of X, gamma and beta, in every batch-norm path.

MXNet's own BatchNorm test (test_operator.py::test_batchnorm) runs its operator
with grad_req null/write/add on data, gamma and beta over several iterations.
Here the same idea covers the whole matrix (26 combinations) x ranks 2-5 x every
axis x both impls, against the float64 NumPy reference:

* ``write``: after each backward the gradient is the reference gradient of that step;
* ``add``:   the gradient buffer starts at a non-zero value and accumulates every
  step's reference gradient (3 backward calls on 3 fresh batches);
* ``null``:  no gradient is written: the buffer keeps its starting value, or is
  gone (MXNet's backward detaches the buffer of a ``null`` variable: ``.grad``
  becomes None, for its own operators too).

Everything is float64, so the tolerances are float64's: rtol 1e-6 / atol 1e-9
(a BN forward+backward chains a few dozen roundings of ~1e-16 each).
"""
import itertools

import numpy as np
import pytest

import mxbn
from mxnet import autograd, nd

import reference as ref

F64 = dict(rtol=1e-6, atol=1e-9)
GRAD_REQS = ("null", "write", "add")
# (X, gamma, beta); all three "null" leaves nothing to differentiate (MXNet raises
# "no inputs ... require gradients" for any op), so 26 combinations.
REQ_MATRIX = [reqs for reqs in itertools.product(GRAD_REQS, repeat=3) if reqs != ("null",) * 3]
STEPS = 3            # backward calls per case: enough to see "add" accumulate and "write" overwrite
START_GRAD = 7.0     # the value gradient buffers start at; "null" must leave it, "add" adds to it
MOMENTUM, EPS = 0.9, 1e-5  # MXNet's test's settings

# Every axis of ranks 2-5, axis 0 included (the operator accepts any axis).
SHAPES = [(4, 3), (4, 3, 5), (4, 3, 2, 5), (3, 2, 3, 2, 4)]
LAYOUTS = [(shape, axis) for shape in SHAPES for axis in range(len(shape))]


def _layout_id(layout):
    shape, axis = layout
    return "x".join(map(str, shape)) + f"-axis{axis}"


def _attach(value, grad_req):
    array = nd.array(value, dtype="float64")
    array.attach_grad(grad_req=grad_req)
    array.grad[:] = START_GRAD
    return array


def _grad_matches(array, grad_req, expected):
    if grad_req == "null" and array.grad is None:
        return True
    return array.grad is not None and np.allclose(array.grad.asnumpy(), expected, **F64)


def _expected_grads(grad_req, per_step, shape):
    """What the gradient buffer must hold after each step, for one argument."""
    held = np.full(shape, START_GRAD)
    expected = []
    for grad in per_step:
        if grad_req == "write":
            held = grad
        elif grad_req == "add":
            held = held + grad
        expected.append(held)
    return expected


def run_matrix_case(bn_call, shape, axis, reqs, seed):
    """STEPS recorded forward+backward calls of bn_call on fresh data; compare every buffer each step.

    bn_call(X, gamma, beta, moving_mean, moving_vari) -> Y, in training mode.
    """
    rs = np.random.RandomState(seed)
    C = shape[axis]
    gamma0, beta0 = rs.uniform(0.5, 1.5, C), rs.normal(size=C)
    xs = [rs.normal(0.5, 2.0, size=shape) for _ in range(STEPS)]
    dys = [rs.normal(size=shape) for _ in range(STEPS)]
    X = _attach(xs[0], reqs[0])
    G, B = _attach(gamma0, reqs[1]), _attach(beta0, reqs[2])
    MM, MV = nd.zeros(C, dtype="float64"), nd.ones(C, dtype="float64")
    ref_mm, ref_mv = np.zeros(C), np.ones(C)
    per_step = {"X": [], "gamma": [], "beta": []}
    for x, dy in zip(xs, dys):
        _, ref_mm, ref_mv = ref.batch_norm_forward(x, gamma0, beta0, ref_mm, ref_mv, True, MOMENTUM, EPS, axis)
        dx, dgamma, dbeta = ref.batch_norm_backward(x, gamma0, dy, ref_mm, ref_mv, True, EPS, axis)
        per_step["X"].append(dx)
        per_step["gamma"].append(dgamma)
        per_step["beta"].append(dbeta)
    expected = {name: _expected_grads(req, per_step[name], arr.shape)
                for name, req, arr in zip(("X", "gamma", "beta"), reqs, (X, G, B))}
    failures = []
    for step, (x, dy) in enumerate(zip(xs, dys)):
        X[:] = nd.array(x, dtype="float64")
        with autograd.record():
            Y = bn_call(X, G, B, MM, MV)
        Y.backward(nd.array(dy, dtype="float64"))
        for name, req, arr in zip(("X", "gamma", "beta"), reqs, (X, G, B)):
            if not _grad_matches(arr, req, expected[name][step]):
                failures.append(f"step {step}: {name}.grad wrong (grad_req {req!r})")
    # moving statistics do not depend on grad_req
    np.testing.assert_allclose(MM.asnumpy(), ref_mm, **F64)
    np.testing.assert_allclose(MV.asnumpy(), ref_mv, **F64)
    return failures


@pytest.mark.parametrize("impl", mxbn.BATCH_NORM_IMPLS)
@pytest.mark.parametrize("layout", LAYOUTS, ids=_layout_id)
@pytest.mark.parametrize("reqs", REQ_MATRIX, ids="-".join)
def test_batch_norm_grad_req_matrix(impl, layout, reqs):
    shape, axis = layout

    def bn_call(X, G, B, MM, MV):
        return mxbn.batch_norm(X, G, B, True, MM, MV, momentum=MOMENTUM, eps=EPS, axis=axis, impl=impl)

    failures = run_matrix_case(bn_call, shape, axis, reqs, seed=len(shape) * 10 + axis)
    assert not failures, failures


JIT_LAYOUTS = [((4, 3), 1), ((4, 3, 2, 5), 1), ((4, 3, 2, 5), 0), ((3, 2, 3, 2, 4), 4)]


@pytest.mark.parametrize("impl", mxbn.BATCH_NORM_IMPLS)
@pytest.mark.parametrize("layout", JIT_LAYOUTS, ids=_layout_id)
@pytest.mark.parametrize("reqs", REQ_MATRIX, ids="-".join)
def test_jitted_batch_norm_grad_req_matrix(impl, layout, reqs):
    """The traced path (one CachedOp; moving statistics written back after each call)."""
    shape, axis = layout
    jitted = mxbn.jit(lambda X, G, B, MM, MV: mxbn.batch_norm(X, G, B, True, MM, MV, momentum=MOMENTUM, eps=EPS,
                                                              axis=axis, impl=impl))
    failures = run_matrix_case(jitted, shape, axis, reqs, seed=len(shape) * 10 + axis)
    assert not failures, failures


@pytest.mark.parametrize("impl", mxbn.BATCH_NORM_IMPLS)
@pytest.mark.parametrize("reqs", REQ_MATRIX, ids="-".join)
def test_grad_req_inference_mode(impl, reqs):
    """Inference is ordinary recorded ops; grad_req must hold there too (dx = gamma/sigma * dy)."""
    shape, axis = (4, 3, 2, 5), 1
    rs = np.random.RandomState(5)
    C = shape[axis]
    x, dy = rs.normal(size=shape), rs.normal(size=shape)
    gamma0, beta0 = rs.uniform(0.5, 1.5, C), rs.normal(size=C)
    mm, mv = rs.normal(size=C) * 0.1, rs.uniform(0.5, 2.0, C)
    X, G, B = _attach(x, reqs[0]), _attach(gamma0, reqs[1]), _attach(beta0, reqs[2])
    MM, MV = nd.array(mm, dtype="float64"), nd.array(mv, dtype="float64")
    grads = ref.batch_norm_backward(x, gamma0, dy, mm, mv, False, EPS, axis)
    for _ in range(2):
        with autograd.record():
            Y = mxbn.batch_norm(X, G, B, False, MM, MV, eps=EPS, axis=axis, impl=impl)
        Y.backward(nd.array(dy, dtype="float64"))
    for arr, req, grad in zip((X, G, B), reqs, grads):
        expected = _expected_grads(req, [grad, grad], arr.shape)[-1]
        assert _grad_matches(arr, req, expected), f"grad_req {req!r}"


# --------------------------------------------------------------------------- sync_batch_norm
SYNC_LAYOUTS = [((6, 3), 1), ((5, 3, 2, 4), 1), ((5, 2, 4, 3), -1)]


def _slice_share(x, gamma0, dy, rows, mm, mv, axis):
    """Reference (dgamma, dbeta) of one device: the full batch's formula with dy zero outside its rows."""
    dy_slice = np.zeros_like(dy)
    dy_slice[rows] = dy[rows]
    _, dgamma, dbeta = ref.batch_norm_backward(x, gamma0, dy_slice, mm, mv, True, EPS, axis)
    return dgamma, dbeta


@pytest.mark.parametrize("layout", SYNC_LAYOUTS, ids=_layout_id)
@pytest.mark.parametrize("reqs", REQ_MATRIX, ids="-".join)
def test_sync_batch_norm_grad_req_matrix(layout, reqs):
    """Two CPU contexts holding 3 and N-3 rows; every device's buffers against the whole batch's reference.

    X.grad of a device is its rows of the full-batch dX; gamma.grad and beta.grad
    of a device are its rows' share (the kvstore sums the shares).
    """
    import mxnet as mx

    from mxbn.parallel import sync_batch_norm

    shape, axis = layout
    contexts = [mx.cpu(0), mx.cpu(1)]
    bounds = [(0, 3), (3, shape[0])]
    rs = np.random.RandomState(11)
    C = shape[axis]
    gamma0, beta0 = rs.uniform(0.5, 1.5, C), rs.normal(size=C)
    xs = [rs.normal(0.5, 2.0, size=shape) for _ in range(STEPS)]
    dys = [rs.normal(size=shape) for _ in range(STEPS)]

    def on(ctx, value, req):
        array = nd.array(value, ctx=ctx, dtype="float64")
        array.attach_grad(grad_req=req)
        array.grad[:] = START_GRAD
        return array

    Xs = [on(c, xs[0][a:e], reqs[0]) for c, (a, e) in zip(contexts, bounds)]
    Gs = [on(c, gamma0, reqs[1]) for c in contexts]
    Bs = [on(c, beta0, reqs[2]) for c in contexts]
    MMs = [nd.zeros(C, ctx=c, dtype="float64") for c in contexts]
    MVs = [nd.ones(C, ctx=c, dtype="float64") for c in contexts]
    ref_mm, ref_mv = np.zeros(C), np.ones(C)
    per_step = {(name, d): [] for name in ("X", "gamma", "beta") for d in range(2)}
    for x, dy in zip(xs, dys):
        _, ref_mm, ref_mv = ref.batch_norm_forward(x, gamma0, beta0, ref_mm, ref_mv, True, MOMENTUM, EPS, axis)
        dx, _, _ = ref.batch_norm_backward(x, gamma0, dy, ref_mm, ref_mv, True, EPS, axis)
        for d, (a, e) in enumerate(bounds):
            dgamma, dbeta = _slice_share(x, gamma0, dy, slice(a, e), ref_mm, ref_mv, axis)
            per_step["X", d].append(dx[a:e])
            per_step["gamma", d].append(dgamma)
            per_step["beta", d].append(dbeta)
    arrays = {"X": Xs, "gamma": Gs, "beta": Bs}
    req_of = dict(zip(("X", "gamma", "beta"), reqs))
    expected = {key: _expected_grads(req_of[key[0]], grads, arrays[key[0]][key[1]].shape)
                for key, grads in per_step.items()}
    failures = []
    for step, (x, dy) in enumerate(zip(xs, dys)):
        for X, (a, e) in zip(Xs, bounds):
            X[:] = nd.array(x[a:e], ctx=X.context, dtype="float64")
        with autograd.record():
            Ys = sync_batch_norm(Xs, Gs, Bs, True, MMs, MVs, momentum=MOMENTUM, eps=EPS, axis=axis)
        autograd.backward(Ys, [nd.array(dy[a:e], ctx=c, dtype="float64") for c, (a, e) in zip(contexts, bounds)])
        for (name, d), grads in expected.items():
            if not _grad_matches(arrays[name][d], req_of[name], grads[step]):
                failures.append(f"step {step}: {name}.grad on device {d} wrong (grad_req {req_of[name]!r})")
    for MM, MV in zip(MMs, MVs):
        np.testing.assert_allclose(MM.asnumpy(), ref_mm, **F64)
        np.testing.assert_allclose(MV.asnumpy(), ref_mv, **F64)
    assert not failures, failures


def test_sync_batch_norm_refuses_the_split_axis_as_channel_axis():
    import mxnet as mx

    from mxbn.parallel import sync_batch_norm

    contexts = [mx.cpu(0), mx.cpu(1)]
    Xs = [nd.ones((4, 3), ctx=c) for c in contexts]
    per_device = [[nd.ones(4, ctx=c) for c in contexts] for _ in range(4)]
    with pytest.raises(ValueError, match="axis 0 is the axis the batch is split on"):
        sync_batch_norm(Xs, per_device[0], per_device[1], True, per_device[2], per_device[3], axis=0)


# --------------------------------------------------------------------------- the mechanism
@pytest.mark.parametrize("impl", mxbn.BATCH_NORM_IMPLS)
def test_retained_graph_can_be_differentiated_twice(impl):
    """backward(retain_graph=True) then backward(): "add" buffers hold twice the gradient.

    The scratch path used to drop its saved activations inside backward, so the
    second call failed inside MXNet's engine.
    """
    rs = np.random.RandomState(3)
    x, dy = rs.normal(size=(5, 3, 2)), rs.normal(size=(5, 3, 2))
    gamma0, beta0 = rs.uniform(0.5, 1.5, 3), rs.normal(size=3)
    X, G, B = (_attach(v, "add") for v in (x, gamma0, beta0))
    with autograd.record():
        Y = mxbn.batch_norm(X, G, B, True, nd.zeros(3, dtype="float64"), nd.ones(3, dtype="float64"),
                            eps=EPS, impl=impl)
    head = nd.array(dy, dtype="float64")
    Y.backward(head, retain_graph=True)
    Y.backward(head)
    for arr, grad in zip((X, G, B), ref.batch_norm_backward(x, gamma0, dy, None, None, True, EPS, 1)):
        np.testing.assert_allclose(arr.grad.asnumpy(), START_GRAD + 2 * grad, **F64)


def test_custom_function_names_a_wrong_number_of_gradients(capfd):
    from mxnet.base import MXNetError

    from mxbn.custom_function import Function

    class TwoInputsOneGradient(Function):
        def forward(self, a, b):
            return a * b

        def backward(self, dy):
            return dy  # one gradient for two inputs

    a, b = nd.ones(2), nd.ones(2)
    a.attach_grad()
    b.attach_grad()
    with autograd.record():
        y = TwoInputsOneGradient()(a, b)
    with pytest.raises(MXNetError):
        y.backward()
        nd.waitall()
    assert "TwoInputsOneGradient.backward returned 1 gradient(s), expected 2" in capfd.readouterr().err


def test_write_gradient_follows_each_request():
    from mxbn.custom_function import write_gradient

    buffer = nd.full(2, 5.0)
    write_gradient(buffer, nd.ones(2), 0)           # null: untouched
    assert buffer.asnumpy().tolist() == [5.0, 5.0]
    write_gradient(buffer, nd.ones(2), 3)           # add
    assert buffer.asnumpy().tolist() == [6.0, 6.0]
    for req in (1, 2):                              # write, write in place
        write_gradient(buffer, nd.full(2, float(req)), req)
        assert buffer.asnumpy().tolist() == [float(req)] * 2
    write_gradient(buffer, None, 0)                 # a skipped gradient may be None when nobody needs it
    with pytest.raises(ValueError, match="returned None for an input that needs a gradient"):
        write_gradient(buffer, None, 1)
    with pytest.raises(ValueError, match="unknown gradient request 7"):
        write_gradient(buffer, nd.ones(2), 7)


@pytest.mark.parametrize("momentum", [0.9, None])
@pytest.mark.parametrize("impl", mxbn.BATCH_NORM_IMPLS)
def test_moving_statistics_with_gradients_attached_get_none(impl, momentum):
    """The moving statistics are state, not inputs of the function: gradient buffers a user attached to them
    (or to the cumulative counter) are left as they were by a training call's backward."""
    X = nd.array(np.random.default_rng(3).normal(size=(8, 3, 4, 4)))
    X.attach_grad()
    gamma, beta, mm, mv = nd.ones(3), nd.zeros(3), nd.zeros(3), nd.ones(3)
    count = nd.zeros((1,)) if momentum is None else None
    state = [mm, mv] + ([count] if count is not None else [])
    for a in [gamma, beta] + state:
        a.attach_grad()
    for a in state:
        a.grad[:] = 7
    with autograd.record():
        Y = mxbn.batch_norm(X, gamma, beta, True, mm, mv, momentum=momentum, impl=impl, num_batches=count)
    Y.backward()
    for a in state:
        np.testing.assert_array_equal(a.grad.asnumpy(), 7)
