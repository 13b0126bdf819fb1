"""The CUDA backend: the reference's ops as the hand-written CUDA C kernels of `kernels/*.cu`, launched through
CuPy. fp32 only.

Each .cu file is compiled once per process and device (`cupy.RawModule(code=...)`, CuPy's NVRTC). The
launchers here check dtype, layout and shape, then compute the grid the kernel's header comment asks for;
they never synchronise the device, so losses stay on the GPU until someone reads them.

Random numbers come from Philox4x32-10 (random.cu), whose key and counter live in a device array: `new_rng`
returns that array, and every draw advances the counter on the device. The streams differ from the CPU
backends' (NumPy's PCG64); a seed still reproduces a run on this backend.

Every matrix product (dense layers, convolutions as implicit GEMMs) runs on gemm.cuh's GEMM, whose tile shape and
split along K `gemm_plan` chooses per product from a model of its speed; batch norm is a block per channel.
The kernels index with 32-bit integers: every array holds fewer than 2^31 values (checked).
"""
import functools
import math
from collections import namedtuple

import numpy as np

from .. import kernels
from ..errors import GanEngineError
from .numpy_ref import ACTIVATIONS, PRIORS, _pair, conv2d_output_size, conv_transpose2d_output_size

try:
    import cupy as cp
    _IMPORT_ERROR = None
except ImportError as exc:
    cp, _IMPORT_ERROR = None, exc

name = "cuda"
xp = cp
DTYPES = (np.float32,)  # the kernels are fp32; float64 models stay on the CPU backends
RANDOM_STREAM = "philox4x32_10"  # not NumPy's PCG64: the same seed draws other numbers than on the CPU

THREADS = kernels.constant("REDUCE_THREADS")   # reduce.cuh; also the elementwise kernels' block
GEMM_BLOCK = (16, 16)                           # gemm.cuh: GEMM_THREADS = 16 x 16
assert GEMM_BLOCK[0] * GEMM_BLOCK[1] == kernels.constant("GEMM_THREADS")
TILE_K = kernels.constant("TILE_K")
BCE_MAX_BLOCKS = kernels.constant("BCE_MAX_BLOCKS")
THIN_CHANNELS = kernels.constant("THIN_CHANNELS")  # conv.cu: window_scatter_thin_kernel's most big channels
VALUES_PER_THREAD = 4   # random.cu: one Philox block gives 4 values
MAX_VALUES = 2 ** 31 - 1  # the kernels' 32-bit index math
MAX_PARTIAL = 2 ** 24     # values of a split product's partial sums (64 MB)
MIN_CHUNK = 2048          # values of a channel reduction's block, at least (8 a thread)
GEMM_LAUNCH_BOUNDS = 1  # gemm.cuh: the GEMM kernels' blocks an SM asked of ptxas (0: none; kernel_ab --set)
BATCHNORM_ONE_LAUNCH = 1  # a channel in one chunk: statistics and normalisation in one launch, sums and dx in one
GEMM_PAIRS = 1  # a dense or maxout layer's weight and input gradients in one launch where both are wanted (0: two)
MAX_GRID_Z = 65535        # CUDA's limit on grid.y and grid.z (splits x layers, chunks); grid.x holds the tiles

# gemm.cuh's tile shapes (TILE_M, TILE_N) and a model of their speed on a Hopper-class GPU (H100 / H200: 132 SMs
# near 1.98 GHz): microseconds for one block to multiply one TILE_K-deep slice alone on an SM, and per block per
# slice when the SM runs several together (the larger of the two counts). Fitted to every plan of the products of
# five training steps timed on an H200 (python -m benchmarks.gemm_plans, then --fit; benchmarks/results/
# gpu-h200-2026-11-28-gemm-plans/): 1525 plans of 72 products, whose times the model misses by 32% (root mean
# square of the log ratios), but whose fastest plans it mostly finds (the plans it picks take 4% more in all).
GEMM_TILES = {
    (128, 128): (2.66, 3.84),
    (64, 64): (1.34, 1.00),
    (32, 32): (0.52, 0.28),
    (16, 64): (0.67, 0.40),
    (64, 16): (0.55, 0.30),
}
# Blocks of 256 threads an SM holds at once, per gemm.cuh kernel and tile shape in GEMM_TILES' order: 64K
# registers an SM over the registers a thread that the driver reported on the same H200 (sm_90, NVRTC 13.0). The
# phases kernel at 64x64 holds 3 since its launch bounds (gemm.cuh's GEMM_MIN_BLOCKS; 2 at 109 registers before),
# but its entry stays 2 until a GPU run refits the model (benchmarks/gemm_plans.py): with 3 the model picks split
# 2 for the 28x28 DCGAN's phase products, the split the H200 measured slowest at 2 blocks an SM (82 us, where 4
# took 77 and 1 took 68); with b71b663's plans, its steps and these compare kernels and launches, not plans.
GEMM_BLOCKS_PER_SM = {
    "dense_forward_kernel": (1, 3, 5, 5, 4),
    "dense_backward_dw_kernel": (1, 3, 6, 5, 5),
    "dense_backward_dx_kernel": (1, 3, 5, 4, 4),
    "maxout_forward_kernel": (1, 3, 5, 4, 4),
    "maxout_backward_dw_kernel": (1, 2, 5, 4, 5),
    "maxout_backward_dx_kernel": (1, 3, 8, 5, 5),
    "window_gather_kernel": (1, 3, 5, 5, 4),
    "window_scatter_phases_kernel": (1, 2, 4, 3, 3),
    "window_weight_grad_kernel": (1, 3, 6, 5, 5),
    # not timed yet: the fewer of its two products' kernels' and of its own registers' count (nvcc 13.0, sm_90)
    "dense_backward_kernel": (1, 3, 5, 4, 4),
    "maxout_backward_kernel": (1, 2, 5, 4, 5),
    "conv2d_backward_kernel": (1, 2, 4, 3, 3),
    "conv_transpose2d_backward_kernel": (1, 3, 5, 5, 4),
}
DEFAULT_GEMM_KERNEL = "dense_forward_kernel"  # whose blocks an SM a plan assumes when no kernel is named
# (kernel, tile) -> a K slice's time over GEMM_TILES' for that kernel's loop; none here, so 1. The benchmarks set
# it: gemm_plans --fit --loops to fit slice times to the loops' instructions, perf_model --loops to predict loops
# changed since the fit.
GEMM_SLICE_SCALE = {}
MAX_PIECES = max(n for _, n in GEMM_TILES)  # maxout's pieces a unit: they must fit in a tile's columns
SPLIT_WAVE_US = 2.5       # a split product's extra per wave of blocks: partial sums out, arrivals counted
FIXUP_BYTES_PER_US = 3.8e4  # the last block of a split tile reads the partials at about 38 GB/s (one SM)
DEFAULT_MULTIPROCESSORS = 132

_modules = {}
_buffers = {}  # (device, name) -> device buffers the launchers keep (a dummy argument, split-K workspaces)
_multiprocessor_counts = {}  # device -> its SM count


def unavailable_reason():
    """None when CuPy imports and sees a CUDA device; otherwise why not."""
    if cp is None:
        return f"CuPy is not installed ({_IMPORT_ERROR}); pip install -e '.[cuda12]' or '.[cuda13]'"
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except cp.cuda.runtime.CUDARuntimeError as exc:
        return f"no usable CUDA device ({exc})"
    return None if count > 0 else "no CUDA device"


# ---- launch geometry and checks (pure functions, tested without a GPU) ----------------------------------------

class GemmPlan(namedtuple("GemmPlan", "tile splits tiles us")):
    """How gemm.cuh computes one product: the tile shape (TILE_M, TILE_N), the split along K, the tiles of C and
    the modelled microseconds."""


def gemm_schedule(m, n, k, tile, splits, layers=1, multiprocessors=DEFAULT_MULTIPROCESSORS,
                  kernel=DEFAULT_GEMM_KERNEL):
    """(waves, blocks an SM runs together, K slices a block) of gemm.cuh's C (m, n) = A (m, k) @ B (k, n),
    `layers` such products side by side (grid z), with tile shape `tile` and `splits` splits along K, by `kernel`
    (GEMM_BLOCKS_PER_SM)."""
    resident = GEMM_BLOCKS_PER_SM[kernel][list(GEMM_TILES).index(tile)]
    per_sm = math.ceil(math.ceil(m / tile[0]) * math.ceil(n / tile[1]) * splits * layers / multiprocessors)
    return math.ceil(per_sm / resident), min(per_sm, resident), math.ceil(math.ceil(k / TILE_K) / splits)


def gemm_time(m, n, k, tile, splits, layers=1, multiprocessors=DEFAULT_MULTIPROCESSORS, kernel=DEFAULT_GEMM_KERNEL):
    """Modelled microseconds of that product (gemm_schedule's waves, GEMM_TILES' slice times scaled by
    GEMM_SLICE_SCALE; launch cost left out)."""
    alone, saturated = GEMM_TILES[tile]
    waves, together, slices = gemm_schedule(m, n, k, tile, splits, layers, multiprocessors, kernel)
    us = waves * slices * max(alone, together * saturated) * GEMM_SLICE_SCALE.get((kernel, tile), 1.0)
    if splits > 1:
        us += waves * SPLIT_WAVE_US + splits * tile[0] * tile[1] * 4 / FIXUP_BYTES_PER_US
    return us


def column_tiles(n, tile_n, group=1):
    """gemm.cuh's column tiles of C (., n): a tile covers tile_n columns, or with columns in groups of `group`
    (gemm_grouped) the tile_n // group whole groups it owns."""
    return math.ceil(n / group / (tile_n // group))


def gemm_plans(m, n, k, layers=1, multiprocessors=DEFAULT_MULTIPROCESSORS, group=1, kernel=DEFAULT_GEMM_KERNEL):
    """Every GemmPlan gemm_plan weighs for C (m, n) = A (m, k) @ B (k, n), `layers` products side by side, by
    `kernel`, with its modelled time: every tile of GEMM_TILES (at least `group` columns wide: gemm_grouped's
    groups of columns), larger tiles first, and splits 1, 2, 4, ... up to the K slices (MAX_PARTIAL partial sums,
    MAX_GRID_Z splits x layers)."""
    slices = max(1, math.ceil(k / TILE_K))
    for tile in sorted((t for t in GEMM_TILES if t[1] >= group), key=lambda t: -t[0] * t[1]):
        covered = column_tiles(n, tile[1], group) * tile[1]  # the columns the tiles multiply
        tiles = max(1, math.ceil(m / tile[0]) * column_tiles(n, tile[1], group))
        splits = 1
        while splits == 1 or (splits <= slices and splits * m * n * layers <= MAX_PARTIAL
                              and splits * layers <= MAX_GRID_Z):
            yield GemmPlan(tile, splits, tiles, gemm_time(m, covered, k, tile, splits, layers, multiprocessors, kernel))
            splits *= 2


@functools.lru_cache(maxsize=4096)
def gemm_plan(m, n, k, layers=1, multiprocessors=DEFAULT_MULTIPROCESSORS, group=1, kernel=DEFAULT_GEMM_KERNEL):
    """The GemmPlan of gemm_plans with the least modelled time. Ties go to fewer splits, then to the larger tile.
    Deterministic for a shape and a GPU: so are the sums' bits."""
    best = None
    for plan in gemm_plans(m, n, k, layers, multiprocessors, group, kernel):
        if best is None or plan.us < best.us * (1 - 1e-9):
            best = plan
    return best


def elementwise_grid(n, per_thread=1):
    """A 1-D grid of THREADS-thread blocks covering n values, `per_thread` values per thread."""
    return (max(1, math.ceil(n / (THREADS * per_thread))),)


def check_array(label, a, shape=None, dtype=np.float32):
    """Raise ValueError unless `a` is a C-contiguous array of `dtype` (and `shape`, when given) of fewer than 2^31
    values. Returns a."""
    if not hasattr(a, "dtype") or not hasattr(a, "flags"):
        raise ValueError(f"{label} must be a device array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise ValueError(f"{label} must be {np.dtype(dtype).name} (the CUDA kernels are fp32), got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{label} must be C-contiguous")
    if shape is not None and tuple(a.shape) != tuple(shape):
        raise ValueError(f"{label} has shape {tuple(a.shape)}, expected {tuple(shape)}")
    if a.size > MAX_VALUES:
        raise ValueError(f"{label} has {a.size} values; the CUDA kernels index with 32-bit integers, so at most "
                         f"{MAX_VALUES}: use a smaller batch")
    return a


def activation_code(activation):
    """The kernels' integer code of an activation name (common.cuh)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {ACTIVATIONS}")
    return ACTIVATIONS.index(activation)


# ---- arrays and random state ---------------------------------------------------------------------------------

def asarray(a, dtype=None):
    """Host or device array -> device array (copied only if needed)."""
    return cp.asarray(a, dtype=dtype)


def to_numpy(a):
    """Device array -> host NumPy array (synchronises)."""
    return cp.asnumpy(a)


def new_rng(seed):
    """The Philox state: a device array (2,) uint64 holding the key (the seed) and the counter (0)."""
    return cp.asarray(np.array([int(seed) % 2 ** 64, 0], dtype=np.uint64))


def rng_state(rng):
    """A JSON-serialisable snapshot of the Philox key and counter."""
    key, counter = (int(v) for v in cp.asnumpy(rng))
    return {"bit_generator": "philox4x32_10", "key": key, "counter": counter}


def set_rng_state(rng, state):
    """Restore a snapshot taken by `rng_state`."""
    if state.get("bit_generator") != "philox4x32_10":
        raise GanEngineError("this random state was saved by a CPU backend; resume it with --backend numba or "
                             "numpy (the CUDA backend draws from a different generator)")
    rng[...] = cp.asarray(np.array([state["key"], state["counter"]], dtype=np.uint64))


def _function(module, kernel, tile=None):
    """The compiled kernel `kernel` of <module>.cu in kernels.DIRECTORY on the current device (compiled on first
    use), for gemm.cuh's kernels with the tile shape `tile` (TILE_M, TILE_N)."""
    key = (module, tile, cp.cuda.Device().id, kernels.DIRECTORY, GEMM_LAUNCH_BOUNDS)
    if key not in _modules:
        options = kernels.options() + (f"-DGAN_ENGINE_KERNELS={kernels.fingerprint()}",)
        if tile is not None:
            options += (f"-DTILE_M={tile[0]}", f"-DTILE_N={tile[1]}", f"-DGEMM_LAUNCH_BOUNDS={int(GEMM_LAUNCH_BOUNDS)}")
        _modules[key] = cp.RawModule(code=kernels.sources()[module], options=options)
    return _modules[key].get_function(kernel)


def _multiprocessors():
    """The current GPU's SM count, which gemm_plan sizes grids by."""
    key = cp.cuda.Device().id
    if key not in _multiprocessor_counts:
        _multiprocessor_counts[key] = cp.cuda.Device().attributes["MultiProcessorCount"]
    return _multiprocessor_counts[key]


def _buffer(name, size, dtype=np.float32):
    """A device buffer of at least `size` values that the backend keeps, zeros when made. It is never freed (a
    captured graph may hold its address); a larger request makes a larger one."""
    kept = _buffers.setdefault((cp.cuda.Device().id, name), [])
    if not kept or kept[-1].size < size:
        kept.append(cp.zeros(max(1, size), dtype=dtype))
    return kept[-1]


def _arrivals(count):
    """reduce.cuh's arrival counters (count,) int32: zeros, and zeros again after every launch that uses them (its
    last block resets each), so every launch, one after another on the stream, can share them."""
    return _buffer("arrivals", count, np.int32)


def _gemm(module, kernel, m, n, k, args, layers=1, group=1):
    """Launch gemm.cuh kernel `kernel` of `module` (its arguments `args` before the split's) for C (m, n) over K
    = k, `layers` such products side by side in grid z, as gemm_plan says; `group` > 1 for a gemm_grouped
    kernel, whose epilogue takes groups of that many neighbouring columns."""
    plan = gemm_plan(m, n, k, layers, _multiprocessors(), group, kernel)
    partial = _buffer("partial", plan.splits * m * n * layers if plan.splits > 1 else 1)
    arrivals = _arrivals(plan.tiles * layers)
    _function(module, kernel, plan.tile)((plan.tiles, 1, plan.splits * layers), GEMM_BLOCK, (
        *args, partial, arrivals, np.int32(plan.splits)))


def gemm_pair_plans(first, second, multiprocessors=DEFAULT_MULTIPROCESSORS):
    """The two GemmPlans of products launched together (_gemm_pair), first and second (kernel, m, n, k, layers)
    each as its own kernel plans it: gemm_plan's where the two agree on the tile shape (the launch has one) and
    their blocks fit in grid z together, else the slower one's plan, and the other's fastest split that fits at
    that tile."""
    plans = [gemm_plan(m, n, k, layers, multiprocessors, 1, kernel) for kernel, m, n, k, layers in (first, second)]

    def fits(pair):  # in grid z: each product's splits x layers
        return sum(plan.splits * product[4] for plan, product in zip(pair, (first, second))) <= MAX_GRID_Z

    if plans[0].tile != plans[1].tile or not fits(plans):
        slow = int(plans[1].us > plans[0].us)
        kernel, m, n, k, layers = (first, second)[1 - slow]
        pairs = ([p, plans[1]] if slow else [plans[0], p] for p in gemm_plans(m, n, k, layers, multiprocessors, 1,
                                                                              kernel) if p.tile == plans[slow].tile)
        plans = min((pair for pair in pairs if fits(pair)), key=lambda pair: pair[1 - slow].us)
    return plans


def _gemm_pair(module, kernel, first, second, args):
    """Launch gemm.cuh pair kernel `kernel` of `module` (its arguments `args` before the splits'): the products
    first and second, (kernel, m, n, k, layers) as their own kernels take them, in one grid (gemm.cuh's
    PAIR_PARAMS; grid z the first's splits x layers, then the second's), each its own partial sums and arrival
    counters."""
    plans = gemm_pair_plans(first, second, _multiprocessors())
    sizes = [plan.splits * m * n * layers if plan.splits > 1 else 1
             for plan, (_, m, n, _, layers) in zip(plans, (first, second))]
    counters = [plan.tiles * layers for plan, (*_, layers) in zip(plans, (first, second))]
    partial, arrivals = _buffer("partial", sum(sizes)), _arrivals(sum(counters))
    grid = (max(plan.tiles for plan in plans), 1,
            sum(plan.splits * layers for plan, (*_, layers) in zip(plans, (first, second))))
    _function(module, kernel, plans[0].tile)(grid, GEMM_BLOCK, (
        *args, partial[:sizes[0]], arrivals[:counters[0]], np.int32(plans[0].splits),
        partial[sizes[0]:sum(sizes)], arrivals[counters[0]:sum(counters)], np.int32(plans[1].splits)))


def _unused(label="unused"):
    """A pointer for an argument `label` the kernel will not touch (a flag says so): a buffer of its own, never an
    alias of another argument, so no two pointers of a launch overlap where one is written (`__restrict__`)."""
    return _buffer(f"unused {label}", 1)


def _output(out, label, shape, dtype=np.float32):
    return cp.empty(shape, dtype=dtype) if out is None else check_array(label, out, shape, dtype)


# ---- dense ---------------------------------------------------------------------------------------------------

def dense_forward(x, W, b, activation="identity", alpha=0.2, out=None):
    """y = act(x @ W + b). x (N, I), W (I, O), b (O,) -> out (N, O); one kernel (GEMM + epilogue)."""
    n, i = check_array("x", x).shape
    o = check_array("W", W, (i, W.shape[1])).shape[1]
    check_array("b", b, (o,))
    out = _output(out, "out", (n, o))
    _gemm("dense", "dense_forward_kernel", n, o, i, (
        x, W, b, out, np.int32(n), np.int32(i), np.int32(o), np.int32(activation_code(activation)),
        np.float32(alpha)))
    return out


def dense_backward(x, W, y, dy, activation="identity", alpha=0.2, dW=None, db=None, dx=None):
    """dW (I, O) += x^T g, db (O,) += sum_n g, dx (N, I) = g W^T, g = dy * act'(y) made as the kernels load dy, for
    those given: dW and db in one GEMM ([dW; db] += [x^T; 1] g), dx in another, both in one launch (GEMM_PAIRS).
    Returns dx."""
    n, i = check_array("x", x).shape
    o = check_array("W", W, (i, W.shape[1])).shape[1]
    check_array("y", y, (n, o))
    check_array("dy", dy, (n, o))
    code, alpha = np.int32(activation_code(activation)), np.float32(alpha)
    sizes = (np.int32(n), np.int32(i), np.int32(o))
    weights = dW is not None or db is not None
    if weights:
        (dW, db, has_dw, has_db), rows = _weight_grads(dW, (i, o), db, o)
    if dx is not None:
        check_array("dx", dx, (n, i))
    if weights and dx is not None and GEMM_PAIRS:
        _gemm_pair("dense", "dense_backward_kernel", ("dense_backward_dw_kernel", rows, o, n, 1),
                   ("dense_backward_dx_kernel", n, i, o, 1), (x, y, dy, W, dW, db, dx, *sizes, has_dw, has_db, code,
                                                              alpha))
        return dx
    if weights:
        _gemm("dense", "dense_backward_dw_kernel", rows, o, n, (x, y, dy, dW, db, *sizes, has_dw, has_db, code, alpha))
    if dx is not None:
        _gemm("dense", "dense_backward_dx_kernel", n, i, o, (y, dy, W, dx, *sizes, code, alpha))
    return dx


def _weight_grads(dW, dw_shape, db, columns):
    """A weight gradient kernel's (dW, db, has_dw, has_db) and its product's rows, from the arrays given (checked;
    _unused for one not given): rows I + 1 for both, I for dW alone, 1 for db alone (dense.cu's [dW; db] += [x^T;
    1] g)."""
    arrays = [check_array(label, a, shape) if a is not None else _unused(label)
              for label, a, shape in (("dW", dW, dw_shape), ("db", db, (columns,)))]
    rows = dw_shape[0] * (dW is not None) + (db is not None)
    return (*arrays, np.int32(dW is not None), np.int32(db is not None)), rows


# ---- maxout (dense.cu) ---------------------------------------------------------------------------------------

def maxout_forward(x, W, b, pieces, argmax, out=None):
    """y (N, U) = the largest of each unit's pieces of x @ W + b, argmax (N, U) int32 the winning piece: one
    kernel, the GEMM with the bias, max and argmax in its epilogue (a unit's pieces side by side in a tile)."""
    n, i = check_array("x", x).shape
    width = check_array("W", W, (i, W.shape[1])).shape[1]
    check_array("b", b, (width,))
    if pieces > MAX_PIECES:
        raise ValueError(f"the CUDA maxout takes at most {MAX_PIECES} pieces a unit (a unit's pieces lie in one "
                         f"GEMM tile), got {pieces}")
    units = width // pieces
    check_array("argmax", argmax, (n, units), np.int32)
    out = _output(out, "out", (n, units))
    _gemm("dense", "maxout_forward_kernel", n, width, i, (
        x, W, b, out, argmax, np.int32(n), np.int32(i), np.int32(units), np.int32(pieces)), group=pieces)
    return out


def maxout_backward(x, W, dy, argmax, pieces, dW=None, db=None, dx=None):
    """dW (I, U pieces) += x^T g, db += sum_n g, dx (N, I) = g W^T, g = dy at the winning pieces made as the
    kernels load it, for those given: dW and db in one GEMM, dx in another, both in one launch (GEMM_PAIRS).
    Returns dx."""
    n, i = check_array("x", x).shape
    width = check_array("W", W, (i, W.shape[1])).shape[1]
    units = width // pieces
    check_array("dy", dy, (n, units))
    check_array("argmax", argmax, (n, units), np.int32)
    sizes = (np.int32(n), np.int32(i), np.int32(units), np.int32(pieces))
    weights = dW is not None or db is not None
    if weights:
        (dW, db, has_dw, has_db), rows = _weight_grads(dW, (i, width), db, width)
    if dx is not None:
        check_array("dx", dx, (n, i))
    if weights and dx is not None and GEMM_PAIRS:
        _gemm_pair("dense", "maxout_backward_kernel", ("maxout_backward_dw_kernel", rows, width, n, 1),
                   ("maxout_backward_dx_kernel", n, i, width, 1), (x, dy, argmax, W, dW, db, dx, *sizes, has_dw,
                                                                   has_db))
        return dx
    if weights:
        _gemm("dense", "maxout_backward_dw_kernel", rows, width, n, (x, dy, argmax, dW, db, *sizes, has_dw, has_db))
    if dx is not None:
        _gemm("dense", "maxout_backward_dx_kernel", n, i, width, (dy, argmax, W, dx, *sizes))
    return dx


# ---- convolution (conv.cu) -----------------------------------------------------------------------------------

def _check_image(label, a, channels=None, axis=1):
    """The shape of a (4-axis, fp32, C-contiguous), which must have `channels` along `axis` when given."""
    check_array(label, a)
    if a.ndim != 4 or (channels is not None and a.shape[axis] != channels):
        want = f" with {channels} along axis {axis}" if channels is not None else ""
        raise ValueError(f"{label} has shape {tuple(a.shape)}; expected 4 axes{want}")
    return a.shape


def _window(n, big, small, kernel, stride, padding):
    """conv.cu's geometry arguments: N, the big image's (C, H, W), the small one's, kernel, stride, padding."""
    return tuple(np.int32(v) for v in (n, *big, *small, *kernel, *stride, *padding))


def _bias(b, channels):
    """(the bias argument, has_bias): a kernel takes a valid pointer either way, and reads it only with has_bias."""
    if b is None:
        return _unused(), np.int32(0)
    return check_array("b", b, (channels,)), np.int32(1)


def _window_product(onto, window):
    """(kernel, m, n, k, layers) of conv.cu's GEMM that writes the "small" image (gather) or the "big" one
    (scatter: the largest stride phase's product, a grid layer per phase); None for a big image of THIN_CHANNELS
    channels or fewer, which is no GEMM."""
    n, cb, hb, wb, cs, hs, ws, kh, kw, sh, sw, _, _ = (int(v) for v in window)
    if onto == "small":
        return "window_gather_kernel", cs, n * hs * ws, cb * kh * kw, 1
    if cb <= THIN_CHANNELS:
        return None
    phase_pixels, phase_taps = -(-hb // sh) * -(-wb // sw), -(-kh // sh) * -(-kw // sw)  # the largest phase's
    return "window_scatter_phases_kernel", cb, n * phase_pixels, cs * phase_taps, sh * sw


def _window_gemm(onto, window, args):
    """Launch conv.cu's kernel that writes the "small" image or the "big" one (_window_product's GEMM, or a thread
    a pixel: window_scatter_thin_kernel) with the kernel arguments `args` (before the split's)."""
    product = _window_product(onto, window)
    if product is None:
        n, _, hb, wb = (int(v) for v in window[:4])
        _function("conv", "window_scatter_thin_kernel")(elementwise_grid(n * hb * wb), (THREADS,), args)
    else:
        kernel, m, n, k, layers = product
        _gemm("conv", kernel, m, n, k, args, layers=layers)


def _window_forward(onto, x, W, b, out, shape, window, activation, alpha):
    """conv.cu's forward: out (N, C, H, W), the `onto` image, = act(W times x's windows + b)."""
    b, has_bias = _bias(b, shape[1])
    out = _output(out, "out", shape)
    _window_gemm(onto, window, (
        W, x, x, b, out, *window, np.int32(activation_code(activation)), np.float32(alpha), np.int32(0), has_bias))
    return out


def _window_backward(x, W, y, dy, window, transposed, activation, alpha, dW, db, dx):
    """conv.cu's backward of a convolution (x the big image, y the small) or a transposed one (x small, y big):
    db, dW and dx, g = dy act'(y) made as the kernels load dy; dW and a GEMM's dx in one launch (GEMM_PAIRS)."""
    check_array("dy", dy, y.shape)
    code, alpha = np.int32(activation_code(activation)), np.float32(alpha)
    if db is not None:
        _channel_grad_sum(y, dy, db, code, alpha)
    onto = "small" if transposed else "big"  # dx: g's windows onto it
    n, _, _, _, _, hs, ws = (int(v) for v in window[:7])
    weight_grad = ("window_weight_grad_kernel", W.shape[0], W.size // W.shape[0], n * hs * ws, 1)
    if dW is not None:
        check_array("dW", dW, W.shape)
    if dx is not None:
        check_array("dx", dx, x.shape)
    dx_product = _window_product(onto, window)  # None: the thin kernel, no GEMM to pair
    if dW is not None and dx is not None and GEMM_PAIRS and dx_product is not None:
        _gemm_pair("conv", "conv_transpose2d_backward_kernel" if transposed else "conv2d_backward_kernel",
                   weight_grad, dx_product, (x, y, dy, W, dW, _unused(), dx, *window, code, alpha))
        return dx
    if dW is not None:
        small, big, acts = ((x, x), (dy, y), (0, code)) if transposed else ((dy, y), (x, x), (code, 0))
        _gemm("conv", *weight_grad[:4], (*small, *big, dW, *window, *map(np.int32, acts), alpha))
    if dx is not None:
        _window_gemm(onto, window, (W, dy, y, _unused(), dx, *window, code, alpha, np.int32(1), np.int32(0)))
    return dx


def conv2d_forward(x, W, b, stride, padding, activation="identity", alpha=0.2, out=None):
    """y = act(conv2d(x, W) + b) as one implicit GEMM: x (N, C_in, H, W), W (C_out, C_in, kH, kW), b (C_out,) or
    None -> out (N, C_out, OH, OW)."""
    stride, padding = _pair(stride), _pair(padding)
    n, c, h, w = _check_image("x", x)
    co, _, kh, kw = _check_image("W", W, c)
    oh, ow = conv2d_output_size(h, kh, stride[0], padding[0]), conv2d_output_size(w, kw, stride[1], padding[1])
    window = _window(n, (c, h, w), (co, oh, ow), (kh, kw), stride, padding)
    return _window_forward("small", x, W, b, out, (n, co, oh, ow), window, activation, alpha)


def conv2d_backward(x, W, y, dy, stride, padding, activation="identity", alpha=0.2, dW=None, db=None, dx=None):
    """dW (C_out, C_in, kH, kW) += g im2col(x)^T, db (C_out,) += sum g, dx (N, C_in, H, W) = conv_transpose2d(g, W),
    g = dy act'(y); a kernel each. Returns dx."""
    n, c, h, w = _check_image("x", x)
    co, _, kh, kw = _check_image("W", W, c)
    _, _, oh, ow = _check_image("y", y, co)
    window = _window(n, (c, h, w), (co, oh, ow), (kh, kw), _pair(stride), _pair(padding))
    return _window_backward(x, W, y, dy, window, False, activation, alpha, dW, db, dx)


def conv_transpose2d_forward(x, W, b, stride, padding, output_padding=0, activation="identity", alpha=0.2,
                             out=None):
    """y = act(conv_transpose2d(x, W) + b) as one implicit GEMM: x (N, C_in, H, W), W (C_in, C_out, kH, kW),
    b (C_out,) or None -> out (N, C_out, OH, OW)."""
    stride, padding, output_padding = _pair(stride), _pair(padding), _pair(output_padding)
    n, ci, h, w = _check_image("x", x)
    _, co, kh, kw = _check_image("W", W, ci, axis=0)
    oh = conv_transpose2d_output_size(h, kh, stride[0], padding[0], output_padding[0])
    ow = conv_transpose2d_output_size(w, kw, stride[1], padding[1], output_padding[1])
    window = _window(n, (co, oh, ow), (ci, h, w), (kh, kw), stride, padding)
    return _window_forward("big", x, W, b, out, (n, co, oh, ow), window, activation, alpha)


def conv_transpose2d_backward(x, W, y, dy, stride, padding, activation="identity", alpha=0.2, dW=None, db=None,
                              dx=None):
    """dW (C_in, C_out, kH, kW) += x im2col(g)^T, db (C_out,) += sum g, dx (N, C_in, H, W) = conv2d(g, W),
    g = dy act'(y); a kernel each. Returns dx."""
    n, ci, h, w = _check_image("x", x)
    _, co, kh, kw = _check_image("W", W, ci, axis=0)
    _, _, oh, ow = _check_image("y", y, co)
    window = _window(n, (co, oh, ow), (ci, h, w), (kh, kw), _pair(stride), _pair(padding))
    return _window_backward(x, W, y, dy, window, True, activation, alpha, dW, db, dx)


# ---- channel reductions (reduce.cuh): bias gradients (bias.cu), batch norm (batchnorm.cu) ---------------------

def channel_chunks(values, channels, multiprocessors=DEFAULT_MULTIPROCESSORS):
    """reduce.cuh's chunks per channel for `values` values in each of `channels` channels: enough blocks for
    about 4 per SM, none with fewer than MIN_CHUNK values."""
    return max(1, min(math.ceil(4 * multiprocessors / channels), values // MIN_CHUNK, MAX_GRID_Z))


def _channel_grid(x, what):
    """(grid, (partial, arrivals) workspace) of a channel reduction over x (N, C, ...) with `what` partial values
    a chunk."""
    n, channels = x.shape[0], x.shape[1]
    chunks = channel_chunks(x.size // channels, channels, _multiprocessors())
    return (channels, chunks), (_buffer("channel partial", what * channels * chunks), _arrivals(channels))


def _channel_grad_sum(y, dy, db, code, alpha):
    """db (C,) += the sum of g = dy act'(y) over all but axis 1 of y (N, C, ...): a channel reduction."""
    channels = y.shape[1]
    check_array("db", db, (channels,))
    grid, workspace = _channel_grid(y, 1)
    _function("bias", "channel_grad_sum_kernel")(grid, (THREADS,), (
        y, dy, db, *workspace, np.int32(y.shape[0]), np.int32(channels), np.int32(y.size // (y.shape[0] * channels)),
        code, alpha))


def _check_batch(label, x):
    check_array(label, x)
    if x.ndim not in (2, 4):
        raise ValueError(f"{label} must be (N, C) or (N, C, H, W), got {tuple(x.shape)}")
    return np.int32(x.shape[0]), np.int32(x.shape[1]), np.int32(x.size // (x.shape[0] * x.shape[1]))


def batchnorm_forward(x, gamma, beta, running_mean, running_var, mean, invstd, train, momentum=0.1, eps=1e-5,
                      activation="identity", alpha=0.2, out=None):
    """y = act(gamma (x - mean) invstd + beta) per channel, batch statistics (train: a statistics kernel first, which
    also normalises when a block holds a whole channel) or running ones (eval): x (N, C) or (N, C, H, W); the (C,)
    vectors as in the reference."""
    n, channels, pixels = _check_batch("x", x)
    for label, a in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
                     ("running_var", running_var), ("mean", mean), ("invstd", invstd)):
        check_array(label, a, (channels,))
    out = _output(out, "out", x.shape)
    grid, workspace = _channel_grid(x, 2)
    code, alpha = np.int32(activation_code(activation)), np.float32(alpha)
    one_launch = bool(train and grid[1] == 1 and BATCHNORM_ONE_LAUNCH)
    if train:
        _function("batchnorm", "batchnorm_stats_kernel")(grid, (THREADS,), (
            x, running_mean, running_var, mean, invstd, *workspace, n, channels, pixels, np.float32(momentum),
            np.float32(eps), gamma, beta, out if one_launch else _unused("out"), code, alpha, np.int32(one_launch)))
    if not one_launch:
        _function("batchnorm", "batchnorm_forward_kernel")(grid, (THREADS,), (
            x, gamma, beta, running_mean, running_var, mean, invstd, out, n, channels, pixels, np.int32(bool(train)),
            np.float32(eps), code, alpha))
    return out


def batchnorm_backward(x, gamma, y, dy, mean, invstd, train, activation="identity", alpha=0.2, dgamma=None,
                       dbeta=None, dx=None):
    """dgamma += sum g x_hat, dbeta += sum g, dx through the batch statistics (train) or not (eval), g = dy act'(y):
    a kernel for the sums (when dgamma, dbeta or a train dx needs them), one for dx (or the sums' kernel writes dx
    too, when a block holds a whole channel). Returns dx."""
    n, channels, pixels = _check_batch("x", x)
    for label, a in (("gamma", gamma), ("mean", mean), ("invstd", invstd)):
        check_array(label, a, (channels,))
    for label, a in (("y", y), ("dy", dy)):
        check_array(label, a, x.shape)
    code, alpha = np.int32(activation_code(activation)), np.float32(alpha)
    grid, workspace = _channel_grid(x, 2)
    sums = _buffer("batchnorm sums", 2 * channels)
    if dx is not None:
        check_array("dx", dx, x.shape)
    one_launch = bool(dx is not None and train and grid[1] == 1 and BATCHNORM_ONE_LAUNCH)
    if dgamma is not None or dbeta is not None or (dx is not None and train):
        wanted = [check_array(label, a, (channels,)) if a is not None else _unused(label)
                  for label, a in (("dgamma", dgamma), ("dbeta", dbeta))]
        _function("batchnorm", "batchnorm_grad_sums_kernel")(grid, (THREADS,), (
            x, y, dy, mean, invstd, *wanted, sums, *workspace, n, channels, pixels, code, alpha,
            np.int32(dgamma is not None), np.int32(dbeta is not None), gamma, dx if one_launch else _unused("dx"),
            np.int32(one_launch)))
    if dx is not None and not one_launch:
        _function("batchnorm", "batchnorm_backward_kernel")(grid, (THREADS,), (
            x, gamma, y, dy, mean, invstd, sums, dx, n, channels, pixels, np.int32(bool(train)), code, alpha))
    return dx


# ---- standalone activation -----------------------------------------------------------------------------------

def activation_forward(x, activation, alpha=0.2, out=None):
    """out = act(x), elementwise over any shape."""
    check_array("x", x)
    out = _output(out, "out", x.shape)
    _function("activation", "activation_forward_kernel")(elementwise_grid(x.size), (THREADS,), (
        x, out, np.int64(x.size), np.int32(activation_code(activation)), np.float32(alpha)))
    return out


def activation_backward(y, dy, activation, alpha=0.2, dx=None):
    """dx = dy * act'(y), any shape. Returns dx."""
    check_array("y", y)
    check_array("dy", dy, y.shape)
    dx = _output(dx, "dx", y.shape)
    _function("activation", "activation_backward_kernel")(elementwise_grid(y.size), (THREADS,), (
        y, dy, dx, np.int64(y.size), np.int32(activation_code(activation)), np.float32(alpha)))
    return dx


# ---- loss ----------------------------------------------------------------------------------------------------

def bce_blocks(n):
    """bce.cu's grid for n logits: a block per 256, at most 1024 (fixed by n, so the sums are deterministic)."""
    return min(max(1, math.ceil(n / THREADS)), BCE_MAX_BLOCKS)


def bce_with_logits(logits, target, scale=1.0, dlogits=None):
    """Mean sigmoid-BCE on logits (N, 1) or (N,), its gradient and the mean probability, one kernel: per-block
    sums, then the last block sums those, both in a fixed order (same inputs, same bits). Returns (loss, mean
    sigmoid(x)) as 0-d device arrays (no synchronisation)."""
    loss, prob, _ = _bce(logits, _logit_count(logits), target, 0.0, scale, dlogits)
    return loss, prob


def bce_real_fake(logits, real_target, dlogits=None):
    """D's loss on reals and fakes side by side, logits (2 B, 1) or (2 B,): the reals' BCE against real_target and
    the fakes' against 0, each a mean over its B rows, added; dlogits (sigmoid(x) - target) / B. One kernel (the
    two groups of bce.cu's kernel). Returns (loss, mean sigmoid over the reals, over the fakes), 0-d device
    arrays."""
    n = _logit_count(logits)
    if n % 2:
        raise ValueError(f"bce_real_fake takes the reals' and the fakes' logits, as many of each: got {n} rows")
    return _bce(logits, n // 2, real_target, 0.0, 1.0, dlogits)


def _logit_count(logits):
    """N of logits (N, 1) or (N,), checked."""
    check_array("logits", logits)
    if logits.ndim not in (1, 2) or logits.size != logits.shape[0]:
        raise ValueError(f"logits must have shape (N,) or (N, 1), got {tuple(logits.shape)}")
    return logits.size


def _bce(logits, first, target0, target1, scale, dlogits):
    """bce.cu's kernel over logits in two groups, rows [0, first) against target0 and the rest against target1:
    (loss, mean probability of each group) as 0-d device arrays; dlogits written."""
    dlogits = _output(dlogits, "dlogits", logits.shape)
    n, blocks = logits.size, bce_blocks(logits.size)
    result = cp.empty(3, dtype=np.float32)  # (loss, mean probability of group 0, of group 1)
    _function("bce", "bce_with_logits_kernel")((blocks,), (THREADS,), (
        logits, np.int32(n), np.int32(first), np.float32(target0), np.float32(target1), np.float32(scale), dlogits,
        _buffer("bce partial", 4 * blocks), _arrivals(1), result))
    return result[0], result[1], result[2]


# ---- optimizers ----------------------------------------------------------------------------------------------

def sgd_update(param, grad, velocity, lr, momentum=0.0):
    """SGD with momentum over flat buffers (P,), in place, one kernel."""
    n = check_array("param", param).size
    check_array("grad", grad, param.shape)
    check_array("velocity", velocity, param.shape)
    _function("optim", "sgd_update_kernel")(elementwise_grid(n), (THREADS,), (
        param, grad, velocity, np.int64(n), np.float32(lr), np.float32(momentum)))


_steps = {}  # device pointer of a parameter buffer -> [its Adam step count on the device (1,) int32, the count the
#              host last asked for]
_captured_steps = None  # while capture() records: the _steps entries its graph counts up on the device


def adam_update(param, grad, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8):
    """Adam with bias correction over flat buffers (P,), in place, one kernel; step is the 1-based update count.

    The kernel reads the count from a device counter beside the buffer. The update after the last one counts it
    up on the device (count_up), so a captured CUDA graph counts every replay; any other step (the first, a
    resumed run) is written from the host."""
    n = check_array("param", param).size
    for label, a in (("grad", grad), ("m", m), ("v", v)):
        check_array(label, a, param.shape)
    counter = _steps.setdefault(param.data.ptr, [None, None])
    if counter[0] is None:
        counter[0] = cp.zeros(1, dtype=np.int32)
    count_up = counter[1] == step - 1
    if not count_up:
        counter[0].fill(int(step))
    counter[1] = step
    if _captured_steps is not None:
        _captured_steps.append(counter)
    _function("optim", "adam_update_kernel")(elementwise_grid(n), (THREADS,), (
        param, grad, m, v, np.int64(n), counter[0], np.int32(count_up), np.float32(lr), np.float64(beta1),
        np.float64(beta2), np.float32(eps), _arrivals(1)))


def average_update(average, value, decay):
    """One step of an exponential moving average over flat buffers (P,), in place, one kernel."""
    n = check_array("average", average).size
    check_array("value", value, average.shape)
    _function("optim", "average_update_kernel")(elementwise_grid(n), (THREADS,), (
        average, value, np.int64(n), np.float32(decay), np.float32(1 - decay)))

# ---- sampling ------------------------------------------------------------------------------------------------

def noise(rng, prior, out):
    """Fill out (N, Z) with N(0, 1) or U(-1, 1) Philox noise and advance the counter. Returns out."""
    if prior not in PRIORS:
        raise ValueError(f"unknown prior {prior!r}; choose one of {PRIORS}")
    check_array("out", out)
    kernel = "noise_normal_kernel" if prior == "normal" else "noise_uniform_kernel"
    _function("random", kernel)(elementwise_grid(out.size, VALUES_PER_THREAD), (THREADS,), (
        out, np.int64(out.size), rng, _arrivals(1)))
    return out


def batch_indices(rng, n, out):
    """Fill out (B,) int64 with indices uniform on [0, n) and advance the counter. Returns out."""
    check_array("out", out, dtype=np.int64)
    if n < 1:
        raise ValueError(f"cannot draw batch indices from {n} rows")
    _function("random", "batch_indices_kernel")(elementwise_grid(out.size, VALUES_PER_THREAD), (THREADS,), (
        out, np.int32(out.size), np.int64(n), rng, _arrivals(1)))
    return out


def gather_rows(data, idx, out):
    """out (B, D) = data (N, D)[idx (B,)], one thread per value. Returns out."""
    _, d = check_array("data", data).shape
    check_array("idx", idx, dtype=np.int64)
    check_array("out", out, (idx.size, d))
    _function("random", "gather_rows_kernel")(elementwise_grid(out.size), (THREADS,), (
        data, idx, out, np.int32(idx.size), np.int32(d)))
    return out


def draw_rows(rng, data, idx, first, out):
    """A real batch drawn and gathered in one kernel: idx (P,) int64 filled with indices uniform on [0, N) (the
    draw of batch_indices, and its counter advance) and out (B, D) = data (N, D)[idx[first:first + B]], each
    gathering thread drawing its row's index again. The same numbers as batch_indices then gather_rows. Returns
    out."""
    n, d = check_array("data", data).shape
    check_array("idx", idx, dtype=np.int64)
    b = check_array("out", out, (out.shape[0], d)).shape[0]
    if n < 1:
        raise ValueError(f"cannot draw batch indices from {n} rows")
    if not 0 <= first <= idx.size - b:
        raise ValueError(f"rows {first} .. {first + b} of the batch lie outside idx's {idx.size}")
    threads = max(out.size, math.ceil(idx.size / VALUES_PER_THREAD))
    _function("random", "draw_rows_kernel")(elementwise_grid(threads), (THREADS,), (
        data, idx, out, np.int32(idx.size), np.int64(n), np.int32(first), np.int32(b), np.int32(d), rng,
        _arrivals(1)))
    return out


# ---- CUDA graphs ---------------------------------------------------------------------------------------------

def capture(body):
    """Record body()'s launches as a CUDA graph instead of running them; returns (replay, what body returned).

    Each replay() launches the whole graph on the current stream: the same kernels on the same buffers, with
    the arguments they had at capture, so body must keep every changing value on the device (Philox counters,
    Adam's step counts). Capture runs on a side stream, with a memory pool of its own that lives as long as the
    graph: arrays body allocates (its results among them) keep their addresses and are rewritten by every
    replay, and no one else is handed their memory. Kernels must be compiled and buffers allocated before (run
    body eagerly first). An error inside body ends the capture and propagates; nothing has run on the device.
    """
    global _captured_steps
    cp.cuda.Device().synchronize()  # eager work before the capture is done before the first replay reads it
    pool, stream = cp.cuda.MemoryPool(), cp.cuda.Stream(non_blocking=True)
    _captured_steps = []
    try:
        with stream, cp.cuda.using_allocator(pool.malloc):
            stream.begin_capture()
            try:
                result = body()
            except BaseException:
                try:
                    stream.end_capture()
                except Exception:  # an invalidated capture reports its own error; body's is the one to see
                    pass
                raise
            graph = stream.end_capture()
    finally:
        captured, _captured_steps = _captured_steps, None
    for counter in captured:  # the replays count these Adam steps on the device, unseen here: the next eager
        counter[1] = None     # update of these buffers writes its count from the host (other buffers keep theirs)

    def replay():
        graph.launch()

    replay.keep_alive = (graph, pool, stream)
    return replay, result


# ---- several GPUs: NCCL (gan_engine/distributed.py) ------------------------------------------------------------

def use_local_device(local_rank):
    """Make GPU local_rank (modulo the GPUs this process sees) current: one GPU a rank of a node."""
    cp.cuda.Device(local_rank % cp.cuda.runtime.getDeviceCount()).use()


def nccl_sum(mpi_comm):
    """A function sum_(buffer) that replaces the device array `buffer` by its sum over the ranks of the mpi4py
    communicator, through NCCL (its unique id broadcast over MPI) on the current stream, so that a CUDA graph
    captures it with the step. Call it first outside a capture: this builds the NCCL communicator."""
    try:
        from cupy.cuda import nccl
    except ImportError as exc:
        raise GanEngineError(f"training over ranks on the GPU needs CuPy's NCCL ({exc}); install the NCCL wheel "
                             "for your CUDA (nvidia-nccl-cu12 or -cu13)") from exc
    return _nccl_sum(nccl, mpi_comm)


def _nccl_sum(nccl, mpi_comm):
    rank, size = mpi_comm.Get_rank(), mpi_comm.Get_size()
    uid = mpi_comm.bcast(nccl.get_unique_id() if rank == 0 else None, root=0)
    communicator = nccl.NcclCommunicator(size, uid, rank)
    kinds = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}

    def sum_(buffer):
        check_array("buffer", buffer, dtype=buffer.dtype)
        communicator.allReduce(buffer.data.ptr, buffer.data.ptr, buffer.size, kinds[buffer.dtype], nccl.NCCL_SUM,
                               cp.cuda.get_current_stream().ptr)

    return sum_
