"""Fault injection through the `gan-engine` command: killed runs, damaged checkpoints and configs, bad image
folders and IDX files, unwritable output, absurd options. Each case ends in a usable run or a one-line
`error:` (exit 2), never a traceback or a silent success."""
import gzip
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from gan_engine import checkpoint as ckpt
from gan_engine.checkpoint import load_checkpoint
from gan_engine.cli import main
from gan_engine.data import read_idx
from gan_engine.image_folder import read_image_folder

TINY = ["--hidden", "16", "--z-dim", "8", "--batch-size", "16", "--log-every", "5", "--sample-every", "10",
        "--checkpoint-every", "10", "--quiet"]


def train(out, *extra):
    return main(["train", "--out", str(out), *TINY, *extra])


def resume(out, steps):
    return main(["train", "--resume", str(out), "--steps", str(steps), "--quiet"])


def one_line_error(capsys, *words):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = next(line for line in err.splitlines() if ": error: " in line)
    for word in words:
        assert word in line, (word, line)
    return err


def rewrite_meta(path, change):
    """Rewrite a checkpoint's JSON meta through change(meta) -> new meta (any JSON value)."""
    with np.load(path) as f:
        files = {k: f[k] for k in f.files}
    files["meta"] = np.array(json.dumps(change(json.loads(str(files["meta"])))))
    with open(path, "wb") as f:
        np.savez(f, **files)


def rewrite_array(path, key, value):
    with np.load(path) as f:
        files = {k: f[k] for k in f.files}
    files[key] = value
    with open(path, "wb") as f:
        np.savez(f, **files)


def weights(path):
    state, _, _ = load_checkpoint(str(path))
    return state["G"]


@pytest.fixture(scope="module")
def run20(tmp_path_factory):
    """A tiny run trained to step 20 (checkpoints at 10 and 20), and the same run trained to 30 in one go."""
    base = tmp_path_factory.mktemp("runs")
    assert train(base / "run", "--steps", "20") == 0
    assert train(base / "whole", "--steps", "30") == 0
    return base


def copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


# ---- dead ends -------------------------------------------------------------------------------------------------

def test_a_run_stopped_before_its_first_checkpoint_starts_again_on_resume(run20, tmp_path, capsys):
    out = tmp_path / "early"
    out.mkdir()
    (out / "config.json").write_text((run20 / "run" / "config.json").read_text())
    assert resume(out, 10) == 0
    assert "starts again from step 0" in capsys.readouterr().err
    assert os.path.exists(out / "checkpoints" / "step_00000010.npz")
    for k, v in weights(run20 / "run" / "checkpoints" / "step_00000010.npz").items():
        assert np.array_equal(weights(out / "checkpoints" / "step_00000010.npz")[k], v)


def test_resume_skips_a_damaged_latest_checkpoint_and_keeps_it(run20, tmp_path, capsys):
    out = copy_run(run20 / "run", tmp_path / "run")
    latest = out / "checkpoints" / "step_00000020.npz"
    latest.write_bytes(latest.read_bytes()[:1000])  # truncated
    stale = out / "checkpoints" / ".step_00000030.npz.abcd1234.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert resume(out, 30) == 0
    err = capsys.readouterr().err
    assert "skipped" in err and "step_00000020.npz" in err and "truncated or corrupt" in err
    assert latest.exists() and not stale.exists()
    for k, v in weights(run20 / "whole" / "checkpoints" / "step_00000030.npz").items():
        assert np.array_equal(weights(out / "checkpoints" / "step_00000030.npz")[k], v)


def _kill_when(out, enough, cmd):
    """Start cmd, kill -9 it at a random moment once enough(out) holds (or after 120 s)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not enough(out) and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(np.random.default_rng().uniform(0, 0.1))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_a_run_killed_before_and_after_its_checkpoints_resumes_exactly(tmp_path):
    out = tmp_path / "killed"
    options = [*TINY, "--checkpoint-every", "2", "--sample-every", "1000000", "--seed", "3"]
    cli = [sys.executable, "-m", "gan_engine.cli", "train"]
    _kill_when(out, lambda o: os.path.exists(o / "config.json"), [*cli, "--out", str(out), *options, "--steps",
                                                                    "1000000"])
    if ckpt.all_checkpoints(str(out)):  # the kill came after the first checkpoint after all: make it an early one
        for path in ckpt.all_checkpoints(str(out)):
            os.remove(path)
    _kill_when(out, lambda o: len(ckpt.all_checkpoints(str(o))) >= 3,
               [*cli, "--resume", str(out), "--steps", "1000000", "--quiet"])
    paths = ckpt.all_checkpoints(str(out))
    assert len(paths) >= 3
    for path in paths:
        load_checkpoint(path)  # every checkpoint that survived a kill -9 loads
    last = load_checkpoint(paths[-1])[0]["step"]
    assert main(["train", "--resume", str(out), "--steps", str(last + 4), "--quiet"]) == 0
    assert not [n for n in os.listdir(out / "checkpoints") if n.endswith(".tmp")]
    assert train(tmp_path / "whole", *options[len(TINY):], "--steps", str(last + 4)) == 0
    final = ckpt.checkpoint_name(last + 4)
    for k, v in weights(tmp_path / "whole" / final).items():
        assert np.array_equal(weights(out / final)[k], v), k


# ---- damaged checkpoints ---------------------------------------------------------------------------------------

def test_nan_weights_are_refused_by_sample_and_skipped_by_resume(run20, tmp_path, capsys):
    out = copy_run(run20 / "run", tmp_path / "run")
    latest = str(out / "checkpoints" / "step_00000020.npz")
    key = next(k for k in np.load(latest).files if k.startswith("G/"))
    rewrite_array(latest, key, np.full_like(np.load(latest)[key], np.nan))
    assert main(["sample", "--checkpoint", latest, "--out", str(tmp_path / "s.png")]) == 2
    one_line_error(capsys, "NaN or infinite", key)
    assert not os.path.exists(tmp_path / "s.png")
    assert resume(out, 30) == 0
    assert "step_00000020.npz" in capsys.readouterr().err


@pytest.mark.parametrize("change, words", [
    (lambda m: {k: v for k, v in m.items() if k != "version"}, ["metadata", "lacks 'version'"]),
    (lambda m: [m], ["metadata is a list"]),
    (lambda m: {**m, "step": "ten"}, ["'step'"]),
    (lambda m: {**m, "scalars": {}}, ["scalars of G"]),
])
def test_hand_edited_meta_is_a_one_line_error(run20, tmp_path, capsys, change, words):
    path = str(copy_run(run20 / "run", tmp_path / "run") / "checkpoints" / "step_00000020.npz")
    rewrite_meta(path, change)
    assert main(["sample", "--checkpoint", path, "--out", str(tmp_path / "s.png")]) == 2
    one_line_error(capsys, *words)


@pytest.mark.parametrize("key, value, words", [
    ("lr_g", "fast", ["lr-g must be a finite number", "'fast'"]),
    ("g_hidden", 5, ["g-hidden must be a list of integers"]),
    ("alpha", None, ["alpha must be a finite number"]),
    ("lr_d", None, ["lr-d"]),
    ("lr_g", "missing", ["lacks lr_g"]),
])
def test_a_saved_config_of_the_wrong_type_or_incomplete_is_refused_on_resume(run20, tmp_path, capsys, key, value,
                                                                              words):
    out = copy_run(run20 / "run", tmp_path / "run")
    for name in ("step_00000010.npz", "step_00000020.npz"):
        def edit(meta):
            if value == "missing":
                del meta["config"][key]
            else:
                meta["config"][key] = value
            return meta
        rewrite_meta(str(out / "checkpoints" / name), edit)
    assert resume(out, 30) == 2
    one_line_error(capsys, *words)


def test_optimizer_state_of_the_wrong_shape_and_a_garbage_rng_are_one_line_errors(run20, tmp_path, capsys):
    out = copy_run(run20 / "run", tmp_path / "run")
    for name in ("step_00000010.npz", "step_00000020.npz"):
        rewrite_array(str(out / "checkpoints" / name), "opt_g/m", np.zeros(3, np.float32))
    assert resume(out, 30) == 2
    one_line_error(capsys, "'m' has shape (3,)")
    out = copy_run(run20 / "run", tmp_path / "run2")
    for name in ("step_00000010.npz", "step_00000020.npz"):
        rewrite_meta(str(out / "checkpoints" / name), lambda m: {**m, "rng": {"bit_generator": "PCG64"}})
    assert resume(out, 30) == 2
    one_line_error(capsys, "random state is damaged")


def test_a_pickle_is_refused_as_not_a_checkpoint(tmp_path, capsys):
    import pickle

    path = tmp_path / "evil.npz"
    path.write_bytes(pickle.dumps({"G": 1}))
    assert main(["sample", "--checkpoint", str(path)]) == 2
    err = one_line_error(capsys, "not a gan-engine checkpoint", "refuses")
    assert "allow_pickle" not in err


# ---- disks and memory ------------------------------------------------------------------------------------------

def test_an_unwritable_out_is_a_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert train(blocker / "run", "--steps", "10") == 2
    one_line_error(capsys, str(blocker))


def test_a_full_disk_keeps_the_last_checkpoint_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    from gan_engine import run as run_module

    real, calls = run_module.save_checkpoint, []

    def full_disk(path, *args):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", path + ".tmp")
        return real(path, *args)

    monkeypatch.setattr(run_module, "save_checkpoint", full_disk)
    out = tmp_path / "run"
    assert train(out, "--steps", "30") == 2
    one_line_error(capsys, "No space left on device", "step_00000010.npz", f"--resume {out}")
    load_checkpoint(str(out / "checkpoints" / "step_00000010.npz"))


def test_a_batch_that_cannot_fit_is_refused_with_an_estimate(tmp_path, capsys):
    assert train(tmp_path / "run", "--batch-size", "2147483648", "--steps", "10") == 2
    one_line_error(capsys, "batch size 2147483648 needs about", "GiB", "smaller --batch-size")


# ---- nonsense options ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("option", [["--lr", "inf"], ["--lr-d", "nan"], ["--alpha", "nan"], ["--beta1=-inf"]])
def test_non_finite_options_are_refused(tmp_path, capsys, option):
    assert train(tmp_path / "run", *option, "--steps", "10") == 2
    one_line_error(capsys, "must be a finite number")


def test_a_loss_that_explodes_is_divergence(tmp_path, capsys):
    assert train(tmp_path / "run", "--lr", "1e6", "--steps", "200") == 2
    one_line_error(capsys, "diverged")


# ---- image folders and IDX files -------------------------------------------------------------------------------

def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 16).round().astype(np.uint16), (16, 1))
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    images, _ = read_image_folder(tmp_path, 16, channels=1)
    np.testing.assert_allclose(images[0, 0, 0], np.linspace(0, 255, 16), atol=1)


def test_a_named_pipe_in_an_image_folder_is_skipped(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    os.mkfifo(tmp_path / "pipe.png")
    images, skipped = read_image_folder(tmp_path, 8)
    assert len(images) == 1 and skipped == [("pipe.png", "not a regular file")]


def test_an_idx_bomb_is_refused_after_reading_its_declared_size(tmp_path, monkeypatch):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2)
        zeros = bytes(1 << 20)
        for _ in range(64):  # 64 MB of zeros behind a header that declares 7,840 bytes
            f.write(zeros)
    read = []
    real_open = gzip.open

    def counting_open(*args, **kwargs):
        f = real_open(*args, **kwargs)
        real_read = f.read
        f.read = lambda n=-1: read.append(len(data := real_read(n))) or data
        return f

    monkeypatch.setattr(gzip, "open", counting_open)
    with pytest.raises(Exception, match="more than"):
        read_idx(str(path))
    assert sum(read) <= 16 + 7840 + 1
