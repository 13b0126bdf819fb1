"""Layers, Sequential and the seeds' MLP models: whole-model gradient checks, parameters, initialisers, errors."""
import numpy as np
import pytest

from gan_engine import GanEngineError, mlp_discriminator, mlp_generator
from gan_engine.layers import Dense, Sequential, init_weight

from .util import numerical_grad, rel_error


def _model_gradcheck(model, x, need_dx):
    """Check every parameter gradient (and dx) of L = sum(model(x) * r) against central differences."""
    r = np.random.default_rng(9).standard_normal((x.shape[0], model.out_features))

    def loss():
        return float((model.forward(x) * r).sum())

    model.zero_grad()
    model.forward(x)
    dx = model.backward(r, need_dx=need_dx)
    err = rel_error(model.flat_grads, numerical_grad(loss, model.flat_params))
    assert err < 1e-6, f"parameter gradients: relative error {err:.2e}"
    if need_dx:
        dx = dx.copy()
        err = rel_error(dx, numerical_grad(loss, x))
        assert err < 1e-6, f"input gradient: relative error {err:.2e}"


def test_generator_gradcheck_float64():
    G = mlp_generator(z_dim=5, hidden=(7, 6), out_dim=4, backend="numpy", dtype=np.float64, seed=3)
    _model_gradcheck(G, np.random.default_rng(0).standard_normal((6, 5)), need_dx=False)


def test_discriminator_gradcheck_float64_with_input_gradient():
    D = mlp_discriminator(in_dim=4, hidden=(8,), backend="numpy", dtype=np.float64, seed=4)
    _model_gradcheck(D, np.random.default_rng(1).standard_normal((6, 4)), need_dx=True)


def test_seed_model_shapes_and_named_parameters():
    G = mlp_generator(backend="numpy")  # the seeds' 100-128-784 generator
    D = mlp_discriminator(backend="numpy")  # and 784-128-1 discriminator
    assert {k: v.shape for k, v in G.parameters().items()} == {
        "0.W": (100, 128), "0.b": (128,), "1.W": (128, 784), "1.b": (784,)}
    assert {k: v.shape for k, v in D.parameters().items()} == {
        "0.W": (784, 128), "0.b": (128,), "1.W": (128, 1), "1.b": (1,)}
    x = G.forward(np.zeros((3, 100), dtype=np.float32))
    assert x.shape == (3, 784) and x.dtype == np.float32 and np.abs(x).max() <= 1
    assert D.forward(x).shape == (3, 1)
    assert G.flat_params.size == 100 * 128 + 128 + 128 * 784 + 784


def test_parameters_are_views_of_the_flat_buffer_and_zero_grad_clears():
    D = mlp_discriminator(in_dim=3, hidden=(4,), backend="numpy")
    D.parameters()["0.b"][...] = 7.0
    assert np.count_nonzero(D.flat_params == 7.0) == 4
    D.forward(np.ones((2, 3), dtype=np.float32))
    D.backward(np.ones((2, 1), dtype=np.float32))
    assert np.abs(D.flat_grads).sum() > 0
    D.zero_grad()
    assert not D.flat_grads.any()


def test_state_dict_round_trip_and_mismatch_errors():
    a = mlp_generator(z_dim=4, hidden=(5,), out_dim=3, backend="numpy", seed=0)
    b = mlp_generator(z_dim=4, hidden=(5,), out_dim=3, backend="numpy", seed=1)
    assert not np.array_equal(a.flat_params, b.flat_params)
    b.load_state_dict(a.state_dict())
    assert np.array_equal(a.flat_params, b.flat_params)
    state = a.state_dict()
    state["0.W"] = np.zeros((5, 4))
    with pytest.raises(GanEngineError, match=r"'0.W' has shape \(5, 4\)"):
        b.load_state_dict(state)
    del state["0.W"]
    with pytest.raises(GanEngineError, match="missing"):
        b.load_state_dict(state)


def test_initialisers():
    rng = np.random.default_rng(0)
    w = init_weight(rng, (400, 600), 400, 600, "xavier")
    bound = np.sqrt(6 / 1000)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    assert abs(init_weight(rng, (400, 600), 400, 600, "normal").std() - 0.02) < 0.001
    he = init_weight(rng, (400, 600), 400, 600, "he", alpha=0.2)
    assert abs(he.std() - np.sqrt(2 / (1.04 * 400))) < 0.002
    with pytest.raises(GanEngineError, match="unknown initialiser"):
        init_weight(rng, (2, 2), 2, 2, "orthogonal")


def test_same_seed_same_weights():
    a = mlp_discriminator(in_dim=6, hidden=(5,), backend="numpy", seed=11)
    b = mlp_discriminator(in_dim=6, hidden=(5,), backend="numpy", seed=11)
    assert np.array_equal(a.flat_params, b.flat_params)


def test_wrong_input_shape_and_dtype_are_named():
    D = mlp_discriminator(in_dim=784, hidden=(128,), backend="numpy")
    with pytest.raises(GanEngineError, match=r"layer 0 .*expects input of shape \(N, 784\), got \(2, 100\)"):
        D.forward(np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(GanEngineError, match="expects float32 input, got float64"):
        D.forward(np.zeros((2, 784)))


def test_bad_layer_options():
    with pytest.raises(GanEngineError, match="unknown activation 'swish'"):
        Dense(2, 3, "swish")
    with pytest.raises(GanEngineError, match="positive sizes"):
        Dense(0, 3)
    with pytest.raises(GanEngineError, match="dtype float16 is not supported by the numpy backend; choose float32 or float64"):
        Sequential([Dense(2, 3)], backend="numpy", dtype=np.float16)
    with pytest.raises(GanEngineError, match="hidden sizes must be positive"):
        mlp_generator(hidden=(0,), backend="numpy")


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_maxout_and_bias_free_dense_gradcheck_float64(backend):
    """The PacGAN protocol's pieces, tiny: D of maxout layers, G of bias-free Dense + BatchNorm(momentum 0.05)."""
    from gan_engine.layers import BatchNorm, Maxout
    D = Sequential([Maxout(4, 3, 5), Maxout(3, 2, 2), Dense(2, 1)], backend=backend, dtype=np.float64, seed=5)
    _model_gradcheck(D, np.random.default_rng(2).standard_normal((6, 4)), need_dx=True)
    G = Sequential([Dense(3, 5, init="normal", bias=False), BatchNorm(5, momentum=0.05, activation="relu"),
                    Dense(5, 2, init="normal")], backend=backend, dtype=np.float64, seed=6)
    assert set(G.parameters()) == {"0.W", "1.gamma", "1.beta", "2.W", "2.b"}
    _model_gradcheck(G, np.random.default_rng(3).standard_normal((6, 3)), need_dx=True)


def test_maxout_takes_the_largest_piece():
    from gan_engine.layers import Maxout
    layer = Sequential([Maxout(2, 2, 3)], backend="numpy", dtype=np.float64, seed=0)
    W = layer.parameters()["0.W"]
    W[...] = [[1, 2, 3, -1, -2, -3], [0, 0, 0, 5, 0, 0]]  # unit 0: pieces x0, 2 x0, 3 x0; unit 1: -x0 + 5 x1, ...
    y = layer.forward(np.array([[1.0, 1.0], [-1.0, 0.0]]))
    assert y.tolist() == [[3.0, 4.0], [-1.0, 3.0]]
    dx = layer.backward(np.array([[1.0, 10.0], [1.0, 10.0]]), need_dx=True)
    assert dx.tolist() == [[3.0 - 10.0, 50.0], [1.0 - 30.0, 0.0]]  # dy times the winners' weights (W's columns)
    assert layer.gradients()["0.b"].tolist() == [1.0, 0.0, 1.0, 10.0, 0.0, 10.0]
    with pytest.raises(GanEngineError, match="Maxout needs positive integer sizes"):
        Maxout(2, 0, 3)


@pytest.mark.parametrize("model", ["maxout", "dcgan"])
def test_a_backward_over_some_rows_is_those_rows_of_the_whole_backward(backend, model):
    """Sequential.backward(rows=...): the input gradient and parameter gradients of those rows alone."""
    from gan_engine.models import batchnorm_generator, dcgan_discriminator, maxout_discriminator

    if model == "maxout":
        D = maxout_discriminator(4, (6, 5), 3, backend=backend, seed=1)
        x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    else:  # without its batch norm: strided convolutions and leaky ReLU
        D = dcgan_discriminator((1, 8, 8), (4,), backend=backend, seed=1)
        x = np.random.default_rng(0).normal(size=(10, 64)).astype(np.float32)
    dy = np.random.default_rng(1).normal(size=(10, 1)).astype(np.float32)
    dy[:6] = 0  # the whole backward with the first 6 rows' gradient 0 = the backward over rows 6 to 9
    D.forward(D.backend.asarray(x))
    D.zero_grad()
    whole = D.backend.to_numpy(D.backward(D.backend.asarray(dy), need_dx=True)).copy()
    whole_grads = D.backend.to_numpy(D.flat_grads).copy()
    D.zero_grad()
    part = D.backend.to_numpy(D.backward(D.backend.asarray(dy[6:]), need_dx=True, rows=slice(6, None)))
    np.testing.assert_allclose(part, whole[6:], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(D.backend.to_numpy(D.flat_grads), whole_grads, rtol=1e-5, atol=1e-6)
    G = batchnorm_generator(3, (8,), 2, backend=backend)
    G.forward(G.backend.asarray(np.ones((10, 3), np.float32)))
    with pytest.raises(GanEngineError, match="rows are independent"):
        G.backward(G.backend.asarray(np.ones((4, 2), np.float32)), rows=slice(6, None))
