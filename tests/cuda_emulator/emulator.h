// emulator.h: enough of CUDA C for g++ to build kernels/*.cu unchanged and run them on the CPU, for the tests.
//
// A launch runs its blocks one after another. A kernel that synchronises (EMULATOR_FIBERS 1) runs each thread of
// a block as a cooperative fiber that yields at __syncthreads() (started on its own stack with ucontext, then
// switched with _setjmp / _longjmp, which unlike swapcontext make no system call); once every thread has reached the
// barrier they all resume, and a barrier that some threads reach after others have returned is an error, as on
// a GPU it would hang or misbehave. A kernel without a barrier runs its threads one after another. __shared__
// memory is a static: one copy, which the running block owns. No preemption means atomics are plain updates.
// What this cannot show: data races between threads, warp-level behaviour, timing.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include <csetjmp>
#include <functional>
#include <string>
#include <ucontext.h>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct dim3 { unsigned int x = 1, y = 1, z = 1; };
struct uint2 { unsigned int x, y; };
struct uint4 { unsigned int x, y, z, w; };
struct float4 { float x, y, z, w; };
inline uint2 make_uint2(unsigned int x, unsigned int y) { return {x, y}; }
inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) { return {x, y, z, w}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

inline dim3 threadIdx, blockIdx, blockDim, gridDim;

inline unsigned int __umulhi(unsigned int a, unsigned int b) {
    return (unsigned int)(((unsigned long long)a * b) >> 32);
}
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
inline void sincospif(float x, float* s, float* c) {
    double a = M_PI * (double)x;
    *s = (float)sin(a);
    *c = (float)cos(a);
}
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
inline void __threadfence() {}
inline int atomicAdd(int* p, int v) {
    int old = *p;
    *p += v;
    return old;
}
inline float atomicAdd(float* p, float v) {
    float old = *p;
    *p += v;
    return old;
}
using std::max;
using std::min;

#ifndef EMULATOR_FIBERS
#define EMULATOR_FIBERS 0
#endif

namespace emulator {
constexpr size_t STACK = 16 * 1024;

struct Fiber {
    ucontext_t start;  // the first entry, onto the fiber's stack
    jmp_buf resume;    // where it waits at a barrier
    dim3 index;
    bool started, done;
    std::vector<char> stack = std::vector<char>(STACK);
};

inline std::vector<Fiber> fibers;
inline jmp_buf scheduler;
inline Fiber* running = nullptr;
inline std::function<void()> body;
inline std::string error;

inline void fiber_main() {
    body();
    running->done = true;
    _longjmp(scheduler, 1);
}

inline void barrier() {
    if (running == nullptr) {
        error = "__syncthreads() in a kernel built without EMULATOR_FIBERS";
        return;
    }
    if (!_setjmp(running->resume)) _longjmp(scheduler, 1);
}

inline dim3 thread_index(unsigned int t, dim3 block) {
    return {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
}

// One block: every thread to its next barrier, again and again until all have returned.
inline bool run_block(unsigned int threads) {
    if (!EMULATOR_FIBERS) {
        for (unsigned int t = 0; t < threads; ++t) {
            threadIdx = thread_index(t, blockDim);
            body();
        }
        return error.empty();
    }
    if (fibers.size() < threads) fibers.resize(threads);
    for (unsigned int t = 0; t < threads; ++t) {
        Fiber& f = fibers[t];
        f.index = thread_index(t, blockDim);
        f.started = f.done = false;
        getcontext(&f.start);
        f.start.uc_stack.ss_sp = f.stack.data();
        f.start.uc_stack.ss_size = f.stack.size();
        f.start.uc_link = nullptr;
        makecontext(&f.start, fiber_main, 0);
    }
    for (;;) {
        unsigned int done = 0;
        for (unsigned int t = 0; t < threads; ++t) {
            Fiber& f = fibers[t];
            if (!f.done) {
                running = &f;
                threadIdx = f.index;
                if (!_setjmp(scheduler)) {
                    if (f.started) _longjmp(f.resume, 1);
                    f.started = true;
                    setcontext(&f.start);
                }
                running = nullptr;
            }
            done += f.done;
        }
        if (done == threads) return true;
        if (done > 0) {
            error = "block (" + std::to_string(blockIdx.x) + ", " + std::to_string(blockIdx.y) + ", " +
                    std::to_string(blockIdx.z) + "): " + std::to_string(threads - done) +
                    " threads wait at __syncthreads() after " + std::to_string(done) + " returned";
            return false;
        }
    }
}

// Run `kernel` (a call of the kernel with its arguments) over grid x block. 0 on success, else see error.
inline int launch(const unsigned int* grid, const unsigned int* block, std::function<void()> kernel) {
    gridDim = {grid[0], grid[1], grid[2]};
    blockDim = {block[0], block[1], block[2]};
    body = std::move(kernel);
    error.clear();
    for (unsigned int z = 0; z < gridDim.z; ++z)
        for (unsigned int y = 0; y < gridDim.y; ++y)
            for (unsigned int x = 0; x < gridDim.x; ++x) {
                blockIdx = {x, y, z};
                if (!run_block(blockDim.x * blockDim.y * blockDim.z)) return 1;
            }
    return 0;
}
}  // namespace emulator

inline void __syncthreads() { emulator::barrier(); }

extern "C" const char* emulator_error() { return emulator::error.c_str(); }
