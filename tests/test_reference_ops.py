"""The NumPy reference ops: values against formulas written out here, and float64 finite-difference gradients."""
import numpy as np
import pytest

from gan_engine.backends import numpy_ref as R

from .util import assert_close, numerical_grad, rel_error

ACTIVATION_FORMULAS = {
    "identity": lambda z: z,
    "leaky_relu": lambda z: np.where(z > 0, z, 0.2 * z),
    "relu": lambda z: np.where(z > 0, z, 0.0),
    "tanh": np.tanh,
    "sigmoid": lambda z: 1.0 / (1.0 + np.exp(-z)),
}


def _dense_inputs(rng, n=5, i=4, o=3, dtype=np.float64):
    return (rng.standard_normal((n, i)).astype(dtype), rng.standard_normal((i, o)).astype(dtype),
            rng.standard_normal(o).astype(dtype))


@pytest.mark.parametrize("activation", R.ACTIVATIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_forward_matches_formula(activation, dtype):
    x, W, b = _dense_inputs(np.random.default_rng(0), dtype=dtype)
    y = R.dense_forward(x, W, b, activation, 0.2)
    assert y.dtype == dtype
    expected = ACTIVATION_FORMULAS[activation](x.astype(np.float64) @ W.astype(np.float64) + b)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert_close(f"dense_forward[{activation}]", y, expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("activation", R.ACTIVATIONS)
def test_dense_backward_gradcheck(activation):
    rng = np.random.default_rng(1)
    x, W, b = _dense_inputs(rng)
    r = rng.standard_normal((5, 3))  # L = sum(y * r), so dL/dy = r

    def loss():
        return float((R.dense_forward(x, W, b, activation, 0.2) * r).sum())

    y = R.dense_forward(x, W, b, activation, 0.2)
    dW, db, dx = np.zeros_like(W), np.zeros_like(b), np.full_like(x, np.nan)
    R.dense_backward(x, W, y, r, activation, 0.2, dW=dW, db=db, dx=dx)
    for name, analytic, wrt in (("dx", dx, x), ("dW", dW, W), ("db", db, b)):
        err = rel_error(analytic, numerical_grad(loss, wrt))
        assert err < 1e-6, f"{activation} {name}: relative error {err:.2e}"


def test_dense_backward_accumulates_parameter_grads_and_skips_none():
    rng = np.random.default_rng(2)
    x, W, b = _dense_inputs(rng)
    y = R.dense_forward(x, W, b, "tanh")
    dy = rng.standard_normal(y.shape)
    dW, db = np.zeros_like(W), np.zeros_like(b)
    R.dense_backward(x, W, y, dy, "tanh", dW=dW, db=db)
    once = dW.copy(), db.copy()
    assert R.dense_backward(x, W, y, dy, "tanh", dW=dW, db=db) is None  # no dx asked for
    assert_close("dW twice", dW, 2 * once[0], atol=1e-12)
    assert_close("db twice", db, 2 * once[1], atol=1e-12)


def test_leaky_relu_slope_at_and_below_zero():
    x = np.array([[-2.0], [0.0], [3.0]])
    y = R.dense_forward(x, np.eye(1), np.zeros(1), "leaky_relu", 0.1)
    assert_close("y", y, [[-0.2], [0.0], [3.0]], atol=1e-15)
    dx = np.empty_like(x)
    R.dense_backward(x, np.eye(1), y, np.ones_like(y), "leaky_relu", 0.1, dx=dx)
    assert_close("dx", dx, [[0.1], [0.1], [1.0]], atol=1e-15)  # slope alpha at z <= 0, as in seed 000


def bce_formula(x, t):
    s = 1 / (1 + np.exp(-x))
    return np.mean(-t * np.log(s) - (1 - t) * np.log(1 - s))


@pytest.mark.parametrize("target", [0.0, 1.0, 0.9])
@pytest.mark.parametrize("scale", [1.0, -1.0])
def test_bce_value_and_gradcheck(target, scale):
    x = np.random.default_rng(3).standard_normal((7, 1)) * 3
    d = np.empty_like(x)
    loss, prob = R.bce_with_logits(x, target, scale, d)
    assert_close("loss", loss, scale * bce_formula(x, target), atol=1e-12, rtol=1e-12)
    assert_close("mean prob", prob, np.mean(1 / (1 + np.exp(-x))), atol=1e-12)
    numeric = numerical_grad(lambda: float(R.bce_with_logits(x, target, scale)[0]), x)
    assert rel_error(d, numeric) < 1e-6


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_is_finite_and_exact_at_large_logits(dtype):
    x = np.array([[1e4], [-1e4]], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # no overflow on the way
        loss1, p1 = R.bce_with_logits(x, 1.0)
        d0 = np.empty_like(x)
        loss0, _ = R.bce_with_logits(x, 0.0, 1.0, d0)
    # per-sample losses: target 1 -> [0, 1e4]; target 0 -> [1e4, 0]; means over N = 2
    assert float(loss1) == 5000.0 and float(loss0) == 5000.0
    assert float(p1) == 0.5
    assert loss1.dtype == dtype
    assert d0.tolist() == [[0.5], [0.0]]  # (sigmoid(x) - 0) / 2


def test_sgd_update_matches_pytorch_form():
    rng = np.random.default_rng(4)
    p, v = rng.standard_normal(6), np.zeros(6)
    expected_p, expected_v = p.copy(), v.copy()
    for _ in range(3):
        g = rng.standard_normal(6)
        expected_v = 0.9 * expected_v + g
        expected_p = expected_p - 0.1 * expected_v
        R.sgd_update(p, g, v, 0.1, 0.9)
    assert_close("param", p, expected_p, atol=1e-14)
    assert_close("velocity", v, expected_v, atol=1e-14)


def test_adam_update_matches_elementwise_loop():
    rng = np.random.default_rng(5)
    p, m, v = rng.standard_normal(5), np.zeros(5), np.zeros(5)
    ep, em, ev = p.tolist(), [0.0] * 5, [0.0] * 5
    lr, b1, b2, eps = 0.01, 0.5, 0.999, 1e-8
    for t in range(1, 4):
        g = rng.standard_normal(5)
        R.adam_update(p, g, m, v, t, lr, b1, b2, eps)
        for i in range(5):
            em[i] = b1 * em[i] + (1 - b1) * g[i]
            ev[i] = b2 * ev[i] + (1 - b2) * g[i] ** 2
            ep[i] -= lr * (em[i] / (1 - b1 ** t)) / ((ev[i] / (1 - b2 ** t)) ** 0.5 + eps)
    assert_close("param", p, ep, atol=1e-13)
    assert_close("m", m, em, atol=1e-14)
    assert_close("v", v, ev, atol=1e-14)


def test_adam_first_step_moves_each_parameter_by_lr():
    g = np.array([3.0, -0.001, 20.0])
    p = np.zeros(3)
    R.adam_update(p, g, np.zeros(3), np.zeros(3), 1, 0.01)
    assert_close("step", p, -0.01 * np.sign(g), atol=1e-7)


def test_average_update_weights_past_values_by_powers_of_the_decay():
    values = [np.array([1.0, -2.0]), np.array([4.0, 0.5]), np.array([-3.0, 8.0])]
    average, d = np.zeros(2), 0.9
    for value in values:
        R.average_update(average, value, d)
    # from zero, after values v1, v2, v3: (1 - d) (d^2 v1 + d v2 + v3)
    assert_close("average", average, 0.1 * (0.81 * values[0] + 0.9 * values[1] + values[2]), atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_noise_priors(dtype):
    out = np.empty((20000, 4), dtype=dtype)
    z = R.noise(R.new_rng(0), "normal", out)
    assert z is out and abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    u = R.noise(R.new_rng(0), "uniform", out)
    assert u.min() >= -1 and u.max() < 1 and abs(u.mean()) < 0.02 and abs(u.var() - 1 / 3) < 0.01
    with pytest.raises(ValueError, match="unknown prior"):
        R.noise(R.new_rng(0), "cauchy", out)


def test_batch_indices_and_gather_rows():
    rng = R.new_rng(1)
    idx = R.batch_indices(rng, 10, np.empty(1000, dtype=np.int64))
    assert idx.min() == 0 and idx.max() == 9
    data = np.arange(30.0).reshape(10, 3)
    out = R.gather_rows(data, idx[:4], np.empty((4, 3)))
    assert out.tolist() == data[idx[:4]].tolist()


def test_rng_state_round_trip_replays_the_same_draws():
    rng = R.new_rng(7)
    state = R.rng_state(rng)
    first = R.noise(rng, "normal", np.empty((3, 2))).copy()
    R.set_rng_state(rng, state)
    assert R.noise(rng, "normal", np.empty((3, 2))).tolist() == first.tolist()
