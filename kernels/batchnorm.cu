// batchnorm.cu: batch norm, 1D (x (N, C), P = 1) and 2D (x (N, C, P) with P = H W), fp32, a block per channel.
//
//   batchnorm_forward_kernel   out = act(gamma (x - mean) invstd + beta), mean and invstd (C,) written.
//                              train: mean and biased var of the channel's M = N P values (two passes, so
//                              the variance does not cancel), running_mean / running_var moved towards them
//                              (momentum; unbiased var M / (M - 1) var for the running one, as PyTorch).
//                              eval: mean and var are the running statistics, left alone.
//   batchnorm_backward_kernel  g = dy act'(y), x_hat = (x - mean) invstd, sums over the channel's M values:
//                              dgamma += sum g x_hat, dbeta += sum g,
//                              dx = gamma invstd (g - sum g / M - x_hat sum(g x_hat) / M)   (train)
//                              dx = gamma invstd g                                        (eval)
//                              each of dgamma, dbeta, dx only when its want_ flag is 1.
//
// Sums are fixed-shape block trees (reduce.cuh): the same inputs give the same bits on every run.
// Grid (C,), block (REDUCE_THREADS,). N C P below 2^31.
#include "common.cuh"
#include "reduce.cuh"

extern "C" __global__ void __launch_bounds__(REDUCE_THREADS)
batchnorm_forward_kernel(const float* __restrict__ x, const float* __restrict__ gamma,
                         const float* __restrict__ beta, float* __restrict__ running_mean,
                         float* __restrict__ running_var, float* __restrict__ mean, float* __restrict__ invstd,
                         float* __restrict__ out, int n, int channels, int pixels, int train, float momentum,
                         float eps, int act, float alpha) {
    __shared__ float s[REDUCE_THREADS];
    const int c = blockIdx.x;
    const int m = n * pixels;
    float mu, inv;
    if (train) {
        float sum = 0.f;
        for (int i = threadIdx.x; i < m; i += REDUCE_THREADS) sum += x[channel_value(i, c, channels, pixels)];
        block_sum(s, sum);
        mu = s[0] / m;
        __syncthreads();  // everyone has read s[0] before the next sum writes s
        float squares = 0.f;
        for (int i = threadIdx.x; i < m; i += REDUCE_THREADS) {
            float d = x[channel_value(i, c, channels, pixels)] - mu;
            squares += d * d;
        }
        block_sum(s, squares);
        float var = s[0] / m;
        inv = 1.f / sqrtf(var + eps);
        if (threadIdx.x == 0) {
            running_mean[c] = (1.f - momentum) * running_mean[c] + momentum * mu;
            running_var[c] = (1.f - momentum) * running_var[c] + momentum * var * ((float)m / (float)(m - 1));
        }
    } else {
        mu = running_mean[c];
        inv = 1.f / sqrtf(running_var[c] + eps);
    }
    if (threadIdx.x == 0) {
        mean[c] = mu;
        invstd[c] = inv;
    }
    const float scale = gamma[c] * inv, shift = beta[c];
    for (int i = threadIdx.x; i < m; i += REDUCE_THREADS) {
        const int at = channel_value(i, c, channels, pixels);
        out[at] = act_forward((x[at] - mu) * scale + shift, act, alpha);
    }
}

extern "C" __global__ void __launch_bounds__(REDUCE_THREADS)
batchnorm_backward_kernel(const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ y,
                          const float* __restrict__ dy, const float* __restrict__ mean,
                          const float* __restrict__ invstd, float* __restrict__ dgamma, float* __restrict__ dbeta,
                          float* __restrict__ dx, int n, int channels, int pixels, int train, int act, float alpha,
                          int want_dgamma, int want_dbeta, int want_dx) {
    __shared__ float s[REDUCE_THREADS];
    const int c = blockIdx.x;
    const int m = n * pixels;
    const float mu = mean[c], inv = invstd[c];
    float sum_g = 0.f, sum_g_xhat = 0.f;
    for (int i = threadIdx.x; i < m; i += REDUCE_THREADS) {
        const int at = channel_value(i, c, channels, pixels);
        float g = act_backward(y[at], dy[at], act, alpha);
        sum_g += g;
        sum_g_xhat += g * (x[at] - mu) * inv;
    }
    block_sum(s, sum_g);
    sum_g = s[0];
    __syncthreads();  // everyone has read s[0] before the next sum writes s
    block_sum(s, sum_g_xhat);
    sum_g_xhat = s[0];
    if (threadIdx.x == 0) {
        if (want_dgamma) dgamma[c] += sum_g_xhat;
        if (want_dbeta) dbeta[c] += sum_g;
    }
    if (!want_dx) return;
    const float scale = gamma[c] * inv, mean_g = train ? sum_g / m : 0.f, mean_g_xhat = train ? sum_g_xhat / m : 0.f;
    for (int i = threadIdx.x; i < m; i += REDUCE_THREADS) {
        const int at = channel_value(i, c, channels, pixels);
        float g = act_backward(y[at], dy[at], act, alpha);
        dx[at] = scale * (g - mean_g - (x[at] - mu) * inv * mean_g_xhat);
    }
}
