"""A model of the CUDA backend's training step on a Hopper-class GPU (H100 / H200), before and after gemm.cuh's
split-K and faster main loop, from the launches a step makes; a GPU run confirms or corrects it.

    python -m benchmarks.perf_model [--steps FILE] [--loops FITTED NOW] [CASE ...]

Runs one step of each case (benchmarks/test_bench_step.py) through the backend's own launchers on the CPU
emulator's stand-in for CuPy, with the kernels not run (benchmarks/launches.py, run=False), and counts per step:
the launches, the FLOPs of the matrix products, the bytes the kernels' arrays hold, and the serial 16-deep K
slices on the critical path (per product: the slices of one block times the waves of blocks). Then it predicts
the step's time as a CUDA graph, launch after launch on one stream, from these costs:
- a launch: LAUNCH_US (a kernel node of a graph, back to back on one stream);
- a product: gemm.cuh's model (cupy_cuda.gemm_time, the numbers in cupy_cuda.GEMM_TILES) for the plan the
  launcher chose; "before": one 64 x 64 tile per block, no split, and the per-slice time of the old loop,
  OLD_SLICE_US, fitted to the old kernels' events on an H200 (benchmarks/results/gpu-h200-2026-11-27/
  step_profile.txt: the D head's 392 slices in 600 us and the seed D layer 0's 49 in 90-97 us for dense.cu, the
  1-channel weight gradient's 784 in 2.5 ms and the gather's 64 in 253 us for conv.cu);
- a channel reduction (batch norm, bias gradients; reduce.cuh, blocks of a channel's chunk): REDUCE_PASS_US per
  strided pass of 256 values, passes as the kernel makes them, waves of BLOCKS_PER_SM blocks an SM (the old
  kernels: a block per channel, batch norm's forward 3 passes in one kernel, its backward 2);
- anything else: its arrays' bytes at BANDWIDTH;
- before, also: OLD_FOLDED_LAUNCHES small launches a step that the kernels now do in their last block, and a
  dense layer's bias gradient inside its dW kernel (no launch of its own).
With --steps (a pytest-benchmark JSON of benchmarks/test_bench_cuda.py's steps), the measured graph step sits beside
the prediction. With --loops FITTED NOW (two benchmarks/kernel_loops.py --json files: the kernels GEMM_TILES was
fitted to, and these), a product's slices take (NOW's instructions / FITTED's) ** LOOP_EXPONENT of the fitted time,
for the kernel and tile that run it: the loops changed since the fit, priced as slice times followed instructions
across the fitted kernels. Without it, the kernels are taken to be the fitted ones.
"""
import argparse
import json
import math

import numpy as np

LAUNCH_US = 4.0  # the seed MLP's graph on an H200: 36 launches of small kernels in 178 us
BANDWIDTH_BYTES_PER_US = 3.0e6
REDUCE_PASS_US = 0.2
PASSES = {"batchnorm_stats_kernel": 2, "batchnorm_forward_kernel": 1, "batchnorm_grad_sums_kernel": 1,
          "batchnorm_backward_kernel": 1, "channel_grad_sum_kernel": 1}
ONE_LAUNCH_PASSES = {"batchnorm_stats_kernel": 1, "batchnorm_grad_sums_kernel": 1}  # the pass it takes over
BLOCKS_PER_SM = 8  # of a channel reduction's 256 threads
OLD_SLICE_US = {"dense": 1.7, "conv": 3.5}
OLD_TILE = (64, 64)
OLD_FOLDED_LAUNCHES = 8  # a step's counter advances (3), Adam counts (2) and BCE reductions (3): own launches then
# How a slice's time followed its loop's instructions over the H200's 1525 plans: python -m benchmarks.gemm_plans
# --fit gemm_plans.json --loops loops-2786e90.json (benchmarks/results/model-loop-instructions-2026-11-28/).
LOOP_EXPONENT = 0.94


def step_launches(case):
    """The Launches of one training step of `case` (after two warm-up steps), kernels not run."""
    import pytest

    from gan_engine.backends import cupy_cuda
    from tests import cuda_emulator

    from .launches import record
    from .test_bench_step import make_trainer

    with pytest.MonkeyPatch.context() as patch:
        cuda_emulator.install(patch)
        trainer = make_trainer("cuda", case, graph=False)
        with record(cupy_cuda, run=False):
            trainer.step()
        with record(cupy_cuda, run=False) as launches:
            trainer.step()
    return launches


def _bytes(launch):
    """Bytes a launch moves at least: each array argument once (a product's arrays as stored, not its operands'
    im2col size; not its split workspace), a row gather's rows read and written (and a drawn batch's indices)."""
    if launch.kernel == "gather_rows_kernel":  # out (args[2]) read from data and written, not all of data
        return 2 * launch.args[2].nbytes
    if launch.kernel == "draw_rows_kernel":  # the same, and the indices (args[1]) written
        return 2 * launch.args[2].nbytes + launch.args[1].nbytes
    splits = 3 if launch.product is not None else 6 if launch.pair is not None else 0  # (partial, arrivals, splits)
    arrays = launch.args[:len(launch.args) - splits]  # each product's, last
    return sum(a.nbytes for a in arrays if hasattr(a, "nbytes") and a.size > 1)


def product_cost(module, kernel, m, n, k, layers, plan, before=False):
    """(predicted microseconds, launch left out; FLOPs; serial K slices) of one of gemm.cuh's products run by
    `kernel`, now or with the old GEMM ("before")."""
    from gan_engine.backends import cupy_cuda

    flops = 2 * m * n * k * layers
    if before:
        slices = math.ceil(k / cupy_cuda.TILE_K)
        blocks = math.ceil(m / OLD_TILE[0]) * math.ceil(n / OLD_TILE[1]) * layers
        waves = math.ceil(blocks / cupy_cuda.DEFAULT_MULTIPROCESSORS)
        return waves * slices * OLD_SLICE_US[module], flops, waves * slices
    shape = (m, n, k, plan.tile, plan.splits, layers, cupy_cuda.DEFAULT_MULTIPROCESSORS, kernel)
    waves, _, per_block = cupy_cuda.gemm_schedule(*shape)
    return cupy_cuda.gemm_time(*shape), flops, waves * per_block


def launch_cost(launch, before=False):
    """(predicted microseconds, FLOPs, serial K slices, launches) of one launch, now or with the old GEMM
    ("before"). A pair kernel's two products, each priced as its own kernel's: before, a launch each; now, side by
    side (the longer one's time and slices) where all the pair's blocks fit on the GPU at once, else one after the
    other."""
    from gan_engine.backends import cupy_cuda

    if launch.product is not None:
        us, flops, slices = product_cost(launch.module, launch.kernel, *launch.product, before)
        return LAUNCH_US + us, flops, slices, 1
    if launch.pair is not None:
        costs = [product_cost(launch.module, kernel, m, n, k, layers, plan, before)  # as its own kernel's (its
                 for kernel, m, n, k, layers, plan in launch.pair]                  # loop, its blocks an SM)
        us, flops, slices = (list(column) for column in zip(*costs))
        if before:
            return 2 * LAUNCH_US + sum(us), sum(flops), sum(slices), 2
        tile = launch.pair[0][-1].tile
        resident = cupy_cuda.GEMM_BLOCKS_PER_SM[launch.kernel][list(cupy_cuda.GEMM_TILES).index(tile)]
        together = launch.blocks <= resident * cupy_cuda.DEFAULT_MULTIPROCESSORS
        join = max if together else sum
        return LAUNCH_US + join(us), sum(flops), join(slices), 1
    if launch.kernel in PASSES:
        # batch norm in one launch (a channel in one chunk): the statistics kernel normalises too, the sums' one
        # writes dx (their last argument says so)
        one_launch = launch.kernel in ONE_LAUNCH_PASSES and bool(launch.args[-1])
        if before:  # a block per channel; batch norm's stats and normalisation in one kernel, as its backward; a
            # dense layer's bias gradient summed in its dW kernel
            old = {"batchnorm_stats_kernel": 3 * one_launch, "batchnorm_forward_kernel": 3,
                   "batchnorm_grad_sums_kernel": 2 * one_launch, "batchnorm_backward_kernel": 2,
                   "channel_grad_sum_kernel": launch.args[0].ndim > 2}[launch.kernel]
            values = launch.args[0].size // launch.grid[0]
            return (LAUNCH_US + old * math.ceil(values / 256) * REDUCE_PASS_US if old else 0.0), 0, 0, int(old > 0)
        values = launch.args[0].size // (launch.grid[0] * launch.grid[1])
        waves = math.ceil(launch.blocks / (BLOCKS_PER_SM * cupy_cuda.DEFAULT_MULTIPROCESSORS))
        passes = PASSES[launch.kernel] + one_launch * ONE_LAUNCH_PASSES.get(launch.kernel, 0)
        return LAUNCH_US + waves * passes * math.ceil(values / 256) * REDUCE_PASS_US, 0, 0, 1
    return LAUNCH_US + _bytes(launch) / BANDWIDTH_BYTES_PER_US, 0, 0, 1


def loop_scales(fitted, now):
    """cupy_cuda.GEMM_SLICE_SCALE for kernel_loops' counts of the fitted kernels and of these: (now / fitted) **
    LOOP_EXPONENT for every kernel and tile both count."""
    from .gemm_plans import slice_scales

    fitted, now = slice_scales(fitted, LOOP_EXPONENT), slice_scales(now, LOOP_EXPONENT)
    return {key: scale / fitted[key] for key, scale in now.items() if key in fitted}


def summarise(case, scales=None):
    """{case, launches (before), gflop, mbytes, serial slices before/after, predicted us before/after}; `scales`:
    the products' slice times relative to the fitted kernels' (loop_scales)."""
    from .kernel_ab import backend_settings

    launches = step_launches(case)  # the plans the backend picks (with its own model)
    with backend_settings({"GEMM_SLICE_SCALE": scales or {}}):
        now = [launch_cost(x) for x in launches]
    old = [launch_cost(x, before=True) for x in launches]
    return {"case": case, "launches": len(launches), "gflop": sum(f for _, f, _, _ in now) / 1e9,
            "mbytes": sum(_bytes(x) for x in launches) / 1e6,
            "slices_before": sum(s for _, _, s, _ in old), "slices_after": sum(s for _, _, s, _ in now),
            "launches_before": sum(n for *_, n in old) + OLD_FOLDED_LAUNCHES,
            "us_before": sum(us for us, *_ in old) + OLD_FOLDED_LAUNCHES * LAUNCH_US,
            "us_after": sum(us for us, *_ in now)}


def measured_steps(path):
    """case -> measured microseconds of the CUDA-graph step in a benchmarks/test_bench_cuda.py JSON."""
    with open(path) as f:
        rows = json.load(f)["benchmarks"]
    return {b["extra_info"]["case"]: b["extra_info"]["seconds_per_call"] * 1e6 for b in rows
            if b["extra_info"].get("backend") == "cuda" and "seconds_per_call" in b["extra_info"]}


def main(argv=None):
    from .kernel_loops import read_counts
    from .test_bench_step import parse_cases

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", help="a benchmarks/test_bench_cuda.py JSON with measured CUDA-graph steps")
    parser.add_argument("--loops", nargs=2, metavar=("FITTED", "NOW"),
                        help="kernel_loops --json files of the fitted kernels and of these")
    args = parse_cases(parser, argv)
    measured = measured_steps(args.steps) if args.steps else {}
    scales = None
    if args.loops:
        scales = loop_scales(*map(read_counts, args.loops))
    print(f"per launch {LAUNCH_US} us; memory {BANDWIDTH_BYTES_PER_US / 1e6:.1f} TB/s; reductions {REDUCE_PASS_US} us "
          f"a pass; old GEMM slices {OLD_SLICE_US} us on {OLD_TILE[0]}x{OLD_TILE[1]} tiles, unsplit; loops "
          + (f"priced by their instructions ** {LOOP_EXPONENT}" if scales else "as fitted"))
    print("| case | launches before -> after | GFLOP | MB | serial K slices before -> after | predicted step before -> "
          "after | measured (graph) |")
    print("|---|---|---|---|---|---|---|")
    for case in args.cases:
        s = summarise(case, scales)
        seen = f"{measured[case]:.0f} us" if case in measured else "-"
        print(f"| {case} | {s['launches_before']} -> {s['launches']} | {s['gflop']:.2f} | {s['mbytes']:.1f} | "
              f"{s['slices_before']} -> {s['slices_after']} | {s['us_before']:.0f} -> {s['us_after']:.0f} us | "
              f"{seen} |")


if __name__ == "__main__":
    main()
