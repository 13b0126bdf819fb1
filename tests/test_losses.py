"""GAN losses: the seeds' worked example, the two generator losses, label smoothing."""
import itertools
import math

import numpy as np
import pytest

from gan_engine import GanEngineError
from gan_engine.losses import d_loss_fake, d_loss_real, g_loss

from .util import assert_close


def logit(p):
    return np.array([[math.log(p / (1 - p))]])


def test_seed_002_worked_example(ref):
    """Seed 002: D gives 0.5022 on a fake and 0.7032 on a real; with base-10 logs the fake term is -0.30295,
    the real term -0.15292, D's objective -0.45587 and G's (minimax) loss -0.30295."""
    d = np.empty((1, 1))
    fake, real = logit(0.5022), logit(0.7032)
    loss_fake, p_fake = d_loss_fake(ref, fake, d)
    loss_real, p_real = d_loss_real(ref, real, d)
    ln10 = math.log(10)
    assert float(p_fake) == pytest.approx(0.5022) and float(p_real) == pytest.approx(0.7032)
    assert -float(loss_fake) / ln10 == pytest.approx(-0.30295, abs=5e-6)   # L2 = log10(1 - D(G(z)))
    assert -float(loss_real) / ln10 == pytest.approx(-0.15292, abs=5e-6)   # L1 = log10 D(x)
    assert -float(loss_real + loss_fake) / ln10 == pytest.approx(-0.45587, abs=1e-5)  # L1 + L2
    minimax, _ = g_loss(ref, fake, d, "minimax")  # mean log(1 - D(G(z)))
    assert float(minimax) / ln10 == pytest.approx(-0.30295, abs=5e-6)


def test_generator_losses_push_the_same_way_but_differ_in_strength(ref):
    """Both losses lower as D(G(z)) rises; minimax saturates where D confidently rejects fakes."""
    x = np.array([[-6.0], [0.0]])
    d_ns, d_mm = np.empty_like(x), np.empty_like(x)
    ns, _ = g_loss(ref, x, d_ns, "non-saturating")
    mm, _ = g_loss(ref, x, d_mm, "minimax")
    s = 1 / (1 + np.exp(-x))
    assert_close("non-saturating", ns, np.mean(-np.log(s)), atol=1e-12)
    assert_close("minimax", mm, np.mean(np.log(1 - s)), atol=1e-12)
    assert (d_ns < 0).all() and (d_mm < 0).all()
    assert abs(d_mm[0, 0]) < 0.01 * abs(d_ns[0, 0])  # vanishing gradient of log(1 - D) at D ~ 0
    with pytest.raises(GanEngineError, match="unknown generator loss"):
        g_loss(ref, x, d_ns, "wasserstein")


def test_one_sided_label_smoothing_moves_only_the_real_target(ref):
    x = np.array([[20.0]])
    d = np.empty_like(x)
    d_loss_real(ref, x, d, label_smoothing=0.1)
    assert_close("dlogits", d, [[1 / (1 + math.exp(-20.0)) - 0.9]], atol=1e-12)
    d_loss_fake(ref, x, d)
    assert_close("fake dlogits", d, [[1 / (1 + math.exp(-20.0))]], atol=1e-12)


def test_bce_keeps_the_log1p_term_of_large_logits(backend):
    """-log D(x) = log1p(exp(-x)) for a real at logit x: tiny but not zero, on every backend, in float32 and (where
    the backend has it: not the fp32 CUDA kernels) float64. The Numba sum once lost it to reassociation."""
    for dtype, x in itertools.product((np.float32,) if backend.name == "cuda" else (np.float32, np.float64),
                                      (17.0, 30.0, 50.0, 1e4)):
        want = math.log1p(math.exp(-x))  # 4.1e-8, 9.4e-14, 1.9e-22, 0
        logits = backend.asarray(np.full((4, 1), x), dtype)
        loss, _ = backend.bce_with_logits(logits, 1.0, 1.0, backend.xp.empty((4, 1), dtype=dtype))
        got = float(backend.to_numpy(loss))
        assert got == pytest.approx(want, rel=1e-5 if dtype == np.float64 else 2e-3, abs=1e-300), (x, got, want)
