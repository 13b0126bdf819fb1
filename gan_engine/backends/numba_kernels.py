"""The compiled loops of the Numba backend: fused elementwise passes, im2col/col2im, a register-blocked GEMM for
the small products (large GEMMs are NumPy's BLAS, called from numba_cpu.py between these loops).

Every function here is `@njit(cache=True)` and takes contiguous arrays (C, or F for a transposed GEMM operand),
integer codes and scalars of the arrays' dtype; `numba_cpu.py` checks and converts its arguments and documents
each op. Activation codes index `numpy_ref.ACTIVATIONS`: 0 identity, 1 leaky_relu, 2 relu, 3 tanh, 4 sigmoid.

The fast-math flags allow reassociation (vectorised sums) and fused multiply-adds but keep NaN and inf
semantics, so a diverging run still shows NaN in its losses. error_model="numpy" drops Python's
zero-division check, which otherwise keeps LLVM from vectorising any loop that divides.

The loops release the GIL (nogil) and the per-channel ones take a channel range lo..hi (Adam takes slices), so
numba_cpu.py spreads them over the engine's threads (threads.over); there is no Numba thread pool: prange threads beside
BLAS's made the DCGAN step 1.7 to 3 times slower on 2 cores (the two pools take turns spinning).
"""
import math

import numpy as np
from numba import njit, types
from numba.extending import overload
from numba.np.random.generator_core import next_uint32
from numba.np.random.random_methods import bounded_lemire_uint64, buffered_bounded_lemire_uint32

FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
jit = njit(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")

# ---- activations ---------------------------------------------------------------------------------------------

def tanh(z):
    """tanh of a scalar: in float32 a rational approximation that vectorises (within 5 ulp of the exact value;
    the coefficients are Eigen's), in float64 libm's tanh."""
    return np.tanh(z)


@overload(tanh, jit_options={"fastmath": FASTMATH, "error_model": "numpy"})
def _tanh(z):
    if z != types.float32:
        return lambda z: np.tanh(z)
    f = np.float32
    clamp = f(7.90531110763549805)
    a1, a3, a5, a7 = f(4.89352455891786e-03), f(6.37261928875436e-04), f(1.48572235717979e-05), f(5.12229709037114e-08)
    a9, a11, a13 = f(-8.60467152213735e-11), f(2.00018790482477e-13), f(-2.76076847742355e-16)
    b0, b2, b4, b6 = f(4.89352518554385e-03), f(2.26843463243900e-03), f(1.18534705686654e-04), f(1.19825839466702e-06)

    def impl(z):
        x = min(max(z, -clamp), clamp)
        x2 = x * x
        p = ((((((a13 * x2 + a11) * x2 + a9) * x2 + a7) * x2 + a5) * x2 + a3) * x2 + a1) * x
        q = ((b6 * x2 + b4) * x2 + b2) * x2 + b0
        return p / q
    return impl


@jit
def act(z, code, alpha):
    """The activation of a scalar pre-activation z. alpha has z's type, and the constants are written so that
    float32 stays float32 (an integer literal would widen the loop to float64)."""
    if code == 1:
        return z if z > 0 else alpha * z
    if code == 2:
        return z if z > 0 or z != z else alpha - alpha  # NaN stays NaN, as np.maximum keeps it
    if code == 3:
        return tanh(z)
    if code == 4:  # in float64: sigmoid activations are not on any model's hot path
        return 0.5 + 0.5 * tanh(0.5 * z)
    return z


@jit
def act_grad(y, dy, code, alpha):
    """d loss / d pre-activation from the activation's output y and d loss / d y (scalars)."""
    if code == 1:
        return dy if y > 0 else alpha * dy
    if code == 2:
        return dy if y > 0 else dy * (alpha - alpha)  # as dy * (y > 0): NaN for an infinite dy
    if code == 3:
        return dy - dy * y * y
    if code == 4:
        return dy * (y - y * y)
    return dy


@jit
def activation_forward(x, code, alpha, out):
    """x, out (P,) flat: out = act(x)."""
    for i in range(x.size):
        out[i] = act(x[i], code, alpha)


@jit
def activation_backward(y, dy, code, alpha, dx):
    """y, dy, dx (P,) flat: dx = dy act'(y)."""
    for i in range(y.size):
        dx[i] = act_grad(y[i], dy[i], code, alpha)


# ---- GEMM and dense --------------------------------------------------------------------------------------------
# Large GEMMs run in NumPy's BLAS, called by numba_cpu.py between these loops; the blocked GEMM below serves the
# tiny and outer-product shapes where BLAS's call overhead dominates (see numba_cpu.use_blocked_gemm).

@jit
def gemm_blocked(a, b, out, accumulate):
    """out (M, N) (+)= a (M, K) @ b (K, N): four rows of `out` per pass over b, the row loop vectorised."""
    m, k = a.shape
    n = b.shape[1]
    if not accumulate:
        out[:] = 0
    i = 0
    while i + 4 <= m:
        for p in range(k):
            a0, a1, a2, a3 = a[i, p], a[i + 1, p], a[i + 2, p], a[i + 3, p]
            for j in range(n):
                bj = b[p, j]
                out[i, j] += a0 * bj
                out[i + 1, j] += a1 * bj
                out[i + 2, j] += a2 * bj
                out[i + 3, j] += a3 * bj
        i += 4
    for r in range(i, m):
        for p in range(k):
            ar = a[r, p]
            for j in range(n):
                out[r, j] += ar * b[p, j]


@jit
def add_into(out, t):
    """out (M, N) += t (M, N)."""
    m, n = out.shape
    for i in range(m):
        for j in range(n):
            out[i, j] += t[i, j]


@jit
def bias_act(out, b, code, alpha):
    """out (N, O) = act(out + b), b (O,): the dense forward's epilogue, one pass over the GEMM's output."""
    n, o = out.shape
    for i in range(n):
        for j in range(o):
            out[i, j] = act(out[i, j] + b[j], code, alpha)


@jit
def act_grad_rows(y, dy, code, alpha, g, db, want_db):
    """y, dy, g (N, O): g = dy act'(y), with db (O,) += sum_n g in the same pass (row by row, vectorised)."""
    n, o = y.shape
    for i in range(n):
        if want_db:
            for j in range(o):
                gij = act_grad(y[i, j], dy[i, j], code, alpha)
                g[i, j] = gij
                db[j] += gij
        else:
            for j in range(o):
                g[i, j] = act_grad(y[i, j], dy[i, j], code, alpha)


# ---- maxout --------------------------------------------------------------------------------------------------

@jit
def _largest_piece(z, b, i, at, pieces):
    """(the largest of z[i, at:at + pieces] + b[at:at + pieces], the first piece reaching it); a NaN wins."""
    best, arg = z[i, at] + b[at], 0
    for p in range(1, pieces):
        v = z[i, at + p] + b[at + p]
        if v > best or (v != v and best == best):
            best, arg = v, p
    return best, arg


@jit
def maxout_rows(z, b, pieces, y, argmax):
    """z (N, U pieces) + b -> y (N, U) the largest piece of each unit, argmax (N, U) the first piece reaching it
    (a NaN piece wins, as NumPy's max and argmax). The loop leaves NaN out, which makes it 2-3 times faster; the
    pieces' sum shows a NaN (or inf - inf), and only such a unit is looked at again with the NaN rule."""
    n, units = y.shape
    for i in range(n):
        for u in range(units):
            at = u * pieces
            best, arg = z[i, at] + b[at], 0
            total = best
            for p in range(1, pieces):
                v = z[i, at + p] + b[at + p]
                total += v
                if v > best:
                    best, arg = v, p
            if total != total:
                best, arg = _largest_piece(z, b, i, at, pieces)
            y[i, u], argmax[i, u] = best, arg


@jit
def maxout_grad_rows(dy, argmax, pieces, g, db, want_db):
    """g (N, U pieces) = dy (N, U) at each unit's winning piece (argmax), 0 elsewhere; db (U pieces,) += sum_n g."""
    n, units = dy.shape
    for i in range(n):
        for j in range(units * pieces):
            g[i, j] = 0
        for u in range(units):
            at = u * pieces + argmax[i, u]
            g[i, at] = dy[i, u]
            if want_db:
                db[at] += dy[i, u]


# ---- convolution: im2col and col2im on a channel-major layout ------------------------------------------------
# cols (C kH kW, N OH OW): row (c, i, j), column (n, p, q) holds x_pad[n, c, p sH + i, q sW + j], so one GEMM
# covers the whole batch: (C_out, C kH kW) @ cols. Images come flattened to (N, C, H W), and a window table
# idx (kH kW, OH OW) names, for tap (i, j) and output pixel (p, q), the input pixel read (h W + w), or -1 in the
# padding: the inner loops run over all OH OW pixels of a plane with no index arithmetic.

@jit
def window_index(h, w, kh, kw, sh, sw, ph, pw, oh, ow, idx):
    """Fill idx (kH kW, OH OW) with the flat input pixel under tap (i, j) of output pixel (p, q), or -1."""
    for i in range(kh):
        for j in range(kw):
            for p in range(oh):
                hh = p * sh + i - ph
                for q in range(ow):
                    ww = q * sw + j - pw
                    idx[i * kw + j, p * ow + q] = hh * w + ww if 0 <= hh < h and 0 <= ww < w else -1


@jit
def im2col(x, idx, cols, lo, hi):
    """x (N, C, H W) -> cols (C kH kW, N OH OW), zeros where a window hangs over the padding; channels lo..hi."""
    n, c, _ = x.shape
    taps, pixels = idx.shape
    for ci in range(lo, hi):
        for t in range(taps):
            row = ci * taps + t
            for s in range(n):
                base = s * pixels
                for pq in range(pixels):
                    src = idx[t, pq]
                    v = x[s, ci, max(src, 0)]
                    cols[row, base + pq] = v if src >= 0 else v - v


@jit
def col2im(cols, idx, b, code, alpha, x, lo, hi):
    """The adjoint of im2col: x (N, C, H W) = act(the cols entries summed back onto the pixels they read + b).
    One channel at a time (its N H W values stay in cache); b (C,) is added per channel (zeros for none),
    code 0 leaves the sum as it is. Channels lo..hi."""
    n, c, hw = x.shape
    taps, pixels = idx.shape
    for ci in range(lo, hi):
        for s in range(n):
            for k in range(hw):
                x[s, ci, k] = 0
        for t in range(taps):
            row = ci * taps + t
            for s in range(n):
                base = s * pixels
                for pq in range(pixels):
                    dst = idx[t, pq]
                    if dst >= 0:
                        x[s, ci, dst] += cols[row, base + pq]
        for s in range(n):
            for k in range(hw):
                x[s, ci, k] = act(x[s, ci, k] + b[ci], code, alpha)


@jit
def to_channel_major(x, out, lo, hi):
    """x (N, C, P) -> out (C, N P), channels lo..hi."""
    n, c, p = x.shape
    for ci in range(lo, hi):
        for s in range(n):
            for k in range(p):
                out[ci, s * p + k] = x[s, ci, k]


@jit
def from_channel_major(t, b, code, alpha, out, lo, hi):
    """t (C, N P) -> out (N, C, P) = act(t + b[c]) (b zeros for none), channels lo..hi."""
    n, c, p = out.shape
    for ci in range(lo, hi):
        for s in range(n):
            for k in range(p):
                out[s, ci, k] = act(t[ci, s * p + k] + b[ci], code, alpha)


@jit
def grad_nchw(y, dy, code, alpha, g, db, want_db, lo, hi):
    """y, dy, g (N, C, P): g = dy act'(y), with db (C,) += the sum of g per channel in the same pass. g may be a
    strided view, e.g. of a channel-major (C, N P) buffer. Channels lo..hi."""
    n, c, p = y.shape
    for ci in range(lo, hi):
        s_ = db[ci] * 0
        for s in range(n):
            for k in range(p):
                gv = act_grad(y[s, ci, k], dy[s, ci, k], code, alpha)
                g[s, ci, k] = gv
                s_ += gv
        if want_db:
            db[ci] += s_


# ---- batch norm ----------------------------------------------------------------------------------------------

@jit
def batchnorm_forward(x, gamma, beta, running_mean, running_var, mean, invstd, train, momentum, eps, code, alpha,
                      out, lo, hi):
    """x, out (N, C, P) (P = 1 for 1D); per-channel statistics in float64, two passes, then one normalise +
    activation pass. Channels lo..hi."""
    n, c, p = x.shape
    m = n * p
    for ci in range(lo, hi):
        if train:
            s = 0.0
            for i in range(n):
                for k in range(p):
                    s += x[i, ci, k]
            mu = s / m
            s2 = 0.0
            for i in range(n):
                for k in range(p):
                    d = x[i, ci, k] - mu
                    s2 += d * d
            var = s2 / m
            running_mean[ci] = (1 - momentum) * running_mean[ci] + momentum * mu
            running_var[ci] = (1 - momentum) * running_var[ci] + momentum * var * (m / (m - 1))
        else:
            mu = running_mean[ci]
            var = running_var[ci]
        inv = 1 / math.sqrt(var + eps)
        mean[ci] = mu
        invstd[ci] = inv
        scale = gamma[ci] * invstd[ci]
        shift = beta[ci] - mean[ci] * scale
        for i in range(n):
            for k in range(p):
                out[i, ci, k] = act(x[i, ci, k] * scale + shift, code, alpha)


@jit
def batchnorm_backward(x, gamma, y, dy, mean, invstd, train, code, alpha, dgamma, dbeta, dx, want_dgamma,
                       want_dbeta, want_dx, lo, hi):
    """x, y, dy, dx (N, C, P): per channel, one pass for sum(g) and sum(g x_hat), one pass for dx. Channels
    lo..hi."""
    n, c, p = x.shape
    m = n * p
    for ci in range(lo, hi):
        mu, inv = mean[ci], invstd[ci]
        sg = 0.0
        sgx = 0.0
        for i in range(n):
            for k in range(p):
                g = act_grad(y[i, ci, k], dy[i, ci, k], code, alpha)
                sg += g
                sgx += g * (x[i, ci, k] - mu) * inv
        if want_dgamma:
            dgamma[ci] += sgx
        if want_dbeta:
            dbeta[ci] += sg
        if want_dx:
            scale = gamma[ci] * inv
            a = sg / m if train else 0.0
            bcoef = sgx / m if train else 0.0
            for i in range(n):
                for k in range(p):
                    g = act_grad(y[i, ci, k], dy[i, ci, k], code, alpha)
                    dx[i, ci, k] = scale * (g - a - (x[i, ci, k] - mu) * inv * bcoef)


# Batch norm of a dense layer's (N, C): the channel loops above would walk a column with stride C; these walk the
# rows, every channel of a block side by side (vectorised), each channel's sums still taken over n in order into
# float64 scratch s1, s2 (C,). Channels lo..hi, taken as slices and looped from 0 (an index that might be negative
# keeps LLVM from vectorising), a row at a time: x[i, lo:hi] is contiguous to Numba, where the block x[:, lo:hi]
# has unknown strides and its loops stay scalar (4-5 times slower at (100, 400)).

@jit
def batchnorm_forward_rows(x, gamma, beta, running_mean, running_var, mean, invstd, train, momentum, eps, code,
                           alpha, out, s1, s2, lo, hi):
    """x, out (N, C): batchnorm_forward for 1D input, row by row."""
    n, c = x.shape[0], hi - lo
    s1, s2 = s1[lo:hi], s2[lo:hi]
    gamma, beta, mean, invstd = gamma[lo:hi], beta[lo:hi], mean[lo:hi], invstd[lo:hi]
    running_mean, running_var = running_mean[lo:hi], running_var[lo:hi]
    for j in range(c):
        s1[j], s2[j] = 0.0, 0.0
    if train:
        for i in range(n):
            xi = x[i, lo:hi]
            for j in range(c):
                s1[j] += xi[j]
        for j in range(c):
            s1[j] /= n
        for i in range(n):
            xi = x[i, lo:hi]
            for j in range(c):
                d = xi[j] - s1[j]
                s2[j] += d * d
        for j in range(c):
            s2[j] /= n
            running_mean[j] = (1 - momentum) * running_mean[j] + momentum * s1[j]
            running_var[j] = (1 - momentum) * running_var[j] + momentum * s2[j] * (n / (n - 1))
    else:
        for j in range(c):
            s1[j], s2[j] = running_mean[j], running_var[j]
    for j in range(c):
        mean[j] = s1[j]
        invstd[j] = 1 / math.sqrt(s2[j] + eps)
        s1[j] = gamma[j] * invstd[j]        # now the scale ...
        s2[j] = beta[j] - mean[j] * s1[j]   # ... and the shift
    for i in range(n):
        xi, yi = x[i, lo:hi], out[i, lo:hi]
        for j in range(c):
            yi[j] = act(xi[j] * s1[j] + s2[j], code, alpha)


@jit
def batchnorm_backward_rows(x, gamma, y, dy, mean, invstd, train, code, alpha, dgamma, dbeta, dx, want_dgamma,
                            want_dbeta, want_dx, s1, s2, lo, hi):
    """x, y, dy, dx (N, C): batchnorm_backward for 1D input, row by row (s1 = sum g, s2 = sum g x_hat). dx holds g
    (the gradient through the activation) between the two passes."""
    n, c = x.shape[0], hi - lo
    s1, s2 = s1[lo:hi], s2[lo:hi]
    gamma, mean, invstd, dgamma, dbeta = gamma[lo:hi], mean[lo:hi], invstd[lo:hi], dgamma[lo:hi], dbeta[lo:hi]
    for j in range(c):
        s1[j], s2[j] = 0.0, 0.0
    for i in range(n):
        xi, yi, dyi, dxi = x[i, lo:hi], y[i, lo:hi], dy[i, lo:hi], dx[i, lo:hi]
        for j in range(c):
            g = act_grad(yi[j], dyi[j], code, alpha)
            dxi[j] = g
            s1[j] += g
            s2[j] += g * (xi[j] - mean[j]) * invstd[j]
    for j in range(c):
        if want_dgamma:
            dgamma[j] += s2[j]
        if want_dbeta:
            dbeta[j] += s1[j]
    if not want_dx:
        return
    for j in range(c):
        s1[j] = s1[j] / n if train else 0.0
        s2[j] = s2[j] / n if train else 0.0
    for i in range(n):
        xi, dxi = x[i, lo:hi], dx[i, lo:hi]
        for j in range(c):
            inv = invstd[j]
            dxi[j] = gamma[j] * inv * (dxi[j] - s1[j] - (xi[j] - mean[j]) * inv * s2[j])


# ---- loss ----------------------------------------------------------------------------------------------------

@jit
def bce_with_logits(x, target, scale, dx):
    """x, dx (N,) flat: dx = scale (sigmoid(x) - t) / N; returns (scale mean BCE, mean sigmoid(x)) in float64."""
    n = x.size
    loss = 0.0
    psum = 0.0
    for i in range(n):
        xi = x[i]
        e = np.exp(-abs(xi))
        prob = 1 / (1 + e) if xi >= 0 else e / (1 + e)
        # max(x, 0) - x t, written so that nothing cancels: with the sum reassociated, max(x, 0) - x t + log1p(e)
        # lost the log1p term next to a large x (logit 50, target 1 gave 0 instead of 1.9e-22)
        linear = xi * (1 - target) if xi >= 0 else -xi * target
        loss += linear + np.log1p(e)
        psum += prob
        dx[i] = scale / n * (prob - target)
    return scale * loss / n, psum / n


# ---- optimizers ----------------------------------------------------------------------------------------------

@jit
def sgd_update(param, grad, velocity, lr, momentum):
    """param, grad, velocity (P,): velocity = momentum velocity + grad; param -= lr velocity."""
    for i in range(param.size):
        v = momentum * velocity[i] + grad[i]
        velocity[i] = v
        param[i] -= lr * v


@jit
def adam_update(param, grad, m, v, lr, beta1, beta2, eps, c1, c2):
    """param, grad, m, v (P,); beta1 = (b1, 1 - b1) and beta2 = (b2, 1 - b2); c1 = 1 / (1 - b1^t) and
    c2 = 1 / (1 - b2^t) are the bias corrections. Every scalar has the arrays' dtype, so a float32 update stays
    float32 (and vectorises twice as wide). The loop runs from 0: an index that may be negative (range(lo, hi))
    gets a wraparound test that stopped LLVM vectorising it (10x slower), so blocks come in as slices."""
    b1, rest1 = beta1
    b2, rest2 = beta2
    for i in range(param.size):
        g = grad[i]
        mi = b1 * m[i] + rest1 * g
        vi = b2 * v[i] + rest2 * g * g
        m[i] = mi
        v[i] = vi
        param[i] -= lr * (mi * c1) / (np.sqrt(vi * c2) + eps)


@jit
def average_update(average, value, decay, rest):
    """average, value (P,): average = decay average + rest value, rest = 1 - decay (scalars of the arrays' dtype)."""
    for i in range(average.size):
        average[i] = decay * average[i] + rest * value[i]

# ---- sampling ------------------------------------------------------------------------------------------------

@jit
def batch_indices(rng, n, out):
    """out (B,) int64 uniform on [0, n): NumPy's bounded draws (Lemire's rejection on 32-bit outputs below 2^32)
    one at a time on the generator's own bit stream, so the indices are those of rng.integers(0, n, B), and
    nothing is allocated (Numba's rng.integers(0, n) allocates a 1-element array per draw)."""
    r = n - 1
    bitgen = rng.bit_generator
    for i in range(out.size):
        if r == 0:
            out[i] = 0
        elif r < 0xFFFFFFFF:
            out[i] = buffered_bounded_lemire_uint32(bitgen, r)
        elif r == 0xFFFFFFFF:
            out[i] = next_uint32(bitgen)
        else:
            out[i] = bounded_lemire_uint64(bitgen, r)


@jit
def gather_rows(data, idx, out):
    """out (B, D) = data (N, D)[idx (B,)]."""
    for i in range(idx.size):
        out[i, :] = data[idx[i], :]
