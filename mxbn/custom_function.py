"""Custom differentiation for imperative MXNet code, with every ``grad_req`` honoured.

mxbn's ops with a hand-written backward (scratch batch norm, synchronized batch
norm) subclass :class:`Function` here instead of ``mxnet.autograd.Function``.

Why not MXNet's class: in MXNet 1.9.1 its backward callback receives one request
per input (0 null, 1 write, 2 write in place, 3 add, MXNet's ``OpReqType``) and
mishandles two of them:

* ``null`` ends the loop over inputs (``return True``), so every input after the
  first one that needs no gradient gets nothing written: ``batch_norm`` on an
  input with ``grad_req="null"`` left gamma's and beta's gradients at zero;
* ``add`` is compared with the string ``'add'`` instead of 3, so an input with
  ``grad_req="add"`` (gradient accumulation) never receives its gradient.

The recording itself (``MXCustomFunctionRecord``, MXNet's C API) is sound; this
class records through it with a callback that writes, skips or accumulates each
input's gradient as its request says.  It also tells ``backward`` which inputs
need a gradient (``self.needs_input_grad``) so work for the others can be skipped,
and frees the saved activations when MXNet frees the node (after a backward
without ``retain_graph``), so a retained graph can be differentiated again.
"""
import ctypes
import itertools
import sys
import threading
import traceback

from mxnet import autograd
from mxnet.base import MXCallbackList, NDArrayHandle, _LIB, c_array, c_handle_array, check_call
from mxnet.ndarray import NDArray

__all__ = ["Function"]

# MXNet's OpReqType values, as the backward callback receives them.
_REQ_NULL, _REQ_WRITE, _REQ_INPLACE, _REQ_ADD = 0, 1, 2, 3

_BACKWARD_FUNCTYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_void_p),
                                      ctypes.POINTER(ctypes.c_int), ctypes.c_int, ctypes.c_void_p)
_DELETE_FUNCTYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)

# The C side holds raw pointers to the callbacks; they must stay alive until
# MXNet calls the delete callback, which removes them from here.
_LIVE_CALLBACKS = {}
_LIVE_LOCK = threading.Lock()
_KEYS = itertools.count()


def write_gradient(grad_buffer, value, req):
    """Apply one backward result to one input's gradient buffer as ``req`` asks.

    ``req`` is MXNet's OpReqType: 0 null (leave the buffer), 1 write and
    2 write in place (overwrite), 3 add (accumulate).
    """
    if req == _REQ_NULL:
        return
    if value is None:
        raise ValueError("backward returned None for an input that needs a gradient")
    if req in (_REQ_WRITE, _REQ_INPLACE):
        grad_buffer[:] = value
    elif req == _REQ_ADD:
        grad_buffer[:] += value
    else:
        raise ValueError(f"unknown gradient request {req} from MXNet (expected 0-3)")


class Function:
    """Base class for an op with a hand-written backward (same use as ``mxnet.autograd.Function``).

    Subclasses define ``forward(*inputs) -> NDArray or tuple`` and
    ``backward(*output_grads) -> one NDArray (or None) per input``.  In
    ``backward``, ``self.needs_input_grad`` is a tuple of bools, one per input:
    an entry that is False may be returned as None (its gradient is not
    written).  Each instance may be called once.
    """

    def __init__(self):
        self._used = False
        self.saved_tensors = ()
        self.needs_input_grad = ()

    def save_for_backward(self, *arrays):
        self.saved_tensors = arrays

    def forward(self, *inputs):
        raise NotImplementedError

    def backward(self, *output_grads):
        raise NotImplementedError

    def __call__(self, *inputs):
        if self._used:
            raise RuntimeError(f"{type(self).__name__}: each instance can be called only once; create another")
        self._used = True
        with autograd.pause():
            outputs = self.forward(*inputs)
        if not autograd.is_recording():
            return outputs
        output_list = (outputs,) if isinstance(outputs, NDArray) else tuple(outputs)
        _record(self, inputs, output_list)
        return outputs

    def _run_backward(self, num_ograds, num_igrads, handles, reqs):
        """Called by MXNet's engine: compute the input gradients and write them per request."""
        output_grads = [_wrap(handles[i], writable=False) for i in range(num_ograds)]
        grad_buffers = [_wrap(handles[num_ograds + i], writable=True) for i in range(num_igrads)]
        requests = [reqs[i] for i in range(num_igrads)]
        self.needs_input_grad = tuple(req != _REQ_NULL for req in requests)
        results = self.backward(*output_grads)
        if isinstance(results, NDArray) or results is None:
            results = (results,)
        if len(results) != num_igrads:
            raise ValueError(f"{type(self).__name__}.backward returned {len(results)} gradient(s), "
                             f"expected {num_igrads} (one per forward input)")
        for buffer, value, req in zip(grad_buffers, results, requests):
            write_gradient(buffer, value, req)


def _wrap(handle, writable):
    return NDArray(ctypes.cast(handle, NDArrayHandle), writable=writable)


def _record(function, inputs, outputs):
    """Record ``function`` as one node of the autograd graph (MXNet's C API)."""
    key = next(_KEYS)

    def backward_entry(num_ograds, num_igrads, handles, reqs, _is_train, _state):
        try:
            function._run_backward(num_ograds, num_igrads, handles, reqs)
        except Exception:  # noqa: BLE001 -- an exception cannot cross the C boundary
            print(f"Error in {type(function).__name__}.backward:\n{traceback.format_exc()}", file=sys.stderr)
            return False
        return True

    def delete_entry(_state):
        # MXNet drops the node when a backward without retain_graph has run
        # through it, or when its graph is freed: the saved activations go
        # with it (a registry entry holding them would grow by a batch's
        # activations per training step).
        function.saved_tensors = ()
        with _LIVE_LOCK:
            _LIVE_CALLBACKS.pop(key, None)
        return True

    callbacks = [ctypes.cast(_BACKWARD_FUNCTYPE(backward_entry), ctypes.CFUNCTYPE(ctypes.c_int)),
                 ctypes.cast(_DELETE_FUNCTYPE(delete_entry), ctypes.CFUNCTYPE(ctypes.c_int))]
    callback_list = MXCallbackList(
        ctypes.c_int(len(callbacks)),
        ctypes.cast(c_array(ctypes.CFUNCTYPE(ctypes.c_int), callbacks), ctypes.POINTER(ctypes.CFUNCTYPE(ctypes.c_int))),
        ctypes.cast(c_array(ctypes.c_void_p, [None] * len(callbacks)), ctypes.POINTER(ctypes.c_void_p)))
    with _LIVE_LOCK:
        _LIVE_CALLBACKS[key] = (callback_list, callbacks)
    check_call(_LIB.MXCustomFunctionRecord(
        ctypes.c_int(len(inputs)), c_handle_array(inputs),
        ctypes.c_int(len(outputs)), c_handle_array(outputs),
        ctypes.byref(callback_list)))
