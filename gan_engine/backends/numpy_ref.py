"""The NumPy reference backend: the living definition of every op the engine runs.

Plain, readable NumPy in float32 or float64 (the dtype of the inputs). Every other backend computes the same
functions under the same names, in the same order, and is tested against this file in float64.

Conventions shared by every twin:
- Dense weights are (in_features, out_features): y = act(x @ W + b).
- Images are NCHW. Conv2d weights are (C_out, C_in, kH, kW) and transposed-convolution weights are
  (C_in, C_out, kH, kW), as in PyTorch, so one array W serves conv2d and conv_transpose2d as adjoints.
  Stride and padding are (height, width) pairs.
- Parameter gradients accumulate (dW += ..., db += ...); activation gradients are written (dx = ...).
- Outputs go into caller-provided buffers when given (`out=`), so a training step can reuse its buffers.
- Activation derivatives are taken from the activation's output y, so backward needs no pre-activation.
- Losses work on logits: never log(sigmoid(x)).
"""
import numpy as np

name = "numpy"
xp = np

# The ops every backend must provide, in this file's order. The parity tests enumerate this tuple.
OPS = (
    "dense_forward",
    "dense_backward",
    "maxout_forward",
    "maxout_backward",
    "conv2d_forward",
    "conv2d_backward",
    "conv_transpose2d_forward",
    "conv_transpose2d_backward",
    "batchnorm_forward",
    "batchnorm_backward",
    "activation_forward",
    "activation_backward",
    "bce_with_logits",
    "bce_real_fake",
    "sgd_update",
    "adam_update",
    "average_update",
    "noise",
    "batch_indices",
    "gather_rows",
    "draw_rows",
)
ACTIVATIONS = ("identity", "leaky_relu", "relu", "tanh", "sigmoid")
PRIORS = ("normal", "uniform")


def unavailable_reason():
    """None: the reference runs wherever NumPy does."""
    return None


# ---- arrays and random state (shared by the CPU backends) -------------------------------------------------

def asarray(a, dtype=None):
    """Host array -> backend array (here: a NumPy array, copied only if the dtype changes)."""
    return np.asarray(a, dtype=dtype)


def to_numpy(a):
    """Backend array -> host NumPy array."""
    return np.asarray(a)


def new_rng(seed):
    """The backend's random state for noise and batch indices: a NumPy PCG64 generator."""
    return np.random.Generator(np.random.PCG64(seed))


def rng_state(rng):
    """A JSON-serialisable snapshot of `rng`."""
    return rng.bit_generator.state


def set_rng_state(rng, state):
    """Restore a snapshot taken by `rng_state`."""
    rng.bit_generator.state = state


# ---- activations ---------------------------------------------------------------------------------------------

def _activate(z, activation, alpha):
    """In place: z (any shape) pre-activation -> activation output."""
    if activation == "identity":
        pass
    elif activation == "leaky_relu":
        z[...] = np.where(z > 0, z, alpha * z)
    elif activation == "relu":
        np.maximum(z, 0, out=z)
    elif activation == "tanh":
        np.tanh(z, out=z)
    elif activation == "sigmoid":
        z[...] = _sigmoid(z)
    else:
        raise ValueError(f"unknown activation {activation!r}; choose one of {ACTIVATIONS}")
    return z


def _activation_grad(y, dy, activation, alpha):
    """d loss / d pre-activation (a new array) from the output y and d loss / d y (same shape, any)."""
    if activation == "identity":
        return dy.copy()
    if activation == "leaky_relu":  # y > 0 exactly where z > 0 (alpha >= 0); slope alpha at z <= 0
        return np.where(y > 0, dy, alpha * dy)
    if activation == "relu":
        return dy * (y > 0)
    if activation == "tanh":
        return dy * (1 - y * y)
    if activation == "sigmoid":
        return dy * y * (1 - y)
    raise ValueError(f"unknown activation {activation!r}; choose one of {ACTIVATIONS}")


def _sigmoid(z):
    """Overflow-free logistic function: exp is only taken of -|z| <= 0."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e)).astype(z.dtype, copy=False)


# ---- dense ---------------------------------------------------------------------------------------------------

def dense_forward(x, W, b, activation="identity", alpha=0.2, out=None):
    """y = act(x @ W + b).

    x (N, I), W (I, O), b (O,) -> out (N, O)
    """
    if out is None:
        out = np.empty((x.shape[0], W.shape[1]), dtype=x.dtype)
    np.matmul(x, W, out=out)
    out += b
    return _activate(out, activation, alpha)


def dense_backward(x, W, y, dy, activation="identity", alpha=0.2, dW=None, db=None, dx=None):
    """Backward of dense_forward; y is its output.

    x (N, I), W (I, O), y (N, O), dy (N, O)
    -> dW (I, O) += x^T g, db (O,) += sum_n g, dx (N, I) = g W^T, where g = dy * act'(y).
    Each of dW, db, dx may be None to skip it. Returns dx.
    """
    return _affine_backward(x, W, _activation_grad(y, dy, activation, alpha), dW, db, dx)


def _affine_backward(x, W, g, dW, db, dx):
    """The gradients of z = x @ W + b from g = d loss / d z (N, O): dW += x^T g, db += sum_n g, dx = g W^T, each
    skipped where None. Returns dx."""
    if dW is not None:
        dW += x.T @ g
    if db is not None:
        db += g.sum(axis=0)
    if dx is not None:
        np.matmul(g, W.T, out=dx)
    return dx


# ---- maxout --------------------------------------------------------------------------------------------------
# A maxout unit u is the largest of its `pieces` affine pieces; W's columns are unit-major: piece p of unit u is
# column u * pieces + p.

def maxout_forward(x, W, b, pieces, argmax, out=None):
    """y[n, u] = max_p (x @ W + b)[n, u * pieces + p]; argmax[n, u] = the first p that reaches it (NaN wins).

    x (N, I), W (I, U * pieces), b (U * pieces,) -> out (N, U); argmax (N, U) int32 written.
    """
    z = (x @ W + b).reshape(x.shape[0], -1, pieces)  # (N, U, pieces)
    argmax[...] = z.argmax(axis=2)
    if out is None:
        out = np.empty(argmax.shape, dtype=x.dtype)
    out[...] = z.max(axis=2)
    return out


def maxout_backward(x, W, dy, argmax, pieces, dW=None, db=None, dx=None):
    """Backward of maxout_forward: only the winning piece of each unit gets the gradient.

    x (N, I), W (I, U * pieces), dy (N, U), argmax (N, U)
    -> dW (I, U * pieces) += x^T g, db (U * pieces,) += sum_n g, dx (N, I) = g W^T, where g (N, U * pieces) is
    dy at each unit's winning piece and 0 elsewhere. Each of dW, db, dx may be None to skip it. Returns dx.
    """
    g = np.zeros((dy.shape[0], dy.shape[1], pieces), dtype=dy.dtype)  # (N, U, pieces)
    np.put_along_axis(g, argmax[..., None].astype(np.intp), dy[..., None], axis=2)
    return _affine_backward(x, W, g.reshape(dy.shape[0], -1), dW, db, dx)  # g (N, U * pieces)


# ---- convolution ---------------------------------------------------------------------------------------------

def conv2d_output_size(size, kernel, stride, padding):
    """Output side of a convolution: (size + 2 padding - kernel) // stride + 1."""
    return (size + 2 * padding - kernel) // stride + 1


def conv_transpose2d_output_size(size, kernel, stride, padding, output_padding=0):
    """Output side of a transposed convolution: (size - 1) stride - 2 padding + kernel + output_padding."""
    return (size - 1) * stride - 2 * padding + kernel + output_padding


def _pair(v):
    """An int or a pair -> a (height, width) pair of ints."""
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def _im2col(x, kernel, stride, padding, out_hw):
    """x (N, C, H, W) -> cols (N, C, kH, kW, OH, OW), cols[n, c, i, j, p, q] = x_pad[n, c, p sH + i, q sW + j],
    where x_pad is x with `padding` zeros on every side."""
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = kernel, stride, padding, out_hw
    n, c = x.shape[:2]
    x_pad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = np.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = x_pad[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
    return cols


def _col2im(cols, stride, padding, hw):
    """The adjoint of _im2col: cols (N, C, kH, kW, OH, OW) summed back into a new x (N, C, H, W)."""
    n, c, kh, kw, oh, ow = cols.shape
    (sh, sw), (ph, pw), (h, w) = stride, padding, hw
    x_pad = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            x_pad[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] += cols[:, :, i, j]
    return x_pad[:, :, ph:ph + h, pw:pw + w]


def conv2d_forward(x, W, b, stride, padding, activation="identity", alpha=0.2, out=None):
    """y = act(conv2d(x, W) + b), a cross-correlation as in PyTorch.

    x (N, C_in, H, W), W (C_out, C_in, kH, kW), b (C_out,) or None -> out (N, C_out, OH, OW),
    OH = (H + 2 pH - kH) // sH + 1 (likewise OW).
    y[n, o, p, q] = act(b[o] + sum_{c, i, j} W[o, c, i, j] x_pad[n, c, p sH + i, q sW + j])
    """
    stride, padding = _pair(stride), _pair(padding)
    n, c, h, w = x.shape
    co, _, kh, kw = W.shape
    oh, ow = conv2d_output_size(h, kh, stride[0], padding[0]), conv2d_output_size(w, kw, stride[1], padding[1])
    cols = _im2col(x, (kh, kw), stride, padding, (oh, ow)).reshape(n, c * kh * kw, oh * ow)
    if out is None:
        out = np.empty((n, co, oh, ow), dtype=x.dtype)
    out[...] = np.matmul(W.reshape(co, c * kh * kw), cols).reshape(n, co, oh, ow)
    if b is not None:
        out += b.reshape(co, 1, 1)
    return _activate(out, activation, alpha)


def conv2d_backward(x, W, y, dy, stride, padding, activation="identity", alpha=0.2, dW=None, db=None, dx=None):
    """Backward of conv2d_forward; y is its output.

    x (N, C_in, H, W), W (C_out, C_in, kH, kW), y and dy (N, C_out, OH, OW), g = dy * act'(y)
    -> dW (C_out, C_in, kH, kW) += sum_n g im2col(x)^T, db (C_out,) += sum_{n, p, q} g,
       dx (N, C_in, H, W) = col2im(W^T g), which is conv_transpose2d(g, W).
    Each of dW, db, dx may be None to skip it. Returns dx.
    """
    stride, padding = _pair(stride), _pair(padding)
    n, c, h, w = x.shape
    co, _, kh, kw = W.shape
    oh, ow = y.shape[2:]
    g = _activation_grad(y, dy, activation, alpha).reshape(n, co, oh * ow)
    if dW is not None:
        cols = _im2col(x, (kh, kw), stride, padding, (oh, ow)).reshape(n, c * kh * kw, oh * ow)
        dW += np.tensordot(g, cols, axes=([0, 2], [0, 2])).reshape(W.shape)
    if db is not None:
        db += g.sum(axis=(0, 2))
    if dx is not None:
        dcols = np.matmul(W.reshape(co, c * kh * kw).T, g).reshape(n, c, kh, kw, oh, ow)
        dx[...] = _col2im(dcols, stride, padding, (h, w))
    return dx


def conv_transpose2d_forward(x, W, b, stride, padding, output_padding=0, activation="identity", alpha=0.2,
                             out=None):
    """y = act(conv_transpose2d(x, W) + b): the adjoint of conv2d_forward with the same W, stride and padding.

    x (N, C_in, H, W), W (C_in, C_out, kH, kW), b (C_out,) or None -> out (N, C_out, OH, OW),
    OH = (H - 1) sH - 2 pH + kH + output_padding_H (likewise OW); output_padding < stride picks among the
    output sizes that a stride-s convolution maps back to H.
    Each input pixel x[n, c, h, w] adds x[n, c, h, w] * W[c, :, :, :] into the output window whose top-left
    corner is (h sH - pH, w sW - pW).
    """
    stride, padding, output_padding = _pair(stride), _pair(padding), _pair(output_padding)
    n, ci, h, w = x.shape
    _, co, kh, kw = W.shape
    oh = conv_transpose2d_output_size(h, kh, stride[0], padding[0], output_padding[0])
    ow = conv_transpose2d_output_size(w, kw, stride[1], padding[1], output_padding[1])
    cols = np.matmul(W.reshape(ci, co * kh * kw).T, x.reshape(n, ci, h * w)).reshape(n, co, kh, kw, h, w)
    if out is None:
        out = np.empty((n, co, oh, ow), dtype=x.dtype)
    out[...] = _col2im(cols, stride, padding, (oh, ow))
    if b is not None:
        out += b.reshape(co, 1, 1)
    return _activate(out, activation, alpha)


def conv_transpose2d_backward(x, W, y, dy, stride, padding, activation="identity", alpha=0.2, dW=None, db=None,
                              dx=None):
    """Backward of conv_transpose2d_forward; y is its output (its shape carries the output padding).

    x (N, C_in, H, W), W (C_in, C_out, kH, kW), y and dy (N, C_out, OH, OW), g = dy * act'(y)
    -> dW (C_in, C_out, kH, kW) += sum_n x im2col(g)^T, db (C_out,) += sum_{n, p, q} g,
       dx (N, C_in, H, W) = W im2col(g), which is conv2d(g, W).
    Each of dW, db, dx may be None to skip it. Returns dx.
    """
    stride, padding = _pair(stride), _pair(padding)
    n, ci, h, w = x.shape
    _, co, kh, kw = W.shape
    g = _activation_grad(y, dy, activation, alpha)
    if db is not None:
        db += g.sum(axis=(0, 2, 3))
    gcols = _im2col(g, (kh, kw), stride, padding, (h, w)).reshape(n, co * kh * kw, h * w)
    if dW is not None:
        dW += np.tensordot(x.reshape(n, ci, h * w), gcols, axes=([0, 2], [0, 2])).reshape(W.shape)
    if dx is not None:
        dx[...] = np.matmul(W.reshape(ci, co * kh * kw), gcols).reshape(x.shape)
    return dx


# ---- batch norm ----------------------------------------------------------------------------------------------

def _channel_shape(x):
    """The shape that broadcasts a per-channel (C,) vector over x (N, C) or (N, C, H, W)."""
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _channel_axes(x):
    """The axes a per-channel statistic reduces over: the batch, and the pixels of an image."""
    return (0,) + tuple(range(2, x.ndim))


def batchnorm_forward(x, gamma, beta, running_mean, running_var, mean, invstd, train, momentum=0.1, eps=1e-5,
                      activation="identity", alpha=0.2, out=None):
    """y = act(gamma (x - mean) invstd + beta) per channel: batch norm 1D (after dense) or 2D (after conv).

    x (N, C) or (N, C, H, W) -> out (same shape); gamma, beta, running_mean, running_var, mean, invstd (C,).
    Statistics are over the M = N (H W) values of each channel.
    train: mean and (biased) var of the batch; running_mean and running_var move towards them,
           r = (1 - momentum) r + momentum batch_stat, with the unbiased var M / (M - 1) var (as PyTorch).
    eval:  mean and var are running_mean and running_var (the running statistics are left alone).
    Both write mean and invstd = 1 / sqrt(var + eps), which batchnorm_backward reads.
    """
    axes, shape = _channel_axes(x), _channel_shape(x)
    if train:
        m = x.size // x.shape[1]
        batch_mean, batch_var = x.mean(axis=axes), x.var(axis=axes)
        running_mean *= 1 - momentum
        running_mean += momentum * batch_mean
        running_var *= 1 - momentum
        running_var += momentum * batch_var * (m / (m - 1))
        mean[...], invstd[...] = batch_mean, 1 / np.sqrt(batch_var + eps)
    else:
        mean[...], invstd[...] = running_mean, 1 / np.sqrt(running_var + eps)
    if out is None:
        out = np.empty_like(x)
    out[...] = (x - mean.reshape(shape)) * (gamma * invstd).reshape(shape) + beta.reshape(shape)
    return _activate(out, activation, alpha)


def batchnorm_backward(x, gamma, y, dy, mean, invstd, train, activation="identity", alpha=0.2, dgamma=None,
                       dbeta=None, dx=None):
    """Backward of batchnorm_forward; y is its output, mean and invstd the statistics it wrote.

    x, y, dy (N, C) or (N, C, H, W); gamma, mean, invstd (C,); g = dy * act'(y), x_hat = (x - mean) invstd.
    -> dgamma (C,) += sum g x_hat, dbeta (C,) += sum g (sums over the M values of each channel),
       dx = gamma invstd (g - sum(g) / M - x_hat sum(g x_hat) / M)  in train mode (through the batch statistics),
       dx = gamma invstd g                                         in eval mode.
    Each of dgamma, dbeta, dx may be None to skip it. Returns dx.
    """
    axes, shape = _channel_axes(x), _channel_shape(x)
    g = _activation_grad(y, dy, activation, alpha)
    x_hat = (x - mean.reshape(shape)) * invstd.reshape(shape)
    sum_g, sum_g_xhat = g.sum(axis=axes), (g * x_hat).sum(axis=axes)
    if dgamma is not None:
        dgamma += sum_g_xhat
    if dbeta is not None:
        dbeta += sum_g
    if dx is not None:
        scale = (gamma * invstd).reshape(shape)
        if train:
            m = x.size // x.shape[1]
            dx[...] = scale * (g - (sum_g / m).reshape(shape) - x_hat * (sum_g_xhat / m).reshape(shape))
        else:
            dx[...] = scale * g
    return dx


# ---- standalone activation -----------------------------------------------------------------------------------

def activation_forward(x, activation, alpha=0.2, out=None):
    """out = act(x), elementwise over any shape (for activations that no op before them fuses)."""
    if out is None:
        out = np.empty_like(x)
    out[...] = x
    return _activate(out, activation, alpha)


def activation_backward(y, dy, activation, alpha=0.2, dx=None):
    """dx = dy * act'(y) from the output y of activation_forward; any shape. Returns dx."""
    if dx is None:
        dx = np.empty_like(dy)
    dx[...] = _activation_grad(y, dy, activation, alpha)
    return dx


# ---- loss ----------------------------------------------------------------------------------------------------

def bce_with_logits(logits, target, scale=1.0, dlogits=None):
    """Mean sigmoid binary cross-entropy on logits, its gradient, and the mean probability, in one pass.

    logits (N, 1) or (N,), target a float in [0, 1] for every row, scale a float multiplying the loss.
    loss = scale * mean_n [ max(x, 0) - x * t + log(1 + exp(-|x|)) ]      (= -t log s(x) - (1-t) log(1-s(x)))
    dlogits (same shape as logits) = scale * (sigmoid(x) - t) / N           (written)
    Returns (loss, mean sigmoid(x)) as 0-d arrays of the logits' dtype. Finite and exact for |x| up to 1e4.
    """
    x = logits
    n = x.shape[0]
    p = _sigmoid(x)
    losses = np.maximum(x, 0) - x * target + np.log1p(np.exp(-np.abs(x)))
    if dlogits is None:
        dlogits = np.empty_like(x)
    dlogits[...] = (scale / n) * (p - target)
    dtype = x.dtype
    return np.asarray(scale * losses.mean(), dtype=dtype), np.asarray(p.mean(), dtype=dtype)


def bce_real_fake(logits, real_target, dlogits=None):
    """D's loss on reals and fakes side by side, in one call.

    logits (2 B, 1) or (2 B,): the reals' B rows, then the fakes' B rows.
    loss = mean over the reals of BCE(x, real_target) + mean over the fakes of BCE(x, 0)
    dlogits (same shape) = (sigmoid(x) - target) / B                          (written)
    Returns (loss, mean sigmoid over the reals, mean sigmoid over the fakes) as 0-d arrays of the logits' dtype.
    """
    return real_fake_losses(bce_with_logits, logits, real_target, dlogits)


def real_fake_losses(bce, logits, real_target, dlogits=None):
    """bce_real_fake through a backend's `bce` (bce_with_logits) on each half (the CPU backends share it)."""
    n = logits.shape[0]
    if n % 2:
        raise ValueError(f"bce_real_fake takes the reals' and the fakes' logits, as many of each: got {n} rows")
    if dlogits is None:
        dlogits = np.empty_like(logits)
    loss_real, d_real = bce(logits[:n // 2], real_target, 1.0, dlogits[:n // 2])
    loss_fake, d_fake = bce(logits[n // 2:], 0.0, 1.0, dlogits[n // 2:])
    return np.asarray(loss_real + loss_fake, dtype=logits.dtype), d_real, d_fake


# ---- optimizers ----------------------------------------------------------------------------------------------

def sgd_update(param, grad, velocity, lr, momentum=0.0):
    """SGD with momentum (PyTorch's form), in place over flat buffers.

    param, grad, velocity (P,): velocity = momentum * velocity + grad; param -= lr * velocity
    """
    velocity *= momentum
    velocity += grad
    param -= lr * velocity


def adam_update(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8):
    """Adam (Kingma and Ba, with bias correction; PyTorch's form), in place over flat buffers.

    param, grad, m, v (P,); step is the 1-based update count.
    m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; param -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
    """
    m *= beta1
    m += (1 - beta1) * grad
    v *= beta2
    v += (1 - beta2) * grad * grad
    m_hat = m / (1 - beta1 ** step)
    v_hat = v / (1 - beta2 ** step)
    param -= lr * m_hat / (np.sqrt(v_hat) + eps)


def average_update(average, value, decay):
    """One step of an exponential moving average, in place over flat buffers.

    average, value (P,): average = decay * average + (1 - decay) * value
    """
    average *= decay
    average += (1 - decay) * value

# ---- sampling ------------------------------------------------------------------------------------------------

def noise(rng, prior, out):
    """Fill out (N, Z) with the noise prior: "normal" N(0, 1) or "uniform" U(-1, 1). Returns out."""
    if prior == "normal":
        rng.standard_normal(dtype=out.dtype, out=out)
    elif prior == "uniform":
        rng.random(dtype=out.dtype, out=out)
        out *= 2
        out -= 1
    else:
        raise ValueError(f"unknown prior {prior!r}; choose one of {PRIORS}")
    return out


def batch_indices(rng, n, out):
    """Fill out (B,) int64 with row indices drawn uniformly from [0, n), with replacement. Returns out."""
    out[...] = rng.integers(0, n, size=out.shape[0])
    return out


def gather_rows(data, idx, out):
    """out (B, D) = data (N, D)[idx (B,)]. Returns out."""
    np.take(data, idx, axis=0, out=out)
    return out


def draw_rows(rng, data, idx, first, out):
    """A real batch drawn and gathered in one call: idx (P,) int64 filled by batch_indices from the N rows of data,
    then out (B, D) = data (N, D)[idx[first:first + B]] (gather_rows). Returns out."""
    batch_indices(rng, data.shape[0], idx)
    return gather_rows(data, idx[first:first + out.shape[0]], out)
