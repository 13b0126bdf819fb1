// gemm.cuh: the tiled fp32 GEMM every matrix-product kernel is built on (dense.cu, conv.cu).
//
// gemm_tile computes one TILE_M x TILE_N tile of C (M, Nc) = A (M, K) @ B (K, Nc) with a block of 16 x 16
// threads, 4 x 4 values per thread in registers, stepping over K in TILE_K slices staged in shared memory.
// A and B are operand readers: `(r, c)` returns element (r, c) of the operand, 0 outside it, wherever and
// however it is stored (a row-major matrix, its transpose, a gradient dy act'(y) made as it is read, a window
// of an image for a convolution), and ROW_CONTIGUOUS says whether neighbouring columns are neighbours in
// memory, which orders the loads so that neighbouring threads read neighbouring addresses.
// store_tile hands each of the thread's 16 values that lie inside C to the kernel's epilogue.
// Grid: (ceil(Nc / TILE_N), ceil(M / TILE_M)), block (16, 16).
#pragma once
#include "common.cuh"

#define TILE_M 64
#define TILE_N 64
#define TILE_K 16
#define GEMM_THREADS 256

// Value `at` of an operand stored in v: v[at] itself, or with a gradient activation (act not identity)
// g = v[at] act'(y[at]), dy times the activation's derivative at the forward's output y stored beside it.
__device__ __forceinline__ float read(const float* v, const float* y, long long at, int act, float alpha) {
    return act == ACT_IDENTITY ? v[at] : act_backward(y[at], v[at], act, alpha);
}

// A row-major matrix, element (r, c) at v[r ld + c] (read as above).
struct Rows {
    const float* v;
    const float* y;
    long long ld;
    int act;
    float alpha;
    static constexpr bool ROW_CONTIGUOUS = true;
    __device__ float operator()(int r, int c) const { return read(v, y, r * ld + c, act, alpha); }
};

// The transpose of an operand: element (r, c) is m's (c, r).
template <class M>
struct Transposed {
    M m;
    static constexpr bool ROW_CONTIGUOUS = !M::ROW_CONTIGUOUS;
    __device__ float operator()(int r, int c) const { return m(c, r); }
};

// acc[i][j] = C[row0 + ty * 4 + i, col0 + tx * 4 + j] of this block's tile. With sum_b, the threads of row
// ty == 0 also sum B over all K for their 4 columns (each column owned by one thread: deterministic).
template <class OperandA, class OperandB>
__device__ void gemm_tile(const OperandA& A, const OperandB& B, int M, int Nc, int K, float acc[4][4],
                          float colsum[4], bool sum_b) {
    __shared__ float As[TILE_K][TILE_M + 1];  // +1: a column of stores (kk varying) spreads over the banks
    __shared__ float Bs[TILE_K][TILE_N + 1];
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * 16 + tx;
    const int row0 = blockIdx.y * TILE_M, col0 = blockIdx.x * TILE_N;
    for (int i = 0; i < 4; ++i) {
        colsum[i] = 0.f;
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
    }
    for (int k0 = 0; k0 < K; k0 += TILE_K) {
        // Neighbouring threads take neighbouring k where k runs along memory (A's columns, B's rows), else
        // neighbouring rows of A or columns of B.
        for (int l = tid; l < TILE_K * TILE_M; l += GEMM_THREADS) {
            constexpr bool k_fast = OperandA::ROW_CONTIGUOUS;
            int kk = k_fast ? l % TILE_K : l / TILE_M, mm = k_fast ? l / TILE_K : l % TILE_M;
            int r = row0 + mm, c = k0 + kk;
            As[kk][mm] = (r < M && c < K) ? A(r, c) : 0.f;
        }
        for (int l = tid; l < TILE_K * TILE_N; l += GEMM_THREADS) {
            constexpr bool k_fast = !OperandB::ROW_CONTIGUOUS;
            int kk = k_fast ? l % TILE_K : l / TILE_N, nn = k_fast ? l / TILE_K : l % TILE_N;
            int r = k0 + kk, c = col0 + nn;
            Bs[kk][nn] = (r < K && c < Nc) ? B(r, c) : 0.f;
        }
        __syncthreads();
        for (int kk = 0; kk < TILE_K; ++kk) {
            float a[4], b[4];
            for (int i = 0; i < 4; ++i) a[i] = As[kk][ty * 4 + i];
            for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx * 4 + j];
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
            if (sum_b && ty == 0)
                for (int j = 0; j < 4; ++j) colsum[j] += b[j];
        }
        __syncthreads();
    }
}

// epilogue(r, c, value) for each of this thread's values inside C (M, Nc).
template <class Epilogue>
__device__ __forceinline__ void store_tile(const float acc[4][4], int M, int Nc, Epilogue epilogue) {
    for (int i = 0; i < 4; ++i) {
        int r = blockIdx.y * TILE_M + threadIdx.y * 4 + i;
        for (int j = 0; j < 4; ++j) {
            int c = blockIdx.x * TILE_N + threadIdx.x * 4 + j;
            if (r < M && c < Nc) epilogue(r, c, acc[i][j]);
        }
    }
}
