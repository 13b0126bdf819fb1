// bias.cu: the bias gradient of dense and convolution layers, fp32.
//
//   channel_grad_sum_kernel  db (C,) += sum over n and pixels of g = dy act'(y), y and dy (N, C, P) (a convolution's;
//                            a dense layer's is a row of its weight gradient's GEMM, dense.cu): a channel
//                            reduction (reduce.cuh), each block's sum in partial (C, chunks), the last block of a
//                            channel adds them in chunk order (deterministic)
//
// Grid (C, chunks), block (REDUCE_THREADS,); arrivals (C,) at 0 between launches. N C P below 2^31.
// The blocks of a launch count their arrivals on one counter (reduce.cuh's last_to_arrive):
// emulator: shared_writes channel_grad_sum_kernel arrivals
#include "common.cuh"
#include "reduce.cuh"

extern "C" __global__ void __launch_bounds__(REDUCE_THREADS)
channel_grad_sum_kernel(const float* __restrict__ y, const float* __restrict__ dy, float* __restrict__ db,
                        float* __restrict__ partial, int* __restrict__ arrivals, int n, int channels, int pixels,
                        int act, float alpha) {
    __shared__ float s[REDUCE_THREADS];
    const int c = blockIdx.x, chunks = gridDim.y;
    const Chunk chunk = chunk_of(n * pixels);
    const Divisor image_pixels(pixels);
    float sum = 0.f;
    for (int i = chunk.begin + threadIdx.x; i < chunk.end; i += REDUCE_THREADS) {
        const int at = channel_value(i, c, channels, image_pixels);
        sum += act_backward(y[at], dy[at], act, alpha);
    }
    block_sum(s, sum);
    if (threadIdx.x == 0) partial[c * chunks + blockIdx.y] = s[0];
    if (!last_of_channel(arrivals) || threadIdx.x != 0) return;
    float total = 0.f;
    for (int k = 0; k < chunks; ++k) total += __ldcg(&partial[c * chunks + k]);
    db[c] += total;
}
