// reduce.cuh: a deterministic block sum, for kernels that reduce with blocks of REDUCE_THREADS threads.
#pragma once

#define REDUCE_THREADS 256
static_assert(REDUCE_THREADS > 0 && (REDUCE_THREADS & (REDUCE_THREADS - 1)) == 0, "the tree halves: a power of 2");

// Sum v over the block's REDUCE_THREADS threads into s[0] (s: REDUCE_THREADS floats of shared memory) with a
// fixed-shape tree, so the same values give the same bits on every run. Every thread must call it, and the block
// must be REDUCE_THREADS threads: the kernels that call it are __launch_bounds__(REDUCE_THREADS) and the CUDA
// backend reads its block size from this file.
__device__ __forceinline__ void block_sum(float* s, float v) {
    const int t = threadIdx.x;
    s[t] = v;
    __syncthreads();
    for (int stride = REDUCE_THREADS / 2; stride > 0; stride >>= 1) {
        if (t < stride) s[t] += s[t + stride];
        __syncthreads();
    }
}
