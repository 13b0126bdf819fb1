"""Optimizers over a model's flat parameter buffer: one backend call updates the whole model."""
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
        t = state.get("t")
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise GanEngineError(f"Adam's step count must be a non-negative integer, got {t!r}")
        self.m[...] = be.asarray(_buffer(state, "m", self.m), self.m.dtype)
        self.v[...] = be.asarray(_buffer(state, "v", self.v), self.v.dtype)
        self.t = t


def _buffer(state, name, own):
    """state[name], checked to have the shape of the optimizer's own buffer `own`."""
    if name not in state:
        raise GanEngineError(f"the optimizer state lacks {name!r}")
    shape = getattr(state[name], "shape", None)
    if shape is None or tuple(shape) != tuple(own.shape):
        raise GanEngineError(f"the optimizer's {name!r} has shape {shape}, the model needs {tuple(own.shape)}")
    return state[name]


def make_optimizer(name, model, lr, beta1=0.5, beta2=0.999, momentum=0.9):
    """An optimizer by name ("adam" or "sgd") for `model`."""
    check_choice("optimizer", name, OPTIMIZERS)
    if name == "adam":
        return Adam(model, lr=lr, beta1=beta1, beta2=beta2)
    return SGD(model, lr=lr, momentum=momentum)
