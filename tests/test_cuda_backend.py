"""The CUDA backend's launcher logic (runs everywhere) and its GPU behaviour (marker gpu, skipped without a GPU).

Parity of every op against the float64 reference, and the whole-step parity against the NumPy backend, are in
test_backend_parity.py, which runs every available backend, this one included when a GPU is there.
"""

import numpy as np
import pytest

from gan_engine import GanEngineError, Sequential
from gan_engine.backends import backend_status, cupy_cuda, get_backend
from gan_engine.layers import Dense

from . import cuda_emulator
from .conftest import EMULATED, _backend, _backend_params

CUDA = dict((name, reason) for name, _, reason in backend_status())["cuda"]
requires_gpu = pytest.mark.skipif(CUDA != "available", reason=f"backend cuda unavailable: {CUDA}")


# ---- without a GPU -------------------------------------------------------------------------------------------

def test_elementwise_and_bce_grids_cover_every_value():
    assert cupy_cuda.elementwise_grid(0) == (1,)
    assert cupy_cuda.elementwise_grid(256) == (1,)
    assert cupy_cuda.elementwise_grid(257) == (2,)
    assert cupy_cuda.elementwise_grid(1025, per_thread=4) == (2,)  # 4 values a thread, 256 threads a block
    assert [cupy_cuda.bce_blocks(n) for n in (1, 256, 257, 10 ** 9)] == [1, 1, 2, 1024]


def test_launch_constants_are_read_from_the_kernel_sources():
    assert cupy_cuda.THREADS == 256 and cupy_cuda.TILE_K == 16 and cupy_cuda.BCE_MAX_BLOCKS == 1024
    with pytest.raises(KeyError, match="no '#define NO_SUCH_CONSTANT"):
        cupy_cuda.kernels.constant("NO_SUCH_CONSTANT")


def test_gemm_plan_fills_the_gpu_and_splits_long_products():
    """The tile and split gemm_plan chooses for the products that matter (132 SMs, as an H100 or H200)."""
    square = cupy_cuda.gemm_plan(4096, 4096, 4096)
    assert square.tile == (128, 128) and square.splits == 1 and square.tiles == 32 * 32
    weight_grad = cupy_cuda.gemm_plan(64, 16, 64 * 14 * 14)  # a 1 -> 64 channel 4x4 convolution's dW at batch 64
    assert weight_grad.tiles * weight_grad.splits >= 32, weight_grad  # one tile: its K is spread over many SMs
    head = cupy_cuda.gemm_plan(64, 1, 6272)  # the 28x28 discriminator's last layer
    assert head.splits >= 16, head
    one_channel = cupy_cuda.gemm_plan(1, 64 * 14 * 14, 256, layers=4)  # a transposed convolution onto 1 channel
    assert one_channel.tile[0] == 16, one_channel  # the thinnest tile: 15 of its 16 rows unused, not 63 of 64
    for m, n, k in ((1, 1, 1), (3, 17, 129), (129, 3, 100_000), (5000, 5000, 1)):
        plan = cupy_cuda.gemm_plan(m, n, k)
        assert plan.tile in cupy_cuda.GEMM_TILES and 1 <= plan.splits <= max(1, -(-k // 16)), (m, n, k, plan)
        assert plan.splits * m * n <= cupy_cuda.MAX_PARTIAL or plan.splits == 1
        assert plan == cupy_cuda.gemm_plan(m, n, k)  # the same shape, the same plan: the same bits
    assert cupy_cuda.gemm_plan(1, 1, 2 ** 26, layers=3).splits * 3 <= cupy_cuda.MAX_GRID_Z  # grid.z's limit
    assert cupy_cuda.gemm_plan(64, 16, 12544, multiprocessors=8).splits < weight_grad.splits  # fewer SMs, fewer


def test_the_model_knows_every_gemm_kernel_and_its_blocks_an_sm():
    """Every kernel of gemm.cuh (a __launch_bounds__(GEMM_THREADS) kernel) has its blocks an SM at every tile
    shape, and a kernel that fits fewer blocks on an SM is modelled slower once the SM is full."""
    gemm_kernels = {name for text in cupy_cuda.kernels.sources().values()
                    for bound, name, _ in cuda_emulator.KERNEL.findall(text) if bound == "GEMM_THREADS"}
    assert len(gemm_kernels) >= 9 and gemm_kernels == set(cupy_cuda.GEMM_BLOCKS_PER_SM)
    assert all(len(blocks) == len(cupy_cuda.GEMM_TILES) and min(blocks) >= 1
               for blocks in cupy_cuda.GEMM_BLOCKS_PER_SM.values())
    shape = (64, 64 * 132 * 3, 512, (64, 64), 1)  # 3 blocks of 64 x 64 for every SM
    kernels = ("window_gather_kernel", "maxout_backward_dw_kernel")  # 3 and 2 blocks of 64 x 64 an SM
    three, two = (cupy_cuda.gemm_time(*shape, kernel=k) for k in kernels)
    assert two > three


def test_a_slice_scale_prices_one_kernels_slices_alone(monkeypatch):
    """GEMM_SLICE_SCALE (empty in the backend: its plans are the fitted model's) multiplies the slice time of its
    kernel at its tile, not the split's fixed costs nor another kernel's."""
    assert cupy_cuda.GEMM_SLICE_SCALE == {}
    whole, split = (64, 6272, 100, (64, 64), 1), (64, 1, 6272, (32, 32), 8)
    before = [cupy_cuda.gemm_time(*shape, kernel=k) for shape in (whole, split)
              for k in ("dense_forward_kernel", "window_gather_kernel")]
    monkeypatch.setattr(cupy_cuda, "GEMM_SLICE_SCALE", {("dense_forward_kernel", (64, 64)): 0.5,
                                                         ("dense_forward_kernel", (32, 32)): 0.5})
    after = [cupy_cuda.gemm_time(*shape, kernel=k) for shape in (whole, split)
             for k in ("dense_forward_kernel", "window_gather_kernel")]
    assert after[0] == pytest.approx(before[0] / 2) and after[1] == before[1] and after[3] == before[3]
    fixed = before[2] - 2 * (before[2] - after[2])  # the split's own costs: what halving the slices leaves
    assert before[2] / 2 < after[2] < before[2] and fixed > 0


def test_grouped_tiles_own_whole_groups_of_columns():
    """gemm_grouped (maxout's forward): a 64-wide tile owns 12 units of 5 pieces (60 columns), so 200 units take 17
    column tiles; pieces wider than a tile rule that tile out."""
    assert cupy_cuda.column_tiles(1000, 64, group=5) == 17 and cupy_cuda.column_tiles(1000, 64) == 16
    assert cupy_cuda.column_tiles(1000, 16, group=5) == 67  # 3 units a tile
    plan = cupy_cuda.gemm_plan(100, 1000, 200, group=5)  # a PacGAN D layer: 200 units of 5 pieces at batch 100
    assert plan.tiles == -(-100 // plan.tile[0]) * cupy_cuda.column_tiles(1000, plan.tile[1], 5), plan
    assert all(cupy_cuda.gemm_plan(m, 40 * 40, 64, group=40).tile[1] >= 40 for m in (1, 100, 5000))
    assert cupy_cuda.MAX_PIECES == 128


def test_checks_name_the_argument_and_the_problem():
    """The checks read only dtype, flags and shape, so host arrays stand in for device ones here."""
    ok = np.zeros((3, 4), np.float32)
    assert cupy_cuda.check_array("x", ok, (3, 4)) is ok
    with pytest.raises(ValueError, match="x must be float32 .*got float64"):
        cupy_cuda.check_array("x", ok.astype(np.float64))
    with pytest.raises(ValueError, match="W must be C-contiguous"):
        cupy_cuda.check_array("W", ok.T)
    with pytest.raises(ValueError, match=r"b has shape \(3, 4\), expected \(4,\)"):
        cupy_cuda.check_array("b", ok, (4,))
    with pytest.raises(ValueError, match="must be a device array, got list"):
        cupy_cuda.check_array("x", [1.0])
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        cupy_cuda.activation_code("swish")
    assert [cupy_cuda.activation_code(a) for a in ("identity", "leaky_relu", "relu", "tanh", "sigmoid")] == [
        0, 1, 2, 3, 4]  # common.cuh's ACT_* codes


def test_conv_and_batchnorm_launchers_check_shapes_before_launching():
    x = np.zeros((2, 3, 8, 8), np.float32)
    with pytest.raises(ValueError, match=r"W has shape \(4, 2, 3, 3\); expected 4 axes with 3 along axis 1"):
        cupy_cuda.conv2d_forward(x, np.zeros((4, 2, 3, 3), np.float32), None, 1, 1)
    with pytest.raises(ValueError, match=r"W has shape \(2, 4, 3, 3\); expected 4 axes with 3 along axis 0"):
        cupy_cuda.conv_transpose2d_forward(x, np.zeros((2, 4, 3, 3), np.float32), None, 2, 1)
    with pytest.raises(ValueError, match=r"b has shape \(5,\), expected \(4,\)"):
        cupy_cuda.conv2d_forward(x, np.zeros((4, 3, 3, 3), np.float32), np.zeros(5, np.float32), 1, 1)
    with pytest.raises(ValueError, match=r"x must be \(N, C\) or \(N, C, H, W\), got \(2, 3, 8\)"):
        c = np.zeros(3, np.float32)
        cupy_cuda.batchnorm_forward(x[:, :, 0].copy(), c, c, c, c, c, c, True)


def test_float64_models_are_refused_with_the_choices():
    with pytest.raises(GanEngineError, match="dtype float64 is not supported by the cuda backend; choose float32"):
        Sequential([Dense(2, 3)], backend=cupy_cuda, dtype=np.float64)


def test_a_cpu_random_state_is_not_resumed_on_the_gpu():
    with pytest.raises(GanEngineError, match="saved by a CPU backend; resume it with --backend numba or numpy"):
        cupy_cuda.set_rng_state(None, {"bit_generator": "PCG64", "state": {}})


# ---- on a GPU ------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("prior", ["normal", "uniform"])
def test_philox_noise_has_the_prior_and_moves_on(prior):
    cp = cupy_cuda.cp
    rng = cupy_cuda.new_rng(1)
    first = cupy_cuda.to_numpy(cupy_cuda.noise(rng, prior, cp.empty((1000, 101), np.float32)))
    second = cupy_cuda.to_numpy(cupy_cuda.noise(rng, prior, cp.empty((1000, 101), np.float32)))
    again = cupy_cuda.to_numpy(cupy_cuda.noise(cupy_cuda.new_rng(1), prior, cp.empty((1000, 101), np.float32)))
    assert np.array_equal(first, again), "the same seed must draw the same noise"
    assert not np.allclose(first, second), "the counter must move on between draws"
    if prior == "normal":
        assert abs(first.mean()) < 0.01 and abs(first.std() - 1) < 0.01
    else:
        assert first.min() >= -1 and first.max() <= 1 and abs(first.mean()) < 0.01
        assert abs(first.var() - 1 / 3) < 0.01
    assert cupy_cuda.rng_state(rng) == {"bit_generator": "philox4x32_10", "key": 1, "counter": 2}


@pytest.mark.gpu
@requires_gpu
def test_batch_indices_are_uniform_and_in_range():
    cp = cupy_cuda.cp
    idx = cupy_cuda.to_numpy(cupy_cuda.batch_indices(cupy_cuda.new_rng(2), 17, cp.empty(170_000, np.int64)))
    assert idx.min() == 0 and idx.max() == 16
    counts = np.bincount(idx, minlength=17)
    assert np.all(np.abs(counts - 10_000) < 500), counts


@pytest.mark.gpu
@requires_gpu
def test_bce_is_deterministic_to_the_bit():
    x = cupy_cuda.asarray(np.random.default_rng(0).standard_normal((4097, 1)).astype(np.float32))
    runs = [cupy_cuda.bce_with_logits(x, 1.0) for _ in range(3)]
    values = [(float(loss), float(p)) for loss, p in runs]
    assert values[0] == values[1] == values[2]


GEMM_OPS = ["dense_forward", "dense_backward", "maxout_forward", "maxout_backward", "conv2d_forward",
            "conv2d_backward", "conv_transpose2d_forward", "conv_transpose2d_backward"]


@pytest.fixture(params=[p for p in _backend_params() if p.values[0] in ("cuda", EMULATED, f"{EMULATED}-shuffled")])
def gemm_backend(request, monkeypatch):
    """The cuda backend on a GPU, and on the emulator in forward and shuffled thread orders (the tile tests are
    the suite's longest; the rest of it runs the GEMMs in every order)."""
    return _backend(request.param, monkeypatch)


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("tile", sorted(cupy_cuda.GEMM_TILES), ids=lambda t: f"{t[0]}x{t[1]}")
def test_every_tile_shape_and_split_matches_the_reference(gemm_backend, tile, splits, monkeypatch):
    """Every matrix-product op with each of gemm.cuh's tile shapes, whole and split in 3 along K (uneven splits
    and, for K below 3 slices, empty ones), on the parity cases (every awkward size, every geometry; two
    activations, since the epilogue's activation does not depend on the tile)."""
    from . import test_backend_parity

    def forced(m, n, k, layers=1, multiprocessors=None, group=1, kernel=None):
        return cupy_cuda.GemmPlan(tile, splits, max(1, -(-m // tile[0]) * cupy_cuda.column_tiles(n, tile[1], group)),
                                  0.0)

    monkeypatch.setattr(cupy_cuda, "gemm_plan", forced)
    monkeypatch.setattr(test_backend_parity, "ACTS", ("identity", "tanh"))
    for op in GEMM_OPS:
        test_backend_parity.test_op_matches_the_float64_reference(gemm_backend, op, np.float32)


def test_a_split_product_is_deterministic_and_leaves_its_counters_at_zero(cuda_backend, monkeypatch):
    """The last block of a split tile adds the partials in split order: the same bits every time, close to the
    unsplit sum; every arrival counter is back at 0 for the next launch."""
    rng = np.random.default_rng(0)
    x, W, b = (cuda_backend.asarray(rng.standard_normal(s).astype(np.float32)) for s in ((17, 300), (300, 40), (40,)))

    def run(splits):
        monkeypatch.setattr(cupy_cuda, "gemm_plan", lambda *shape: cupy_cuda.GemmPlan((16, 64), splits, 2, 0.0))
        return cuda_backend.to_numpy(cuda_backend.dense_forward(x, W, b))

    split, again, whole = run(5), run(5), run(1)
    assert np.array_equal(split, again)
    np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-5)
    arrivals = [a for (_, name), kept in cupy_cuda._buffers.items() if name == "arrivals" for a in kept]
    assert arrivals and all(not cuda_backend.to_numpy(a).any() for a in arrivals)


def test_a_layers_two_gradients_in_one_launch_are_the_two_launches_bits(cuda_backend, monkeypatch):
    """GEMM_PAIRS: a dense or maxout layer's [dW; db] and dx in one launch (gemm.cuh's pair: grid z the first
    product's splits, then the second's) give the bits of a launch each, at the same plans (here forced: 32x32,
    uneven splits of 3), and add into dW and db as those do."""
    from benchmarks.launches import record

    monkeypatch.setattr(cupy_cuda, "gemm_plan", lambda m, n, k, layers=1, multiprocessors=None, group=1, kernel=None:
                        cupy_cuda.GemmPlan((32, 32), 3, -(-m // 32) * cupy_cuda.column_tiles(n, 32, group), 0.0))
    rng = np.random.default_rng(0)
    n, i, units, pieces = 37, 45, 13, 3
    arrays = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in (
        ("x", (n, i)), ("W", (i, units)), ("dy", (n, units)), ("Wm", (i, units * pieces)), ("dW", (i, units)),
        ("db", (units,)), ("dWm", (i, units * pieces)), ("dbm", (units * pieces,)))}
    y = np.tanh(rng.standard_normal((n, units))).astype(np.float32)
    argmax = rng.integers(0, pieces, (n, units)).astype(np.int32)
    results = []
    for pairs in (1, 0):
        monkeypatch.setattr(cupy_cuda, "GEMM_PAIRS", pairs)
        a = {name: cuda_backend.asarray(v) for name, v in arrays.items()}
        dx, dxm = (cuda_backend.asarray(np.full((n, i), np.nan, np.float32)) for _ in range(2))
        with record(cupy_cuda) as launched:
            cuda_backend.dense_backward(a["x"], a["W"], cuda_backend.asarray(y), a["dy"], "tanh", 0.2, a["dW"],
                                        a["db"], dx)
            cuda_backend.maxout_backward(a["x"], a["Wm"], a["dy"], cuda_backend.asarray(argmax), pieces, a["dWm"],
                                         a["dbm"], dxm)
        assert len(launched) == (2 if pairs else 4)
        results.append([cuda_backend.to_numpy(v) for v in (a["dW"], a["db"], dx, a["dWm"], a["dbm"], dxm)])
    for paired, single in zip(*results):
        assert np.array_equal(paired, single) and np.isfinite(paired).all()
    assert not np.array_equal(results[0][0], arrays["dW"])  # added into


@pytest.mark.parametrize("transposed", [False, True], ids=["conv2d", "conv_transpose2d"])
def test_a_convolutions_two_gradients_in_one_launch_are_the_two_launches_bits(cuda_backend, transposed,
                                                                              monkeypatch):
    """A convolution's dW and dx by stride phases (7 big channels: not the thin kernel), and a transposed one's dW
    and gathered dx, in one launch (GEMM_PAIRS): the bits of a launch each at the same (forced) plans."""
    from benchmarks.launches import record

    monkeypatch.setattr(cupy_cuda, "gemm_plan", lambda m, n, k, layers=1, multiprocessors=None, group=1, kernel=None:
                        cupy_cuda.GemmPlan((32, 32), 3, -(-m // 32) * cupy_cuda.column_tiles(n, 32, group), 0.0))
    rng = np.random.default_rng(1)
    n, big, small, side = 3, 7, 9, 8  # a 4x4 kernel, stride 2, padding 1: 8x8 <-> 4x4
    x = rng.standard_normal((n, small, side // 2, side // 2) if transposed else (n, big, side, side))
    W = rng.standard_normal((small, big, 4, 4)) / 8
    if transposed:
        y = np.tanh(get_backend("numpy").conv_transpose2d_forward(x, W, None, 2, 1))
        run = cuda_backend.conv_transpose2d_backward
    else:
        y = np.tanh(get_backend("numpy").conv2d_forward(x, W, None, 2, 1))
        run = cuda_backend.conv2d_backward
    dy = rng.standard_normal(y.shape)
    results = []
    for pairs in (1, 0):
        monkeypatch.setattr(cupy_cuda, "GEMM_PAIRS", pairs)
        a = [cuda_backend.asarray(v.astype(np.float32)) for v in (x, W, y, dy, np.ones(W.shape))]
        dx = cuda_backend.asarray(np.full(x.shape, np.nan, np.float32))
        with record(cupy_cuda) as launched:
            run(a[0], a[1], a[2], a[3], 2, 1, "tanh", 0.2, dW=a[4], dx=dx)
        assert [launch.kernel.endswith("_backward_kernel") for launch in launched] == ([True] if pairs else
                                                                                       [False, False])
        results.append([cuda_backend.to_numpy(v) for v in (a[4], dx)])
    for paired, single in zip(*results):
        assert np.array_equal(paired, single) and np.isfinite(paired).all()


def test_a_pair_launch_takes_the_slower_products_tile():
    """Where a layer's two products would pick different tile shapes, their launch (one module, one shape) takes
    the slower one's plan, and the other product's fastest split at that tile."""
    head_dw, head_dx = ("dense_backward_dw_kernel", 6273, 1, 64, 1), ("dense_backward_dx_kernel", 64, 6272, 1, 1)
    alone = [cupy_cuda.gemm_plan(m, n, k, layers, kernel=kernel) for kernel, m, n, k, layers in (head_dw, head_dx)]
    assert alone[0].tile != alone[1].tile  # the 28x28 DCGAN's head: a tall dW, a wide dx
    plans = cupy_cuda.gemm_pair_plans(head_dw, head_dx)
    slow = int(alone[1].us > alone[0].us)
    assert plans[slow] == alone[slow] and plans[1 - slow].tile == alone[slow].tile
    kernel, m, n, k, layers = (head_dw, head_dx)[1 - slow]
    at_tile = [p for p in cupy_cuda.gemm_plans(m, n, k, layers, kernel=kernel) if p.tile == alone[slow].tile]
    assert plans[1 - slow].us == min(p.us for p in at_tile)
    same = ("dense_backward_dx_kernel", 64, 128, 784, 1)
    assert cupy_cuda.gemm_pair_plans(same, same) == [cupy_cuda.gemm_plan(64, 128, 784, kernel=same[0])] * 2
    deep = ("window_scatter_phases_kernel", 1, 1, 2 ** 20, 4)  # splits x 4 phases and the other's: grid z's limit
    plans = cupy_cuda.gemm_pair_plans(deep, deep)
    assert plans[0].tile == plans[1].tile and (plans[0].splits + plans[1].splits) * 4 <= cupy_cuda.MAX_GRID_Z


def test_the_launch_bounds_setting_compiles_modules_of_its_own(cuda_backend, monkeypatch):
    """GEMM_LAUNCH_BOUNDS reaches the GEMM modules' compilation (-D, read by gemm.cuh's GEMM_MIN_BLOCKS), and each
    setting keeps its own modules, so kernel_ab --set GEMM_LAUNCH_BOUNDS=0 compares the bounds alone."""
    compiled = []
    raw_module = cupy_cuda.cp.RawModule

    def record(code, options=()):
        compiled.append(options)
        return raw_module(code=code, options=options)

    monkeypatch.setattr(cupy_cuda.cp, "RawModule", record)
    monkeypatch.setattr(cupy_cuda, "_modules", {})  # compiled afresh here, whatever ran before
    x, W, b = (cuda_backend.asarray(np.ones(s, np.float32)) for s in ((3, 5), (5, 4), (4,)))
    results = []
    for setting in (1, 0):
        monkeypatch.setattr(cupy_cuda, "GEMM_LAUNCH_BOUNDS", setting)
        results.append(cuda_backend.to_numpy(cuda_backend.dense_forward(x, W, b)))
    for setting in (1, 0):
        assert any(f"-DGEMM_LAUNCH_BOUNDS={setting}" in options for options in compiled)
    assert np.array_equal(*results) and np.array_equal(results[0], np.full((3, 4), 6.0))


def test_channel_chunks_fill_the_gpu_without_tiny_chunks():
    assert cupy_cuda.channel_chunks(64 * 14 * 14, 64) == 6  # 384 blocks on 132 SMs, 2048 values or more each
    assert cupy_cuda.channel_chunks(64 * 28 * 28, 1) == 24  # a 1-channel bias gradient: 24 blocks, not 1
    assert cupy_cuda.channel_chunks(64, 784) == 1  # a dense layer's bias: a block a channel is plenty
    assert cupy_cuda.channel_chunks(10 ** 9, 1) == 528 and cupy_cuda.channel_chunks(1, 1) == 1


@pytest.mark.parametrize("op", ["batchnorm_forward", "batchnorm_backward", "conv2d_backward",
                                "conv_transpose2d_backward"])
def test_channel_reductions_in_chunks_match_the_reference(cuda_backend, op, monkeypatch):
    """Batch norm and the bias gradients with every channel cut into 3 chunks (uneven, and empty ones where a
    channel has fewer than 3 values): the last block of each channel combines the chunks."""
    from .test_backend_parity import test_op_matches_the_float64_reference

    monkeypatch.setattr(cupy_cuda, "channel_chunks", lambda values, channels, multiprocessors=None: 3)
    test_op_matches_the_float64_reference(cuda_backend, op, np.float32)


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (6, 7)])
def test_batchnorm_in_one_launch_gives_the_bits_of_two(cuda_backend, monkeypatch, shape):
    """A channel in one chunk: the statistics kernel normalises too, and the sums' kernel writes dx, each computing
    exactly what the separate launches do."""
    from benchmarks import launches

    rng = np.random.default_rng(0)
    channels = shape[1]
    data = {name: rng.standard_normal(s).astype(np.float32) for name, s in (
        ("x", shape), ("dy", shape), ("gamma", channels), ("beta", channels), ("running_mean", channels))}
    data["running_var"] = rng.uniform(0.5, 2, channels).astype(np.float32)

    def run(one_launch):
        monkeypatch.setattr(cupy_cuda, "BATCHNORM_ONE_LAUNCH", one_launch)
        a = {name: cuda_backend.asarray(v.copy()) for name, v in data.items()}
        a.update({name: cuda_backend.asarray(np.zeros(channels, np.float32))
                  for name in ("mean", "invstd", "dgamma", "dbeta")})
        with launches.record(cupy_cuda) as launched:
            a["y"] = cuda_backend.batchnorm_forward(a["x"], a["gamma"], a["beta"], a["running_mean"],
                                                    a["running_var"], a["mean"], a["invstd"], True,
                                                    activation="leaky_relu")
            a["dx"] = cuda_backend.batchnorm_backward(
                a["x"], a["gamma"], a["y"], a["dy"], a["mean"], a["invstd"], True, "leaky_relu",
                dgamma=a["dgamma"], dbeta=a["dbeta"], dx=cuda_backend.asarray(np.zeros(shape, np.float32)))
        return {name: cuda_backend.to_numpy(v) for name, v in a.items()}, [x.kernel for x in launched]

    (one, one_kernels), (two, two_kernels) = run(1), run(0)
    assert one_kernels == ["batchnorm_stats_kernel", "batchnorm_grad_sums_kernel"] and len(two_kernels) == 4
    for name in ("y", "mean", "invstd", "running_mean", "running_var", "dgamma", "dbeta", "dx"):
        assert np.array_equal(one[name], two[name]), name
    assert not np.array_equal(one["y"], data["x"]) and np.abs(one["dx"]).sum() > 0


def test_draws_move_the_counter_on_in_the_same_launch(cuda_backend):
    """The last block of a draw moves the Philox counter on: one launch a draw, however many blocks it has."""
    rng = cuda_backend.new_rng(1)
    cuda_backend.noise(rng, "normal", cuda_backend.xp.empty((100, 101), np.float32))  # 10 blocks of 256 threads
    cuda_backend.batch_indices(rng, 17, cuda_backend.xp.empty(5, np.int64))
    cuda_backend.noise(rng, "uniform", cuda_backend.xp.empty((3, 3), np.float32))
    assert cuda_backend.rng_state(rng) == {"bit_generator": "philox4x32_10", "key": 1, "counter": 3}
    arrivals = [a for (_, name), kept in cuda_backend._buffers.items() if name == "arrivals" for a in kept]
    assert arrivals and all(not cuda_backend.to_numpy(a).any() for a in arrivals)


def test_gather_rows_copies_the_indexed_rows(cuda_backend):
    """Every value of every gathered row, rows repeated and out of order, a row length not a multiple of a block."""
    data = np.arange(50 * 300, dtype=np.float32).reshape(50, 300)
    idx = np.array([49, 0, 7, 7, 23, 1, 49], dtype=np.int64)
    out = cuda_backend.gather_rows(cuda_backend.asarray(data), cuda_backend.asarray(idx),
                                   cuda_backend.xp.empty((idx.size, 300), np.float32))
    assert np.array_equal(cuda_backend.to_numpy(out), data[idx])


def test_adam_counts_its_steps_on_the_device(cuda_backend):
    """Updates 1, 2, 3 in a row (the count moved on by the kernel itself after the first) equal the reference's."""
    from gan_engine.backends import numpy_ref as R

    rng = np.random.default_rng(0)
    param, m, v = rng.standard_normal(1000), np.zeros(1000), np.zeros(1000)
    ours = [cuda_backend.asarray(a, np.float32) for a in (param, m, v)]
    for step in (1, 2, 3):
        grad = rng.standard_normal(1000)
        R.adam_update(param, grad, m, v, step, 1e-2, 0.5, 0.999, 1e-8)
        cuda_backend.adam_update(*ours[:1], cuda_backend.asarray(grad, np.float32), *ours[1:], step, 1e-2, 0.5, 0.999,
                                 1e-8)
    np.testing.assert_allclose(cuda_backend.to_numpy(ours[0]), param, rtol=1e-5, atol=1e-6)
    count = cuda_backend._steps[ours[0].data.ptr][0]  # the device counter kept for this parameter buffer
    assert int(cuda_backend.to_numpy(count)[0]) == 3


def test_maxout_refuses_more_pieces_than_a_tile_holds(cuda_backend):
    x, W, b = (cuda_backend.asarray(np.zeros(s, np.float32)) for s in ((2, 3), (3, 258), (258,)))
    with pytest.raises(ValueError, match="at most 128 pieces a unit"):
        cuda_backend.maxout_forward(x, W, b, 129, cuda_backend.xp.empty((2, 2), dtype=np.int32))
