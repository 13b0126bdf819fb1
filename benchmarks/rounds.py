"""Training-step speed on the CPU as same-run ratios: the runners (NumPy reference, Numba, PyTorch eager)
interleaved in rounds within one process, quiet and beside busy processes.

    python -m benchmarks.rounds [--rounds 7] [--contend K ...] [--pair] [--json FILE] [CASE ...]

Each round times a block of steps of every runner in turn (the order rotates from round to round), sleeping
SETTLE_S before each block so the previous runner's thread pools stop spinning, and records the load the rest
of the machine put on our cores during the block. A ratio (numba vs numpy, numba vs torch) is taken within a
round and the reported figure is the median over the quiet rounds (other processes kept under QUIET cores busy).

--contend K (repeatable) adds, to every round, a block of each runner beside K busy processes (a pure-Python
spin each): the slowdown of a runner is the median of per-round (busy block / quiet block).
--pair runs each case's CPU backends as one training process alone, then two side by side (both warmed up,
started together), in rounds, and reports the steps per second the two did together over the one alone.

The results record the BLAS in use (name, kernel architecture, threads), OPENBLAS_CORETYPE, the thread policy
and PyTorch's threads: a figure means little without them.
"""
import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numba
import numpy as np

from gan_engine.backends import threads
from gan_engine.backends.threads import OtherLoad, affinity, policy

from .flops import step_flops
from .machine import cpu_peak_gflops
from .test_bench_step import AVAILABLE, check_first_step, make_trainer, parse_cases
from .torch_peer import TorchTrainer, torch, torch_version

SETTLE_S = 0.3     # sleep before each block: OpenBLAS and OpenMP workers spin for up to ~0.1 s after a call
BLOCK_S = 0.3      # aim of one block's length
QUIET = 0.25       # a round is quiet when other processes kept fewer cores than this busy in every block
SPIN = "while True: pass"


def runner(name, case):
    """A trainer for a runner name: torch, or a backend, or backend@N (that backend with --threads N)."""
    backend, _, _ = name.partition("@")
    return TorchTrainer(make_trainer("numpy", case)) if backend == "torch" else make_trainer(backend, case)


@contextlib.contextmanager
def runner_threads(name):
    """backend@N runs under --threads N; any other runner under the measured policy."""
    _, _, n = name.partition("@")
    threads.set_threads(n or None)
    try:
        yield
    finally:
        threads.set_threads(None)


def runners(case, names):
    """name -> a warmed-up trainer (checked against the reference's first step) for each runner."""
    out = {}
    for name in names:
        trainer = runner(name, case)
        check_first_step(trainer, case)
        for _ in range(3):
            trainer.step()
        out[name] = trainer
    return out


def _block(name, trainer, steps, load):
    with runner_threads(name):
        time.sleep(SETTLE_S)
        load.read()  # the block's interval starts here
        start = time.perf_counter()
        for _ in range(steps):
            trainer.read_metrics(trainer.step())
        seconds = (time.perf_counter() - start) / steps
        return seconds, load.read()


def _busy(k):
    procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(k)]
    time.sleep(0.2)  # let them start spinning
    return procs


def run_case(case, names, rounds, contend):
    """Interleaved rounds of one case; returns its results dict."""
    trainers = runners(case, names)
    steps = {}
    for name, trainer in trainers.items():  # a block of about BLOCK_S seconds
        start = time.perf_counter()
        with runner_threads(name):
            trainer.read_metrics(trainer.step())
        steps[name] = int(min(200, max(2, BLOCK_S / (time.perf_counter() - start))))
    load, order = OtherLoad(affinity()), list(trainers)
    blocks = []  # (round, runner, busy processes, seconds per step, others' load)
    for r in range(rounds):
        rotated = order[r % len(order):] + order[:r % len(order)]
        for k in [0] + contend:
            procs = _busy(k) if k else []
            try:
                for name in rotated:
                    blocks.append((r, name, k, *_block(name, trainers[name], steps[name], load)))
            finally:
                for p in procs:
                    p.kill()
                    p.wait()
    reference = make_trainer("numpy", case)
    flops = step_flops(reference.G, reference.D, reference.batch_size, pac=reference.pac, update=reference.update)
    return summarise(case, blocks, flops, rounds, contend, steps)


def summarise(case, blocks, flops, rounds, contend, steps):
    """Medians of per-round figures from the blocks; quiet rounds only for the quiet figures."""
    time_of = {(r, n, k): (s, load) for r, n, k, s, load in blocks}
    names = list(dict.fromkeys(n for _, n, _, _, _ in blocks))
    quiet = [r for r in range(rounds) if all((time_of[(r, n, 0)][1] or 0) < QUIET for n in names)]
    used = quiet or list(range(rounds))
    peak, _ = cpu_peak_gflops()
    out = {"case": case, "flops": flops, "rounds": rounds, "quiet_rounds": len(quiet), "steps_per_block": steps,
           "others_load_median": statistics.median(load or 0 for _, _, k, _, load in blocks if k == 0), "runners": {}}
    for n in names:
        seconds = statistics.median(time_of[(r, n, 0)][0] for r in used)
        row = {"step_ms": seconds * 1e3, "gflops_per_s": flops / seconds / 1e9}
        if peak:
            row["percent_of_peak"] = 100 * row["gflops_per_s"] / peak
        for other in names:
            if other != n:
                row[f"vs_{other}"] = statistics.median(time_of[(r, other, 0)][0] / time_of[(r, n, 0)][0] for r in used)
        for k in contend:
            row[f"slowdown_beside_{k}"] = statistics.median(time_of[(r, n, k)][0] / time_of[(r, n, 0)][0]
                                                            for r in range(rounds))
            row[f"step_ms_beside_{k}"] = 1e3 * statistics.median(time_of[(r, n, k)][0] for r in range(rounds))
            row[f"others_load_beside_{k}"] = statistics.median(time_of[(r, n, k)][1] or 0 for r in range(rounds))
        out["runners"][n] = row
    return out


def pair(case, backend, repeats=3, seconds=3.0):
    """Steps per second of one training process alone, and of two side by side: two warmed-up worker processes,
    then `repeats` rounds of (the first alone for `seconds`, both together); medians of the per-round figures."""
    procs = [subprocess.Popen([sys.executable, "-m", "benchmarks.rounds", "--worker", case, backend, str(seconds)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        for p in procs:  # each says "ready" once warmed up
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the {case}/{backend} worker failed")

        def together(group):
            time.sleep(SETTLE_S)
            for p in group:
                p.stdin.write("go\n")
                p.stdin.flush()
            return sum(float(p.stdout.readline()) for p in group)

        alone, both = [], []
        for _ in range(repeats):
            alone.append(together(procs[:1]))
            both.append(together(procs))
    finally:
        for p in procs:
            p.stdin.close()
            p.wait()
    return {"steps_per_s_alone": statistics.median(alone), "steps_per_s_two_together": statistics.median(both),
            "two_over_one": statistics.median(b / a for a, b in zip(alone, both)), "repeats": repeats}


def worker(case, backend, seconds):
    """--worker: warm up, say ready; then for every "go" line train for `seconds` and print steps per second."""
    trainer = runner(backend, case)
    for _ in range(3):
        trainer.read_metrics(trainer.step())
    print("ready", flush=True)
    for _ in sys.stdin:
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            trainer.read_metrics(trainer.step())
            steps += 1
        print(steps / (time.perf_counter() - start), flush=True)


def machine():
    """What the figures depend on: CPU, peak, BLAS (kernel architecture, threads), thread policy, versions."""
    peak, how = cpu_peak_gflops()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    return {"cpu": cpu, "peak_gflops": peak, "peak": how, "policy": policy().describe(),
            "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
            "numba_threading_layer": numba.config.THREADING_LAYER, "torch": torch_version(),
            "torch_threads": torch.get_num_threads() if torch else None,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "loadavg_at_start": os.getloadavg()}


def table(results):
    """Markdown: one row per case and runner."""
    contend = sorted({int(k.rsplit("_", 1)[1]) for c in results["cases"] for row in c["runners"].values()
                      for k in row if k.startswith("slowdown_beside_")})
    head = ["case", "runner", "step", "GFLOP/s (% peak)", "numba is x faster", "quiet rounds"]
    head += [f"beside {k} busy (x quiet)" for k in contend]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in results["cases"]:
        for name, row in c["runners"].items():
            rate = f"{row['gflops_per_s']:.1f}" + (f" ({row['percent_of_peak']:.0f}%)" if "percent_of_peak" in row
                                                    else "")
            vs = "" if name == "numba" else (f"{c['runners']['numba'][f'vs_{name}']:.2f}x"
                                             if "numba" in c["runners"] else "-")
            cells = [c["case"], name, f"{row['step_ms']:.2f} ms", rate, vs or "-",
                     f"{c['quiet_rounds']}/{c['rounds']}"]
            cells += [f"{row[f'step_ms_beside_{k}']:.2f} ms ({row[f'slowdown_beside_{k}']:.1f}x)" for k in contend]
            lines.append("| " + " | ".join(cells) + " |")
    for c in results["cases"]:
        for backend, p in c.get("pair", {}).items():
            lines.append(f"- {c['case']} {backend}: one process {p['steps_per_s_alone']:.0f} steps/s, two side by "
                         f"side {p['steps_per_s_two_together']:.0f} together ({p['two_over_one']:.2f}x)")
    return "\n".join(lines)


def main(argv=None):
    if argv is None and sys.argv[1:2] == ["--worker"]:
        return worker(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rounds", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds [7]")
    parser.add_argument("--contend", type=int, action="append", default=[], metavar="K",
                        help="also time each runner beside K busy processes (repeatable)")
    parser.add_argument("--pair", action="store_true", help="also two training processes side by side")
    parser.add_argument("--runners", default=",".join(AVAILABLE + (["torch"] if torch else [])),
                        help="comma-separated runners: numpy, numba, torch, or BACKEND@N for a backend under "
                             "--threads N [every CPU backend, and torch if installed]")
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parse_cases(parser, argv)
    names = args.runners.split(",")
    results = {"machine": machine(), "command": "python -m benchmarks.rounds " + " ".join(sys.argv[1:]),
               "cases": []}
    for case in args.cases:
        result = run_case(case, names, args.rounds, args.contend)
        if args.pair:
            result["pair"] = {b: pair(case, b) for b in names if b in AVAILABLE}
        results["cases"].append(result)
        print("\n".join(table({"cases": [result]}).splitlines()[2:]), flush=True)
    results["machine"]["policy_at_end"] = policy().describe()
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(tmp, args.json)
    print(table(results))


if __name__ == "__main__":
    main()
