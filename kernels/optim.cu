// optim.cu: optimizer updates over one flat parameter buffer per model, fp32, one launch per update.
//
//   sgd_update_kernel    param, grad, velocity (P,): velocity = momentum velocity + grad; param -= lr velocity
//   adam_update_kernel   param, grad, m, v (P,), step (1,) int in device memory, the 1-based update count:
//                        m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
//                        param -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
//   step_increment_kernel  step (1,) += 1: launched before adam_update_kernel, so a replayed CUDA graph counts
//
// Elementwise kernels: grid (ceil(P / 256),), block (256,).

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
                                              const int* __restrict__ step, float lr, float beta1, float beta2,
                                              float eps) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float t = (float)*step;
    float c1 = 1.f / (1.f - powf(beta1, t)), c2 = 1.f / (1.f - powf(beta2, t));
    float g = grad[i];
    float mi = beta1 * m[i] + (1.f - beta1) * g;
    float vi = beta2 * v[i] + (1.f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    param[i] -= lr * (mi * c1) / (sqrtf(vi * c2) + eps);
}

extern "C" __global__ void step_increment_kernel(int* step) { *step += 1; }
