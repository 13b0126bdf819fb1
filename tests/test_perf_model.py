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
    assert all((x.product is not None or x.pair is not None) == (x.tile is not None) for x in ran)  # every GEMM
    assert any(x.pair is not None for x in ran)  # a layer's dW and dx in one launch
    assert not any("bias" in x.kernel for x in ran)  # a dense layer's bias gradient: a row of its dW GEMM


def test_the_split_gemm_shortens_the_serial_path_and_the_predicted_step():
    s = perf_model.summarise("seed-mlp-b64")
    assert s["slices_after"] < s["slices_before"] and s["us_after"] < s["us_before"]
    assert s["launches"] < s["launches_before"]  # the draws, Adam counts and BCE sums folded into their kernels


def test_loops_shorter_than_the_fitted_ones_predict_a_shorter_step():
    """--loops: a kernel whose loop has half the fitted one's instructions has its slices priced at 0.5 **
    LOOP_EXPONENT; kernels or tiles the counts miss stay as fitted."""
    fitted = {"dense_forward_kernel": {"32x32": {"instructions": 200}, "64x64": {"instructions": 400}},
              "dense_backward_dx_kernel": {"32x32": {"instructions": 150}}}
    now = {"dense_forward_kernel": {"32x32": {"instructions": 100}, "64x64": {"instructions": 400}},
           "window_gather_kernel": {"32x32": {"instructions": 99}}}
    scales = perf_model.loop_scales(fitted, now)
    assert scales == {("dense_forward_kernel", (32, 32)): pytest.approx(0.5 ** perf_model.LOOP_EXPONENT),
                      ("dense_forward_kernel", (64, 64)): 1.0}
    as_fitted, shorter = perf_model.summarise("seed-mlp-b64"), perf_model.summarise("seed-mlp-b64", scales)
    assert shorter["us_after"] < as_fitted["us_after"] and shorter["us_before"] == as_fitted["us_before"]
    assert shorter["slices_after"] == as_fitted["slices_after"]  # the same plans, priced otherwise
