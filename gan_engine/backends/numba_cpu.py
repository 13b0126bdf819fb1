"""The Numba CPU backend: the reference's ops as fused, compiled loops that allocate nothing in steady state.

Same names, signatures and maths as `numpy_ref` (read that file for what each op computes); this file checks
and lays out the arguments and calls the compiled loops in `numba_kernels`. What differs is how:
- an op makes one pass where the reference chains NumPy temporaries: bias + activation in the GEMM's output
  pass, activation derivative + bias gradient in one pass, sigmoid-BCE loss + gradient + mean in one pass,
  Adam in one pass over a model's flat buffer;
- GEMMs go to NumPy's BLAS, a large one in row blocks over the engine's threads (threads.py), or to a
  register-blocked Numba GEMM for tiny products and outer products (the discriminator's last layer), whichever
  benchmarks/test_bench_ops.py::test_gemm measured faster;
- convolutions are im2col + one GEMM over the whole batch + col2im with bias and activation fused, all three
  driven by a per-shape table of window offsets;
- scratch arrays are allocated once per (purpose, shape, dtype) and reused, so a steady-state training step
  allocates no array (they are module-wide: one thread drives this backend at a time); scalars come back as
  NumPy scalars, not 0-d arrays;
- everything is compiled with `cache=True`: the first process compiles (tens of seconds), later ones load.
Noise and batch indices draw from the same NumPy generator as the reference, in the same order, so a seed
gives the same noise and batches on both CPU backends.
"""
import time

import numpy as np

from . import numpy_ref as ref
from . import threads
from .threads import matmul, over
from .numpy_ref import (ACTIVATIONS, _pair, asarray, conv2d_output_size,  # noqa: F401 (the CPU backends share
                        conv_transpose2d_output_size, new_rng, rng_state, set_rng_state, to_numpy)  # these)

name = "numba"
xp = np

try:
    from . import numba_kernels as k
    _IMPORT_ERROR = None
except ImportError as exc:  # numba missing or broken: the registry reports the reason
    k, _IMPORT_ERROR = None, exc

_CODES = {a: i for i, a in enumerate(ACTIVATIONS)}
_scratch_buffers = {}


def unavailable_reason():
    """None when Numba imports; otherwise why not."""
    return None if _IMPORT_ERROR is None else f"numba is not installed or failed to import ({_IMPORT_ERROR})"


def _code(activation):
    code = _CODES.get(activation)
    if code is None:
        raise ValueError(f"unknown activation {activation!r}; choose one of {ACTIVATIONS}")
    return code


def _scratch(purpose, shape, dtype):
    """A reusable array for (purpose, shape, dtype): allocated on first use, handed back afterwards. Its contents
    are only meaningful inside the op that filled it."""
    key = (purpose, tuple(shape), np.dtype(dtype))
    buf = _scratch_buffers.get(key)
    if buf is None:
        buf = _scratch_buffers[key] = np.zeros(shape, dtype=dtype)
    return buf


def _zeros(n, dtype):
    """A zero vector (n,) standing in for an absent bias or skipped gradient (never written)."""
    return _scratch("zeros", (n,), dtype)


def _c(a):
    """C-contiguous view (a copy only for a non-contiguous input)."""
    return np.ascontiguousarray(a)


def _output(out, shape, dtype):
    """The caller's output buffer, or a new one; it must be C-contiguous to be written in place."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not out.flags.c_contiguous or out.dtype != dtype or tuple(out.shape) != tuple(shape):
        raise ValueError(f"output buffer must be C-contiguous {np.dtype(dtype).name} of shape {tuple(shape)}, "
                         f"got {out.dtype.name} {tuple(out.shape)} (contiguous: {out.flags.c_contiguous})")
    return out


# ---- GEMM ----------------------------------------------------------------------------------------------------

def use_blocked_gemm(m, kk, n):
    """Whether the blocked Numba GEMM beats BLAS for (m, kk) @ (kk, n): outer products (kk <= 4) and products
    of at most 16^3 multiply-adds (benchmarks/test_bench_ops.py::test_gemm measures every shape a step runs)."""
    return kk <= 4 or m * kk * n <= 16 ** 3


def _matmul(a, b, out, accumulate=False):
    """out (M, N) = a (M, K) @ b (K, N), or += when accumulate. Large products go to NumPy's BLAS (one thread)
    in row blocks over the engine's threads (threads.matmul: the same bits on any number of threads); SciPy's
    BLAS, which np.dot inside njit calls, is not used: its pool fought NumPy's for the cores."""
    m, kk = a.shape
    if use_blocked_gemm(m, kk, b.shape[1]):
        k.gemm_blocked(a, b, out, accumulate)
    elif accumulate:
        product = _scratch("gemm", out.shape, out.dtype)
        matmul(a, b, product)
        k.add_into(out, product)
    else:
        matmul(a, b, out)


# ---- dense ---------------------------------------------------------------------------------------------------

def dense_forward(x, W, b, activation="identity", alpha=0.2, out=None):
    """y = act(x @ W + b). x (N, I), W (I, O), b (O,) -> out (N, O): the GEMM, then one bias + activation pass."""
    x, W, b = _c(x), _c(W), _c(b)
    out = _output(out, (x.shape[0], W.shape[1]), x.dtype)
    _matmul(x, W, out)
    k.bias_act(out, b, _code(activation), x.dtype.type(alpha))
    return out


def dense_backward(x, W, y, dy, activation="identity", alpha=0.2, dW=None, db=None, dx=None):
    """dW (I, O) += x^T g, db (O,) += sum_n g, dx (N, I) = g W^T with g = dy * act'(y) (g and db in one pass).
    Returns dx."""
    x, W, y, dy = _c(x), _c(W), _c(y), _c(dy)
    n, o, dtype = x.shape[0], W.shape[1], x.dtype
    g = _scratch("dense_g", (n, o), dtype)
    k.act_grad_rows(y, dy, _code(activation), dtype.type(alpha), g, db if db is not None else _zeros(o, dtype),
                    db is not None)
    return _affine_backward(x, W, g, dW, dx)


def _affine_backward(x, W, g, dW, dx):
    """dW (I, O) += x^T g and dx (N, I) = g W^T from g = d loss / d (x W + b) (N, O), each skipped where None (the
    callers make db with g). Returns dx."""
    (n, i), o, dtype = x.shape, g.shape[1], x.dtype
    if dW is not None:
        _matmul(x.T, g, _output(dW, (i, o), dtype), accumulate=True)
    if dx is not None:
        _matmul(g, W.T, _output(dx, (n, i), dtype))
    return dx


# ---- maxout --------------------------------------------------------------------------------------------------

def maxout_forward(x, W, b, pieces, argmax, out=None):
    """y (N, U) = the largest of each unit's pieces of x @ W + b, argmax (N, U) int32 the winning piece: the GEMM
    into scratch, then one pass for bias, max and argmax."""
    x, W, b = _c(x), _c(W), _c(b)
    n, units = x.shape[0], W.shape[1] // pieces
    _output(argmax, (n, units), np.int32)
    out = _output(out, (n, units), x.dtype)
    z = _scratch("maxout_z", (n, W.shape[1]), x.dtype)
    _matmul(x, W, z)
    k.maxout_rows(z, b, pieces, out, argmax)
    return out


def maxout_backward(x, W, dy, argmax, pieces, dW=None, db=None, dx=None):
    """dW += x^T g, db += sum_n g, dx = g W^T with g (N, U pieces) = dy at the winning pieces (g and db in one
    pass). Returns dx."""
    x, W, dy, argmax = _c(x), _c(W), _c(dy), _c(argmax)
    n, width, dtype = x.shape[0], W.shape[1], x.dtype
    g = _scratch("maxout_g", (n, width), dtype)
    k.maxout_grad_rows(dy, argmax, pieces, g, db if db is not None else _zeros(width, dtype), db is not None)
    return _affine_backward(x, W, g, dW, dx)


# ---- convolution ---------------------------------------------------------------------------------------------

def _windows(h, w, kh, kw, sh, sw, ph, pw, oh, ow):
    """The window table idx (kH kW, OH OW) of numba_kernels.im2col for these sizes, built once."""
    key = ("windows", h, w, kh, kw, sh, sw, ph, pw, oh, ow)
    idx = _scratch_buffers.get(key)
    if idx is None:
        idx = _scratch_buffers[key] = np.empty((kh * kw, oh * ow), dtype=np.int64)
        k.window_index(h, w, kh, kw, sh, sw, ph, pw, oh, ow, idx)
    return idx


def _flat_pixels(a):
    """(N, C, H, W) -> a (N, C, H W) view."""
    return a.reshape(a.shape[0], a.shape[1], -1)


def conv2d_forward(x, W, b, stride, padding, activation="identity", alpha=0.2, out=None):
    """y = act(conv2d(x, W) + b). x (N, C_in, H, W), W (C_out, C_in, kH, kW), b (C_out,) or None
    -> out (N, C_out, OH, OW): cols = im2col(x) (C_in kH kW, N OH OW); (C_out, C_in kH kW) @ cols; epilogue."""
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    x, W, dtype = _c(x), _c(W), x.dtype
    n, c, h, w = x.shape
    co, _, kh, kw = W.shape
    oh, ow = conv2d_output_size(h, kh, sh, ph), conv2d_output_size(w, kw, sw, pw)
    cols = _scratch("conv_cols", (c * kh * kw, n * oh * ow), dtype)
    windows = _windows(h, w, kh, kw, sh, sw, ph, pw, oh, ow)
    over(c, cols.size, k.im2col, _flat_pixels(x), windows, cols)
    t = _scratch("conv_out", (co, n * oh * ow), dtype)
    _matmul(W.reshape(co, -1), cols, t)
    out = _output(out, (n, co, oh, ow), dtype)
    over(co, t.size, k.from_channel_major, t, _c(b) if b is not None else _zeros(co, dtype), _code(activation),
         dtype.type(alpha), out.reshape(n, co, oh * ow))
    return out


def conv2d_backward(x, W, y, dy, stride, padding, activation="identity", alpha=0.2, dW=None, db=None, dx=None):
    """dW (C_out, C_in, kH, kW) += g im2col(x)^T, db (C_out,) += sum g, dx (N, C_in, H, W) = col2im(W^T g),
    with g = dy * act'(y) laid out (C_out, N OH OW). Returns dx."""
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    x, W, y, dy, dtype = _c(x), _c(W), _c(y), _c(dy), x.dtype
    n, c, h, w = x.shape
    co, _, kh, kw = W.shape
    oh, ow = y.shape[2:]
    g = _scratch("conv_g", (co, n * oh * ow), dtype)
    windows = _windows(h, w, kh, kw, sh, sw, ph, pw, oh, ow)
    over(co, 3 * g.size, k.grad_nchw, y.reshape(n, co, -1), dy.reshape(n, co, -1), _code(activation),
         dtype.type(alpha), g.reshape(co, n, -1).transpose(1, 0, 2), db if db is not None else _zeros(co, dtype),
         db is not None)
    if dW is not None:
        cols = _scratch("conv_cols", (c * kh * kw, n * oh * ow), dtype)
        over(c, cols.size, k.im2col, _flat_pixels(x), windows, cols)
        _matmul(g, cols.T, _output(dW, W.shape, dtype).reshape(co, -1), accumulate=True)
    if dx is not None:
        dcols = _scratch("conv_cols", (c * kh * kw, n * oh * ow), dtype)
        _matmul(W.reshape(co, -1).T, g, dcols)
        over(c, dcols.size, k.col2im, dcols, windows, _zeros(c, dtype), 0, dtype.type(0),
             _flat_pixels(_output(dx, x.shape, dtype)))
    return dx


def conv_transpose2d_forward(x, W, b, stride, padding, output_padding=0, activation="identity", alpha=0.2,
                             out=None):
    """y = act(conv_transpose2d(x, W) + b). x (N, C_in, H, W), W (C_in, C_out, kH, kW), b (C_out,) or None
    -> out (N, C_out, OH, OW): cols (C_out kH kW, N H W) = W^T x in one GEMM, then col2im + bias + activation."""
    (sh, sw), (ph, pw), (oph, opw) = _pair(stride), _pair(padding), _pair(output_padding)
    x, W, dtype = _c(x), _c(W), x.dtype
    n, ci, h, w = x.shape
    _, co, kh, kw = W.shape
    oh = conv_transpose2d_output_size(h, kh, sh, ph, oph)
    ow = conv_transpose2d_output_size(w, kw, sw, pw, opw)
    xt = _scratch("convt_x", (ci, n * h * w), dtype)
    over(ci, xt.size, k.to_channel_major, x.reshape(n, ci, h * w), xt)
    cols = _scratch("convt_cols", (co * kh * kw, n * h * w), dtype)
    _matmul(W.reshape(ci, -1).T, xt, cols)
    out = _output(out, (n, co, oh, ow), dtype)
    over(co, cols.size, k.col2im, cols, _windows(oh, ow, kh, kw, sh, sw, ph, pw, h, w),
         _c(b) if b is not None else _zeros(co, dtype), _code(activation), dtype.type(alpha), _flat_pixels(out))
    return out


def conv_transpose2d_backward(x, W, y, dy, stride, padding, activation="identity", alpha=0.2, dW=None, db=None,
                              dx=None):
    """dW (C_in, C_out, kH, kW) += x im2col(g)^T, db (C_out,) += sum g, dx (N, C_in, H, W) = W im2col(g),
    with g = dy * act'(y). Returns dx."""
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    x, W, y, dy, dtype = _c(x), _c(W), _c(y), _c(dy), x.dtype
    n, ci, h, w = x.shape
    _, co, kh, kw = W.shape
    g = _scratch("convt_g", y.shape, dtype)
    over(co, 3 * g.size, k.grad_nchw, y.reshape(n, co, -1), dy.reshape(n, co, -1), _code(activation),
         dtype.type(alpha), g.reshape(n, co, -1), db if db is not None else _zeros(co, dtype), db is not None)
    gcols = _scratch("convt_cols", (co * kh * kw, n * h * w), dtype)
    oh, ow = y.shape[2:]
    over(co, gcols.size, k.im2col, _flat_pixels(g), _windows(oh, ow, kh, kw, sh, sw, ph, pw, h, w), gcols)
    xt = _scratch("convt_x", (ci, n * h * w), dtype)
    if dW is not None:
        over(ci, xt.size, k.to_channel_major, x.reshape(n, ci, h * w), xt)
        _matmul(xt, gcols.T, _output(dW, W.shape, dtype).reshape(ci, -1), accumulate=True)
    if dx is not None:
        _matmul(W.reshape(ci, -1), gcols, xt)
        over(ci, xt.size, k.from_channel_major, xt, _zeros(ci, dtype), 0, dtype.type(0),
             _output(dx, x.shape, dtype).reshape(n, ci, -1))
    return dx


# ---- batch norm ----------------------------------------------------------------------------------------------

def _ncp(a):
    """(N, C) or (N, C, H, W) -> a (N, C, P) view."""
    return a.reshape(a.shape[0], a.shape[1], -1)


def batchnorm_forward(x, gamma, beta, running_mean, running_var, mean, invstd, train, momentum=0.1, eps=1e-5,
                      activation="identity", alpha=0.2, out=None):
    """y = act(gamma (x - mean) invstd + beta) per channel; x (N, C) or (N, C, H, W); see numpy_ref."""
    x, dtype = _c(x), x.dtype
    out = _output(out, x.shape, dtype)
    args = (gamma, beta, running_mean, running_var, mean, invstd, bool(train), float(momentum), float(eps),
            _code(activation), dtype.type(alpha))
    if x.ndim == 2:  # (N, C): row by row
        over(x.shape[1], 3 * x.size, k.batchnorm_forward_rows, x, *args, out, *_channel_sums(x.shape[1]))
    else:
        over(x.shape[1], 3 * x.size, k.batchnorm_forward, _ncp(x), *args, _ncp(out))
    return out


def _channel_sums(c):
    """Two float64 (C,) scratch vectors for the row-by-row batch norm's per-channel sums."""
    return _scratch("bn_s1", (c,), np.float64), _scratch("bn_s2", (c,), np.float64)


def batchnorm_backward(x, gamma, y, dy, mean, invstd, train, activation="identity", alpha=0.2, dgamma=None,
                       dbeta=None, dx=None):
    """dgamma, dbeta (C,) accumulate; dx written (through the batch statistics in train mode). Returns dx."""
    x, y, dy, dtype = _c(x), _c(y), _c(dy), x.dtype
    c = x.shape[1]
    grads = (dgamma if dgamma is not None else _zeros(c, dtype), dbeta if dbeta is not None else _zeros(c, dtype))
    out = _output(dx, x.shape, dtype) if dx is not None else _scratch("bn_dx", x.shape, dtype)
    wants = (dgamma is not None, dbeta is not None, dx is not None)
    stats = (mean, invstd, bool(train), _code(activation), dtype.type(alpha))
    if x.ndim == 2:  # (N, C): row by row
        over(c, 5 * x.size, k.batchnorm_backward_rows, x, gamma, y, dy, *stats, *grads, out, *wants,
             *_channel_sums(c))
    else:
        over(c, 5 * x.size, k.batchnorm_backward, _ncp(x), gamma, _ncp(y), _ncp(dy), *stats, *grads, _ncp(out),
             *wants)
    return dx


# ---- standalone activation -----------------------------------------------------------------------------------

def activation_forward(x, activation, alpha=0.2, out=None):
    """out = act(x), elementwise over any shape."""
    x = _c(x)
    out = _output(out, x.shape, x.dtype)
    k.activation_forward(x.reshape(-1), _code(activation), x.dtype.type(alpha), out.reshape(-1))
    return out


def activation_backward(y, dy, activation, alpha=0.2, dx=None):
    """dx = dy * act'(y), any shape. Returns dx."""
    y, dy = _c(y), _c(dy)
    dx = _output(dx, y.shape, y.dtype)
    k.activation_backward(y.reshape(-1), dy.reshape(-1), _code(activation), y.dtype.type(alpha), dx.reshape(-1))
    return dx


# ---- loss ----------------------------------------------------------------------------------------------------

def bce_with_logits(logits, target, scale=1.0, dlogits=None):
    """Mean sigmoid-BCE on logits (N, 1) or (N,), its gradient into dlogits, and the mean probability, in one
    pass. Returns (loss, mean sigmoid(x)) as NumPy scalars of the logits' dtype."""
    x, dtype = _c(logits), logits.dtype
    dlogits = _output(dlogits, x.shape, dtype)
    loss, p = k.bce_with_logits(x.reshape(-1), float(target), float(scale), dlogits.reshape(-1))
    return dtype.type(loss), dtype.type(p)


def bce_real_fake(logits, real_target, dlogits=None):
    """D's loss on reals (the first half of logits (2 B, 1)) and fakes (the second), each half's BCE a mean over
    its B rows, added; dlogits written. Returns (loss, mean sigmoid over the reals, over the fakes)."""
    return ref.real_fake_losses(bce_with_logits, logits, real_target, dlogits)


# ---- optimizers ----------------------------------------------------------------------------------------------

def sgd_update(param, grad, velocity, lr, momentum=0.0):
    """SGD with momentum over flat buffers (P,), in place, one pass."""
    t = param.dtype.type
    k.sgd_update(param, grad, velocity, t(lr), t(momentum))


def adam_update(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8):
    """Adam with bias correction over flat buffers (P,), in place, one pass; step is 1-based."""
    t = param.dtype.type
    scalars = (t(lr), (t(beta1), t(1 - beta1)), (t(beta2), t(1 - beta2)), t(eps), t(1 / (1 - beta1 ** step)),
               t(1 / (1 - beta2 ** step)))

    def block(lo, hi):
        k.adam_update(param[lo:hi], grad[lo:hi], m[lo:hi], v[lo:hi], *scalars)
    over(param.size, param.size, block)  # a block per 100k parameters: below that a thread's wake-up costs more


def average_update(average, value, decay):
    """One step of an exponential moving average over flat buffers (P,), in place, one pass."""
    t = average.dtype.type

    def block(lo, hi):
        k.average_update(average[lo:hi], value[lo:hi], t(decay), t(1 - decay))
    over(average.size, average.size, block)

# ---- sampling ------------------------------------------------------------------------------------------------

def noise(rng, prior, out):
    """Fill out (N, Z) with N(0, 1) or U(-1, 1) noise: NumPy's generator fills the buffer in place, so the
    stream is the reference's."""
    return ref.noise(rng, prior, out)


def batch_indices(rng, n, out):
    """Fill out (B,) int64 with indices uniform on [0, n), the reference's stream, without allocating."""
    k.batch_indices(rng, int(n), out)
    return out


def gather_rows(data, idx, out):
    """out (B, D) = data (N, D)[idx (B,)]."""
    k.gather_rows(data, idx, out)
    return out


def draw_rows(rng, data, idx, first, out):
    """batch_indices into idx (P,), then gather_rows of idx[first:first + B] into out (B, D). Returns out."""
    batch_indices(rng, data.shape[0], idx)
    return gather_rows(data, idx[first:first + out.shape[0]], out)


# ---- compilation ---------------------------------------------------------------------------------------------

def warm_up(dtypes=(np.float32,)):
    """Run every op once on tiny arrays so each compiled loop is loaded from the cache (or compiled and cached).
    Returns the seconds it took."""
    start = time.perf_counter()
    rng = new_rng(0)
    for dtype in dtypes:
        z = np.ones((2, 3), dtype)  # activation codes are runtime values: one compilation serves them all
        W, b, y, dy = np.ones((3, 4), dtype), np.ones(4, dtype), np.empty((2, 4), dtype), np.ones((2, 4), dtype)
        dense_forward(z, W, b, "relu", 0.2, out=y)
        dense_backward(z, W, y, dy, "relu", 0.2, np.zeros_like(W), np.zeros_like(b), np.empty_like(z))
        dense_backward(z, W, y, dy, "relu", 0.2, np.zeros_like(W), np.zeros_like(b), None)
        argmax = np.empty((2, 2), np.int32)
        ym = maxout_forward(z, W, b, 2, argmax)
        maxout_backward(z, W, ym, argmax, 2, np.zeros_like(W), np.zeros_like(b), np.empty_like(z))
        img = np.ones((2, 2, 4, 4), dtype)
        Wc = np.ones((3, 2, 4, 4), dtype)
        yc = conv2d_forward(img, Wc, None, 2, 1, "leaky_relu")
        conv2d_backward(img, Wc, yc, yc, 2, 1, "leaky_relu", 0.2, np.zeros_like(Wc), None, np.empty_like(img))
        yt = conv_transpose2d_forward(img, np.ones((2, 3, 4, 4), dtype), None, 2, 1, 0, "relu")
        conv_transpose2d_backward(img, np.ones((2, 3, 4, 4), dtype), yt, yt, 2, 1, "relu", 0.2,
                                  np.zeros((2, 3, 4, 4), dtype), None, np.empty_like(img))
        c = np.ones(2, dtype)
        for x in (img, np.ones((3, 2), dtype)):
            yb = batchnorm_forward(x, c, c, c.copy(), c.copy(), c.copy(), c.copy(), True)
            batchnorm_backward(x, c, yb, yb, c, c, True, "identity", 0.2, c.copy(), c.copy(), np.empty_like(x))
        activation_backward(z, activation_forward(z, "tanh"), "tanh")
        bce_with_logits(np.ones((2, 1), dtype), 1.0)
        p = np.ones(5, dtype)
        sgd_update(p, p.copy(), p.copy(), 0.1, 0.9)
        adam_update(p, p.copy(), p.copy(), p.copy(), 1, 0.1)
        average_update(p, p.copy(), 0.9)
        gather_rows(z, batch_indices(rng, 2, np.empty(2, np.int64)), np.empty_like(z))
    threads.policy().pin_blas()  # compiling loaded SciPy's BLAS too
    return time.perf_counter() - start


def kernel_cache_stats():
    """(loaded, compiled): how many compiled-loop signatures this process loaded from Numba's on-disk cache and
    how many it had to compile."""
    from numba.core.registry import CPUDispatcher

    dispatchers = [v for v in vars(k).values() if isinstance(v, CPUDispatcher)]
    return (sum(sum(d.stats.cache_hits.values()) for d in dispatchers),
            sum(sum(d.stats.cache_misses.values()) for d in dispatchers))
