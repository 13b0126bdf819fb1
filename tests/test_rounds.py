"""benchmarks/rounds.py: ratios are medians of per-round ratios over the quiet rounds, slowdowns medians of
per-round busy / quiet, and a short run of it works end to end."""
import json

import pytest

from benchmarks import rounds


def test_ratios_are_medians_of_per_round_ratios_over_quiet_rounds():
    # (round, runner, busy processes, seconds per step, others' load): round 1 was noisy (load 0.9)
    blocks = [(0, "numba", 0, 1.0, 0.0), (0, "numpy", 0, 2.0, 0.1), (0, "numba", 1, 1.5, 1.0), (0, "numpy", 1, 2.0, 1.0),
              (1, "numba", 0, 1.0, 0.9), (1, "numpy", 0, 9.0, 0.0), (1, "numba", 1, 1.2, 1.0), (1, "numpy", 1, 2.2, 1.0),
              (2, "numba", 0, 2.0, 0.0), (2, "numpy", 0, 3.0, 0.0), (2, "numba", 1, 4.0, 1.0), (2, "numpy", 1, 6.0, 1.0)]
    out = rounds.summarise("case", blocks, flops=2e9, rounds=3, contend=[1], steps={"numba": 5, "numpy": 5})
    assert out["quiet_rounds"] == 2
    numba, numpy = out["runners"]["numba"], out["runners"]["numpy"]
    assert numba["vs_numpy"] == pytest.approx((2.0 / 1.0 + 3.0 / 2.0) / 2)  # rounds 0 and 2: 2x and 1.5x
    assert numba["step_ms"] == pytest.approx(1.5e3)  # median of 1.0 and 2.0 s
    assert numba["gflops_per_s"] == pytest.approx(2e9 / 1.5 / 1e9)
    assert numba["slowdown_beside_1"] == pytest.approx(1.5)  # 1.5/1, 1.2/1, 4/2 over every round
    assert numpy["slowdown_beside_1"] == pytest.approx(1.0)  # 2/2, 2.2/9, 6/3


def test_a_short_run_writes_its_json(tmp_path, capsys):
    path = tmp_path / "r.json"
    rounds.main(["--rounds", "1", "--runners", "numpy,numba@1", "--json", str(path), "seed-mlp-b64"])
    results = json.loads(path.read_text())
    row = results["cases"][0]["runners"]["numba@1"]
    assert row["step_ms"] > 0 and row["vs_numpy"] > 0
    assert results["machine"]["policy"]["blas"], "the BLAS in use is recorded"
    assert "| seed-mlp-b64 | numba@1 |" in capsys.readouterr().out
