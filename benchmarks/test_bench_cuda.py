"""GPU benchmarks of the CUDA backend (skipped, with the reason, where there is no GPU).

    pytest benchmarks/test_bench_cuda.py --benchmark-json benchmarks/results/<gpu>.json
    python -m benchmarks.report benchmarks/results/<gpu>.json

- dense forward: our fused kernel against cuBLAS (cupy.matmul) followed by a separate bias + activation kernel,
  at the GAN shapes and at 4096^3 (FLOP/s);
- BCE and Adam at 16M values against a device-to-device copy of the same bytes (GB/s);
- every (transposed) convolution of the default DCGANs for 28x28 and 64x64 images, at batch 64 and 256, forward
  and backward (dW and dx): our implicit-GEMM kernels against cuDNN through PyTorch (cudnn.benchmark on, TF32
  off: both sides true fp32);
- batch norm forward and backward against PyTorch's (cuDNN's) at a DCGAN layer's shape;
- training steps, the CUDA backend as one CUDA graph a step ("cuda") and as eager launches ("cuda-eager"),
  against PyTorch CUDA eager and PyTorch with the step captured as a CUDA graph ("torch-cuda-graph"; same
  models, weights and Adam; PyTorch draws on the device): every case of test_bench_step.CASES (the seeds' MLP
  GAN at batch 64, a 512-wide one at batch 256, the DCGANs for 8x8 digits and 28x28 images at batch 64, and the
  PacGAN protocol's maxout GAN unpacked and packing 4).
Each case checks its output once, then times `REPEATS` launches followed by one synchronisation.
"""
import numpy as np
import pytest

from gan_engine.backends import backend_status
from gan_engine.backends import numpy_ref as R
from gan_engine.layers import Conv2d, ConvTranspose2d
from gan_engine.models import dcgan_discriminator, dcgan_generator

from .machine import gpu_peak_gflops, settle
from .flops import step_flops
from .test_bench_step import CASES, make_trainer
from .torch_peer import TorchTrainer, torch, torch_version

CUDA = dict((name, reason) for name, _, reason in backend_status())["cuda"]
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(CUDA != "available", reason=f"backend cuda unavailable: {CUDA}")]
REPEATS = 20


def _device():
    import cupy as cp

    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    peak, how = gpu_peak_gflops(props)
    return {"device": props["name"].decode(), "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
            "driver": cp.cuda.runtime.driverGetVersion(), "cupy": cp.__version__, "torch": torch_version(),
            "peak_gflops": peak, "peak": how}


def _time(benchmark, launch, case, backend, flops=None, nbytes=None):
    import cupy as cp

    def run():
        for _ in range(REPEATS):
            launch()
        cp.cuda.get_current_stream().synchronize()
        if torch is not None and torch.cuda.is_available():
            torch.cuda.synchronize()

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


def _conv_layers(image_shape):
    """(name, layer, per-sample input shape) of every (transposed) convolution of the default DCGAN pair."""
    found = []
    for net, model in (("G", dcgan_generator(100, image_shape, backend="numpy", seed=0)),
                       ("D", dcgan_discriminator(image_shape, backend="numpy", seed=1))):
        for i, (layer, shape) in enumerate(zip(model.layers, model.shapes)):
            if isinstance(layer, (Conv2d, ConvTranspose2d)):
                found.append((f"{'x'.join(map(str, image_shape[1:]))} {net} layer {i}", layer, tuple(shape)))
    return found


CONVS = [(batch, *layer) for image in ((1, 28, 28), (3, 64, 64)) for batch in (64, 256)
         for layer in _conv_layers(image)]


def _torch_fp32():
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.mark.parametrize("runner", ["cuda", "torch-cuda"])
@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("conv", CONVS, ids=lambda c: f"b{c[0]} {c[1]}")
def test_conv(benchmark, runner, direction, conv):
    """One DCGAN convolution, forward (y) or backward (dW and dx), ours against cuDNN; both checked against each
    other first."""
    import cupy as cp

    from gan_engine.backends import cupy_cuda

    if torch is None:
        pytest.skip("PyTorch is not installed: cuDNN is the reference here")
    _torch_fp32()
    batch, name, layer, shape = conv
    transposed = isinstance(layer, ConvTranspose2d)
    s, p, op = layer.stride, layer.padding, layer.output_padding
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.standard_normal((batch, *shape)).astype(np.float32))
    W = cp.asarray((rng.standard_normal(layer.param_shapes()["W"]) * 0.05).astype(np.float32))
    ours = {"forward": cupy_cuda.conv_transpose2d_forward if transposed else cupy_cuda.conv2d_forward,
            "backward": cupy_cuda.conv_transpose2d_backward if transposed else cupy_cuda.conv2d_backward}
    y = ours["forward"](x, W, None, s, p, op, "identity") if transposed else ours["forward"](x, W, None, s, p)
    dy = cp.asarray(rng.standard_normal(y.shape).astype(np.float32))
    dW, dx = cp.zeros_like(W), cp.empty_like(x)
    xt, Wt, dyt = (torch.from_dlpack(a) for a in (x, W, dy))
    args = ([s, s], [p, p], [1, 1], transposed, [op, op], 1)
    forward = torch.nn.functional.conv_transpose2d if transposed else torch.nn.functional.conv2d
    extra = {"output_padding": op} if transposed else {}
    launch = {
        ("ours", "forward"): lambda: ours["forward"](x, W, None, s, p, *([op] if transposed else []), out=y),
        ("ours", "backward"): lambda: ours["backward"](x, W, y, dy, s, p, dW=dW, dx=dx),
        ("torch-cuda", "forward"): lambda: forward(xt, Wt, None, s, p, **extra),
        ("torch-cuda", "backward"): lambda: torch.ops.aten.convolution_backward(dyt, xt, Wt, None, *args,
                                                                                [True, True, False]),
    }[("torch-cuda" if runner == "torch-cuda" else "ours", direction)]
    if runner == "cuda":  # ours against cuDNN's, once
        ours["backward"](x, W, y, dy, s, p, dW=dW, dx=dx)
        want_dx, want_dW, _ = torch.ops.aten.convolution_backward(dyt, xt, Wt, None, *args, [True, True, False])
        _assert_close(y, forward(xt, Wt, None, s, p, **extra), f"{name} y")
        _assert_close(dx, want_dx, f"{name} dx")
        _assert_close(dW, want_dW, f"{name} dW")
    small = x if transposed else y  # every weight meets every pixel of the small side once per sample
    flops = 2 * batch * small.shape[2] * small.shape[3] * W.size * (1 if direction == "forward" else 2)
    _time(benchmark, launch, f"{direction} b{batch} {name}: {layer!r}", runner, flops=flops)


def _assert_close(ours, theirs, what):
    import cupy as cp

    ours, theirs = cp.asnumpy(ours), theirs.detach().cpu().numpy()
    scale = np.abs(theirs).max() + 1e-30
    assert np.abs(ours - theirs).max() <= 1e-4 * scale, (what, np.abs(ours - theirs).max(), scale)


@pytest.mark.parametrize("runner", ["cuda", "torch-cuda"])
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_batchnorm(benchmark, runner, direction):
    """Batch norm (train) at the 28x28 D's second layer, batch 256: ours against PyTorch's."""
    import cupy as cp

    from gan_engine.backends import cupy_cuda

    if torch is None:
        pytest.skip("PyTorch is not installed")
    _torch_fp32()
    shape = (256, 128, 7, 7)
    rng = np.random.default_rng(0)
    x, dy = (cp.asarray(rng.standard_normal(shape).astype(np.float32)) for _ in range(2))
    gamma, rm, rv, mean, invstd, dgamma, dbeta = (cp.ones(128, np.float32) for _ in range(7))
    beta = cp.zeros(128, np.float32)  # PyTorch's BatchNorm2d starts at weight 1, bias 0
    out, dx = cp.empty_like(x), cp.empty_like(x)
    cupy_cuda.batchnorm_forward(x, gamma, beta, rm, rv, mean, invstd, True, out=out)
    xt = torch.from_dlpack(x).requires_grad_(True)
    bn = torch.nn.BatchNorm2d(128).cuda()
    yt = bn(xt)
    _assert_close(out, yt, "batchnorm_forward")
    launch = {
        ("cuda", "forward"): lambda: cupy_cuda.batchnorm_forward(x, gamma, beta, rm, rv, mean, invstd, True,
                                                                 out=out),
        ("cuda", "backward"): lambda: cupy_cuda.batchnorm_backward(x, gamma, out, dy, mean, invstd, True,
                                                                   dgamma=dgamma, dbeta=dbeta, dx=dx),
        ("torch-cuda", "forward"): lambda: bn(xt),
        ("torch-cuda", "backward"): lambda: torch.autograd.grad(yt, xt, torch.from_dlpack(dy), retain_graph=True),
    }[(runner, direction)]
    nbytes = x.nbytes * (2 if direction == "forward" else 4)
    _time(benchmark, launch, f"batchnorm_{direction} {'x'.join(map(str, shape))}", runner, nbytes=nbytes)


@pytest.mark.parametrize("runner", ["cuda", "cuda-eager", "torch-cuda", "torch-cuda-graph"])
@pytest.mark.parametrize("case", list(CASES))
def test_training_step(benchmark, runner, case):
    if runner.startswith("torch") and torch is None:
        pytest.skip("PyTorch is not installed")
    reference = make_trainer("numpy", case)
    if runner.startswith("torch"):
        trainer = TorchTrainer(reference, device="cuda", graph=runner == "torch-cuda-graph")
    else:
        trainer = make_trainer("cuda", case, graph=runner == "cuda")  # cuda: one CUDA graph a step
    values = trainer.read_metrics(trainer.step())
    assert all(np.isfinite(v) for v in values.values()), values
    _time(benchmark, trainer.step, case, runner, flops=step_flops(reference.G, reference.D, reference.batch_size,
                                                                                  pac=reference.pac,
                                                                                  update=reference.update))
