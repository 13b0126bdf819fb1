// emulator.h: enough of CUDA C for g++ to build kernels/*.cu unchanged and run them on the CPU, for the tests.
//
// A launch runs its blocks one after another (all of them, or the range the caller asks for). A kernel that
// synchronises (EMULATOR_FIBERS 1) runs each thread of a block as a cooperative fiber that yields at
// __syncthreads() (started on its own stack with ucontext, then switched with _setjmp / _longjmp, which unlike
// swapcontext make no system call); once every thread has reached the barrier they all resume. A kernel without a
// barrier runs its threads one after another.
// Between two barriers the threads run in the order emulator_set_order sets before a launch: forward (thread 0
// first), reversed, or shuffled (a new permutation at each barrier phase, from a generator seeded at each launch,
// so a run repeats). A thread that reads what another wrote without a barrier between sees a different value
// under some order.
// Checked, as errors that name the block:
// - a barrier that some threads reach after others have returned (on a GPU it would hang or misbehave);
// - threads of a block waiting at different __syncthreads() calls (the file and line of both).
// __shared__ memory is a static: one copy, which the running block owns. shared.ld gathers every function-local
// static of the build (CUDA device code has no other kind; this header declares none) into one section, filled
// with 0xFF bytes (a NaN in floating point) at the start of each block, so a read of shared memory the block has
// not written yet shows up as NaN. No preemption means atomics are plain updates.
// What this cannot show: races the three orders do not expose, warp-level behaviour, timing.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include <csetjmp>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <ucontext.h>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// A static, placed by shared.ld between emulator_shared_begin and emulator_shared_end. `used`: the emulator writes
// it unseen (poison_shared_memory), so g++ must not fold a read of one it never sees written to 0.
#define __shared__ static __attribute__((used))
#define __align__(n) __attribute__((aligned(n)))

extern "C" char emulator_shared_begin[], emulator_shared_end[];  // defined by shared.ld

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
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned int)x); }
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
    const char* file;  // the __syncthreads() it waits at
    int line;
    std::vector<char> stack = std::vector<char>(STACK);
};

enum Order { FORWARD, REVERSED, SHUFFLED };  // ORDERS in __init__.py

inline std::vector<Fiber> fibers;
inline jmp_buf scheduler;
inline Fiber* running = nullptr;
inline std::function<void()> body;
inline std::string error;
inline Order order = FORWARD;
inline std::mt19937_64 shuffler;
inline std::vector<unsigned int> sequence;

inline void fiber_main() {
    body();
    running->done = true;
    _longjmp(scheduler, 1);
}

inline void barrier(const char* file, int line) {
    if (running == nullptr) {
        error = "__syncthreads() in a kernel built without EMULATOR_FIBERS";
        return;
    }
    running->file = file;
    running->line = line;
    if (!_setjmp(running->resume)) _longjmp(scheduler, 1);
}

// Index i of a walk over `shape`, x fastest, then y, then z.
inline dim3 index_in(unsigned long long i, dim3 shape) {
    return {(unsigned int)(i % shape.x), (unsigned int)(i / shape.x % shape.y),
            (unsigned int)(i / ((unsigned long long)shape.x * shape.y))};
}

inline std::string name(dim3 d) {
    return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
}

inline std::string site(const Fiber& f) { return std::string(f.file) + ":" + std::to_string(f.line); }

inline bool same_site(const Fiber& a, const Fiber& b) { return a.line == b.line && !std::strcmp(a.file, b.file); }

// The order in which the block's threads run until the next barrier.
inline const std::vector<unsigned int>& next_order(unsigned int threads) {
    sequence.resize(threads);
    std::iota(sequence.begin(), sequence.end(), 0u);
    if (order == REVERSED) std::reverse(sequence.begin(), sequence.end());
    if (order == SHUFFLED) std::shuffle(sequence.begin(), sequence.end(), shuffler);
    return sequence;
}

inline void poison_shared_memory() {
    std::memset(emulator_shared_begin, 0xFF, emulator_shared_end - emulator_shared_begin);
}

inline void start_fibers(unsigned int threads) {
    if (fibers.size() < threads) fibers.resize(threads);
    for (unsigned int t = 0; t < threads; ++t) {
        Fiber& f = fibers[t];
        f.index = index_in(t, blockDim);
        f.started = f.done = false;
        getcontext(&f.start);
        f.start.uc_stack.ss_sp = f.stack.data();
        f.start.uc_stack.ss_size = f.stack.size();
        f.start.uc_link = nullptr;
        makecontext(&f.start, fiber_main, 0);
    }
}

// One barrier phase: each thread that has not returned runs on to its next barrier or its return.
inline void run_phase(unsigned int threads) {
    for (unsigned int t : next_order(threads)) {
        Fiber& f = fibers[t];
        if (f.done) continue;
        running = &f;
        threadIdx = f.index;
        if (!_setjmp(scheduler)) {
            if (f.started) _longjmp(f.resume, 1);
            f.started = true;
            setcontext(&f.start);
        }
        running = nullptr;
    }
}

// After a phase in which some threads did not return: why they cannot pass the barrier together, or "".
inline std::string barrier_problem(unsigned int threads) {
    unsigned int done = 0;
    for (unsigned int t = 0; t < threads; ++t) done += fibers[t].done;
    if (done > 0)
        return std::to_string(threads - done) + " threads wait at __syncthreads() after " + std::to_string(done) +
               " returned";
    for (unsigned int t = 1; t < threads; ++t)
        if (!same_site(fibers[t], fibers[0]))
            return "thread " + name(fibers[0].index) + " waits at __syncthreads() on " + site(fibers[0]) +
                   ", thread " + name(fibers[t].index) + " on " + site(fibers[t]);
    return "";
}

// One block: every thread to its next barrier, again and again until all have returned.
inline bool run_block(unsigned int threads) {
    poison_shared_memory();
    if (!EMULATOR_FIBERS) {
        for (unsigned int t : next_order(threads)) {
            threadIdx = index_in(t, blockDim);
            body();
        }
        return error.empty();
    }
    start_fibers(threads);
    for (;;) {
        run_phase(threads);
        if (std::all_of(fibers.begin(), fibers.begin() + threads, [](const Fiber& f) { return f.done; }))
            return true;
        std::string problem = barrier_problem(threads);
        if (!problem.empty()) {
            error = "block " + name(blockIdx) + ": " + problem;
            return false;
        }
    }
}

// Run blocks first .. end - 1 (x fastest, then y, then z) of `kernel` (a call of the kernel with its arguments)
// over grid x block. 0 on success, else see error.
inline int launch(const unsigned int* grid, const unsigned int* block, unsigned long long first,
                  unsigned long long end, std::function<void()> kernel) {
    gridDim = {grid[0], grid[1], grid[2]};
    blockDim = {block[0], block[1], block[2]};
    body = std::move(kernel);
    error.clear();
    for (unsigned long long b = first; b < end; ++b) {
        blockIdx = index_in(b, gridDim);
        if (!run_block(blockDim.x * blockDim.y * blockDim.z)) return 1;
    }
    return 0;
}
}  // namespace emulator

#define __syncthreads() emulator::barrier(__FILE__, __LINE__)

extern "C" const char* emulator_error() { return emulator::error.c_str(); }

// The order of the threads between barriers (an emulator::Order) for the launches that follow; a shuffled order's
// generator starts again from `seed`.
extern "C" void emulator_set_order(int order, unsigned long long seed) {
    emulator::order = emulator::Order(order);
    emulator::shuffler.seed(seed);
}
