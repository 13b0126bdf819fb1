"""Print a pytest-benchmark JSON file as tables: per case and backend, the median time, GFLOP/s with the share
of the CPU's FMA peak (or GB/s for memory-bound ops), and the speed-up over the NumPy reference and over
its peer: PyTorch (CPU or CUDA; cuDNN for convolutions) or, for the GPU's dense layer, cuBLAS plus an elementwise
kernel (a ratio > 1 means faster than that one).

    python -m benchmarks.report benchmarks/results/<file>.json
"""
import json
import sys

BASELINES = ("numpy", "numpy-matmul")  # the reference, or NumPy's own matmul for the GEMM comparison
PEERS = ("torch", "torch-cuda", "cublas+elementwise")


def _time(seconds):
    return f"{seconds * 1e3:.3f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.1f} us"


def table(path):
    with open(path) as f:
        results = json.load(f)
    rows, peak = {}, None
    for b in results["benchmarks"]:
        info = b["extra_info"]
        info = {**info, "kind": "step" if b["name"].startswith("test_training_step") else "op"}
        rows[(info["case"], info["backend"])] = (info.get("seconds_per_call", b["stats"]["median"]), info)
        peak = peak or info.get("peak")
    machine = results["machine_info"]
    cpu = machine.get("cpu", {})
    versions = next((i for _, i in rows.values() if i.get("torch")), {})
    lines = [f"machine: {cpu.get('brand_raw', '?')}, {cpu.get('count', '?')} cores; {results['datetime']}; "
             f"Python {machine.get('python_version', '?')}; PyTorch {versions.get('torch') or 'not installed'}",
             f"FP32 FMA peak: {peak or 'unknown'}"]
    devices = sorted({(i["device"], i.get("cupy"), i.get("cuda_runtime")) for _, i in rows.values() if "device" in i})
    lines += [f"GPU: {d}; CuPy {c}; CUDA runtime {r}" for d, c, r in devices]
    steps = {k: v for k, v in rows.items() if v[1].get("kind") == "step"}
    for title, part in (("Training steps", steps), ("Ops", {k: v for k, v in rows.items() if k not in steps})):
        if part:
            lines += ["", f"{title}:", "| case | backend | median | GFLOP/s (% of peak) or GB/s | vs numpy | vs peer |",
                      "|---|---|---|---|---|---|"]
            lines += [_row(case, backend, median, info, rows) for (case, backend), (median, info) in sorted(part.items())]
    return "\n".join(lines)


def _row(case, backend, median, info, rows):
    if "gflops_per_s" in info:
        rate = f"{info['gflops_per_s']:.1f}"
        if info.get("peak_gflops"):
            rate += f" ({100 * info['gflops_per_s'] / info['peak_gflops']:.0f}%)"
    elif "gbytes_per_s" in info:
        rate = f"{info['gbytes_per_s']:.1f} GB/s"
    else:
        rate = "-"
    base = next((rows[(case, b)][0] for b in BASELINES if (case, b) in rows), None)
    peer = next((rows[(case, p)][0] for p in PEERS if (case, p) in rows and p != backend), None)
    ratios = [f"{other / median:.2f}x" if other else "-" for other in (base, peer)]
    return f"| {case} | {backend} | {_time(median)} | {rate} | {ratios[0]} | {ratios[1]} |"


if __name__ == "__main__":
    print(table(sys.argv[1]))
