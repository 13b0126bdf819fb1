"""The gan-engine command end to end on tiny runs: files written, sampling, resume, Ctrl-C, bad input."""
import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from gan_engine.checkpoint import load_checkpoint
from gan_engine.cli import main
from gan_engine.config import TrainConfig
from gan_engine.errors import GanEngineError
from gan_engine.run import Run

TINY = ["--hidden", "16", "--z-dim", "8", "--batch-size", "16", "--log-every", "5", "--sample-every", "10",
        "--checkpoint-every", "10", "--quiet"]


def train(out, *extra):
    return main(["train", "--out", str(out), *TINY, *extra])


def rows(run_dir):
    with open(os.path.join(run_dir, "metrics.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_train_writes_a_complete_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, "--steps", "20") == 0
    assert "done: 20 steps" in capsys.readouterr().out
    files = {os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs}
    assert files == {"config.json", "metrics.csv", "loss.png", "samples/step_00000010.png",
                     "samples/step_00000020.png", "checkpoints/step_00000010.npz", "checkpoints/step_00000020.npz"}
    assert [r["step"] for r in rows(out)] == ["5", "10", "15", "20"]
    state, config, info = load_checkpoint(str(out / "checkpoints/step_00000020.npz"))
    assert state["step"] == 20 and config["g_hidden"] == [16] and info["image_shape"] == [1, 8, 8]


def test_sample_from_a_run_folder_and_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    assert train(out, "--steps", "10") == 0
    png, npz = tmp_path / "grid.png", tmp_path / "s.npz"
    assert main(["sample", "--checkpoint", str(out), "--n", "12", "--out", str(png), "--npz", str(npz)]) == 0
    from PIL import Image
    assert Image.open(png).size[0] > 8
    with np.load(npz) as f:
        s = f["samples"]
    assert s.shape == (12, 64) and np.abs(s).max() <= 1
    again = tmp_path / "again.npz"
    main(["sample", "--checkpoint", str(out / "checkpoints/step_00000010.npz"), "--n", "12", "--out",
          str(tmp_path / "g2.png"), "--npz", str(again)])
    with np.load(again) as f:
        assert np.array_equal(f["samples"], s)


def test_sample_on_2d_data_writes_a_scatter(tmp_path):
    out = tmp_path / "ring"
    assert train(out, "--dataset", "ring8", "--steps", "10") == 0
    assert os.path.exists(out / "samples/step_00000010.png")
    assert main(["sample", "--checkpoint", str(out), "--n", "50", "--out", str(tmp_path / "s.png")]) == 0
    assert os.path.getsize(tmp_path / "s.png") > 1000


def test_resume_gives_the_same_losses_as_one_run(tmp_path):
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert train(whole, "--steps", "30") == 0
    assert train(part, "--steps", "10") == 0
    assert main(["train", "--resume", str(part), "--steps", "30", "--hidden", "16", "--quiet"]) == 0
    assert rows(part) == rows(whole)
    a, _, _ = load_checkpoint(str(whole / "checkpoints/step_00000030.npz"))
    b, _, _ = load_checkpoint(str(part / "checkpoints/step_00000030.npz"))
    for k in a["G"]:
        assert np.array_equal(a["G"][k], b["G"][k])


def test_resume_drops_metrics_logged_after_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    assert train(out, "--steps", "20") == 0
    os.remove(out / "checkpoints/step_00000020.npz")  # as if killed between step 10's checkpoint and the end
    assert main(["train", "--resume", str(out), "--steps", "20", "--quiet"]) == 0
    assert [r["step"] for r in rows(out)] == ["5", "10", "15", "20"]


def error_of(capsys, argv):
    """The one error line of a command that must fail with status 2 (warning lines may come before it)."""
    code = main(argv)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if ": warning: " not in line]
    assert code == 2 and len(err) == 1 and "error:" in err[0], err
    return err[0]


@pytest.mark.parametrize("args, message", [
    (["--dataset", "cifar"], "unknown dataset 'cifar'"),
    (["--model", "resnet"], "unknown model 'resnet'"),
    (["--backend", "tpu"], "unknown backend 'tpu'"),
    (["--loss", "hinge"], "unknown loss 'hinge'"),
    (["--batch-size", "0"], "batch-size must be a positive integer"),
    (["--steps", "-5"], "steps must be a positive integer"),
    (["--lr", "0"], "lr-g must be positive"),
    (["--dataset", "mnist"], "pass --data PATH"),
    (["--dataset", "mnist", "--data", "/no/such/file.npz"], "does not exist"),
])
def test_bad_training_options(tmp_path, capsys, args, message):
    assert message in error_of(capsys, ["train", "--out", str(tmp_path / "r"), "--quiet", *args])
    assert not os.path.exists(tmp_path / "r" / "checkpoints")


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, "--steps", "10") == 0
    before = (out / "metrics.csv").read_bytes()
    assert "already holds a run" in error_of(capsys, ["train", "--out", str(out), *TINY, "--steps", "10"])
    assert (out / "metrics.csv").read_bytes() == before


def test_bad_resume_and_sample(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, "--steps", "10") == 0
    assert "cannot change lr-g" in error_of(capsys, ["train", "--resume", str(out), "--steps", "20", "--lr", "1"])
    assert "already at step 10" in error_of(capsys, ["train", "--resume", str(out), "--steps", "10"])
    assert "nothing to resume" in error_of(capsys, ["train", "--resume", str(tmp_path)])
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes((out / "checkpoints/step_00000010.npz").read_bytes()[:200])
    assert "not a readable gan-engine checkpoint" in error_of(capsys, ["sample", "--checkpoint", str(corrupt)])
    assert "does not exist" in error_of(capsys, ["sample", "--checkpoint", str(tmp_path / "none.npz")])


def test_divergence_keeps_the_last_good_checkpoint(tmp_path):
    config = TrainConfig(steps=30, batch_size=8, g_hidden=(8,), d_hidden=(8,), z_dim=4, log_every=1,
                         sample_every=100, checkpoint_every=10, backend="numpy")
    run = Run(str(tmp_path / "run"), config, progress=False)
    step = run.trainer.step

    def poisoned():
        metrics = step()
        if run.trainer.step_count == 15:
            run.trainer.G.flat_params[:] = np.nan
        return metrics
    run.trainer.step = poisoned
    good = tmp_path / "run/checkpoints/step_00000010.npz"
    with pytest.raises(GanEngineError, match="diverged at step 16.*last good checkpoint is .*step_00000010.npz"):
        run.train()
    assert sorted(os.listdir(tmp_path / "run/checkpoints")) == ["step_00000010.npz"]
    assert load_checkpoint(str(good))[0]["step"] == 10
    assert rows(tmp_path / "run")[-1]["step"] == "15"


def test_info_lists_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "gan-engine 0.1.0" in out and "numpy  yes" in out


def test_console_script_error_is_one_line_without_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "gan_engine.cli", "train", "--dataset", "nope", "--out",
                        str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr and p.stderr.strip().count("\n") == 0
    assert "unknown dataset 'nope'" in p.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT delivery to a child process is POSIX-only here")
def test_ctrl_c_writes_a_checkpoint_and_says_how_to_resume(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "gan_engine.cli", "train", "--out", str(out), *TINY, "--steps", "1000000",
           "--checkpoint-every", "1000000", "--sample-every", "1000000"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(rows(out) if (out / "metrics.csv").exists() else []) < 3:
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 130, stderr
    assert f"resume with: gan-engine train --resume {out}" in stdout
    ckpts = os.listdir(out / "checkpoints")
    assert len(ckpts) == 1
    state, _, _ = load_checkpoint(str(out / "checkpoints" / ckpts[0]))
    assert state["step"] >= 15
