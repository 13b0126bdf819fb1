"""Every op of every available backend against the float64 NumPy reference, forward and backward.

The test enumerates `numpy_ref.OPS`, so an op without a parity case here, or a backend without the op, fails.
Each backend runs in float32 (compared with float32 tolerances) and in float64 (compared tightly), on random
shapes that include the awkward sizes 1, 3, 17 and 129. A failure names the op, the case, the tensor and the
worst index. Inputs must come back unchanged.
"""
import numpy as np
import pytest

from gan_engine.backends import numpy_ref as R

from .util import assert_close

ACTS = R.ACTIVATIONS


def _tolerance(dtype, ref):
    scale = max(1.0, float(np.max(np.abs(ref)))) if np.size(ref) else 1.0
    if dtype == np.float32:
        return 2e-5 * scale, 1e-4
    return 1e-11 * scale, 1e-9


def _nan_like(a):
    return np.full_like(a, np.nan)


# Each case builder takes a seeded rng and returns (call, inputs): `inputs` is a dict of float64 host arrays (and
# other arguments) and call(backend, inputs cast to a dtype) returns a dict of named outputs.

def dense_cases():
    shapes = [(1, 3, 1), (3, 17, 129), (17, 129, 3), (129, 17, 17), (64, 129, 129), (129, 3, 1)]
    return [(shape, act) for shape in shapes for act in ACTS]


def _dense_inputs(rng, case):
    (n, i, o), act = case
    return {"x": rng.standard_normal((n, i)), "W": rng.standard_normal((i, o)) / np.sqrt(i),
            "b": rng.standard_normal(o), "act": act}


def run_dense_forward(be, a):
    return {"y": be.dense_forward(a["x"], a["W"], a["b"], a["act"], 0.2, out=_nan_like(a["y0"]))}


def run_dense_backward(be, a):
    dW, db, dx = a["dW0"].copy(), a["db0"].copy(), _nan_like(a["x"])
    be.dense_backward(a["x"], a["W"], a["y0"], a["dy"], a["act"], 0.2, dW=dW, db=db, dx=dx)
    dW2, db2 = a["dW0"].copy(), a["db0"].copy()
    be.dense_backward(a["x"], a["W"], a["y0"], a["dy"], a["act"], 0.2, dW=dW2, db=None, dx=None)
    be.dense_backward(a["x"], a["W"], a["y0"], a["dy"], a["act"], 0.2, db=db2)
    return {"dW": dW, "db": db, "dx": dx, "dW (no db, no dx)": dW2, "db (no dW, no dx)": db2}


def _with_dense_outputs(rng, a):
    a["y0"] = R.dense_forward(a["x"], a["W"], a["b"], a["act"], 0.2)
    a["dy"] = rng.standard_normal(a["y0"].shape)
    a["dW0"], a["db0"] = rng.standard_normal(a["W"].shape), rng.standard_normal(a["b"].shape)
    return a


# maxout cases: (N, I, units, pieces)
def maxout_cases():
    return [(1, 3, 1, 1), (3, 17, 5, 3), (17, 129, 3, 5), (129, 17, 17, 2), (64, 129, 40, 5), (2, 3, 129, 4)]


def _maxout_inputs(rng, case):
    n, i, units, pieces = case
    a = {"x": rng.standard_normal((n, i)), "W": rng.standard_normal((i, units * pieces)) / np.sqrt(i),
         "b": rng.standard_normal(units * pieces), "pieces": pieces, "argmax0": np.zeros((n, units), np.int32)}
    R.maxout_forward(a["x"], a["W"], a["b"], pieces, a["argmax0"])
    z = np.sort((a["x"] @ a["W"] + a["b"]).reshape(n, units, pieces), axis=2)
    # the winner is compared where float32 rounding cannot change it; y is compared everywhere
    a["clear"] = (z[..., -1] - z[..., -2] > 1e-3) if pieces > 1 else np.ones((n, units), bool)
    a["dy"] = rng.standard_normal((n, units))
    a["dW0"], a["db0"] = rng.standard_normal(a["W"].shape), rng.standard_normal(a["b"].shape)
    return a


def run_maxout_forward(be, a):
    argmax = be.asarray(np.full(a["argmax0"].shape, -1, np.int32))
    y = be.maxout_forward(a["x"], a["W"], a["b"], a["pieces"], argmax, out=_nan_like(be.asarray(a["dy"])))
    winner = np.where(be.to_numpy(a["clear"]), be.to_numpy(argmax), -1)
    return {"y": y, "argmax where clear": winner.astype(be.to_numpy(y).dtype)}


def run_maxout_backward(be, a):
    dW, db, dx = a["dW0"].copy(), a["db0"].copy(), _nan_like(a["x"])
    be.maxout_backward(a["x"], a["W"], a["dy"], a["argmax0"], a["pieces"], dW=dW, db=db, dx=dx)
    dx_only, dW_only, db_only = _nan_like(a["x"]), a["dW0"].copy(), a["db0"].copy()
    be.maxout_backward(a["x"], a["W"], a["dy"], a["argmax0"], a["pieces"], dx=dx_only)
    be.maxout_backward(a["x"], a["W"], a["dy"], a["argmax0"], a["pieces"], dW=dW_only)
    be.maxout_backward(a["x"], a["W"], a["dy"], a["argmax0"], a["pieces"], db=db_only)
    return {"dW": dW, "db": db, "dx": dx, "dx (no dW, no db)": dx_only, "dW (no db, no dx)": dW_only,
            "db (no dW, no dx)": db_only}


# conv cases: (N, C_in, C_out, H, W, kernel, stride, padding, output_padding, bias)
CONV_SHAPES = [(1, 1, 1, 3, 3, 1, 1, 0, 0, True), (3, 2, 3, 17, 5, 3, 2, 1, 1, False),
               (2, 3, 17, 8, 8, 4, 2, 1, 0, True), (1, 17, 3, 5, 6, 4, 2, 1, 1, False),
               (17, 4, 3, 4, 4, 4, 2, 1, 0, True), (2, 2, 3, 6, 6, 5, 1, 2, 0, True),
               (3, 5, 4, 7, 7, 3, 3, 0, 2, False),
               (5, 3, 2, 9, 7, (3, 2), (2, 3), (1, 0), (1, 2), True),  # kernel, stride, padding: (height, width)
               (2, 6, 9, 6, 6, 4, 2, 1, 0, True),  # stride phases of 2 x 2 taps over several K slices, both ways
               (1, 5, 9, 7, 7, 3, 2, 1, 0, False)]  # phases of 4, 2 and 1 taps, several K slices


def conv_cases():
    return [(shape, act) for shape in CONV_SHAPES for act in ACTS]


def _conv_inputs(rng, case, transpose):
    (n, ci, co, h, w, k, s, p, op, bias), act = case
    kernel = R._pair(k)
    wshape = (ci, co, *kernel) if transpose else (co, ci, *kernel)
    a = {"x": rng.standard_normal((n, ci, h, w)), "W": rng.standard_normal(wshape) / np.sqrt(ci * np.prod(kernel)),
         "b": rng.standard_normal(co) if bias else None, "s": s, "p": p, "op": op if transpose else 0, "act": act}
    if transpose:
        a["y0"] = R.conv_transpose2d_forward(a["x"], a["W"], a["b"], s, p, a["op"], act, 0.2)
    else:
        a["y0"] = R.conv2d_forward(a["x"], a["W"], a["b"], s, p, act, 0.2)
    a["dy"] = rng.standard_normal(a["y0"].shape)
    a["dW0"], a["db0"] = rng.standard_normal(wshape), rng.standard_normal(co)
    return a


def run_conv2d_forward(be, a):
    return {"y": be.conv2d_forward(a["x"], a["W"], a["b"], a["s"], a["p"], a["act"], 0.2, out=_nan_like(a["y0"]))}


def run_conv2d_backward(be, a):
    dW, db, dx = a["dW0"].copy(), a["db0"].copy(), _nan_like(a["x"])
    be.conv2d_backward(a["x"], a["W"], a["y0"], a["dy"], a["s"], a["p"], a["act"], 0.2, dW=dW, db=db, dx=dx)
    dx_only = _nan_like(a["x"])
    be.conv2d_backward(a["x"], a["W"], a["y0"], a["dy"], a["s"], a["p"], a["act"], 0.2, dx=dx_only)
    return {"dW": dW, "db": db, "dx": dx, "dx (no dW, no db)": dx_only}


def run_conv_transpose2d_forward(be, a):
    return {"y": be.conv_transpose2d_forward(a["x"], a["W"], a["b"], a["s"], a["p"], a["op"], a["act"], 0.2,
                                             out=_nan_like(a["y0"]))}


def run_conv_transpose2d_backward(be, a):
    dW, db, dx = a["dW0"].copy(), a["db0"].copy(), _nan_like(a["x"])
    be.conv_transpose2d_backward(a["x"], a["W"], a["y0"], a["dy"], a["s"], a["p"], a["act"], 0.2, dW=dW, db=db,
                                 dx=dx)
    dW_only = a["dW0"].copy()
    be.conv_transpose2d_backward(a["x"], a["W"], a["y0"], a["dy"], a["s"], a["p"], a["act"], 0.2, dW=dW_only)
    return {"dW": dW, "db": db, "dx": dx, "dW (no db, no dx)": dW_only}


BN_SHAPES = [(3, 1), (17, 3), (129, 17), (2, 3, 4, 5), (3, 17, 1, 1), (1, 3, 17, 3)]


def batchnorm_cases():
    return [(shape, act, train) for shape in BN_SHAPES for act in ("identity", "relu", "leaky_relu", "tanh")
            for train in (True, False)]


def _bn_inputs(rng, case):
    shape, act, train = case
    c = shape[1]
    a = {"x": 2 + 3 * rng.standard_normal(shape), "gamma": 1 + 0.1 * rng.standard_normal(c),
         "beta": rng.standard_normal(c), "rm": rng.standard_normal(c), "rv": 1 + rng.random(c), "train": train,
         "act": act}
    rm, rv, mean, invstd = a["rm"].copy(), a["rv"].copy(), np.empty(c), np.empty(c)
    a["y0"] = R.batchnorm_forward(a["x"], a["gamma"], a["beta"], rm, rv, mean, invstd, train, 0.1, 1e-5, act, 0.2)
    a["mean"], a["invstd"] = mean, invstd
    a["dy"] = rng.standard_normal(shape)
    a["dgamma0"], a["dbeta0"] = rng.standard_normal(c), rng.standard_normal(c)
    return a


def run_batchnorm_forward(be, a):
    rm, rv = a["rm"].copy(), a["rv"].copy()
    mean, invstd = _nan_like(a["rm"]), _nan_like(a["rm"])
    y = be.batchnorm_forward(a["x"], a["gamma"], a["beta"], rm, rv, mean, invstd, a["train"], 0.1, 1e-5, a["act"],
                             0.2, out=_nan_like(a["x"]))
    return {"y": y, "running_mean": rm, "running_var": rv, "mean": mean, "invstd": invstd}


def run_batchnorm_backward(be, a):
    dgamma, dbeta, dx = a["dgamma0"].copy(), a["dbeta0"].copy(), _nan_like(a["x"])
    be.batchnorm_backward(a["x"], a["gamma"], a["y0"], a["dy"], a["mean"], a["invstd"], a["train"], a["act"], 0.2,
                          dgamma=dgamma, dbeta=dbeta, dx=dx)
    dgamma_only = a["dgamma0"].copy()
    be.batchnorm_backward(a["x"], a["gamma"], a["y0"], a["dy"], a["mean"], a["invstd"], a["train"], a["act"], 0.2,
                          dgamma=dgamma_only)
    return {"dgamma": dgamma, "dbeta": dbeta, "dx": dx, "dgamma (no dbeta, no dx)": dgamma_only}


def activation_cases():
    return [(shape, act) for shape in [(1,), (17, 3), (3, 17, 5, 5), (129, 129)] for act in ACTS]


def _activation_inputs(rng, case):
    shape, act = case
    x = 3 * rng.standard_normal(shape)
    return {"x": x, "y0": R.activation_forward(x, act, 0.2), "dy": rng.standard_normal(shape), "act": act}


def run_activation_forward(be, a):
    return {"y": be.activation_forward(a["x"], a["act"], 0.2, out=_nan_like(a["x"]))}


def run_activation_backward(be, a):
    return {"dx": be.activation_backward(a["y0"], a["dy"], a["act"], 0.2, dx=_nan_like(a["x"]))}


def bce_cases():
    return [(n, target, scale) for n in (1, 3, 129) for target in (0.0, 0.9, 1.0) for scale in (1.0, -1.0)]


def _bce_inputs(rng, case):
    n, target, scale = case
    x = 5 * rng.standard_normal((n, 1))
    x[0, 0] = 1e4 if n > 1 else x[0, 0]
    x[-1, 0] = -1e4 if n > 2 else x[-1, 0]
    return {"x": x, "target": target, "scale": scale}


def run_bce_with_logits(be, a):
    dlogits = _nan_like(a["x"])
    loss, p = be.bce_with_logits(a["x"], a["target"], a["scale"], dlogits)
    return {"loss": loss, "mean_p": p, "dlogits": dlogits}


def bce_real_fake_cases():
    return [(b, target) for b in (1, 3, 129) for target in (1.0, 0.9)]


def _bce_real_fake_inputs(rng, case):
    b, target = case
    x = 5 * rng.standard_normal((2 * b, 1))
    x[0, 0], x[-1, 0] = 1e4, -1e4  # a real and a fake far out
    return {"x": x, "target": target}


def run_bce_real_fake(be, a):
    dlogits = _nan_like(a["x"])
    loss, d_real, d_fake = be.bce_real_fake(a["x"], a["target"], dlogits)
    return {"loss": loss, "mean_p reals": d_real, "mean_p fakes": d_fake, "dlogits": dlogits}


def optim_cases():
    return [(size, step) for size in (1, 17, 129 * 129 + 3) for step in (1, 7)]


def _optim_inputs(rng, case):
    size, step = case
    return {"param": rng.standard_normal(size), "grad": rng.standard_normal(size),
            "m": 0.1 * rng.standard_normal(size), "v": 0.1 * rng.random(size), "step": step}


def run_sgd_update(be, a):
    param, velocity = a["param"].copy(), a["m"].copy()
    be.sgd_update(param, a["grad"], velocity, 0.01, 0.9)
    return {"param": param, "velocity": velocity}


def run_adam_update(be, a):
    param, m, v = a["param"].copy(), a["m"].copy(), a["v"].copy()
    be.adam_update(param, a["grad"], m, v, a["step"], 1e-3, 0.5, 0.999, 1e-8)
    return {"param": param, "m": m, "v": v}


def run_average_update(be, a):
    average = a["m"].copy()
    be.average_update(average, a["param"], 0.999)
    return {"average": average}


CASES = {
    "dense_forward": (dense_cases, lambda rng, c: _with_dense_outputs(rng, _dense_inputs(rng, c))),
    "dense_backward": (dense_cases, lambda rng, c: _with_dense_outputs(rng, _dense_inputs(rng, c))),
    "maxout_forward": (maxout_cases, _maxout_inputs),
    "maxout_backward": (maxout_cases, _maxout_inputs),
    "conv2d_forward": (conv_cases, lambda rng, c: _conv_inputs(rng, c, False)),
    "conv2d_backward": (conv_cases, lambda rng, c: _conv_inputs(rng, c, False)),
    "conv_transpose2d_forward": (conv_cases, lambda rng, c: _conv_inputs(rng, c, True)),
    "conv_transpose2d_backward": (conv_cases, lambda rng, c: _conv_inputs(rng, c, True)),
    "batchnorm_forward": (batchnorm_cases, _bn_inputs),
    "batchnorm_backward": (batchnorm_cases, _bn_inputs),
    "activation_forward": (activation_cases, _activation_inputs),
    "activation_backward": (activation_cases, _activation_inputs),
    "bce_with_logits": (bce_cases, _bce_inputs),
    "bce_real_fake": (bce_real_fake_cases, _bce_real_fake_inputs),
    "sgd_update": (optim_cases, _optim_inputs),
    "adam_update": (optim_cases, _optim_inputs),
    "average_update": (optim_cases, _optim_inputs),
}
RANDOM_OPS = ("noise", "batch_indices", "gather_rows", "draw_rows")  # exact: the same stream and the same rows


def _skip_unsupported_dtype(backend, dtype):
    """Skip, with the reason, a dtype a backend does not run (DTYPES)."""
    if dtype not in getattr(backend, "DTYPES", (np.float32, np.float64)):
        pytest.skip(f"backend {backend.name} runs no {np.dtype(dtype).name}")


def _cast(inputs, dtype, backend):
    """The inputs as `backend` arrays, of `dtype` where they are floating point (other arguments as they are)."""
    return {k: backend.asarray(v, dtype if v.dtype.kind == "f" else v.dtype) if isinstance(v, np.ndarray) else v
            for k, v in inputs.items()}


def test_every_reference_op_has_a_parity_case():
    missing = [op for op in R.OPS if op not in CASES and op not in RANDOM_OPS]
    assert not missing, f"no parity case for {missing}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("op", [op for op in R.OPS if op not in RANDOM_OPS])
def test_op_matches_the_float64_reference(backend, op, dtype):
    assert callable(getattr(backend, op, None)), f"backend {backend.name} lacks {op}"
    _skip_unsupported_dtype(backend, dtype)
    cases, make_inputs = CASES[op]
    run = globals()[f"run_{op}"]
    for i, case in enumerate(cases()):
        inputs = make_inputs(np.random.default_rng(i), case)
        want = run(R, inputs)
        given = _cast(inputs, dtype, backend)
        kept = {k: backend.to_numpy(v).copy() for k, v in given.items() if hasattr(v, "dtype")}
        got = run(backend, given)
        for name, value in got.items():
            value = backend.to_numpy(value)
            label = f"{backend.name} {op} {np.dtype(dtype).name} case {case}: {name}"
            assert value.dtype == dtype, f"{label}: dtype {value.dtype}"
            atol, rtol = _tolerance(dtype, want[name])
            assert_close(label, value, want[name], atol=atol, rtol=rtol)
        for k, v in kept.items():
            assert np.array_equal(backend.to_numpy(given[k]), v, equal_nan=True), (
                f"{backend.name} {op} case {case} changed input {k}")


def test_worked_transposed_convolutions_on_every_backend(backend):
    """Seed 003's example and a stride-2 padded one worked by hand (tests/test_reference_conv_ops.py), exact in
    float32 on every backend."""
    x = backend.asarray(np.array([[[[0.0, 1.0], [2.0, 3.0]]]], dtype=np.float32))
    K = backend.asarray(np.array([[[[0.0, 1.0], [2.0, 3.0]]]], dtype=np.float32))
    y = backend.to_numpy(backend.conv_transpose2d_forward(x, K, None, 1, 0))
    assert y.tolist() == [[[[0, 0, 1], [0, 4, 6], [4, 12, 9]]]]
    x = backend.asarray(np.array([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=np.float32))
    K = backend.asarray(np.array([[[[1.0, 0.0, 2.0], [0.0, 1.0, 0.0], [3.0, 0.0, 1.0]]]], dtype=np.float32))
    b = backend.asarray(np.array([0.5], dtype=np.float32))
    y = backend.to_numpy(backend.conv_transpose2d_forward(x, K, b, 2, 1, 1))
    assert (y - 0.5).tolist() == [[[[1, 0, 2, 0], [0, 17, 0, 10], [3, 0, 4, 0], [0, 15, 0, 4]]]]


@pytest.mark.parametrize("prior", R.PRIORS)
def test_noise_and_batches_are_the_reference_stream(backend, prior):
    if getattr(backend, "RANDOM_STREAM", "numpy") != "numpy":
        pytest.skip(f"backend {backend.name} draws from its own generator ({backend.RANDOM_STREAM})")
    ours, theirs = backend.new_rng(5), R.new_rng(5)
    for shape in [(1, 3), (17, 129), (64, 100)]:
        got = backend.to_numpy(backend.noise(ours, prior, backend.xp.empty(shape, dtype=np.float32)))
        want = R.noise(theirs, prior, np.empty(shape, dtype=np.float32))
        assert np.array_equal(got, want), f"{backend.name} noise {prior} {shape} differs from the reference"
    data = np.arange(129 * 3, dtype=np.float32).reshape(129, 3)
    for n, b in [(1, 1), (17, 3), (129, 129)]:
        idx = backend.batch_indices(ours, n, backend.xp.empty(b, dtype=np.int64))
        want_idx = R.batch_indices(theirs, n, np.empty(b, dtype=np.int64))
        assert np.array_equal(backend.to_numpy(idx), want_idx), f"{backend.name} batch_indices n={n} B={b}"
        rows = backend.gather_rows(backend.asarray(data), idx, backend.xp.empty((b, 3), dtype=np.float32))
        assert np.array_equal(backend.to_numpy(rows), data[want_idx]), f"{backend.name} gather_rows n={n} B={b}"
        all_idx, rows = backend.xp.empty(2 * b, dtype=np.int64), backend.xp.empty((b, 3), dtype=np.float32)
        backend.draw_rows(ours, backend.asarray(data[:n]), all_idx, b, rows)  # the second half of 2 B draws
        want_idx = R.batch_indices(theirs, n, np.empty(2 * b, dtype=np.int64))
        assert np.array_equal(backend.to_numpy(all_idx), want_idx), f"{backend.name} draw_rows n={n} B={b}"
        assert np.array_equal(backend.to_numpy(rows), data[want_idx[b:]]), f"{backend.name} draw_rows n={n} B={b}"


def test_a_drawn_batch_is_the_drawn_indices_rows(backend):
    """draw_rows on every backend (its own generator too): the same indices as batch_indices from the same state,
    and this rank's rows of them gathered; the stream moves on as after batch_indices."""
    data = backend.asarray(np.arange(129 * 5, dtype=np.float32).reshape(129, 5))
    for n, draws, first, b in [(1, 1, 0, 1), (17, 12, 4, 4), (129, 300, 100, 200)]:
        one, two = backend.new_rng(7), backend.new_rng(7)
        idx = backend.xp.empty(draws, dtype=np.int64)
        rows = backend.draw_rows(one, data[:n], idx, first, backend.xp.empty((b, 5), dtype=np.float32))
        want = backend.to_numpy(backend.batch_indices(two, n, backend.xp.empty(draws, dtype=np.int64)))
        assert np.array_equal(backend.to_numpy(idx), want), f"{backend.name}: n={n} draws={draws}"
        assert np.array_equal(backend.to_numpy(rows), backend.to_numpy(data)[want[first:first + b]])
        after = [backend.to_numpy(backend.batch_indices(rng, 1000, backend.xp.empty(8, dtype=np.int64)))
                 for rng in (one, two)]
        assert np.array_equal(*after), f"{backend.name}: the stream after draw_rows differs"


def _trainer(backend, model, dtype, optimizer):
    from gan_engine import SGD, Adam, Trainer, mlp_discriminator, mlp_generator
    from gan_engine.models import dcgan_discriminator, dcgan_generator

    from gan_engine.layers import BatchNorm, Dense, Maxout, Sequential

    pac = 1
    if model == "mlp":
        G = mlp_generator(8, (17,), 129, backend=backend, dtype=dtype, seed=0)
        D = mlp_discriminator(129, (33,), backend=backend, dtype=dtype, seed=1)
    elif model == "dcgan":
        G = dcgan_generator(8, (1, 8, 8), (17, 3), backend=backend, dtype=dtype, seed=0)
        D = dcgan_discriminator((1, 8, 8), (3, 17), backend=backend, dtype=dtype, seed=1)
    elif model == "dcgan-pac2":  # two images stacked along the channels
        G, pac = dcgan_generator(8, (1, 8, 8), (17, 3), backend=backend, dtype=dtype, seed=0), 2
        D = dcgan_discriminator((2, 8, 8), (3, 17), backend=backend, dtype=dtype, seed=1)
    else:  # "pacgan-pac3": the PacGAN protocol's layers, small (with its update rule: "pacgan-pac3-simultaneous";
        # "pacgan-pac3-slots-simultaneous": and its batch norm, per pack slot with a running standard deviation, and
        # its real packs, made once)
        norm = {"eps": 1e-4, "running": "stdev", "slots": 3} if "-slots" in model else {}
        G = Sequential([Dense(8, 17, init="normal", bias=False),
                        BatchNorm(17, momentum=0.05, activation="relu", **norm),
                        Dense(17, 3, init="normal")], backend=backend, dtype=dtype, seed=0)
        D = Sequential([Maxout(9, 5, 5, init="normal"), Maxout(5, 4, 3, init="normal"), Dense(4, 1, init="normal")],
                       backend=backend, dtype=dtype, seed=1)
        pac = 3
    make = (lambda m: Adam(m, lr=1e-3, beta1=0.5)) if optimizer == "adam" else (lambda m: SGD(m, lr=0.1))
    data = np.random.default_rng(2).uniform(-1, 1, (50, G.out_features))
    update = "simultaneous" if model.endswith("-simultaneous") else "alternating"
    real_packs = "fixed" if "-slots" in model else "drawn"
    return Trainer(G, D, data, batch_size=17, seed=3, opt_g=make(G), opt_d=make(D), pac=pac, update=update,
                   real_packs=real_packs)


def _draw_like_the_reference(monkeypatch, backend, seed):
    """Make a backend with its own generator draw the reference's noise and batches for `seed` (host-drawn,
    copied in), so its trainer sees exactly what the NumPy trainer with the same seed sees."""
    host = R.new_rng(seed)

    def noise(rng, prior, out):
        out[...] = backend.asarray(R.noise(host, prior, np.empty(out.shape, dtype=np.float32)))
        return out

    def batch_indices(rng, n, out):
        out[...] = backend.asarray(R.batch_indices(host, n, np.empty(out.shape, dtype=np.int64)))
        return out

    def draw_rows(rng, data, idx, first, out):
        batch_indices(rng, data.shape[0], idx)
        return backend.gather_rows(data, idx[first:first + out.shape[0]], out)

    monkeypatch.setattr(backend, "noise", noise)
    monkeypatch.setattr(backend, "batch_indices", batch_indices)
    monkeypatch.setattr(backend, "draw_rows", draw_rows)


@pytest.mark.parametrize("model", ["mlp", "dcgan", "dcgan-pac2", "pacgan-pac3", "pacgan-pac3-simultaneous",
                                   "pacgan-pac3-slots-simultaneous"])
@pytest.mark.parametrize("dtype, optimizer", [(np.float32, "sgd"), (np.float64, "adam")], ids=["float32-sgd",
                                                                                              "float64-adam"])
def test_whole_step_matches_numpy(backend, model, dtype, optimizer, monkeypatch):
    """One step (a D step and a G step, or one simultaneous update) from identical weights, noise and batch gives
    the same weights on both backends.

    Adam runs in float64: its first update is lr * sign(g) for every |g| >> eps, so a float32 rounding of a
    near-zero gradient could flip a weight by 2 lr on either backend; SGD shows float32 agreement."""
    _skip_unsupported_dtype(backend, dtype)
    if getattr(backend, "RANDOM_STREAM", "numpy") != "numpy":
        _draw_like_the_reference(monkeypatch, backend, seed=3)
    ours, theirs = _trainer(backend, model, dtype, optimizer), _trainer("numpy", model, dtype, optimizer)
    got, want = ours.read_metrics(ours.step()), theirs.read_metrics(theirs.step())
    atol, rtol = (1e-5, 1e-4) if dtype == np.float32 else (1e-10, 1e-8)
    for k in want:
        assert_close(f"{backend.name} {model} step metric {k}", got[k], want[k], atol=atol, rtol=rtol)
    for name, a, b in (("G", ours.G, theirs.G), ("D", ours.D, theirs.D)):
        for key, value in a.state_dict().items():
            assert_close(f"{backend.name} {model} {name} {key} after one step", value, b.state_dict()[key],
                         atol=atol, rtol=rtol)


def test_adam_at_a_late_step_matches_the_closed_formula(backend):
    """Step t = 10 from non-zero moments, both bias corrections 1 / (1 - beta^10), against the formula in float64."""
    rng = np.random.default_rng(10)
    p, g, m = (rng.standard_normal(64) for _ in range(3))
    v = rng.uniform(0.01, 1.0, 64)
    lr, b1, b2, eps, t = 1e-3, 0.5, 0.999, 1e-8, 10
    m2 = b1 * m + (1 - b1) * g
    v2 = b2 * v + (1 - b2) * g * g
    want = p - lr * (m2 / (1 - b1 ** t)) / (np.sqrt(v2 / (1 - b2 ** t)) + eps)
    bp, bg, bm, bv = (backend.asarray(a, np.float32) for a in (p, g, m, v))
    backend.adam_update(bp, bg, bm, bv, t, lr, b1, b2, eps)
    np.testing.assert_allclose(backend.to_numpy(bm), m2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(backend.to_numpy(bv), v2, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(backend.to_numpy(bp), want, rtol=1e-5, atol=1e-6)


def test_maxout_picks_the_first_largest_piece_and_nan_wins_on_every_backend(backend):
    """Units of 4 pieces as the reference takes them: a tie (the first wins), a NaN after a larger piece and a NaN
    first (NaN wins, the first NaN), +inf beside -inf (their sum is NaN, yet no piece is), all -inf, two NaNs."""
    nan, inf = np.nan, np.inf
    z = np.array([[1, 3, 3, 2], [5, nan, 1, 7], [nan, 9, 1, 2], [-inf, inf, 0, 1], [-inf, -inf, -inf, -inf],
                  [0, nan, nan, 4]], dtype=np.float32).reshape(1, -1)  # (1, U pieces) = x @ W with x = [[1]]
    want_argmax = np.empty((1, 6), np.int32)
    want = R.maxout_forward(np.ones((1, 1), np.float32), z, np.zeros(24, np.float32), 4, want_argmax)
    assert want_argmax.tolist() == [[1, 1, 0, 1, 0, 1]]  # the cases are what the docstring says
    argmax = backend.xp.empty((1, 6), dtype=np.int32)
    got = backend.maxout_forward(backend.asarray(np.ones((1, 1)), np.float32), backend.asarray(z, np.float32),
                                 backend.asarray(np.zeros(24), np.float32), 4, argmax)
    np.testing.assert_array_equal(backend.to_numpy(got), want)  # NaN where NaN
    assert backend.to_numpy(argmax).tolist() == want_argmax.tolist()
