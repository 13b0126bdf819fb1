// conv.cu: 2-D convolution and transposed convolution (NCHW, fp32) as implicit GEMMs: the windows are read
// straight from the images as the GEMM's tiles are loaded (gemm.cuh), never written out as im2col columns.
//
// The two layers are adjoints, so one geometry serves both. Every window joins a pixel of the BIG image
// (N, Cb, Hb, Wb) (a convolution's input, a transposed convolution's output) to a pixel of the SMALL image
// (N, Cs, Hs, Ws) (a convolution's output, a transposed convolution's input); W is (Cs, Cb, kh, kw) for both,
// PyTorch's layout. Small pixel (sy, sx) sees big pixels (sy sh - ph + i, sx sw - pw + j), 0 <= i < kh,
// 0 <= j < kw (outside the big image: 0).
//
//   window_gather_kernel       small (Cs, (n, sy, sx)) = W (Cs, Cb kh kw) @ patches(big) ((Cb, i, j), (n, sy, sx))
//                              conv2d_forward (epilogue: + bias, activation) and
//                              conv_transpose2d_backward's dx (big is then g = dy act'(y), made on load)
//   window_scatter_kernel      big (Cb, (n, by, bx)) = W' (Cb, (Cs, i, j)) @ scattered(small) ((Cs, i, j), (n, by, bx))
//                              W'[c, (s, i, j)] = W[s, c, i, j]; scattered(small) is small[n, s, (by + ph - i) / sh,
//                              (bx + pw - j) / sw] where both divide exactly and land inside, else 0.
//                              conv_transpose2d_forward (epilogue: + bias, activation) and
//                              conv2d_backward's dx (small is then g, made on load)
//                              Variant 1: one GEMM that multiplies the zeros; with stride s, all but 1 / s^2 of
//                              its K loop (for kernel sides divisible by s) is zeros.
//   window_scatter_phases_kernel  the same result, variant 2: split by stride phase (blockIdx.z = py sw + px), the
//                              big pixels (py + sh qy, px + sw qx) only meet the taps i = ry + sh ti, ry =
//                              (py + ph) mod sh (likewise j), so each phase is a stride-1 GEMM over those taps
//                              alone: K = Cs ceil((kh - ry) / sh) ceil((kw - rx) / sw), no zeros multiplied.
//   window_weight_grad_kernel  dW (Cs, (Cb, i, j)) += small (Cs, (n, sy, sx)) @ patches(big)^T
//                              conv2d_backward's dW (small is g) and conv_transpose2d_backward's (big is g)
//   channel_grad_sum_kernel    db (C,) += sum over n and pixels of g = dy act'(y), y and dy (N, C, P): both
//                              layers' bias gradient; a block per channel, a fixed-shape tree (deterministic)
//
// The GEMM kernels: grid (ceil(Nc / 64), ceil(M / 64)) for C (M, Nc) above, block (16, 16); the phases
// kernel: grid (ceil(N ceil(Hb / sh) ceil(Wb / sw) / 64), ceil(Cb / 64), sh sw), the largest phase's tiles.
// channel_grad_sum_kernel: grid (C,), block (REDUCE_THREADS,).
// A gradient operand (`gradient` 1) is dy with y the forward's output beside it; otherwise the y argument is
// not read (pass the same array twice) and the epilogue adds the bias (when has_bias) and applies act.
#include "gemm.cuh"
#include "reduce.cuh"

struct Window {
    int n, cb, hb, wb, cs, hs, ws, kh, kw, sh, sw, ph, pw;
};

// An image operand: its values v (N, C, H, W), y beside them for a gradient, and the window geometry.
struct Image {
    const float* v;
    const float* y;
    Window w;
    int act;
    float alpha;
};

// Element (r, c) = ((channel, i, j), (n, sy, sx)) of the patch matrix of a big image (im2col, read in place).
struct Patches : Image {
    static constexpr bool ROW_CONTIGUOUS = true;
    __device__ float operator()(int r, int c) const {
        int channel = r / (w.kh * w.kw), i = (r / w.kw) % w.kh, j = r % w.kw;
        int n = c / (w.hs * w.ws), sy = (c / w.ws) % w.hs, sx = c % w.ws;
        int by = sy * w.sh - w.ph + i, bx = sx * w.sw - w.pw + j;
        if (by < 0 || by >= w.hb || bx < 0 || bx >= w.wb) return 0.f;
        return read(v, y, (((long long)n * w.cb + channel) * w.hb + by) * w.wb + bx, act, alpha);
    }
};

// Element (r, c) = ((channel, i, j), (n, by, bx)) of the scattered matrix of a small image (col2im's input,
// read in place): the small pixel whose window puts weight (i, j) on big pixel (by, bx), or 0.
struct Scattered : Image {
    static constexpr bool ROW_CONTIGUOUS = true;
    __device__ float operator()(int r, int c) const {
        int channel = r / (w.kh * w.kw), i = (r / w.kw) % w.kh, j = r % w.kw;
        int n = c / (w.hb * w.wb), by = (c / w.wb) % w.hb, bx = c % w.wb;
        int ty = by + w.ph - i, tx = bx + w.pw - j;
        if (ty < 0 || tx < 0 || ty % w.sh || tx % w.sw) return 0.f;
        int sy = ty / w.sh, sx = tx / w.sw;
        if (sy >= w.hs || sx >= w.ws) return 0.f;
        return read(v, y, (((long long)n * w.cs + channel) * w.hs + sy) * w.ws + sx, act, alpha);
    }
};

// Stride phase z of the big image: its pixels (py + sh qy, px + sw qx), qy < hq, qx < wq; the taps that reach
// them, i = ry + sh ti (ti < ti_count) and j = rx + sw tj (tj < tj_count); tap ti's small row, sy = qy + oy - ti.
struct Phase {
    int py, px, hq, wq, ry, rx, ti_count, tj_count, oy, ox;
};

__device__ __forceinline__ int count_from(int first, int end, int step) {
    return first < end ? (end - first + step - 1) / step : 0;
}

__device__ Phase phase_of(const Window& w, int z) {
    Phase f;
    f.py = z / w.sw;
    f.px = z % w.sw;
    f.hq = count_from(f.py, w.hb, w.sh);
    f.wq = count_from(f.px, w.wb, w.sw);
    f.ry = (f.py + w.ph) % w.sh;
    f.rx = (f.px + w.pw) % w.sw;
    f.ti_count = count_from(f.ry, w.kh, w.sh);
    f.tj_count = count_from(f.rx, w.kw, w.sw);
    f.oy = (f.py + w.ph - f.ry) / w.sh;
    f.ox = (f.px + w.pw - f.rx) / w.sw;
    return f;
}

// Element (r, c) = (big channel, (small channel, ti, tj)) of the phase's weights: W[s, r, ry + sh ti, rx + sw tj].
struct PhaseWeights {
    const float* W;
    Window w;
    Phase f;
    static constexpr bool ROW_CONTIGUOUS = true;
    __device__ float operator()(int r, int c) const {
        int taps = f.ti_count * f.tj_count, channel = c / taps, ti = (c / f.tj_count) % f.ti_count,
            tj = c % f.tj_count;
        return W[(((long long)channel * w.cb + r) * w.kh + f.ry + w.sh * ti) * w.kw + f.rx + w.sw * tj];
    }
};

// Element (r, c) = ((channel, ti, tj), (n, qy, qx)) of the phase's scattered matrix: small[n, channel, qy + oy - ti,
// qx + ox - tj], or 0 outside the small image.
struct PhaseScattered : Image {
    Phase f;
    static constexpr bool ROW_CONTIGUOUS = true;
    __device__ float operator()(int r, int c) const {
        int taps = f.ti_count * f.tj_count, channel = r / taps, ti = (r / f.tj_count) % f.ti_count,
            tj = r % f.tj_count;
        int n = c / (f.hq * f.wq), sy = (c / f.wq) % f.hq + f.oy - ti, sx = c % f.wq + f.ox - tj;
        if (sy < 0 || sy >= w.hs || sx < 0 || sx >= w.ws) return 0.f;
        return read(v, y, (((long long)n * w.cs + channel) * w.hs + sy) * w.ws + sx, act, alpha);
    }
};

// Element (r, c) = (channel, (n, pixel)) of an image v (N, C, P) seen as a (C, N P) matrix.
struct Channels {
    const float* v;
    const float* y;
    int channels, pixels, act;
    float alpha;
    static constexpr bool ROW_CONTIGUOUS = true;
    __device__ float operator()(int r, int c) const {
        return read(v, y, channel_value(c, r, channels, pixels), act, alpha);
    }
};

// Element (r, c) = (big channel, (small channel, i, j)) of W (Cs, Cb, kh, kw) with its first two axes swapped.
struct SwappedWeights {
    const float* W;
    Window w;
    static constexpr bool ROW_CONTIGUOUS = true;
    __device__ float operator()(int r, int c) const {
        int taps = w.kh * w.kw;
        return W[((long long)(c / taps) * w.cb + r) * taps + c % taps];
    }
};

// Stores C (channels, (n, pixel)) into an image (N, channels, pixels): + bias and activation, or as it is.
struct ImageStore {
    float* out;
    const float* b;
    int channels, pixels, has_bias, act;
    float alpha;
    __device__ void operator()(int r, int c, float v) const {
        out[channel_value(c, r, channels, pixels)] = act_forward(has_bias ? v + b[r] : v, act, alpha);
    }
};

// C (channels, (n, pixel)) = A @ B over K, stored into the image (N, channels, pixels) of `out`.
template <class OperandA, class OperandB>
__device__ void image_gemm(const OperandA& A, const OperandB& B, int K, const ImageStore& out, int n) {
    float acc[4][4], unused[4];
    gemm_tile(A, B, out.channels, n * out.pixels, K, acc, unused, false);
    store_tile(acc, out.channels, n * out.pixels, out);
}

#define WINDOW_PARAMS int n, int cb, int hb, int wb, int cs, int hs, int ws, int kh, int kw, int sh, int sw, int ph, \
                      int pw
#define WINDOW Window{n, cb, hb, wb, cs, hs, ws, kh, kw, sh, sw, ph, pw}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
window_gather_kernel(const float* __restrict__ W, const float* __restrict__ big, const float* __restrict__ big_y,
                     const float* __restrict__ b, float* __restrict__ small, WINDOW_PARAMS, int act, float alpha,
                     int gradient, int has_bias) {
    const Window w = WINDOW;
    const int K = cb * kh * kw;
    image_gemm(Rows{W, W, K, ACT_IDENTITY, 0.f}, Patches{{big, big_y, w, gradient ? act : ACT_IDENTITY, alpha}}, K,
               ImageStore{small, b, cs, hs * ws, has_bias, gradient ? ACT_IDENTITY : act, alpha}, n);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
window_scatter_kernel(const float* __restrict__ W, const float* __restrict__ small,
                      const float* __restrict__ small_y, const float* __restrict__ b, float* __restrict__ big,
                      WINDOW_PARAMS, int act, float alpha, int gradient, int has_bias) {
    const Window w = WINDOW;
    image_gemm(SwappedWeights{W, w}, Scattered{{small, small_y, w, gradient ? act : ACT_IDENTITY, alpha}},
               cs * kh * kw, ImageStore{big, b, cb, hb * wb, has_bias, gradient ? ACT_IDENTITY : act, alpha}, n);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
window_scatter_phases_kernel(const float* __restrict__ W, const float* __restrict__ small,
                             const float* __restrict__ small_y, const float* __restrict__ b, float* __restrict__ big,
                             WINDOW_PARAMS, int act, float alpha, int gradient, int has_bias) {
    const Window w = WINDOW;
    const Phase f = phase_of(w, blockIdx.z);
    const int M = cb, Nc = n * f.hq * f.wq, K = cs * f.ti_count * f.tj_count;
    if ((int)blockIdx.x * TILE_N >= Nc || (int)blockIdx.y * TILE_M >= M) return;  // the whole block: a smaller phase
    float acc[4][4], unused[4];
    gemm_tile(PhaseWeights{W, w, f}, PhaseScattered{{small, small_y, w, gradient ? act : ACT_IDENTITY, alpha}, f}, M,
              Nc, K, acc, unused, false);
    const int out_act = gradient ? ACT_IDENTITY : act;
    store_tile(acc, M, Nc, [&](int r, int c, float v) {
        int image = c / (f.hq * f.wq), by = f.py + sh * ((c / f.wq) % f.hq), bx = f.px + sw * (c % f.wq);
        big[(((long long)image * cb + r) * hb + by) * wb + bx] = act_forward(has_bias ? v + b[r] : v, out_act, alpha);
    });
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
window_weight_grad_kernel(const float* __restrict__ small, const float* __restrict__ small_y,
                          const float* __restrict__ big, const float* __restrict__ big_y, float* __restrict__ dW,
                          WINDOW_PARAMS, int small_act, int big_act, float alpha) {
    const Window w = WINDOW;
    const int M = cs, Nc = cb * kh * kw, K = n * hs * ws;
    float acc[4][4], unused[4];
    gemm_tile(Channels{small, small_y, cs, hs * ws, small_act, alpha},
              Transposed<Patches>{{{big, big_y, w, big_act, alpha}}}, M, Nc, K, acc, unused, false);
    store_tile(acc, M, Nc, [&](int r, int c, float v) { dW[(long long)r * Nc + c] += v; });
}

extern "C" __global__ void __launch_bounds__(REDUCE_THREADS)
channel_grad_sum_kernel(const float* __restrict__ y, const float* __restrict__ dy, float* __restrict__ db, int n,
                        int channels, int pixels, int act, float alpha) {
    __shared__ float s[REDUCE_THREADS];
    const int c = blockIdx.x;
    float sum = 0.f;
    for (long long i = threadIdx.x; i < (long long)n * pixels; i += REDUCE_THREADS) {
        long long at = channel_value(i, c, channels, pixels);
        sum += act_backward(y[at], dy[at], act, alpha);
    }
    block_sum(s, sum);
    if (threadIdx.x == 0) db[c] += s[0];
}
