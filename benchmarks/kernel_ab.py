"""Two versions of the CUDA kernels side by side in one process: each case's training step as one CUDA graph, built
once from this checkout's kernels/ and once from another folder of kernels (an older commit's), replayed in
alternating rounds; per case, the median step time of each and the median of the rounds' ratios.

    git archive REV kernels | tar -x -C OLD          # OLD/kernels: the kernels of commit REV
    python -m benchmarks.kernel_ab OLD/kernels [CASE ...] [--rounds 15] [--steps 20] [--json FILE]
    python -m benchmarks.kernel_ab kernels --set THIN_CHANNELS=0 [CASE ...]

The launchers are this checkout's, so the two versions must take the same kernel arguments (a kernel whose
signature changed between them fails to launch). `--set NAME=VALUE` (repeatable) gives the other version a number
of the backend's own (a constant of cupy_cuda, e.g. THIN_CHANNELS=0: no thin scatter kernel) while its step is
built and captured: with this checkout's folder as OLD, the two versions differ by that setting alone. Each version
compiles its own modules; the graph of each is captured once and replayed, so the rounds compare the kernels
alone. Both trainers start from the same seed and take the same steps, so the parameters after the rounds say
whether the two versions compute the same bits ("same bits"). A GPU run; on the CPU emulator's stand-in for CuPy
(tests) it checks the mechanics only.
"""
import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import numpy as np

from gan_engine import kernels
from gan_engine.backends import cupy_cuda
from gan_engine.trainer import GRAPH_WARMUP_STEPS

from .test_bench_step import make_trainer, parse_cases


@contextlib.contextmanager
def kernels_from(folder):
    """Compile (and launch) the CUDA backend's kernels from `folder` instead of the package's kernels/ (the
    backend keeps the modules of each folder apart)."""
    saved, kernels.DIRECTORY = kernels.DIRECTORY, Path(folder).resolve()
    try:
        yield
    finally:
        kernels.DIRECTORY = saved


@contextlib.contextmanager
def backend_settings(settings):
    """Inside the block, the backend's names in `settings` ({NAME: value}: a number, or a function such as
    gemm_plan) take those values (GEMM plans made afresh)."""
    saved = {name: getattr(cupy_cuda, name) for name in settings}
    cupy_cuda.gemm_plan.cache_clear()
    try:
        for name, value in settings.items():
            setattr(cupy_cuda, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(cupy_cuda, name, value)
        cupy_cuda.gemm_plan.cache_clear()


def parse_setting(text):
    """"NAME=VALUE" -> (NAME, int or float VALUE), NAME a number of cupy_cuda's; ValueError otherwise."""
    name, _, value = text.partition("=")
    current = getattr(cupy_cuda, name, None)
    if not name.isupper() or isinstance(current, bool) or not isinstance(current, (int, float)):
        raise ValueError(f"{name!r} is not a number of the CUDA backend's (give NAME=VALUE, e.g. THIN_CHANNELS=0)")
    return name, type(current)(value)


def graphed_trainer(case, folder, settings=None):
    """The case's trainer on the kernels of `folder` (and the backend `settings`), warmed up and its step captured
    as a CUDA graph while those kernels are the ones launched (the replays after need no module)."""
    with kernels_from(folder), backend_settings(settings or {}):
        trainer = make_trainer("cuda", case, graph=True)
        for _ in range(GRAPH_WARMUP_STEPS + 1):  # eager warm-up steps, then the capture and its first replay
            trainer.step()
    if not trainer.use_graph:
        raise RuntimeError(f"{case}: the step with the kernels of {folder} could not be captured as a CUDA graph")
    return trainer


def seconds_per_call(run, calls):
    """Wall time of `calls` calls of run() (a trainer's step: a graph replay), the device drained before and after,
    per call."""
    device = cupy_cuda.cp.cuda.Device()
    device.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        run()
    device.synchronize()
    return (time.perf_counter() - start) / calls


def compare(case, old_folder, rounds, steps, settings=None):
    """{case, new_us, old_us (medians), ratio (median of old / new per round), ratio range, same_bits}; the old
    version with the backend `settings` ({NAME: number})."""
    trainers = {"new": graphed_trainer(case, kernels.DIRECTORY), "old": graphed_trainer(case, old_folder, settings)}
    times = {"new": [], "old": []}
    ratios = []
    for r in range(rounds):
        for version in ("new", "old") if r % 2 == 0 else ("old", "new"):
            times[version].append(seconds_per_call(trainers[version].step, steps))
        ratios.append(times["old"][-1] / times["new"][-1])
    params = {v: [cupy_cuda.to_numpy(m.flat_params) for m in (t.G, t.D)] for v, t in trainers.items()}
    same = all(np.array_equal(a, b) for a, b in zip(params["new"], params["old"]))
    return {"case": case, "new_us": statistics.median(times["new"]) * 1e6,
            "old_us": statistics.median(times["old"]) * 1e6, "ratio": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios), "rounds": rounds, "steps": steps,
            "same_bits": same}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="a folder of kernels (.cu and .cuh files) to set against this checkout's")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20, help="graph replays a round and version")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a number of the backend's for the other version (repeatable), e.g. THIN_CHANNELS=0")
    args = parse_cases(parser, argv)
    try:
        settings = dict(map(parse_setting, args.set))
    except ValueError as error:
        parser.error(str(error))
    if not sorted(Path(args.old).glob("*.cu")):
        parser.error(f"{args.old}: no .cu files there; give a kernels folder, e.g. from `git archive REV kernels`")
    rows = []
    print("| case | this checkout | the other kernels | other / this (median of rounds, range) | same bits |")
    print("|---|---|---|---|---|")
    for case in args.cases:
        row = compare(case, args.old, args.rounds, args.steps, settings)
        rows.append(row)
        print(f"| {case} | {row['new_us']:.0f} us | {row['old_us']:.0f} us | {row['ratio']:.2f}x "
              f"({row['ratio_min']:.2f}-{row['ratio_max']:.2f}) | {'yes' if row['same_bits'] else 'no'} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"old_kernels": str(args.old), "settings": settings, "rows": rows},
                                              indent=1))


if __name__ == "__main__":
    main()
