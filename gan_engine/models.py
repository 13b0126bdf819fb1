"""The seeds' MLP GAN: a generator of leaky-ReLU Dense layers with a tanh output, and a discriminator that
returns logits (the sigmoid lives in the loss)."""
import numpy as np

from .errors import GanEngineError, check_choice
from .layers import Dense, Sequential

MODELS = ("mlp",)


def _check_hidden(hidden):
    hidden = tuple(int(h) for h in hidden)
    if any(h < 1 for h in hidden):
        raise GanEngineError(f"hidden sizes must be positive, got {hidden}")
    return hidden


def mlp_generator(z_dim=100, hidden=(128,), out_dim=784, alpha=0.2, init="xavier", backend="auto",
                  dtype=np.float32, seed=0, output="tanh"):
    """G: z (N, z_dim) -> [Dense + leaky ReLU(alpha)] per hidden size -> Dense + `output` -> x (N, out_dim).

    `output` is "tanh" for data in [-1, 1] (images) and "identity" for unbounded data (2-D points).
    """
    dims = (z_dim, *_check_hidden(hidden), out_dim)
    layers = [Dense(dims[i], dims[i + 1], "leaky_relu", alpha, init) for i in range(len(dims) - 2)]
    layers.append(Dense(dims[-2], dims[-1], output, alpha, init))
    return Sequential(layers, backend=backend, dtype=dtype, seed=seed)


def mlp_discriminator(in_dim=784, hidden=(128,), alpha=0.2, init="xavier", backend="auto", dtype=np.float32, seed=1):
    """D: x (N, in_dim) -> [Dense + leaky ReLU(alpha)] per hidden size -> Dense -> logits (N, 1)."""
    dims = (in_dim, *_check_hidden(hidden), 1)
    layers = [Dense(dims[i], dims[i + 1], "leaky_relu", alpha, init) for i in range(len(dims) - 2)]
    layers.append(Dense(dims[-2], dims[-1], "identity", alpha, init))
    return Sequential(layers, backend=backend, dtype=dtype, seed=seed)


def build_generator(config, dim, output="tanh"):
    """G for a TrainConfig, a data dimension and an output activation; seeded by config.seed."""
    _check_model(config.model)
    return mlp_generator(config.z_dim, config.g_hidden, dim, config.alpha, config.init, config.backend,
                         np.dtype(config.dtype), seed=config.seed, output=output)


def build_discriminator(config, dim):
    """D for a TrainConfig and a data dimension; seeded by config.seed + 1."""
    _check_model(config.model)
    return mlp_discriminator(dim, config.d_hidden, config.alpha, config.init, config.backend,
                             np.dtype(config.dtype), seed=config.seed + 1)


def _check_model(name):
    check_choice("model", name, MODELS)
