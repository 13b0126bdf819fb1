"""The NumPy reference convolution, transposed convolution, batch norm and activation ops: worked examples,
direct-loop definitions, the adjoint identity and float64 finite-difference gradients."""
import numpy as np
import pytest

from gan_engine.backends import numpy_ref as R

from .util import assert_close, numerical_grad, rel_error


def conv2d_loops(x, W, b, stride, padding):
    """The definition, one multiply-add at a time: y[n, o, p, q] = b[o] + sum W[o, c, i, j] x_pad[n, c, p s + i, q s + j]."""
    n, c, h, w = x.shape
    co, _, kh, kw = W.shape
    x_pad = np.zeros((n, c, h + 2 * padding, w + 2 * padding))
    x_pad[:, :, padding:padding + h, padding:padding + w] = x
    oh, ow = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    y = np.zeros((n, co, oh, ow))
    for nn in range(n):
        for o in range(co):
            for p in range(oh):
                for q in range(ow):
                    patch = x_pad[nn, :, p * stride:p * stride + kh, q * stride:q * stride + kw]
                    y[nn, o, p, q] = (W[o] * patch).sum() + (b[o] if b is not None else 0.0)
    return y


def conv_transpose2d_loops(x, W, b, stride, padding, output_padding):
    """The definition, one stamp at a time: x[n, c, h, w] * W[c] added at (h s - padding, w s - padding)."""
    n, ci, h, w = x.shape
    _, co, kh, kw = W.shape
    oh = (h - 1) * stride - 2 * padding + kh + output_padding
    ow = (w - 1) * stride - 2 * padding + kw + output_padding
    canvas = np.zeros((n, co, oh + 2 * padding + kh, ow + 2 * padding + kw))  # generous, cropped below
    for nn in range(n):
        for c in range(ci):
            for r in range(h):
                for s in range(w):
                    canvas[nn, :, r * stride:r * stride + kh, s * stride:s * stride + kw] += x[nn, c, r, s] * W[c]
    y = canvas[:, :, padding:padding + oh, padding:padding + ow]
    return y + (b.reshape(-1, 1, 1) if b is not None else 0.0)


def test_seed_003_transposed_convolution_example():
    x = np.array([[[[0.0, 1.0], [2.0, 3.0]]]])  # (1, 1, 2, 2)
    K = np.array([[[[0.0, 1.0], [2.0, 3.0]]]])  # (C_in 1, C_out 1, 2, 2)
    y = R.conv_transpose2d_forward(x, K, None, 1, 0)
    assert y.tolist() == [[[[0, 0, 1], [0, 4, 6], [4, 12, 9]]]]


def test_stride_2_padded_transposed_convolution_worked_by_hand():
    # Each input pixel x[r, s] stamps x[r, s] * K on a 5x5 canvas at rows 2r..2r+2, cols 2s..2s+2:
    #   1*K at (0, 0), 2*K at (0, 2), 3*K at (2, 0), 4*K at (2, 2), with K = [[1,0,2],[0,1,0],[3,0,1]]:
    #   [[1, 0, 4, 0, 4],
    #    [0, 1, 0, 2, 0],
    #    [6, 0, 17, 0, 10],      17 = K[2,2] + 2 K[2,0] + 3 K[0,2] + 4 K[0,0] = 1 + 6 + 6 + 4
    #    [0, 3, 0, 4, 0],
    #    [9, 0, 15, 0, 4]]
    # padding 1 crops one row and column from each side: the 3x3 centre; output_padding 1 keeps one more
    # row and column at the bottom and right (4x4). The bias adds 0.5 everywhere.
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    K = np.array([[[[1.0, 0.0, 2.0], [0.0, 1.0, 0.0], [3.0, 0.0, 1.0]]]])
    b = np.array([0.5])
    y = R.conv_transpose2d_forward(x, K, b, 2, 1)
    assert (y - 0.5).tolist() == [[[[1, 0, 2], [0, 17, 0], [3, 0, 4]]]]
    y = R.conv_transpose2d_forward(x, K, b, 2, 1, output_padding=1)
    assert (y - 0.5).tolist() == [[[[1, 0, 2, 0], [0, 17, 0, 10], [3, 0, 4, 0], [0, 15, 0, 4]]]]


CONV_CASES = [  # (N, C_in, C_out, H, W, kH, kW, stride, padding, output_padding)
    (2, 3, 4, 5, 5, 3, 3, 1, 1, 0),
    (2, 2, 3, 8, 6, 4, 4, 2, 1, 0),
    (1, 3, 2, 7, 7, 4, 4, 2, 1, 1),
    (3, 1, 2, 6, 9, 3, 2, 3, 0, 2),
    (2, 4, 1, 4, 4, 5, 5, 1, 2, 0),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_forward_matches_loops(case):
    n, ci, co, h, w, kh, kw, s, p, _ = case
    rng = np.random.default_rng(0)
    x, W, b = rng.standard_normal((n, ci, h, w)), rng.standard_normal((co, ci, kh, kw)), rng.standard_normal(co)
    assert_close("conv2d", R.conv2d_forward(x, W, b, s, p), conv2d_loops(x, W, b, s, p), atol=1e-12)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_transpose2d_forward_matches_loops(case):
    n, ci, co, h, w, kh, kw, s, p, op = case
    rng = np.random.default_rng(1)
    x, W, b = rng.standard_normal((n, ci, h, w)), rng.standard_normal((ci, co, kh, kw)), rng.standard_normal(co)
    y = R.conv_transpose2d_forward(x, W, b, s, p, op)
    assert y.shape == (n, co, R.conv_transpose2d_output_size(h, kh, s, p, op),
                       R.conv_transpose2d_output_size(w, kw, s, p, op))
    assert_close("conv_transpose2d", y, conv_transpose2d_loops(x, W, b, s, p, op), atol=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_adjoint_identity_for_random_shapes(seed):
    """<conv_transpose2d(x, W), y> = <x, conv2d(y, W)> with one W, stride and padding."""
    rng = np.random.default_rng(seed)
    n, ci, co = rng.integers(1, 4, size=3)
    kh, kw = rng.integers(1, 6, size=2)
    s = int(rng.integers(1, 4))
    p = int(rng.integers(0, min(kh, kw)))
    op = int(rng.integers(0, s))
    h, w = rng.integers(2, 7, size=2)
    x, W = rng.standard_normal((n, ci, h, w)), rng.standard_normal((ci, co, kh, kw))
    t = R.conv_transpose2d_forward(x, W, None, s, p, op)
    y = rng.standard_normal(t.shape)
    back = R.conv2d_forward(y, W, None, s, p)
    assert back.shape == x.shape
    lhs, rhs = float((t * y).sum()), float((x * back).sum())
    assert abs(lhs - rhs) <= 1e-10 * (abs(lhs) + 1), (lhs, rhs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_ops_keep_the_input_dtype(dtype):
    rng = np.random.default_rng(2)
    x, W = rng.standard_normal((2, 3, 6, 6)).astype(dtype), rng.standard_normal((3, 4, 4, 4)).astype(dtype)
    b = np.zeros(4, dtype=dtype)
    t = R.conv_transpose2d_forward(x, W, b, 2, 1, activation="tanh")
    c = R.conv2d_forward(t, W, b[:3], 2, 1, activation="leaky_relu")
    assert t.dtype == dtype and c.dtype == dtype and t.shape == (2, 4, 12, 12) and c.shape == x.shape
    ref = conv2d_loops(t.astype(np.float64), W.astype(np.float64), None, 2, 1)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    assert_close("conv2d", c, np.where(ref > 0, ref, 0.2 * ref), atol=tol, rtol=tol)


def _gradcheck(name, loss, analytic, wrt):
    err = rel_error(analytic, numerical_grad(loss, wrt))
    assert err < 1e-6, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("activation", ["identity", "leaky_relu", "tanh"])
@pytest.mark.parametrize("case", CONV_CASES[:4])
@pytest.mark.parametrize("op", ["conv2d", "conv_transpose2d"])
def test_conv_backward_gradcheck(op, case, activation):
    n, ci, co, h, w, kh, kw, s, p, op_pad = case
    rng = np.random.default_rng(3)
    x, b = rng.standard_normal((n, ci, h, w)), rng.standard_normal(co)
    if op == "conv2d":
        W = rng.standard_normal((co, ci, kh, kw))
        forward = lambda: R.conv2d_forward(x, W, b, s, p, activation)
    else:
        W = rng.standard_normal((ci, co, kh, kw))
        forward = lambda: R.conv_transpose2d_forward(x, W, b, s, p, op_pad, activation)
    y = forward()
    r = rng.standard_normal(y.shape)  # L = sum(y * r), so dL/dy = r
    dW, db, dx = np.zeros_like(W), np.zeros_like(b), np.full_like(x, np.nan)
    getattr(R, f"{op}_backward")(x, W, y, r, s, p, activation, 0.2, dW=dW, db=db, dx=dx)
    for name, analytic, wrt in (("dx", dx, x), ("dW", dW, W), ("db", db, b)):
        _gradcheck(f"{op} {activation} {name}", lambda: float((forward() * r).sum()), analytic, wrt)


def test_conv_backward_accumulates_and_skips_none():
    rng = np.random.default_rng(5)
    x, W = rng.standard_normal((2, 2, 5, 5)), rng.standard_normal((3, 2, 3, 3))
    y = R.conv2d_forward(x, W, None, 2, 1)
    dy = rng.standard_normal(y.shape)
    dW = np.zeros_like(W)
    assert R.conv2d_backward(x, W, y, dy, 2, 1, dW=dW) is None
    once = dW.copy()
    R.conv2d_backward(x, W, y, dy, 2, 1, dW=dW)
    assert_close("dW twice", dW, 2 * once, atol=1e-12)


def _bn_inputs(rng, shape):
    """x, gamma, beta, running mean, running var, empty mean and invstd outputs, and the per-channel shape."""
    c = shape[1]
    return (rng.standard_normal(shape) * 2 + 1, 1 + 0.5 * rng.standard_normal(c), rng.standard_normal(c),
            rng.standard_normal(c), 1 + rng.random(c), np.empty(c), np.empty(c), (1, c) + (1,) * (len(shape) - 2))


@pytest.mark.parametrize("shape", [(6, 3), (4, 2, 3, 3)])
def test_batchnorm_train_normalises_each_channel_and_updates_running_stats(shape):
    x, gamma, beta, rm, rv, mean, invstd, bshape = _bn_inputs(np.random.default_rng(6), shape)
    rm0, rv0 = rm.copy(), rv.copy()
    y = R.batchnorm_forward(x, gamma, beta, rm, rv, mean, invstd, True, 0.1, 1e-5)
    axes = (0,) if len(shape) == 2 else (0, 2, 3)
    x_hat = (x - x.mean(axis=axes, keepdims=True)) / np.sqrt(x.var(axis=axes, keepdims=True) + 1e-5)
    assert_close("y", y, gamma.reshape(bshape) * x_hat + beta.reshape(bshape), atol=1e-12)
    assert_close("running_mean", rm, 0.9 * rm0 + 0.1 * x.mean(axis=axes), atol=1e-12)
    # the running var is the unbiased one (ddof=1), unlike the biased var that normalises
    assert_close("running_var", rv, 0.9 * rv0 + 0.1 * x.var(axis=axes, ddof=1), atol=1e-12)
    assert_close("mean", mean, x.mean(axis=axes), atol=1e-12)


@pytest.mark.parametrize("shape", [(6, 3), (4, 2, 3, 3)])
def test_batchnorm_eval_uses_running_stats_and_leaves_them(shape):
    x, gamma, beta, rm, rv, mean, invstd, bshape = _bn_inputs(np.random.default_rng(7), shape)
    rm0, rv0 = rm.copy(), rv.copy()
    y = R.batchnorm_forward(x, gamma, beta, rm, rv, mean, invstd, False, 0.1, 1e-5)
    expected = gamma.reshape(bshape) * (x - rm0.reshape(bshape)) / np.sqrt(rv0.reshape(bshape) + 1e-5)
    assert_close("y", y, expected + beta.reshape(bshape), atol=1e-12)
    assert rm.tolist() == rm0.tolist() and rv.tolist() == rv0.tolist()
    # eval mode is per sample: one sample gives the same output alone as inside its batch
    alone = R.batchnorm_forward(x[:1], gamma, beta, rm, rv, mean, invstd, False, 0.1, 1e-5)
    assert_close("one sample", alone, y[:1], atol=1e-12)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("activation", ["identity", "leaky_relu", "tanh"])
@pytest.mark.parametrize("shape", [(6, 3), (3, 2, 3, 2)])
def test_batchnorm_backward_gradcheck(shape, activation, train):
    rng = np.random.default_rng(8)
    x, gamma, beta, rm, rv, mean, invstd, _ = _bn_inputs(rng, shape)

    def forward():
        return R.batchnorm_forward(x, gamma, beta, rm, rv, mean, invstd, train, 0.1, 1e-5, activation, 0.2)

    y = forward()
    r = rng.standard_normal(shape)

    def loss():
        return float((forward() * r).sum())

    dgamma, dbeta, dx = np.zeros_like(gamma), np.zeros_like(beta), np.full_like(x, np.nan)
    R.batchnorm_backward(x, gamma, y, r, mean, invstd, train, activation, 0.2, dgamma=dgamma, dbeta=dbeta, dx=dx)
    for name, analytic, wrt in (("dx", dx, x), ("dgamma", dgamma, gamma), ("dbeta", dbeta, beta)):
        _gradcheck(f"batchnorm train={train} {activation} {name}", loss, analytic, wrt)


@pytest.mark.parametrize("activation", R.ACTIVATIONS)
def test_activation_ops_value_and_gradcheck(activation):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 2, 4))
    y = R.activation_forward(x, activation, 0.2)
    assert_close(activation, y, R.dense_forward(x.reshape(-1, 1), np.eye(1), np.zeros(1), activation, 0.2)
                 .reshape(x.shape), atol=1e-15)
    r = rng.standard_normal(x.shape)
    dx = R.activation_backward(y, r, activation, 0.2, np.empty_like(x))
    _gradcheck(activation, lambda: float((R.activation_forward(x, activation, 0.2) * r).sum()), dx, x)
