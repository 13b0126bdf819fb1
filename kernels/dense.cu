// dense.cu: the dense layer, fp32, row-major arrays.
//
//   dense_forward_kernel      y (N, O) = act(x (N, I) @ W (I, O) + b (O,))          NN GEMM, bias + activation
//                                                                                  in the epilogue
//   dense_backward_dw_kernel  dW (I, O) += x^T g                                    TN GEMM; g = dy act'(y) is
//                                                                                  made as g's tiles are read
//   dense_backward_dx_kernel  dx (N, I) = g (N, O) @ W^T (O, I), g = dy act'(y)     NT GEMM, g made on read
//
// The bias gradient db += sum_n g is bias.cu's channel_grad_sum_kernel.
// Every kernel is gemm.cuh's GEMM C (M, Nc) = A (M, K) @ B (K, Nc), split along K when the launcher says so.
// Grid (tiles, 1, splits), block (16, 16); see gemm.cuh.
// The blocks of a launch count their arrivals on one counter (reduce.cuh's last_to_arrive):
// emulator: shared_writes dense_forward_kernel arrivals
// emulator: shared_writes dense_backward_dw_kernel arrivals
// emulator: shared_writes dense_backward_dx_kernel arrivals
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
