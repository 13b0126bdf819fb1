"""Layers with hand-written backprop, and Sequential, which owns every parameter in one flat buffer.

Dense, Maxout, Conv2d, ConvTranspose2d, BatchNorm (1D and 2D), Activation (ReLU, LeakyReLU), Reshape and
Flatten.

A layer's `forward(x)` caches what its backward needs and returns its output buffer; `backward(dy)` returns
d loss / d x and accumulates (+=) its parameter gradients. Layers call backend ops only, never NumPy maths, so
the same layer runs on every backend. Outputs live in buffers allocated once per batch shape and reused: an
array returned by `forward` is valid until the next forward of the same shape.
"""
import math

import numpy as np

from .backends import get_backend
from .backends.numpy_ref import ACTIVATIONS, conv2d_output_size, conv_transpose2d_output_size
from .errors import GanEngineError, check_choice

INITS = ("xavier", "he", "normal")
BN_RUNNING = ("var", "stdev")  # what batch norm's running statistics average (BatchNorm `running`)


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
    """Base class. A layer declares its parameters (`param_shapes`, learned) and running statistics
    (`stat_shapes`, updated by forward, saved in checkpoints, never touched by an optimizer); Sequential binds
    both to views of its flat buffers and walks the per-sample shapes through `output_shape` once, when the
    model is built, so a mismatch is reported before any data flows.
    """

    label = "layer"
    mixes_rows = False  # True for a layer whose training forward makes a row depend on the batch's other rows

    def param_shapes(self):
        """name -> shape of each learned parameter (none by default)."""
        return {}

    def stat_shapes(self):
        """name -> shape of each running statistic (none by default)."""
        return {}

    def output_shape(self, in_shape):
        """Per-sample output shape for a per-sample input shape (without N); raises GanEngineError on a mismatch."""
        return in_shape

    def bind(self, backend, dtype, params, grads, stats, label):
        """Attach the backend and this layer's parameter, gradient and statistic views (dicts name -> array)."""
        self.backend, self.dtype, self.label = backend, dtype, label
        self.params, self.grads, self.stats = params, grads, stats
        self._buffers = {}

    def init_params(self, rng):
        """name -> host array of initial values (none by default)."""
        return {}

    def init_stats(self):
        """name -> host array of the initial running statistics (none by default)."""
        return {}

    def _rows(self, cached, rows):
        """A cached forward array, or its `rows` (a slice of the batch) for a backward over those rows alone."""
        if rows is None:
            return cached
        if self.mixes_rows:
            raise self._error("a backward over some rows of the batch needs layers whose rows are independent")
        return cached[rows]

    def _buffer(self, key, shape, dtype=None):
        """A reusable backend array for (key, shape): allocated on first use, then handed back as it is."""
        buf = self._buffers.get((key, shape))
        if buf is None:
            buf = self.backend.xp.empty(shape, dtype=dtype or self.dtype)
            self._buffers[(key, shape)] = buf
        return buf

    def _error(self, message):
        return GanEngineError(f"{self.label} ({self!r}): {message}")


def _check_activation(activation, alpha):
    check_choice("activation", activation, ACTIVATIONS)
    if not 0.0 <= alpha < 1.0:
        raise GanEngineError(f"leaky ReLU alpha must be in [0, 1), got {alpha}")
    return activation, float(alpha)


def _check_positive(what, **sizes):
    bad = {k: v for k, v in sizes.items() if int(v) != v or v < 1}
    if bad:
        raise GanEngineError(f"{what} needs positive integer sizes, got {bad}")


class Dense(Layer):
    """y = act(x @ W + b), the activation fused into the op: x (N, in_features) -> y (N, out_features).
    bias=False drops b (the op then adds a kept zero vector)."""

    def __init__(self, in_features, out_features, activation="identity", alpha=0.2, init="xavier", bias=True):
        self.activation, self.alpha = _check_activation(activation, alpha)
        check_choice("initialiser", init, INITS)
        if in_features < 1 or out_features < 1:
            raise GanEngineError(f"Dense needs positive sizes, got {in_features} -> {out_features}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.init, self.bias = init, bool(bias)

    def __repr__(self):
        return f"Dense({self.in_features}, {self.out_features}, {self.activation}{'' if self.bias else ', bias=False'})"

    def param_shapes(self):
        shapes = {"W": (self.in_features, self.out_features)}
        if self.bias:
            shapes["b"] = (self.out_features,)
        return shapes

    def output_shape(self, in_shape):
        if in_shape != (self.in_features,):
            raise self._error(f"expects input of shape (N, {self.in_features}), got (N, {', '.join(map(str, in_shape))})")
        return (self.out_features,)

    def init_params(self, rng):
        W = init_weight(rng, (self.in_features, self.out_features), self.in_features, self.out_features,
                        self.init, self.alpha if self.activation == "leaky_relu" else 0.0)
        return {"W": W, "b": np.zeros(self.out_features)} if self.bias else {"W": W}

    def _b(self):
        """The bias, or for bias=False a zero vector kept for the op."""
        if self.bias:
            return self.params["b"]
        if "zero bias" not in self._buffers:
            self._buffers["zero bias"] = self.backend.xp.zeros(self.out_features, dtype=self.dtype)
        return self._buffers["zero bias"]

    def forward(self, x, train=True):
        """x (N, in_features) -> y (N, out_features); caches x and y for backward."""
        y = self._buffer("y", (x.shape[0], self.out_features))
        self._x = x
        self._y = self.backend.dense_forward(x, self.params["W"], self._b(), self.activation, self.alpha, out=y)
        return self._y

    def backward(self, dy, need_dx=True, param_grads=True, rows=None):
        """dy (N, out_features) -> dx (N, in_features) (None when not needed); dW, db accumulate. `rows`: dy holds
        those rows of the forward's batch alone (Sequential.backward)."""
        x = self._rows(self._x, rows)
        dx = self._buffer("dx", x.shape) if need_dx else None
        dW, db = (self.grads["W"], self.grads.get("b")) if param_grads else (None, None)
        return self.backend.dense_backward(x, self.params["W"], self._rows(self._y, rows), dy, self.activation,
                                           self.alpha, dW=dW, db=db, dx=dx)


class Maxout(Layer):
    """y[:, u] = max over p of (x @ W + b)[:, u * pieces + p] (Goodfellow et al. 2013): x (N, in_features) ->
    y (N, units). Each unit has `pieces` affine pieces (W (in, units * pieces), unit-major columns); the winning
    piece of each unit is kept for backward, which sends the gradient to it alone."""

    def __init__(self, in_features, units, pieces, init="xavier"):
        _check_positive("Maxout", in_features=in_features, units=units, pieces=pieces)
        check_choice("initialiser", init, INITS)
        self.in_features, self.units, self.pieces = int(in_features), int(units), int(pieces)
        self.init = init

    def __repr__(self):
        return f"Maxout({self.in_features}, {self.units}, pieces={self.pieces})"

    def param_shapes(self):
        return {"W": (self.in_features, self.units * self.pieces), "b": (self.units * self.pieces,)}

    def output_shape(self, in_shape):
        if in_shape != (self.in_features,):
            raise self._error(f"expects input of shape (N, {self.in_features}), got (N, {', '.join(map(str, in_shape))})")
        return (self.units,)

    def init_params(self, rng):
        W = init_weight(rng, (self.in_features, self.units * self.pieces), self.in_features, self.units, self.init)
        return {"W": W, "b": np.zeros(self.units * self.pieces)}

    def forward(self, x, train=True):
        """x (N, in_features) -> y (N, units); caches x and the winning pieces for backward."""
        n = x.shape[0]
        y = self._buffer("y", (n, self.units))
        self._argmax = self._buffer("argmax", (n, self.units), np.int32)
        self._x = x
        return self.backend.maxout_forward(x, self.params["W"], self.params["b"], self.pieces, self._argmax, out=y)

    def backward(self, dy, need_dx=True, param_grads=True, rows=None):
        """dy (N, units) -> dx (N, in_features) (None when not needed); dW, db accumulate at the winning pieces."""
        x = self._rows(self._x, rows)
        dx = self._buffer("dx", x.shape) if need_dx else None
        dW, db = (self.grads["W"], self.grads["b"]) if param_grads else (None, None)
        return self.backend.maxout_backward(x, self.params["W"], dy, self._rows(self._argmax, rows), self.pieces,
                                            dW=dW, db=db, dx=dx)


class _Convolution(Layer):
    """What Conv2d and ConvTranspose2d share: square kernels, stride, padding, optional bias, fused activation."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, output_padding, bias, activation,
                 alpha, init):
        _check_positive(type(self).__name__, in_channels=in_channels, out_channels=out_channels,
                        kernel_size=kernel_size, stride=stride)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.padding = int(kernel_size), int(stride), int(padding)
        self.output_padding = int(output_padding)
        self.bias = bool(bias)
        self.activation, self.alpha = _check_activation(activation, alpha)
        check_choice("initialiser", init, INITS)
        self.init = init
        if self.padding < 0 or self.output_padding < 0:
            raise GanEngineError(f"{self!r}: padding and output_padding must be >= 0")

    def __repr__(self):
        extra = f", output_padding={self.output_padding}" if self.output_padding else ""
        return (f"{type(self).__name__}({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}{extra}, {self.activation})")

    def param_shapes(self):
        shapes = {"W": self.weight_shape}
        if self.bias:
            shapes["b"] = (self.out_channels,)
        return shapes

    def init_params(self, rng):
        k2 = self.kernel_size ** 2
        W = init_weight(rng, self.weight_shape, self.in_channels * k2, self.out_channels * k2, self.init,
                        self.alpha if self.activation == "leaky_relu" else 0.0)
        return {"W": W, "b": np.zeros(self.out_channels)} if self.bias else {"W": W}

    def output_shape(self, in_shape):
        if len(in_shape) != 3 or in_shape[0] != self.in_channels:
            raise self._error(f"expects input of shape (N, {self.in_channels}, H, W), got "
                              f"(N, {', '.join(map(str, in_shape))})")
        out = tuple(self.output_side(side, in_shape) for side in in_shape[1:])
        return (self.out_channels,) + out

    def forward(self, x, train=True):
        """x (N, C_in, H, W) -> y (N, C_out, OH, OW); caches x and y for backward."""
        y = self._buffer("y", (x.shape[0],) + self.output_shape(tuple(x.shape[1:])))
        self._x = x
        self._y = self._forward_op(x, self.params["W"], self.params.get("b"), out=y)
        return self._y

    def backward(self, dy, need_dx=True, param_grads=True, rows=None):
        """dy (N, C_out, OH, OW) -> dx (N, C_in, H, W) (None when not needed); dW, db accumulate."""
        x = self._rows(self._x, rows)
        dx = self._buffer("dx", x.shape) if need_dx else None
        dW, db = (self.grads["W"], self.grads.get("b")) if param_grads else (None, None)
        return self._backward_op(x, self.params["W"], self._rows(self._y, rows), dy, dW=dW, db=db, dx=dx)


class Conv2d(_Convolution):
    """y = act(conv2d(x, W) + b): x (N, C_in, H, W) -> y (N, C_out, OH, OW), W (C_out, C_in, k, k),
    OH = (H + 2 padding - k) // stride + 1. The DCGAN discriminator's strided convolution."""

    def __init__(self, in_channels, out_channels, kernel_size=4, stride=2, padding=1, bias=True,
                 activation="identity", alpha=0.2, init="normal"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, 0, bias, activation, alpha, init)
        self.weight_shape = (self.out_channels, self.in_channels, self.kernel_size, self.kernel_size)

    def output_side(self, side, in_shape):
        k, p = self.kernel_size, self.padding
        if side + 2 * p < k:
            raise self._error(f"kernel {k}x{k} is larger than the padded input {in_shape[1] + 2 * p}x"
                              f"{in_shape[2] + 2 * p} (input (N, {', '.join(map(str, in_shape))}), padding {p})")
        return conv2d_output_size(side, k, self.stride, p)

    def _forward_op(self, x, W, b, out):
        return self.backend.conv2d_forward(x, W, b, (self.stride,) * 2, (self.padding,) * 2, self.activation,
                                           self.alpha, out=out)

    def _backward_op(self, x, W, y, dy, dW, db, dx):
        return self.backend.conv2d_backward(x, W, y, dy, (self.stride,) * 2, (self.padding,) * 2, self.activation,
                                            self.alpha, dW=dW, db=db, dx=dx)


class ConvTranspose2d(_Convolution):
    """y = act(conv_transpose2d(x, W) + b): x (N, C_in, H, W) -> y (N, C_out, OH, OW), W (C_in, C_out, k, k),
    OH = (H - 1) stride - 2 padding + k + output_padding. The DCGAN generator's upsampling layer; kernel 4,
    stride 2, padding 1 doubles the side."""

    def __init__(self, in_channels, out_channels, kernel_size=4, stride=2, padding=1, output_padding=0, bias=True,
                 activation="identity", alpha=0.2, init="normal"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, output_padding, bias, activation,
                         alpha, init)
        if self.output_padding >= self.stride:
            raise GanEngineError(f"{self!r}: output_padding ({self.output_padding}) must be smaller than stride "
                                 f"({self.stride})")
        self.weight_shape = (self.in_channels, self.out_channels, self.kernel_size, self.kernel_size)

    def output_side(self, side, in_shape):
        out = conv_transpose2d_output_size(side, self.kernel_size, self.stride, self.padding, self.output_padding)
        if out < 1:
            raise self._error(f"padding {self.padding} leaves no output for input (N, {', '.join(map(str, in_shape))})")
        return out

    def _forward_op(self, x, W, b, out):
        return self.backend.conv_transpose2d_forward(x, W, b, (self.stride,) * 2, (self.padding,) * 2,
                                                     (self.output_padding,) * 2, self.activation, self.alpha, out=out)

    def _backward_op(self, x, W, y, dy, dW, db, dx):
        return self.backend.conv_transpose2d_backward(x, W, y, dy, (self.stride,) * 2, (self.padding,) * 2,
                                                      self.activation, self.alpha, dW=dW, db=db, dx=dx)


class BatchNorm(Layer):
    """Batch norm over the batch, per feature of (N, C) input (1D) or per channel of (N, C, H, W) input (2D),
    with learned scale gamma and shift beta, running statistics, and a fused activation.

    train=True normalises by the batch's statistics and moves the running ones by `momentum`; train=False
    normalises by the running statistics (generation, evaluation). gamma starts at 1 (N(1, 0.02) with the
    DCGAN "normal" initialiser) and beta at 0.

    `slots` m > 1 takes the train-mode statistics of m interleaved sub-batches apart: the rows r with r % m == j
    form slot j, as if each were a batch of its own (with PacGAN's packing, trainer.pack puts m consecutive rows in
    one pack, so slot j holds every pack's j-th sample; the PacGAN authors' G makes each slot in its own batch). The
    running statistics then move towards the mean of the slots' statistics. `running` is what they average: "var",
    the batch's unbiased variance (PyTorch's convention), or "stdev", sqrt(biased variance + eps) (that of Blocks,
    the library of the PacGAN authors' code). Eval mode divides by sqrt(running_var + eps) either way: with "stdev"
    running_var holds the running standard deviation squared, minus eps.
    """

    mixes_rows = True  # training normalises each row by the whole batch's statistics
    comm = None  # set by Sequential.synchronize: train-mode statistics over the rows of every rank of comm

    def __init__(self, num_features, momentum=0.1, eps=1e-5, activation="identity", alpha=0.2, init="normal",
                 slots=1, running="var"):
        _check_positive("BatchNorm", num_features=num_features, slots=slots)
        self.num_features, self.slots = int(num_features), int(slots)
        if not 0.0 <= momentum <= 1.0 or not eps > 0:
            raise GanEngineError(f"BatchNorm needs momentum in [0, 1] and eps > 0, got {momentum}, {eps}")
        self.momentum, self.eps = float(momentum), float(eps)
        check_choice("batch norm running statistic", running, BN_RUNNING)
        self.running = running
        self.activation, self.alpha = _check_activation(activation, alpha)
        check_choice("initialiser", init, INITS)
        self.init = init

    def __repr__(self):
        slots = f", slots={self.slots}" if self.slots > 1 else ""
        return f"BatchNorm({self.num_features}, {self.activation}{slots})"

    def param_shapes(self):
        return {"gamma": (self.num_features,), "beta": (self.num_features,)}

    def stat_shapes(self):
        return {"running_mean": (self.num_features,), "running_var": (self.num_features,)}

    def init_params(self, rng):
        c = self.num_features
        gamma = rng.normal(1.0, 0.02, size=c) if self.init == "normal" else np.ones(c)
        return {"gamma": gamma, "beta": np.zeros(c)}

    def init_stats(self):
        return {"running_mean": np.zeros(self.num_features), "running_var": np.ones(self.num_features)}

    def output_shape(self, in_shape):
        if len(in_shape) not in (1, 3) or in_shape[0] != self.num_features:
            raise self._error(f"expects input of shape (N, {self.num_features}) or (N, {self.num_features}, H, W), "
                              f"got (N, {', '.join(map(str, in_shape))})")
        return in_shape

    def forward(self, x, train=True):
        """x (N, C) or (N, C, H, W) -> y (same shape); caches x, y, the mode and the statistics for backward."""
        m = self.slots if train else 1
        if train and x.size // m == x.shape[1]:
            raise self._error(f"train mode needs more than one value per channel to normalise, got input "
                              f"{tuple(x.shape)}; use a batch size above {m}")
        if x.shape[0] % m:
            raise self._error(f"takes the statistics of {m} slots apart, so the batch must be a multiple of {m} "
                              f"rows, got {x.shape[0]}")
        c = self.num_features * m
        xs = x.reshape(x.shape[0] // m, c, *x.shape[2:])  # (N / m, m C[, H, W]): slot j in channels j C..(j+1) C
        y = self._buffer("y", tuple(xs.shape))
        self._mean, self._invstd = self._buffer("mean", (c,)), self._buffer("invstd", (c,))
        self._x, self._train = xs, train
        self._gamma, beta = self._per_slot("gamma", m), self._per_slot("beta", m)  # (m C,): kept for backward
        running_mean, running_var, momentum = self.stats["running_mean"], self.stats["running_var"], self.momentum
        own_update = train and (m > 1 or self.running != "var")  # the running statistics moved here, not by the op
        if train and self.comm is not None:  # normalise by the ranks' statistics, as eval mode does by given ones
            running_mean, running_var, count = self._statistics_over_ranks(xs)
            self._update_running(running_mean, running_var, count)
            train = own_update = False
        elif own_update:  # the op's running statistics are scratch, left as they are (momentum 0)
            running_mean, running_var, momentum = self._buffer("slots' mean", (c,)), self._buffer("slots' var", (c,)), 0
        self._y = self.backend.batchnorm_forward(xs, self._gamma, beta, running_mean, running_var, self._mean,
                                                 self._invstd, train, momentum, self.eps, self.activation, self.alpha,
                                                 out=y)
        if own_update:  # the batch's biased variance from invstd = 1 / sqrt(var + eps)
            var = self._buffer("slots' var", (c,))
            var[...] = self._invstd
            var **= -2
            var -= self.eps
            self._update_running(self._mean, var, xs.size // c)
        return self._y.reshape(x.shape)

    def _per_slot(self, name, m):
        """gamma or beta (C,), or with m slots in use m copies side by side (m C,), as the slots' channels."""
        v = self.params[name]
        if m == 1:
            return v
        tiled = self._buffer(f"{name} per slot", (m * self.num_features,))
        tiled.reshape(m, -1)[...] = v
        return tiled

    def _update_running(self, mean, var, count):
        """Move the running statistics towards the mean over the slots of mean and var (m C,), each slot's and
        channel's statistics of `count` values (var biased): running_var by the unbiased variance, or with
        running="stdev" the running standard deviation by sqrt(var + eps). (Array operators only: they run, or are
        captured, on every backend.)"""
        keep, eps = 1 - self.momentum, self.eps
        running_mean, running_var = self.stats["running_mean"], self.stats["running_var"]
        m = mean.shape[0] // self.num_features
        running_mean *= keep
        running_mean += self._sum_over_slots(mean, self.momentum / m)
        if self.running == "var":
            running_var *= keep
            running_var += self._sum_over_slots(var, self.momentum * count / (count - 1) / m)
            return
        stdev = self._buffer("slots' stdev", tuple(var.shape))
        stdev[...] = var
        stdev += eps
        stdev **= 0.5
        running_var += eps
        running_var **= 0.5
        running_var *= keep
        running_var += self._sum_over_slots(stdev, self.momentum / m)
        running_var **= 2
        running_var -= eps

    def _sum_over_slots(self, v, scale=1.0):
        """scale times the sum over the slots of v (m C,): a (C,) buffer, reused by the next call."""
        c = self.num_features
        out = self._buffer("sum over slots", (c,))
        out[...] = v[:c]
        for j in range(1, v.shape[0] // c):
            out += v[j * c:(j + 1) * c]
        if scale != 1.0:
            out *= scale
        return out

    def backward(self, dy, need_dx=True, param_grads=True, rows=None):
        """dy -> dx (through the batch statistics in train mode); dgamma, dbeta accumulate."""
        x = self._rows(self._x, rows)
        m = x.shape[1] // self.num_features
        dy = dy.reshape(x.shape)
        dx = self._buffer("dx", tuple(x.shape)) if need_dx else None
        dgamma, dbeta = (self._grads_per_slot(m) if param_grads else (None, None))
        if self._train and self.comm is not None:
            dx = self._backward_over_ranks(dy, dx, dgamma, dbeta)
        else:
            dx = self.backend.batchnorm_backward(x, self._gamma, self._y, dy, self._mean, self._invstd, self._train,
                                                 self.activation, self.alpha, dgamma=dgamma, dbeta=dbeta, dx=dx)
        if param_grads and m > 1:  # the slots share gamma and beta: their gradients add up
            self.grads["gamma"] += self._sum_over_slots(dgamma)
            self.grads["beta"] += self._sum_over_slots(dbeta)
        return None if dx is None else dx.reshape(-1, self.num_features, *x.shape[2:])  # (N, C[, H, W])

    def _grads_per_slot(self, m):
        """Where the backward accumulates dgamma and dbeta: the gradients themselves, or with m slots (m C,) zeros."""
        if m == 1:
            return self.grads["gamma"], self.grads["beta"]
        grads = self._buffer("grads per slot", (2, m * self.num_features))
        grads.fill(0)
        return grads[0], grads[1]

    # Synchronized batch norm: every rank holds an equal share of the batch's rows, and the statistics are those of
    # all of them, as one process of the whole batch would take them (in-place array operations in float64
    # scratch of the input's shape: host or device arrays, nothing allocated a step but (C,) vectors).

    def _channel_sums_over_ranks(self, v):
        """Per-channel sums of v (N, C) or (N, C, H, W) over its values and every rank's: float64 (C,)."""
        sums = v.sum(axis=(0,) if v.ndim == 2 else (0, 2, 3), dtype=np.float64)
        self.comm.sum(sums)
        return sums

    def _statistics_over_ranks(self, x):
        """(mean, biased var) of each channel over every rank's rows, as buffers of the model's dtype (two
        allreduces: the sums, then the squared deviations), and the number of values a channel they are over."""
        shape = (1, -1) + (1,) * (x.ndim - 2)
        count = x.size // x.shape[1] * self.comm.size
        mean = self._channel_sums_over_ranks(x) / count
        deviations = self._buffer("ranks' deviations", tuple(x.shape), np.float64)
        deviations[...] = x
        deviations -= mean.reshape(shape)
        deviations **= 2
        var = self._channel_sums_over_ranks(deviations) / count
        out = self._buffer("ranks' mean", mean.shape), self._buffer("ranks' var", var.shape)
        out[0][...], out[1][...] = mean, var
        return *out, count

    def _backward_over_ranks(self, dy, dx, dgamma, dbeta):
        """The eval-mode backward gives dx = gamma invstd g and this rank's sums of g and g x_hat; dgamma and dbeta
        take those (the trainer averages parameter gradients over the ranks), and dx the batch terms over every
        rank's rows: dx -= gamma invstd (S1 + x_hat S2) / M, S1 and S2 the ranks' sums, M their values a channel.
        With m slots the channels are the slots' (m C)."""
        x, gamma = self._x, self._gamma
        c = x.shape[1]
        sum_g, sum_g_xhat = self._buffer("sum g", (c,)), self._buffer("sum g x_hat", (c,))
        sum_g.fill(0)
        sum_g_xhat.fill(0)
        dx = self.backend.batchnorm_backward(x, gamma, self._y, dy, self._mean, self._invstd, False,
                                             self.activation, self.alpha, dgamma=sum_g_xhat, dbeta=sum_g, dx=dx)
        if dgamma is not None:
            dgamma += sum_g_xhat
            dbeta += sum_g
        if dx is not None:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            sums = self._buffer("ranks' sums", (2 * c,), np.float64)
            sums[:c], sums[c:] = sum_g, sum_g_xhat
            self.comm.sum(sums)
            means = sums / (x.size // c * self.comm.size)
            terms = self._buffer("ranks' dx terms", tuple(x.shape), np.float64)  # gain (S1 / M + x_hat S2 / M)
            terms[...] = x
            terms -= self._mean.reshape(shape)
            terms *= (self._invstd * means[c:]).reshape(shape)
            terms += means[:c].reshape(shape)
            terms *= (gamma * self._invstd).reshape(shape)
            dx -= terms
        return dx


class Activation(Layer):
    """y = act(x) elementwise, any shape: for an activation that no layer before it fuses."""

    def __init__(self, activation, alpha=0.2):
        self.activation, self.alpha = _check_activation(activation, alpha)

    def __repr__(self):
        return f"Activation({self.activation})"

    def forward(self, x, train=True):
        self._y = self.backend.activation_forward(x, self.activation, self.alpha,
                                                  out=self._buffer("y", tuple(x.shape)))
        return self._y

    def backward(self, dy, need_dx=True, param_grads=True, rows=None):
        if not need_dx:
            return None
        return self.backend.activation_backward(self._rows(self._y, rows), dy, self.activation, self.alpha,
                                                dx=self._buffer("dx", tuple(dy.shape)))


class ReLU(Activation):
    """y = max(x, 0)."""

    def __init__(self):
        super().__init__("relu")


class LeakyReLU(Activation):
    """y = x for x > 0, alpha x otherwise."""

    def __init__(self, alpha=0.2):
        super().__init__("leaky_relu", alpha)


class Reshape(Layer):
    """x (N, prod(shape)) -> a view (N, *shape), e.g. a flat image to (N, C, H, W). No copy, no parameters."""

    def __init__(self, shape):
        self.shape = tuple(int(s) for s in shape)
        _check_positive("Reshape", **{f"dim{i}": s for i, s in enumerate(self.shape)})
        self.in_features = self.out_features = math.prod(self.shape)

    def __repr__(self):
        return f"Reshape({self.shape})"

    def output_shape(self, in_shape):
        if math.prod(in_shape) != self.in_features:
            raise self._error(f"cannot reshape (N, {', '.join(map(str, in_shape))}) to (N, "
                              f"{', '.join(map(str, self.shape))}): {math.prod(in_shape)} != {self.in_features} values")
        return self.shape

    def forward(self, x, train=True):
        self._in_shape = tuple(x.shape)
        return x.reshape((x.shape[0],) + self.shape)

    def backward(self, dy, need_dx=True, param_grads=True, rows=None):
        return dy.reshape((dy.shape[0],) + self._in_shape[1:]) if need_dx else None


class Flatten(Reshape):
    """x (N, ...) -> a view (N, features): the image to vector step before a Dense layer or at G's output."""

    def __init__(self):
        self.shape = None

    def __repr__(self):
        return "Flatten()"

    def output_shape(self, in_shape):
        return (math.prod(in_shape),)

    def forward(self, x, train=True):
        self._in_shape = tuple(x.shape)
        return x.reshape(x.shape[0], -1)


class Sequential:
    """A chain of layers whose parameters, gradients and running statistics are views into flat buffers.

    The flat buffers let an optimizer update a whole model in one call and a checkpoint save it in one array.
    Parameters are named "<layer index>.<name>", e.g. "0.W", "0.b", "1.gamma"; running statistics likewise
    ("1.running_mean"). `in_shape` is the per-sample input shape; it defaults to (in_features,) of the first
    layer (Dense or Reshape). Shapes are checked through every layer when the model is built.
    The model's interface is flat: forward takes (N, in_features) and returns (N, out_features) when its
    layers begin with a Reshape and end with a Flatten, as the DCGAN models do.
    """

    def __init__(self, layers, backend="auto", dtype=np.float32, seed=0, in_shape=None):
        self.layers = list(layers)
        if not self.layers:
            raise GanEngineError("Sequential needs at least one layer")
        self.backend = get_backend(backend)
        self.dtype = np.dtype(dtype)
        supported = getattr(self.backend, "DTYPES", (np.float32, np.float64))
        if self.dtype not in supported:
            raise GanEngineError(f"dtype {self.dtype} is not supported by the {self.backend.name} backend; choose "
                                 f"{' or '.join(np.dtype(d).name for d in supported)}")
        self.flat_params, params = self._flat("param_shapes")  # (P,), one name -> view dict per layer
        self.flat_grads, grads = self._flat("param_shapes")    # (P,)
        self.flat_stats, stats = self._flat("stat_shapes")     # (S,)
        for i, layer in enumerate(self.layers):
            layer.bind(self.backend, self.dtype, params[i], grads[i], stats[i], f"layer {i}")
        self._params, self._grads, self._stats = (
            {f"{i}.{k}": v for i, views in enumerate(per_layer) for k, v in views.items()}
            for per_layer in (params, grads, stats))
        if in_shape is None:
            first = self.layers[0]
            if not hasattr(first, "in_features"):
                raise GanEngineError(f"pass in_shape: the first layer {first!r} does not fix the input shape")
            in_shape = (first.in_features,)
        self.shapes = [tuple(int(s) for s in in_shape)]  # per-sample shape before each layer, and the output's
        for layer in self.layers:
            self.shapes.append(tuple(layer.output_shape(self.shapes[-1])))
        self.in_shape, self.out_shape = self.shapes[0], self.shapes[-1]
        # backward needs no input gradient below the first layer with parameters (a leading Reshape, say)
        self._first_trainable = next((i for i, layer in enumerate(self.layers) if layer.param_shapes()), 0)
        self.reset_parameters(seed)

    def _flat(self, shapes_method):
        """A zeroed flat buffer holding the arrays every layer declares in `shapes_method`, and per layer a dict
        name -> view of it."""
        shapes = [getattr(layer, shapes_method)() for layer in self.layers]
        flat = self.backend.xp.zeros(sum(math.prod(s) for d in shapes for s in d.values()), dtype=self.dtype)
        views, offset = [], 0
        for layer_shapes in shapes:
            views.append({})
            for name, s in layer_shapes.items():
                size = math.prod(s)
                views[-1][name] = flat[offset:offset + size].reshape(s)
                offset += size
        return flat, views

    def __repr__(self):
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"Sequential([{inner}], backend={self.backend.name!r}, dtype={self.dtype.name})"

    @property
    def in_features(self):
        return math.prod(self.in_shape)

    @property
    def out_features(self):
        return math.prod(self.out_shape)

    def reset_parameters(self, seed=0):
        """Draw every parameter again from its initialiser with a host NumPy generator seeded by `seed`, and reset
        the running statistics."""
        rng = np.random.default_rng(seed)
        for i, layer in enumerate(self.layers):
            for k, value in layer.init_params(rng).items():
                self._params[f"{i}.{k}"][...] = self.backend.asarray(value, self.dtype)
            for k, value in layer.init_stats().items():
                self._stats[f"{i}.{k}"][...] = self.backend.asarray(value, self.dtype)

    def parameters(self):
        """name -> parameter array (a view into `flat_params`; writing to it changes the model)."""
        return dict(self._params)

    def gradients(self):
        """name -> gradient array (a view into `flat_grads`)."""
        return dict(self._grads)

    def statistics(self):
        """name -> running statistic array (a view into `flat_stats`), e.g. "1.running_mean"."""
        return dict(self._stats)

    def synchronize(self, comm):
        """Make the layers that mix the rows of a batch (batch norm) take their train-mode statistics over the rows
        of every rank of `comm` (gan_engine.distributed), each rank holding an equal share of the batch."""
        for layer in self.layers:
            if layer.mixes_rows:
                layer.comm = comm

    @property
    def rows_independent(self):
        """True when each output row depends on its input row alone, in training too (no batch norm): then a
        forward over two batches stacked is the two forwards, and a backward over them the sum of the two."""
        return not any(layer.mixes_rows for layer in self.layers)

    def zero_grad(self):
        """Set every parameter gradient to zero (they accumulate across backward calls until then)."""
        self.flat_grads.fill(0)

    def forward(self, x, train=True):
        """x (N, *in_shape) backend array -> output (N, *out_shape), a buffer reused by the next forward.

        train=False runs batch norm on its running statistics (each sample independent of the batch) and leaves
        them alone; train=True normalises by the batch and updates them.
        """
        if getattr(x, "dtype", None) != self.dtype:
            raise GanEngineError(f"model expects {self.dtype.name} input, got {getattr(x, 'dtype', type(x).__name__)}")
        if tuple(x.shape[1:]) != self.in_shape or x.shape[0] < 1:
            first = self.layers[0]
            raise GanEngineError(f"{first.label} ({first!r}) expects input of shape "
                                 f"(N, {', '.join(map(str, self.in_shape))}), got {tuple(x.shape)}")
        for layer in self.layers:
            x = layer.forward(x, train)
        return x

    def backward(self, dy, need_dx=False, param_grads=True, rows=None):
        """dy (N, *out_shape) -> d loss / d input (or None); parameter gradients accumulate if param_grads.

        `rows` (a slice): dy holds only those rows of the last forward's batch, and the gradients are theirs alone,
        as if the forward had seen those rows only (a model without batch norm: rows_independent).
        """
        for i in range(len(self.layers) - 1, -1, -1):
            dy = self.layers[i].backward(dy, need_dx=need_dx or i > self._first_trainable, param_grads=param_grads,
                                         rows=rows)
        return dy

    def state_dict(self):
        """name -> host NumPy copy of every parameter and running statistic."""
        return {k: np.array(self.backend.to_numpy(v)) for k, v in {**self._params, **self._stats}.items()}

    def load_state_dict(self, state):
        """Copy parameters and running statistics from a name -> array mapping; names and shapes must match."""
        own = {**self._params, **self._stats}
        missing = sorted(set(own) - set(state))
        extra = sorted(set(state) - set(own))
        if missing or extra:
            raise GanEngineError(f"parameters do not match the model: missing {missing}, unexpected {extra}")
        for k, v in state.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise GanEngineError(f"parameter {k!r} has shape {tuple(v.shape)}, the model expects "
                                     f"{tuple(own[k].shape)}")
            own[k][...] = self.backend.asarray(v, self.dtype)
