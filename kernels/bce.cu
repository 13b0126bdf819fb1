// bce.cu: the sigmoid binary cross-entropy on logits, fp32.
//
//   bce_with_logits_kernel  x (N,) logits, target t, scale s -> dx (N,) = s (sigmoid(x) - t) / N, and
//                           out[0] = s mean_n loss_n, loss_n = max(x, 0) - x t + log(1 + exp(-|x|)),
//                           out[1] = mean_n sigmoid(x_n)
//
// Each block strides over N and sums in shared memory with a fixed-shape tree into partial (2 * gridDim.x,); the
// last block to finish (reduce.cuh's last_to_arrive, arrivals (1,) at 0 between launches) sums the partials the
// same way into out. No atomics on the sums and a grid fixed by N, so the same inputs give the same bits on every
// run. Grid (blocks,) with blocks = min(ceil(N / REDUCE_THREADS), BCE_MAX_BLOCKS), blocks of REDUCE_THREADS.

// The blocks of a launch count their arrivals on one counter (reduce.cuh's last_to_arrive):
// emulator: shared_writes bce_with_logits_kernel arrivals
#include "reduce.cuh"

#define BCE_MAX_BLOCKS 1024

extern "C" __global__ void __launch_bounds__(REDUCE_THREADS)
bce_with_logits_kernel(const float* __restrict__ x, int n, float target, float scale, float* __restrict__ dx,
                       float* __restrict__ partial, int* __restrict__ arrivals, float* __restrict__ out) {
    __shared__ float s[REDUCE_THREADS];
    float loss = 0.f, prob_sum = 0.f;
    for (int i = blockIdx.x * REDUCE_THREADS + threadIdx.x; i < n; i += gridDim.x * REDUCE_THREADS) {
        float xi = x[i];
        float e = expf(-fabsf(xi));
        float prob = xi >= 0.f ? 1.f / (1.f + e) : e / (1.f + e);
        loss += fmaxf(xi, 0.f) - xi * target + log1pf(e);
        prob_sum += prob;
        dx[i] = scale * (prob - target) / n;
    }
    block_sum(s, loss);
    if (threadIdx.x == 0) partial[2 * blockIdx.x] = s[0];
    __syncthreads();  // thread 0 has read s[0] before the next sum writes s
    block_sum(s, prob_sum);
    if (threadIdx.x == 0) partial[2 * blockIdx.x + 1] = s[0];
    if (!last_to_arrive(arrivals, gridDim.x)) return;
    loss = prob_sum = 0.f;
    for (int b = threadIdx.x; b < (int)gridDim.x; b += REDUCE_THREADS) {
        loss += __ldcg(&partial[2 * b]);
        prob_sum += __ldcg(&partial[2 * b + 1]);
    }
    block_sum(s, loss);
    if (threadIdx.x == 0) out[0] = scale * s[0] / n;
    __syncthreads();
    block_sum(s, prob_sum);
    if (threadIdx.x == 0) out[1] = s[0] / n;
}
