// gemm.cuh: the tiled fp32 GEMM every matrix-product kernel is built on (dense.cu, conv.cu).
//
// gemm(A, B, M, Nc, K, split, epilogue) computes C (M, Nc) = A (M, K) @ B (K, Nc) and hands each value of C to the
// kernel's epilogue(r, c, value), once (gemm_grouped, at the end of this file: a group of neighbouring values at
// once). A and B are operand readers, which say where and how an operand is stored (a row-major matrix, its
// transpose, a gradient dy act'(y) made as it is read, a window of an image for a convolution) in two halves:
// row(r) and col(c) do the work that depends on the row alone and on the column alone (splitting an index into
// its parts, an offset), and at(row(r), col(c)) joins them into element (r, c) (the bounds of a window, the load).
// A thread of the GEMM reads its share of a tile at the same rows (or the same columns) slice after slice, so it
// makes those halves once, before the K loop, and only the K side's half in the loop. row() and col() are plain
// arithmetic, made for any index; at() is called only inside the operand. ROW_CONTIGUOUS says whether neighbouring
// columns are neighbours in memory, which orders the loads so that neighbouring threads read neighbouring addresses.
// A reader may also step the half on the K side from one slice to the next (STEPS; see Slice): a window's taps
// that divide TILE_K, where the next slice holds the same taps of the next channels, one add instead of a split.
//
// Tile. A block of GEMM_THREADS = 16 x 16 threads computes a TILE_M x TILE_N tile of C, THREAD_M x THREAD_N =
// (TILE_M / 16) x (TILE_N / 16) values a thread, in registers. TILE_M and TILE_N (16, 32, 64 or 128) are fixed
// when the file is compiled (-DTILE_M=.. -DTILE_N=..; 64 x 64 by default): the CUDA backend compiles a module per
// tile shape it uses and picks the shape and the split per product (cupy_cuda.gemm_plan).
// K runs in slices of TILE_K = 16 staged in shared memory, double-buffered: the next slice is read from global
// memory into registers while this one is multiplied, then stored into the other buffer; one barrier a slice.
// Shared rows are padded by 4 floats, which keeps the 16-byte alignment of the multiply's 128-bit reads and
// spreads a column's stores over the banks (2-way conflicts at most). A thread's rows (and columns) come in runs
// of up to 4 consecutive ones, the runs TILE / (THREAD / 4) apart, so the 128-bit reads of a warp cover
// consecutive addresses: no bank conflicts.
//
// Split K. A product with few tiles and a long K is split along K (split.count > 1): the block of split s takes
// an equal share of the K slices and writes its sums to split.partial (count, M, Nc). The last of a tile's blocks
// to finish (reduce.cuh's last_to_arrive, a counter per tile in split.arrivals) adds
// the tile's partials in split order, which fixes the order of the additions whatever order the blocks ran in
// (the same inputs give the same bits), and runs the epilogue. So every element of C has exactly one writer, and
// epilogues may accumulate (`+=`) into their output.
//
// Grid: x = the tile (row tile * column tiles + column tile; blocks past the last tile return at once), z = the
// split (a kernel may fold more into z, as conv.cu does the stride phases, and dense.cu a second product: a pair,
// PAIR_PARAMS); block (16, 16). Sizes: M Nc, M K, K Nc and count M Nc below 2^31 (32-bit index math; the
// launchers check).
#pragma once
#include "common.cuh"
#include "reduce.cuh"

#ifndef TILE_M
#define TILE_M 64
#endif
#ifndef TILE_N
#define TILE_N 64
#endif
#define TILE_K 16
#define GEMM_THREADS 256
// The blocks an SM a kernel asks to hold at once at this tile, given its counts for 128 x 128 and 64 x 64: the
// second argument of its __launch_bounds__, which caps its registers at 64K / (256 x blocks), so 128 at 2 blocks
// and 80 at 3. 0 (and every other tile): no bound, ptxas's own choice; given 1 it lets the small tiles grow from
// 40-57 registers to 90-124. A kernel asks where the cap costs it at most one local load a K slice (benchmarks/
// kernel_loops.py --all-paths counts the spilled bytes): at 128 x 128, 2 blocks instead of 1 for the forward and
// dW products and the gather and phases (dx kernels and the weight gradient spill inside their loops; the gather's
// and the phases' loops that step their K halves reload 7 values a slice, in some 1770 instructions); at 64 x 64,
// 3 for conv.cu's kernels (the phases kernel needs 91 registers unbounded, 2 blocks; the dense ones stay under 64
// unbounded, 4 blocks).
// GEMM_LAUNCH_BOUNDS 0 (-D, the backend's setting of that name) drops them all: an A/B of the bounds alone.
#ifndef GEMM_LAUNCH_BOUNDS
#define GEMM_LAUNCH_BOUNDS 1
#endif
#define GEMM_MIN_BLOCKS(at_128, at_64) \
    (!GEMM_LAUNCH_BOUNDS ? 0 : TILE_M == 128 ? (at_128) : TILE_M == 64 && TILE_N == 64 ? (at_64) : 0)
#define THREAD_M (TILE_M / 16)
#define THREAD_N (TILE_N / 16)
#define SHARED_PAD 4

static_assert(TILE_M == 16 || TILE_M == 32 || TILE_M == 64 || TILE_M == 128, "TILE_M is 16, 32, 64 or 128");
static_assert(TILE_N == 16 || TILE_N == 32 || TILE_N == 64 || TILE_N == 128, "TILE_N is 16, 32, 64 or 128");
static_assert(GEMM_THREADS == 16 * 16, "a GEMM block is 16 x 16 threads");
static_assert(GEMM_THREADS % TILE_K == 0 && GEMM_THREADS % TILE_M == 0 && GEMM_THREADS % TILE_N == 0,
              "a slice's loads map whole rows of threads");

// Value `at` of an operand stored in v: v[at] itself, or with a gradient activation (act not identity)
// g = v[at] act'(y[at]), dy times the activation's derivative at the forward's output y stored beside it.
__device__ __forceinline__ float read(const float* v, const float* y, int at, int act, float alpha) {
    return act == ACT_IDENTITY ? v[at] : act_backward(y[at], v[at], act, alpha);
}

// A row-major matrix, element (r, c) at v[r ld + c] (read as above).
struct Rows {
    const float* v;
    const float* y;
    int ld;
    int act;
    float alpha;
    static constexpr bool ROW_CONTIGUOUS = true;
    using Row = int;  // r ld
    using Col = int;  // c
    __device__ int row(int r) const { return r * ld; }
    __device__ int col(int c) const { return c; }
    __device__ float at(int row, int col) const { return read(v, y, row + col, act, alpha); }
};

// Stepping halves. A reader whose column halves can step declares STEPS = STEPS_COLS and two functions:
// col_steps(), whether col(c + TILE_K) = col_step(col(c)) for every c of this launch, and col_step(), that move
// (STEPS_ROWS, row_steps() and row_step() likewise for rows). Steps<V>::value: what V declares, STEPS_NONE if
// nothing.
enum : int { STEPS_NONE = 0, STEPS_ROWS = 1, STEPS_COLS = 2 };
template <class V, class = void>
struct Steps {
    static constexpr int value = STEPS_NONE;
};
template <class V>
struct Steps<V, decltype(void(V::STEPS))> {
    static constexpr int value = V::STEPS;
};

// The transpose of an operand: element (r, c) is m's (c, r).
template <class M>
struct Transposed {
    M m;
    static constexpr bool ROW_CONTIGUOUS = !M::ROW_CONTIGUOUS;
    static constexpr int STEPS = (Steps<M>::value & STEPS_ROWS ? STEPS_COLS : 0) |
                                 (Steps<M>::value & STEPS_COLS ? STEPS_ROWS : 0);
    using Row = typename M::Col;
    using Col = typename M::Row;
    __device__ Row row(int r) const { return m.col(r); }
    __device__ Col col(int c) const { return m.row(c); }
    __device__ float at(const Row& row, const Col& col) const { return m.at(col, row); }
    __device__ bool col_steps() const { return m.row_steps(); }
    __device__ Col col_step(const Col& col) const { return m.row_step(col); }
};

// An operand with a row of ones below its first `rows` rows (element (rows, c) = 1): the product's row `rows` is
// then the column sums of the other operand, in K order (a bias gradient made beside a weight gradient, in its
// launch). rows = 0: the ones row alone.
template <class M>
struct OnesRow {
    M m;
    int rows;
    static constexpr bool ROW_CONTIGUOUS = M::ROW_CONTIGUOUS;
    struct Row {
        typename M::Row row;
        bool ones;
    };
    using Col = typename M::Col;
    __device__ Row row(int r) const { return {m.row(r), r == rows}; }
    __device__ Col col(int c) const { return m.col(c); }
    __device__ float at(const Row& row, const Col& col) const { return row.ones ? 1.f : m.at(row.row, col); }
};

// Where the blocks of a split product meet (see the header): `count` splits along K, this block's `index`,
// partial (count, M, Nc) sums, arrivals (tiles,) counters.
struct Split {
    float* partial;
    int* arrivals;
    int count, index;
};
#define SPLIT_PARAMS float *__restrict__ partial, int *__restrict__ arrivals, int splits
#define SPLIT Split{partial, arrivals, splits, (int)blockIdx.z % splits}
// Two products in one launch (a layer's weight and input gradients, which read the same gradient): grid z holds
// the first's splits, then the second's, each product its own partial sums and arrival counters; grid x the larger
// tile count (a block past its product's tiles returns at once). The tile shape is the module's, the same for both.
#define PAIR_PARAMS float *__restrict__ partial, int *__restrict__ arrivals, int splits, \
                    float *__restrict__ partial2, int *__restrict__ arrivals2, int splits2
#define IN_FIRST ((int)blockIdx.z < splits)
#define FIRST_SPLIT Split{partial, arrivals, splits, (int)blockIdx.z}
#define SECOND_SPLIT Split{partial2, arrivals2, splits2, (int)blockIdx.z - splits}

// Position in the tile of thread t's value i of its THREAD values along a side TILE long: runs of up to 4.
template <int TILE, int THREAD>
__device__ __forceinline__ int tile_index(int t, int i) {
    constexpr int RUN = THREAD < 4 ? THREAD : 4;
    return i / RUN * (TILE * RUN / THREAD) + t * RUN + i % RUN;
}

// Thread t's THREAD values of a staged row of a slice (TILE + SHARED_PAD floats, 16-byte aligned).
template <int TILE, int THREAD>
__device__ __forceinline__ void read_fragment(const float* row, int t, float* out) {
    constexpr int RUN = THREAD < 4 ? THREAD : 4;
    #pragma unroll
    for (int run = 0; run < THREAD / RUN; ++run) {
        const float* at = row + run * (TILE * RUN / THREAD) + t * RUN;
        if constexpr (RUN == 4) {
            const float4 v = *reinterpret_cast<const float4*>(at);
            out[4 * run] = v.x;
            out[4 * run + 1] = v.y;
            out[4 * run + 2] = v.z;
            out[4 * run + 3] = v.w;
        } else {
            #pragma unroll
            for (int e = 0; e < RUN; ++e) out[run * RUN + e] = at[e];
        }
    }
}

// A thread's share of one TILE x TILE_K slice of an operand View (x, k) (0 outside it): the left operand A itself,
// or the right one seen as Transposed<B>. In registers between its read from global memory and its store into
// shared memory as staged[k][x]. Neighbouring threads take neighbouring k where K runs along memory, else
// neighbouring x. Either way a thread keeps its x (and its k offsets) slice after slice: where K runs along memory
// its LOADS values lie at LOADS x and one k, else at one x and LOADS k. `start` makes the x halves of its elements
// (View::row) once, XS of them; `read` then needs only the k halves of a slice (View::col), KS of them, which it
// keeps. When the view steps them (STEPS, and steady() for this launch), read<true> moves the last slice's k halves
// on by one step each instead of making them anew: a window's bounds then stay the same slice after slice.
template <int TILE, class View>
struct Slice {
    static constexpr bool K_CONTIGUOUS = View::ROW_CONTIGUOUS;
    static constexpr bool STEPS = Steps<View>::value & STEPS_COLS;
    static constexpr int LOADS = TILE * TILE_K / GEMM_THREADS;
    static constexpr int XS = K_CONTIGUOUS ? LOADS : 1;
    static constexpr int KS = K_CONTIGUOUS ? 1 : LOADS;
    float v[LOADS];
    typename View::Row xs[XS];
    bool inside[XS];  // x < extent
    typename View::Col ks[KS];  // the k halves of the slice read last (kept where the view steps them)

    __device__ static int x_of(int l) {  // unsigned: a shift and a mask, no sign fix-ups
        const unsigned at = threadIdx.y * 16 + threadIdx.x + l * GEMM_THREADS;
        return (int)(K_CONTIGUOUS ? at / TILE_K : at % TILE);
    }
    __device__ static int k_of(int l) {
        const unsigned at = threadIdx.y * 16 + threadIdx.x + l * GEMM_THREADS;
        return (int)(K_CONTIGUOUS ? at % TILE_K : at / TILE);
    }

    __device__ void start(const View& view, int x0, int extent) {
        #pragma unroll
        for (int l = 0; l < XS; ++l) {
            const int x = x0 + x_of(l);
            inside[l] = x < extent;
            xs[l] = view.row(x);
        }
    }
    __device__ bool steady(const View& view) const {
        if constexpr (STEPS) return view.col_steps();
        return false;
    }
    // The half of k: the last slice's (`last`) stepped on, or made anew.
    template <bool STEP>
    __device__ typename View::Col k_half(const View& view, const typename View::Col& last, int k) const {
        if constexpr (STEP && STEPS) return view.col_step(last);
        return view.col(k);
    }
    // The slice k0 .. k0 + TILE_K; with STEP, the one after the slice read last.
    template <bool STEP>
    __device__ void read(const View& view, int k0, int K) {
        if constexpr (K_CONTIGUOUS) {  // one k, LOADS x
            const int k = k0 + k_of(0);
            const typename View::Col kc = k_half<STEP>(view, ks[0], k);
            if constexpr (STEPS) ks[0] = kc;
            #pragma unroll
            for (int l = 0; l < LOADS; ++l) v[l] = inside[l] && k < K ? view.at(xs[l], kc) : 0.f;
        } else {  // one x, LOADS k
            #pragma unroll
            for (int l = 0; l < LOADS; ++l) {
                const int k = k0 + k_of(l);
                const typename View::Col kc = k_half<STEP>(view, ks[l], k);
                if constexpr (STEPS) ks[l] = kc;
                v[l] = inside[0] && k < K ? view.at(xs[0], kc) : 0.f;
            }
        }
    }
    __device__ void stage(float (*staged)[TILE + SHARED_PAD]) const {
        #pragma unroll
        for (int l = 0; l < LOADS; ++l) staged[k_of(l)][x_of(l)] = v[l];
    }
};

// The block's shared memory: the double-buffered slices of A and B while it multiplies, then a chunk of C's tile.
#define SHARED_A (2 * TILE_K * (TILE_M + SHARED_PAD))
#define SHARED_FLOATS (SHARED_A + 2 * TILE_K * (TILE_N + SHARED_PAD))
#define CHUNK_ROWS (TILE_M * TILE_N <= SHARED_FLOATS ? TILE_M : TILE_M / 2)  // 128 x 128: two chunks of 64 rows
static_assert(CHUNK_ROWS * TILE_N <= SHARED_FLOATS && (THREAD_M < 8 || CHUNK_ROWS == TILE_M / 2),
              "a chunk of C fits in the slices' memory, and a thread's run of rows lies in one chunk");

// The slices k_begin .. k_end of the operands' views left and right (their x halves made: Slice::start) into acc,
// each slice after the first read with read<STEP>.
template <bool STEP, class Left, class Right>
__device__ void multiply_slices(const Left& left, const Right& right, Slice<TILE_M, Left>& a,
                                Slice<TILE_N, Right>& b, int K, int k_begin, int k_end, float* shared,
                                float acc[THREAD_M][THREAD_N]) {
    auto As = reinterpret_cast<float(*)[TILE_K][TILE_M + SHARED_PAD]>(shared);
    auto Bs = reinterpret_cast<float(*)[TILE_K][TILE_N + SHARED_PAD]>(shared + SHARED_A);
    a.template read<false>(left, k_begin, K);
    b.template read<false>(right, k_begin, K);
    a.stage(As[0]);
    b.stage(Bs[0]);
    __syncthreads();
    const int tx = threadIdx.x, ty = threadIdx.y;
    int buffer = 0;
    for (int k0 = k_begin; k0 < k_end; k0 += TILE_K) {
        const bool more = k0 + TILE_K < k_end;
        if (more) {  // the next slice's global reads are in flight during this slice's multiply
            a.template read<STEP>(left, k0 + TILE_K, K);
            b.template read<STEP>(right, k0 + TILE_K, K);
        }
        #pragma unroll
        for (int kk = 0; kk < TILE_K; ++kk) {
            float x[THREAD_M], y[THREAD_N];
            read_fragment<TILE_M, THREAD_M>(As[buffer][kk], ty, x);
            read_fragment<TILE_N, THREAD_N>(Bs[buffer][kk], tx, y);
            #pragma unroll
            for (int i = 0; i < THREAD_M; ++i)
                #pragma unroll
                for (int j = 0; j < THREAD_N; ++j) acc[i][j] = fmaf(x[i], y[j], acc[i][j]);
        }
        if (more) {  // into the other buffer, which every thread finished reading before the last barrier
            a.stage(As[buffer ^ 1]);
            b.stage(Bs[buffer ^ 1]);
        }
        __syncthreads();
        buffer ^= 1;
    }
}

// acc = the thread's values of the tile at (row0, col0) of A[:, k_begin:k_end] @ B[k_begin:k_end, :].
template <class OperandA, class OperandB>
__device__ void multiply(const OperandA& A, const OperandB& B, int M, int Nc, int K, int row0, int col0, int k_begin,
                         int k_end, float* shared, float acc[THREAD_M][THREAD_N]) {
    #pragma unroll
    for (int i = 0; i < THREAD_M; ++i)
        #pragma unroll
        for (int j = 0; j < THREAD_N; ++j) acc[i][j] = 0.f;
    if (k_begin >= k_end) return;  // an empty split: the same for the whole block
    const OperandA& left = A;              // (x, k) = A (row, k)
    const Transposed<OperandB> right{B};  // (x, k) = B (k, column)
    using SliceA = Slice<TILE_M, OperandA>;
    using SliceB = Slice<TILE_N, Transposed<OperandB>>;
    SliceA a;
    SliceB b;
    a.start(left, row0, M);
    b.start(right, col0, Nc);
    if constexpr (SliceA::STEPS || SliceB::STEPS) {  // the same for the whole block: a copy of the loop that steps
        if ((!SliceA::STEPS || a.steady(left)) && (!SliceB::STEPS || b.steady(right))) {
            multiply_slices<true>(left, right, a, b, K, k_begin, k_end, shared, acc);
            return;
        }
    }
    multiply_slices<false>(left, right, a, b, K, k_begin, k_end, shared, acc);
}

// The tile's rows chunk * CHUNK_ROWS .. + CHUNK_ROWS from the threads' registers into shared memory, row-major
// (CHUNK_ROWS, TILE_N). Every thread must call it; it waits until the memory is free and until the chunk is whole.
__device__ void stage_chunk(const float acc[THREAD_M][THREAD_N], int chunk, float* shared) {
    __syncthreads();  // the slices (or the last chunk) are read: the memory is free
    #pragma unroll
    for (int i = 0; i < THREAD_M; ++i) {  // unrolled: acc stays in registers (an array indexed at run time
        const int row = tile_index<TILE_M, THREAD_M>(threadIdx.y, i) - chunk * CHUNK_ROWS;  // is local memory)
        if (row < 0 || row >= CHUNK_ROWS) continue;
        #pragma unroll
        for (int j = 0; j < THREAD_N; ++j)
            shared[row * TILE_N + tile_index<TILE_N, THREAD_N>(threadIdx.x, j)] = acc[i][j];
    }
    __syncthreads();
}

// fn(r, c, v) for every value v of the tile at (row0, col0) that lies inside C (M, Nc), at C's (r, c). The values go
// from registers through shared memory (a chunk of rows at a time), so that neighbouring threads then handle
// neighbouring columns (coalesced stores) and one copy of fn's code serves them all. Every thread must call it.
template <class Fn>
__device__ void for_each_value(const float acc[THREAD_M][THREAD_N], int M, int Nc, int row0, int col0, float* shared,
                               Fn fn) {
    const int tid = threadIdx.y * 16 + threadIdx.x;
    for (int chunk = 0; chunk < TILE_M / CHUNK_ROWS; ++chunk) {
        stage_chunk(acc, chunk, shared);
        for (int e = tid; e < CHUNK_ROWS * TILE_N; e += GEMM_THREADS) {
            const int r = row0 + chunk * CHUNK_ROWS + e / TILE_N, c = col0 + e % TILE_N;
            if (r < M && c < Nc) fn(r, c, shared[e]);
        }
    }
}

// gemm in the block's shared memory `shared` (SHARED_FLOATS floats, 16-byte aligned): a kernel that runs two
// products (a pair) gives both one array, where gemm's own would be one an instantiation, twice the memory.
template <class OperandA, class OperandB, class Epilogue>
__device__ void gemm_with(float* shared, const OperandA& A, const OperandB& B, int M, int Nc, int K,
                          const Split& split, const Epilogue& epilogue) {
    if (M <= 0 || Nc <= 0) return;
    const int tiles_n = (Nc + TILE_N - 1) / TILE_N, tile = blockIdx.x;
    const int row0 = tile / tiles_n * TILE_M, col0 = tile % tiles_n * TILE_N;
    if (row0 >= M) return;  // past this product's tiles (the grid covers a larger one): the whole block
    const int slices = (K + TILE_K - 1) / TILE_K, per = (slices + split.count - 1) / split.count;
    const int k_begin = min(split.index * per, slices) * TILE_K, k_end = min((split.index + 1) * per * TILE_K, K);
    float acc[THREAD_M][THREAD_N];
    multiply(A, B, M, Nc, K, row0, col0, k_begin, k_end, shared, acc);
    if (split.count == 1) {
        for_each_value(acc, M, Nc, row0, col0, shared, epilogue);
        return;
    }
    for_each_value(acc, M, Nc, row0, col0, shared, [&](int r, int c, float v) {
        split.partial[(split.index * M + r) * Nc + c] = v;
    });
    if (!last_to_arrive(&split.arrivals[tile], split.count)) return;
    for (int e = threadIdx.y * 16 + threadIdx.x; e < TILE_M * TILE_N; e += GEMM_THREADS) {
        const int r = row0 + e / TILE_N, c = col0 + e % TILE_N;
        if (r >= M || c >= Nc) continue;
        float sum = 0.f;
        for (int s = 0; s < split.count; ++s) sum += __ldcg(&split.partial[(s * M + r) * Nc + c]);
        epilogue(r, c, sum);
    }
}

template <class OperandA, class OperandB, class Epilogue>
__device__ void gemm(const OperandA& A, const OperandB& B, int M, int Nc, int K, const Split& split,
                     const Epilogue& epilogue) {
    __shared__ __align__(16) float shared[SHARED_FLOATS];
    gemm_with(shared, A, B, M, Nc, K, split, epilogue);
}

// Grouped columns (a maxout unit's pieces): gemm_grouped computes C (M, groups group) = A @ B like gemm, but hands
// its epilogue whole groups of `group` (<= TILE_N) neighbouring columns: fn(r, g, v) with v[0 .. group) the values
// C (r, g group ...), in shared memory. A tile owns TILE_N / group whole groups (it multiplies TILE_N columns and
// drops the rest), so no group straddles two tiles: the grid has ceil(groups / (TILE_N / group)) column tiles. A
// split product's blocks write their owned columns' partial sums; the last one stages the sums and runs fn.
template <class OperandA, class OperandB, class Epilogue>
__device__ void gemm_grouped(const OperandA& A, const OperandB& B, int M, int groups, int group, int K,
                             const Split& split, const Epilogue& epilogue) {
    __shared__ __align__(16) float shared[SHARED_FLOATS];
    const int Nc = groups * group, per_tile = TILE_N / group;
    if (M <= 0 || Nc <= 0 || per_tile == 0) return;
    const int tiles_n = (groups + per_tile - 1) / per_tile, tile = blockIdx.x;
    const int row0 = tile / tiles_n * TILE_M, g0 = tile % tiles_n * per_tile, col0 = g0 * group;
    if (row0 >= M) return;  // past this product's tiles: the whole block
    const int slices = (K + TILE_K - 1) / TILE_K, per = (slices + split.count - 1) / split.count;
    const int k_begin = min(split.index * per, slices) * TILE_K, k_end = min((split.index + 1) * per * TILE_K, K);
    float acc[THREAD_M][THREAD_N];
    multiply(A, B, M, Nc, K, row0, col0, k_begin, k_end, shared, acc);
    if (split.count > 1) {
        for_each_value(acc, M, min(Nc, col0 + per_tile * group), row0, col0, shared, [&](int r, int c, float v) {
            split.partial[(split.index * M + r) * Nc + c] = v;
        });
        if (!last_to_arrive(&split.arrivals[tile], split.count)) return;
    }
    const int tid = threadIdx.y * 16 + threadIdx.x;
    for (int chunk = 0; chunk < TILE_M / CHUNK_ROWS; ++chunk) {
        if (split.count == 1) {
            stage_chunk(acc, chunk, shared);
        } else {  // the partials summed in split order, as gemm's last block does
            __syncthreads();
            for (int e = tid; e < CHUNK_ROWS * TILE_N; e += GEMM_THREADS) {
                const int r = row0 + chunk * CHUNK_ROWS + e / TILE_N, c = col0 + e % TILE_N;
                float sum = 0.f;
                if (r < M && e % TILE_N < per_tile * group && c < Nc)
                    for (int s = 0; s < split.count; ++s) sum += __ldcg(&split.partial[(s * M + r) * Nc + c]);
                shared[e] = sum;
            }
            __syncthreads();
        }
        for (int e = tid; e < CHUNK_ROWS * per_tile; e += GEMM_THREADS) {
            const int row = e / per_tile, g = e % per_tile, r = row0 + chunk * CHUNK_ROWS + row;
            if (r < M && g0 + g < groups) epilogue(r, g0 + g, shared + row * TILE_N + g * group);
        }
    }
}
