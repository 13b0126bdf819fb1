"""How much memory a training step needs, checked before anything is allocated."""
import math

import numpy as np

from .errors import GanEngineError
from .layers import Conv2d, ConvTranspose2d


def step_memory_bytes(G, D, batch):
    """An estimate of the buffers a training step of G and D at this batch size allocates: each layer's output, its
    gradient and a scratch copy, every convolution's im2col columns, and the trainer's batch buffers."""
    per_sample = 0
    for model in (G, D):
        for layer, in_shape, out_shape in zip(model.layers, model.shapes, model.shapes[1:]):
            per_sample += 3 * math.prod(out_shape)
            if isinstance(layer, Conv2d):
                per_sample += layer.in_channels * layer.kernel_size ** 2 * math.prod(out_shape[1:])
            elif isinstance(layer, ConvTranspose2d):
                per_sample += layer.out_channels * layer.kernel_size ** 2 * math.prod(in_shape[1:])
    per_sample += 2 * D.in_features + G.in_features + 2  # real batch, noise, logits and their gradient
    return batch * per_sample * np.dtype(G.dtype).itemsize + 8 * batch


def available_memory_bytes():
    """Memory free for a new allocation (MemAvailable in /proc/meminfo), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            line = next(line for line in f if line.startswith("MemAvailable:"))
        return int(line.split()[1]) * 1024
    except (OSError, StopIteration, ValueError):
        return None


def check_memory(G, D, batch):
    """Refuse, before allocating anything, a batch whose step buffers cannot fit in the host's free memory (the
    CPU backends; a GPU reports its own out-of-memory error)."""
    if G.backend.xp is not np:
        return
    need, free = step_memory_bytes(G, D, batch), available_memory_bytes()
    if free is not None and need > free:
        raise GanEngineError(f"batch size {batch} needs about {need / 2 ** 30:.1f} GiB for a training step's buffers, "
                             f"but {free / 2 ** 30:.1f} GiB of memory is free; use a smaller --batch-size")
