"""Layers with hand-written backprop, and Sequential, which owns every parameter in one flat buffer.

A layer's `forward(x)` caches what its backward needs and returns its output buffer; `backward(dy)` returns
d loss / d x and accumulates (+=) its parameter gradients. Layers call backend ops only, never NumPy maths, so
the same layer runs on every backend. Outputs live in buffers allocated once per batch shape and reused: an
array returned by `forward` is valid until the next forward of the same shape.
"""
import math

import numpy as np

from .backends import get_backend
from .backends.numpy_ref import ACTIVATIONS
from .errors import GanEngineError, check_choice

INITS = ("xavier", "he", "normal")


def init_weight(rng, shape, fan_in, fan_out, init, alpha=0.0):
    """A host float64 weight array drawn by the named initialiser.

    "xavier": Glorot uniform, U(-a, a) with a = sqrt(6 / (fan_in + fan_out));
    "he": Kaiming normal for (leaky) ReLU, N(0, 2 / ((1 + alpha^2) fan_in));
    "normal": N(0, 0.02^2), the DCGAN initialisation.
    """
    check_choice("initialiser", init, INITS)
    if init == "xavier":
        a = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-a, a, size=shape)
    if init == "he":
        return rng.normal(0.0, math.sqrt(2.0 / ((1.0 + alpha * alpha) * fan_in)), size=shape)
    return rng.normal(0.0, 0.02, size=shape)  # "normal"


class Layer:
    """Base class: parameters are declared by `param_shapes` and bound to views of the model's flat buffers."""

    label = "layer"

    def param_shapes(self):
        """name -> shape of each parameter (none by default)."""
        return {}

    def bind(self, backend, dtype, params, grads, label):
        """Attach the backend and this layer's parameter and gradient views (dicts name -> array)."""
        self.backend, self.dtype, self.params, self.grads, self.label = backend, dtype, params, grads, label
        self._buffers = {}

    def init_params(self, rng):
        """name -> host array of initial values (none by default)."""
        return {}

    def _buffer(self, key, shape, dtype=None):
        """A reusable backend array for (key, shape): allocated on first use, then handed back as it is."""
        buf = self._buffers.get((key, shape))
        if buf is None:
            buf = self.backend.xp.empty(shape, dtype=dtype or self.dtype)
            self._buffers[(key, shape)] = buf
        return buf


class Dense(Layer):
    """y = act(x @ W + b), the activation fused into the op: x (N, in_features) -> y (N, out_features)."""

    def __init__(self, in_features, out_features, activation="identity", alpha=0.2, init="xavier"):
        check_choice("activation", activation, ACTIVATIONS)
        check_choice("initialiser", init, INITS)
        if in_features < 1 or out_features < 1:
            raise GanEngineError(f"Dense needs positive sizes, got {in_features} -> {out_features}")
        if not 0.0 <= alpha < 1.0:
            raise GanEngineError(f"leaky ReLU alpha must be in [0, 1), got {alpha}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.activation, self.alpha, self.init = activation, float(alpha), init

    def __repr__(self):
        return f"Dense({self.in_features}, {self.out_features}, {self.activation})"

    def param_shapes(self):
        return {"W": (self.in_features, self.out_features), "b": (self.out_features,)}

    def init_params(self, rng):
        W = init_weight(rng, (self.in_features, self.out_features), self.in_features, self.out_features,
                        self.init, self.alpha if self.activation == "leaky_relu" else 0.0)
        return {"W": W, "b": np.zeros(self.out_features)}

    def forward(self, x, train=True):
        """x (N, in_features) -> y (N, out_features); caches x and y for backward."""
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise GanEngineError(f"{self.label} ({self!r}) expects input of shape (N, {self.in_features}), "
                                 f"got {tuple(x.shape)}")
        y = self._buffer("y", (x.shape[0], self.out_features))
        self._x = x
        self._y = self.backend.dense_forward(x, self.params["W"], self.params["b"], self.activation, self.alpha, out=y)
        return self._y

    def backward(self, dy, need_dx=True, param_grads=True):
        """dy (N, out_features) -> dx (N, in_features) (None when not needed); dW, db accumulate."""
        x = self._x
        dx = self._buffer("dx", x.shape) if need_dx else None
        dW, db = (self.grads["W"], self.grads["b"]) if param_grads else (None, None)
        return self.backend.dense_backward(x, self.params["W"], self._y, dy, self.activation, self.alpha,
                                           dW=dW, db=db, dx=dx)


class Sequential:
    """A chain of layers whose parameters and gradients are views into two flat buffers (P,).

    The flat buffers let an optimizer update a whole model in one call and a checkpoint save it in one array.
    Parameters are named "<layer index>.<name>", e.g. "0.W", "0.b", "1.W".
    """

    def __init__(self, layers, backend="auto", dtype=np.float32, seed=0):
        self.layers = list(layers)
        if not self.layers:
            raise GanEngineError("Sequential needs at least one layer")
        self.backend = get_backend(backend)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise GanEngineError(f"dtype must be float32 or float64, got {self.dtype}")
        shapes = [(i, k, tuple(s)) for i, layer in enumerate(self.layers) for k, s in layer.param_shapes().items()]
        total = sum(math.prod(s) for _, _, s in shapes)
        xp = self.backend.xp
        self.flat_params = xp.zeros(total, dtype=self.dtype)  # (P,)
        self.flat_grads = xp.zeros(total, dtype=self.dtype)   # (P,)
        self._params, self._grads = {}, {}
        offset = 0
        for i, layer in enumerate(self.layers):
            p, g = {}, {}
            for k, s in layer.param_shapes().items():
                size = math.prod(s)
                p[k] = self.flat_params[offset:offset + size].reshape(s)
                g[k] = self.flat_grads[offset:offset + size].reshape(s)
                self._params[f"{i}.{k}"], self._grads[f"{i}.{k}"] = p[k], g[k]
                offset += size
            layer.bind(self.backend, self.dtype, p, g, f"layer {i}")
        self.reset_parameters(seed)

    def __repr__(self):
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"Sequential([{inner}], backend={self.backend.name!r}, dtype={self.dtype.name})"

    @property
    def in_features(self):
        return self.layers[0].in_features

    @property
    def out_features(self):
        return self.layers[-1].out_features

    def reset_parameters(self, seed=0):
        """Draw every parameter again from its initialiser with a host NumPy generator seeded by `seed`."""
        rng = np.random.default_rng(seed)
        for i, layer in enumerate(self.layers):
            for k, value in layer.init_params(rng).items():
                self._params[f"{i}.{k}"][...] = self.backend.asarray(value, self.dtype)

    def parameters(self):
        """name -> parameter array (a view into `flat_params`; writing to it changes the model)."""
        return dict(self._params)

    def gradients(self):
        """name -> gradient array (a view into `flat_grads`)."""
        return dict(self._grads)

    def zero_grad(self):
        """Set every parameter gradient to zero (they accumulate across backward calls until then)."""
        self.flat_grads.fill(0)

    def forward(self, x, train=True):
        """x (N, in_features) backend array -> output (N, out_features), a buffer reused by the next forward."""
        if getattr(x, "dtype", None) != self.dtype:
            raise GanEngineError(f"model expects {self.dtype.name} input, got {getattr(x, 'dtype', type(x).__name__)}")
        for layer in self.layers:
            x = layer.forward(x, train)
        return x

    def backward(self, dy, need_dx=False, param_grads=True):
        """dy (N, out_features) -> d loss / d input (or None); parameter gradients accumulate if param_grads."""
        last = len(self.layers) - 1
        for i in range(last, -1, -1):
            dy = self.layers[i].backward(dy, need_dx=need_dx or i > 0, param_grads=param_grads)
        return dy

    def state_dict(self):
        """name -> host NumPy copy of every parameter."""
        return {k: np.array(self.backend.to_numpy(v)) for k, v in self._params.items()}

    def load_state_dict(self, state):
        """Copy parameters from a name -> array mapping; names and shapes must match exactly."""
        missing = sorted(set(self._params) - set(state))
        extra = sorted(set(state) - set(self._params))
        if missing or extra:
            raise GanEngineError(f"parameters do not match the model: missing {missing}, unexpected {extra}")
        for k, v in state.items():
            if tuple(v.shape) != tuple(self._params[k].shape):
                raise GanEngineError(f"parameter {k!r} has shape {tuple(v.shape)}, the model expects "
                                     f"{tuple(self._params[k].shape)}")
            self._params[k][...] = self.backend.asarray(v, self.dtype)
