"""benchmarks/perf_model.py counts what a CUDA training step launches without running a kernel, and its model
orders the old and new GEMMs as the H200 measured them."""
import pytest

from benchmarks import perf_model
from benchmarks.launches import record
from benchmarks.test_bench_step import make_trainer

from . import cuda_emulator

pytestmark = pytest.mark.skipif(cuda_emulator.available() is not None, reason=str(cuda_emulator.available()))


def test_a_dry_recording_sees_the_launches_a_running_step_makes(monkeypatch):
    dry = perf_model.step_launches("seed-mlp-b64")
    backend = cuda_emulator.install(monkeypatch)
    trainer = make_trainer("cuda", "seed-mlp-b64", graph=False)
    trainer.step()
    with record(backend) as ran:  # the kernels run (on the emulator)
        trainer.step()
    assert [(x.kernel, x.tile, x.grid) for x in dry] == [(x.kernel, x.tile, x.grid) for x in ran]
    assert all((x.product is not None) == (x.tile is not None) for x in ran)  # every GEMM (compiled for a tile)
    assert not any("bias" in x.kernel for x in ran)  # a dense layer's bias gradient: a row of its dW GEMM


def test_the_split_gemm_shortens_the_serial_path_and_the_predicted_step():
    s = perf_model.summarise("seed-mlp-b64")
    assert s["slices_after"] < s["slices_before"] and s["us_after"] < s["us_before"]
    assert s["launches"] < s["launches_before"]  # the draws, Adam counts and BCE sums folded into their kernels
