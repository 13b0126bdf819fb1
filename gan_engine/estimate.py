"""What a run costs, said up front: the kernels' one-time compilation announced while it happens, and the time
the remaining steps will take, from the first steps measured."""
import threading
import time

COMPILE_NOTICE_S = 1.0  # a warm-up longer than this is compiling, not loading from the cache: say so
MEASURE_STEPS = 3       # an estimate needs at least this many steps after the first (which allocates) ...
MEASURE_S = 0.5         # ... and at least this long


def warm_up(backend, dtype, say):
    """Load the backend's compiled kernels (Numba: from its cache, or compile and cache them), saying
    "compiling kernels ..." through `say` once this has taken COMPILE_NOTICE_S. Returns the seconds it took
    (0 for a backend with nothing to warm up)."""
    if not hasattr(backend, "warm_up"):
        return 0.0
    notice = threading.Timer(COMPILE_NOTICE_S, say, [f"compiling the {backend.name} kernels (once: later runs "
                                                     "load them from the cache in about a second) ..."])
    notice.daemon = True
    notice.start()
    try:
        return backend.warm_up((dtype,))
    finally:
        notice.cancel()


def duration(seconds):
    """A duration for people: '2.3 ms', '840 ms', '1.4 s', '25 s', '4 min 10 s', '2 h 36 min'."""
    if seconds < 1:
        return f"{seconds * 1e3:.{1 if seconds < 0.01 else 0}f} ms"
    if seconds < 60:
        return f"{seconds:.{1 if seconds < 10 else 0}f} s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min"


class StepClock:
    """Times the steps after the first one of this process; `tick(step)` after each step returns, once, a line
    estimating how long the steps up to `total` take."""

    def __init__(self, total):
        self.total = total
        self.start = None   # (step, time) after the first step
        self.said = False

    def tick(self, step):
        """The estimate line the first time enough steps have been measured; None otherwise."""
        now = time.perf_counter()
        if self.start is None:
            self.start = (step, now)
            return None
        steps, seconds = step - self.start[0], now - self.start[1]
        if self.said or steps < MEASURE_STEPS or seconds < MEASURE_S:
            return None
        self.said = True
        per_step = seconds / steps
        left = self.total - step
        return (f"about {duration(per_step)} a step, so about {duration(per_step * left)} for the {left:,} "
                f"step{'s' if left != 1 else ''} left (the steps alone, measured over {steps}; sample pictures and "
                "checkpoints come on top)")
