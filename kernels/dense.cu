// dense.cu: the dense layer, fp32, row-major arrays.
//
//   dense_forward_kernel      y (N, O) = act(x (N, I) @ W (I, O) + b (O,))          NN GEMM, bias + activation
//                                                                                  in the epilogue
//   dense_backward_dw_kernel  dW (I, O) += x^T g, db (O,) += 1^T g                  TN GEMM [dW; db] += [x^T; 1] g
//                                                                                  (gemm.cuh's OnesRow), either
//                                                                                  alone; g = dy act'(y) is made
//                                                                                  as g's tiles are read
//   dense_backward_dx_kernel  dx (N, I) = g (N, O) @ W^T (O, I), g = dy act'(y)     NT GEMM, g made on read
//
// The maxout layer (a unit's pieces are W's columns u * pieces + p):
//   maxout_forward_kernel      y (N, U) = max_p (x W + b), argmax (N, U) the first piece reaching it (NaN wins):
//                              gemm_grouped, a unit's pieces side by side in the epilogue (z is never stored)
//   maxout_backward_dw_kernel  dW (I, U pieces) += x^T g,    TN GEMM [dW; db] += [x^T; 1] g, either alone; g
//                              db (U pieces) += 1^T g        (N, U pieces), dy at each unit's winning piece and 0
//                                                            elsewhere, is made as g's tiles are read
//   maxout_backward_dx_kernel  dx (N, I) = g W^T             NT GEMM, g made on read
// A layer's weight and input gradients in one launch (gemm.cuh's pair: grid z the first's splits, then dx's):
//   dense_backward_kernel      dense_backward_dw_kernel's product, then dense_backward_dx_kernel's
//   maxout_backward_kernel     maxout_backward_dw_kernel's, then maxout_backward_dx_kernel's
// The weight gradient kernels' has_dw and has_db say which they write (the other pointer is not touched): C is
// (has_dw I + has_db, columns), its last row the bias gradient, each column's sum in batch order (split products:
// the splits' sums in split order).
// Every kernel is gemm.cuh's GEMM C (M, Nc) = A (M, K) @ B (K, Nc), split along K when the launcher says so.
// Grid (tiles, 1, splits), block (16, 16); see gemm.cuh.
// The blocks of a launch count their arrivals on one counter (reduce.cuh's last_to_arrive):
// emulator: shared_writes dense_forward_kernel arrivals
// emulator: shared_writes dense_backward_dw_kernel arrivals
// emulator: shared_writes dense_backward_dx_kernel arrivals
// emulator: shared_writes maxout_forward_kernel arrivals
// emulator: shared_writes maxout_backward_dw_kernel arrivals
// emulator: shared_writes maxout_backward_dx_kernel arrivals
// emulator: shared_writes dense_backward_kernel arrivals
// emulator: shared_writes dense_backward_kernel arrivals2
// emulator: shared_writes maxout_backward_kernel arrivals
// emulator: shared_writes maxout_backward_kernel arrivals2
#include "gemm.cuh"

// A weight gradient kernel's left operand [x^T; 1] (rows + 1, N), x (N, I) (rows: I, or 0 for db alone), and its
// epilogue: row r of C into dW (rows, columns) while r < rows, the ones row into db (columns,).
__device__ __forceinline__ OnesRow<Transposed<Rows>> inputs_and_ones(const float* x, int I, int rows) {
    return {{{x, x, I, ACT_IDENTITY, 0.f}}, rows};
}

struct WeightGradStore {
    float* dW;
    float* db;
    int rows, columns;
    __device__ void operator()(int r, int c, float v) const {
        if (r < rows) dW[r * columns + c] += v;
        else db[c] += v;
    }
};

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, GEMM_MIN_BLOCKS(2, 0))
dense_forward_kernel(const float* __restrict__ x, const float* __restrict__ W, const float* __restrict__ b,
                     float* __restrict__ y, int N, int I, int O, int act, float alpha, SPLIT_PARAMS) {
    gemm(Rows{x, x, I, ACT_IDENTITY, 0.f}, Rows{W, W, O, ACT_IDENTITY, 0.f}, N, O, I, SPLIT,
         [&](int r, int c, float v) { y[r * O + c] = act_forward(v + b[c], act, alpha); });
}

// The products of the backward kernels, in the block's shared memory `shared` (gemm.cuh's gemm_with).
__device__ void dense_weight_grads(float* shared, const float* x, const float* y, const float* dy, float* dW,
                                   float* db, int N, int I, int O, int has_dw, int has_db, int act, float alpha,
                                   const Split& split) {
    // C = [dW; db] (rows + has_db, O), A = [x^T; 1] read from x (N, I), B = g (N, O), K = N.
    const int rows = has_dw ? I : 0;
    gemm_with(shared, inputs_and_ones(x, I, rows), Rows{dy, y, O, act, alpha}, rows + has_db, O, N, split,
              WeightGradStore{dW, db, rows, O});
}

__device__ void dense_input_grad(float* shared, const float* y, const float* dy, const float* W, float* dx, int N,
                                 int I, int O, int act, float alpha, const Split& split) {
    // C = dx (N, I), A = g (N, O), B = W^T (O, I) read from W (I, O), K = O.
    gemm_with(shared, Rows{dy, y, O, act, alpha}, Transposed<Rows>{{W, W, O, ACT_IDENTITY, 0.f}}, N, I, O, split,
              [&](int r, int c, float v) { dx[r * I + c] = v; });
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, GEMM_MIN_BLOCKS(2, 0))
dense_backward_dw_kernel(const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ dy,
                         float* __restrict__ dW, float* __restrict__ db, int N, int I, int O, int has_dw,
                         int has_db, int act, float alpha, SPLIT_PARAMS) {
    __shared__ __align__(16) float shared[SHARED_FLOATS];
    dense_weight_grads(shared, x, y, dy, dW, db, N, I, O, has_dw, has_db, act, alpha, SPLIT);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
dense_backward_dx_kernel(const float* __restrict__ y, const float* __restrict__ dy, const float* __restrict__ W,
                         float* __restrict__ dx, int N, int I, int O, int act, float alpha, SPLIT_PARAMS) {
    __shared__ __align__(16) float shared[SHARED_FLOATS];
    dense_input_grad(shared, y, dy, W, dx, N, I, O, act, alpha, SPLIT);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
dense_backward_kernel(const float* __restrict__ x, const float* __restrict__ y, const float* __restrict__ dy,
                      const float* __restrict__ W, float* __restrict__ dW, float* __restrict__ db,
                      float* __restrict__ dx, int N, int I, int O, int has_dw, int has_db, int act, float alpha,
                      PAIR_PARAMS) {
    __shared__ __align__(16) float shared[SHARED_FLOATS];
    if (IN_FIRST) dense_weight_grads(shared, x, y, dy, dW, db, N, I, O, has_dw, has_db, act, alpha, FIRST_SPLIT);
    else dense_input_grad(shared, y, dy, W, dx, N, I, O, act, alpha, SECOND_SPLIT);
}

// The maxout gradient as an operand: element (r, c) of g (N, U pieces) is dy (N, U) at (r, c / pieces) when
// c % pieces is that unit's argmax, else 0.
struct MaxoutGrad {
    const float* dy;
    const int* argmax;
    int units;
    Divisor pieces;
    static constexpr bool ROW_CONTIGUOUS = true;
    using Row = int;  // r units
    struct Col {
        int unit, piece;
    };
    __device__ int row(int r) const { return r * units; }
    __device__ Col col(int c) const {
        unsigned p;
        const int u = pieces.divmod(c, p);
        return {u, (int)p};
    }
    __device__ float at(int row, const Col& col) const {
        const int at = row + col.unit;
        return argmax[at] == col.piece ? dy[at] : 0.f;
    }
};

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, GEMM_MIN_BLOCKS(2, 0))
maxout_forward_kernel(const float* __restrict__ x, const float* __restrict__ W, const float* __restrict__ b,
                      float* __restrict__ y, int* __restrict__ argmax, int N, int I, int units, int pieces,
                      SPLIT_PARAMS) {
    // C = z (N, U pieces) = x W, K = I; the epilogue gets a unit's pieces z[n, u pieces ...] together.
    gemm_grouped(Rows{x, x, I, ACT_IDENTITY, 0.f}, Rows{W, W, units * pieces, ACT_IDENTITY, 0.f}, N, units, pieces, I,
                 SPLIT, [&](int r, int u, const float* z) {
                     const float* bias = b + u * pieces;
                     float best = z[0] + bias[0];
                     int arg = 0;
                     for (int p = 1; p < pieces; ++p) {
                         const float v = z[p] + bias[p];
                         if (v > best || (v != v && best == best)) {
                             best = v;
                             arg = p;
                         }
                     }
                     y[r * units + u] = best;
                     argmax[r * units + u] = arg;
                 });
}

__device__ void maxout_weight_grads(float* shared, const float* x, const float* dy, const int* argmax, float* dW,
                                    float* db, int N, int I, int units, int pieces, int has_dw, int has_db,
                                    const Split& split) {
    // C = [dW; db] (rows + has_db, U pieces), A = [x^T; 1] read from x (N, I), B = g (N, U pieces), K = N.
    const int width = units * pieces, rows = has_dw ? I : 0;
    gemm_with(shared, inputs_and_ones(x, I, rows), MaxoutGrad{dy, argmax, units, Divisor(pieces)}, rows + has_db,
              width, N, split, WeightGradStore{dW, db, rows, width});
}

__device__ void maxout_input_grad(float* shared, const float* dy, const int* argmax, const float* W, float* dx, int N,
                                  int I, int units, int pieces, const Split& split) {
    // C = dx (N, I), A = g (N, U pieces), B = W^T (U pieces, I) read from W (I, U pieces), K = U pieces.
    const int width = units * pieces;
    gemm_with(shared, MaxoutGrad{dy, argmax, units, Divisor(pieces)}, Transposed<Rows>{{W, W, width, ACT_IDENTITY,
              0.f}}, N, I, width, split, [&](int r, int c, float v) { dx[r * I + c] = v; });
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, GEMM_MIN_BLOCKS(2, 0))
maxout_backward_dw_kernel(const float* __restrict__ x, const float* __restrict__ dy, const int* __restrict__ argmax,
                          float* __restrict__ dW, float* __restrict__ db, int N, int I, int units, int pieces,
                          int has_dw, int has_db, SPLIT_PARAMS) {
    __shared__ __align__(16) float shared[SHARED_FLOATS];
    maxout_weight_grads(shared, x, dy, argmax, dW, db, N, I, units, pieces, has_dw, has_db, SPLIT);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
maxout_backward_dx_kernel(const float* __restrict__ dy, const int* __restrict__ argmax, const float* __restrict__ W,
                          float* __restrict__ dx, int N, int I, int units, int pieces, SPLIT_PARAMS) {
    __shared__ __align__(16) float shared[SHARED_FLOATS];
    maxout_input_grad(shared, dy, argmax, W, dx, N, I, units, pieces, SPLIT);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
maxout_backward_kernel(const float* __restrict__ x, const float* __restrict__ dy, const int* __restrict__ argmax,
                       const float* __restrict__ W, float* __restrict__ dW, float* __restrict__ db,
                       float* __restrict__ dx, int N, int I, int units, int pieces, int has_dw, int has_db,
                       PAIR_PARAMS) {
    __shared__ __align__(16) float shared[SHARED_FLOATS];
    if (IN_FIRST) maxout_weight_grads(shared, x, dy, argmax, dW, db, N, I, units, pieces, has_dw, has_db, FIRST_SPLIT);
    else maxout_input_grad(shared, dy, argmax, W, dx, N, I, units, pieces, SECOND_SPLIT);
}
