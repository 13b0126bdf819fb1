// activation.cu: a standalone activation and its derivative, fp32, any shape flattened to (P,).
//
//   activation_forward_kernel   out = act(x)
//   activation_backward_kernel  dx = dy act'(y), y the forward's output
//
// Elementwise kernels: grid (ceil(P / 256),), block (256,).
#include "common.cuh"

extern "C" __global__ void activation_forward_kernel(const float* __restrict__ x, float* __restrict__ out,
                                                     long long n, int act, float alpha) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = act_forward(x[i], act, alpha);
}

extern "C" __global__ void activation_backward_kernel(const float* __restrict__ y, const float* __restrict__ dy,
                                                      float* __restrict__ dx, long long n, int act, float alpha) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dx[i] = act_backward(y[i], dy[i], act, alpha);
}
