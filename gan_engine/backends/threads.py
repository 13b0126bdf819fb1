"""The engine's threads: NumPy's BLAS on one thread, large products split by rows over the engine's own threads,
as many as the cores other processes leave free.

Two facts decide the design (2-core AMD EPYC, OpenBLAS 0.3.31):
- A BLAS pool that splits every GEMM over all cores collapses on a busy machine: its threads wait at the end of
  each GEMM for the one that shares a core with another process, so a 1 ms step took 6 to 380 ms beside other
  work.
- OpenBLAS's result depends on its thread count (64x784x128: up to 6e-5 apart between 1 and 2 threads), so a
  thread count that follows the load would make a seed's run depend on what else the machine was doing.
So NumPy's BLAS is pinned to one thread (through threadpoolctl, for the whole process), which makes the NumPy
reference deterministic and never spin. The Numba backend's large products go through `matmul`, which cuts a
product into row blocks by its size alone:
    blocks = min(cores, rows // MIN_ROWS, multiply-adds // MACS_PER_BLOCK)
(cores: this process's CPU affinity) and hands them to as many threads as `cap` allows. Each block is one
single-threaded BLAS call, so the result is the same bits however many threads ran it. Its per-channel loops
and Adam go through `over` the same way: blocks of whole channels (independent of one another) by the values
they touch, run by Numba loops that release the GIL. `cap` is the cores less those other processes keep busy,
measured from /proc/stat against this process's own CPU time and refreshed at most every REFRESH_S seconds;
waiting threads sleep on an event, never spin.

`GAN_ENGINE_THREADS=N` or `--threads N` on the command line replaces the measured cap by N. There is no Numba
thread pool: one beside BLAS's (Numba's OpenMP layer, prange over channels in im2col and col2im) made the DCGAN
steps 1.7x (28x28) to 3x (digits) slower on 2 cores. Layers and the trainer never see threads.
"""
import functools
import math
import os
import threading
import time

import numpy as np

from ..errors import GanEngineError

ENV_VAR = "GAN_ENGINE_THREADS"
MACS_PER_BLOCK = 8_000_000  # a block per 8M multiply-adds; smaller products lose to the wake-up of a thread
MIN_ROWS = 64              # rows of a block at least: a 64-row step GEMM in two 32-row halves lost ~0.5 ms a step
ELEMENTS_PER_BLOCK = 100_000  # a memory-bound loop's block: values it reads or writes (about 100 us of work)
REFRESH_S = 0.25           # how often the load of the other processes is measured again
BUSY = 0.25                # a core counts as taken when other processes keep it busy more than this
_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100  # /proc/stat's unit


def cpu_busy_seconds(cpus):
    """Busy CPU seconds summed over the cores `cpus` since boot, from /proc/stat (None where there is none). Busy
    is all but idle and iowait; steal counts as busy: a hypervisor's other guests hold the core."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    busy = 0
    for line in lines:
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *ticks = line.split()
            if int(name[3:]) in cpus:
                t = [int(v) for v in ticks[:8]]
                busy += sum(t) - t[3] - t[4]
    return busy / _TICKS_PER_S


def affinity():
    """The cores this process may run on (all of them where the OS cannot say)."""
    return os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))


class OtherLoad:
    """How many of the cores `cpus` other processes keep busy: their busy CPU time (/proc/stat) less this
    process's own, over the wall time between two readings."""

    def __init__(self, cpus, now=None):
        self.cpus = cpus
        self._last = self._sample(now)

    def _sample(self, now):
        return time.perf_counter() if now is None else now, cpu_busy_seconds(self.cpus), time.process_time()

    @property
    def since(self):
        """When the interval the next read() covers began (time.perf_counter)."""
        return self._last[0]

    def read(self, now=None):
        """Cores other processes kept busy since the last reading (>= 0), and start the next interval; None where
        there is no /proc/stat or no time has passed."""
        last, self._last = self._last, self._sample(now)
        wall = self._last[0] - last[0]
        if last[1] is None or self._last[1] is None or wall <= 0:
            return None
        return max(0.0, (self._last[1] - last[1] - (self._last[2] - last[2])) / wall)


def parse_threads(value, source):
    """A thread count from the user: a positive integer, or GanEngineError saying what was wrong."""
    try:
        n = int(str(value).strip())
    except ValueError:
        n = 0
    if n < 1:
        raise GanEngineError(f"{source} must be a positive whole number of threads, got {value!r}")
    return n


class ThreadPolicy:
    """Row blocks per product from its size, threads from the cores free. `override` (an int) replaces the
    measured cap. Making one pins every BLAS library loaded to one thread."""

    def __init__(self, override=None):
        self.override = override
        self.cpus = affinity()
        self.cores = len(self.cpus)
        self.others = 0.0           # cores other processes kept busy over the last measured interval
        self._cap = self.cores
        self._load = None           # OtherLoad, from the first measurement on
        self._workers = []          # the engine's threads beyond the caller's, started when first needed
        self.pin_blas()

    def pin_blas(self):
        """Set every BLAS library loaded so far to one thread (Numba loads SciPy's when it compiles a kernel)."""
        from threadpoolctl import ThreadpoolController

        self._blas = ThreadpoolController().select(user_api="blas").lib_controllers
        for controller in self._blas:
            controller.set_num_threads(1)

    def cap(self):
        """The most threads a product may use now: the override, or the cores other processes leave free."""
        if self.override is not None:
            return self.override
        now = time.perf_counter()
        if self._load is None or now - self._load.since >= REFRESH_S:
            self._measure(now)
        return self._cap

    def _measure(self, now):
        if self._load is None:  # a first look: the cap stays at every core until an interval has passed
            self._load = OtherLoad(self.cpus, now)
            return
        others = self._load.read(now)
        if others is not None:
            self.others = min(others, float(self.cores))
            self._cap = max(1, self.cores - math.ceil(self.others - BUSY))

    def blocks(self, m, k, n):
        """Row blocks of an (m, k) @ (k, n) product: by its size and this machine's cores, never by the load."""
        return max(1, min(self.cores, m // MIN_ROWS, m * k * n // MACS_PER_BLOCK))

    def matmul(self, a, b, out):
        """out (M, N) = a (M, K) @ b (K, N) in blocks(M, K, N) row blocks of single-threaded BLAS, spread over
        min(cap, blocks) threads (this one and the engine's workers). Returns the threads used."""
        m = a.shape[0]
        blocks = self.blocks(m, a.shape[1], b.shape[1])
        if blocks == 1:
            np.matmul(a, b, out=out)
            return 1
        bounds = [m * i // blocks for i in range(blocks + 1)]
        return self.run([functools.partial(np.matmul, a[lo:hi], b, out=out[lo:hi])
                         for lo, hi in zip(bounds, bounds[1:])])

    def over(self, n, elements, kernel, *args):
        """kernel(*args, lo, hi) for [0, n) in blocks of whole items (channels, rows): a block per
        ELEMENTS_PER_BLOCK of the `elements` it touches, at most one per core, spread over the engine's threads.
        The kernel must release the GIL (Numba's nogil) and its items must be independent."""
        blocks = max(1, min(self.cores, n, elements // ELEMENTS_PER_BLOCK))
        bounds = [n * i // blocks for i in range(blocks + 1)]
        return self.run([functools.partial(kernel, *args, lo, hi) for lo, hi in zip(bounds, bounds[1:])])

    def run(self, jobs):
        """Run the callables `jobs` over min(cap, len(jobs)) threads: this one takes jobs 0, n, 2n, ..., worker i
        jobs i, i + n, ...; returns when all are done (raising the first error). Returns the threads used."""
        n = min(self.cap(), len(jobs))
        while len(self._workers) < n - 1:
            self._workers.append(_Worker())
        for i, worker in enumerate(self._workers[:n - 1], 1):
            worker.start(jobs[i::n])
        try:
            _run(jobs[0::n])
        finally:  # every worker finishes before this returns or raises (its error, if it had one)
            for worker in self._workers[:n - 1]:
                worker.wait()
        return n

    def describe(self):
        """A dict for `gan-engine info` and the benchmarks: the policy, the cores, and every BLAS in use."""
        if self._load is None and self.override is None:  # a first look at the load of the other processes
            self.cap()
            time.sleep(REFRESH_S)
        cap = self.cap()
        self.pin_blas()
        blas = [{"name": c.internal_api, "version": c.version, "architecture": getattr(c, "architecture", None),
                 "threading": getattr(c, "threading_layer", None), "threads": c.num_threads,
                 "file": os.path.basename(c.filepath)} for c in self._blas]
        return {"cores": self.cores, "override": self.override, "cap": cap, "others_busy": round(self.others, 2),
                "macs_per_block": MACS_PER_BLOCK, "min_rows": MIN_ROWS, "blas": blas,
                "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE")}


def _run(jobs):
    for job in jobs:
        job()


class _Worker:
    """One of the engine's threads: runs the blocks it is handed (BLAS calls and nogil Numba loops release the
    GIL) and sleeps on an event in between."""

    def __init__(self):
        self._go, self._done = threading.Event(), threading.Event()
        self._jobs, self._error = [], None
        threading.Thread(target=self._loop, daemon=True, name="gan-engine-gemm").start()

    def start(self, jobs):
        self._jobs, self._error = jobs, None
        self._done.clear()
        self._go.set()

    def wait(self):
        self._done.wait()
        if self._error is not None:
            raise self._error

    def _loop(self):
        while True:
            self._go.wait()
            self._go.clear()
            try:
                _run(self._jobs)
            except BaseException as exc:  # handed to the caller by wait()
                self._error = exc
            self._done.set()


_policy = None


def policy():
    """The process's ThreadPolicy, made on first use with GAN_ENGINE_THREADS as its override if set."""
    global _policy
    if _policy is None:
        value = os.environ.get(ENV_VAR, "").strip()
        _policy = ThreadPolicy(parse_threads(value, ENV_VAR) if value else None)
    return _policy


def set_threads(n):
    """Cap every op at n threads (what --threads does), or None to go back to measuring the free cores."""
    policy().override = None if n is None else parse_threads(n, "the thread count")
    policy().cap()


def matmul(a, b, out):
    """The process policy's matmul: out (M, N) = a (M, K) @ b (K, N), the same bits on any number of threads."""
    return policy().matmul(a, b, out)


def over(n, elements, kernel, *args):
    """The process policy's `over`: kernel(*args, lo, hi) over [0, n) in blocks on the engine's threads."""
    return policy().over(n, elements, kernel, *args)
