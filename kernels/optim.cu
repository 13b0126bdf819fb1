// optim.cu: optimizer updates over one flat parameter buffer per model, fp32, one launch per update.
//
//   sgd_update_kernel    param, grad, velocity (P,): velocity = momentum velocity + grad; param -= lr velocity
//   adam_update_kernel   param, grad, m, v (P,), step (1,) int in device memory, the 1-based update count:
//                        m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
//                        param -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
//   The bias corrections are computed in double from double betas, as the reference does.
//   adam_count_kernel    step (1,) += 1: a new update, counted on the device, so that a captured CUDA graph
//                        counts every replay
//
// Elementwise kernels: grid (ceil(P / 256),), block (256,); adam_count_kernel: grid (1,), block (1,).

extern "C" __global__ void sgd_update_kernel(float* __restrict__ param, const float* __restrict__ grad,
                                             float* __restrict__ velocity, long long n, float lr, float momentum) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = momentum * velocity[i] + grad[i];
    velocity[i] = v;
    param[i] -= lr * v;
}

extern "C" __global__ void adam_update_kernel(float* __restrict__ param, const float* __restrict__ grad,
                                              float* __restrict__ m, float* __restrict__ v, long long n,
                                              const int* __restrict__ step, float lr, double beta1, double beta2,
                                              float eps) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    double t = (double)*step;
    float c1 = (float)(1.0 / (1.0 - pow(beta1, t))), c2 = (float)(1.0 / (1.0 - pow(beta2, t)));
    float b1 = (float)beta1, b2 = (float)beta2, g = grad[i];
    float mi = b1 * m[i] + (float)(1.0 - beta1) * g;
    float vi = b2 * v[i] + (float)(1.0 - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    param[i] -= lr * (mi * c1) / (sqrtf(vi * c2) + eps);
}

extern "C" __global__ void adam_count_kernel(int* step) { step[0] += 1; }
