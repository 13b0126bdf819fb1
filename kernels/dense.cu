// dense.cu: the dense layer, fp32, row-major arrays.
//
//   dense_forward_kernel      y (N, O) = act(x (N, I) @ W (I, O) + b (O,))          NN GEMM, bias + activation
//                                                                                  in the epilogue
//   dense_backward_dw_kernel  dW (I, O) += x^T g, db (O,) += sum_n g                TN GEMM; g = dy act'(y) is
//                                                                                  made as g's tiles are loaded,
//                                                                                  db summed from those tiles
//   dense_backward_dx_kernel  dx (N, I) = g (N, O) @ W^T (O, I), g = dy act'(y)     NT GEMM, g made on load
//
// Every kernel is one tile of gemm.cuh's GEMM C (M, Nc) = A (M, K) @ B (K, Nc).
// Grid: (ceil(Nc / TILE_N), ceil(M / TILE_M)), block (16, 16).
#include "gemm.cuh"

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
dense_forward_kernel(const float* __restrict__ x, const float* __restrict__ W, const float* __restrict__ b,
                     float* __restrict__ y, int N, int I, int O, int act, float alpha) {
    float acc[4][4], unused[4];
    gemm_tile(Rows{x, x, I, ACT_IDENTITY, 0.f}, Rows{W, W, O, ACT_IDENTITY, 0.f}, N, O, I, acc, unused, false);
    store_tile(acc, N, O, [&](int r, int c, float v) {
        y[(long long)r * O + c] = act_forward(v + b[c], act, alpha);
    });
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
dense_backward_dw_kernel(const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ dy,
                         float* __restrict__ dW, float* __restrict__ db, int N, int I, int O, int act, float alpha,
                         int want_db) {
    // C = dW (I, O), A = x^T (I, N) read from x (N, I), B = g (N, O), K = N.
    float acc[4][4], colsum[4];
    bool sum_b = want_db && blockIdx.y == 0;  // one row of blocks sums g's columns for db
    gemm_tile(Transposed<Rows>{{x, x, I, ACT_IDENTITY, 0.f}}, Rows{dy, y, O, act, alpha}, I, O, N, acc, colsum,
              sum_b);
    store_tile(acc, I, O, [&](int r, int c, float v) { dW[(long long)r * O + c] += v; });
    if (sum_b && threadIdx.y == 0)
        for (int j = 0; j < 4; ++j) {
            int c = blockIdx.x * TILE_N + threadIdx.x * 4 + j;
            if (c < O) db[c] += colsum[j];
        }
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
dense_backward_dx_kernel(const float* __restrict__ y, const float* __restrict__ dy, const float* __restrict__ W,
                         float* __restrict__ dx, int N, int I, int O, int act, float alpha) {
    // C = dx (N, I), A = g (N, O), B = W^T (O, I) read from W (I, O), K = O.
    float acc[4][4], unused[4];
    gemm_tile(Rows{dy, y, O, act, alpha}, Transposed<Rows>{{W, W, O, ACT_IDENTITY, 0.f}}, N, I, O, acc, unused,
              false);
    store_tile(acc, N, I, [&](int r, int c, float v) { dx[(long long)r * I + c] = v; });
}
