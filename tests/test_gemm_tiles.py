"""benchmarks/gemm_tiles.py: the vector-tile GEMM computes a @ b (float64 reference) for every layout the steps
use, at edge tiles, with accumulation and over any row range, at both vector widths (16 lanes compile to narrower
instructions on a CPU without AVX-512)."""
import numpy as np
import pytest

from benchmarks import gemm_tiles

# tails in every dimension: rows past a tile, columns past a panel, k past a vector and past a K block
SHAPES = [(1, 1, 1), (5, 7, 3), (7, 17, 33), (13, 300, 100), (64, 128, 784), (3, 9, 20), (30, 520, 40)]


@pytest.fixture(scope="module", params=sorted(gemm_tiles.TILES))
def gemm(request):
    return gemm_tiles.make_gemm(request.param)


@pytest.mark.parametrize("layout", ["NN", "TN", "NT", "TT"])
@pytest.mark.parametrize("shape", SHAPES)
def test_tiles_match_a_float64_product(gemm, layout, shape):
    m, k, n = shape
    rng = np.random.default_rng(m * k * n)
    a = rng.standard_normal((k, m), dtype=np.float32).T if layout[0] == "T" else rng.standard_normal(
        (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k), dtype=np.float32).T if layout[1] == "T" else rng.standard_normal(
        (k, n), dtype=np.float32)
    c0 = rng.standard_normal((m, n), dtype=np.float32)
    product = a.astype(np.float64) @ b
    lo, hi = m // 3, m - m // 4
    for accumulate, rows in [(False, (0, m)), (True, (0, m)), (False, (lo, hi)), (True, (lo, hi))]:
        c = c0.copy()
        gemm(a, b, c, accumulate, *rows)
        want = c0.astype(np.float64)
        want[rows[0]:rows[1]] = product[rows[0]:rows[1]] + (c0[rows[0]:rows[1]] if accumulate else 0)
        assert np.abs(c - want).max() <= 1e-5 * (np.abs(want).max() + 1), (layout, shape, accumulate, rows)


def test_row_blocks_give_the_bits_of_one_call(gemm):
    rng = np.random.default_rng(1)
    a, b = gemm_tiles.operands("NN", 64, 784, 128, rng)
    whole, parts = np.empty((64, 128), np.float32), np.empty((64, 128), np.float32)
    gemm(a, b, whole, False, 0, 64)
    gemm(a, b, parts, False, 0, 30)
    gemm(a, b, parts, False, 30, 64)
    assert np.array_equal(whole, parts)


def test_a_short_run_measures_both_runners(monkeypatch, capsys):
    monkeypatch.setattr(gemm_tiles, "SHAPES", [("NT", 8, 40, 20)])
    monkeypatch.setattr(gemm_tiles, "SETTLE_S", 0.0)
    gemm_tiles.main(["--rounds", "1", "--lanes", "8"])
    row = capsys.readouterr().out.splitlines()[-1]
    assert row.startswith("| NT | 8 x 40 x 20 |") and row.count("GFLOP/s") == 2
