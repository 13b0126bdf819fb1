"""Data-parallel scaling over MPI ranks: time per step and per sample at 1, 2, ... ranks, the share of each step
spent in allreduces, and a model of larger jobs.

    python -m benchmarks.scaling [--ranks 1,2] [--steps 50] [--rounds 3] [--json FILE] [CASE ...]   (default: every
                                                                                                    case)

For each P, `mpiexec -n P` runs this module's worker: it builds the case's trainer (benchmarks/test_bench_step.py,
the case's global batch) over the P ranks, warms up, times STEPS steps and the time spent inside the allreduces
(gradients, and synchronized batch norm's sums; a rank that arrives first waits there for the others), and rank 0
prints one JSON line. The rank counts take turns in ROUNDS rounds; the tables give the medians.

The model, from the 1-rank measurement, with every rank keeping the case's batch B (a global batch of P B): a step
on P ranks takes compute(B) + comm(P), comm(P) an allreduce of each model's gradients as MPI libraries run one
(reduce-scatter then allgather, by recursive halving and doubling): 2 (P - 1) / P x bytes / bandwidth + 2 log2(P)
x LATENCY_S each (bytes = 4 x the model's parameters; D's and G's once a step), plus batch norm's four per-channel
sums a step (latency-bound). Speed-up in samples per second over one rank = P compute(B) /
(compute(B) + comm(P)) at 8, 64 and 512 ranks over 10 and 100 GB/s networks; and the rows per rank from which the
backward (taken as 2/3 of a step's compute, per sample as measured) outlasts the allreduce, so that an allreduce
overlapped with it (bucketed, as data-parallel trainers do) would hide entirely.
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

from .test_bench_step import parse_cases

LATENCY_S = 5e-6                    # one message on a fast cluster network
BANDWIDTHS = {"10 GB/s": 10e9, "100 GB/s": 100e9}
MODEL_RANKS = (8, 64, 512)
BACKWARD_SHARE = 2 / 3              # a step's compute that is backward (its GEMMs are twice the forward's)


def worker(case, steps, backend):
    """One rank: time `steps` steps of `case` over the job's ranks; rank 0 prints the JSON figures."""
    from gan_engine.distributed import Communicator, world

    from .test_bench_step import make_trainer

    spent = [0.0]
    reduce_sum = Communicator.sum

    def timed_sum(self, buffer):
        start = time.perf_counter()
        reduce_sum(self, buffer)
        spent[0] += time.perf_counter() - start

    Communicator.sum = timed_sum
    comm = world()
    trainer = make_trainer(backend, case, comm=comm)
    G, D, batch = trainer.G, trainer.D, trainer.batch_size
    for _ in range(5):
        trainer.read_metrics(trainer.step())
    comm.comm.Barrier()
    spent[0] = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step()
    trainer.read_metrics(trainer.step())
    step_s = (time.perf_counter() - start) / (steps + 1)
    comm_s = spent[0] / (steps + 1)
    if comm.rank == 0:
        print(json.dumps({"case": case, "ranks": comm.size, "batch": batch, "step_ms": step_s * 1e3,
                          "sample_us": step_s / batch * 1e6, "allreduce_ms": comm_s * 1e3,
                          "allreduce_share": comm_s / step_s,
                          "parameters": {"G": int(G.flat_params.size), "D": int(D.flat_params.size)},
                          "batch_norm_channels": sum(layer.num_features for m in (G, D) for layer in m.layers
                                                     if layer.mixes_rows)}), flush=True)


def allreduce_s(nbytes, ranks, bandwidth):
    """Seconds of an allreduce of `nbytes` over `ranks` ranks (recursive halving and doubling)."""
    return 2 * (ranks - 1) / ranks * nbytes / bandwidth + 2 * math.log2(ranks) * LATENCY_S


def model(one_rank):
    """The modelled step, speed-up and hiding rows at MODEL_RANKS for each bandwidth, from a 1-rank result."""
    compute_s, batch = one_rank["step_ms"] / 1e3, one_rank["batch"]
    rows = []
    for name, bandwidth in BANDWIDTHS.items():
        for ranks in MODEL_RANKS:
            comm_s = sum(allreduce_s(4 * n, ranks, bandwidth) for n in one_rank["parameters"].values())
            if one_rank["batch_norm_channels"]:
                comm_s += 4 * 2 * math.log2(ranks) * LATENCY_S
            rows.append({"network": name, "ranks": ranks, "step_ms": (compute_s + comm_s) * 1e3,
                         "speedup": ranks * compute_s / (compute_s + comm_s), "comm_share": comm_s / (compute_s + comm_s),
                         "hiding_rows_per_rank": int(comm_s / (BACKWARD_SHARE * compute_s / batch)) + 1})
    return rows


def main(argv=None):
    if sys.argv[1:2] == ["--rank-worker"]:
        return worker(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="1,2", help="the rank counts to run, comma-separated [1,2]")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per run [50]")
    parser.add_argument("--backend", default="numba", help="the CPU backend [numba]")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, the rank counts taking turns in each [3]")
    parser.add_argument("--json", help="also write the results to this file")
    args = parse_cases(parser, argv)
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    runs = {}
    for _ in range(args.rounds):
        for case in args.cases:
            for ranks in (int(r) for r in args.ranks.split(",")):
                done = subprocess.run([mpiexec if os.path.exists(mpiexec) else "mpiexec", "-n", str(ranks),
                                       sys.executable, "-m", "benchmarks.scaling", "--rank-worker", case,
                                       str(args.steps), args.backend], capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"{case} on {ranks} ranks failed:\n{done.stderr}")
                runs.setdefault((case, ranks), []).append(json.loads(done.stdout.strip().splitlines()[-1]))
    results = [{**rounds[0], "rounds": len(rounds), **{k: statistics.median(r[k] for r in rounds) for k in
               ("step_ms", "sample_us", "allreduce_ms", "allreduce_share")}, "each_round": rounds}
               for rounds in runs.values()]
    print("| case | ranks | step | per sample | allreduce | share of the step |\n|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['case']} | {r['ranks']} | {r['step_ms']:.2f} ms | {r['sample_us']:.1f} us | "
              f"{r['allreduce_ms']:.3f} ms | {100 * r['allreduce_share']:.1f}% |")
    print("\nModel from the 1-rank step, each rank keeping the case's batch (allreduce by halving and doubling, 5 us a message):\n"
          "| case | network | ranks | step | speed-up (samples/s) | communication | rows per rank to hide it |\n"
          "|---|---|---|---|---|---|---|")
    modelled = {}
    for r in results:
        if r["ranks"] == 1:
            modelled[r["case"]] = model(r)
            for m in modelled[r["case"]]:
                print(f"| {r['case']} | {m['network']} | {m['ranks']} | {m['step_ms']:.3f} ms | {m['speedup']:.1f}x | "
                      f"{100 * m['comm_share']:.0f}% | {m['hiding_rows_per_rank']} |")
    if args.json:
        from gan_engine.io import write_json

        from .rounds import machine

        write_json(args.json, {"machine": machine(), "command": "python -m benchmarks.scaling " + " ".join(sys.argv[1:]),
                               "mpi4py": _mpi4py_version(), "measured": results, "model": modelled})


def _mpi4py_version():
    import mpi4py
    from mpi4py import MPI

    return f"mpi4py {mpi4py.__version__}; {MPI.Get_library_version().splitlines()[0].strip()}"


if __name__ == "__main__":
    main()
