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
//   window_scatter_phases_kernel  big (Cb, (n, by, bx)) = the transpose of the gather, split by stride phase
//                              (blockIdx.z / splits = py sw + px): the big pixels (py + sh qy, px + sw qx) only meet
//                              the taps i = ry + sh ti, ry = (py + ph) mod sh (likewise j), so each phase is a
//                              stride-1 GEMM over those taps alone, K = Cs ceil((kh - ry) / sh) ceil((kw - rx) / sw):
//                              no inserted zeros multiplied.
//                              conv_transpose2d_forward (epilogue: + bias, activation) and
//                              conv2d_backward's dx (small is then g, made on load)
//   window_scatter_thin_kernel the same big image when it has at most THIN_CHANNELS channels (a generator's gray or
//                              RGB output, a discriminator's gradient onto its input image), not as a GEMM, whose
//                              tiles of 16 rows or more would be mostly empty: a thread a big pixel, its Cb values
//                              summed over the taps that reach it and the small channels
//   window_weight_grad_kernel  dW (Cs, (Cb, i, j)) += small (Cs, (n, sy, sx)) @ patches(big)^T
//                              conv2d_backward's dW (small is g) and conv_transpose2d_backward's (big is g)
//   conv2d_backward_kernel     a convolution's dW and its dx by stride phases in one launch (gemm.cuh's pair)
//   conv_transpose2d_backward_kernel  a transposed convolution's dW and its gathered dx in one launch
//
// The readers split a row or column number into its (channel, tap) or (image, pixel) parts with common.cuh's
// Divisor (a multiply-high and a shift a division), made once a thread from the geometry: no division by a
// run-time size in the main loop (there were 32 to 48 a K slice at 128 x 128 before; benchmarks/kernel_loops.py).
// Where a channel's taps divide TILE_K (a 4 x 4 kernel: 16; a phase's 2 x 2), the readers of (channel, tap) numbers
// step from slice to slice (gemm.cuh's STEPS): the next slice holds the same taps of the next channels.
// The bias gradient is bias.cu's channel_grad_sum_kernel.
// Grids (tiles, 1, splits) for C (M, Nc) above, block (16, 16) (gemm.cuh); the phases kernel: (the largest phase's
// tiles, 1, sh sw splits), its partial sums and arrival counters a block per phase, each as large as the largest
// phase's. A gradient operand (`gradient` 1) is dy with y the forward's output beside it; otherwise the y argument
// is not read (pass the same array twice) and the epilogue adds the bias (when has_bias) and applies act.
// The blocks of a launch count their arrivals on one counter (reduce.cuh's last_to_arrive):
// emulator: shared_writes window_gather_kernel arrivals
// emulator: shared_writes window_scatter_phases_kernel arrivals
// emulator: shared_writes window_weight_grad_kernel arrivals
// emulator: shared_writes conv2d_backward_kernel arrivals
// emulator: shared_writes conv2d_backward_kernel arrivals2
// emulator: shared_writes conv_transpose2d_backward_kernel arrivals
// emulator: shared_writes conv_transpose2d_backward_kernel arrivals2
#include "gemm.cuh"

// The most big channels window_scatter_thin_kernel takes.
#define THIN_CHANNELS 4

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

// Half of where an element of a window matrix is (gemm.cuh's row() or col()): an offset into an image and a row and
// column in it; the element is at the sum of its row's half and its column's half, 0 outside the image (h, w).
struct WindowHalf {
    int at, y, x;
};

// Channels one K slice moves on through (channel, tap) numbers when a channel's `taps` divide TILE_K, else 0.
__device__ __forceinline__ int channels_a_slice(int taps) {
    return taps > 0 && TILE_K % taps == 0 ? TILE_K / taps : 0;
}

__device__ __forceinline__ float window_at(const Image& image, const WindowHalf& a, const WindowHalf& b, int h,
                                           int w) {
    const int y = a.y + b.y, x = a.x + b.x;
    if ((unsigned)y >= (unsigned)h || (unsigned)x >= (unsigned)w) return 0.f;
    return read(image.v, image.y, a.at + b.at, image.act, image.alpha);
}

// Element (r, c) = ((channel, i, j), (n, sy, sx)) of the patch matrix of a big image (im2col, read in place):
// big[n, channel, by + i, bx + j] with (by, bx) = (sy sh - ph, sx sw - pw) the window's corner.
struct Patches : Image {
    Divisor taps, kw, pixels, ws;  // kh kw, kw, hs ws, ws
    int channels_on;               // channels_a_slice(kh kw)
    static constexpr bool ROW_CONTIGUOUS = true;
    static constexpr int STEPS = STEPS_ROWS;
    using Row = WindowHalf;  // (channel hb + i) wb + j, i, j
    using Col = WindowHalf;  // (n cb hb + by) wb + bx, by, bx
    __device__ explicit Patches(const Image& image)
        : Image(image), taps(w.kh * w.kw), kw(w.kw), pixels(w.hs * w.ws), ws(w.ws),
          channels_on(channels_a_slice(w.kh * w.kw)) {}
    __device__ WindowHalf row(int r) const {
        unsigned tap, j;
        const int channel = taps.divmod(r, tap), i = kw.divmod(tap, j);
        return {(channel * w.hb + i) * w.wb + (int)j, i, (int)j};
    }
    __device__ WindowHalf col(int c) const {
        unsigned p, sx;
        const int n = pixels.divmod(c, p), sy = ws.divmod(p, sx);
        const int by = sy * w.sh - w.ph, bx = (int)sx * w.sw - w.pw;
        return {(n * w.cb * w.hb + by) * w.wb + bx, by, bx};
    }
    __device__ float at(const WindowHalf& row, const WindowHalf& col) const {
        return window_at(*this, row, col, w.hb, w.wb);
    }
    __device__ bool row_steps() const { return channels_on != 0; }
    __device__ WindowHalf row_step(const WindowHalf& row) const {
        return {row.at + channels_on * w.hb * w.wb, row.y, row.x};
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

// A phase's taps (ti, tj) of every small channel, numbered (channel, ti, tj): the Divisors of ti_count tj_count and
// tj_count.
struct PhaseTaps {
    Divisor taps, tj_count;
    int channels_on;  // channels_a_slice(ti_count tj_count)
    __device__ explicit PhaseTaps(const Phase& f)
        : taps(f.ti_count * f.tj_count), tj_count(f.tj_count), channels_on(channels_a_slice(f.ti_count * f.tj_count)) {}
    // channel, and (ti, tj) of tap number t.
    __device__ unsigned split(unsigned t, unsigned& ti, unsigned& tj) const {
        unsigned tap;
        const unsigned channel = taps.divmod(t, tap);
        ti = tj_count.divmod(tap, tj);
        return channel;
    }
};

// Element (r, c) = (big channel, (small channel, ti, tj)) of the phase's weights: W[s, r, ry + sh ti, rx + sw tj].
struct PhaseWeights {
    const float* W;
    Window w;
    Phase f;
    PhaseTaps t;
    static constexpr bool ROW_CONTIGUOUS = true;
    static constexpr int STEPS = STEPS_COLS;
    using Row = int;  // r kh kw
    using Col = int;  // (s cb kh + ry + sh ti) kw + rx + sw tj
    __device__ int row(int r) const { return r * w.kh * w.kw; }
    __device__ int col(int c) const {
        unsigned ti, tj;
        const int channel = t.split(c, ti, tj);
        return (channel * w.cb * w.kh + f.ry + w.sh * (int)ti) * w.kw + f.rx + w.sw * (int)tj;
    }
    __device__ float at(int row, int col) const { return W[row + col]; }
    __device__ bool col_steps() const { return t.channels_on != 0; }
    __device__ int col_step(int col) const { return col + t.channels_on * w.cb * w.kh * w.kw; }
};

// Element (r, c) = ((channel, ti, tj), (n, qy, qx)) of the phase's scattered matrix: small[n, channel, qy + oy - ti,
// qx + ox - tj], or 0 outside the small image.
struct PhaseScattered : Image {
    Phase f;
    PhaseTaps t;
    Divisor pixels, wq;  // hq wq, wq
    static constexpr bool ROW_CONTIGUOUS = true;
    static constexpr int STEPS = STEPS_ROWS;
    using Row = WindowHalf;  // (channel hs - ti) ws - tj, -ti, -tj
    using Col = WindowHalf;  // (n cs hs + qy + oy) ws + qx + ox, qy + oy, qx + ox
    __device__ PhaseScattered(const Image& image, const Phase& phase, const PhaseTaps& taps)
        : Image(image), f(phase), t(taps), pixels(f.hq * f.wq), wq(f.wq) {}
    __device__ WindowHalf row(int r) const {
        unsigned ti, tj;
        const int channel = t.split(r, ti, tj);
        return {(channel * w.hs - (int)ti) * w.ws - (int)tj, -(int)ti, -(int)tj};
    }
    __device__ WindowHalf col(int c) const {
        unsigned p, qx;
        const int n = pixels.divmod(c, p), sy = (int)wq.divmod(p, qx) + f.oy, sx = (int)qx + f.ox;
        return {(n * w.cs * w.hs + sy) * w.ws + sx, sy, sx};
    }
    __device__ float at(const WindowHalf& row, const WindowHalf& col) const {
        return window_at(*this, row, col, w.hs, w.ws);
    }
    __device__ bool row_steps() const { return t.channels_on != 0; }
    __device__ WindowHalf row_step(const WindowHalf& row) const {
        return {row.at + t.channels_on * w.hs * w.ws, row.y, row.x};
    }
};

// The K sides the gather and the phases kernels read (gemm.cuh's Slice of A itself and of B transposed) step.
static_assert(Slice<TILE_N, Transposed<Patches>>::STEPS && Slice<TILE_M, PhaseWeights>::STEPS &&
                  Slice<TILE_N, Transposed<PhaseScattered>>::STEPS,
              "the window readers step their K halves from slice to slice");

// Element (r, c) = (channel, (n, pixel)) of an image v (N, C, P) seen as a (C, N P) matrix.
struct Channels {
    const float* v;
    const float* y;
    int channels;
    Divisor pixels;
    int act;
    float alpha;
    static constexpr bool ROW_CONTIGUOUS = true;
    using Row = int;  // channel P
    using Col = int;  // n C P + pixel
    __device__ int row(int r) const { return r * (int)pixels.d; }
    __device__ int col(int c) const { return channel_value(c, 0, channels, pixels); }
    __device__ float at(int row, int col) const { return read(v, y, row + col, act, alpha); }
};

// Stores C (channels, (n, pixel)) into an image (N, channels, pixels): + bias and activation, or as it is.
struct ImageStore {
    float* out;
    const float* b;
    int channels;
    Divisor pixels;
    int has_bias, act;
    float alpha;
    __device__ void operator()(int r, int c, float v) const {
        out[channel_value(c, r, channels, pixels)] = act_forward(has_bias ? v + b[r] : v, act, alpha);
    }
};

#define WINDOW_PARAMS int n, int cb, int hb, int wb, int cs, int hs, int ws, int kh, int kw, int sh, int sw, int ph, \
                      int pw
#define WINDOW Window{n, cb, hb, wb, cs, hs, ws, kh, kw, sh, sw, ph, pw}

// The products of the kernels below, in the block's shared memory `shared` (gemm.cuh's gemm_with).
__device__ void window_gather(float* shared, const float* W, const float* big, const float* big_y, const float* b,
                              float* small, const Window& w, int act, float alpha, int gradient, int has_bias,
                              const Split& split) {
    const int K = w.cb * w.kh * w.kw;
    gemm_with(shared, Rows{W, W, K, ACT_IDENTITY, 0.f},
              Patches(Image{big, big_y, w, gradient ? act : ACT_IDENTITY, alpha}), w.cs, w.n * w.hs * w.ws, K, split,
              ImageStore{small, b, w.cs, Divisor(w.hs * w.ws), has_bias, gradient ? ACT_IDENTITY : act, alpha});
}

// z: the block's place in grid z, phase z / splits and split z % splits; each phase its own partial sums and
// counters.
__device__ void window_scatter_phases(float* shared, const float* W, const float* small, const float* small_y,
                                      const float* b, float* big, const Window& w, int act, float alpha, int gradient,
                                      int has_bias, int z, float* partial, int* arrivals, int splits) {
    const int phase = z / splits;
    const Phase f = phase_of(w, phase);
    const int M = w.cb, Nc = w.n * f.hq * f.wq, K = w.cs * f.ti_count * f.tj_count;
    const int largest = w.n * ((w.hb + w.sh - 1) / w.sh) * ((w.wb + w.sw - 1) / w.sw);  // the largest phase's Nc
    const int tiles = (M + TILE_M - 1) / TILE_M * ((largest + TILE_N - 1) / TILE_N);
    const Split split{partial + phase * splits * M * largest, arrivals + phase * tiles, splits, z % splits};
    const int out_act = gradient ? ACT_IDENTITY : act;
    const PhaseTaps taps(f);
    const PhaseScattered scattered(Image{small, small_y, w, gradient ? act : ACT_IDENTITY, alpha}, f, taps);
    gemm_with(shared, PhaseWeights{W, w, f, taps}, scattered, M, Nc, K, split, [&](int r, int c, float v) {
        unsigned q, qx;
        const unsigned image = scattered.pixels.divmod(c, q), qy = scattered.wq.divmod(q, qx);
        const int by = f.py + w.sh * qy, bx = f.px + w.sw * qx;
        big[((image * w.cb + r) * w.hb + by) * w.wb + bx] = act_forward(has_bias ? v + b[r] : v, out_act, alpha);
    });
}

__device__ void window_weight_grad(float* shared, const float* small, const float* small_y, const float* big,
                                   const float* big_y, float* dW, const Window& w, int small_act, int big_act,
                                   float alpha, const Split& split) {
    const int M = w.cs, Nc = w.cb * w.kh * w.kw, K = w.n * w.hs * w.ws;
    gemm_with(shared, Channels{small, small_y, w.cs, Divisor(w.hs * w.ws), small_act, alpha},
              Transposed<Patches>{Patches(Image{big, big_y, w, big_act, alpha})}, M, Nc, K, split,
              [&](int r, int c, float v) { dW[r * Nc + c] += v; });
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, GEMM_MIN_BLOCKS(2, 3))
window_gather_kernel(const float* __restrict__ W, const float* __restrict__ big, const float* __restrict__ big_y,
                     const float* __restrict__ b, float* __restrict__ small, WINDOW_PARAMS, int act, float alpha,
                     int gradient, int has_bias, SPLIT_PARAMS) {
    __shared__ __align__(16) float shared[SHARED_FLOATS];
    window_gather(shared, W, big, big_y, b, small, WINDOW, act, alpha, gradient, has_bias, SPLIT);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, GEMM_MIN_BLOCKS(2, 3))
window_scatter_phases_kernel(const float* __restrict__ W, const float* __restrict__ small,
                             const float* __restrict__ small_y, const float* __restrict__ b, float* __restrict__ big,
                             WINDOW_PARAMS, int act, float alpha, int gradient, int has_bias, SPLIT_PARAMS) {
    __shared__ __align__(16) float shared[SHARED_FLOATS];
    window_scatter_phases(shared, W, small, small_y, b, big, WINDOW, act, alpha, gradient, has_bias, blockIdx.z,
                          partial, arrivals, splits);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, GEMM_MIN_BLOCKS(0, 3))
window_weight_grad_kernel(const float* __restrict__ small, const float* __restrict__ small_y,
                          const float* __restrict__ big, const float* __restrict__ big_y, float* __restrict__ dW,
                          WINDOW_PARAMS, int small_act, int big_act, float alpha, SPLIT_PARAMS) {
    __shared__ __align__(16) float shared[SHARED_FLOATS];
    window_weight_grad(shared, small, small_y, big, big_y, dW, WINDOW, small_act, big_act, alpha, SPLIT);
}

// A layer's weight and input gradients in one launch (gemm.cuh's pair), g = dy act'(y): a convolution's (x the big
// image, y the small; dx by stride phases: its big image has more than THIN_CHANNELS channels) and a transposed
// one's (x small, y big; dx gathered).
extern "C" __global__ void __launch_bounds__(GEMM_THREADS, GEMM_MIN_BLOCKS(0, 3))
conv2d_backward_kernel(const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ dy,
                       const float* __restrict__ W, float* __restrict__ dW, const float* __restrict__ unused,
                       float* __restrict__ dx, WINDOW_PARAMS, int act, float alpha, PAIR_PARAMS) {
    __shared__ __align__(16) float shared[SHARED_FLOATS];
    if (IN_FIRST) window_weight_grad(shared, dy, y, x, x, dW, WINDOW, act, ACT_IDENTITY, alpha, FIRST_SPLIT);
    else window_scatter_phases(shared, W, dy, y, unused, dx, WINDOW, act, alpha, 1, 0, blockIdx.z - splits,
                               partial2, arrivals2, splits2);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, GEMM_MIN_BLOCKS(0, 3))
conv_transpose2d_backward_kernel(const float* __restrict__ x, const float* __restrict__ y,
                                 const float* __restrict__ dy, const float* __restrict__ W, float* __restrict__ dW,
                                 const float* __restrict__ unused, float* __restrict__ dx, WINDOW_PARAMS, int act,
                                 float alpha, PAIR_PARAMS) {
    __shared__ __align__(16) float shared[SHARED_FLOATS];
    if (IN_FIRST) window_weight_grad(shared, x, x, dy, y, dW, WINDOW, ACT_IDENTITY, act, alpha, FIRST_SPLIT);
    else window_gather(shared, W, dy, y, unused, dx, WINDOW, act, alpha, 1, 0, SECOND_SPLIT);
}

// Big pixel (by, bx) meets the taps i = by + ph - sh sy of the small rows sy, every sh-th tap from (by + ph) mod sh
// down the rows from (by + ph) / sh (likewise j and sx). Its CB values, each a sum over (i, j, small channel) in that
// order, with the bias and activation of a forward.
template <int CB>
__device__ void scatter_thin(const float* __restrict__ W, const float* __restrict__ small,
                             const float* __restrict__ small_y, const float* __restrict__ b, float* __restrict__ big,
                             const Window& w, int image, int by, int bx, int act, float alpha, int gradient,
                             int has_bias) {
    const int ty = by + w.ph, tx = bx + w.pw, plane = w.hs * w.ws, taps = w.kh * w.kw;
    const int in_act = gradient ? act : ACT_IDENTITY;
    float sum[CB] = {};
    for (int i = ty % w.sh, sy = ty / w.sh; i < w.kh && sy >= 0; i += w.sh, --sy) {
        if (sy >= w.hs) continue;
        for (int j = tx % w.sw, sx = tx / w.sw; j < w.kw && sx >= 0; j += w.sw, --sx) {
            if (sx >= w.ws) continue;
            const float* tap = W + i * w.kw + j;             // W[s, c, i, j] = tap[c taps], s = 0
            int at = (image * w.cs * w.hs + sy) * w.ws + sx;  // small[image, s, sy, sx], s = 0
            for (int s = 0; s < w.cs; ++s, at += plane, tap += CB * taps) {
                const float v = read(small, small_y, at, in_act, alpha);
                #pragma unroll
                for (int c = 0; c < CB; ++c) sum[c] += tap[c * taps] * v;
            }
        }
    }
    const int out_act = gradient ? ACT_IDENTITY : act;
    #pragma unroll
    for (int c = 0; c < CB; ++c)
        big[((image * CB + c) * w.hb + by) * w.wb + bx] = act_forward(has_bias ? sum[c] + b[c] : sum[c], out_act,
                                                                      alpha);
}

// Grid covering the N Hb Wb big pixels, block REDUCE_THREADS; 1 <= Cb <= THIN_CHANNELS.
extern "C" __global__ void __launch_bounds__(REDUCE_THREADS)
window_scatter_thin_kernel(const float* __restrict__ W, const float* __restrict__ small,
                           const float* __restrict__ small_y, const float* __restrict__ b, float* __restrict__ big,
                           WINDOW_PARAMS, int act, float alpha, int gradient, int has_bias) {
    static_assert(THIN_CHANNELS == 4, "a case below for every channel count up to THIN_CHANNELS");
    const int pixel = blockIdx.x * blockDim.x + threadIdx.x;  // (image, by, bx)
    if (pixel >= n * hb * wb) return;
    const Window w = WINDOW;
    const int bx = pixel % wb, by = pixel / wb % hb, image = pixel / (wb * hb);
    switch (cb) {
        case 1: scatter_thin<1>(W, small, small_y, b, big, w, image, by, bx, act, alpha, gradient, has_bias); break;
        case 2: scatter_thin<2>(W, small, small_y, b, big, w, image, by, bx, act, alpha, gradient, has_bias); break;
        case 3: scatter_thin<3>(W, small, small_y, b, big, w, image, by, bx, act, alpha, gradient, has_bias); break;
        case 4: scatter_thin<4>(W, small, small_y, b, big, w, image, by, bx, act, alpha, gradient, has_bias); break;
    }
}
