"""Data-parallel training over MPI ranks (gan_engine.distributed): P ranks follow one process of the same global
batch; what cannot be split over ranks is refused with a clear error; the ranks' parameters are checked."""
import subprocess
import sys

import numpy as np
import pytest

from gan_engine import Adam, GanEngineError, Trainer, mlp_discriminator, mlp_generator
from gan_engine.distributed import Communicator
from gan_engine.models import batchnorm_generator, dcgan_discriminator, dcgan_generator

from .util import mpiexec

STEPS = 50
EMULATED_STEPS = 6  # the CUDA backend on the CPU emulator: slower
BATCH = 16


def make_trainer(backend, comm=None, model="mlp"):
    """The tests' GAN on 6-value samples (mlp), with batch norm in G (pacgan: 1D), or an 8x8 DCGAN (batch norm in
    G and D, 2D); a model name ending in -simultaneous trains with that update rule. pacgan-slots: the presets' way,
    packing 2 with G's batch norm per pack slot, averaging the standard deviation, simultaneous updates, real packs
    made once."""
    pac, real_packs = 1, "drawn"
    if model == "dcgan":
        G = dcgan_generator(4, (1, 8, 8), (8, 4), backend=backend, seed=3)
        D = dcgan_discriminator((1, 8, 8), (4, 8), backend=backend, seed=4)
    elif model == "pacgan-slots":
        pac, model, real_packs = 2, "pacgan-simultaneous", "fixed"
        G = batchnorm_generator(4, (16,), 6, backend=backend, seed=3, norm={"eps": 1e-4, "running": "stdev",
                                                                           "slots": pac})
        D = mlp_discriminator(6 * pac, (16,), backend=backend, seed=4)
    else:
        G = (mlp_generator if model == "mlp" else batchnorm_generator)(4, (16,), 6, backend=backend, seed=3)
        D = mlp_discriminator(6, (16,), backend=backend, seed=4)
    data = np.random.default_rng(0).uniform(-1, 1, (300, G.out_features)).astype(np.float32)
    update = "simultaneous" if model.endswith("-simultaneous") else "alternating"
    return Trainer(G, D, data, batch_size=BATCH, seed=5, comm=comm, update=update, pac=pac, real_packs=real_packs,
                   opt_g=Adam(G, lr=1e-3, beta1=0.5), opt_d=Adam(D, lr=1e-3, beta1=0.5))


def _run_ranks(tmp_path, ranks, backend, model="mlp", mode="train"):
    out = tmp_path / f"{backend}-{model}-{ranks}-{mode}.npz"
    done = subprocess.run([mpiexec(), "-n", str(ranks), sys.executable, "-m", "tests.distributed_worker", str(out),
                           backend, model, mode], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(np.load(out))


@pytest.mark.parametrize("backend, model", [("numpy", "mlp"), ("numba", "mlp"), ("numba", "pacgan"),
                                            ("numba", "pacgan-simultaneous"), ("numba", "pacgan-slots"),
                                            ("numpy", "dcgan"), ("numba", "dcgan")])
def test_two_ranks_follow_one_process_of_the_same_global_batch(tmp_path, backend, model):
    """With batch norm (pacgan: in G; dcgan: in G and D) its statistics are the whole batch's, over both ranks."""
    got = _run_ranks(tmp_path, 2, backend, model)
    one = make_trainer(backend, model=model)
    want = [one.read_metrics(one.step()) for _ in range(STEPS)]
    assert got["ranks"] == 2 and str(got["error"]) == ""
    for key in ("d_loss", "g_loss"):
        np.testing.assert_allclose(got[key], [v[key] for v in want], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["G"], one.G.flat_params, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["D"], one.D.flat_params, rtol=1e-4, atol=1e-5)
    assert not np.allclose(got["G"], make_trainer(backend, model=model).G.flat_params)  # it trained
    for name, model_one in (("G stats", one.G), ("D stats", one.D)):  # batch norm's running statistics
        np.testing.assert_allclose(got[name], model_one.flat_stats, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", ["mlp", "dcgan"])
def test_the_cuda_backend_reduces_through_nccl_over_two_ranks(tmp_path, model, monkeypatch):
    """On the CPU emulator, NCCL stood in for over MPI (tests/cuda_emulator.fake_nccl): the gradients, the
    synchronized batch norm's sums and the captured graph's allreduce go through the backend's NCCL path, and two
    ranks follow one emulated process of the same global batch."""
    from gan_engine.backends import cupy_cuda

    from . import cuda_emulator

    if cuda_emulator.available():
        pytest.skip(f"cannot emulate the CUDA kernels: {cuda_emulator.available()}")
    got = _run_ranks(tmp_path, 2, "cuda-emulated", model)
    cuda_emulator.install(monkeypatch)
    one = make_trainer("cuda", model=model)
    want = [one.read_metrics(one.step()) for _ in range(EMULATED_STEPS)]
    assert str(got["error"]) == "" and len(got["d_loss"]) == EMULATED_STEPS
    for key in ("d_loss", "g_loss"):
        np.testing.assert_allclose(got[key], [v[key] for v in want], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["G"], cupy_cuda.to_numpy(one.G.flat_params), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["D stats"], cupy_cuda.to_numpy(one.D.flat_stats), rtol=1e-4, atol=1e-5)


def test_one_rank_is_the_trainer_bit_for_bit():
    mpi = pytest.importorskip("mpi4py.MPI", reason="needs mpi4py: pip install -e '.[mpi]'")
    from gan_engine.distributed import Communicator

    alone, one_rank = make_trainer("numpy"), make_trainer("numpy", Communicator(mpi.COMM_SELF))
    first = [alone.read_metrics(alone.step()) for _ in range(10)]
    assert first == [one_rank.read_metrics(one_rank.step()) for _ in range(10)]
    assert np.array_equal(alone.G.flat_params, one_rank.G.flat_params)


def test_a_rank_whose_parameters_drift_stops_every_rank(tmp_path):
    got = _run_ranks(tmp_path, 2, "numpy", mode="drift")
    assert "the ranks' parameters differ (ranks [1] from rank 0)" in str(got["error"])
    assert len(got["d_loss"]) == 20  # the check at the first read after the drift


class _ThreeRanks(Communicator):
    """Three ranks as the trainer's checks see them, without MPI (this process plays rank 0)."""

    def __init__(self):
        self.comm, self.rank, self.size, self.device_sum = None, 0, 3, None


def test_a_batch_that_does_not_split_evenly_over_the_ranks_is_refused():
    with pytest.raises(GanEngineError, match="batch of 16 does not split evenly over 3 ranks"):
        make_trainer("numpy", _ThreeRanks())


def test_without_mpi4py_the_error_says_what_to_install(monkeypatch):
    from gan_engine.distributed import world

    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(GanEngineError, match=r"needs mpi4py .*pip install -e '\.\[mpi\]'"):
        world()


# ---- gan-engine train under mpiexec -------------------------------------------------------------------------

TRAIN = ["--dataset", "ring8", "--model", "mlp", "--hidden", "512", "--beta1", "0.8", "--batch-size", "16",
         "--log-every", "10", "--checkpoint-every", "30", "--sample-every", "1000", "--metrics-every", "1000",
         "--backend", "numpy", "--quiet"]


def _train_on_ranks(ranks, *argv, cwd, timeout=300):
    return subprocess.run([mpiexec(), "-n", str(ranks), sys.executable, "-m", "gan_engine.cli", "train", *argv],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def _checkpoint(folder, step):
    from gan_engine.checkpoint import load_checkpoint

    state, _, _ = load_checkpoint(str(folder / "checkpoints" / f"step_{step:08d}.npz"))
    return state


def _losses(folder):
    import csv

    with open(folder / "metrics.csv", newline="") as f:
        return [(int(r["step"]), float(r["d_loss"]), float(r["g_loss"])) for r in csv.DictReader(f)]


def test_train_under_mpiexec_writes_one_run_that_follows_one_process(tmp_path):
    from gan_engine.cli import main

    done = _train_on_ranks(2, *TRAIN, "--steps", "60", "--out", "two", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("on 2 ranks into two (step 0 of 60)") == 1 and done.stdout.count("done: 60 steps") == 1
    assert main(["train", *TRAIN, "--steps", "60", "--out", str(tmp_path / "one")]) == 0
    two, one = _losses(tmp_path / "two"), _losses(tmp_path / "one")
    assert [s for s, _, _ in two] == [s for s, _, _ in one] == [10, 20, 30, 40, 50, 60]  # rank 0 alone wrote rows
    np.testing.assert_allclose([v for _, *v in two], [v for _, *v in one], rtol=1e-5)
    for model in ("G", "D"):
        for name, value in _checkpoint(tmp_path / "two", 60)[model].items():
            np.testing.assert_allclose(value, _checkpoint(tmp_path / "one", 60)[model][name], rtol=1e-4, atol=1e-5)


def test_a_two_rank_run_resumes_to_the_same_bits(tmp_path):
    straight = _train_on_ranks(2, *TRAIN, "--steps", "60", "--out", "straight", cwd=tmp_path)
    first = _train_on_ranks(2, *TRAIN, "--steps", "30", "--out", "resumed", cwd=tmp_path)
    then = _train_on_ranks(2, "--resume", "resumed", "--steps", "60", "--quiet", cwd=tmp_path)
    assert straight.returncode == first.returncode == then.returncode == 0, then.stderr
    a, b = _checkpoint(tmp_path / "straight", 60), _checkpoint(tmp_path / "resumed", 60)
    for model in ("G", "D"):
        assert all(np.array_equal(a[model][k], b[model][k]) for k in a[model])


def test_an_error_on_one_rank_ends_every_rank_with_its_message(tmp_path):
    assert _train_on_ranks(2, *TRAIN, "--steps", "30", "--out", "run", cwd=tmp_path).returncode == 0
    again = _train_on_ranks(2, *TRAIN, "--steps", "30", "--out", "run", cwd=tmp_path, timeout=120)
    assert again.returncode != 0
    assert "gan-engine train: error on rank 0 of 2: run already holds a run" in again.stderr


def _start_long_run(tmp_path):
    import time

    p = subprocess.Popen([mpiexec(), "-n", "2", sys.executable, "-m", "gan_engine.cli", "train",
                          *[a if a != "30" else "200" for a in TRAIN], "--steps", "1000000", "--out", "long"],
                         cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list((tmp_path / "long" / "checkpoints").glob("*.npz")):
        time.sleep(0.1)
    assert p.poll() is None, p.communicate()
    return p


def test_ctrl_c_stops_every_rank_at_one_step_and_a_killed_rank_ends_the_job(tmp_path):
    import os
    import re
    import signal

    p = _start_long_run(tmp_path)
    p.send_signal(signal.SIGINT)  # Ctrl-C to mpiexec, which passes it on to every rank
    stdout, stderr = p.communicate(timeout=60)
    step = int(re.search(r"interrupted at step (\d+): checkpoint written", stdout).group(1))
    assert (tmp_path / "long" / "checkpoints" / f"step_{step:08d}.npz").exists()
    assert stdout.count("interrupted at step") == 1  # rank 0 alone reports, all ranks stopped at that step

    (tmp_path / "k").mkdir()
    p = _start_long_run(tmp_path / "k")
    ranks = subprocess.run(["pgrep", "-f", "gan_engine.cli train .*--out long"], capture_output=True, text=True)
    rank_pids = [int(x) for x in ranks.stdout.split() if int(x) != p.pid]
    os.kill(max(rank_pids), signal.SIGKILL)  # one rank dies without a word
    stdout, stderr = p.communicate(timeout=60)  # the job ends: mpiexec cleans up the other rank
    assert p.returncode != 0 and "Killed" in stdout + stderr
    last = max(int(c.stem.split("_")[1]) for c in (tmp_path / "k" / "long" / "checkpoints").glob("step_*.npz"))
    resumed = _train_on_ranks(2, "--resume", "long", "--steps", str(last + 20), "--quiet", cwd=tmp_path / "k")
    assert resumed.returncode == 0, resumed.stderr  # the run stays resumable from its last checkpoint


def test_the_scaling_model_counts_bytes_and_latency():
    from benchmarks.scaling import LATENCY_S, allreduce_s, model

    assert allreduce_s(8e9, 2, 10e9) == pytest.approx(0.8 + 2 * LATENCY_S)  # half sent, half received, each way
    assert allreduce_s(0, 512, 10e9) == pytest.approx(18 * LATENCY_S)      # log2(512) rounds of halving, doubling
    one = {"step_ms": 10.0, "batch": 64, "parameters": {"G": 10 ** 6, "D": 10 ** 6}, "batch_norm_channels": 0}
    rows = {(r["network"], r["ranks"]): r for r in model(one)}
    for ranks in (8, 64, 512):
        slow, fast = rows[("10 GB/s", ranks)], rows[("100 GB/s", ranks)]
        assert fast["speedup"] > slow["speedup"] and slow["speedup"] < ranks
        assert slow["step_ms"] == pytest.approx(10 + 1e3 * 2 * allreduce_s(4e6, ranks, 10e9))
    assert rows[("10 GB/s", 512)]["comm_share"] > rows[("10 GB/s", 8)]["comm_share"]
