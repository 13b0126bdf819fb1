"""DCGAN from the command line: training on digits and on a folder of images, resume, interpolation grids,
and the errors of the new options."""
import os

import numpy as np
import pytest
from PIL import Image

from gan_engine.checkpoint import load_checkpoint
from gan_engine.cli import main
from gan_engine.data import load_dataset
from gan_engine.errors import GanEngineError
from gan_engine.interpolate import interpolation_grid, interpolation_path

from .test_cli import error_of

TINY_DCGAN = ["--model", "dcgan", "--z-dim", "8", "--g-hidden", "8,4", "--d-hidden", "4,8", "--batch-size", "8",
              "--log-every", "2", "--sample-every", "4", "--checkpoint-every", "4", "--quiet"]


def train(out, *extra):
    return main(["train", "--out", str(out), *TINY_DCGAN, *extra])


def test_dcgan_trains_on_digits_and_resumes_step_for_step(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert train(one, "--steps", "8") == 0
    state, config, info = load_checkpoint(str(one / "checkpoints/step_00000008.npz"))
    assert config["model"] == "dcgan" and config["init"] == "normal" and info["image_shape"] == [1, 8, 8]
    assert "2.running_mean" in state["G"] and "3.running_var" in state["D"]
    assert train(two, "--steps", "4") == 0
    assert main(["train", "--resume", str(two), "--steps", "8", "--quiet"]) == 0
    a, _, _ = load_checkpoint(str(one / "checkpoints/step_00000008.npz"))
    b, _, _ = load_checkpoint(str(two / "checkpoints/step_00000008.npz"))
    for part in ("G", "D"):
        for k in a[part]:
            assert np.array_equal(a[part][k], b[part][k]), (part, k)


def _folder(path, n=6, size=(20, 14), mode="RGB"):
    path.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path / f"img{i}.png")
    return path


def test_dcgan_trains_on_a_folder_of_images(tmp_path, capsys):
    images = _folder(tmp_path / "imgs")
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "run"
    assert train(out, "--dataset", "folder", "--data", str(images), "--image-size", "16", "--steps", "4") == 0
    warnings = capsys.readouterr().err.strip().splitlines()  # one line each
    assert all(line.startswith("gan-engine train: warning: ") for line in warnings), warnings
    assert "skipped 1 unreadable image file(s)" in warnings[0]
    assert "broken.jpg" in warnings[0] and "training on the other 6" in warnings[0]
    assert any("only 6 training samples" in line for line in warnings), warnings
    _, config, info = load_checkpoint(str(out / "checkpoints/step_00000004.npz"))
    assert info["image_shape"] == [3, 16, 16] and config["image_size"] == 16
    grid = Image.open(out / "samples/step_00000004.png")
    assert grid.mode == "RGB"


def test_folder_dataset_is_scaled_and_shaped(tmp_path):
    data = load_dataset("folder", str(_folder(tmp_path / "g", n=3, mode="L")), image_size=8)
    assert data.x.shape == (3, 64) and data.image_shape == (1, 8, 8) and data.x.dtype == np.float32
    assert -1 <= data.x.min() < data.x.max() <= 1
    rgb = load_dataset("folder", str(tmp_path / "g"), image_size=8, channels=3)
    assert rgb.image_shape == (3, 8, 8)
    (tmp_path / "g" / "bad.png").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image file\(s\) .*bad.png.*other 3"):
        load_dataset("folder", str(tmp_path / "g"), image_size=8)


def test_folder_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert "no image files in" in error_of(capsys, ["train", "--out", str(tmp_path / "r"), "--dataset", "folder",
                                                    "--data", str(tmp_path / "empty"), "--quiet"])
    assert "pass --data DIR" in error_of(capsys, ["train", "--out", str(tmp_path / "r"), "--dataset", "folder"])
    assert "apply to --dataset folder only" in error_of(capsys, ["train", "--out", str(tmp_path / "r"),
                                                                 "--image-size", "32"])
    assert "channels must be 1 (grayscale) or 3" in error_of(
        capsys, ["train", "--out", str(tmp_path / "r"), "--dataset", "folder", "--data", str(tmp_path / "empty"),
                 "--channels", "2"])
    assert not os.path.exists(tmp_path / "r")


@pytest.mark.parametrize("args, message", [
    (["--model", "dcgan", "--dataset", "ring8"], "dcgan needs image data"),
    (["--model", "dcgan", "--g-hidden", "8,8,8,8", "--steps", "2"], "makes images whose side is a multiple of 16"),
])
def test_dcgan_option_errors(tmp_path, capsys, args, message):
    assert message in error_of(capsys, ["train", "--out", str(tmp_path / "r"), "--quiet", *args])


def test_linear_and_spherical_paths():
    rng = np.random.default_rng(0)
    z1, z2 = rng.standard_normal(50), rng.standard_normal(50)
    line = interpolation_path(z1, z2, 5, "linear")
    np.testing.assert_allclose(line[[0, -1]], [z1, z2], atol=1e-12)
    np.testing.assert_allclose(line[2], (z1 + z2) / 2, atol=1e-12)
    arc = interpolation_path(z1, z2, 5, "slerp")
    np.testing.assert_allclose(arc[[0, -1]], [z1, z2], atol=1e-12)
    # between unit vectors slerp walks the great circle: equal angles per step, norm 1 all the way
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
    circle = interpolation_path(unit(z1), unit(z2), 5, "slerp")
    np.testing.assert_allclose(np.linalg.norm(circle, axis=1), 1, atol=1e-12)
    angles = np.arccos(np.clip(circle @ unit(z1), -1, 1))
    np.testing.assert_allclose(np.diff(angles), angles[-1] / 4, atol=1e-9)
    assert np.linalg.norm(arc[2]) > np.linalg.norm(line[2])  # the straight line's middle is short; the arc's is not
    parallel = interpolation_path(z1, 2 * z1, 3, "slerp")
    np.testing.assert_allclose(parallel[1], 1.5 * z1, atol=1e-12)
    with pytest.raises(GanEngineError, match="unknown interpolation 'cubic'"):
        interpolation_path(z1, z2, 3, "cubic")
    with pytest.raises(GanEngineError, match="steps must be an integer >= 2"):
        interpolation_grid(2, 1, 4)


def test_interpolate_writes_a_grid_that_changes_smoothly(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, "--steps", "4") == 0
    png = tmp_path / "interp.png"
    assert main(["interpolate", "--checkpoint", str(out), "--rows", "3", "--steps", "6", "--out", str(png),
                 "--method", "slerp"]) == 0
    assert "3 slerp paths of 6 steps" in capsys.readouterr().out
    grid = np.asarray(Image.open(png))
    assert grid.shape[1] > grid.shape[0]  # 6 columns, 3 rows
    from gan_engine.run import interpolate_from_checkpoint
    x, _ = interpolate_from_checkpoint(str(out / "checkpoints/step_00000004.npz"), rows=3, steps=12)
    paths = x.reshape(3, 12, -1)
    neighbours = np.linalg.norm(np.diff(paths, axis=1), axis=2).max()
    ends = np.linalg.norm(paths[:, -1] - paths[:, 0], axis=1).min()
    assert neighbours < ends / 2  # each step moves a small part of the way from one end to the other


def test_interpolate_errors(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--dataset", "ring8", "--hidden", "8", "--steps", "2",
                 "--batch-size", "8", "--quiet"]) == 0
    assert "2-D points" in error_of(capsys, ["interpolate", "--checkpoint", str(out)])
    assert "unknown interpolation 'zigzag'" in error_of(
        capsys, ["interpolate", "--checkpoint", str(out), "--method", "zigzag"])
    assert "does not exist" in error_of(capsys, ["interpolate", "--checkpoint", str(tmp_path / "none.npz")])

