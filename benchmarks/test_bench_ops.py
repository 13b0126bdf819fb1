"""Single ops at the sizes the benchmark models run them, on every available backend and on PyTorch CPU eager
as a peer where it has the same op; and the GEMM choice of the Numba backend at every GEMM shape a training step
runs: NumPy's BLAS (np.matmul, on every core and on one: the thread policy's choice), SciPy's BLAS (np.dot
inside njit) and the register-blocked Numba GEMM.

    pytest benchmarks --benchmark-json benchmarks/results/<machine>.json
    python -m benchmarks.report benchmarks/results/<machine>.json

Every op is checked once against the reference before it is timed. FLOP/s for GEMM-like ops, GB/s (bytes read
and written once) for the memory-bound ones.
"""
import numpy as np
import pytest
from threadpoolctl import ThreadpoolController

from gan_engine.backends import get_backend
from gan_engine.backends import numpy_ref as R
from gan_engine.backends.threads import policy

from .machine import cpu_peak_gflops, settle
from .test_bench_step import AVAILABLE
from .torch_peer import torch, torch_version

F32 = np.float32


def _rand(rng, shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(F32)


def dense(n, i, o, act):
    def make(rng):
        x, W, b = _rand(rng, (n, i)), _rand(rng, (i, o), i ** -0.5), _rand(rng, o)
        y = R.dense_forward(x, W, b, act)
        return {"x": x, "W": W, "b": b, "y": y, "dy": _rand(rng, (n, o)), "act": act}
    return make, 2 * n * i * o


def conv(n, ci, co, side, transpose, act):
    def make(rng):
        x = _rand(rng, (n, ci, side, side))
        W = _rand(rng, (ci, co, 4, 4) if transpose else (co, ci, 4, 4), (ci * 16) ** -0.5)
        op = R.conv_transpose2d_forward if transpose else R.conv2d_forward
        y = op(x, W, None, 2, 1, 0, act) if transpose else op(x, W, None, 2, 1, act)
        return {"x": x, "W": W, "y": y, "dy": _rand(rng, y.shape), "act": act}
    pixels = side * side if transpose else (side // 2) ** 2  # the input pixels of a transposed convolution
    return make, 2 * n * pixels * ci * co * 16


def batchnorm(shape):
    def make(rng):
        c = shape[1]
        return {"x": _rand(rng, shape), "g": np.ones(c, F32), "b": np.zeros(c, F32), "dy": _rand(rng, shape)}
    return make, None


def flat(size):
    def make(rng):
        return {"p": _rand(rng, size), "g": _rand(rng, size), "m": _rand(rng, size, 0.1),
                "v": np.abs(_rand(rng, size, 0.1)), "x": _rand(rng, (64, 1), 3.0)}
    return make, None


def _bn_forward(be, a):
    c = a["x"].shape[1]
    stats = [np.zeros(c, F32), np.ones(c, F32), np.empty(c, F32), np.empty(c, F32)]
    a.setdefault("out", np.empty_like(a["x"]))
    return be.batchnorm_forward(a["x"], a["g"], a["b"], *stats, True, 0.1, 1e-5, "relu", 0.2, out=a["out"])


def _bn_backward(be, a):
    c = a["x"].shape[1]
    mean, invstd = a["x"].mean(axis=(0, 2, 3)), 1 / np.sqrt(a["x"].var(axis=(0, 2, 3)) + 1e-5)
    a.setdefault("dx", np.empty_like(a["x"]))
    return be.batchnorm_backward(a["x"], a["g"], a["x"], a["dy"], mean.astype(F32), invstd.astype(F32), True,
                                 "identity", 0.2, np.zeros(c, F32), np.zeros(c, F32), a["dx"])


def _adam(be, a):
    p, m, v = a["p"].copy(), a["m"].copy(), a["v"].copy()
    be.adam_update(p, a["g"], m, v, 3, 2e-4, 0.5, 0.999, 1e-8)
    return p


def _out(a, key, shape):
    if key not in a:
        a[key] = np.empty(shape, F32)
    return a[key]


# name -> (make inputs, FLOPs or None, bytes moved, run(backend, inputs) -> an output to check)
OPS = {
    "dense_forward 64x128->784 tanh (seed G out)": (*dense(64, 128, 784, "tanh"), None, lambda be, a: be.dense_forward(
        a["x"], a["W"], a["b"], a["act"], 0.2, out=_out(a, "out", a["y"].shape))),
    "dense_forward 256x784->512 lrelu (h512 D in)": (*dense(256, 784, 512, "leaky_relu"), None,
                                                     lambda be, a: be.dense_forward(a["x"], a["W"], a["b"], a["act"],
                                                                                    0.2, out=_out(a, "out", a["y"].shape))),
    "dense_backward 64x784->128 lrelu (seed D in, no dx)": (*dense(64, 784, 128, "leaky_relu"), None,
                                                            lambda be, a: be.dense_backward(
                                                                a["x"], a["W"], a["y"], a["dy"], a["act"], 0.2,
                                                                _out(a, "dW", a["W"].shape) * 0, _out(a, "db", a["b"].shape) * 0)),
    "dense_backward 64x128->1 (seed D out)": (*dense(64, 128, 1, "identity"), None, lambda be, a: be.dense_backward(
        a["x"], a["W"], a["y"], a["dy"], "identity", 0.2, np.zeros_like(a["W"]), np.zeros_like(a["b"]),
        _out(a, "dx", a["x"].shape))),
    "conv2d_forward 64x64x14x14->128 (28x28 D conv 2)": (*conv(64, 64, 128, 14, False, "identity"), None,
                                                        lambda be, a: be.conv2d_forward(
                                                            a["x"], a["W"], None, 2, 1, "identity", 0.2,
                                                            out=_out(a, "out", a["y"].shape))),
    "conv2d_backward 64x64x14x14->128 (28x28 D conv 2)": (*conv(64, 64, 128, 14, False, "identity"), None,
                                                         lambda be, a: be.conv2d_backward(
                                                             a["x"], a["W"], a["y"], a["dy"], 2, 1, "identity", 0.2,
                                                             np.zeros_like(a["W"]), None, _out(a, "dx", a["x"].shape))),
    "conv_transpose2d_forward 64x128x7x7->64 (28x28 G convT 1)": (*conv(64, 128, 64, 7, True, "identity"), None,
                                                                 lambda be, a: be.conv_transpose2d_forward(
                                                                     a["x"], a["W"], None, 2, 1, 0, "identity", 0.2,
                                                                     out=_out(a, "out", a["y"].shape))),
    "conv_transpose2d_backward 64x128x7x7->64 (28x28 G convT 1)": (*conv(64, 128, 64, 7, True, "identity"), None,
                                                                  lambda be, a: be.conv_transpose2d_backward(
                                                                      a["x"], a["W"], a["y"], a["dy"], 2, 1,
                                                                      "identity", 0.2, np.zeros_like(a["W"]), None,
                                                                      _out(a, "dx", a["x"].shape))),
    "batchnorm_forward 64x64x14x14 relu": (*batchnorm((64, 64, 14, 14)), 2 * 64 * 64 * 196 * 4, _bn_forward),
    "batchnorm_backward 64x64x14x14": (*batchnorm((64, 64, 14, 14)), 4 * 64 * 64 * 196 * 4, _bn_backward),
    "adam_update 453k (h512 G)": (*flat(100 * 512 + 512 + 512 * 784 + 784), 7 * 453_264 * 4, _adam),
    "bce_with_logits 64": (*flat(1), None, lambda be, a: be.bce_with_logits(a["x"], 1.0, 1.0,
                                                                           _out(a, "dl", a["x"].shape))[0]),
}


def _torch_op(name, a):
    """PyTorch's eager op for the forward ops and the optimizer; None where it has no single-op twin."""
    import torch.nn.functional as F

    t = {k: torch.from_numpy(v) for k, v in a.items() if isinstance(v, np.ndarray)}
    acts = {"identity": lambda y: y, "tanh": torch.tanh_, "leaky_relu": lambda y: F.leaky_relu_(y, 0.2)}
    if name.startswith("dense_forward"):
        return lambda: acts[a["act"]](torch.addmm(t["b"], t["x"], t["W"]))
    if name.startswith("conv2d_forward"):
        return lambda: F.conv2d(t["x"], t["W"], None, 2, 1)
    if name.startswith("conv_transpose2d_forward"):
        return lambda: F.conv_transpose2d(t["x"], t["W"], None, 2, 1)
    if name.startswith("batchnorm_forward"):
        c = a["x"].shape[1]
        rm, rv = torch.zeros(c), torch.ones(c)
        return lambda: F.relu_(F.batch_norm(t["x"], rm, rv, t["g"], t["b"], True, 0.1, 1e-5))
    if name.startswith("adam_update"):
        p = torch.nn.Parameter(t["p"].clone())
        p.grad = t["g"]
        opt = torch.optim.Adam([p], lr=2e-4, betas=(0.5, 0.999))
        return opt.step
    return None


def _record(benchmark, backend, case, flops, nbytes):
    if benchmark.stats is None:  # --benchmark-disable: the checks ran, nothing was timed
        return
    median = benchmark.stats.stats.median
    peak, how = cpu_peak_gflops()
    info = dict(backend=backend, case=case, peak_gflops=peak, peak=how, torch=torch_version())
    if flops:
        info.update(flops=flops, gflops_per_s=flops / median / 1e9)
    if nbytes:
        info.update(bytes=nbytes, gbytes_per_s=nbytes / median / 1e9)
    benchmark.extra_info.update(info)


@pytest.mark.parametrize("backend", AVAILABLE + (["torch"] if torch_version() else []))
@pytest.mark.parametrize("case", list(OPS))
def test_op(benchmark, backend, case):
    make, flops, nbytes, run = OPS[case]
    inputs = make(np.random.default_rng(0))
    if backend == "torch":
        fn = _torch_op(case, inputs)
        if fn is None:
            pytest.skip(f"PyTorch has no single eager op for {case.split()[0]}")
        want, got = run(R, dict(inputs)), fn()
        got = got if hasattr(got, "numpy") else None
    else:
        be = get_backend(backend)
        want, got = run(R, dict(inputs)), run(be, inputs)
        fn = lambda: run(be, inputs)  # noqa: E731
    if got is not None and want is not None:
        got = got.detach().numpy() if hasattr(got, "detach") else np.asarray(got)
        scale = max(1.0, float(np.abs(want).max()))
        assert np.allclose(got, want, atol=1e-4 * scale, rtol=1e-3), case
    fn()
    settle()
    benchmark.pedantic(fn, rounds=20, iterations=3 if flops and flops > 1e8 else 20, warmup_rounds=1)
    _record(benchmark, backend, case, flops, nbytes)


# Every GEMM shape (M, K, N) of a training step of the benchmark models, as the Numba backend runs it.
GEMMS = {
    "seed G in / G dW (64, 100, 128)": (64, 100, 128),
    "seed G out (64, 128, 784)": (64, 128, 784),
    "seed D in (64, 784, 128)": (64, 784, 128),
    "seed D dW (784, 64, 128)": (784, 64, 128),
    "seed D out (64, 128, 1)": (64, 128, 1),
    "seed D out dX, an outer product (64, 1, 128)": (64, 1, 128),
    "seed D out dW (128, 64, 1)": (128, 64, 1),
    "h512 D in (256, 784, 512)": (256, 784, 512),
    "h512 G out (256, 512, 784)": (256, 512, 784),
    "8x8 D conv 1 (64, 16, 1024)": (64, 16, 1024),
    "8x8 D conv 2 (128, 1024, 256)": (128, 1024, 256),
    "28x28 D conv 2 (128, 1024, 3136)": (128, 1024, 3136),
    "28x28 G convT 1 (1024, 128, 3136)": (1024, 128, 3136),
    "small (16, 16, 16)": (16, 16, 16),
    "small (32, 32, 32)": (32, 32, 32),
    "(64, 64, 64)": (64, 64, 64),
}
GEMM_WAYS = ["numpy-matmul", "numpy-matmul-1-thread", "scipy-blas-in-njit", "numba-blocked"]


@pytest.mark.skipif("numba" not in AVAILABLE, reason="the GEMM choice is the Numba backend's")
@pytest.mark.parametrize("way", GEMM_WAYS)
@pytest.mark.parametrize("case", list(GEMMS))
def test_gemm(benchmark, way, case):
    from numba import njit

    from gan_engine.backends import numba_kernels as k
    from gan_engine.backends.numba_cpu import use_blocked_gemm

    m, kk, n = GEMMS[case]
    rng = np.random.default_rng(0)
    a, b, out = _rand(rng, (m, kk)), _rand(rng, (kk, n)), np.empty((m, n), F32)
    fn = {"scipy-blas-in-njit": njit(lambda a, b, out: np.dot(a, b, out)),
          "numpy-matmul": lambda a, b, out: np.matmul(a, b, out=out),
          "numpy-matmul-1-thread": lambda a, b, out: np.matmul(a, b, out=out),
          "numba-blocked": lambda a, b, out: k.gemm_blocked(a, b, out, False)}[way]
    fn(a, b, out)
    assert np.allclose(out, a.astype(np.float64) @ b, atol=1e-3 * np.sqrt(kk), rtol=1e-3), (way, case)
    flops = 2 * m * kk * n
    settle()
    with ThreadpoolController().limit(limits=1 if way.endswith("1-thread") else policy().cores, user_api="blas"):
        benchmark.pedantic(fn, args=(a, b, out), rounds=20, iterations=max(1, int(2e8 // flops)), warmup_rounds=1)
    choice = "numba-blocked" if use_blocked_gemm(m, kk, n) else "numpy-matmul"
    _record(benchmark, way, f"gemm {case} [the backend uses {choice}]", flops, None)
