"""Where a CUDA training step's time goes, kernel by kernel, on a GPU.

    python -m benchmarks.step_profile [--json FILE] [CASE ...]      (cases of test_bench_step.CASES; default all)

For each case: three eager steps (compile, allocate), then one recorded step with a CUDA event pair around
every launch (benchmarks/launches.py), and the time of the whole eager step and of a replayed CUDA graph of it
(medians of 50). Prints each launch (kernel, grid, blocks, microseconds) and a per-kernel total; the events
between launches add a little to the eager figure, nothing to the graph one.
"""
import argparse
import json
import statistics
from collections import defaultdict

from .launches import record
from .test_bench_step import make_trainer, parse_cases


def _median_us(run, repeats=50):
    import cupy as cp

    times = []
    for _ in range(repeats):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end) * 1e3)
    return statistics.median(times)


def profile(case):
    """{case, launches: [(kernel, grid, microseconds)], by_kernel, kernel_sum_us, eager_step_us, graph_step_us}."""
    import cupy as cp

    from gan_engine.backends import cupy_cuda

    eager = make_trainer("cuda", case, graph=False)
    for _ in range(3):
        eager.step()
    cp.cuda.Device().synchronize()
    with record(cupy_cuda, timed=True) as launches:
        eager.step()
    cp.cuda.Device().synchronize()
    rows = [(f"{x.module}.{x.kernel}" + (f"@{x.tile[0]}x{x.tile[1]}" if x.tile else ""), list(x.grid),
             x.milliseconds() * 1e3) for x in launches]
    by_kernel = defaultdict(lambda: [0, 0.0])
    for name, _, us in rows:
        by_kernel[name][0] += 1
        by_kernel[name][1] += us
    graphed = make_trainer("cuda", case, graph=True)
    for _ in range(4):
        graphed.step()
    return {"case": case, "launches": rows, "by_kernel": dict(by_kernel),
            "kernel_sum_us": sum(us for _, _, us in rows), "eager_step_us": _median_us(eager.step),
            "graph_step_us": _median_us(graphed.step)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the profiles to this file")
    args = parse_cases(parser, argv)
    import cupy as cp

    device = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
    profiles = []
    for case in args.cases:
        p = profile(case)
        profiles.append(p)
        print(f"\n## {case} on {device}: {len(p['launches'])} launches, kernels {p['kernel_sum_us']:.1f} us, "
              f"eager step {p['eager_step_us']:.1f} us, graph step {p['graph_step_us']:.1f} us")
        for name, grid, us in p["launches"]:
            print(f"  {name:44s} grid {str(grid):16s} {us:9.1f} us")
        print("  -- by kernel --")
        for name, (count, us) in sorted(p["by_kernel"].items(), key=lambda kv: -kv[1][1]):
            print(f"  {name:44s} x{count:<3d} {us:9.1f} us ({100 * us / p['kernel_sum_us']:.0f}%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "profiles": profiles}, f, indent=1)


if __name__ == "__main__":
    main()
