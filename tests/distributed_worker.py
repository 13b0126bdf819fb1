"""A rank of the distributed tests (tests/test_distributed.py), run as `mpiexec -n P python -m
tests.distributed_worker OUT BACKEND MODEL MODE`: trains the tests' MLP GAN over the ranks and rank 0 saves what it saw."""
import sys

import numpy as np

from gan_engine import GanEngineError
from gan_engine.distributed import world

from .test_distributed import EMULATED_STEPS, STEPS, make_trainer


def main(out, backend, model, mode):
    if backend == "cuda-emulated":  # the CUDA backend on the CPU emulator, NCCL stood in for over MPI
        import pytest

        from gan_engine.backends import cupy_cuda

        from . import cuda_emulator

        with pytest.MonkeyPatch.context() as patch:
            cuda_emulator.install(patch)
            patch.setattr(cupy_cuda, "nccl_sum", lambda comm: cupy_cuda._nccl_sum(cuda_emulator.fake_nccl(), comm))
            return train(out, "cuda", model, mode)
    return train(out, backend, model, mode)


def train(out, backend, model, mode):
    comm = world()
    trainer = make_trainer(backend, comm, model)
    losses = []
    try:
        for step in range(STEPS if backend != "cuda" else EMULATED_STEPS):
            if mode == "drift" and step == 20 and comm.rank == 1:
                trainer.G.flat_params[0] += 1e-3  # this rank's model leaves the others'
            losses.append(trainer.read_metrics(trainer.step()))
        error = ""
    except GanEngineError as exc:
        error = str(exc)
    if comm.rank == 0:
        host = trainer.backend.to_numpy
        np.savez(out, d_loss=[v["d_loss"] for v in losses], g_loss=[v["g_loss"] for v in losses],
                 G=host(trainer.G.flat_params), D=host(trainer.D.flat_params), ranks=comm.size, error=error,
                 **{"G stats": host(trainer.G.flat_stats), "D stats": host(trainer.D.flat_stats)})


if __name__ == "__main__":
    main(*sys.argv[1:])
