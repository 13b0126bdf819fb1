// random.cu: counter-based random numbers (Philox4x32-10, Salmon et al. 2011) and batch gathering, fp32.
//
// state (2,) uint64 in device memory: state[0] the key (the seed), state[1] the counter. Draw i of a launch
// uses counter block (state[1], i / 4) and keeps its result's lane i % 4; the launch's last block to finish
// (reduce.cuh's last_to_arrive, arrivals (1,) at 0 between launches) then moves state[1] on by one, so every
// replay of a captured CUDA graph draws fresh numbers and a saved state resumes exactly.
//
//   noise_normal_kernel     out (n,) ~ N(0, 1) by Box-Muller on pairs of lanes
//   noise_uniform_kernel    out (n,) ~ U(-1, 1)
//   batch_indices_kernel    out (B,) int64 uniform on [0, rows): floor(u32 * rows / 2^32), bias < rows / 2^32
//   gather_rows_kernel      out (B, D) = data (rows, D)[idx (B,)]
//   draw_rows_kernel        both in one launch: idx (P,) drawn as batch_indices_kernel draws it, and out (B, D) =
//                           data[idx[first:first + B]], each gathering thread drawing its row's index itself
//
// Elementwise kernels: grid (ceil(work / 256),), block (256,) (REDUCE_THREADS for the draws); gather_rows: one
// thread per output value.

// The blocks of a launch count their arrivals on one counter (reduce.cuh's last_to_arrive):
// emulator: shared_writes noise_normal_kernel arrivals
// emulator: shared_writes noise_uniform_kernel arrivals
// emulator: shared_writes batch_indices_kernel arrivals
// emulator: shared_writes draw_rows_kernel arrivals
#include "philox.cuh"
#include "reduce.cuh"

// The four 32-bit random words of block `b` of the launch whose state is `state`.
__device__ __forceinline__ uint4 random_block(const unsigned long long* state, unsigned long long b) {
    unsigned long long seed = state[0], counter = state[1];
    uint4 ctr = make_uint4((unsigned int)b, (unsigned int)(b >> 32), (unsigned int)counter,
                           (unsigned int)(counter >> 32));
    return philox4x32_10(ctr, make_uint2((unsigned int)seed, (unsigned int)(seed >> 32)));
}

// A uniform float in the open interval (0, 1) from 32 random bits: the top 23 bits, centred, exact in a float
// (never 0 or 1, so log() is finite and 2 u - 1 stays inside (-1, 1)).
__device__ __forceinline__ float unit_open(unsigned int bits) { return ((bits >> 9) + 0.5f) * (1.f / 8388608.f); }

// After a launch's draws: its last block to finish moves the counter on (every block has read it by then).
__device__ __forceinline__ void advance_counter(unsigned long long* state, int* arrivals) {
    if (last_to_arrive(arrivals, gridDim.x) && threadIdx.x == 0) state[1] += 1;
}

extern "C" __global__ void __launch_bounds__(REDUCE_THREADS)
noise_normal_kernel(float* __restrict__ out, long long n, unsigned long long* __restrict__ state,
                    int* __restrict__ arrivals) {
    const long long b = (long long)blockIdx.x * blockDim.x + threadIdx.x;  // one Philox block -> 4 normals
    if (b * 4 < n) {
        uint4 r = random_block(state, (unsigned long long)b);
        unsigned int words[4] = {r.x, r.y, r.z, r.w};
        for (int pair = 0; pair < 2; ++pair) {
            float radius = sqrtf(-2.f * logf(unit_open(words[2 * pair])));
            float s, c;
            sincospif(2.f * unit_open(words[2 * pair + 1]), &s, &c);
            long long i = b * 4 + 2 * pair;
            if (i < n) out[i] = radius * c;
            if (i + 1 < n) out[i + 1] = radius * s;
        }
    }
    advance_counter(state, arrivals);
}

extern "C" __global__ void __launch_bounds__(REDUCE_THREADS)
noise_uniform_kernel(float* __restrict__ out, long long n, unsigned long long* __restrict__ state,
                     int* __restrict__ arrivals) {
    const long long b = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (b * 4 < n) {
        uint4 r = random_block(state, (unsigned long long)b);
        unsigned int words[4] = {r.x, r.y, r.z, r.w};
        for (int lane = 0; lane < 4; ++lane)
            if (b * 4 + lane < n) out[b * 4 + lane] = 2.f * unit_open(words[lane]) - 1.f;
    }
    advance_counter(state, arrivals);
}

// A batch index uniform on [0, rows) from 32 random bits.
__device__ __forceinline__ long long batch_index(unsigned int bits, long long rows) {
    return (long long)(((unsigned long long)bits * rows) >> 32);
}

// Batch indices 4 b .. 4 b + 3 of the launch's `batch` into out: counter block b's four words.
__device__ __forceinline__ void draw_indices(long long* out, int batch, long long rows,
                                             const unsigned long long* state, int b) {
    if (b * 4 >= batch) return;
    uint4 r = random_block(state, (unsigned long long)b);
    unsigned int words[4] = {r.x, r.y, r.z, r.w};
    for (int lane = 0; lane < 4; ++lane)
        if (b * 4 + lane < batch) out[b * 4 + lane] = batch_index(words[lane], rows);
}

extern "C" __global__ void __launch_bounds__(REDUCE_THREADS)
batch_indices_kernel(long long* __restrict__ out, int batch, long long rows, unsigned long long* __restrict__ state,
                     int* __restrict__ arrivals) {
    draw_indices(out, batch, rows, state, blockIdx.x * blockDim.x + threadIdx.x);
    advance_counter(state, arrivals);
}

// Grid covering max(ceil(draws / 4), B D) threads: a thread draws 4 indices (the first ceil(draws / 4)) and
// gathers a value of out (the first B D), whose row's index it draws again (the same word of the same counter
// block: Philox is counter-based), so no thread waits for another. B D < 2^31 (the launcher checks).
extern "C" __global__ void __launch_bounds__(REDUCE_THREADS)
draw_rows_kernel(const float* __restrict__ data, long long* __restrict__ idx, float* __restrict__ out, int draws,
                 long long rows, int first, int batch, int dim, unsigned long long* __restrict__ state,
                 int* __restrict__ arrivals) {
    const unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
    draw_indices(idx, draws, rows, state, (int)t);
    if (t < (unsigned)batch * dim) {
        const unsigned row = t / dim, col = t - row * dim, d = first + row;  // a 32-bit division, once a thread
        const uint4 r = random_block(state, d / 4);
        const unsigned int words[4] = {r.x, r.y, r.z, r.w};
        out[t] = data[batch_index(words[d % 4], rows) * dim + col];
    }
    advance_counter(state, arrivals);
}

extern "C" __global__ void gather_rows_kernel(const float* __restrict__ data, const long long* __restrict__ idx,
                                              float* __restrict__ out, int batch, int dim) {
    const unsigned i = blockIdx.x * blockDim.x + threadIdx.x;  // B D < 2^31 (the launcher checks)
    if (i >= (unsigned)batch * dim) return;
    const unsigned row = i / dim, col = i - row * dim;  // a 32-bit division, once a thread
    out[i] = data[idx[row] * dim + col];
}
