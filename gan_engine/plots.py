"""Pictures of a run: image grids (Pillow), 2-D scatter plots and loss curves (matplotlib, Agg)."""
import math

import numpy as np

from .errors import GanEngineError
from .io import atomic_path


CELL = 64  # the side, in pixels, that a picture's smaller images are scaled up to (nearest neighbour)


def image_grid(x, image_shape, cols=None, pad=1, cell=None):
    """Samples x (n, C*H*W) in [-1, 1] -> uint8 grid (rows*(H+pad)+pad, cols*(W+pad)+pad[, C]) on grey padding.

    `cell` scales each image up by a whole factor to about cell x cell pixels (nearest neighbour), so 8x8 digits
    stay readable; H and W above are then the scaled sides.
    """
    c, h, w = image_shape
    n = x.shape[0]
    if x.shape[1] != c * h * w:
        raise GanEngineError(f"samples of size {x.shape[1]} do not match image shape {image_shape}")
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    imgs = ((np.clip(x, -1, 1) + 1) * 127.5).round().astype(np.uint8).reshape(n, c, h, w).transpose(0, 2, 3, 1)
    if cell and cell != h:
        scale = max(1, cell // max(h, w))
        imgs = imgs.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 128, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = imgs[i]
    return grid[..., 0] if c == 1 else grid


def save_image_grid(x, image_shape, path, cols=None):
    """Write samples x (n, C*H*W) in [-1, 1] as a PNG grid: images under CELL pixels scaled up to about CELL, and
    a grey border of a sixteenth of a cell between them, so neighbouring images never touch."""
    from PIL import Image
    cell = max(CELL, image_shape[1])
    grid = image_grid(x, image_shape, cols=cols, pad=max(2, cell // 16), cell=cell)
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")


def save_scatter(samples, path, real=None, title=None):
    """Write 2-D samples (n, 2) as a scatter plot PNG, over the real data (m, 2) when given."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    if real is not None:
        ax.scatter(real[:, 0], real[:, 1], s=2, c="tab:blue", alpha=0.3, label="real")
    ax.scatter(samples[:, 0], samples[:, 1], s=2, c="tab:red", alpha=0.6, label="generated")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", markerscale=4)
    if title:
        ax.set_title(title)
    _save(fig, path)


def save_loss_curve(steps, metrics, path, title=None):
    """Write D and G losses (and mean D(x), D(G(z))) against steps as a PNG, under `title`."""
    fig = _figure(figsize=(9, 6))
    top, bottom = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    top.plot(steps, metrics["d_loss"], label="D loss")
    top.plot(steps, metrics["g_loss"], label="G loss")
    top.set_ylabel("loss")
    _legend_outside(top)
    bottom.plot(steps, metrics["d_real"], label="mean D(x)")
    bottom.plot(steps, metrics["d_fake"], label="mean D(G(z))")
    bottom.set_ylim(0, 1)
    bottom.set_xlabel("step")
    _legend_outside(bottom)
    if title:
        top.set_title(title)
    _save(fig, path)


def save_metric_curves(results, path):
    """Write each generated-sample metric against the checkpoint step as a PNG, its real-data value dashed.

    results: evaluate_checkpoint dicts ({"step", "generated": {...}, "real": {...}}) in step order.
    """
    names = list(results[0]["generated"])
    fig = _figure(figsize=(8, 2.2 * len(names)))
    steps = [r["step"] for r in results]
    for i, name in enumerate(names):
        ax = fig.add_subplot(len(names), 1, i + 1)
        ax.plot(steps, [r["generated"][name] for r in results], marker="o", label="generated")
        ax.axhline(results[0]["real"][name], color="tab:green", linestyle="--", label="real data")
        ax.set_ylabel(name.replace("_", " "))
        _legend_outside(ax)
    ax.set_xlabel("step")
    _save(fig, path)


def save_curves(curves, path):
    """Write curves {panel: {line label: (steps, values)}} as a PNG: a panel per key, one above the other, each
    with a line per label against the step."""
    fig = _figure(figsize=(9, 2.4 * len(curves)))
    for i, (panel, lines) in enumerate(curves.items()):
        ax = fig.add_subplot(len(curves), 1, i + 1)
        for label, (steps, values) in lines.items():
            ax.plot(steps, values, marker="o", markersize=3, label=label)
        ax.set_ylabel(panel.replace("_", " "))
        _legend_outside(ax)
    ax.set_xlabel("step")
    _save(fig, path)


def _legend_outside(ax):
    """The legend right of the axes, where it never hides a line."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)


def _figure(figsize=(6, 6)):
    from matplotlib.figure import Figure
    return Figure(figsize=figsize, dpi=100)


def _save(fig, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
