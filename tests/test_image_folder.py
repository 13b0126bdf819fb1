"""Image folders: recursive sorted reading, centre crop, channel choice, skipped broken files, every error."""
import io

import numpy as np
import pytest
from PIL import Image

from gan_engine.errors import GanEngineError
from gan_engine.image_folder import read_image_folder

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def save(path, size, color, mode="RGB"):
    """A plain image of `size` (W, H) in one colour, in the format its extension names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def striped(size, white_box):
    """A black "L" image of `size` (W, H) with white pixels in white_box (left, top, right, bottom)."""
    img = Image.new("L", size, 0)
    img.paste(255, white_box)
    return img


def test_reads_rgb_png_and_jpeg_recursively_in_sorted_order(tmp_path):
    save(tmp_path / "b.jpg", (30, 50), GREEN)
    save(tmp_path / "a.png", (40, 20), RED)
    save(tmp_path / "sub" / "c.PNG", (20, 40), BLUE)
    (tmp_path / "notes.txt").write_text("not an image")

    images, skipped = read_image_folder(tmp_path, 16)

    assert images.shape == (3, 3, 16, 16) and images.dtype == np.uint8
    assert skipped == []
    # a.png red, b.jpg green, sub/c.PNG blue: the strongest channel of each image gives the order.
    assert list(images.mean(axis=(2, 3)).argmax(axis=1)) == [0, 1, 2]
    assert images[0, 0].min() == 255 and images[0, 1:].max() == 0  # PNG is lossless


def test_wide_image_is_centre_cropped(tmp_path):
    striped((30, 10), (10, 0, 20, 10)).save(tmp_path / "wide.png")  # black | white | black, 10 columns each
    images, _ = read_image_folder(tmp_path, 10)
    assert images.shape == (1, 1, 10, 10)
    assert images.min() >= 250


def test_tall_image_is_centre_cropped(tmp_path):
    striped((10, 30), (0, 10, 10, 20)).save(tmp_path / "tall.png")  # black / white / black, 10 rows each
    images, _ = read_image_folder(tmp_path, 10)
    assert images.shape == (1, 1, 10, 10)
    assert images.min() >= 250


def test_downscaled_crop_keeps_the_centre(tmp_path):
    # 60 x 20, white in the middle 20 x 20: shrunk to 5 x 5, only Lanczos's edge overshoot can add black.
    striped((60, 20), (20, 0, 40, 20)).save(tmp_path / "wide.png")
    images, _ = read_image_folder(tmp_path, 5)
    assert images[..., 1:-1].min() >= 250 and images.mean() >= 240


def test_only_grayscale_images_give_one_channel(tmp_path):
    save(tmp_path / "a.png", (20, 20), 100, mode="L")
    save(tmp_path / "b.png", (24, 16), 200, mode="L")
    images, _ = read_image_folder(tmp_path, 8)
    assert images.shape == (2, 1, 8, 8)
    assert list(images[:, 0, 0, 0]) == [100, 200]


def test_grayscale_and_rgb_mixed_give_three_channels(tmp_path):
    save(tmp_path / "a.png", (20, 20), 100, mode="L")
    save(tmp_path / "b.png", (20, 20), RED)
    images, _ = read_image_folder(tmp_path, 8)
    assert images.shape == (2, 3, 8, 8)
    assert (images[0] == 100).all()  # the gray image is repeated over R, G and B
    assert (images[1, 0] == 255).all() and (images[1, 1:] == 0).all()


def test_explicit_one_channel_converts_rgb_to_gray(tmp_path):
    save(tmp_path / "a.png", (20, 20), RED)
    images, _ = read_image_folder(tmp_path, 8, channels=1)
    assert images.shape == (1, 1, 8, 8)
    assert (images == 76).all()  # Pillow's L = 0.299 R + 0.587 G + 0.114 B


def test_broken_files_are_skipped_and_reported(tmp_path):
    save(tmp_path / "a.png", (20, 20), RED)
    save(tmp_path / "c.png", (20, 20), BLUE)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    png = io.BytesIO()
    Image.new("RGB", (64, 64), GREEN).save(png, "PNG")
    (tmp_path / "cut.png").write_bytes(png.getvalue()[:60])  # a valid header, then truncated

    images, skipped = read_image_folder(tmp_path, 8)

    assert images.shape == (2, 3, 8, 8)
    assert list(images.mean(axis=(2, 3)).argmax(axis=1)) == [0, 2]
    assert [name for name, _ in skipped] == ["bad.png", "cut.png"]
    assert all(reason for _, reason in skipped)


@pytest.mark.parametrize("make, match", [
    (lambda p: p, r"no image files in .*\.png, \.jpg"),
    (lambda p: (p / "readme.txt").write_text("hi") and p, r"no image files in .*extensions"),
    (lambda p: p / "missing", r"missing does not exist"),
    (lambda p: (p / "x.png").write_bytes(b"x") and p / "x.png", r"x\.png is not a folder"),
], ids=["empty", "only-txt", "missing", "file"])
def test_bad_folders_raise(tmp_path, make, match):
    with pytest.raises(GanEngineError, match=match):
        read_image_folder(make(tmp_path), 16)


def test_all_files_unreadable_names_the_first(tmp_path):
    (tmp_path / "a.png").write_bytes(b"not an image")
    (tmp_path / "b.jpg").write_bytes(b"")
    with pytest.raises(GanEngineError, match=r"none of the 2 image files .* could be read \(first: a\.png: "):
        read_image_folder(tmp_path, 16)


@pytest.mark.parametrize("kwargs, match", [
    ({"size": 16, "channels": 2}, r"channels must be None \(auto\), 1 .* or 3 .*got 2"),
    ({"size": 0}, r"size must be an integer >= 4, got 0"),
    ({"size": 3.5}, r"size must be an integer >= 4, got 3\.5"),
])
def test_bad_options_raise(tmp_path, kwargs, match):
    save(tmp_path / "a.png", (20, 20), RED)
    with pytest.raises(GanEngineError, match=match):
        read_image_folder(tmp_path, **kwargs)


def test_palette_images_read_through_their_palette(tmp_path):
    img = Image.new("P", (8, 8))
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.putpixel((0, 0), 1)
    img.save(tmp_path / "p.png")
    images, _ = read_image_folder(tmp_path, 8, channels=3)
    assert tuple(images[0, :, 0, 0]) == (255, 0, 0) and tuple(images[0, :, 7, 7]) == (0, 0, 0)
