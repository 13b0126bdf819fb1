"""The kernel launches the CUDA backend makes, recorded from its own launchers (on a GPU or on the emulator).

    with record(cupy_cuda, timed=True) as launches:
        trainer.step()

wraps `cupy_cuda._function` for the duration, so every kernel launch is noted as a Launch: the .cu module,
the kernel, its grid and block and its arguments (the launcher's own, so the scalars give the shapes). With
`timed` (a real GPU) each launch is also bracketed by two CUDA events, and `Launch.milliseconds()` reads the
time between them once the device has finished. Copies and fills that CuPy makes itself are not kernels of
ours and are not recorded.
"""
import contextlib
import math
from dataclasses import dataclass, field


@dataclass
class Launch:
    module: str         # kernels/<module>.cu
    kernel: str         # e.g. "dense_forward_kernel"
    grid: tuple         # (x, y, z)
    block: tuple        # (x, y, z)
    args: tuple         # as the launcher passed them
    events: tuple = field(default=None, repr=False)  # (start, end) CUDA events when timed

    @property
    def blocks(self):
        return math.prod(self.grid)

    def milliseconds(self):
        """Device time between the launch's two events (timed launches, after a synchronisation)."""
        import cupy as cp

        return cp.cuda.get_elapsed_time(*self.events)


@contextlib.contextmanager
def record(cupy_cuda, timed=False):
    """Record every kernel launch of the CUDA backend `cupy_cuda` inside the block; yields the list of Launches."""
    launches, original = [], cupy_cuda._function

    def function(module, kernel):
        compiled = original(module, kernel)

        def launch(grid, block, args, **options):
            grid, block = (tuple(grid) + (1, 1))[:3], (tuple(block) + (1, 1))[:3]
            entry = Launch(module, kernel, grid, block, tuple(args))
            if timed:
                import cupy as cp

                entry.events = (cp.cuda.Event(), cp.cuda.Event())
                entry.events[0].record()
            compiled(grid, block, args, **options)
            if timed:
                entry.events[1].record()
            launches.append(entry)

        return launch

    cupy_cuda._function = function
    try:
        yield launches
    finally:
        cupy_cuda._function = original
