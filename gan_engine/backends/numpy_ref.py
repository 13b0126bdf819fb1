"""The NumPy reference backend: the living definition of every op the engine runs.

Plain, readable NumPy in float32 or float64 (the dtype of the inputs). Every other backend computes the same
functions under the same names, in the same order, and is tested against this file in float64.

Conventions shared by every twin:
- Dense weights are (in_features, out_features): y = act(x @ W + b).
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
    "bce_with_logits",
    "sgd_update",
    "adam_update",
    "noise",
    "batch_indices",
    "gather_rows",
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
    """In place: z (N, F) pre-activation -> activation output."""
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
    """d loss / d pre-activation from the output y (N, F) and d loss / d y (N, F)."""
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
    g = _activation_grad(y, dy, activation, alpha)  # (N, O)
    if dW is not None:
        dW += x.T @ g
    if db is not None:
        db += g.sum(axis=0)
    if dx is not None:
        np.matmul(g, W.T, out=dx)
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
