"""Sample-quality metrics, each reported next to its value for real data (the calibration).

- 2-D mixtures (ring8, grid25), the VEEGAN / PacGAN protocol: each of 2,500 samples goes to its nearest mode;
  it is high quality when within 3 sigma of it. A mode is captured when at least a fifth of its expected share
  of the samples are high-quality samples of that mode (PacGAN: fewer than 20 of the expected 100 on grid25
  means the mode is lost). Also the % of high-quality samples and the reverse KL between the generated mode
  histogram and the uniform one.
- Labelled images (digits, MNIST, Fashion-MNIST): a small MLP classifier trained by the engine on 80% of the
  real images (held-out accuracy stated; >= 95% on digits) gives the generated samples' class histogram
  (classes covered, KL to uniform), a classifier score exp(E_x KL(p(y|x) || p(y))) as the Inception Score
  computes it, and the Frechet distance between real and generated features of its penultimate layer.
"""
import hashlib
import json
import os

import numpy as np

from .errors import GanEngineError
from .io import atomic_path
from .layers import Dense, Sequential
from .optim import Adam

MIXTURE_SAMPLES = 2500
HIGH_QUALITY_SIGMAS = 3.0
CAPTURED_FRACTION = 0.2  # of a mode's expected number of samples
CLASSIFIER_HIDDEN = (256, 128)
CLASSIFIER_VERSION = 1  # bump when the classifier or its training changes, so cached ones are retrained
HELD_OUT = 0.2
CACHE_ENV = "GAN_ENGINE_CACHE"


# ---- 2-D mixtures --------------------------------------------------------------------------------------------

# Which way each metric improves, for the tables and the README's guide; high_quality is a percentage.
BETTER = {"modes_captured": "higher (at most the modes)",
          "modes_reached": "higher (at most the modes; lenient: one high-quality sample is enough)",
          "high_quality": "higher (at most 100%)",
          "reverse_kl": "lower (0: samples spread evenly over the modes)",
          "classes_covered": "higher (at most the classes)", "class_kl": "lower (0: classes evenly drawn)",
          "classifier_score": "higher (at most the classes)", "frechet_distance": "lower (closer to the data)"}
PERCENT = ("high_quality",)


def format_metric(name, value):
    """A metric's value as the tables print it: 4 significant digits, percentages with their % sign."""
    return f"{value:.1f}%" if name in PERCENT else f"{value:.4g}"


def mode_metrics(samples, modes, sigma):
    """VEEGAN / PacGAN mode metrics of samples (n, 2) for a mixture with `modes` (K, 2) and std `sigma`.

    Returns {"modes_captured": modes with at least CAPTURED_FRACTION of their share of high-quality samples,
    "modes_reached": modes with at least one high-quality sample (the rule of the PacGAN authors' code, which
    their Table 1 counts), "high_quality": % of samples within 3 sigma of their nearest mode, "reverse_kl":
    KL(generated mode histogram || uniform), nats}.
    """
    samples = np.asarray(samples, dtype=np.float64)
    k = len(modes)
    dist = np.linalg.norm(samples[:, None, :] - np.asarray(modes)[None, :, :], axis=2) / sigma  # (n, K)
    nearest = dist.argmin(axis=1)                                                             # (n,)
    good = dist[np.arange(len(samples)), nearest] < HIGH_QUALITY_SIGMAS
    per_mode = np.bincount(nearest[good], minlength=k)
    captured = int((per_mode >= CAPTURED_FRACTION * len(samples) / k).sum())
    histogram = np.bincount(nearest, minlength=k) / len(samples)
    return {"modes_captured": captured, "modes_reached": int((per_mode >= 1).sum()),
            "high_quality": 100.0 * float(good.mean()),
            "reverse_kl": kl_to_uniform(histogram)}


def kl_to_uniform(histogram):
    """KL(q || uniform) = sum q log(q K) over the K bins of a normalised histogram q, in nats (empty bins add 0)."""
    q = np.asarray(histogram, dtype=np.float64)
    nz = q > 0
    return float((q[nz] * np.log(q[nz] * len(q))).sum())


# ---- the classifier ------------------------------------------------------------------------------------------

def log_softmax(logits):
    """Row-wise log softmax of logits (n, K), shifted by the row maximum so exp never overflows."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of logits (n, K) against integer labels (n,), and d loss / d logits (n, K)."""
    n = len(labels)
    log_p = log_softmax(logits)
    dlogits = np.exp(log_p)
    dlogits[np.arange(n), labels] -= 1
    return float(-log_p[np.arange(n), labels].mean()), dlogits / n


class Classifier:
    """An MLP in-features -> 256 -> 128 -> classes (leaky ReLU), trained by the engine's own layers and Adam on
    the NumPy backend. `features` are the 128 activations of the penultimate layer.

    `Classifier.for_dataset(dataset)` trains one on 80% of a labelled dataset (or loads it from the cache).
    """

    def __init__(self, in_features, n_classes, seed=0):
        dims = (in_features, *CLASSIFIER_HIDDEN)
        layers = [Dense(i, o, "leaky_relu", 0.2, "he") for i, o in zip(dims, dims[1:])]
        self.model = Sequential(layers + [Dense(dims[-1], n_classes)], backend="numpy", dtype=np.float32, seed=seed)
        self.accuracy = None

    def fit(self, x, labels, epochs=40, batch_size=64, lr=1e-3, seed=0):
        """Train on x (n, D) with integer labels (n,) by minibatch Adam on the softmax cross-entropy."""
        rng = np.random.default_rng(seed)
        opt = Adam(self.model, lr=lr)
        x = np.asarray(x, dtype=np.float32)
        for _ in range(epochs):
            order = rng.permutation(len(x))
            for start in range(0, len(x), batch_size):
                idx = order[start:start + batch_size]
                self.model.zero_grad()
                _, dlogits = softmax_cross_entropy(self.model.forward(x[idx]), labels[idx])
                self.model.backward(dlogits.astype(np.float32))
                opt.step()
        return self

    def predict(self, x, batch_size=1024):
        """(probabilities (n, K), penultimate features (n, 128)), both float64."""
        x = np.asarray(x, dtype=np.float32)
        probs, feats = [], []
        for start in range(0, len(x), batch_size):
            logits = self.model.forward(x[start:start + batch_size], train=False)
            probs.append(np.exp(log_softmax(logits.astype(np.float64))))
            feats.append(self.model.layers[-2]._y.astype(np.float64))  # the penultimate layer's cached output
        return np.concatenate(probs), np.concatenate(feats)

    @classmethod
    def for_dataset(cls, dataset, cache_dir=None):
        """The classifier of a labelled dataset: from the cache when one was trained on exactly this data, else
        trained now on the training split and cached (with its held-out accuracy)."""
        if dataset.labels is None:
            raise GanEngineError(f"dataset {dataset.name!r} has no labels, so no classifier can be trained for "
                                 "image metrics; use digits, mnist or fashion-mnist with labels")
        train, held_out = split(len(dataset.x))
        n_classes = int(dataset.labels.max()) + 1
        path = os.path.join(cache_dir or default_cache_dir(), f"classifier-{dataset.name}-{data_key(dataset)}.npz")
        clf = cls(dataset.dim, n_classes)
        if os.path.isfile(path):
            try:
                with np.load(path, allow_pickle=False) as f:
                    clf.model.load_state_dict({k: f[k] for k in f.files if k != "meta"})
                    clf.accuracy = json.loads(str(f["meta"]))["accuracy"]
                return clf
            except (OSError, ValueError, KeyError, GanEngineError):
                pass  # a damaged cache entry is simply trained again
        clf.fit(dataset.x[train], dataset.labels[train])
        probs, _ = clf.predict(dataset.x[held_out])
        clf.accuracy = float((probs.argmax(axis=1) == dataset.labels[held_out]).mean())
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, meta=np.array(json.dumps({"accuracy": clf.accuracy})), **clf.model.state_dict())
        return clf


def split(n, seed=0):
    """(train indices, held-out indices): a fixed random 80 / 20 split of n samples."""
    order = np.random.default_rng(seed).permutation(n)
    cut = n - int(round(HELD_OUT * n))
    return np.sort(order[:cut]), np.sort(order[cut:])


def data_key(dataset):
    """A short hash of a dataset's images and labels and of the classifier recipe: the classifier cache key."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(dataset.x).tobytes())
    h.update(np.ascontiguousarray(dataset.labels).tobytes())
    h.update(f"{CLASSIFIER_HIDDEN}-{CLASSIFIER_VERSION}-{HELD_OUT}".encode())
    return h.hexdigest()[:16]


def default_cache_dir():
    """$GAN_ENGINE_CACHE, else $XDG_CACHE_HOME/gan-engine, else ~/.cache/gan-engine."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gan-engine")


# ---- image metrics -------------------------------------------------------------------------------------------

def class_metrics(probs):
    """From class probabilities p(y|x) (n, K): {"classes_covered": classes predicted for at least a fifth of
    their uniform share, "class_kl": KL(predicted class histogram || uniform), "classifier_score":
    exp(mean_x KL(p(y|x) || p(y)))}, p(y) being the mean of p(y|x) over the samples."""
    n, k = probs.shape
    histogram = np.bincount(probs.argmax(axis=1), minlength=k) / n
    p_y = probs.mean(axis=0)
    eps = 1e-12
    kl = (probs * (np.log(probs + eps) - np.log(p_y + eps))).sum(axis=1)
    return {"classes_covered": int((histogram >= CAPTURED_FRACTION / k).sum()), "class_kl": kl_to_uniform(histogram),
            "classifier_score": float(np.exp(kl.mean()))}


def frechet_distance(a, b):
    """Frechet distance between Gaussians fitted to features a (n, F) and b (m, F):
    |mu_a - mu_b|^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^(1/2)).

    Tr((S_a S_b)^(1/2)) is the sum of the square roots of the eigenvalues of the symmetric PSD matrix
    S_a^(1/2) S_b S_a^(1/2), which stays exact when a covariance is singular (a collapsed generator).
    """
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ s_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * cross)


# ---- one evaluator for any dataset -----------------------------------------------------------------------------

class Evaluator:
    """Every metric that applies to a dataset, with what the data side needs computed once: the mixture's real
    sample, or the classifier, its features of the training split and the held-out calibration.

    `evaluate(samples)` returns {"generated": {...}, "real": {...}} (+ "classifier_accuracy" for images): for
    mixtures "real" is 2,500 points of the data; for images it is the held-out 20% against the training 80%.
    `size` is how many samples an evaluation should draw: 2,500 for mixtures (the protocol), else as many as the
    held-out images, so generated and real Frechet distances come from equal sample sizes. Images without
    labels cannot be measured (GanEngineError).
    """

    def __init__(self, dataset, cache_dir=None):
        self.dataset = dataset
        if dataset.modes is not None:
            self.names = ("modes_captured", "modes_reached", "high_quality", "reverse_kl")
            self.size = MIXTURE_SAMPLES
            real = dataset.x[np.random.default_rng(0).choice(len(dataset.x), MIXTURE_SAMPLES, replace=False)]
            self.real = mode_metrics(real, dataset.modes, dataset.sigma)
            return
        self.names = ("classes_covered", "class_kl", "classifier_score", "frechet_distance")
        self.classifier = Classifier.for_dataset(dataset, cache_dir)
        train, held_out = split(len(dataset.x))
        self.size = len(held_out)
        _, self.train_features = self.classifier.predict(dataset.x[train])
        self.real = self._image_metrics(dataset.x[held_out])

    def _image_metrics(self, samples):
        probs, features = self.classifier.predict(samples)
        return {**class_metrics(probs), "frechet_distance": frechet_distance(features, self.train_features)}

    def evaluate(self, samples):
        samples = _finite(samples, "samples")
        if self.dataset.modes is not None:
            return {"generated": mode_metrics(samples, self.dataset.modes, self.dataset.sigma), "real": self.real}
        return {"generated": self._image_metrics(samples), "real": self.real,
                "classifier_accuracy": self.classifier.accuracy}

    def score(self, generated):
        """One number that ranks checkpoints, higher is better: for mixtures the modes captured, ties broken by
        the % of high-quality samples (modes + high_quality / 100); for images minus the Frechet distance."""
        if self.dataset.modes is not None:
            return generated["modes_captured"] + generated["high_quality"] / 100
        return -generated["frechet_distance"]


def evaluate_samples(samples, dataset, cache_dir=None):
    """Evaluator(dataset, cache_dir).evaluate(samples): the metrics of samples (n, D) and their calibration."""
    return Evaluator(dataset, cache_dir).evaluate(samples)


def _finite(samples, what):
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 2 or not np.isfinite(samples).all():
        raise GanEngineError(f"{what} must be a finite 2-D array (n, features), got shape {samples.shape} with "
                             f"{int((~np.isfinite(samples)).sum())} non-finite values")
    return samples
