"""What the Numba backend promises beyond parity: a steady-state training step allocates no array, a second
process loads every compiled loop from the cache, and `gan-engine info` reports the warm-up."""
import json
import os
import subprocess
import sys
import tracemalloc

import pytest

from gan_engine.backends import backend_status

NUMBA = dict((name, reason) for name, ok, reason in backend_status()).get("numba")
pytestmark = pytest.mark.skipif(NUMBA != "available", reason=f"backend numba unavailable: {NUMBA}")

# Prints what one process sees: kernel signatures loaded from the cache / compiled by warm_up and two training
# steps per model, and during three more steps per model: the Numba runtime's allocation records, the arrays
# passed into compiled loops (each costs one record, a wrapper around the caller's buffer), and tracemalloc's
# peak growth (NumPy reports every array it allocates to tracemalloc).
PROBE = r"""
import json, sys, tracemalloc
import numpy as np
from numba.core.registry import CPUDispatcher
from numba.core.runtime import rtsys
from gan_engine.backends import numba_cpu
from tests.test_numba_backend import trainers

passed = [0]  # arrays and generators handed to compiled loops: the runtime wraps each in one record, no data


def counting(dispatcher):
    def call(*args):
        passed[0] += sum(isinstance(a, (np.ndarray, np.random.Generator)) for a in args)
        return dispatcher(*args)
    return call


numba_cpu.warm_up()
kernels = dict(vars(numba_cpu.k))
for name, value in kernels.items():
    if isinstance(value, CPUDispatcher):
        setattr(numba_cpu.k, name, counting(value))
report = {"nrt_allocs": 0, "arrays_passed": 0, "peak_bytes": 0}
for trainer in trainers("numba"):
    for _ in range(2):
        trainer.step()
    before, passed[0] = rtsys.get_allocation_stats().alloc, 0
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for _ in range(3):
        trainer.step()
    report["peak_bytes"] = max(report["peak_bytes"], tracemalloc.get_traced_memory()[1] - base)
    tracemalloc.stop()
    report["nrt_allocs"] += rtsys.get_allocation_stats().alloc - before
    report["arrays_passed"] += passed[0]
vars(numba_cpu.k).update(kernels)
report["loaded"], report["compiled"] = numba_cpu.kernel_cache_stats()
print(json.dumps(report))
"""
# A step's smallest activation array is 64 x 100 float32 (25 KB); Python's own bookkeeping (views, the thread
# policy reading /proc/stat every quarter second) measured 13-17 KB.
MAX_PEAK_BYTES = 24 * 1024


def trainers(backend):
    """A seed-sized MLP GAN and a small DCGAN at batch 64."""
    import numpy as np

    from gan_engine import Trainer, mlp_discriminator, mlp_generator
    from gan_engine.models import dcgan_discriminator, dcgan_generator

    out = []
    for G, D in ((mlp_generator(100, (128,), 784, backend=backend), mlp_discriminator(784, (128,), backend=backend)),
                 (dcgan_generator(100, (1, 8, 8), backend=backend), dcgan_discriminator((1, 8, 8), backend=backend))):
        data = np.random.default_rng(0).uniform(-1, 1, (256, D.in_features)).astype(np.float32)
        out.append(Trainer(G, D, data, batch_size=64, seed=0))
    return out


def _probe():
    env = dict(os.environ, NUMBA_NRT_STATS="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=root, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def probes():
    """Two processes in a row: the first may compile (a cold cache), the second must only load."""
    return _probe(), _probe()


def test_steady_state_step_allocates_no_array(probes):
    for report in probes:
        inside = report["nrt_allocs"] - report["arrays_passed"]
        assert inside == 0, f"compiled loops allocated {inside} arrays in 6 steps"
        assert report["peak_bytes"] < MAX_PEAK_BYTES, (f"a steady-state step allocated up to {report['peak_bytes']} "
                                                       f"bytes at once (limit {MAX_PEAK_BYTES})")


def test_the_measure_sees_the_reference_allocate():
    """The NumPy reference makes temporaries in every op: the same measure must catch them."""
    for trainer in trainers("numpy"):
        for _ in range(2):
            trainer.step()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        trainer.step()
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        assert peak > MAX_PEAK_BYTES, f"the reference step peaked at only {peak} bytes"


def test_second_process_compiles_nothing(probes):
    first, second = probes
    assert second["compiled"] == 0, f"a second process compiled {second['compiled']} kernel signatures"
    assert second["loaded"] > 0 and second["loaded"] >= first["loaded"]


def test_info_reports_the_warm_up(capsys):
    from gan_engine.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "numba  yes" in out
    line = next(line for line in out.splitlines() if line.startswith("numba warm-up:"))
    assert float(line.split()[2]) >= 0 and "kernel signatures" in line
