"""Data-parallel training over MPI ranks (gan_engine.distributed): P ranks follow one process of the same global
batch; what cannot be split over ranks is refused with a clear error; the ranks' parameters are checked."""
import subprocess
import sys

import numpy as np
import pytest

from gan_engine import Adam, GanEngineError, Trainer, mlp_discriminator, mlp_generator
from gan_engine.models import batchnorm_generator, dcgan_discriminator, dcgan_generator

from .util import mpiexec

STEPS = 50
BATCH = 16


def make_trainer(backend, comm=None, model="mlp"):
    """The tests' GAN on 6-value samples (mlp), with batch norm in G (pacgan: 1D), or an 8x8 DCGAN (batch norm in
    G and D, 2D)."""
    if model == "dcgan":
        G = dcgan_generator(4, (1, 8, 8), (8, 4), backend=backend, seed=3)
        D = dcgan_discriminator((1, 8, 8), (4, 8), backend=backend, seed=4)
    else:
        G = (mlp_generator if model == "mlp" else batchnorm_generator)(4, (16,), 6, backend=backend, seed=3)
        D = mlp_discriminator(6, (16,), backend=backend, seed=4)
    data = np.random.default_rng(0).uniform(-1, 1, (300, G.out_features)).astype(np.float32)
    return Trainer(G, D, data, batch_size=BATCH, seed=5, comm=comm, opt_g=Adam(G, lr=1e-3, beta1=0.5),
                   opt_d=Adam(D, lr=1e-3, beta1=0.5))


def _run_ranks(tmp_path, ranks, backend, model="mlp", mode="train"):
    out = tmp_path / f"{backend}-{model}-{ranks}-{mode}.npz"
    done = subprocess.run([mpiexec(), "-n", str(ranks), sys.executable, "-m", "tests.distributed_worker", str(out),
                           backend, model, mode], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return dict(np.load(out))


@pytest.mark.parametrize("backend, model", [("numpy", "mlp"), ("numba", "mlp"), ("numba", "pacgan"),
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


class _Ranks:
    """Two ranks as the trainer's checks see them, without MPI (this process plays rank 0)."""
    rank, size = 0, 2

    def check_same(self, arrays, what):
        pass


def test_a_batch_that_does_not_split_evenly_over_the_ranks_is_refused():
    with pytest.raises(GanEngineError, match="batch of 16 does not split evenly over 3 ranks"):
        make_trainer("numpy", type("Three", (_Ranks,), {"size": 3})())


def test_without_mpi4py_the_error_says_what_to_install(monkeypatch):
    from gan_engine.distributed import world

    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(GanEngineError, match=r"needs mpi4py .*pip install -e '\.\[mpi\]'"):
        world()
