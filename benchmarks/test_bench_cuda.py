"""GPU benchmarks of the CUDA backend (skipped, with the reason, where there is no GPU).

    pytest benchmarks/test_bench_cuda.py --benchmark-json benchmarks/results/<gpu>.json
    python -m benchmarks.report benchmarks/results/<gpu>.json

- dense forward: our fused kernel against cuBLAS (cupy.matmul) followed by a separate bias + activation kernel,
  at the GAN shapes and at 4096^3 (FLOP/s);
- BCE and Adam at 16M values against a device-to-device copy of the same bytes (GB/s);
- the seeds' MLP GAN step at batch 64 and a 512-wide one at batch 256: the CUDA backend eager against PyTorch
  CUDA eager (same models, weights and Adam; PyTorch draws on the device).
Each case checks its output once, then times `REPEATS` launches followed by one synchronisation.
"""
import numpy as np
import pytest

from gan_engine.backends import backend_status
from gan_engine.backends import numpy_ref as R

from .machine import settle
from .test_bench_step import CASES, make_trainer
from .torch_peer import TorchTrainer, torch, torch_version

CUDA = dict((name, reason) for name, _, reason in backend_status())["cuda"]
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(CUDA != "available", reason=f"backend cuda unavailable: {CUDA}")]
REPEATS = 20


def _device():
    import cupy as cp

    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    return {"device": props["name"].decode(), "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
            "driver": cp.cuda.runtime.driverGetVersion(), "cupy": cp.__version__, "torch": torch_version()}


def _time(benchmark, launch, case, backend, flops=None, nbytes=None):
    import cupy as cp

    def run():
        for _ in range(REPEATS):
            launch()
        cp.cuda.get_current_stream().synchronize()

    run()
    settle()
    benchmark.pedantic(run, rounds=20, iterations=1, warmup_rounds=2)
    if benchmark.stats is None:
        return
    per_call = benchmark.stats.stats.median / REPEATS
    info = dict(_device(), case=case, backend=backend, seconds_per_call=per_call)
    if flops:
        info.update(flops=flops, gflops_per_s=flops / per_call / 1e9)
    if nbytes:
        info.update(bytes=nbytes, gbytes_per_s=nbytes / per_call / 1e9)
    benchmark.extra_info.update(info)


GEMMS = [(64, 100, 128), (64, 128, 784), (64, 784, 128), (256, 784, 512), (1024, 1024, 1024), (4096, 4096, 4096)]


@pytest.mark.parametrize("way", ["cuda-fused", "cublas+elementwise"])
@pytest.mark.parametrize("shape", GEMMS, ids=lambda s: "x".join(map(str, s)))
def test_dense_forward(benchmark, way, shape):
    import cupy as cp

    from gan_engine.backends import cupy_cuda

    m, k, n = shape
    rng = np.random.default_rng(0)
    host = [rng.standard_normal(s).astype(np.float32) for s in ((m, k), (k, n), (n,))]
    x, W, b = (cp.asarray(a) for a in host)
    out, product = cp.empty((m, n), np.float32), cp.empty((m, n), np.float32)
    bias_leaky_relu = cp.ElementwiseKernel("T z, T b", "T y", "T t = z + b; y = t > 0 ? t : (T)0.2 * t",
                                           "bias_leaky_relu")
    launch = {"cuda-fused": lambda: cupy_cuda.dense_forward(x, W, b, "leaky_relu", 0.2, out=out),
              "cublas+elementwise": lambda: bias_leaky_relu(cp.matmul(x, W, out=product), b, out)}[way]
    launch()
    if m * k * n <= 1024 ** 3:
        want = R.dense_forward(*(a.astype(np.float64) for a in host), "leaky_relu", 0.2)
        assert np.allclose(cp.asnumpy(out), want, atol=1e-3 * np.sqrt(k), rtol=1e-3), (way, shape)
    _time(benchmark, launch, f"dense_forward {m}x{k}->{n}", way, flops=2 * m * k * n)


@pytest.mark.parametrize("op", ["copy", "bce_with_logits", "adam_update"])
def test_memory_bound(benchmark, op):
    import cupy as cp

    from gan_engine.backends import cupy_cuda

    n = 1 << 24
    a, b, c, d = (cp.random.standard_normal(n, dtype=np.float32) for _ in range(4))
    d = cp.abs(d)
    launch, nbytes = {
        "copy": (lambda: cp.copyto(b, a), 2 * 4 * n),
        "bce_with_logits": (lambda: cupy_cuda.bce_with_logits(a, 1.0, 1.0, b), 2 * 4 * n),
        "adam_update": (lambda: cupy_cuda.adam_update(a, b, c, d, 3, 1e-4, 0.5, 0.999, 1e-8), 7 * 4 * n),
    }[op]
    _time(benchmark, launch, "memory-bound ops at 16M values", op, nbytes=nbytes)


@pytest.mark.parametrize("runner", ["cuda", "torch-cuda"])
@pytest.mark.parametrize("case", ["seed-mlp-b64", "mlp-h512-b256"])
def test_training_step(benchmark, runner, case):
    if runner == "torch-cuda" and torch is None:
        pytest.skip("PyTorch is not installed")
    if runner == "cuda":
        trainer = make_trainer("cuda", case)
    else:
        trainer = TorchTrainer(make_trainer("numpy", case), device="cuda")
    values = trainer.read_metrics(trainer.step())
    assert all(np.isfinite(v) for v in values.values()), values
    _time(benchmark, trainer.step, case, runner)
    if benchmark.stats is not None:
        batch, _, _ = CASES[case]
        benchmark.extra_info.update(batch=batch)
