"""Sample-quality metrics on constructed cases with known answers, and the digits classifier."""
import math

import numpy as np
import pytest
from scipy import linalg

from gan_engine import GanEngineError, load_dataset
from gan_engine.data import Dataset
from gan_engine.metrics import (Classifier, class_metrics, evaluate_samples, frechet_distance, kl_to_uniform,
                                mode_metrics, split)


@pytest.mark.parametrize("name, k", [("ring8", 8), ("grid25", 25)])
def test_samples_exactly_at_the_modes(name, k):
    data = load_dataset(name)
    m = mode_metrics(np.tile(data.modes, (100, 1)), data.modes, data.sigma)
    assert m == {"modes_captured": k, "modes_reached": k, "high_quality": 100.0, "reverse_kl": 0.0}


def test_a_single_collapsed_mode():
    data = load_dataset("ring8")
    m = mode_metrics(np.repeat(data.modes[3:4], 2500, axis=0) + 0.005, data.modes, data.sigma)
    assert m["modes_captured"] == m["modes_reached"] == 1 and m["high_quality"] == 100.0
    assert m["reverse_kl"] == pytest.approx(math.log(8))


def test_samples_far_from_every_mode_are_low_quality_and_capture_nothing():
    data = load_dataset("ring8")
    m = mode_metrics(np.zeros((2500, 2)), data.modes, data.sigma)  # the centre: 100 sigma from every mode
    assert m["modes_captured"] == m["modes_reached"] == 0 and m["high_quality"] == 0.0


def test_a_mode_needs_a_fifth_of_its_share_to_count_as_captured():
    data = load_dataset("ring8")
    counts = [500, 500, 500, 500, 375, 62, 63, 0]  # 2500 samples; a fifth of 2500 / 8 = 62.5
    samples = np.concatenate([np.repeat(data.modes[i:i + 1], c, axis=0) for i, c in enumerate(counts)])
    assert mode_metrics(samples, data.modes, data.sigma)["modes_captured"] == 6


def test_the_lenient_rule_counts_a_mode_with_one_high_quality_sample():
    """The PacGAN authors' code counts a mode as covered when one sample lies within 3 sigma of it."""
    data = load_dataset("ring8")
    counts = [2490, 1, 1, 1, 1, 1, 5, 0]
    samples = np.concatenate([np.repeat(data.modes[i:i + 1], c, axis=0) for i, c in enumerate(counts)])
    far = data.modes[7] + 3.5 * data.sigma  # beyond 3 sigma of mode 7 (and of every other): no mode reached
    m = mode_metrics(np.concatenate([samples, far[None]]), data.modes, data.sigma)
    assert m["modes_reached"] == 7 and m["modes_captured"] == 1


def test_real_mixture_data_is_high_quality_at_the_gaussian_rate():
    data = load_dataset("grid25")
    m = evaluate_samples(data.x[:2500], data)["real"]
    # within 3 sigma of a 2-D Gaussian's mean: 1 - exp(-9 / 2) = 98.9%
    assert m["modes_captured"] == 25 and abs(m["high_quality"] - 100 * (1 - math.exp(-4.5))) < 1.0
    assert m["reverse_kl"] < 0.02


def test_kl_to_uniform():
    assert kl_to_uniform([0.25] * 4) == 0.0
    assert kl_to_uniform([1, 0, 0, 0]) == pytest.approx(math.log(4))
    assert kl_to_uniform([0.5, 0.5, 0, 0]) == pytest.approx(math.log(2))


def test_class_metrics_on_known_distributions():
    eye = np.eye(10)
    spread = class_metrics(np.tile(eye, (30, 1)))  # confident and every class equally often
    assert spread["classes_covered"] == 10 and spread["class_kl"] == 0.0
    assert spread["classifier_score"] == pytest.approx(10, rel=1e-6)
    collapsed = class_metrics(np.tile(eye[7], (300, 1)))
    assert collapsed["classes_covered"] == 1 and collapsed["class_kl"] == pytest.approx(math.log(10))
    assert collapsed["classifier_score"] == pytest.approx(1, rel=1e-6)
    unsure = class_metrics(np.full((300, 10), 0.1))  # no sample looks like any class: score 1
    assert unsure["classifier_score"] == pytest.approx(1, rel=1e-6)


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 6))
    b = rng.standard_normal((300, 6)) @ rng.standard_normal((6, 6)) + 0.5
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s_a + s_b - 2 * linalg.sqrtm(s_a @ s_b).real)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-9)
    shift = np.arange(6.0)
    assert frechet_distance(a, a + shift) == pytest.approx((shift ** 2).sum(), rel=1e-9)
    collapsed = np.repeat(a[:1], 50, axis=0)  # a singular covariance: finite, = |mu diff|^2 + Tr(S_a)
    assert frechet_distance(collapsed, a) == pytest.approx(((a[0] - a.mean(0)) ** 2).sum() + np.trace(s_a), rel=1e-9)


@pytest.fixture(scope="module")
def digits_eval(classifier_cache):
    data = load_dataset("digits")
    return data, classifier_cache, Classifier.for_dataset(data, classifier_cache)


def test_digits_classifier_reaches_95_percent_on_held_out_data(digits_eval):
    data, _, clf = digits_eval
    _, held_out = split(len(data.x))
    probs, feats = clf.predict(data.x[held_out])
    accuracy = (probs.argmax(axis=1) == data.labels[held_out]).mean()
    assert accuracy >= 0.95 and clf.accuracy == pytest.approx(accuracy)
    assert feats.shape == (len(held_out), 128)


def test_the_classifier_is_cached_and_a_damaged_cache_is_retrained(digits_eval, tmp_path):
    data, cache, clf = digits_eval
    again = Classifier.for_dataset(data, cache)
    assert np.array_equal(again.model.flat_params, clf.model.flat_params) and again.accuracy == clf.accuracy
    import glob
    (path,) = glob.glob(f"{cache}/classifier-digits-*.npz")
    with open(path, "wb") as f:
        f.write(b"damaged")
    retrained = Classifier.for_dataset(data, cache)
    assert np.array_equal(retrained.model.flat_params, clf.model.flat_params)  # same seed, same training


def test_digits_metrics_are_calibrated_against_real_data(digits_eval):
    data, cache, _ = digits_eval
    train, held_out = split(len(data.x))
    real_like = evaluate_samples(data.x[held_out], data, cache)
    assert real_like["generated"] == real_like["real"]
    real = real_like["real"]
    assert real["classes_covered"] == 10 and real["class_kl"] < 0.05 and real["classifier_score"] > 8
    collapsed = evaluate_samples(np.repeat(data.x[held_out[:1]], 300, axis=0), data, cache)["generated"]
    assert collapsed["classes_covered"] == 1 and collapsed["classifier_score"] < 1.01
    assert collapsed["frechet_distance"] > 10 * real["frechet_distance"]
    noise = evaluate_samples(np.random.default_rng(0).uniform(-1, 1, (300, 64)), data, cache)["generated"]
    assert noise["frechet_distance"] > 10 * real["frechet_distance"]


def test_metric_errors(digits_eval):
    data, cache, _ = digits_eval
    unlabelled = Dataset("folder", data.x, (1, 8, 8), None)
    with pytest.raises(GanEngineError, match="has no labels"):
        evaluate_samples(data.x[:10], unlabelled, cache)
    bad = data.x[:10].copy()
    bad[2, 3] = np.nan
    with pytest.raises(GanEngineError, match="1 non-finite values"):
        evaluate_samples(bad, data, cache)


def test_the_high_quality_cut_is_three_sigma():
    """Points at 2.9 and 3.1 sigma from the one mode: the first is high quality, the second not."""
    sigma = 0.05
    samples = np.array([[2.9 * sigma, 0.0], [0.0, -3.1 * sigma], [0.0, 2.9 * sigma], [3.1 * sigma, 0.0]])
    assert mode_metrics(samples, np.zeros((1, 2)), sigma)["high_quality"] == 50.0
