"""The thread policy: BLAS on one thread, large products in row blocks over the engine's threads (the same bits
on any number of them), the cap from the cores other processes leave free, --threads and GAN_ENGINE_THREADS."""
import subprocess
import sys
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from gan_engine.backends import get_backend, threads
from gan_engine.backends.threads import MIN_ROWS, ThreadPolicy
from gan_engine.cli import main
from gan_engine.errors import GanEngineError


@pytest.fixture
def policy(monkeypatch):
    """The process policy with its override restored afterwards."""
    p = threads.policy()
    monkeypatch.setattr(p, "override", None)
    return p


def test_loading_a_backend_pins_blas_to_one_thread():
    get_backend("numpy")
    get_backend("numba").warm_up()  # compiling loads SciPy's BLAS as well
    assert {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"} == {1}


def test_blocks_follow_the_size_and_the_cores_never_the_load(policy, monkeypatch):
    monkeypatch.setattr(policy, "cores", 4)
    assert policy.blocks(64, 784, 128) == 1  # 6.4M multiply-adds: one block
    assert policy.blocks(1024, 128, 256) == 4  # 33.6M: four
    assert policy.blocks(256, 784, 512) == 4  # 103M: at most one per core
    assert policy.blocks(128, 1024, 256) == 2  # at least MIN_ROWS rows a block
    assert policy.blocks(2 * MIN_ROWS - 1, 10 ** 6, 10) == 1
    policy.override = 1
    assert policy.blocks(256, 784, 512) == 4


@pytest.mark.parametrize("shape", [(256, 784, 512), (784, 64, 1280), (403, 300, 257)])
def test_matmul_gives_the_same_bits_on_any_number_of_threads(policy, monkeypatch, shape):
    m, k, n = shape
    monkeypatch.setattr(policy, "cores", 4)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
    if m == 784:
        a = np.asfortranarray(a)  # a transposed operand, as x.T in a weight gradient
    results = []
    for cap in (1, 2, 3, 4):
        policy.override = cap
        out = np.empty((m, n), np.float32)
        assert policy.matmul(a, b, out) == min(cap, policy.blocks(m, k, n))
        results.append(out)
    np.testing.assert_allclose(results[0], a.astype(np.float64) @ b, rtol=1e-4, atol=1e-3)
    for out in results[1:]:
        assert np.array_equal(out, results[0])


def test_an_error_in_a_worker_reaches_the_caller(policy):
    policy.override = 2
    a = np.ones((256, 784), np.float32)
    with pytest.raises(ValueError):
        policy.matmul(a, np.ones((784, 512), np.float32), np.empty((256, 511), np.float32))


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
    assert f"({arch} kernels" in out and "1 thread now" in out and "OPENBLAS_CORETYPE" in out


def test_a_dcgan_step_gives_the_same_bits_on_one_thread_and_on_two(policy):
    """The channel loops (im2col, col2im, batch norm, layouts) and Adam, spread over the engine's threads, give
    the same training as on one thread."""
    from benchmarks.test_bench_step import make_trainer

    runs = []
    for cap in (1, 2):
        policy.override = cap
        trainer = make_trainer("numba", "dcgan-digits-b64")
        runs.append([trainer.read_metrics(trainer.step()) for _ in range(3)])
        runs[-1].append(trainer.G.flat_params.copy())
    assert runs[0][:3] == runs[1][:3]
    assert np.array_equal(runs[0][3], runs[1][3])
