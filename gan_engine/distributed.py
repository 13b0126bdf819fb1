"""Synchronous data-parallel training over MPI: P ranks train one model, each on its share of every global batch.

    mpiexec -n 2 python train.py          # with Trainer(..., comm=world()) inside
    mpiexec -n 2 gan-engine train ...     # the command line: rank 0 alone writes the run folder

Every rank draws the whole global batch's indices and noise from the same random stream (the trainer's seed) and
keeps its own rows, B / P of them, so the P ranks together see exactly the batch one process would. After each
backward the gradients of the model's flat buffer are averaged over the ranks (one allreduce per model per update)
and every rank applies the same optimizer step: a P-rank run follows the one-process run of the same global batch
up to float rounding. `Communicator.check_same` compares a digest of the parameters across ranks, so a drift stops
the run with an error instead of training P different models.

The transport is mpi4py (`pip install -e ".[mpi]"`: mpi4py and the MPICH wheel, no system MPI needed) for host
arrays (the numpy and numba backends) and NCCL for the CUDA backend's device arrays (bootstrapped over MPI, one GPU
a rank, the allreduce on the step's stream so that the captured CUDA graph holds it).
"""
import contextlib
import hashlib
import os
import sys

import numpy as np

from .errors import GanEngineError

# the variables an MPI launcher sets in each rank's environment: MPICH's Hydra (and Slurm's PMI), Open MPI
LAUNCHER_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")


class Communicator:
    """The ranks of an MPI communicator (mpi4py's), as the trainer uses them: rank, size, in-place sums and
    averages, agreement (any), rank 0's values (broadcast) and the check that the ranks hold the same arrays."""

    def __init__(self, comm):
        self.comm, self.rank, self.size = comm, comm.Get_rank(), comm.Get_size()
        self.device_sum = None  # set by use_backend for a GPU backend: NCCL's in-place sum of a device array

    def use_backend(self, backend):
        """Reduce `backend`'s arrays over the ranks: host arrays over MPI, a GPU backend's through NCCL."""
        if backend.xp is not np and self.device_sum is None:
            self.device_sum = backend.nccl_sum(self.comm)

    def share_training(self, G, D, batch_size):
        """Make G and D train over the ranks, or raise GanEngineError: a global batch that the ranks share evenly
        and the same initial parameters on every rank; reductions of G's backend's arrays over MPI or NCCL; batch
        norm taking its statistics over every rank's rows."""
        if batch_size % self.size:
            raise GanEngineError(f"the batch of {batch_size} does not split evenly over {self.size} ranks: give a "
                                 f"batch size that is a multiple of {self.size}")
        self.use_backend(G.backend)
        self.check_same([G.flat_params, D.flat_params], "initial parameters (build the models with the same seeds)")
        G.synchronize(self)
        D.synchronize(self)

    def sum(self, buffer):
        """Replace `buffer` (every rank's of the same shape and dtype) by its sum over the ranks: a host array
        over MPI, a device array through NCCL (use_backend)."""
        from mpi4py import MPI

        if type(buffer) is not np.ndarray:
            if self.device_sum is None:
                raise GanEngineError(f"cannot reduce a {type(buffer).__name__} over the ranks before use_backend")
            self.device_sum(buffer)
            return
        self.comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)

    def average(self, buffer):
        """Replace `buffer` (every rank's of the same shape and dtype; host or device) by its mean over the ranks."""
        self.sum(buffer)
        buffer /= self.size

    def average_values(self, values):
        """{name: float} -> the same names, each value's mean over the ranks (float64)."""
        names = sorted(values)
        means = np.array([values[n] for n in names], dtype=np.float64)
        self.average(means)
        return dict(zip(names, means.tolist()))

    def any(self, flag):
        """True on every rank when `flag` is true on any rank (so that all ranks take the same branch)."""
        from mpi4py import MPI

        return bool(self.comm.allreduce(int(bool(flag)), op=MPI.MAX))

    def broadcast(self, value):
        """Rank 0's `value` (any picklable object), on every rank."""
        return self.comm.bcast(value, root=0)

    def check_same(self, arrays, what):
        """Raise GanEngineError unless every rank holds the same bytes in `arrays` (host arrays): the digests of
        all ranks are compared."""
        digest = hashlib.blake2b(digest_size=16)
        for a in arrays:
            digest.update(np.ascontiguousarray(a.get() if hasattr(a, "get") else a).tobytes())
        digests = self.comm.allgather(digest.hexdigest())
        if len(set(digests)) > 1:
            differing = [r for r, d in enumerate(digests) if d != digests[0]]
            raise GanEngineError(f"the ranks' {what} differ (ranks {differing} from rank 0): the ranks no longer train "
                                 "one model; restart from the last checkpoint")


class OneProcess:
    """The communicator of training in one process, which the trainer calls like any other: every reduction is the
    value itself, and nothing can differ between ranks."""
    rank, size = 0, 1

    def share_training(self, G, D, batch_size):
        pass

    def sum(self, buffer):
        pass

    def average(self, buffer):
        pass

    def average_values(self, values):
        return values

    def any(self, flag):
        return bool(flag)

    def broadcast(self, value):
        return value

    def check_same(self, arrays, what):
        pass


ONE_PROCESS = OneProcess()


def world():
    """A Communicator over every rank of this MPI job (mpi4py's COMM_WORLD); mpi4py must be installed. Where the
    CUDA backend is available, each rank of a node takes its own GPU (the rank's index on its node): call this
    before building models."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise GanEngineError(f"training on several ranks needs mpi4py ({exc}); pip install -e '.[mpi]'") from exc
    from .backends import backend_status, get_backend

    if dict((name, ok) for name, ok, _ in backend_status()).get("cuda"):
        get_backend("cuda").use_local_device(MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED).Get_rank())
    return Communicator(MPI.COMM_WORLD)


def launched_ranks():
    """How many ranks the MPI launcher (mpiexec) started this process among; 1 when no launcher started it."""
    for name in LAUNCHER_SIZE_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def launched_world():
    """world() when mpiexec started this process as one of several ranks, else ONE_PROCESS."""
    return world() if launched_ranks() > 1 else ONE_PROCESS


@contextlib.contextmanager
def errors_end_every_rank(comm, command):
    """Over several ranks an error on one of them (a bad option, a full disk, divergence) prints its message and
    ends every rank of the job (MPI Abort), where the others would otherwise wait for it in a collective forever.
    In one process errors pass on as they are."""
    try:
        yield
    except (GanEngineError, OSError, MemoryError) as exc:
        if comm.size == 1:
            raise
        print(f"gan-engine {command}: error on rank {comm.rank} of {comm.size}: {exc}", file=sys.stderr, flush=True)
        comm.comm.Abort(2)
