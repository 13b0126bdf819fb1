"""Datasets: every one is a float32 array (N, D) scaled to the generator's range, with its shape and labels.

- "digits" (the embedded default): scikit-learn's bundled 8x8 handwritten digits, 1,797 images, in [-1, 1].
- "ring8": 8 Gaussians on a circle of radius 1, sigma 0.01; "grid25": 25 Gaussians at {-4,-2,0,2,4}^2,
  sigma 0.05 (the VEEGAN / PacGAN protocol). 100,000 points drawn with a fixed seed.
- "mnist", "fashion-mnist": 28x28 images from local files (`path`): a folder holding
  train-images-idx3-ubyte[.gz] (and train-labels-idx1-ubyte[.gz] if present), one IDX image file (raw or .gz),
  or an .npz with `x_train` (and `y_train`).
- "folder": your own pictures (PNG, JPEG, ...) under the folder `path`, centre-cropped and resized to
  image_size x image_size, grayscale or RGB (see image_folder.read_image_folder).
"""
import gzip
import math
import os
import warnings
import zlib
from dataclasses import dataclass

import numpy as np

from .errors import GanEngineError, check_choice
from .image_folder import read_image_folder

DATASETS = ("digits", "ring8", "grid25", "mnist", "fashion-mnist", "folder")
FILE_DATASETS = ("mnist", "fashion-mnist", "folder")
MIXTURE_POINTS = 100_000
FOLDER_IMAGE_SIZE = 64


@dataclass
class Dataset:
    """x (N, D) float32; image_shape (C, H, W) for images, None for 2-D points; labels (N,) int64 or None.

    `output` is the generator output activation that matches the data's range ("tanh" for images in [-1, 1],
    "identity" for points); `modes` (K, 2) and `sigma` describe a Gaussian mixture.
    """
    name: str
    x: np.ndarray
    image_shape: tuple | None = None
    labels: np.ndarray | None = None
    output: str = "tanh"
    modes: np.ndarray | None = None
    sigma: float | None = None

    @property
    def dim(self):
        return self.x.shape[1]


def load_dataset(name="digits", path=None, image_size=None, channels=None):
    """Load a dataset by name (see the module doc); `path` is required for the file datasets.

    `image_size` (default 64) and `channels` (1, 3 or None for auto) apply to "folder" only. Unreadable files in
    a folder are skipped with a warning that counts them.
    """
    check_choice("dataset", name, DATASETS)
    if name != "folder" and (image_size is not None or channels is not None):
        raise GanEngineError("image_size and channels apply to the folder dataset only")
    if name == "folder":
        if not path:
            raise GanEngineError("dataset 'folder' reads your images: pass --data DIR, a folder of PNG or JPEG files")
        return load_image_folder(path, image_size or FOLDER_IMAGE_SIZE, channels)
    if name in FILE_DATASETS:
        if not path:
            raise GanEngineError(f"dataset {name!r} is read from local files: pass --data PATH (a folder with "
                                 "train-images-idx3-ubyte[.gz], an IDX file, or an .npz with x_train)")
        images, labels = read_images(path)
        return _image_dataset(name, images, labels)
    if path:
        raise GanEngineError(f"dataset {name!r} is built in and reads no files; drop --data {path}")
    if name == "digits":
        return load_digits()
    if name == "ring8":
        return gaussian_mixture(name, ring8_modes(), 0.01)
    return gaussian_mixture(name, grid25_modes(), 0.05)


def load_digits():
    """scikit-learn's 8x8 digits (values 0..16) scaled to [-1, 1], with their labels."""
    from sklearn.datasets import load_digits as sk_load_digits
    bunch = sk_load_digits()
    x = (bunch.images.reshape(len(bunch.images), -1) / 8.0 - 1.0).astype(np.float32)
    return Dataset("digits", x, (1, 8, 8), bunch.target.astype(np.int64))


def ring8_modes():
    """(8, 2): unit circle at angles 2 pi k / 8."""
    angles = 2 * np.pi * np.arange(8) / 8
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def grid25_modes():
    """(25, 2): the grid {-4, -2, 0, 2, 4}^2."""
    g = np.arange(-4.0, 5.0, 2.0)
    return np.stack(np.meshgrid(g, g, indexing="ij"), axis=-1).reshape(-1, 2)


def gaussian_mixture(name, modes, sigma, n=MIXTURE_POINTS, seed=0):
    """n points from equal-weight isotropic Gaussians at `modes` (K, 2); labels are the mode indices."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(modes), size=n)
    x = (modes[labels] + sigma * rng.standard_normal((n, 2))).astype(np.float32)
    return Dataset(name, x, None, labels.astype(np.int64), "identity", modes.astype(np.float32), sigma)


def load_image_folder(path, size=FOLDER_IMAGE_SIZE, channels=None):
    """A folder of images -> Dataset (N, C*size*size) in [-1, 1], warning once about unreadable files."""
    images, skipped = read_image_folder(path, size, channels)  # (N, C, size, size) uint8
    if skipped:
        name, reason = skipped[0]
        warnings.warn(f"skipped {len(skipped)} unreadable image file(s) in {path} (first: {name}: {reason}); "
                      f"training on the other {len(images)}", stacklevel=3)
    n = images.shape[0]
    return Dataset("folder", scale_images(images).reshape(n, -1), images.shape[1:], None)


def _image_dataset(name, images, labels):
    """uint8 or float images (N, H, W) -> Dataset scaled to [-1, 1]."""
    n, h, w = images.shape
    return Dataset(name, scale_images(images).reshape(n, h * w), (1, h, w), labels)


def scale_images(images):
    """Integer images in 0..255 -> [-1, 1]; float images in [0, 1] or [-1, 1] -> [-1, 1]; float32."""
    if np.issubdtype(images.dtype, np.integer):
        if images.size and (images.min() < 0 or images.max() > 255):
            raise GanEngineError(f"integer images must lie in 0..255, got {images.min()}..{images.max()}")
        return (images.astype(np.float32) / 127.5 - 1.0).astype(np.float32)
    if not np.issubdtype(images.dtype, np.floating):
        raise GanEngineError(f"images must be integers in 0..255 or floats, got dtype {images.dtype}")
    if not np.isfinite(images).all():
        raise GanEngineError(f"images contain {int((~np.isfinite(images)).sum())} NaN or infinite values")
    lo, hi = float(images.min()), float(images.max())
    if lo >= 0.0 and hi <= 1.0:
        return (images * 2.0 - 1.0).astype(np.float32)
    if lo >= -1.0 and hi <= 1.0:
        return images.astype(np.float32)
    raise GanEngineError(f"float images must lie in [0, 1] or [-1, 1], got [{lo:g}, {hi:g}]")


def read_images(path):
    """(images (N, H, W), labels (N,) or None) from a folder of IDX files, one IDX file, or an .npz."""
    if not os.path.exists(path):
        raise GanEngineError(f"data path {path!r} does not exist")
    if os.path.isdir(path):
        image_file = _find(path, "train-images-idx3-ubyte")
        if image_file is None:
            raise GanEngineError(f"no train-images-idx3-ubyte[.gz] in folder {path!r}")
        label_file = _find(path, "train-labels-idx1-ubyte")
        images = read_idx(image_file)
        labels = read_idx(label_file).astype(np.int64) if label_file else None
    elif path.endswith(".npz"):
        images, labels = _read_npz(path)
    else:
        images, labels = read_idx(path), None
    if images.ndim == 2:  # (N, H*W) with square images
        side = math.isqrt(images.shape[1])
        if side * side != images.shape[1]:
            raise GanEngineError(f"{path}: flat images of {images.shape[1]} pixels are not square; "
                                 "save them as (N, H, W)")
        images = images.reshape(-1, side, side)
    if images.ndim != 3 or images.shape[0] == 0:
        raise GanEngineError(f"{path}: expected images of shape (N, H, W), got {images.shape}")
    if labels is not None and labels.shape != (images.shape[0],):
        raise GanEngineError(f"{path}: {images.shape[0]} images but labels of shape {labels.shape}")
    return images, labels


def _find(folder, stem):
    for name in (stem, stem + ".gz"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x_train" not in f.files:
                raise GanEngineError(f"{path}: no array named x_train (found: {', '.join(f.files) or 'none'})")
            return f["x_train"], (f["y_train"].astype(np.int64) if "y_train" in f.files else None)
    except GanEngineError:
        raise
    except Exception as exc:  # zipfile, pickle and format errors all mean the same to a user
        raise GanEngineError(f"{path}: not a readable .npz file ({exc})") from exc


MAX_IDX_BYTES = 2 ** 32  # 4 GiB: about 70 times MNIST's training images
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path):
    """An IDX file (the MNIST format; raw or gzip-compressed) -> NumPy array.

    The header is parsed first and the body read with a cap of the size it declares, so a file that holds more
    (a gzip bomb, say) is refused after reading at most one byte past that size."""
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            magic = f.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in IDX_DTYPES:
                raise GanEngineError(f"{path}: not an IDX file (bad magic number)")
            ndim = magic[3]
            sizes = f.read(4 * ndim)
            if ndim == 0 or len(sizes) < 4 * ndim:
                raise GanEngineError(f"{path}: truncated IDX header")
            dims = tuple(int.from_bytes(sizes[4 * i: 4 * i + 4], "big") for i in range(ndim))
            dtype = np.dtype(IDX_DTYPES[magic[2]])
            body = math.prod(dims) * dtype.itemsize
            if body > MAX_IDX_BYTES:
                raise GanEngineError(f"{path}: IDX header says {dims} ({body / 2 ** 30:.1f} GiB), more than the "
                                     f"{MAX_IDX_BYTES / 2 ** 30:.0f} GiB gan-engine reads; the file is corrupt")
            raw = f.read(body + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise GanEngineError(f"{path}: cannot read IDX file ({exc})") from exc
    if len(raw) != body:
        more = "more than" if len(raw) > body else f"{len(raw)} bytes of"
        raise GanEngineError(f"{path}: IDX header says {dims} ({body} bytes of data) but the file has {more} that; "
                             "the file is truncated or corrupt")
    return np.frombuffer(raw, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))
