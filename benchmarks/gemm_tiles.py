"""Can a GEMM written for this project beat NumPy's BLAS on this CPU? A register-blocked float32 GEMM whose tiles
are LLVM vector code emitted through Numba intrinsics, timed against NumPy's BLAS (one thread) on every GEMM
shape and operand layout the CPU steps run, in interleaved rounds.

    python -m benchmarks.gemm_tiles [--rounds 7] [--lanes 8|16] [--json FILE]

The engine's Numba backend hands its GEMMs to NumPy's BLAS; this measures what a GEMM of its own would buy. The
bound is the FMA peak of one core (two 8-lane FMAs a cycle with AVX2, two 16-lane ones with AVX-512): where BLAS
already runs near it, as OpenBLAS's Haswell kernels do on an AVX2 CPU, no kernel can do much better; on an
AVX-512 CPU with OPENBLAS_CORETYPE=Haswell, BLAS uses half the vector width and a 16-lane kernel has room.

Numba's own loops leave a tile's accumulators in memory (LLVM does not turn 96 scalar sums into vectors), so the
two tile kernels emit the vector code themselves, each keeping its tile of C in registers for a whole K block:
- outer: C[rows, 2 vectors] += A[rows, p] (broadcast) * B[p, 2 vectors] for each p, for A @ B with B's rows
  contiguous; A stored either way (its element (i, p) at i * a_rs + p * a_ps: A, or x^T of a weight gradient);
- dot: C[rows, cols] += A[rows, p:p+L] * Bt[cols, p:p+L], L values of k at a time, summed across the lanes at
  the end, for A @ Bt^T with both stored k-contiguous (g W^T of an input gradient, g cols^T of a convolution's
  weight gradient).
Edge tiles take fewer `rows` and `cols`: loads repeat the last valid row, and only the valid part of C is
written; a partial column panel of B is first copied into a full-width panel so that no load leaves the arrays.
Each element of C is summed in the same order whatever rows `lo`..`hi` a call covers.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
from llvmlite import binding, ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from gan_engine.backends.threads import OtherLoad, affinity, policy

from .rounds import QUIET, SETTLE_S, machine

_F32, _I32, _I64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
# tile shapes by vector width: accumulators + loaded operands fit the 16 (AVX2) or 32 (AVX-512) vector registers
TILES = {8: {"outer_rows": 6, "dot_rows": 2, "dot_cols": 4}, 16: {"outer_rows": 12, "dot_rows": 4, "dot_cols": 4}}
K_BLOCK = 256      # k per pass of the outer tile: B's 256-row panel stays in L1 across A's rows
DOT_K_BLOCK = 512  # k per pass of the dot tile
# (layout, M, K, N) of the CPU steps' GEMMs: NN = A @ B, TN = x^T @ g (a weight gradient), NT = g @ W^T
SHAPES = [("NN", 64, 100, 128), ("NN", 64, 128, 784), ("NN", 128, 784, 128), ("NN", 64, 784, 128),
          ("TN", 100, 64, 128), ("TN", 128, 64, 784), ("TN", 784, 128, 128), ("NT", 64, 128, 784),
          ("NT", 64, 784, 128), ("NN", 256, 784, 512), ("NT", 256, 512, 784), ("TN", 512, 256, 784),
          ("NN", 128, 1024, 256), ("NT", 128, 256, 1024), ("TN", 1024, 128, 256),
          ("NN", 128, 1024, 3136), ("NT", 128, 3136, 1024), ("TN", 1024, 128, 3136)]


def host_lanes():
    """float32 lanes of the widest vectors this CPU has: 16 with AVX-512, else 8."""
    return 16 if binding.get_host_cpu_features().get("avx512f") else 8


def make_gemm(lanes=8):
    """gemm_rows(a, b, c, accumulate, lo, hi) with tiles for `lanes`-wide vectors (8: AVX2, 16: AVX-512; a width
    the CPU lacks still computes right, in narrower instructions)."""
    vec = ir.VectorType(_F32, lanes)
    tile = TILES[lanes]
    outer_rows, outer_cols = tile["outer_rows"], 2 * lanes
    dot_rows, dot_cols = tile["dot_rows"], tile["dot_cols"]

    def data(context, builder, array_type, array, offset):  # float* to element `offset` of the flat storage
        return builder.gep(context.make_array(array_type)(context, builder, array).data, [offset])

    def vector_at(builder, pointer):
        return builder.bitcast(pointer, vec.as_pointer())

    def clamped(builder, count, valid, stride):  # offsets r * stride, rows past `valid` repeating the last one
        last = builder.sub(valid, ir.Constant(_I64, 1))
        return [builder.mul(builder.select(builder.icmp_signed("<", ir.Constant(_I64, r), valid),
                                           ir.Constant(_I64, r), last), stride) for r in range(count)]

    def store(builder, pointer, value, accumulate):  # *pointer = value, or += where accumulate (i1)
        old = builder.load(pointer, align=4)
        builder.store(builder.select(accumulate, builder.fadd(old, value), value), pointer, align=4)

    def lane_sum(builder, v):  # pairwise halves down to one value
        n = lanes
        while n > 1:
            n //= 2
            half = [builder.shuffle_vector(v, ir.Constant(v.type, None), ir.Constant(
                ir.VectorType(_I32, n), list(range(lo, lo + n)))) for lo in (0, n)]
            v = builder.fadd(*half)
        return builder.extract_element(v, ir.Constant(_I32, 0))

    def fma(builder):
        return cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3), f"llvm.fma.v{lanes}f32")

    def zeros(builder, rows, cols):
        return [[cgutils.alloca_once_value(builder, ir.Constant(vec, [0.0] * lanes)) for _ in range(cols)]
                for _ in range(rows)]

    @intrinsic
    def outer_tile(typingctx, a, a0, a_rs, a_ps, b, b0, b_rs, c, c0, c_rs, k, rows, cols, accumulate):
        """C[r, j] (+)= sum_p<k A[r, p] B[p, j], r < rows, j < cols; A (r, p) at a0 + r a_rs + p a_ps, B (p, j) at
        b0 + p b_rs + j with 2 lanes readable values a row, C (r, j) at c0 + r c_rs + j."""
        sig = types.void(a, a0, a_rs, a_ps, b, b0, b_rs, c, c0, c_rs, k, rows, cols, accumulate)

        def codegen(context, builder, signature, args):
            a, a0, a_rs, a_ps, b, b0, b_rs, c, c0, c_rs, k, rows, cols, accumulate = args
            ta, tb, tc = signature.args[0], signature.args[4], signature.args[7]
            a_ptr, b_ptr, c_ptr = data(context, builder, ta, a, a0), data(context, builder, tb, b, b0), data(
                context, builder, tc, c, c0)
            a_rows, acc, f = clamped(builder, outer_rows, rows, a_rs), zeros(builder, outer_rows, 2), fma(builder)
            broadcast = ir.Constant(ir.VectorType(_I32, lanes), [0] * lanes)
            with cgutils.for_range(builder, k) as loop:
                b_row = builder.gep(b_ptr, [builder.mul(loop.index, b_rs)])
                bv = [builder.load(vector_at(builder, builder.gep(b_row, [ir.Constant(_I64, lanes * v)])), align=4)
                      for v in range(2)]
                a_col = builder.gep(a_ptr, [builder.mul(loop.index, a_ps)])
                for r in range(outer_rows):
                    s = builder.insert_element(ir.Constant(vec, None), builder.load(builder.gep(a_col, [a_rows[r]])),
                                               ir.Constant(_I32, 0))
                    s = builder.shuffle_vector(s, ir.Constant(vec, None), broadcast)
                    for v in range(2):
                        builder.store(builder.call(f, [s, bv[v], builder.load(acc[r][v])]), acc[r][v])
            accumulate = builder.icmp_unsigned("!=", accumulate, ir.Constant(accumulate.type, 0))
            full = builder.icmp_signed("==", cols, ir.Constant(_I64, outer_cols))
            for r in range(outer_rows):
                with builder.if_then(builder.icmp_signed("<", ir.Constant(_I64, r), rows)):
                    c_row = builder.gep(c_ptr, [builder.mul(ir.Constant(_I64, r), c_rs)])
                    with builder.if_else(full) as (whole, part):
                        with whole:
                            for v in range(2):
                                store(builder, vector_at(builder, builder.gep(c_row, [ir.Constant(_I64, lanes * v)])),
                                      builder.load(acc[r][v]), accumulate)
                        with part:
                            for j in range(outer_cols):
                                with builder.if_then(builder.icmp_signed("<", ir.Constant(_I64, j), cols)):
                                    value = builder.extract_element(builder.load(acc[r][j // lanes]),
                                                                    ir.Constant(_I32, j % lanes))
                                    store(builder, builder.gep(c_row, [ir.Constant(_I64, j)]), value, accumulate)
            return context.get_dummy_value()
        return sig, codegen

    @intrinsic
    def dot_tile(typingctx, a, a0, a_rs, b, b0, b_rs, c, c0, c_rs, kv, rows, cols, accumulate):
        """C[r, s] (+)= sum_p<lanes kv A[r, p] Bt[s, p], r < rows, s < cols; A (r, p) at a0 + r a_rs + p, Bt (s, p)
        at b0 + s b_rs + p, C (r, s) at c0 + r c_rs + s."""
        sig = types.void(a, a0, a_rs, b, b0, b_rs, c, c0, c_rs, kv, rows, cols, accumulate)

        def codegen(context, builder, signature, args):
            a, a0, a_rs, b, b0, b_rs, c, c0, c_rs, kv, rows, cols, accumulate = args
            ta, tb, tc = signature.args[0], signature.args[3], signature.args[6]
            a_ptr, b_ptr, c_ptr = data(context, builder, ta, a, a0), data(context, builder, tb, b, b0), data(
                context, builder, tc, c, c0)
            a_rows, b_rows = clamped(builder, dot_rows, rows, a_rs), clamped(builder, dot_cols, cols, b_rs)
            acc, f = zeros(builder, dot_rows, dot_cols), fma(builder)
            with cgutils.for_range(builder, kv) as loop:
                p = builder.mul(loop.index, ir.Constant(_I64, lanes))
                av = [builder.load(vector_at(builder, builder.gep(a_ptr, [builder.add(o, p)])), align=4)
                      for o in a_rows]
                bv = [builder.load(vector_at(builder, builder.gep(b_ptr, [builder.add(o, p)])), align=4)
                      for o in b_rows]
                for r in range(dot_rows):
                    for s in range(dot_cols):
                        builder.store(builder.call(f, [av[r], bv[s], builder.load(acc[r][s])]), acc[r][s])
            accumulate = builder.icmp_unsigned("!=", accumulate, ir.Constant(accumulate.type, 0))
            for r in range(dot_rows):
                c_row = builder.gep(c_ptr, [builder.mul(ir.Constant(_I64, r), c_rs)])
                for s in range(dot_cols):
                    valid = builder.and_(builder.icmp_signed("<", ir.Constant(_I64, r), rows),
                                         builder.icmp_signed("<", ir.Constant(_I64, s), cols))
                    with builder.if_then(valid):
                        store(builder, builder.gep(c_row, [ir.Constant(_I64, s)]),
                              lane_sum(builder, builder.load(acc[r][s])), accumulate)
            return context.get_dummy_value()
        return sig, codegen

    jit = njit(nogil=True, error_model="numpy")

    @jit
    def gemm_outer(a, a_rs, a_ps, b, c, accumulate, lo, hi, panel):
        """Rows lo..hi of c (M, N) (+)= A @ b: A's (i, p) at flat index i a_rs + p a_ps of the C-contiguous `a`;
        b (K, N), c C-contiguous; panel (K_BLOCK, 2 lanes) scratch for a partial column panel of b."""
        k, n = b.shape
        for p0 in range(0, k, K_BLOCK):
            kc = min(K_BLOCK, k - p0)
            acc = accumulate or p0 > 0
            for j0 in range(0, n, outer_cols):
                cols = min(outer_cols, n - j0)
                if cols == outer_cols:
                    source, s0, s_rs = b, p0 * n + j0, n
                else:
                    panel[:kc, :cols] = b[p0:p0 + kc, j0:]
                    source, s0, s_rs = panel, 0, outer_cols
                for i0 in range(lo, hi, outer_rows):
                    outer_tile(a, i0 * a_rs + p0 * a_ps, a_rs, a_ps, source, s0, s_rs, c, i0 * n + j0, n, kc,
                               min(outer_rows, hi - i0), cols, acc)

    @jit
    def gemm_dot(a, bt, c, accumulate, lo, hi):
        """Rows lo..hi of c (M, N) (+)= a (M, K) @ bt (N, K)^T, C-contiguous: the dot tile over k in vectors, then
        the last k % lanes products one by one."""
        k, n = a.shape[1], bt.shape[0]
        kv = k - k % lanes
        for p0 in range(0, kv, DOT_K_BLOCK):
            kc = min(DOT_K_BLOCK, kv - p0)
            acc = accumulate or p0 > 0
            for j0 in range(0, n, dot_cols):
                for i0 in range(lo, hi, dot_rows):
                    dot_tile(a, i0 * k + p0, k, bt, j0 * k + p0, k, c, i0 * n + j0, n, kc // lanes,
                             min(dot_rows, hi - i0), min(dot_cols, n - j0), acc)
        if kv < k:
            for i in range(lo, hi):
                for j in range(n):
                    s = c[i, j] if accumulate or kv > 0 else np.float32(0)
                    for p in range(kv, k):
                        s += a[i, p] * bt[j, p]
                    c[i, j] = s

    panels = {}

    def gemm_rows(a, b, c, accumulate, lo, hi):
        """Rows lo..hi of c (M, N) (+)= a (M, K) @ b (K, N), float32, c C-contiguous, a and b each C- or
        F-contiguous (a transposed view of a stored array is F): the outer tile where b's rows are contiguous, the
        dot tile where b is a transpose."""
        if b.flags.c_contiguous:
            storage, a_rs, a_ps = (a, a.shape[1], 1) if a.flags.c_contiguous else (a.T, 1, a.shape[0])
            panel = panels.get(hi)  # one per row block, so that threads never share one
            if panel is None:
                panel = panels[hi] = np.zeros((K_BLOCK, outer_cols), np.float32)
            gemm_outer(storage, a_rs, a_ps, b, c, accumulate, lo, hi, panel)
        else:
            gemm_dot(np.ascontiguousarray(a), b.T, c, accumulate, lo, hi)
    return gemm_rows


def operands(layout, m, k, n, rng):
    """a (M, K), b (K, N) float32 laid out as the steps have them: NN both C; TN a = x^T; NT b = W^T."""
    a = rng.standard_normal((k, m) if layout == "TN" else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if layout == "NT" else (k, n), dtype=np.float32)
    return (a.T if layout == "TN" else a), (b.T if layout == "NT" else b)


def run_shape(gemm, shape, rounds, rng):
    """Interleaved rounds of BLAS and the tiles on one shape: each round a block of each (about 0.1 s), SETTLE_S
    apart, with the load of other processes during it; medians over the quiet rounds."""
    layout, m, k, n = shape
    a, b = operands(layout, m, k, n, rng)
    c, want = np.empty((m, n), np.float32), a.astype(np.float64) @ b
    runners = {"blas": lambda: np.matmul(a, b, out=c), "tiles": lambda: gemm(a, b, c, False, 0, m)}
    for name, run in runners.items():
        run()
        error = float(np.abs(c - want).max() / np.abs(want).max())
        if error > 1e-5:
            raise AssertionError(f"{name} {shape}: relative error {error:.1e}")
    flops = 2 * m * k * n
    reps = max(3, int(3e8 // flops))
    load, times = OtherLoad(affinity()), []
    for r in range(rounds):
        row = {}
        for name in (list(runners) if r % 2 == 0 else list(runners)[::-1]):
            time.sleep(SETTLE_S)
            load.read()
            start = time.perf_counter()
            for _ in range(reps):
                runners[name]()
            row[name] = ((time.perf_counter() - start) / reps, load.read() or 0.0)
        times.append(row)
    quiet = [row for row in times if all(l < QUIET for _, l in row.values())] or times
    out = {"layout": layout, "m": m, "k": k, "n": n, "flops": flops, "rounds": rounds, "quiet_rounds": len(quiet)}
    for name in runners:
        seconds = statistics.median(row[name][0] for row in quiet)
        out[name] = {"us": seconds * 1e6, "gflops_per_s": flops / seconds / 1e9}
    out["tiles_vs_blas"] = statistics.median(row["blas"][0] / row["tiles"][0] for row in quiet)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gemm_tiles", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds [7]")
    parser.add_argument("--lanes", type=int, choices=sorted(TILES), default=host_lanes(),
                        help="vector width of the tiles [this CPU's widest]")
    parser.add_argument("--json", help="write the results to this JSON file")
    args = parser.parse_args(argv)
    policy()  # pins NumPy's BLAS to one thread, as the engine runs it
    gemm, rng = make_gemm(args.lanes), np.random.default_rng(0)
    results = {"machine": machine(), "lanes": args.lanes, "tiles": TILES[args.lanes],
               "command": "python -m benchmarks.gemm_tiles " + " ".join(sys.argv[1:]), "shapes": []}
    print("| layout | M x K x N | BLAS | tiles | tiles vs BLAS | quiet rounds |\n|---|---|---|---|---|---|")
    for shape in SHAPES:
        s = run_shape(gemm, shape, args.rounds, rng)
        results["shapes"].append(s)
        print(f"| {s['layout']} | {s['m']} x {s['k']} x {s['n']} | {s['blas']['us']:.0f} us "
              f"({s['blas']['gflops_per_s']:.1f} GFLOP/s) | {s['tiles']['us']:.0f} us "
              f"({s['tiles']['gflops_per_s']:.1f} GFLOP/s) | {s['tiles_vs_blas']:.2f}x | "
              f"{s['quiet_rounds']}/{s['rounds']} |", flush=True)
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()
