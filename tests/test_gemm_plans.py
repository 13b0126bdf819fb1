"""benchmarks/gemm_plans.py launches a step's products under every plan gemm_plan weighs (mechanics on the CPU
emulator; the timings mean something on a GPU only)."""
import pytest

from benchmarks import gemm_plans, launches
from gan_engine.backends import cupy_cuda

from . import cuda_emulator
from .test_kernel_ab import tiny_trainer

pytestmark = pytest.mark.skipif(cuda_emulator.available() is not None, reason=str(cuda_emulator.available()))


def test_every_plan_of_every_product_is_launched_and_timed(monkeypatch):
    cuda_emulator.install(monkeypatch)
    monkeypatch.setattr(gemm_plans, "make_trainer", tiny_trainer)
    products = gemm_plans.step_products("seed-mlp-b64")
    kernels = {p["kernel"] for p in products}
    assert {"dense_forward_kernel", "dense_backward_dw_kernel", "dense_backward_dx_kernel"} <= kernels
    assert len({(p["kernel"], p["m"], p["n"], p["k"]) for p in products}) == len(products)  # distinct
    row = gemm_plans.measure(products[0], repeats=2, rounds=1)
    p = products[0]
    shape = (p["m"], p["n"], p["k"], p["layers"], 132, p["group"], p["kernel"])
    weighed = list(cupy_cuda.gemm_plans(*shape))
    assert [(tuple(r["tile"]), r["splits"]) for r in row["plans"]] == [(w.tile, w.splits) for w in weighed]
    assert len(weighed) >= len(cupy_cuda.GEMM_TILES)
    chosen = cupy_cuda.gemm_plan(*shape)
    assert (tuple(row["model"]["tile"]), row["model"]["splits"]) == (chosen.tile, chosen.splits)
    assert row["fastest"]["us"] == min(r["us"] for r in row["plans"]) > 0


def test_a_forced_plan_sets_the_launch_geometry(monkeypatch):
    cuda_emulator.install(monkeypatch)
    monkeypatch.setattr(gemm_plans, "make_trainer", tiny_trainer)
    p = next(p for p in gemm_plans.step_products("seed-mlp-b64") if p["kernel"] == "dense_forward_kernel")
    plans = list(cupy_cuda.gemm_plans(p["m"], p["n"], p["k"], p["layers"], 132, p["group"], p["kernel"]))
    model = cupy_cuda.gemm_plan
    for plan in plans:
        with gemm_plans.forced(plan), launches.record(cupy_cuda, run=False) as launched:
            cupy_cuda._gemm(p["module"], p["kernel"], p["m"], p["n"], p["k"], p["args"])
        assert [(l.tile, l.grid) for l in launched] == [(plan.tile, (plan.tiles, 1, plan.splits))]
    assert cupy_cuda.gemm_plan is model  # the model's choice again after the block
