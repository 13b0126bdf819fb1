"""Batch norm with its statistics per pack slot (BatchNorm(slots=m)) and the running standard deviation of the
Blocks library (BatchNorm(running="stdev")): the two ways the PacGAN authors' generator differs from one batch norm
over the whole batch. Every backend against plain NumPy written here, not against the engine's reference op."""
import numpy as np
import pytest

from gan_engine import GanEngineError
from gan_engine.backends import get_backend
from gan_engine.layers import BatchNorm, Sequential

from .util import assert_close, numerical_grad

MOMENTUM, EPS = 0.05, 1e-4


def _layer(backend, slots=1, running="var", shape=(5,), activation="relu"):
    """A model of one batch norm + activation in float64 (float32 where the backend has no float64: cuda), with
    running statistics away from their start."""
    bn = BatchNorm(shape[0], MOMENTUM, EPS, activation, slots=slots, running=running)
    dtypes = getattr(get_backend(backend), "DTYPES", (np.float64,))
    model = Sequential([bn], backend=backend, dtype=np.float64 if np.float64 in dtypes else np.float32, seed=3,
                       in_shape=shape)
    stats = {"running_mean": np.linspace(-0.5, 0.5, shape[0]), "running_var": np.linspace(0.5, 2.0, shape[0])}
    for name, value in stats.items():
        bn.stats[name][...] = model.backend.asarray(value, model.dtype)
    return model, bn, stats


def _tol(model):
    """(atol, rtol) for the model's dtype."""
    return (1e-10, 1e-9) if model.dtype == np.float64 else (2e-5, 2e-5)


def _put(model, x):
    return model.backend.asarray(x, model.dtype)


def _plain_batchnorm(x, gamma, beta):
    """Training-mode batch norm + ReLU of x (n, C) or (n, C, H, W) over its own rows: y, mean, biased var."""
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + EPS) * gamma.reshape(shape) + beta.reshape(shape)
    return np.maximum(y, 0), mean, var


@pytest.mark.parametrize("shape", [(5,), (3, 2, 2)], ids=["1d", "2d"])
def test_each_slot_is_normalised_by_its_own_statistics_and_the_running_ones_by_their_mean(backend, shape):
    m, n = 3, 12  # rows 0, 3, 6, 9 are slot 0; 1, 4, 7, 10 slot 1; 2, 5, 8, 11 slot 2
    model, bn, stats = _layer(backend, slots=m, shape=shape)
    atol, rtol = _tol(model)
    x = np.random.default_rng(0).normal(1.0, 2.0, size=(n, *shape))
    gamma, beta = model.backend.to_numpy(bn.params["gamma"]), model.backend.to_numpy(bn.params["beta"])
    y = model.backend.to_numpy(model.forward(_put(model, x)))
    means, variances = [], []
    for j in range(m):
        want, mean, var = _plain_batchnorm(x[j::m], gamma, beta)
        assert_close(f"slot {j}", y[j::m], want, atol=atol, rtol=rtol)
        means.append(mean)
        variances.append(var)
    count = n // m * int(np.prod(shape[1:]))
    want_mean = (1 - MOMENTUM) * stats["running_mean"] + MOMENTUM * np.mean(means, axis=0)
    want_var = (1 - MOMENTUM) * stats["running_var"] + MOMENTUM * np.mean(variances, axis=0) * count / (count - 1)
    assert_close("running mean", model.backend.to_numpy(bn.stats["running_mean"]), want_mean, atol=atol, rtol=rtol)
    assert_close("running var", model.backend.to_numpy(bn.stats["running_var"]), want_var, atol=atol, rtol=rtol)


@pytest.mark.parametrize("shape", [(5,), (3, 2, 2)], ids=["1d", "2d"])
def test_the_slots_backward_is_each_slots_own_and_gamma_beta_gradients_add_up(backend, shape):
    m, n = 2, 8
    model, bn, _ = _layer(backend, slots=m, shape=shape)
    atol, rtol = _tol(model)
    rng = np.random.default_rng(1)
    x, dy = rng.normal(size=(n, *shape)), rng.normal(size=(n, *shape))
    model.forward(_put(model, x))
    model.zero_grad()
    dx = model.backend.to_numpy(model.backward(_put(model, dy), need_dx=True))
    grads = model.backend.to_numpy(model.flat_grads).copy()
    one, one_bn, _ = _layer(backend, slots=1, shape=shape)  # the same parameters (same seed), one slot at a time
    one.zero_grad()
    for j in range(m):
        one.forward(_put(one, x[j::m]))
        part = one.backend.to_numpy(one.backward(_put(one, dy[j::m]), need_dx=True))
        assert_close(f"dx of slot {j}", dx[j::m], part, atol=atol, rtol=rtol)
    assert_close("dgamma, dbeta", grads, one.backend.to_numpy(one.flat_grads), atol=atol, rtol=rtol)


def test_the_slots_gradient_matches_finite_differences():
    model, bn, _ = _layer("numpy", slots=2, activation="identity")
    rng = np.random.default_rng(2)
    x, w = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))

    def loss():
        return float((model.forward(x) * w).sum())

    model.zero_grad()
    loss()
    dx = model.backward(w.copy(), need_dx=True).copy()
    assert_close("dgamma, dbeta", model.flat_grads, numerical_grad(loss, model.flat_params), atol=1e-6, rtol=1e-5)
    numeric_x = numerical_grad(loss, x)
    assert_close("dx", dx, numeric_x, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("slots", [1, 2])
def test_the_running_standard_deviation_is_averaged_and_eval_mode_divides_by_it(backend, slots):
    model, bn, stats = _layer(backend, slots=slots, running="stdev", activation="identity")
    atol, rtol = _tol(model)
    x = np.random.default_rng(4).normal(0.5, 3.0, size=(8, 5))
    model.forward(_put(model, x))
    stdevs = [np.sqrt(x[j::slots].var(axis=0) + EPS) for j in range(slots)]
    want_stdev = (1 - MOMENTUM) * np.sqrt(stats["running_var"] + EPS) + MOMENTUM * np.mean(stdevs, axis=0)
    got = model.backend.to_numpy(bn.stats["running_var"])
    assert_close("running stdev", np.sqrt(got + EPS), want_stdev, atol=atol, rtol=rtol)
    running_mean = model.backend.to_numpy(bn.stats["running_mean"])
    gamma, beta = (model.backend.to_numpy(bn.params[k]) for k in ("gamma", "beta"))
    y = model.backend.to_numpy(model.forward(_put(model, x), train=False))
    assert_close("eval output", y, (x - running_mean) / want_stdev * gamma + beta, atol=atol, rtol=rtol)


def test_slot_errors_say_what_is_wrong():
    with pytest.raises(GanEngineError, match="slots"):
        BatchNorm(4, slots=0)
    with pytest.raises(GanEngineError, match="running statistic"):
        BatchNorm(4, running="std")
    model, _, _ = _layer("numpy", slots=3)
    with pytest.raises(GanEngineError, match="multiple of 3 rows, got 8"):
        model.forward(np.zeros((8, 5)))
    with pytest.raises(GanEngineError, match="batch size above 3"):
        model.forward(np.zeros((3, 5)))
    model.forward(np.ones((8, 5)), train=False)  # eval mode: every sample on its own, any batch


def test_the_pacgan_presets_normalise_as_the_authors_and_older_runs_as_before(tmp_path, capsys):
    from gan_engine.cli import main
    from gan_engine.config import TrainConfig
    from gan_engine.data import load_dataset
    from gan_engine.presets import with_preset
    from gan_engine.run import build_trainer

    config = TrainConfig(**with_preset("pacgan-ring8", {"pac": 4, "backend": "numpy", "g_hidden": (8, 8),
                                                        "d_hidden": (8,)}))
    trainer = build_trainer(config, load_dataset("ring8"))
    g_norms = [layer for layer in trainer.G.layers if isinstance(layer, BatchNorm)]
    assert [(b.eps, b.running, b.slots) for b in g_norms] == [(1e-4, "stdev", 4)] * 2
    assert trainer.real_packs == "fixed" and trainer.data.shape == (4 * 100_000, 2)
    plain = TrainConfig()
    assert (plain.bn_eps, plain.bn_running, plain.pack_norm, plain.real_packs) == (1e-5, "var", "batch", "drawn")
    saved = plain.to_dict()
    for key in ("bn_eps", "bn_running", "pack_norm", "real_packs"):  # a run saved before these options: as then
        del saved[key]
    assert TrainConfig.from_dict(saved) == plain
    out = tmp_path / "run"
    assert main(["train", "--dataset", "ring8", "--steps", "2", "--batch-size", "8", "--g-hidden", "8",
                 "--d-hidden", "8", "--pac", "2", "--pack-norm", "slot", "--out", str(out), "--quiet"]) == 0
    assert '"pack_norm": "slot"' in (out / "config.json").read_text()
    capsys.readouterr()
    assert main(["train", "--dataset", "ring8", "--pack-norm", "slots", "--out", str(tmp_path / "x")]) == 2
    assert "unknown pack-norm 'slots'; choose one of: batch, slot" in capsys.readouterr().err
    assert main(["train", "--dataset", "ring8", "--bn-eps", "0", "--out", str(tmp_path / "y")]) == 2
    assert "bn-eps must be in (0, 1), got 0" in capsys.readouterr().err


def test_a_trainer_refuses_slots_that_are_not_its_packing():
    from gan_engine import Trainer, mlp_discriminator
    from gan_engine.models import batchnorm_generator

    G = batchnorm_generator(2, (8,), 2, backend="numpy", norm={"slots": 3})
    data = np.zeros((200, 2), np.float32)
    with pytest.raises(GanEngineError, match="statistics of 3 pack slots apart, but pac is 2"):
        Trainer(G, mlp_discriminator(4, (8,), backend="numpy"), data, pac=2)
    assert Trainer(G, mlp_discriminator(6, (8,), backend="numpy"), data, pac=3).pac == 3
