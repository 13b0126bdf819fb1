"""benchmarks/kernel_ab.py sets two folders of kernels against each other in one process (mechanics on the CPU
emulator; the timings mean something on a GPU only)."""
import shutil

import numpy as np
import pytest

from benchmarks import kernel_ab
from gan_engine import Adam, Trainer, kernels, mlp_discriminator, mlp_generator

from . import cuda_emulator

pytestmark = pytest.mark.skipif(cuda_emulator.available() is not None, reason=str(cuda_emulator.available()))

ADAM_STEP = "param[i] -= lr * (mi * c1) / (sqrtf(vi * c2) + eps);"


def tiny_trainer(backend, case, graph):
    """A small MLP GAN in place of the benchmark case (the emulator runs every thread of every kernel)."""
    G, D = mlp_generator(4, (16,), 6, backend=backend, seed=0), mlp_discriminator(6, (16,), backend=backend, seed=1)
    data = np.random.default_rng(0).uniform(-1, 1, (1000, 6)).astype(np.float32)
    return Trainer(G, D, data, batch_size=5, seed=0, graph=graph, opt_g=Adam(G, lr=1e-3), opt_d=Adam(D, lr=1e-3))


def other_kernels(tmp_path, edit=None):
    """A copy of the package's kernels, with `edit` (old, new) applied to optim.cu."""
    folder = tmp_path / "kernels"
    shutil.copytree(kernels.DIRECTORY, folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    if edit:
        text = (folder / "optim.cu").read_text()
        assert edit[0] in text
        (folder / "optim.cu").write_text(text.replace(*edit))
    return folder


@pytest.mark.parametrize("edit, same", [(None, True), ((ADAM_STEP, ADAM_STEP.replace("+ eps", "+ 2.f * eps")), False)])
def test_the_two_versions_run_from_their_own_folders(tmp_path, monkeypatch, edit, same):
    cuda_emulator.install(monkeypatch)
    monkeypatch.setattr(kernel_ab, "make_trainer", tiny_trainer)
    folder = other_kernels(tmp_path, edit)
    row = kernel_ab.compare("seed-mlp-b64", folder, rounds=2, steps=2)
    assert row["same_bits"] is same  # a changed Adam step in the other folder changes the parameters
    assert row["new_us"] > 0 and row["old_us"] > 0 and row["ratio_min"] <= row["ratio"] <= row["ratio_max"]
    assert kernels.DIRECTORY != folder.resolve()  # the package's folder again afterwards


def test_the_replays_run_the_kernels_the_graph_was_captured_with(tmp_path, monkeypatch):
    """A graph captured from the other folder, replayed after the switch back, computes what that folder's kernels
    compute step by step (eager), not what this checkout's do."""
    cuda_emulator.install(monkeypatch)
    monkeypatch.setattr(kernel_ab, "make_trainer", tiny_trainer)
    folder = other_kernels(tmp_path, (ADAM_STEP, ADAM_STEP.replace("+ eps", "+ 2.f * eps")))
    graphed = kernel_ab.graphed_trainer("seed-mlp-b64", folder)
    for _ in range(2):
        graphed.step()  # replays, outside kernels_from
    with kernel_ab.kernels_from(folder):
        eager = tiny_trainer("cuda", "seed-mlp-b64", graph=False)
        for _ in range(graphed.step_count):
            eager.step()
    for model in ("G", "D"):
        a, b = (np.asarray(getattr(t, model).flat_params) for t in (graphed, eager))
        assert np.array_equal(a, b), model


@pytest.mark.parametrize("options", [[], ["--set", "THIN_CHANNELS=0"]])
def test_a_folder_without_kernels_is_refused(tmp_path, capsys, options):
    with pytest.raises(SystemExit):
        kernel_ab.main([str(tmp_path), *options, "seed-mlp-b64"])  # an option between the positionals parses
    assert "no .cu files there" in capsys.readouterr().err


def test_a_setting_holds_for_the_other_version_alone(monkeypatch):
    """--set THIN_CHANNELS=0: inside the settings a 1-channel transposed convolution is a GEMM over stride phases,
    outside it the thin kernel; the backend's own value is back afterwards."""
    from benchmarks import launches
    from gan_engine.backends import cupy_cuda

    cuda_emulator.install(monkeypatch)
    x = cupy_cuda.asarray(np.ones((2, 8, 4, 4), np.float32))
    W = cupy_cuda.asarray(np.ones((8, 1, 4, 4), np.float32))

    def kernels_launched():
        with launches.record(cupy_cuda, run=False) as launched:
            cupy_cuda.conv_transpose2d_forward(x, W, None, 2, 1)
        return [launch.kernel for launch in launched]

    setting = kernel_ab.parse_setting("THIN_CHANNELS=0")
    with kernel_ab.backend_settings(dict([setting])):
        assert kernels_launched() == ["window_scatter_phases_kernel"]
    assert kernels_launched() == ["window_scatter_thin_kernel"] and cupy_cuda.THIN_CHANNELS == 4


@pytest.mark.parametrize("text", ["NO_SUCH_NUMBER=1", "THIN_CHANNELS=many", "GEMM_TILES=1", "cp=1"])
def test_a_setting_that_is_not_a_backend_number_is_refused(text):
    with pytest.raises(ValueError):
        kernel_ab.parse_setting(text)
