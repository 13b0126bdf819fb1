"""Latent interpolation (Radford et al. 2016; seed 004): decode paths between random latent points z1 -> z2.

A smooth change along every path is the usual sign that G has learned a continuous map rather than memorised
samples. "linear" walks the straight line; "slerp" walks the great circle, which keeps the norm of normal-prior
noise typical all the way (the middle of a straight line between two normal samples is unusually short).
"""
import numpy as np

from .errors import GanEngineError, check_choice
from .trainer import sample_noise

METHODS = ("linear", "slerp")


def interpolation_path(z1, z2, steps, method="linear"):
    """Host latent points (steps, Z) from z1 (Z,) to z2 (Z,), both ends included."""
    check_choice("interpolation", method, METHODS)
    z1, z2 = np.asarray(z1, dtype=np.float64), np.asarray(z2, dtype=np.float64)
    t = np.linspace(0.0, 1.0, steps)[:, None]  # (steps, 1)
    if method == "slerp":
        cos = np.dot(z1, z2) / (np.linalg.norm(z1) * np.linalg.norm(z2))
        omega = np.arccos(np.clip(cos, -1.0, 1.0))
        if np.sin(omega) > 1e-6:  # otherwise the points are (anti)parallel: the straight line is all there is
            return (np.sin((1 - t) * omega) * z1 + np.sin(t * omega) * z2) / np.sin(omega)
    return (1 - t) * z1 + t * z2


def interpolation_grid(rows, steps, z_dim, prior="normal", method="linear", seed=0):
    """Host float32 noise (rows * steps, z_dim): row r is a path of `steps` points between two fresh prior draws."""
    for name, value, least in (("rows", rows, 1), ("steps", steps, 2)):
        if isinstance(value, bool) or int(value) != value or value < least:
            raise GanEngineError(f"{name} must be an integer >= {least}, got {value!r}")
    ends = sample_noise(2 * rows, z_dim, prior, seed)  # (2 rows, Z)
    paths = [interpolation_path(ends[2 * r], ends[2 * r + 1], steps, method) for r in range(rows)]
    return np.concatenate(paths).astype(np.float32)
