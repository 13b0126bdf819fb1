"""Image folders: every picture under a folder (PNG, JPEG, ... through Pillow) as one uint8 array (N, C, H, W).

Each image is converted to grayscale ("L") or RGB, centre-cropped to a square and resized with Lanczos to
size x size. Files that cannot be read are skipped and reported back to the caller, who decides how to warn.
"""
import numbers
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import GanEngineError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")
# What Pillow raises for truncated, corrupt or absurdly large files.
UNREADABLE_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError)


def read_image_folder(path, size, channels=None):
    """Images of a folder (PNG/JPEG/... through Pillow) -> uint8 array (N, C, size, size), files sorted by name.

    The folder is searched recursively for files with one of IMAGE_EXTENSIONS (any case); other files are
    ignored. Files are ordered by their path relative to `path`. `channels` is 1 (grayscale), 3 (RGB) or None:
    1 if every readable image is grayscale (modes "1", "L", "LA", "I", "I;16", "F"), else 3.

    Returns (images, skipped): images (N, C, size, size) uint8, and skipped, a list of (relative path, reason)
    pairs for the image files that could not be read (truncated, corrupt, too large, not a regular file such as a
    named pipe), which are left out. 16-bit grayscale images are scaled to 8 bits, not clipped.
    Raises GanEngineError for a bad `size` or `channels`, a missing path, a path that is not a folder, a
    folder without image files, or one whose image files are all unreadable.
    """
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 4:
        raise GanEngineError(f"image size must be an integer >= 4, got {size!r}")
    if channels not in (None, 1, 3):
        raise GanEngineError(f"channels must be None (auto), 1 (grayscale) or 3 (RGB), got {channels!r}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise GanEngineError(f"image folder {path} does not exist; check the path")
    if not os.path.isdir(path):
        raise GanEngineError(f"{path} is not a folder; pass the folder that holds the images")

    files = _image_files(path)
    if not files:
        raise GanEngineError(f"no image files in {path}; put images with one of these extensions in it: "
                             f"{', '.join(IMAGE_EXTENSIONS)}")
    images, skipped = [], []  # images: one (C, size, size) uint8 each, C = 1 or 3
    for name in files:
        if not os.path.isfile(os.path.join(path, name)):  # a named pipe or a device would block or never end
            skipped.append((name, "not a regular file"))
            continue
        try:
            images.append(_read_image(os.path.join(path, name), int(size), channels))
        except UNREADABLE_ERRORS as e:
            skipped.append((name, str(e) or type(e).__name__))
    if not images:
        name, reason = skipped[0]
        raise GanEngineError(f"none of the {len(files)} image files in {path} could be read (first: {name}: "
                             f"{reason}); replace or remove the broken files")

    if channels is None and any(len(image) == 3 for image in images):
        # Auto mode with some colour images: grayscale ones (1, size, size) become (3, size, size).
        images = [np.repeat(image, 3, axis=0) if len(image) == 1 else image for image in images]
    return np.stack(images), skipped


def _image_files(path):
    """Paths (relative to `path`) of the image files under it, recursively, sorted."""
    found = []
    for folder, _, names in os.walk(path):
        found += [os.path.relpath(os.path.join(folder, name), path) for name in names
                  if name.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def _to_8_bits(array, mode):
    """Integer grayscale pixels -> uint8, scaled by the bit depth: 16 bits for the "I;16" modes and for "I" when
    every value fits in 16 bits (how Pillow opens a 16-bit PNG), else 32."""
    array = array.astype(np.int64)
    bits = 16 if mode.startswith("I;16") or (array.min() >= 0 and array.max() < 2 ** 16) else 32
    if bits == 32:
        array = array + 2 ** 31  # signed 32-bit -> [0, 2^32)
    return np.round(array * (255 / (2 ** bits - 1))).astype(np.uint8)


def _read_image(file, size, channels):
    """One image file -> uint8 (C, size, size); with channels None, C is 1 for grayscale images, else 3."""
    with Image.open(file) as img:
        img.load()
        if channels is None:
            channels = 1 if img.mode in GRAYSCALE_MODES else 3
        if img.mode.startswith("I"):  # 16- or 32-bit integer grayscale: scale to 8 bits (convert() would clip)
            img = Image.fromarray(_to_8_bits(np.asarray(img), img.mode), "L")
        img = img.convert("L" if channels == 1 else "RGB")
    img = ImageOps.fit(img, (size, size), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    array = np.asarray(img)  # (size, size) for L, (size, size, 3) for RGB
    return array[None] if channels == 1 else array.transpose(2, 0, 1)
