// bce.cu: the sigmoid binary cross-entropy on logits, fp32.
//
//   bce_with_logits_kernel  x (N,) logits in two groups, rows [0, first) with target t0 and rows [first, N) with
//                           target t1 (none when first = N), scale s -> dx (N,) = s (sigmoid(x) - t) / (its group's
//                           rows), and out[0] = s (mean loss_n over the first group + that over the second),
//                           loss_n = max(x, 0) - x t + log(1 + exp(-|x|)), out[1 + g] = group g's mean sigmoid(x_n).
//                           One group: one loss; two: D's loss on reals and fakes side by side, in one launch.
//
// Each block strides over N and sums in shared memory with a fixed-shape tree into partial (4 * gridDim.x,): per
// group, the loss and the probabilities; the last block to finish (reduce.cuh's last_to_arrive, arrivals (1,) at 0
// between launches) sums the partials the same way into out. No atomics on the sums and a grid fixed by N, so the
// same inputs give the same bits on every run. Grid (blocks,) with blocks = min(ceil(N / REDUCE_THREADS),
// BCE_MAX_BLOCKS), blocks of REDUCE_THREADS.

// The blocks of a launch count their arrivals on one counter (reduce.cuh's last_to_arrive):
// emulator: shared_writes bce_with_logits_kernel arrivals
#include "reduce.cuh"

#define BCE_MAX_BLOCKS 1024

extern "C" __global__ void __launch_bounds__(REDUCE_THREADS)
bce_with_logits_kernel(const float* __restrict__ x, int n, int first, float target0, float target1, float scale,
                       float* __restrict__ dx, float* __restrict__ partial, int* __restrict__ arrivals,
                       float* __restrict__ out) {
    __shared__ float s[REDUCE_THREADS];
    const int groups = first < n ? 2 : 1;
    float sums[4] = {0.f, 0.f, 0.f, 0.f};  // group 0's loss and probabilities, then group 1's
    for (int i = blockIdx.x * REDUCE_THREADS + threadIdx.x; i < n; i += gridDim.x * REDUCE_THREADS) {
        const bool later = i >= first;
        const float target = later ? target1 : target0;
        float xi = x[i];
        float e = expf(-fabsf(xi));
        float prob = xi >= 0.f ? 1.f / (1.f + e) : e / (1.f + e);
        const float loss = fmaxf(xi, 0.f) - xi * target + log1pf(e);
        if (later) {
            sums[2] += loss;
            sums[3] += prob;
        } else {
            sums[0] += loss;
            sums[1] += prob;
        }
        dx[i] = scale * (prob - target) / (later ? n - first : first);
    }
    #pragma unroll
    for (int q = 0; q < 4; ++q) {
        if (q >= 2 * groups) break;
        block_sum(s, sums[q]);
        if (threadIdx.x == 0) partial[4 * blockIdx.x + q] = s[0];
        __syncthreads();  // thread 0 has read s[0] before the next sum writes s
    }
    if (!last_to_arrive(arrivals, gridDim.x)) return;
    #pragma unroll
    for (int q = 0; q < 4; ++q) {
        if (q >= 2 * groups) break;
        float sum = 0.f;
        for (int b = threadIdx.x; b < (int)gridDim.x; b += REDUCE_THREADS) sum += __ldcg(&partial[4 * b + q]);
        block_sum(s, sum);
        sums[q] = s[0];
        __syncthreads();  // every thread has read s[0] before the next sum writes s
    }
    if (threadIdx.x != 0) return;
    float loss = scale * sums[0] / first;
    if (groups == 2) {
        loss += scale * sums[2] / (n - first);
        out[2] = sums[3] / (n - first);
    }
    out[0] = loss;
    out[1] = sums[1] / first;
}
