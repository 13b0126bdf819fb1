"""One full training step (1 D step + 1 G step, or one simultaneous update) of the seeds' MLP GAN and of DCGANs,
on every available backend and on PyTorch CPU eager as a peer (same models, weights, batches, noise and Adam) when
torch is installed.

    pytest benchmarks --benchmark-json benchmarks/results/<machine>.json
    python -m benchmarks.report benchmarks/results/<machine>.json

Each case first checks one step against the NumPy reference, then times steps in steady state (buffers
allocated, kernels compiled: the warm-up runs outside the timed region). FLOP/s and the CPU's FMA peak are
recorded in extra_info.
"""
import numpy as np
import pytest

from gan_engine import Adam, Trainer, mlp_discriminator, mlp_generator
from gan_engine.backends import backend_status
from gan_engine.config import TrainConfig
from gan_engine.models import (batchnorm_generator, dcgan_discriminator, dcgan_generator, maxout_discriminator,
                               norm_options)
from gan_engine.presets import with_preset

from .flops import step_flops
from .machine import cpu_peak_gflops, settle
from .torch_peer import TorchTrainer, torch_version


def mlp(batch, z_dim, hidden, dim):
    return batch, dim, 1, lambda backend: (mlp_generator(z_dim, (hidden,), dim, backend=backend, seed=0),
                                           mlp_discriminator(dim, (hidden,), backend=backend, seed=1)), "alternating"


def dcgan(batch, z_dim, image_shape):
    dim = int(np.prod(image_shape))
    return batch, dim, 1, lambda backend: (dcgan_generator(z_dim, image_shape, backend=backend, seed=0),
                                           dcgan_discriminator(image_shape, backend=backend, seed=1)), "alternating"


def pacgan(pac, update="alternating", preset_norm=False):
    """The PacGAN 2-D mixture protocol's maxout GAN (presets.py) at batch 100, packing `pac` samples; with
    `preset_norm` G's batch norm is the preset's (per pack slot, a running standard deviation, epsilon 1e-4), else
    the engine's default (over the whole batch)."""
    config = TrainConfig(**(with_preset("pacgan-ring8", {"pac": pac}) if preset_norm else {"pac": pac}))
    norm = norm_options(config, generator=True)
    return 100, 2, pac, lambda backend: (batchnorm_generator(backend=backend, seed=0, norm=norm),
                                         maxout_discriminator(2 * pac, backend=backend, seed=1)), update


# name -> (batch, data dim, pac, backend -> (G, D), update rule): the seeds' 100-128-784 / 784-128-1 GAN, a wider
# MLP, and the default DCGANs for 8x8 digits (G 128-64 channels, D 64-128) and 28x28 MNIST (the same channels), and
# the PacGAN protocol's maxout GAN (G 2-400x4-2 with batch norm, D 3 maxout layers of 200 x 5) unpacked and packing
# 4, alternating with the engine's batch norm and (-sim) as the presets train it: the protocol's simultaneous update
# and its batch norm (the real points drawn each step, not the presets' packs made once: the same work a step).
CASES = {
    "seed-mlp-b64": mlp(64, 100, 128, 784),
    "mlp-h512-b256": mlp(256, 100, 512, 784),
    "dcgan-digits-b64": dcgan(64, 100, (1, 8, 8)),
    "dcgan-28x28-b64": dcgan(64, 100, (1, 28, 28)),
    "pacgan-ring8-b100": pacgan(1),
    "pacgan4-ring8-b100": pacgan(4),
    "pacgan-ring8-b100-sim": pacgan(1, "simultaneous", preset_norm=True),
    "pacgan4-ring8-b100-sim": pacgan(4, "simultaneous", preset_norm=True),
}
AVAILABLE = [name for name, ok, _ in backend_status() if ok and name != "cuda"]  # CPU; the GPU: test_bench_cuda
PEERS = ["torch"] if torch_version() else []


def parse_cases(parser, argv=None):
    """Parse argv with `parser` and a CASE... positional added to it: any of CASES, all of them by default."""
    parser.add_argument("cases", nargs="*", metavar="CASE", help=f"any of {', '.join(CASES)} (default: all)")
    args = parser.parse_intermixed_args(argv)  # options may come between positionals
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case {unknown[0]!r}; choose from {', '.join(CASES)}")
    args.cases = args.cases or list(CASES)
    return args


def make_trainer(backend, case, graph=True, comm=None):
    batch, dim, pac, models, update = CASES[case]
    data = np.random.default_rng(0).uniform(-1, 1, (4096, dim)).astype(np.float32)
    G, D = models(backend)
    return Trainer(G, D, data, batch_size=batch, seed=0, graph=graph, pac=pac, comm=comm, update=update,
                   opt_g=Adam(G, lr=2e-4, beta1=0.5), opt_d=Adam(D, lr=2e-4, beta1=0.5))


def check_first_step(trainer, case):
    """Assert that a runner's first step gives the NumPy reference's metrics (one step of a fresh reference)."""
    reference = make_trainer("numpy", case)
    got, want = trainer.read_metrics(trainer.step()), reference.read_metrics(reference.step())
    for k in want:
        assert abs(got[k] - want[k]) <= 1e-4 + 1e-3 * abs(want[k]), (case, k, got[k], want[k])
    return reference


@pytest.mark.parametrize("backend", AVAILABLE + PEERS)
@pytest.mark.parametrize("case", list(CASES))
def test_training_step(benchmark, backend, case):
    if backend == "torch":
        trainer = TorchTrainer(make_trainer("numpy", case))
    else:
        trainer = make_trainer(backend, case)
    reference = check_first_step(trainer, case)
    for _ in range(3):  # warm-up: compile, allocate
        trainer.step()

    def step():
        metrics = trainer.step()
        trainer.read_metrics(metrics)  # reads the losses back, which also synchronises a device

    settle()
    benchmark.pedantic(step, rounds=20, iterations=5 if "mlp" in case else 1, warmup_rounds=1)
    if benchmark.stats is None:  # --benchmark-disable: the check ran, nothing was timed
        return
    flops = step_flops(reference.G, reference.D, reference.batch_size, pac=reference.pac, update=reference.update)
    peak, how = cpu_peak_gflops()
    benchmark.extra_info.update(backend=backend, case=case, flops=flops, peak_gflops=peak, peak=how,
                                torch=torch_version(), gflops_per_s=flops / benchmark.stats.stats.median / 1e9)
