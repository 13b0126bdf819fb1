// bias.cu: the bias gradient of dense and convolution layers, fp32.
//
//   channel_grad_sum_kernel  db (C,) += sum over n and pixels of g = dy act'(y), y and dy (N, C, P) (P = 1 for a
//                            dense layer's (N, C)); a block per channel, a fixed-shape tree (deterministic)
//
// Grid (C,), block (REDUCE_THREADS,). N P below 2^31.
#include "common.cuh"
#include "reduce.cuh"

extern "C" __global__ void __launch_bounds__(REDUCE_THREADS)
channel_grad_sum_kernel(const float* __restrict__ y, const float* __restrict__ dy, float* __restrict__ db, int n,
                        int channels, int pixels, int act, float alpha) {
    __shared__ float s[REDUCE_THREADS];
    const int c = blockIdx.x;
    float sum = 0.f;
    for (int i = threadIdx.x; i < n * pixels; i += REDUCE_THREADS) {
        const int at = channel_value(i, c, channels, pixels);
        sum += act_backward(y[at], dy[at], act, alpha);
    }
    block_sum(s, sum);
    if (threadIdx.x == 0) db[c] += s[0];
}
