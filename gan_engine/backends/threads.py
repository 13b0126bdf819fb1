"""The engine's thread policy: how many threads a CPU op may use, from its size and the cores actually free.

A BLAS pool that splits every GEMM over all cores collapses on a busy machine: its threads wait at the end of
each GEMM for the one that shares a core with another process (and spin while they wait), so a 1 ms training
step took 6 to 380 ms beside other work. The policy therefore gives a GEMM
    threads = max(1, min(cap, multiply-adds // MACS_PER_THREAD))
where `cap` is the cores this process may run on (os.sched_getaffinity) less those other processes keep busy,
measured from /proc/stat against this process's own CPU time and refreshed at most every REFRESH_S seconds. A
small GEMM does not fork (below 2 MACS_PER_THREAD a second thread gains little or loses:
benchmarks/test_bench_ops.py::test_gemm times both), and on a busy machine every GEMM runs on the cores left,
one thread when only one is.

`GAN_ENGINE_THREADS=N` or `--threads N` on the command line replaces the measured cap by N (the size rule
still keeps small GEMMs on one thread). NumPy's BLAS is driven through threadpoolctl. The Numba loops stay
serial: a second pool beside BLAS's (Numba's OpenMP layer, prange over channels in im2col and col2im) made the
DCGAN steps 1.7x (28x28) to 3x (digits) slower on 2 cores, the two pools spinning in turn. The backends call
`use_blas(macs)` before each GEMM; layers and the trainer never see threads.
"""
import math
import os
import time

from ..errors import GanEngineError

ENV_VAR = "GAN_ENGINE_THREADS"
MACS_PER_THREAD = 2_000_000  # 2 threads from 4M multiply-adds (64x128x784: 1.1-1.5x faster; 64x16x1024: 0.6x)
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
    """Threads per op from its size and the cores free. `override` (an int) replaces the measured cap."""

    def __init__(self, override=None):
        self.override = override
        self.cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
        self.cores = len(self.cpus)
        self.others = 0.0           # cores other processes kept busy over the last measured interval
        self._cap = self.cores
        self._last = None           # (wall time, busy CPU seconds, own CPU seconds) at the last measurement
        self._blas = None           # threadpoolctl's BLAS controllers, found on first use
        self._blas_threads = None   # what the BLAS pools were last set to

    def cap(self):
        """The most threads an op may use now: the override, or the cores other processes leave free."""
        if self.override is not None:
            return self.override
        now = time.perf_counter()
        if self._last is None or now - self._last[0] >= REFRESH_S:
            self._measure(now)
        return self._cap

    def _measure(self, now):
        busy, own = cpu_busy_seconds(self.cpus), time.process_time()
        if busy is None:
            return
        if self._last is not None:
            wall = now - self._last[0]
            others = (busy - self._last[1] - (own - self._last[2])) / wall
            self.others = min(max(others, 0.0), float(self.cores))
            self._cap = max(1, self.cores - math.ceil(self.others - BUSY))
        self._last = (now, busy, own)

    def use_blas(self, macs):
        """Set NumPy's BLAS pool to threads_for(macs) before a GEMM. A GEMM under 2 MACS_PER_THREAD leaves a larger
        pool as it is while the cap allows it: a switch costs ~12 us each way, more than a second thread loses on
        such a GEMM (64x100x128: 6 us). Returns the pool's size."""
        cap = self.cap()
        n = max(1, min(cap, int(macs // MACS_PER_THREAD)))
        current = self._blas_threads
        if current is not None and n < current <= cap and macs < 2 * MACS_PER_THREAD:
            return current
        if n != current:
            for controller in self._blas_controllers():
                controller.set_num_threads(n)
            self._blas_threads = n
        return n

    def _blas_controllers(self):
        if self._blas is None:
            from threadpoolctl import ThreadpoolController

            self._blas = ThreadpoolController().select(user_api="blas").lib_controllers
        return self._blas

    def describe(self):
        """A dict for `gan-engine info` and the benchmarks: the policy, the cores, and every BLAS in use."""
        if self._last is None and self.override is None:  # a first look at the load of the other processes
            self.cap()
            time.sleep(REFRESH_S)
        cap = self.cap()
        blas = [{"name": c.internal_api, "version": c.version, "architecture": getattr(c, "architecture", None),
                 "threading": getattr(c, "threading_layer", None), "threads": c.num_threads,
                 "file": os.path.basename(c.filepath)} for c in self._blas_controllers()]
        return {"cores": self.cores, "override": self.override, "cap": cap, "others_busy": round(self.others, 2),
                "macs_per_thread": MACS_PER_THREAD, "blas": blas,
                "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE")}


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


def use_blas(macs):
    """The process policy's use_blas: call before a GEMM of `macs` multiply-adds."""
    return policy().use_blas(macs)
