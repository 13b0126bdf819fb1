"""The kernel launches the CUDA backend makes, recorded from its own launchers (on a GPU or on the emulator).

    with record(cupy_cuda, timed=True) as launches:
        trainer.step()

wraps `cupy_cuda._function` (and `_gemm`, `_gemm_pair`) for the duration, so every kernel launch is noted as a
Launch: the .cu module, the kernel, the tile shape it was compiled with, its grid and block, its arguments (the
launcher's own, so the scalars give the shapes) and, for gemm.cuh's products, the product's shape and plan (a pair
kernel's two products: `pair`). With `timed` (a real
GPU) each launch is bracketed by two CUDA events, and `Launch.milliseconds()` reads the time between them once
the device has finished. With `run=False` nothing is compiled or launched: the launchers' checks and allocations
run, the kernels do not, which is enough to count what a step launches (benchmarks/perf_model.py). Copies and
fills that CuPy makes itself are not kernels of ours and are not recorded.
"""
import contextlib
import math
from dataclasses import dataclass, field


@dataclass
class Launch:
    module: str         # kernels/<module>.cu
    kernel: str         # e.g. "dense_forward_kernel"
    tile: tuple         # gemm.cuh's (TILE_M, TILE_N) the module was compiled with, or None
    grid: tuple         # (x, y, z)
    block: tuple        # (x, y, z)
    args: tuple         # as the launcher passed them
    product: tuple = None  # gemm.cuh's products: (m, n, k, layers, GemmPlan)
    pair: tuple = None     # a pair kernel's products: ((kernel, m, n, k, layers, GemmPlan), (...)) as their own'
    events: tuple = field(default=None, repr=False)  # (start, end) CUDA events when timed

    @property
    def blocks(self):
        return math.prod(self.grid)

    def milliseconds(self):
        """Device time between the launch's two events (timed launches, after a synchronisation)."""
        import cupy as cp

        return cp.cuda.get_elapsed_time(*self.events)


@contextlib.contextmanager
def record(cupy_cuda, timed=False, run=True):
    """Record every kernel launch of the CUDA backend `cupy_cuda` inside the block; yields the list of Launches.
    `timed`: bracket each with CUDA events; `run=False`: record without compiling or launching anything."""
    launches, products = [], []  # products: the next launch's ("product" or "pair", what it multiplies)
    original_function, original_gemm, original_pair = cupy_cuda._function, cupy_cuda._gemm, cupy_cuda._gemm_pair

    def gemm(module, kernel, m, n, k, args, layers=1, group=1):
        plan = cupy_cuda.gemm_plan(m, n, k, layers, cupy_cuda._multiprocessors(), group, kernel)
        products.append(("product", (m, n, k, layers, plan)))
        original_gemm(module, kernel, m, n, k, args, layers, group)

    def gemm_pair(module, kernel, first, second, args):
        plans = cupy_cuda.gemm_pair_plans(first, second, cupy_cuda._multiprocessors())
        products.append(("pair", tuple((*product, plan) for product, plan in zip((first, second), plans))))
        original_pair(module, kernel, first, second, args)

    def function(module, kernel, tile=None):
        compiled = original_function(module, kernel, tile) if run else None

        def launch(grid, block, args, **options):
            grid, block = (tuple(grid) + (1, 1))[:3], (tuple(block) + (1, 1))[:3]
            entry = Launch(module, kernel, tile, grid, block, tuple(args))
            if products:
                what, multiplied = products.pop()
                setattr(entry, what, multiplied)
            if timed:
                import cupy as cp

                entry.events = (cp.cuda.Event(), cp.cuda.Event())
                entry.events[0].record()
            if run:
                compiled(grid, block, args, **options)
            if timed:
                entry.events[1].record()
            launches.append(entry)

        return launch

    cupy_cuda._function, cupy_cuda._gemm, cupy_cuda._gemm_pair = function, gemm, gemm_pair
    try:
        yield launches
    finally:
        cupy_cuda._function, cupy_cuda._gemm, cupy_cuda._gemm_pair = original_function, original_gemm, original_pair
