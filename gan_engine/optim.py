"""Optimizers over a model's flat parameter buffer: one backend call updates the whole model; and the moving
average of a model's weights that a run can sample from."""
import contextlib

from .errors import GanEngineError, check_choice

OPTIMIZERS = ("adam", "sgd")


class SGD:
    """SGD with momentum (PyTorch's form): v = momentum * v + g; p -= lr * v."""

    LARGE_LR = 1.0  # a learning rate above this draws a warning from the Trainer: it diverges within steps

    def __init__(self, model, lr=0.01, momentum=0.9):
        if lr <= 0 or not 0 <= momentum < 1:
            raise GanEngineError(f"SGD needs lr > 0 and momentum in [0, 1), got lr={lr}, momentum={momentum}")
        self.model, self.lr, self.momentum = model, float(lr), float(momentum)
        self.velocity = model.backend.xp.zeros_like(model.flat_params)  # (P,)

    def step(self):
        """Apply one update from the model's accumulated gradients."""
        self.model.backend.sgd_update(self.model.flat_params, self.model.flat_grads, self.velocity,
                                      self.lr, self.momentum)

    def state_dict(self):
        return {"velocity": self.model.backend.to_numpy(self.velocity).copy()}

    def load_state_dict(self, state):
        """Restore a state_dict; GanEngineError if a buffer is missing or has the wrong shape."""
        self.velocity[...] = self.model.backend.asarray(_buffer(state, "velocity", self.velocity), self.velocity.dtype)


class Adam:
    """Adam with bias correction (PyTorch's form). The defaults are Kingma and Ba's; GANs usually want beta1=0.5."""

    LARGE_LR = 1e-2  # GANs train with 1e-4 to 1e-3; above this the Trainer warns that it will likely diverge

    def __init__(self, model, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        if lr <= 0 or not (0 <= beta1 < 1 and 0 <= beta2 < 1) or eps <= 0:
            raise GanEngineError(f"Adam needs lr > 0, betas in [0, 1) and eps > 0, got lr={lr}, "
                                 f"beta1={beta1}, beta2={beta2}, eps={eps}")
        self.model, self.lr, self.beta1, self.beta2, self.eps = model, float(lr), float(beta1), float(beta2), float(eps)
        xp = model.backend.xp
        self.m = xp.zeros_like(model.flat_params)  # (P,)
        self.v = xp.zeros_like(model.flat_params)  # (P,)
        self.t = 0

    def step(self):
        """Apply one update from the model's accumulated gradients."""
        self.t += 1
        self.model.backend.adam_update(self.model.flat_params, self.model.flat_grads, self.m, self.v, self.t,
                                       self.lr, self.beta1, self.beta2, self.eps)

    def state_dict(self):
        be = self.model.backend
        return {"m": be.to_numpy(self.m).copy(), "v": be.to_numpy(self.v).copy(), "t": self.t}

    def load_state_dict(self, state):
        """Restore a state_dict; GanEngineError if a buffer is missing or has the wrong shape, or t is not a count."""
        be = self.model.backend
        t = _count(state, "Adam's step count")
        self.m[...] = be.asarray(_buffer(state, "m", self.m), self.m.dtype)
        self.v[...] = be.asarray(_buffer(state, "v", self.v), self.v.dtype)
        self.t = t


class WeightAverage:
    """An exponential moving average of a model's parameters and running statistics, for sampling from: a GAN's
    generator oscillates around a good solution, and the average of its recent weights lands its samples more
    precisely than the weights of any one step (Yazici et al., "The unusual effectiveness of averaging in GAN
    training", ICLR 2019).

    Each `update()` (one backend call per buffer) makes average = decay * average + (1 - decay) * weights,
    starting from zero; the weights `applied()` puts in the model are average / (1 - decay^t) after t updates
    (Adam's bias correction), the mean of the t weights so far weighted by decay^(t - i): an average from the first
    step on, over about the last 1 / (1 - decay) steps. decay 0 is no average: the model's own weights, nothing
    stored or updated.
    """

    def __init__(self, model, decay=0.999):
        if not 0 <= decay < 1:
            raise GanEngineError(f"the weight average's decay must be in [0, 1), got {decay}")
        self.model, self.decay, self.t = model, float(decay), 0
        xp, kept = model.backend.xp, bool(decay)  # decay 0 keeps no buffers
        self.params = xp.zeros(model.flat_params.size * kept, dtype=model.dtype)  # (P,)
        self.stats = xp.zeros(model.flat_stats.size * kept, dtype=model.dtype)    # (S,)
        self._own = (xp.empty(self.params.shape, model.dtype), xp.empty(self.stats.shape, model.dtype))  # G's own

    def update(self):
        """Move the average towards the model's current weights."""
        if not self.decay:
            return
        self.t += 1
        be = self.model.backend
        be.average_update(self.params, self.model.flat_params, self.decay)
        if self.stats.size:
            be.average_update(self.stats, self.model.flat_stats, self.decay)

    def apply(self):
        """Write the bias-corrected average into the model (nothing before the first update, or with decay 0)."""
        if self.t:
            correction = 1 / (1 - self.decay ** self.t)
            self.model.flat_params[...] = self.params * correction
            self.model.flat_stats[...] = self.stats * correction

    @contextlib.contextmanager
    def applied(self):
        """Inside the block the model holds the averaged weights; after it, its own again."""
        if not self.t:
            yield
            return
        own_params, own_stats = self._own
        own_params[...] = self.model.flat_params
        own_stats[...] = self.model.flat_stats
        self.apply()
        try:
            yield
        finally:
            self.model.flat_params[...] = own_params
            self.model.flat_stats[...] = own_stats

    def state_dict(self):
        """The raw average and its update count (empty with decay 0)."""
        if not self.decay:
            return {}
        be = self.model.backend
        return {"params": be.to_numpy(self.params).copy(), "stats": be.to_numpy(self.stats).copy(), "t": self.t}

    def load_state_dict(self, state):
        """Restore a state_dict; GanEngineError if it does not fit (an average saved without one, or the reverse is
        accepted only as an empty state for decay 0)."""
        if not self.decay:
            return
        if not state:
            raise GanEngineError("the saved state has no weight average, but this one has decay "
                                 f"{self.decay:g}; it was saved by a run that did not average its generator")
        t = _count(state, "the weight average's update count")
        be = self.model.backend
        self.params[...] = be.asarray(_buffer(state, "params", self.params), self.params.dtype)
        self.stats[...] = be.asarray(_buffer(state, "stats", self.stats), self.stats.dtype)
        self.t = t


def _count(state, what):
    """state["t"], checked to be a count of updates (a non-negative integer)."""
    t = state.get("t")
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise GanEngineError(f"{what} must be a non-negative integer, got {t!r}")
    return t


def _buffer(state, name, own):
    """state[name], checked to have the shape of the optimizer's own buffer `own`."""
    if name not in state:
        raise GanEngineError(f"the saved state lacks {name!r}")
    shape = getattr(state[name], "shape", None)
    if shape is None or tuple(shape) != tuple(own.shape):
        raise GanEngineError(f"the saved {name!r} has shape {shape}, the model needs {tuple(own.shape)}")
    return state[name]


def make_optimizer(name, model, lr, beta1=0.5, beta2=0.999, momentum=0.9):
    """An optimizer by name ("adam" or "sgd") for `model`."""
    check_choice("optimizer", name, OPTIMIZERS)
    if name == "adam":
        return Adam(model, lr=lr, beta1=beta1, beta2=beta2)
    return SGD(model, lr=lr, momentum=momentum)
