// dense.cu: the dense layer, fp32, row-major arrays.
//
//   dense_forward_kernel      y (N, O) = act(x (N, I) @ W (I, O) + b (O,))          NN GEMM, bias + activation
//                                                                                  in the epilogue
//   dense_backward_dw_kernel  dW (I, O) += x^T g, db (O,) += sum_n g                TN GEMM; g = dy act'(y) is
//                                                                                  made as g's tiles are loaded,
//                                                                                  db summed from those tiles
//   dense_backward_dx_kernel  dx (N, I) = g (N, O) @ W^T (O, I), g = dy act'(y)     NT GEMM, g made on load
//
// Every kernel is one tiled GEMM C (M, Nc) = A (M, K) @ B (K, Nc): a block of 16 x 16 threads computes a
// TILE_M x TILE_N tile of C, 4 x 4 values per thread in registers, stepping over K in TILE_K slices staged in
// shared memory. Any sizes work (loads past an edge read 0, stores past an edge are skipped).
// Grid: (ceil(Nc / TILE_N), ceil(M / TILE_M)), block (16, 16).
#include "common.cuh"

#define TILE_M 64
#define TILE_N 64
#define TILE_K 16
#define THREADS 256

// How an operand element (r, c) is read from memory with leading dimension ld.
#define PLAIN 0       // stored as it is used: p[r * ld + c]
#define TRANSPOSED 1  // stored transposed: p[c * ld + r]
#define GRADIENT 2    // g = dy act'(y), both stored as used: act_backward(y[r * ld + c], p[r * ld + c])

template <int KIND>
__device__ __forceinline__ float load(const float* p, const float* y, int r, int c, int ld, int act, float alpha) {
    if (KIND == TRANSPOSED) return p[(long long)c * ld + r];
    if (KIND == GRADIENT) {
        long long i = (long long)r * ld + c;
        return act_backward(y[i], p[i], act, alpha);
    }
    return p[(long long)r * ld + c];
}

// acc[i][j] = C[row0 + ty * 4 + i, col0 + tx * 4 + j] of this block's tile. With sum_b, the threads of
// row ty == 0 also sum B over all K for their 4 columns (each column owned by one thread: deterministic).
template <int KIND_A, int KIND_B>
__device__ void gemm_tile(const float* A, const float* A_y, const float* B, const float* B_y, int M, int Nc, int K,
                          int lda, int ldb, int act, float alpha, float acc[4][4], float colsum[4], bool sum_b) {
    __shared__ float As[TILE_K][TILE_M + 1];  // +1: a column of stores (kk varying) spreads over the banks
    __shared__ float Bs[TILE_K][TILE_N + 1];
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * 16 + tx;
    const int row0 = blockIdx.y * TILE_M, col0 = blockIdx.x * TILE_N;
    for (int i = 0; i < 4; ++i) {
        colsum[i] = 0.f;
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
    }
    for (int k0 = 0; k0 < K; k0 += TILE_K) {
        // Neighbouring threads take neighbouring addresses: along k for A stored as used (and for B stored
        // transposed), along the tile's rows or columns otherwise.
        for (int l = tid; l < TILE_K * TILE_M; l += THREADS) {
            bool k_fast = KIND_A != TRANSPOSED;
            int kk = k_fast ? l % TILE_K : l / TILE_M, mm = k_fast ? l / TILE_K : l % TILE_M;
            int r = row0 + mm, c = k0 + kk;
            As[kk][mm] = (r < M && c < K) ? load<KIND_A>(A, A_y, r, c, lda, act, alpha) : 0.f;
        }
        for (int l = tid; l < TILE_K * TILE_N; l += THREADS) {
            bool k_fast = KIND_B == TRANSPOSED;
            int kk = k_fast ? l % TILE_K : l / TILE_N, nn = k_fast ? l / TILE_K : l % TILE_N;
            int r = k0 + kk, c = col0 + nn;
            Bs[kk][nn] = (r < K && c < Nc) ? load<KIND_B>(B, B_y, r, c, ldb, act, alpha) : 0.f;
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

// How a block writes its tile of C (M, Nc), row-major: C = acc, C += acc, or C = act(acc + b[column]).
#define STORE 0
#define ACCUMULATE 1
#define BIAS_ACTIVATION 2

template <int MODE>
__device__ __forceinline__ void store_tile(float* C, const float acc[4][4], int M, int Nc, const float* b, int act,
                                           float alpha) {
    for (int i = 0; i < 4; ++i) {
        int r = blockIdx.y * TILE_M + threadIdx.y * 4 + i;
        for (int j = 0; j < 4; ++j) {
            int c = blockIdx.x * TILE_N + threadIdx.x * 4 + j;
            if (r >= M || c >= Nc) continue;
            long long at = (long long)r * Nc + c;
            if (MODE == BIAS_ACTIVATION) C[at] = act_forward(acc[i][j] + b[c], act, alpha);
            else if (MODE == ACCUMULATE) C[at] += acc[i][j];
            else C[at] = acc[i][j];
        }
    }
}

extern "C" __global__ void __launch_bounds__(THREADS)
dense_forward_kernel(const float* __restrict__ x, const float* __restrict__ W, const float* __restrict__ b,
                     float* __restrict__ y, int N, int I, int O, int act, float alpha) {
    float acc[4][4], unused[4];
    gemm_tile<PLAIN, PLAIN>(x, nullptr, W, nullptr, N, O, I, I, O, act, alpha, acc, unused, false);
    store_tile<BIAS_ACTIVATION>(y, acc, N, O, b, act, alpha);
}

extern "C" __global__ void __launch_bounds__(THREADS)
dense_backward_dw_kernel(const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ dy,
                         float* __restrict__ dW, float* __restrict__ db, int N, int I, int O, int act, float alpha,
                         int want_db) {
    // C = dW (I, O), A = x^T (I, N) read from x (N, I), B = g (N, O), K = N.
    float acc[4][4], colsum[4];
    bool sum_b = want_db && blockIdx.y == 0;  // one row of blocks sums g's columns for db
    gemm_tile<TRANSPOSED, GRADIENT>(x, nullptr, dy, y, I, O, N, I, O, act, alpha, acc, colsum, sum_b);
    store_tile<ACCUMULATE>(dW, acc, I, O, nullptr, act, alpha);
    if (sum_b && threadIdx.y == 0)
        for (int j = 0; j < 4; ++j) {
            int c = blockIdx.x * TILE_N + threadIdx.x * 4 + j;
            if (c < O) db[c] += colsum[j];
        }
}

extern "C" __global__ void __launch_bounds__(THREADS)
dense_backward_dx_kernel(const float* __restrict__ y, const float* __restrict__ dy, const float* __restrict__ W,
                         float* __restrict__ dx, int N, int I, int O, int act, float alpha) {
    // C = dx (N, I), A = g (N, O), B = W^T (O, I) read from W (I, O), K = O.
    float acc[4][4], unused[4];
    gemm_tile<GRADIENT, TRANSPOSED>(dy, y, W, nullptr, N, I, O, O, O, act, alpha, acc, unused, false);
    store_tile<STORE>(dx, acc, N, I, nullptr, act, alpha);
}
