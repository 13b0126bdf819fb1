"""The simultaneous update rule (the PacGAN authors' code): D's and G's gradients both come from one batch of reals
and fakes at the weights the step started from, checked against finite differences of the two losses."""
import numpy as np
import pytest

from gan_engine import SGD, GanEngineError, Trainer
from gan_engine.cli import main
from gan_engine.config import TrainConfig
from gan_engine.models import batchnorm_generator, maxout_discriminator
from gan_engine.presets import PRESETS

LR = 0.05


def _models():
    G = batchnorm_generator(3, (8, 8), 2, backend="numpy", dtype=np.float64, seed=0)     # (N, 3) -> (N, 2)
    D = maxout_discriminator(4, (6, 6), 3, backend="numpy", dtype=np.float64, seed=1)    # pac 2: (N, 4) -> (N, 1)
    return G, D


def _softplus(x):
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


def _numeric_grad(loss, params):
    """Central differences of loss() over every element of the flat parameter buffer `params` (in place)."""
    grad, h = np.empty_like(params), 1e-6
    for i in range(params.size):
        keep = params[i]
        params[i] = keep + h
        up = loss()
        params[i] = keep - h
        grad[i] = (up - loss()) / (2 * h)
        params[i] = keep
    return grad


@pytest.mark.parametrize("two_passes", [False, True], ids=["one-d-pass", "two-d-passes"])
def test_both_gradients_are_taken_on_one_batch_at_the_weights_the_step_started_from(two_passes):
    from tests.test_trainer import _forced_two_passes

    data = np.random.default_rng(0).uniform(-1, 1, (200, 2))
    G, D = _models()
    if two_passes:
        D = _forced_two_passes(D)
    trainer = Trainer(G, D, data, batch_size=5, pac=2, seed=4, update="simultaneous",
                      opt_g=SGD(G, lr=LR, momentum=0.0), opt_d=SGD(D, lr=LR, momentum=0.0))
    assert trainer.one_d_pass != two_passes
    g0, d0 = G.flat_params.copy(), D.flat_params.copy()
    metrics = trainer.read_metrics(trainer.step())
    real, z = trainer._real.copy(), trainer._z.copy()  # the step's batch (B m, 2) and noise (B m, 3)

    G_ref, D_ref = _models()  # the same weights as before the step
    assert np.array_equal(G_ref.flat_params, g0) and np.array_equal(D_ref.flat_params, d0)

    def d_logits(x):  # (B m, 2) -> (B, 1): two consecutive samples per input
        return D_ref.forward(x.reshape(-1, 4)).copy()

    def d_loss():
        return _softplus(-d_logits(real)).mean() + _softplus(d_logits(G_ref.forward(z))).mean()

    def g_loss():
        return _softplus(-d_logits(G_ref.forward(z))).mean()

    assert metrics["d_loss"] == pytest.approx(d_loss(), rel=1e-12)
    assert metrics["g_loss"] == pytest.approx(g_loss(), rel=1e-12)
    want_d = d0 - LR * _numeric_grad(d_loss, D_ref.flat_params)
    want_g = g0 - LR * _numeric_grad(g_loss, G_ref.flat_params)
    np.testing.assert_allclose(D.flat_params, want_d, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(G.flat_params, want_g, rtol=1e-7, atol=1e-9)


def test_the_simultaneous_step_differs_from_the_alternating_one():
    data = np.random.default_rng(0).uniform(-1, 1, (200, 2))
    params = []
    for update in ("alternating", "simultaneous"):
        G, D = _models()
        trainer = Trainer(G, D, data, batch_size=5, pac=2, seed=4, update=update)
        trainer.train(3)
        params.append(G.flat_params.copy())
    assert not np.allclose(*params)


def test_the_rule_is_checked_and_makes_one_d_step():
    G, D = _models()
    data = np.zeros((200, 2))
    with pytest.raises(GanEngineError, match="unknown update rule 'together'"):
        Trainer(G, D, data, pac=2, update="together")
    with pytest.raises(GanEngineError, match="k_disc must be 1, got 2"):
        Trainer(G, D, data, pac=2, update="simultaneous", k_disc=2)
    with pytest.raises(GanEngineError, match="k-disc must be 1, got 3"):
        TrainConfig(update="simultaneous", k_disc=3)


def test_the_pacgan_presets_update_simultaneously_and_older_runs_alternate(tmp_path, capsys):
    assert all(preset["update"] == "simultaneous" for preset in PRESETS.values())
    assert TrainConfig().update == "alternating"
    saved = TrainConfig().to_dict()
    del saved["update"]  # a run saved before the option existed alternated
    assert TrainConfig.from_dict(saved).update == "alternating"
    out = tmp_path / "run"
    assert main(["train", "--dataset", "ring8", "--steps", "4", "--batch-size", "8", "--g-hidden", "8",
                 "--d-hidden", "8", "--update", "simultaneous", "--out", str(out), "--quiet"]) == 0
    assert '"update": "simultaneous"' in (out / "config.json").read_text()
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--steps", "8", "--update", "alternating"]) == 2
    assert "cannot change update" in capsys.readouterr().err
