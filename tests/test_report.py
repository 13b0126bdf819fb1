"""benchmarks.report: the training-step rows first, apart from the op rows, with ratios against the reference."""
import json

from benchmarks.report import table


def _bench(name, case, backend, seconds, **info):
    return {"name": f"{name}[{backend}-{case}]", "stats": {"median": seconds},
            "extra_info": {"case": case, "backend": backend, **info}}


def test_step_rows_come_first_apart_from_the_op_rows(tmp_path):
    results = {"machine_info": {"cpu": {"brand_raw": "Test CPU", "count": 2}, "python_version": "3.11"},
               "datetime": "2026-11-27", "benchmarks": [
                   _bench("test_op", "adam 1k", "numpy", 4e-3, gbytes_per_s=1.0),
                   _bench("test_op", "adam 1k", "numba", 1e-3, gbytes_per_s=4.0),
                   _bench("test_training_step", "seed-mlp-b64", "numpy", 6e-3, gflops_per_s=20.0, peak_gflops=100.0),
                   _bench("test_training_step", "seed-mlp-b64", "numba", 3e-3, gflops_per_s=40.0, peak_gflops=100.0),
                   _bench("test_training_step", "seed-mlp-b64", "torch", 9e-3, torch="2.13.0")]}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(results))
    lines = table(str(path)).splitlines()
    steps, ops = lines.index("Training steps:"), lines.index("Ops:")
    assert steps < ops
    step_rows = [line for line in lines[steps:ops] if "seed-mlp-b64" in line]
    op_rows = [line for line in lines[ops:] if "adam 1k" in line]
    assert len(step_rows) == 3 and len(op_rows) == 2
    numba = next(line for line in step_rows if "| numba |" in line)
    assert "| 3.000 ms | 40.0 (40%) | 2.00x | 3.00x |" in numba  # 6 / 3 against numpy, 9 / 3 against torch
    assert "| 1.000 ms | 4.0 GB/s | 4.00x | - |" in next(line for line in op_rows if "| numba |" in line)
