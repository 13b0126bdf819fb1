// dense.cu: the dense layer, fp32, row-major arrays.
//
//   dense_forward_kernel      y (N, O) = act(x (N, I) @ W (I, O) + b (O,))          NN GEMM, bias + activation
//                                                                                  in the epilogue
//   dense_backward_dw_kernel  dW (I, O) += x^T g                                    TN GEMM; g = dy act'(y) is
//                                                                                  made as g's tiles are read
//   dense_backward_dx_kernel  dx (N, I) = g (N, O) @ W^T (O, I), g = dy act'(y)     NT GEMM, g made on read
//   dense_bias_grad_kernel    db (O,) += sum_n g                                    a thread per column, n in
//                                                                                  order (deterministic)
//
// The maxout layer (a unit's pieces are W's columns u * pieces + p):
//   maxout_forward_kernel      y (N, U) = max_p (x W + b), argmax (N, U) the first piece reaching it (NaN wins):
//                              gemm_grouped, a unit's pieces side by side in the epilogue (z is never stored)
//   maxout_backward_dw_kernel  dW (I, U pieces) += x^T g     TN GEMM; g (N, U pieces), dy at each unit's winning
//                                                            piece and 0 elsewhere, is made as g's tiles are read
//   maxout_backward_dx_kernel  dx (N, I) = g W^T             NT GEMM, g made on read
//   maxout_bias_grad_kernel    db (U pieces) += sum_n g      a thread per column, n in order (deterministic)
// Grid (ceil(columns / 256),), block (256,) for the two bias gradients, which are no GEMM: a warp reads 32
// neighbouring columns of a row at a time.
// Every kernel is gemm.cuh's GEMM C (M, Nc) = A (M, K) @ B (K, Nc), split along K when the launcher says so.
// Grid (tiles, 1, splits), block (16, 16); see gemm.cuh.
// The blocks of a launch count their arrivals on one counter (reduce.cuh's last_to_arrive):
// emulator: shared_writes dense_forward_kernel arrivals
// emulator: shared_writes dense_backward_dw_kernel arrivals
// emulator: shared_writes dense_backward_dx_kernel arrivals
// emulator: shared_writes maxout_forward_kernel arrivals
// emulator: shared_writes maxout_backward_dw_kernel arrivals
// emulator: shared_writes maxout_backward_dx_kernel arrivals
#include "gemm.cuh"

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
dense_forward_kernel(const float* __restrict__ x, const float* __restrict__ W, const float* __restrict__ b,
                     float* __restrict__ y, int N, int I, int O, int act, float alpha, SPLIT_PARAMS) {
    gemm(Rows{x, x, I, ACT_IDENTITY, 0.f}, Rows{W, W, O, ACT_IDENTITY, 0.f}, N, O, I, SPLIT,
         [&](int r, int c, float v) { y[r * O + c] = act_forward(v + b[c], act, alpha); });
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
dense_backward_dw_kernel(const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ dy,
                         float* __restrict__ dW, int N, int I, int O, int act, float alpha, SPLIT_PARAMS) {
    // C = dW (I, O), A = x^T (I, N) read from x (N, I), B = g (N, O), K = N.
    gemm(Transposed<Rows>{{x, x, I, ACT_IDENTITY, 0.f}}, Rows{dy, y, O, act, alpha}, I, O, N, SPLIT,
         [&](int r, int c, float v) { dW[r * O + c] += v; });
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
dense_backward_dx_kernel(const float* __restrict__ y, const float* __restrict__ dy, const float* __restrict__ W,
                         float* __restrict__ dx, int N, int I, int O, int act, float alpha, SPLIT_PARAMS) {
    // C = dx (N, I), A = g (N, O), B = W^T (O, I) read from W (I, O), K = O.
    gemm(Rows{dy, y, O, act, alpha}, Transposed<Rows>{{W, W, O, ACT_IDENTITY, 0.f}}, N, I, O, SPLIT,
         [&](int r, int c, float v) { dx[r * I + c] = v; });
}

// The maxout gradient as an operand: element (r, c) of g (N, U pieces) is dy (N, U) at (r, c / pieces) when
// c % pieces is that unit's argmax, else 0.
struct MaxoutGrad {
    const float* dy;
    const int* argmax;
    int units;
    Divisor pieces;
    static constexpr bool ROW_CONTIGUOUS = true;
    using Row = int;  // r units
    struct Col {
        int unit, piece;
    };
    __device__ int row(int r) const { return r * units; }
    __device__ Col col(int c) const {
        unsigned p;
        const int u = pieces.divmod(c, p);
        return {u, (int)p};
    }
    __device__ float at(int row, const Col& col) const {
        const int at = row + col.unit;
        return argmax[at] == col.piece ? dy[at] : 0.f;
    }
};

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
maxout_forward_kernel(const float* __restrict__ x, const float* __restrict__ W, const float* __restrict__ b,
                      float* __restrict__ y, int* __restrict__ argmax, int N, int I, int units, int pieces,
                      SPLIT_PARAMS) {
    // C = z (N, U pieces) = x W, K = I; the epilogue gets a unit's pieces z[n, u pieces ...] together.
    gemm_grouped(Rows{x, x, I, ACT_IDENTITY, 0.f}, Rows{W, W, units * pieces, ACT_IDENTITY, 0.f}, N, units, pieces, I,
                 SPLIT, [&](int r, int u, const float* z) {
                     const float* bias = b + u * pieces;
                     float best = z[0] + bias[0];
                     int arg = 0;
                     for (int p = 1; p < pieces; ++p) {
                         const float v = z[p] + bias[p];
                         if (v > best || (v != v && best == best)) {
                             best = v;
                             arg = p;
                         }
                     }
                     y[r * units + u] = best;
                     argmax[r * units + u] = arg;
                 });
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
maxout_backward_dw_kernel(const float* __restrict__ x, const float* __restrict__ dy, const int* __restrict__ argmax,
                          float* __restrict__ dW, int N, int I, int units, int pieces, SPLIT_PARAMS) {
    // C = dW (I, U pieces), A = x^T (I, N) read from x (N, I), B = g (N, U pieces), K = N.
    const int width = units * pieces;
    gemm(Transposed<Rows>{{x, x, I, ACT_IDENTITY, 0.f}}, MaxoutGrad{dy, argmax, units, Divisor(pieces)}, I, width, N,
         SPLIT, [&](int r, int c, float v) { dW[r * width + c] += v; });
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
maxout_backward_dx_kernel(const float* __restrict__ dy, const int* __restrict__ argmax, const float* __restrict__ W,
                          float* __restrict__ dx, int N, int I, int units, int pieces, SPLIT_PARAMS) {
    // C = dx (N, I), A = g (N, U pieces), B = W^T (U pieces, I) read from W (I, U pieces), K = U pieces.
    const int width = units * pieces;
    gemm(MaxoutGrad{dy, argmax, units, Divisor(pieces)}, Transposed<Rows>{{W, W, width, ACT_IDENTITY, 0.f}}, N, I,
         width, SPLIT, [&](int r, int c, float v) { dx[r * I + c] = v; });
}

extern "C" __global__ void dense_bias_grad_kernel(const float* __restrict__ y, const float* __restrict__ dy,
                                                  float* __restrict__ db, int N, int O, int act, float alpha) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;  // a column of g
    if (c >= O) return;
    float sum = 0.f;
    for (int at = c; at < N * O; at += O) sum += act_backward(y[at], dy[at], act, alpha);
    db[c] += sum;
}

extern "C" __global__ void maxout_bias_grad_kernel(const float* __restrict__ dy, const int* __restrict__ argmax,
                                                   float* __restrict__ db, int N, int units, int pieces) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;  // a column of g: unit u, piece p
    if (c >= units * pieces) return;
    const int u = c / pieces, p = c - u * pieces;
    float sum = 0.f;
    for (int n = 0; n < N; ++n) {
        if (argmax[n * units + u] == p) sum += dy[n * units + u];
    }
    db[c] += sum;
}
