"""The CPU emulator that runs the CUDA kernels in these tests (tests/cuda_emulator) catches what it claims to."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from . import cuda_emulator as emulator

pytestmark = pytest.mark.skipif(emulator.available() is not None, reason=str(emulator.available()))

SOURCE = r"""
#define BLOCK 8
extern "C" __global__ void __launch_bounds__(BLOCK) reverse_kernel(const float* __restrict__ x, float* y, int n) {
    __shared__ float s[BLOCK];
    int t = threadIdx.x;
    s[t] = x[blockIdx.x * BLOCK + t];
    __syncthreads();
    if (t < n) y[blockIdx.x * BLOCK + t] = s[BLOCK - 1 - t];
}

#define MIN_BLOCKS(n) (n)
extern "C" __global__ void __launch_bounds__(BLOCK, MIN_BLOCKS(3)) fill_bounded_kernel(float* x) {
    x[threadIdx.x] = 1.f;
}

extern "C" __global__ void reverse_missing_barrier_kernel(const float* __restrict__ x, float* y, int n) {
    __shared__ float s[BLOCK];
    int t = threadIdx.x;
    s[t] = x[blockIdx.x * BLOCK + t];  // no __syncthreads() before the other threads' values are read: a bug
    if (t < n) y[blockIdx.x * BLOCK + t] = s[BLOCK - 1 - t];
}

#define SUM_THREADS 64
// out[0] = the sum of x's SUM_THREADS values, a tree in shared memory; without BARRIERS, a bug.
template <bool BARRIERS>
__device__ void tree_sum(const float* x, float* out) {
    __shared__ float s[SUM_THREADS];
    const int t = threadIdx.x;
    s[t] = x[t];
    __syncthreads();
    for (int stride = SUM_THREADS / 2; stride > 0; stride >>= 1) {
        if (t < stride) s[t] += s[t + stride];
        if (BARRIERS) __syncthreads();
    }
    if (t == 0) out[0] = s[0];
}

extern "C" __global__ void block_sum_kernel(const float* __restrict__ x, float* __restrict__ out) {
    tree_sum<true>(x, out);
}

extern "C" __global__ void block_sum_missing_barrier_kernel(const float* __restrict__ x, float* __restrict__ out) {
    tree_sum<false>(x, out);
}

extern "C" __global__ void early_return_kernel(float* x) {
    if (threadIdx.x < 2) return;
    __syncthreads();
    x[threadIdx.x] = 1.f;
}

extern "C" __global__ void split_barrier_kernel(float* x) {
    if (threadIdx.x % 2) {
        __syncthreads();  // odd threads
    } else {
        __syncthreads();  // even threads
    }
    x[threadIdx.x] = 1.f;
}

extern "C" __global__ void fill_kernel(float* x, long long n, float value) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    x[i] = value;  // no bounds check: the tests launch it past the end
    (void)n;
}

// ran[p * blockDim.x + t]: when thread t ran in barrier phase p (the clock counts the threads as they run).
extern "C" __global__ void order_kernel(int* ran, int* clock) {
    ran[threadIdx.x] = clock[0]++;
    __syncthreads();
    ran[blockDim.x + threadIdx.x] = clock[0]++;
}

// Block 0 writes shared memory, every block reads it: shared memory declared in a kernel and passed to a function
// (as reduce.cuh's block_sum takes it), declared in a function, declared in a function template (as gemm.cuh's).
__device__ float read_back(float* s) {
    if (blockIdx.x == 0) s[threadIdx.x] = 1.f;
    __syncthreads();
    return s[threadIdx.x];
}

__device__ float read_back_own() {
    __shared__ float s[BLOCK];
    return read_back(s);
}

template <int N>
__device__ float read_back_own_template() {
    __shared__ float s[N];
    return read_back(s);
}

extern "C" __global__ void shared_reads_kernel(float* kernel_s, float* function_s, float* template_s,
                                               float* unwritten_s) {
    __shared__ float s[BLOCK], unwritten[BLOCK];
    const int at = blockIdx.x * BLOCK + threadIdx.x;
    kernel_s[at] = read_back(s);
    function_s[at] = read_back_own();
    template_s[at] = read_back_own_template<BLOCK>();
    unwritten_s[at] = unwritten[threadIdx.x];  // never written by any block
}

extern "C" __global__ void add_kernel(const float* __restrict__ a, const float* __restrict__ b,
                                      float* __restrict__ out) {
    out[threadIdx.x] = a[threadIdx.x] + b[threadIdx.x];
}

extern "C" __global__ void count_blocks_kernel(float* counts, float* seen) {
    if (threadIdx.x == 0) counts[2] += 1.f;  // every block: a race on a GPU
    seen[blockIdx.x] = 1.f;
}

// emulator: shared_writes atomic_count_blocks_kernel counts
extern "C" __global__ void atomic_count_blocks_kernel(float* counts, float* seen) {
    if (threadIdx.x == 0) atomicAdd(&counts[2], 1.f);
    seen[blockIdx.x] = 1.f;
}
"""

# Kernels without a barrier anywhere in their source run their threads one after another, without fibers.
NO_BARRIER_SOURCE = r"""
extern "C" __global__ void order_kernel(int* ran, int* clock) { ran[threadIdx.x] = clock[0]++; }
"""


@pytest.fixture(scope="module")
def module():
    return emulator.RawModule(SOURCE)


def set_order(monkeypatch, setting):
    monkeypatch.setattr(emulator, "order", emulator.parse_order(setting))


def line_of(text):
    """The line of SOURCE that ends with `text`."""
    return next(i for i, line in enumerate(SOURCE.split("\n"), 1) if line.endswith(text))


@pytest.mark.parametrize("setting", emulator.ORDERS)
def test_threads_of_a_block_meet_at_the_barrier(module, monkeypatch, setting):
    set_order(monkeypatch, setting)
    x = emulator.asarray(np.arange(16, dtype=np.float32))
    y = emulator.zeros(16)
    module.get_function("reverse_kernel")((2,), (8,), (x, y, np.int32(8)))
    assert y.tolist() == [7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13, 12, 11, 10, 9, 8]


def orders_run(module, phases, threads=8):
    """The threads of order_kernel's block in the order they ran, per barrier phase."""
    ran, clock = emulator.zeros(threads * phases, np.int32), emulator.zeros(1, np.int32)
    module.get_function("order_kernel")((1,), (threads,), (ran, clock))
    return [np.argsort(ran[p * threads:(p + 1) * threads]).tolist() for p in range(phases)]


def test_threads_run_in_the_order_set_at_each_barrier_phase(module, monkeypatch):
    forward, backward = list(range(8)), list(range(7, -1, -1))
    set_order(monkeypatch, "forward")
    assert orders_run(module, 2) == [forward, forward]
    set_order(monkeypatch, "reversed")
    assert orders_run(module, 2) == [backward, backward]
    set_order(monkeypatch, "shuffled:3")
    first, second = orders_run(module, 2)
    assert sorted(first) == sorted(second) == forward
    assert first != second and forward not in (first, second) and backward not in (first, second)
    assert orders_run(module, 2) == [first, second]  # each launch starts the generator again from the seed
    set_order(monkeypatch, "shuffled:4")
    assert orders_run(module, 2) != [first, second]


def test_threads_without_barriers_follow_the_order_too(monkeypatch):
    no_barriers = emulator.RawModule(NO_BARRIER_SOURCE)
    for setting, want in [("forward", list(range(8))), ("reversed", list(range(7, -1, -1)))]:
        set_order(monkeypatch, setting)
        assert orders_run(no_barriers, 1) == [want]
    set_order(monkeypatch, "shuffled")
    [shuffled] = orders_run(no_barriers, 1)
    assert sorted(shuffled) == list(range(8)) and shuffled not in (list(range(8)), list(range(7, -1, -1)))


def test_the_order_setting_and_its_environment_variable():
    assert emulator.parse_order("forward") == ("forward", 0)
    assert emulator.parse_order("shuffled") == ("shuffled", 0)
    assert emulator.parse_order("shuffled:17") == ("shuffled", 17)
    for wrong in ("backwards", "reversed:2", "shuffled:x"):
        with pytest.raises(ValueError, match="expected forward, reversed, shuffled or shuffled:SEED"):
            emulator.parse_order(wrong)
    environment = dict(os.environ, GAN_ENGINE_EMULATOR_ORDER="shuffled:5")
    seen = subprocess.run([sys.executable, "-c", "from tests import cuda_emulator; print(cuda_emulator.order)"],
                          env=environment, cwd=Path(__file__).parents[1], capture_output=True, text=True,
                          check=True).stdout
    assert seen.strip() == "('shuffled', 5)"


def test_a_barrier_after_some_threads_returned_is_an_error(module):
    with pytest.raises(RuntimeError, match=r"2 returned"):
        module.get_function("early_return_kernel")((1,), (8,), (emulator.zeros(8),))


def test_threads_at_different_barriers_are_an_error(module):
    with pytest.raises(RuntimeError, match=(
            rf"split_barrier_kernel: block \(0, 0, 0\): thread \(0, 0, 0\) waits at __syncthreads\(\) on "
            rf"source.cu:{line_of('// even threads')}, thread \(1, 0, 0\) on source.cu:{line_of('// odd threads')}$")):
        module.get_function("split_barrier_kernel")((1,), (8,), (emulator.zeros(8),))


def test_shared_memory_starts_each_block_as_nan(module):
    outputs = [emulator.zeros(16) for _ in range(4)]
    module.get_function("shared_reads_kernel")((2,), (8,), tuple(outputs))
    for name, out in zip(["in the kernel", "in a function", "in a function template"], outputs):
        assert out[:8].tolist() == [1] * 8, name
        assert np.isnan(out[8:]).all(), f"block 1 read block 0's shared memory declared {name}"
    assert np.isnan(outputs[3]).all(), "shared memory that no block writes reads as 0"


@pytest.mark.parametrize("setting", emulator.ORDERS)
def test_a_missing_barrier_gives_nan_in_every_order(module, monkeypatch, setting):
    set_order(monkeypatch, setting)
    x, y = emulator.asarray(np.arange(16, dtype=np.float32)), emulator.zeros(16)
    module.get_function("reverse_missing_barrier_kernel")((2,), (8,), (x, y, np.int32(8)))
    assert np.isnan(y[:8]).any() and np.isnan(y[8:]).any()  # read before its writer ran, in each block


def block_sum(module, kernel, monkeypatch, setting):
    set_order(monkeypatch, setting)
    x, out = emulator.asarray(np.arange(64, dtype=np.float32)), emulator.zeros(1)
    module.get_function(kernel)((1,), (64,), (x, out))
    return float(out[0])


def test_a_missing_barrier_in_a_tree_sum_is_wrong_in_some_order(module, monkeypatch):
    total = float(np.arange(64).sum())
    for setting in ("forward", "reversed", "shuffled", "shuffled:1"):
        assert block_sum(module, "block_sum_kernel", monkeypatch, setting) == total, setting
    wrong = {setting: block_sum(module, "block_sum_missing_barrier_kernel", monkeypatch, setting)
             for setting in emulator.ORDERS}
    assert wrong["forward"] != total and wrong["shuffled"] != total  # thread 0 sums before the others have
    assert wrong["reversed"] == total  # every thread's partner has finished first: why one order is not enough


def test_overlapping_pointers_are_refused_where_one_is_written(module):
    reverse, add = module.get_function("reverse_kernel"), module.get_function("add_kernel")
    a = emulator.asarray(np.arange(16, dtype=np.float32))
    with pytest.raises(ValueError, match=r"^reverse_kernel: arguments 0 \(x\) and 1 \(y\) overlap in memory and "
                                         r"the kernel writes 1 \(y\), against __restrict__$"):
        reverse((1,), (8,), (a[:8], a[4:12], np.int32(8)))
    with pytest.raises(ValueError, match=r"^add_kernel: arguments 1 \(b\) and 2 \(out\) overlap"):
        add((1,), (8,), (a[:8], a[8:], a[8:]))
    reverse((1,), (8,), (a[:8], a[8:], np.int32(8)))  # next to each other, not overlapping
    out = emulator.zeros(8)
    add((1,), (8,), (a[:8], a[:8], out))  # the same array twice, both const
    assert out.tolist() == [0, 2, 4, 6, 8, 10, 12, 14]


def test_an_element_written_by_two_blocks_is_an_error_unless_declared(module, monkeypatch):
    with pytest.raises(AssertionError, match=(
            r"^count_blocks_kernel: blocks \(0, 0, 0\) and \(1, 0, 0\) both wrote element 2 of argument 0 "
            r"\(counts\); if several blocks may write it, say so in the kernel's source: "
            r"// emulator: shared_writes count_blocks_kernel counts$")):
        module.get_function("count_blocks_kernel")((3,), (8,), (emulator.zeros(4), emulator.zeros(3)))
    counts, seen = emulator.zeros(4), emulator.zeros(3)
    module.get_function("atomic_count_blocks_kernel")((3,), (8,), (counts, seen))
    assert counts.tolist() == [0, 0, 3, 0] and seen.tolist() == [1, 1, 1]
    monkeypatch.setattr(emulator, "WRITES_CHECKED", 3 * 28 - 1)  # (4 + 3) floats x 3 blocks: one byte over
    counts = emulator.zeros(4)
    module.get_function("count_blocks_kernel")((3,), (8,), (counts, emulator.zeros(3)))  # runs whole, unchecked
    assert counts.tolist() == [0, 0, 3, 0]


def test_a_shared_writes_declaration_must_name_a_parameter():
    with pytest.raises(ValueError, match="names no parameter of a kernel here: fill_kernel y"):
        emulator.RawModule("// emulator: shared_writes fill_kernel y\n"
                           'extern "C" __global__ void fill_kernel(float* x) { x[0] = 1.f; }\n')


def test_a_write_past_an_array_is_caught(module):
    fill = module.get_function("fill_kernel")
    x = emulator.zeros(10)
    fill((1,), (10,), (x, np.int64(10), np.float32(2)))
    assert x.tolist() == [2] * 10
    with pytest.raises(AssertionError, match="fill_kernel wrote outside argument 0: the guard bytes after"):
        fill((1,), (11,), (emulator.zeros(10), np.int64(10), np.float32(2)))


def test_arguments_must_have_the_kernels_c_types(module):
    fill = module.get_function("fill_kernel")
    with pytest.raises(TypeError, match=r"argument 1 \(long long\) got 10 of type int; pass np.int64"):
        fill((1,), (4,), (emulator.zeros(4), 10, np.float32(2)))
    with pytest.raises(TypeError, match=r"argument 1 \(long long\) got np.int32\(10\) of type int32"):
        fill((1,), (4,), (emulator.zeros(4), np.int32(10), np.float32(2)))
    with pytest.raises(TypeError, match=r"argument 0 \(float\*\) got float64"):
        fill((1,), (4,), (emulator.zeros(4, np.float64), np.int64(4), np.float32(2)))
    with pytest.raises(TypeError, match="takes 3 arguments, got 2"):
        fill((1,), (4,), (emulator.zeros(4), np.int64(4)))


def test_a_block_over_the_launch_bound_is_refused(module):
    with pytest.raises(ValueError, match="at most 8 threads a block"):
        module.get_function("reverse_kernel")((1,), (16,), (emulator.zeros(16), emulator.zeros(16), np.int32(16)))
    with pytest.raises(ValueError, match="at most 8 threads a block"):  # a bound with blocks an SM too
        module.get_function("fill_bounded_kernel")((1,), (16,), (emulator.zeros(16),))
    x = emulator.zeros(8)
    module.get_function("fill_bounded_kernel")((1,), (8,), (x,))
    assert np.array_equal(np.asarray(x), np.ones(8))
