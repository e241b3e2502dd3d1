"""Independent float64 NumPy references for the tests (never imported by mxbn)."""
import numpy as np


def _reduce_axes(ndim, axis):
    axis %= ndim
    return tuple(i for i in range(ndim) if i != axis), axis


def _channel_shape(ndim, axis):
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return shape


def batch_norm_forward(x, gamma, beta, moving_mean, moving_vari, is_training,
                       momentum=0.9, eps=1e-5, axis=1):
    """Returns (y, new_moving_mean, new_moving_vari), all float64."""
    x = np.asarray(x, np.float64)
    axes, axis = _reduce_axes(x.ndim, axis)
    cs = _channel_shape(x.ndim, axis)
    if is_training:
        mean = x.mean(axis=axes)
        vari = ((x - mean.reshape(cs)) ** 2).mean(axis=axes)  # biased
        new_mean = momentum * moving_mean + (1 - momentum) * mean
        new_vari = momentum * moving_vari + (1 - momentum) * vari
    else:
        mean, vari = np.asarray(moving_mean, np.float64), np.asarray(moving_vari, np.float64)
        new_mean, new_vari = moving_mean, moving_vari
    x_hat = (x - mean.reshape(cs)) / np.sqrt(vari.reshape(cs) + eps)
    y = np.asarray(gamma, np.float64).reshape(cs) * x_hat + np.asarray(beta, np.float64).reshape(cs)
    return y, np.asarray(new_mean, np.float64), np.asarray(new_vari, np.float64)


def batch_norm_backward(x, gamma, dy, moving_mean, moving_vari, is_training, eps=1e-5, axis=1):
    """Analytic (dx, dgamma, dbeta) of sum(dy * y), derived by hand in float64.

    Training: with m values per channel, x_hat = (x - mu)/sigma,
        dbeta = sum(dy), dgamma = sum(dy * x_hat),
        dx = gamma/sigma * (dy - dbeta/m - x_hat * dgamma/m).
    Inference: mu, sigma are constants, so dx = gamma/sigma * dy.
    """
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    axes, axis = _reduce_axes(x.ndim, axis)
    cs = _channel_shape(x.ndim, axis)
    if is_training:
        mean = x.mean(axis=axes)
        vari = ((x - mean.reshape(cs)) ** 2).mean(axis=axes)
    else:
        mean, vari = np.asarray(moving_mean, np.float64), np.asarray(moving_vari, np.float64)
    sigma = np.sqrt(vari + eps).reshape(cs)
    x_hat = (x - mean.reshape(cs)) / sigma
    g = np.asarray(gamma, np.float64).reshape(cs)
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * x_hat).sum(axis=axes)
    if is_training:
        m = x.size // x.shape[axis]
        dx = g / sigma * (dy - dbeta.reshape(cs) / m - x_hat * dgamma.reshape(cs) / m)
    else:
        dx = g / sigma * dy
    return dx, dgamma, dbeta


def conv2d(x, w, b=None, stride=1, pad=0):
    """Direct float64 cross-correlation, NCHW / (O, I, kh, kw)."""
    x = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    y = np.zeros((n, o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            y[:, :, i, j] = np.tensordot(patch, w, axes=([1, 2, 3], [1, 2, 3]))
    if b is not None:
        y += np.asarray(b).reshape(1, -1, 1, 1)
    return y


def pool2d(x, k, stride, reduce):
    n, c, h, w = x.shape
    oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
    y = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            y[:, :, i, j] = reduce(x[:, :, i * stride:i * stride + k, j * stride:j * stride + k], axis=(2, 3))
    return y


def softmax_cross_entropy(logits, labels):
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(labels)), np.asarray(labels, int)].mean()


def optimizer_trajectory(name, lr, steps, start=(-7.0, 2.0), grad=None, **hyper):
    """The "tricks of training" update rules, transcribed in float64 NumPy.

    Returns the (steps+1, 2) array of visited points of f(x, y) = x^2/20 + y^2.
    """
    grad = grad or (lambda p: np.array([p[0] / 10.0, 2.0 * p[1]]))
    p = np.array(start, np.float64)
    path = [p.copy()]
    v = np.zeros(2)
    h = np.zeros(2)
    m = np.zeros(2)
    for t in range(1, steps + 1):
        g = grad(p)
        if name == "sgd":
            p = p - lr * g
        elif name == "momentum":
            v = hyper.get("momentum", 0.9) * v - lr * g
            p = p + v
        elif name == "adagrad":
            h = h + g * g
            p = p - lr * g / (np.sqrt(h) + 1e-7)
        elif name == "adam":
            b1, b2 = hyper.get("beta1", 0.9), hyper.get("beta2", 0.999)
            lr_t = lr * np.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
            m = m + (1 - b1) * (g - m)
            v = v + (1 - b2) * (g ** 2 - v)
            p = p - lr_t * m / (np.sqrt(v) + 1e-7)
        else:
            raise ValueError(name)
        path.append(p.copy())
    return np.array(path)


def batch_renorm_forward(x, gamma, beta, moving_mean, moving_vari, r_max, d_max, momentum=0.9, eps=1e-5,
                         axis=1, r_d=None):
    """Ioffe (2017), training mode: returns (y, new_moving_mean, new_moving_vari, (r, d)), float64.

    ``r_d`` given: use those r and d instead of computing them (they are constants of the backward pass,
    so a finite difference of this function with r_d fixed is the gradient batch renorm defines)."""
    x = np.asarray(x, np.float64)
    axes, axis = _reduce_axes(x.ndim, axis)
    cs = _channel_shape(x.ndim, axis)
    mean = x.mean(axis=axes)
    vari = ((x - mean.reshape(cs)) ** 2).mean(axis=axes)
    sigma_b = np.sqrt(vari + eps)
    sigma = np.sqrt(np.asarray(moving_vari, np.float64) + eps)
    if r_d is None:
        r = np.clip(sigma_b / sigma, 1 / r_max, r_max)
        d = np.clip((mean - moving_mean) / sigma, -d_max, d_max)
    else:
        r, d = r_d
    x_hat = (x - mean.reshape(cs)) / sigma_b.reshape(cs) * r.reshape(cs) + d.reshape(cs)
    y = np.asarray(gamma, np.float64).reshape(cs) * x_hat + np.asarray(beta, np.float64).reshape(cs)
    return (y, momentum * moving_mean + (1 - momentum) * mean, momentum * moving_vari + (1 - momentum) * vari,
            (r, d))


def ghost_batch_norm_forward(x, gamma, beta, moving_mean, moving_vari, virtual_batch_size, momentum=0.9,
                             eps=1e-5, axis=1):
    """Ghost BN, training mode: each chunk of ``virtual_batch_size`` samples normalized alone; the moving
    statistics updated with the chunks' mean mean and mean (biased) variance.  (y, new mean, new vari)."""
    chunks = [x[i:i + virtual_batch_size] for i in range(0, len(x), virtual_batch_size)]
    outs = [batch_norm_forward(c, gamma, beta, moving_mean, moving_vari, True, 0.0, eps, axis) for c in chunks]
    mean = np.mean([o[1] for o in outs], axis=0)
    vari = np.mean([o[2] for o in outs], axis=0)
    return (np.concatenate([o[0] for o in outs]), momentum * moving_mean + (1 - momentum) * mean,
            momentum * moving_vari + (1 - momentum) * vari)
