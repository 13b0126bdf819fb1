"""benchmarks/gemm_plans.py launches a step's products under every plan gemm_plan weighs (mechanics on the CPU
emulator; the timings mean something on a GPU only)."""
import pytest

from benchmarks import gemm_plans, kernel_ab, launches
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
        with (kernel_ab.backend_settings({"gemm_plan": lambda *shape: plan}),
              launches.record(cupy_cuda, run=False) as launched):
            cupy_cuda._gemm(p["module"], p["kernel"], p["m"], p["n"], p["k"], p["args"])
        assert [(l.tile, l.grid) for l in launched] == [(plan.tile, (plan.tiles, 1, plan.splits))]
    assert cupy_cuda.gemm_plan is model  # the model's choice again after the block


TILES = {(128, 128): (3.0, 4.0), (64, 64): (1.5, 0.9), (32, 32): (0.6, 0.25), (16, 64): (0.7, 0.35),
         (64, 16): (0.5, 0.33)}
BLOCKS = {"dense_forward_kernel": (1, 2, 6, 4, 4), "window_gather_kernel": (1, 3, 4, 5, 3)}


def made_result(slice_scale=None):
    """A gemm_plans JSON whose times the model made itself from TILES, BLOCKS, split costs, a launch of 2 us and
    `slice_scale` (cupy_cuda.GEMM_SLICE_SCALE)."""
    shapes = [(64, 6272, 100, 1, 1, "dense_forward_kernel"), (128, 3136, 1024, 1, 1, "window_gather_kernel"),
              (512, 512, 784, 1, 1, "dense_forward_kernel"), (64, 1, 6272, 1, 1, "dense_forward_kernel"),
              (4096, 4096, 4096, 1, 1, "window_gather_kernel"), (1, 12544, 256, 4, 1, "window_gather_kernel"),
              (128, 3136, 1024, 1, 1, "dense_forward_kernel"), (512, 512, 784, 1, 1, "window_gather_kernel")]
    rows = []
    numbers = {"GEMM_TILES": TILES, "GEMM_BLOCKS_PER_SM": BLOCKS, "SPLIT_WAVE_US": 3.0, "FIXUP_BYTES_PER_US": 5e4,
               "GEMM_SLICE_SCALE": slice_scale or {}}
    with kernel_ab.backend_settings(numbers):
        for m, n, k, layers, group, kernel in shapes:
            plans = [{"tile": list(p.tile), "splits": p.splits, "us": 2.0 + p.us}
                     for p in cupy_cuda.gemm_plans(m, n, k, layers, 132, group, kernel)]
            rows.append({"kernel": kernel, "m": m, "n": n, "k": k, "layers": layers, "group": group, "plans": plans,
                         "model": plans[0], "fastest": min(plans, key=lambda p: p["us"])})
    kernels = [{"kernel": kernel, "tile": list(tile), "blocks_per_sm": count}
               for kernel, counts in BLOCKS.items() for tile, count in zip(TILES, counts)]
    return {"multiprocessors": 132, "cases": {"made": rows}, "kernels": kernels}


def test_the_fit_finds_the_numbers_that_made_the_times():
    """Times made by the model itself from chosen numbers (and a launch's cost) are fitted back to those numbers,
    and the fitted model then picks the fastest plan of every product."""
    tiles, blocks = TILES, BLOCKS
    fitted = gemm_plans.fit(made_result())
    assert fitted["blocks"] == blocks and fitted["rms_log"] < 1e-3 and fitted["loop_exponent"] is None
    for tile, numbers in list(tiles.items())[1:]:
        assert fitted["tiles"][tile] == pytest.approx(numbers, rel=0.02), tile
    assert max(fitted["tiles"][128, 128]) == pytest.approx(4.0, rel=0.02)  # one block an SM: a slice costs the larger
    assert fitted["launch_us"] == pytest.approx(2.0, rel=0.02)
    assert fitted["us"]["fitted"] == pytest.approx(fitted["us"]["fastest"])
    assert cupy_cuda.GEMM_BLOCKS_PER_SM["dense_forward_kernel"] != blocks["dense_forward_kernel"]  # restored


def test_the_fit_finds_how_slice_times_follow_the_loops_instructions():
    """Times made with slices priced by their loops' instructions ((instructions / FFMAs) ** 0.8, the gather's loop
    longer than the dense one's) give back that exponent and the per-tile numbers; without the loops the fit misses
    them."""
    loops = {kernel: {f"{t[0]}x{t[1]}": {"instructions": round(t[0] * t[1] / 16 * factor)} for t in TILES}
             for kernel, factor in (("dense_forward_kernel", 1.5), ("window_gather_kernel", 2.4))}
    result = made_result(gemm_plans.slice_scales(loops, 0.8))
    fitted, blind = gemm_plans.fit(result, loops), gemm_plans.fit(result)
    assert fitted["loop_exponent"] == pytest.approx(0.8, abs=0.02) and fitted["rms_log"] < 1e-3
    assert fitted["tiles"][64, 64] == pytest.approx(TILES[64, 64], rel=0.05)
    assert blind["rms_log"] > 0.05 and max(abs(bias) for bias in fitted["bias"].values()) < 1e-3
    assert blind["bias"]["window_gather_kernel"] < blind["bias"]["dense_forward_kernel"]  # its longer loop missed
