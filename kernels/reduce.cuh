// reduce.cuh: a deterministic block sum, for kernels that reduce with blocks of REDUCE_THREADS threads.
#pragma once

#define REDUCE_THREADS 256

// Sum v over the block's REDUCE_THREADS threads into s[0] (s: REDUCE_THREADS floats of shared memory) with a
// fixed-shape tree, so the same values give the same bits on every run. Every thread must call it.
__device__ __forceinline__ void block_sum(float* s, float v) {
    const int t = threadIdx.x;
    s[t] = v;
    __syncthreads();
    for (int stride = REDUCE_THREADS / 2; stride > 0; stride >>= 1) {
        if (t < stride) s[t] += s[t + stride];
        __syncthreads();
    }
}
