"""The thread policy: threads per op from its size and the cores other processes leave free; the override; the
BLAS pools it drives; the command line's --threads and GAN_ENGINE_THREADS."""
import subprocess
import sys
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from gan_engine.backends import numpy_cpu, numpy_ref, threads
from gan_engine.backends.threads import MACS_PER_THREAD, ThreadPolicy
from gan_engine.cli import main
from gan_engine.errors import GanEngineError


@pytest.fixture
def policy(monkeypatch):
    """The process policy with a clean override, restored afterwards."""
    p = threads.policy()
    monkeypatch.setattr(p, "override", None)
    yield p
    p.override = 1
    p.use_blas(0)  # back to one BLAS thread


def blas_threads():
    return {info["filepath"]: info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}


def test_small_gemms_get_one_thread_and_large_ones_the_cap(policy):
    policy.override = 1
    assert policy.use_blas(100 * MACS_PER_THREAD) == 1
    assert set(blas_threads().values()) == {1}
    policy.override = 4
    assert policy.use_blas(2 * MACS_PER_THREAD - 1) == 1
    assert policy.use_blas(2 * MACS_PER_THREAD) == 2
    assert set(blas_threads().values()) == {2}
    assert policy.use_blas(100 * MACS_PER_THREAD) == 4
    assert set(blas_threads().values()) == {4}


def test_a_small_gemm_leaves_a_larger_pool_unless_the_cap_falls(policy):
    policy.override = 2
    assert policy.use_blas(100 * MACS_PER_THREAD) == 2
    assert policy.use_blas(10) == 2  # a switch would cost more than the second thread loses
    assert set(blas_threads().values()) == {2}
    policy.override = 1  # the machine got busy (or --threads 1): down at once
    assert policy.use_blas(10) == 1
    assert set(blas_threads().values()) == {1}


def test_the_cap_is_the_cores_other_processes_leave_free(monkeypatch):
    p = ThreadPolicy()
    p.cores = p._cap = 4
    clock = {"busy": 100.0, "own": 10.0}
    monkeypatch.setattr(threads, "cpu_busy_seconds", lambda cpus: clock["busy"])
    monkeypatch.setattr(threads.time, "process_time", lambda: clock["own"])
    p._measure(0.0)
    assert p._cap == 4  # nothing measured yet: every core
    clock["busy"] += 2.5  # one second: 2.5 busy core-seconds, 1.0 of them ours -> others keep 1.5 cores busy
    clock["own"] += 1.0
    p._measure(1.0)
    assert p.others == pytest.approx(1.5)
    assert p._cap == 2
    clock["busy"] += 1.1  # others 0.1: under BUSY, every core is free again
    clock["own"] += 1.0
    p._measure(2.0)
    assert p._cap == 4
    clock["busy"] += 9.0  # others more than there are cores: still one thread
    p._measure(3.0)
    assert p._cap == 1


def test_a_busy_process_beside_us_is_seen():
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        p = ThreadPolicy()
        time.sleep(0.3)  # let it start
        p._measure(time.perf_counter())
        time.sleep(0.5)
        p._measure(time.perf_counter())
    finally:
        spin.kill()
        spin.wait()
    assert p.others > 0.5, f"a spinning process beside us measured as {p.others:.2f} busy cores"
    assert p._cap == max(1, p.cores - 1)


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", ""])
def test_bad_thread_counts_are_refused(value):
    with pytest.raises(GanEngineError, match="positive whole number of threads"):
        threads.parse_threads(value, "--threads")


def test_the_numpy_backend_is_the_reference_under_the_policy(monkeypatch):
    asked = []
    monkeypatch.setattr(numpy_cpu, "use_blas", asked.append)
    rng = np.random.default_rng(0)
    x, W, b = rng.standard_normal((8, 5)), rng.standard_normal((5, 3)), rng.standard_normal(3)
    np.testing.assert_array_equal(numpy_cpu.dense_forward(x, W, b, "tanh"), numpy_ref.dense_forward(x, W, b, "tanh"))
    img, Wc = rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((4, 3, 4, 4))
    np.testing.assert_array_equal(numpy_cpu.conv2d_forward(img, Wc, None, 2, 1),
                                  numpy_ref.conv2d_forward(img, Wc, None, 2, 1))
    assert asked == [8 * 5 * 3, 2 * 4 * 4 * Wc.size]  # N I O; N OH OW C_out C_in k k


def test_cli_threads_option_and_environment(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(threads.policy(), "override", None)
    assert main(["sample", "--checkpoint", str(tmp_path / "none.npz"), "--threads", "1"]) == 2  # no checkpoint
    assert threads.policy().override == 1
    assert main(["sample", "--checkpoint", "x", "--threads", "many"]) == 2
    assert "--threads must be a positive whole number of threads, got 'many'" in capsys.readouterr().err
    monkeypatch.setenv(threads.ENV_VAR, "0")
    monkeypatch.setattr(threads, "_policy", None)
    assert main(["info"]) == 2
    assert "GAN_ENGINE_THREADS must be a positive whole number of threads, got '0'" in capsys.readouterr().err


def test_info_shows_the_policy_and_the_blas(monkeypatch, capsys):
    monkeypatch.setattr(threads.policy(), "override", 1)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "capped at 1 by --threads or GAN_ENGINE_THREADS" in out
    arch = next(i["architecture"] for i in threadpool_info() if i["user_api"] == "blas")
    assert f"({arch} kernels" in out and "OPENBLAS_CORETYPE" in out
