// reduce.cuh: deterministic sums, for kernels that reduce with blocks of REDUCE_THREADS threads, and the hand-over
// of a grid's results to its last block.
//
// block_sum: a block's values summed with a fixed-shape tree.
// Channel reductions: a channel's values (N P of them, channel c of an (N, C, P) batch) are cut into gridDim.y
// chunks, block (c, chunk) each; each block writes its chunk's result to partial[c][chunk], and the last block of a
// channel to finish (an arrival counter per channel, at 0 between launches: that block sets it back) combines the
// channel's partials in chunk order, which fixes the order of the additions whatever order the blocks ran in. The
// same inputs on the same grid give the same bits; the launcher picks the chunks from the sizes and the SM count.
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

// This block's chunk of its channel's m values: [begin, end).
struct Chunk {
    int begin, end;
};

__device__ __forceinline__ Chunk chunk_of(int m) {
    const int per = (m + gridDim.y - 1) / gridDim.y;
    return Chunk{min((int)blockIdx.y * per, m), min(((int)blockIdx.y + 1) * per, m)};
}

// True in every thread of the last of `blocks` blocks to call it with the same counter (0 before the launch; that
// last block sets it back to 0), which then sees what every block wrote before its call: the one-launch way for a
// grid's blocks to hand their results to one of them, whichever finishes last. Every thread of each block must
// call it.
__device__ __forceinline__ bool last_to_arrive(int* counter, int blocks) {
    __shared__ int last;
    __threadfence();  // this block's writes are visible to every block before its arrival is counted
    __syncthreads();
    if (threadIdx.x == 0 && threadIdx.y == 0) {
        last = atomicAdd(counter, 1) == blocks - 1;
        if (last) *counter = 0;
    }
    __syncthreads();
    if (last) __threadfence();
    return last;
}

// last_to_arrive among the blocks of this block's channel (blockIdx.x; its chunks are blockIdx.y), a counter each.
__device__ __forceinline__ bool last_of_channel(int* arrivals) {
    return last_to_arrive(&arrivals[blockIdx.x], gridDim.y);
}
