"""Print a pytest-benchmark JSON file as a table: case, backend, median time, GFLOP/s, speed-up over numpy.

    python -m benchmarks.report benchmarks/results/<file>.json
"""
import json
import sys


def table(path):
    with open(path) as f:
        results = json.load(f)
    rows = {}
    for b in results["benchmarks"]:
        info = b["extra_info"]
        rows[(info["case"], info["backend"])] = (b["stats"]["median"], info["gflops_per_s"])
    lines = [f"machine: {results['machine_info'].get('cpu', {}).get('brand_raw', '?')}, "
             f"{results['machine_info'].get('cpu', {}).get('count', '?')} cores; {results['datetime']}",
             "| case | backend | median step | GFLOP/s | vs numpy |", "|---|---|---|---|---|"]
    for (case, backend), (median, gflops) in sorted(rows.items()):
        base = rows.get((case, "numpy"), (None,))[0]
        ratio = f"{base / median:.2f}x" if base else "-"
        lines.append(f"| {case} | {backend} | {median * 1e3:.3f} ms | {gflops:.2f} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1]))
