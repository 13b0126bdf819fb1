// optim.cu: optimizer updates over one flat parameter buffer per model, fp32, one launch per update.
//
//   sgd_update_kernel    param, grad, velocity (P,): velocity = momentum velocity + grad; param -= lr velocity
//   adam_update_kernel   param, grad, m, v (P,), step (1,) int in device memory, the 1-based update count: this
//                        update's count is t = step + count_up (count_up 1: counted on the device, so that a
//                        captured CUDA graph counts every replay; 0: the host wrote it), and the last block to
//                        finish (reduce.cuh's last_to_arrive, arrivals (1,) at 0 between launches) stores it:
//                        m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
//                        param -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
//   The bias corrections are computed in double from double betas, as the reference does.
//   average_update_kernel  average, value (P,): average = decay average + rest value (rest = 1 - decay, rounded
//                        on the host): an exponential moving average of a model's parameters
//
// Elementwise kernels: grid (ceil(P / 256),), block (256,).
// The blocks of a launch count their arrivals on one counter (reduce.cuh's last_to_arrive):
// emulator: shared_writes adam_update_kernel arrivals
#include "reduce.cuh"

extern "C" __global__ void sgd_update_kernel(float* __restrict__ param, const float* __restrict__ grad,
                                             float* __restrict__ velocity, long long n, float lr, float momentum) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = momentum * velocity[i] + grad[i];
    velocity[i] = v;
    param[i] -= lr * v;
}

extern "C" __global__ void __launch_bounds__(REDUCE_THREADS)
adam_update_kernel(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ m,
                   float* __restrict__ v, long long n, int* __restrict__ step, int count_up, float lr, double beta1,
                   double beta2, float eps, int* __restrict__ arrivals) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const int t = *step + count_up;
    if (i < n) {
        double tt = (double)t;
        float c1 = (float)(1.0 / (1.0 - pow(beta1, tt))), c2 = (float)(1.0 / (1.0 - pow(beta2, tt)));
        float b1 = (float)beta1, b2 = (float)beta2, g = grad[i];
        float mi = b1 * m[i] + (float)(1.0 - beta1) * g;
        float vi = b2 * v[i] + (float)(1.0 - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        param[i] -= lr * (mi * c1) / (sqrtf(vi * c2) + eps);
    }
    if (last_to_arrive(arrivals, gridDim.x) && threadIdx.x == 0) *step = t;  // every block has read the old count
}

extern "C" __global__ void average_update_kernel(float* __restrict__ average, const float* __restrict__ value,
                                                 long long n, float decay, float rest) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    average[i] = decay * average[i] + rest * value[i];
}
