"""The CPU emulator that runs the CUDA kernels in these tests (tests/cuda_emulator) catches what it claims to."""
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

extern "C" __global__ void early_return_kernel(float* x) {
    if (threadIdx.x < 2) return;
    __syncthreads();
    x[threadIdx.x] = 1.f;
}

extern "C" __global__ void fill_kernel(float* x, long long n, float value) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    x[i] = value;  // no bounds check: the tests launch it past the end
    (void)n;
}
"""


@pytest.fixture(scope="module")
def module():
    return emulator.RawModule(SOURCE)


def test_threads_of_a_block_meet_at_the_barrier(module):
    x = emulator.asarray(np.arange(16, dtype=np.float32))
    y = emulator.zeros(16)
    module.get_function("reverse_kernel")((2,), (8,), (x, y, np.int32(8)))
    assert y.tolist() == [7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13, 12, 11, 10, 9, 8]


def test_a_barrier_after_some_threads_returned_is_an_error(module):
    with pytest.raises(RuntimeError, match=r"2 returned"):
        module.get_function("early_return_kernel")((1,), (8,), (emulator.zeros(8),))


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
