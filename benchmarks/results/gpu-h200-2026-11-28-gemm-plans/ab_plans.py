"""The training steps under the plans of the fitted GEMM model against those of the model before it (commit
2786e90), one CUDA graph each, replayed in alternating rounds in one process (benchmarks/kernel_ab.py's method;
the kernels are the same, only the tiles and splits differ, so the sums' bits may too).

    git show 2786e90:gan_engine/backends/cupy_cuda.py > gan_engine/backends/cupy_cuda_2786e90.py
    PYTHONPATH=. python benchmarks/results/gpu-h200-2026-11-28-gemm-plans/ab_plans.py CASE ... > ab_plans.txt
"""
import contextlib
import statistics
import sys

from benchmarks.kernel_ab import seconds_per_call
from benchmarks.test_bench_step import make_trainer
from gan_engine.backends import cupy_cuda
from gan_engine.backends import cupy_cuda_2786e90 as before
from gan_engine.trainer import GRAPH_WARMUP_STEPS

ROUNDS, STEPS = 15, 20


@contextlib.contextmanager
def plans_before():
    saved = cupy_cuda.gemm_plan
    cupy_cuda.gemm_plan = lambda m, n, k, layers=1, multiprocessors=132, group=1, kernel=None: before.gemm_plan(
        m, n, k, layers, multiprocessors, group)
    try:
        yield
    finally:
        cupy_cuda.gemm_plan = saved


def graphed(case, plans):
    with plans:
        trainer = make_trainer("cuda", case, graph=True)
        for _ in range(GRAPH_WARMUP_STEPS + 1):
            trainer.step()
    assert trainer.use_graph
    return trainer


print("| case | fitted model's plans | plans before | before / fitted (median of rounds, range) |")
print("|---|---|---|---|")
for case in sys.argv[1:]:
    trainers = {"fitted": graphed(case, contextlib.nullcontext()), "before": graphed(case, plans_before())}
    times, ratios = {"fitted": [], "before": []}, []
    for r in range(ROUNDS):
        for version in ("fitted", "before") if r % 2 == 0 else ("before", "fitted"):
            times[version].append(seconds_per_call(trainers[version].step, STEPS))
        ratios.append(times["before"][-1] / times["fitted"][-1])
    print(f"| {case} | {statistics.median(times['fitted']) * 1e6:.0f} us | "
          f"{statistics.median(times['before']) * 1e6:.0f} us | {statistics.median(ratios):.2f}x "
          f"({min(ratios):.2f}-{max(ratios):.2f}) |", flush=True)
