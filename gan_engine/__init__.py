"""gan-engine: a GAN training engine whose hot operations are hand-written kernels.

The API in ten lines:
    from gan_engine import load_dataset, mlp_generator, mlp_discriminator, Trainer
    data = load_dataset("digits")
    G = mlp_generator(z_dim=100, hidden=(256,), out_dim=data.dim)
    D = mlp_discriminator(in_dim=data.dim, hidden=(256,))
    trainer = Trainer(G, D, data.x, batch_size=64, seed=0)
    trainer.train(steps=3000)
    images = trainer.sample(64)  # (64, 64) host array in [-1, 1]
"""
from .backends import backend_status, get_backend
from .data import Dataset, load_dataset
from .errors import GanEngineError
from .layers import (Activation, BatchNorm, Conv2d, ConvTranspose2d, Dense, Flatten, LeakyReLU, Maxout, ReLU,
                     Reshape, Sequential)
from .models import dcgan_discriminator, dcgan_generator, mlp_discriminator, mlp_generator
from .optim import SGD, Adam, WeightAverage
from .trainer import Trainer, TrainingDiverged, sample_noise

__version__ = "0.1.0"

__all__ = [
    "Activation", "Adam", "BatchNorm", "Conv2d", "ConvTranspose2d", "Dataset", "Dense", "Flatten", "GanEngineError",
    "LeakyReLU", "Maxout", "ReLU", "Reshape", "SGD", "Sequential", "Trainer", "TrainingDiverged", "backend_status",
    "dcgan_discriminator", "dcgan_generator", "get_backend", "load_dataset", "mlp_discriminator", "mlp_generator",
    "sample_noise", "WeightAverage",
]
