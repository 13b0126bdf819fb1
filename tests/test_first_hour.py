"""What a new user meets in the first hour: typos refused with the subcommand's usage, settings that run but do
not train warned about, the compile and the run's cost said up front, config.json recording what ran, the
metrics explained and agreeing between training and `evaluate`, readable pictures."""
import json
import os
import signal
import time

import numpy as np
import pytest

from gan_engine import Adam, SGD, Trainer, mlp_discriminator, mlp_generator
from gan_engine import estimate
from gan_engine.cli import main
from gan_engine.config import TrainConfig, from_record
from gan_engine.plots import image_grid, save_image_grid
from gan_engine.run import Run

from .test_cli import TINY, train


@pytest.mark.parametrize("argv, usage, hint", [
    (["train", "--step", "5"], "usage: gan-engine train", "did you mean --steps?"),  # no silent abbreviation
    (["train", "--batch", "5"], "usage: gan-engine train", "did you mean --batch-size?"),
    (["sample", "--checkpoint", "x", "--nn", "3"], "usage: gan-engine sample", "did you mean --n?"),
])
def test_an_unknown_option_is_an_error_with_the_subcommands_usage(capsys, argv, usage, hint):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(usage) and f"unrecognized arguments: {argv[-2]}" in err
    assert hint in err


def _trainer(n, batch_size=8, opt=Adam, lr=2e-4):
    G, D = mlp_generator(4, (8,), 2, backend="numpy"), mlp_discriminator(2, (8,), backend="numpy")
    data = np.random.default_rng(0).normal(size=(n, 2)).astype(np.float32)
    return Trainer(G, D, data, batch_size=batch_size, opt_g=opt(G, lr=lr), opt_d=opt(D, lr=lr))


@pytest.mark.parametrize("kw, message", [
    ({"n": 500, "batch_size": 600}, "the batch size 600 is larger than the 500 training samples"),
    ({"n": 6, "batch_size": 4}, "only 6 training samples"),
    ({"n": 500, "lr": 10.0}, "[GD]'s learning rate 10 is above 0.01, far beyond what Adam"),
    ({"n": 500, "opt": SGD, "lr": 5.0}, "[GD]'s learning rate 5 is above 1, far beyond what SGD"),
])
def test_settings_that_run_but_do_not_train_are_warned_about(kw, message):
    with pytest.warns(UserWarning, match=message):
        _trainer(**kw)


def test_usual_settings_draw_no_warning(recwarn):
    _trainer(500, batch_size=64, lr=1e-3)
    _trainer(500, opt=SGD, lr=0.05)
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)], [str(w.message) for w in recwarn]


def test_durations_read_as_people_say_them():
    assert [estimate.duration(s) for s in (0.0023, 0.84, 1.43, 25.2, 250, 9360)] == [
        "2.3 ms", "840 ms", "1.4 s", "25 s", "4 min 10 s", "2 h 36 min"]


def test_the_step_clock_estimates_once_from_the_steps_after_the_first(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(estimate.time, "perf_counter", lambda: now[0])
    clock = estimate.StepClock(total=1000)
    lines = []
    for step in range(1, 12):
        now[0] += 30.0 if step == 1 else 0.25  # the first step allocates: left out of the estimate
        lines.append(clock.tick(step))
    said = [line for line in lines if line]
    assert len(said) == 1 and lines.index(said[0]) == 3  # at step 4: 3 steps and 0.75 s measured after step 1
    assert said[0].startswith("about 250 ms a step, so about 4 min 9 s for the 996 steps left")


def test_a_slow_warm_up_says_it_is_compiling_and_a_quick_one_says_nothing(monkeypatch):
    monkeypatch.setattr(estimate, "COMPILE_NOTICE_S", 0.05)

    class Backend:
        name = "numba"

        def __init__(self, seconds):
            self.seconds = seconds

        def warm_up(self, dtypes):
            time.sleep(self.seconds)
            return self.seconds
    said = []
    estimate.warm_up(Backend(0.3), np.float32, said.append)
    assert len(said) == 1 and said[0].startswith("compiling the numba kernels (once")
    said.clear()
    estimate.warm_up(Backend(0.0), np.float32, said.append)
    time.sleep(0.1)  # past the notice's time: it was cancelled
    assert said == []


def test_train_says_what_the_run_will_cost(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(estimate, "MEASURE_S", 0.0)
    assert train(tmp_path / "run", "--steps", "20") == 0
    out = capsys.readouterr().out
    assert "a step, so about" in out and "for the 16 steps left" in out  # measured over steps 2-4


def test_config_json_records_what_ran_beside_what_was_asked(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--model", "dcgan", "--steps", "2", "--batch-size", "8", "--quiet"]) == 0
    record = json.loads((out / "config.json").read_text())
    assert record["backend"] in ("numba", "numpy") and record["g_hidden"] == [128, 64]
    assert record["d_hidden"] == [64, 128] and record["init"] == "normal"
    assert record["asked"] == {"backend": "auto", "g_hidden": None, "d_hidden": None}
    asked = from_record(record)
    assert asked.backend == "auto" and asked.g_hidden is None and asked.steps == 2


def test_config_json_records_a_folders_image_size_and_channels(tmp_path):
    from PIL import Image
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(4):
        Image.new("RGB", (12, 12), (40 * i, 0, 0)).save(images / f"{i}.png")
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--dataset", "folder", "--data", str(images), "--model", "dcgan",
                 "--steps", "1", "--batch-size", "4", "--quiet"]) == 0
    record = json.loads((out / "config.json").read_text())
    assert record["image_size"] == 64 and record["channels"] == 3
    assert record["asked"]["image_size"] is None and record["asked"]["channels"] is None


def test_evaluating_best_npz_gives_best_json(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GAN_ENGINE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert train(out, "--steps", "6", "--metrics-every", "3") == 0
    report = tmp_path / "best.json"
    assert main(["evaluate", "--checkpoint", str(out / "best.npz"), "--json", str(report)]) == 0
    assert json.loads(report.read_text())["generated"] == json.loads((out / "best.json").read_text())["generated"]
    assert main(["evaluate", "--checkpoint", str(out / "best.npz"), "--seed", "5", "--json", str(report)]) == 0
    assert json.loads(report.read_text())["generated"] != json.loads((out / "best.json").read_text())["generated"]


def test_small_images_are_scaled_up_and_separated():
    x = np.ones((4, 64), np.float32)  # four white 8x8 images
    grid = image_grid(x, (1, 8, 8), cols=2, pad=4, cell=64)
    assert grid.shape == (2 * 68 + 4, 2 * 68 + 4)
    border = np.zeros(grid.shape, bool)
    for start in (0, 68, 136):
        border[start:start + 4, :] = border[:, start:start + 4] = True
    assert (grid[border] == 128).all() and (grid[~border] == 255).all()


def test_the_saved_grid_of_8x8_digits_has_64_pixel_cells(tmp_path):
    from PIL import Image
    save_image_grid(np.zeros((64, 64), np.float32), (1, 8, 8), tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").size == (8 * (64 + 4) + 4,) * 2


def test_ctrl_c_before_the_first_sample_step_still_leaves_a_picture(tmp_path):
    run = Run(str(tmp_path / "run"), TrainConfig(steps=1000, batch_size=8, g_hidden=(8,), d_hidden=(8,), z_dim=4,
                                                 sample_every=1000, checkpoint_every=1000, backend="numpy"),
              progress=False)
    step = run.trainer.step

    def interrupted_at_step_3():
        metrics = step()
        if run.trainer.step_count == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return metrics
    run.trainer.step = interrupted_at_step_3
    assert run.train() == "interrupted"
    pictures = [p.name for p in (tmp_path / "run" / "samples").iterdir()]
    assert pictures == [f"step_{run.trainer.step_count:08d}.png"] and run.trainer.step_count < 1000


def test_usual_options_on_the_embedded_digits_draw_no_warning(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run"), *TINY, "--steps", "2"]) == 0
    assert "warning" not in capsys.readouterr().err
