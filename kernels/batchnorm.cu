// batchnorm.cu: batch norm, 1D (x (N, C), P = 1) and 2D (x (N, C, P) with P = H W), fp32. Each channel's M = N P
// values are cut into chunks, a block each: grid (C, chunks), block (REDUCE_THREADS,) (reduce.cuh).
//
//   batchnorm_stats_kernel      train: each block's chunk mean and sum of squared deviations (two passes, so the
//                               variance does not cancel) into partial (C, chunks, 2); the last block of the channel
//                               merges them in chunk order (Chan et al., in double) into the biased variance of
//                               all M values, writes mean and invstd (C,) and moves running_mean / running_var
//                               towards them (momentum; unbiased var M / (M - 1) var for the running one, as
//                               PyTorch); with `normalize` (one chunk a channel: the block is the channel's last),
//                               that block then writes out as batchnorm_forward_kernel would, in the same launch
//   batchnorm_forward_kernel    out = act(gamma (x - mean) invstd + beta): train, mean and invstd from the stats
//                               kernel; eval, the running statistics (left alone; block (c, 0) writes mean and
//                               invstd)
//   batchnorm_grad_sums_kernel  g = dy act'(y), x_hat = (x - mean) invstd: the channel's sum g and sum g x_hat, by
//                               chunk into partial and added in chunk order by the last block, which writes
//                               dgamma += sum g x_hat, dbeta += sum g (each when its want_ flag is 1) and
//                               sums (C, 2) = (sum g, sum g x_hat); with `backward` (one chunk a channel), that block
//                               then writes dx (train) as batchnorm_backward_kernel would, in the same launch
//   batchnorm_backward_kernel   dx = gamma invstd (g - sum g / M - x_hat sum(g x_hat) / M)   (train, sums given)
//                               dx = gamma invstd g                                        (eval)
//
// The same inputs on the same grid give the same bits. arrivals (C,) at 0 between launches. N C P below 2^31.
// The blocks of a launch count their arrivals on one counter (reduce.cuh's last_to_arrive):
// emulator: shared_writes batchnorm_stats_kernel arrivals
// emulator: shared_writes batchnorm_grad_sums_kernel arrivals
#include "common.cuh"
#include "reduce.cuh"

// out = act(gamma (x - mu) inv + beta) over this block's chunk of channel c.
__device__ void normalize_chunk(const float* __restrict__ x, float* __restrict__ out, int c, int n, int channels,
                                int pixels, float mu, float inv, float gamma, float beta, int act, float alpha) {
    const float scale = gamma * inv, shift = beta;
    const Chunk chunk = chunk_of(n * pixels);
    const Divisor image_pixels(pixels);
    for (int i = chunk.begin + threadIdx.x; i < chunk.end; i += REDUCE_THREADS) {
        const int at = channel_value(i, c, channels, image_pixels);
        out[at] = act_forward((x[at] - mu) * scale + shift, act, alpha);
    }
}

// dx = gamma inv (g - mean_g - x_hat mean_g_xhat), g = dy act'(y), over this block's chunk of channel c.
__device__ void backward_chunk(const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ dy,
                               float* __restrict__ dx, int c, int n, int channels, int pixels, float mu, float inv,
                               float gamma, float mean_g, float mean_g_xhat, int act, float alpha) {
    const float scale = gamma * inv;
    const Chunk chunk = chunk_of(n * pixels);
    const Divisor image_pixels(pixels);
    for (int i = chunk.begin + threadIdx.x; i < chunk.end; i += REDUCE_THREADS) {
        const int at = channel_value(i, c, channels, image_pixels);
        const float g = act_backward(y[at], dy[at], act, alpha);
        dx[at] = scale * (g - mean_g - (x[at] - mu) * inv * mean_g_xhat);
    }
}

// The last block's thread 0: the chunks' means and squared deviations merged in chunk order (Chan et al., in
// double) into mean, invstd and the running statistics of channel c.
__device__ void merge_stats(const float* partial, float* running_mean, float* running_var, float* mean,
                            float* invstd, int c, int chunks, int m, float momentum, float eps) {
    const int per = (m + chunks - 1) / chunks;
    double count = 0.0, mu_all = 0.0, squares_all = 0.0;
    for (int k = 0; k < chunks; ++k) {
        const double size = min(per, m - k * per);
        if (size <= 0.0) continue;
        const double mu_k = __ldcg(&partial[2 * (c * chunks + k)]);
        const double squares_k = __ldcg(&partial[2 * (c * chunks + k) + 1]);
        const double total = count + size, delta = mu_k - mu_all;
        mu_all += delta * size / total;
        squares_all += squares_k + delta * delta * count * size / total;
        count = total;
    }
    const float var = (float)(squares_all / m);
    mean[c] = (float)mu_all;
    invstd[c] = 1.f / sqrtf(var + eps);
    running_mean[c] = (1.f - momentum) * running_mean[c] + momentum * (float)mu_all;
    running_var[c] = (1.f - momentum) * running_var[c] + momentum * var * ((float)m / (float)(m - 1));
}

extern "C" __global__ void __launch_bounds__(REDUCE_THREADS)
batchnorm_stats_kernel(const float* __restrict__ x, float* __restrict__ running_mean, float* __restrict__ running_var,
                       float* __restrict__ mean, float* __restrict__ invstd, float* __restrict__ partial,
                       int* __restrict__ arrivals, int n, int channels, int pixels, float momentum, float eps,
                       const float* __restrict__ gamma, const float* __restrict__ beta, float* __restrict__ out,
                       int act, float alpha, int normalize) {
    __shared__ float s[REDUCE_THREADS];
    const int c = blockIdx.x, chunks = gridDim.y, m = n * pixels;
    const Chunk chunk = chunk_of(m);
    const Divisor image_pixels(pixels);
    float sum = 0.f;
    for (int i = chunk.begin + threadIdx.x; i < chunk.end; i += REDUCE_THREADS)
        sum += x[channel_value(i, c, channels, image_pixels)];
    block_sum(s, sum);
    const float mu = s[0] / (float)max(chunk.end - chunk.begin, 1);
    __syncthreads();  // everyone has read s[0] before the next sum writes s
    float squares = 0.f;
    for (int i = chunk.begin + threadIdx.x; i < chunk.end; i += REDUCE_THREADS) {
        const float d = x[channel_value(i, c, channels, image_pixels)] - mu;
        squares += d * d;
    }
    block_sum(s, squares);
    if (threadIdx.x == 0) {
        partial[2 * (c * chunks + blockIdx.y)] = mu;
        partial[2 * (c * chunks + blockIdx.y) + 1] = s[0];
    }
    if (!last_of_channel(arrivals)) return;
    if (threadIdx.x == 0) merge_stats(partial, running_mean, running_var, mean, invstd, c, chunks, m, momentum, eps);
    if (!normalize) return;
    __syncthreads();  // thread 0's mean and invstd are written
    normalize_chunk(x, out, c, n, channels, pixels, mean[c], invstd[c], gamma[c], beta[c], act, alpha);
}

extern "C" __global__ void __launch_bounds__(REDUCE_THREADS)
batchnorm_forward_kernel(const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
                         const float* __restrict__ running_mean, const float* __restrict__ running_var,
                         float* __restrict__ mean, float* __restrict__ invstd, float* __restrict__ out, int n,
                         int channels, int pixels, int train, float eps, int act, float alpha) {
    const int c = blockIdx.x;
    float mu, inv;
    if (train) {
        mu = mean[c];
        inv = invstd[c];
    } else {
        mu = running_mean[c];
        inv = 1.f / sqrtf(running_var[c] + eps);
        if (blockIdx.y == 0 && threadIdx.x == 0) {
            mean[c] = mu;
            invstd[c] = inv;
        }
    }
    normalize_chunk(x, out, c, n, channels, pixels, mu, inv, gamma[c], beta[c], act, alpha);
}

extern "C" __global__ void __launch_bounds__(REDUCE_THREADS)
batchnorm_grad_sums_kernel(const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ dy,
                           const float* __restrict__ mean, const float* __restrict__ invstd,
                           float* __restrict__ dgamma, float* __restrict__ dbeta, float* __restrict__ sums,
                           float* __restrict__ partial, int* __restrict__ arrivals, int n, int channels, int pixels,
                           int act, float alpha, int want_dgamma, int want_dbeta, const float* __restrict__ gamma,
                           float* __restrict__ dx, int backward) {
    __shared__ float s[REDUCE_THREADS];
    const int c = blockIdx.x, chunks = gridDim.y;
    const float mu = mean[c], inv = invstd[c];
    const Chunk chunk = chunk_of(n * pixels);
    const Divisor image_pixels(pixels);
    float sum_g = 0.f, sum_g_xhat = 0.f;
    for (int i = chunk.begin + threadIdx.x; i < chunk.end; i += REDUCE_THREADS) {
        const int at = channel_value(i, c, channels, image_pixels);
        const float g = act_backward(y[at], dy[at], act, alpha);
        sum_g += g;
        sum_g_xhat += g * (x[at] - mu) * inv;
    }
    block_sum(s, sum_g);
    if (threadIdx.x == 0) partial[2 * (c * chunks + blockIdx.y)] = s[0];
    __syncthreads();  // thread 0 has read s[0] before the next sum writes s
    block_sum(s, sum_g_xhat);
    if (threadIdx.x == 0) partial[2 * (c * chunks + blockIdx.y) + 1] = s[0];
    if (!last_of_channel(arrivals)) return;
    if (threadIdx.x == 0) {
        float total_g = 0.f, total_g_xhat = 0.f;
        for (int k = 0; k < chunks; ++k) {
            total_g += __ldcg(&partial[2 * (c * chunks + k)]);
            total_g_xhat += __ldcg(&partial[2 * (c * chunks + k) + 1]);
        }
        if (want_dgamma) dgamma[c] += total_g_xhat;
        if (want_dbeta) dbeta[c] += total_g;
        sums[2 * c] = total_g;
        sums[2 * c + 1] = total_g_xhat;
    }
    if (!backward) return;
    __syncthreads();  // thread 0's sums are written
    const int m = n * pixels;
    backward_chunk(x, y, dy, dx, c, n, channels, pixels, mu, inv, gamma[c], sums[2 * c] / m, sums[2 * c + 1] / m, act,
                   alpha);
}

extern "C" __global__ void __launch_bounds__(REDUCE_THREADS)
batchnorm_backward_kernel(const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ y,
                          const float* __restrict__ dy, const float* __restrict__ mean,
                          const float* __restrict__ invstd, const float* __restrict__ sums, float* __restrict__ dx,
                          int n, int channels, int pixels, int train, int act, float alpha) {
    const int c = blockIdx.x, m = n * pixels;
    const float mean_g = train ? sums[2 * c] / m : 0.f, mean_g_xhat = train ? sums[2 * c + 1] / m : 0.f;
    backward_chunk(x, y, dy, dx, c, n, channels, pixels, mean[c], invstd[c], gamma[c], mean_g, mean_g_xhat, act,
                   alpha);
}
