"""Every plan gemm_plan weighs for the matrix products of a training step, timed on a GPU, beside the one its
model picks.

    python -m benchmarks.gemm_plans [CASE ...] [--repeats 20] [--rounds 5] [--json FILE]
    python -m benchmarks.gemm_plans --fit FILE [--loops LOOPS]

For each case (test_bench_step.CASES; default all), one eager step records the products of gemm.cuh that its
launchers make (the kernel, the shape, the arguments). Each distinct product is then launched under every plan of
cupy_cuda.gemm_plans (every tile shape of GEMM_TILES, splits 1, 2, 4, ...): `repeats` launches captured as one
CUDA graph, replayed `rounds` times, the median wall time per launch, which is what the launch costs inside a
step's graph. Prints per product the model's plan and its time beside the fastest plan and its time, and per case
their sums; then the registers and blocks an SM of every kernel at every tile shape. The JSON keeps every
measurement. A GPU run; on the CPU emulator's stand-in for CuPy (tests) it checks the mechanics only.

--fit FILE (no GPU needed) fits the model's numbers (cupy_cuda.GEMM_TILES, SPLIT_WAVE_US, FIXUP_BYTES_PER_US, with
GEMM_BLOCKS_PER_SM as the driver reported them) to the measurements in FILE, least squares of the logs of modelled
over measured times (a launch's own cost fitted beside them), and prints them with what the plans they choose take.
--loops LOOPS (benchmarks/kernel_loops.py --json of the kernels that ran) fits one more number: how a slice's time
follows its loop's instructions, (instructions / FFMAs) ** exponent (cupy_cuda.GEMM_SLICE_SCALE), which
benchmarks/perf_model.py --loops takes to predict loops changed since.
"""
import argparse
import json
import math
import statistics
from pathlib import Path

from gan_engine.backends import cupy_cuda

from . import kernel_loops
from .kernel_ab import backend_settings, seconds_per_call
from .test_bench_step import make_trainer, parse_cases

GEMM_THREADS = math.prod(cupy_cuda.GEMM_BLOCK)


def step_products(case):
    """The distinct products of one eager training step of `case` (after two warm-up steps), in launch order:
    dicts of module, kernel, m, n, k, layers, group and the launcher's arguments (args, kept alive here). A layer's
    weight and input gradients, one launch in a step (GEMM_PAIRS), are recorded as their own kernels' products."""
    trainer = make_trainer("cuda", case, graph=False)
    for _ in range(2):
        trainer.step()
    products, original = {}, cupy_cuda._gemm

    def recording(module, kernel, m, n, k, args, layers=1, group=1):
        key = (module, kernel, m, n, k, layers, group)
        products.setdefault(key, dict(zip(("module", "kernel", "m", "n", "k", "layers", "group"), key), args=args))
        original(module, kernel, m, n, k, args, layers, group)

    with backend_settings({"GEMM_PAIRS": 0, "_gemm": recording}):
        trainer.step()
    return list(products.values())


def launch_us(product, plan, repeats, rounds):
    """Median microseconds of one launch of `product` under `plan`, from a CUDA graph of `repeats` launches."""
    p = product

    def launch():
        cupy_cuda._gemm(p["module"], p["kernel"], p["m"], p["n"], p["k"], p["args"], p["layers"], p["group"])

    with backend_settings({"gemm_plan": lambda *shape: plan}):  # every product follows `plan`
        launch()  # compiles the tile's module and allocates the partial sums before the capture
        replay, _ = cupy_cuda.capture(lambda: [launch() for _ in range(repeats)])
    replay()
    return statistics.median(seconds_per_call(replay, 1) / repeats * 1e6 for _ in range(rounds))


def measure(product, repeats, rounds):
    """The product's row: its shape, the model's plan and every plan's modelled and measured microseconds."""
    p = product
    multiprocessors = cupy_cuda._multiprocessors()
    shape = (p["m"], p["n"], p["k"], p["layers"], multiprocessors, p["group"], p["kernel"])
    chosen = cupy_cuda.gemm_plan(*shape)
    plans = []
    for plan in cupy_cuda.gemm_plans(*shape):
        plans.append({"tile": list(plan.tile), "splits": plan.splits, "tiles": plan.tiles, "model_us": plan.us,
                      "us": launch_us(p, plan, repeats, rounds)})
    fastest = min(plans, key=lambda row: row["us"])
    model = next(row for row in plans if tuple(row["tile"]) == chosen.tile and row["splits"] == chosen.splits)
    return {**{key: p[key] for key in ("module", "kernel", "m", "n", "k", "layers", "group")},
            "model": model, "fastest": fastest, "plans": plans}


def kernel_attributes(module, kernel, tile):
    """{regs, local_bytes, blocks_per_sm} of a gemm.cuh kernel compiled for `tile`, as the driver reports them."""
    function = cupy_cuda._function(module, kernel, tuple(tile))
    attributes = getattr(function, "attributes", {})
    try:
        blocks = cupy_cuda.cp.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(
            getattr(function, "kernel", function).ptr, GEMM_THREADS, 0)
    except AttributeError:  # the emulator's stand-in for CuPy has no driver
        blocks = None
    return {"module": module, "kernel": kernel, "tile": list(tile), "regs": attributes.get("num_regs"),
            "local_bytes": attributes.get("local_size_bytes"), "blocks_per_sm": blocks}


def slice_scales(loops, exponent):
    """cupy_cuda.GEMM_SLICE_SCALE for kernel_loops' counts `loops` ({kernel: {"64x64": {"instructions": ...}}}): a
    slice's time as (instructions / FFMAs) ** exponent, a loop of FFMAs alone 1."""
    scales = {}
    for kernel, tiles in loops.items():
        for name, counts in tiles.items():
            tile = tuple(int(v) for v in name.split("x"))
            ffma = tile[0] * tile[1] * cupy_cuda.TILE_K // GEMM_THREADS
            scales[kernel, tile] = (counts["instructions"] / ffma) ** exponent
    return scales


def fit(result, loops=None):
    """The model's numbers fitted to `result` (main's JSON): {tiles, blocks, split_wave_us, fixup_bytes_per_us,
    launch_us, loop_exponent, rms_log, bias: {kernel: mean log of modelled over measured}, us: {as_run, fitted,
    fastest}}, the last the measured microseconds of every distinct product under the plans the model chose in the
    run, the fitted model's plans and the fastest ones.
    With `loops` (kernel_loops' counts of the kernels that ran), slice times follow them (slice_scales) by a fitted
    exponent; without, loop_exponent is None."""
    from scipy.optimize import least_squares

    tiles = list(cupy_cuda.GEMM_TILES)
    per_tile = {}
    for row in result["kernels"]:
        per_tile.setdefault(row["kernel"], {})[tuple(row["tile"])] = row["blocks_per_sm"]
    blocks = {kernel: tuple(counts[t] for t in tiles) for kernel, counts in per_tile.items()}
    products = {(r["kernel"], r["m"], r["n"], r["k"], r["layers"], r["group"]): r
                for rows in result["cases"].values() for r in rows}
    shapes = [(r["m"], r["n"], r["k"], r["layers"], result["multiprocessors"], r["group"], r["kernel"])
              for r in products.values()]

    n = 2 * len(tiles)  # x: alone and saturated per tile, SPLIT_WAVE_US, FIXUP_BYTES_PER_US / 1e4, launch_us[,
    # the loops' exponent]

    def numbers(x):
        return {"GEMM_TILES": {t: (x[2 * i], x[2 * i + 1]) for i, t in enumerate(tiles)},
                "GEMM_BLOCKS_PER_SM": blocks, "SPLIT_WAVE_US": x[n], "FIXUP_BYTES_PER_US": x[n + 1] * 1e4,
                "GEMM_SLICE_SCALE": slice_scales(loops, x[n + 3]) if loops else {}}

    def residuals(x):
        with backend_settings(numbers(x)):
            return [math.log((x[n + 2] + plan.us) / row["us"]) for shape, r in zip(shapes, products.values())
                    for plan, row in zip(cupy_cuda.gemm_plans(*shape), r["plans"], strict=True)]

    start = [v for t in tiles for v in cupy_cuda.GEMM_TILES[t]] + [cupy_cuda.SPLIT_WAVE_US,
                                                                   cupy_cuda.FIXUP_BYTES_PER_US / 1e4, 2.0]
    bounds = ([1e-3] * len(start), [math.inf] * len(start))
    if loops:
        start, bounds = start + [1.0], (bounds[0] + [-3.0], bounds[1] + [3.0])
    x = least_squares(residuals, start, bounds=bounds, x_scale="jac").x
    fitted, misses = numbers(x), residuals(x)
    with backend_settings(fitted):
        chosen = [cupy_cuda.gemm_plan(*shape) for shape in shapes]
    took = [next(p["us"] for p in r["plans"] if tuple(p["tile"]) == c.tile and p["splits"] == c.splits)
            for c, r in zip(chosen, products.values())]
    by_kernel = {}
    for kernel, miss in zip((r["kernel"] for r in products.values() for _ in r["plans"]), misses):
        by_kernel.setdefault(kernel, []).append(miss)
    return {"tiles": fitted["GEMM_TILES"], "blocks": blocks, "split_wave_us": fitted["SPLIT_WAVE_US"],
            "fixup_bytes_per_us": fitted["FIXUP_BYTES_PER_US"], "launch_us": x[n + 2],
            "loop_exponent": x[n + 3] if loops else None,
            "rms_log": math.sqrt(sum(r * r for r in misses) / len(misses)),
            "bias": {kernel: statistics.mean(found) for kernel, found in sorted(by_kernel.items())},
            "us": {"as_run": sum(r["model"]["us"] for r in products.values()), "fitted": sum(took),
                   "fastest": sum(r["fastest"]["us"] for r in products.values())}}


def print_fit(fitted):
    us = fitted["us"]
    print(f"{len(fitted['blocks'])} kernels; log residuals' root mean square {fitted['rms_log']:.3f}; a launch "
          f"{fitted['launch_us']:.2f} us\nthe distinct products, measured under the plans of the model as run: "
          f"{us['as_run']:.0f} us; of the fitted model: {us['fitted']:.0f} us; the fastest plans: "
          f"{us['fastest']:.0f} us")
    print("a kernel's bias, the mean log of modelled over measured times: " +
          ", ".join(f"{kernel.removesuffix('_kernel')} {bias:+.2f}" for kernel, bias in fitted["bias"].items()) + "\n")
    print("GEMM_TILES = {")
    for tile, (alone, saturated) in fitted["tiles"].items():
        print(f"    {tile}: ({alone:.2f}, {saturated:.2f}),")
    print("}\nGEMM_BLOCKS_PER_SM = {")
    for kernel, counts in sorted(fitted["blocks"].items()):
        print(f"    \"{kernel}\": {counts},")
    print(f"}}\nSPLIT_WAVE_US = {fitted['split_wave_us']:.2f}\nFIXUP_BYTES_PER_US = {fitted['fixup_bytes_per_us']:.3g}")
    if fitted["loop_exponent"] is not None:
        print(f"a slice's time: (its loop's instructions / FFMAs) ** {fitted['loop_exponent']:.2f} "
              "(cupy_cuda.GEMM_SLICE_SCALE, perf_model's LOOP_EXPONENT)")


def plan_name(row):
    return f"{row['tile'][0]}x{row['tile'][1]}/{row['splits']}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="launches in a plan's graph")
    parser.add_argument("--rounds", type=int, default=5, help="replays of a plan's graph")
    parser.add_argument("--json", help="also write every measurement to this file")
    parser.add_argument("--fit", metavar="FILE", help="fit the model to the measurements in FILE (a --json file)")
    parser.add_argument("--loops", metavar="LOOPS", help="with --fit: kernel_loops --json of the kernels that ran")
    args = parse_cases(parser, argv)
    if args.fit:
        loops = kernel_loops.read_counts(args.loops) if args.loops else None
        print_fit(fit(json.loads(Path(args.fit).read_text()), loops))
        return
    result = {"multiprocessors": cupy_cuda._multiprocessors(), "cases": {}, "kernels": []}
    for case in args.cases:
        rows = [measure(product, args.repeats, args.rounds) for product in step_products(case)]
        result["cases"][case] = rows
        print(f"\n## {case}: {len(rows)} distinct products\n")
        print("| kernel | m x n x k (layers) | model's plan: modelled, measured | fastest plan: measured |")
        print("|---|---|---|---|")
        for row in rows:
            model, fastest = row["model"], row["fastest"]
            print(f"| {row['kernel']} | {row['m']} x {row['n']} x {row['k']} ({row['layers']}) | {plan_name(model)}: "
                  f"{model['model_us']:.1f}, {model['us']:.1f} us | {plan_name(fastest)}: {fastest['us']:.1f} us |")
        print(f"\nsums: model's plans {sum(r['model']['us'] for r in rows):.0f} us, fastest plans "
              f"{sum(r['fastest']['us'] for r in rows):.0f} us (each product once)")
    kernels_seen = sorted({(r["module"], r["kernel"]) for rows in result["cases"].values() for r in rows})
    print("\n| kernel | tile | registers | local bytes | blocks an SM |\n|---|---|---|---|---|")
    for module, kernel in kernels_seen:
        for tile in cupy_cuda.GEMM_TILES:
            row = kernel_attributes(module, kernel, tile)
            result["kernels"].append(row)
            print(f"| {kernel} | {tile[0]}x{tile[1]} | {row['regs']} | {row['local_bytes']} | {row['blocks_per_sm']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
