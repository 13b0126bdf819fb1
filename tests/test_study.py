"""gan-engine study: a grid of configurations x seeds in worker processes, the table of mean ± standard error, and
resuming an interrupted study (finished runs skipped, interrupted ones continued to the same weights)."""
import csv
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from gan_engine import GanEngineError
from gan_engine.checkpoint import latest_checkpoint, load_checkpoint
from gan_engine.cli import main
from gan_engine.config import TrainConfig
from gan_engine.data import load_dataset
from gan_engine.metrics import Evaluator
from gan_engine.models import build_generator
from gan_engine.run import Run, evaluation_noise
from gan_engine.study import Plan, load_plan, parse_assignments, report_study, run_study, saved_plan, study_curves
from gan_engine.trainer import generate

TINY = {"dataset": "ring8", "model": "maxout", "g_hidden": (8, 8), "d_hidden": (8,), "z_dim": 2, "batch_size": 16,
        "steps": 6, "metrics_every": 3, "log_every": 3, "checkpoint_every": 3, "sample_every": 100,
        "backend": "numpy"}


def _last_quality(folder):
    with open(os.path.join(folder, "metrics.csv"), newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["modes_reached"]]
    return {k: float(rows[-1][k]) for k in ("modes_captured", "modes_reached", "high_quality", "reverse_kl")}


def test_the_table_is_the_mean_and_standard_error_of_the_runs(tmp_path):
    plan = Plan(str(tmp_path / "study"), TINY, {"pac": [1, 2]}, seeds=3)
    said = []
    rows = run_study(plan, workers=2, say=said.append)
    assert said[0].startswith("study: 6 runs (2 configurations x 3 seeds) on 2 worker processes")
    assert [r["configuration"] for r in rows] == ["pac=1", "pac=2"]
    for row in rows:
        finals = [_last_quality(tmp_path / "study" / row["configuration"] / f"seed-{s}") for s in range(3)]
        for name in finals[0]:
            values = [f[name] for f in finals]
            assert row[name] == pytest.approx(sum(values) / 3)
            mean = sum(values) / 3
            se = math.sqrt(sum((v - mean) ** 2 for v in values) / 2) / math.sqrt(3)
            assert row[f"{name}_se"] == pytest.approx(se)
        assert row["runs"] == 3 and row["step"] == 6
    assert json.loads((tmp_path / "study" / "study.json").read_text()) == rows
    table = (tmp_path / "study" / "study.md").read_text().splitlines()
    assert table[0].startswith("| configuration | runs | step | modes_captured") and len(table) == 4
    with open(tmp_path / "study" / "study.csv", newline="") as f:
        assert [r["configuration"] for r in csv.DictReader(f)] == ["pac=1", "pac=2"]
    assert os.path.getsize(tmp_path / "study" / "study.png") > 1000
    state, config, _ = load_checkpoint(str(tmp_path / "study" / "pac=2" / "seed-1" / "checkpoints/step_00000006.npz"))
    assert config["pac"] == 2 and config["seed"] == 1 and state["D"]["0.W"].shape == (4, 40)


def test_an_interrupted_study_resumes_its_runs_to_the_same_weights(tmp_path):
    out = tmp_path / "study"
    plan = Plan(str(out), TINY, {}, seeds=2)
    # seed 1 was stopped at step 3 (its checkpoint there), seed 0 never started
    Run(str(out / "base" / "seed-1"), TrainConfig(**{**TINY, "seed": 1, "steps": 3}), progress=False).train()
    said = []
    run_study(plan, workers=2, say=said.append)
    assert sorted(said[1:3]) == ["  base/seed-0: done", "  base/seed-1: done"]
    whole = tmp_path / "whole"
    Run(str(whole), TrainConfig(**{**TINY, "seed": 1}), progress=False).train()
    resumed, _, _ = load_checkpoint(str(out / "base/seed-1/checkpoints/step_00000006.npz"))
    straight, _, _ = load_checkpoint(str(whole / "checkpoints/step_00000006.npz"))
    for part in ("G", "D"):
        for key in straight[part]:
            assert np.array_equal(resumed[part][key], straight[part][key]), (part, key)
    said.clear()
    run_study(plan, workers=2, say=said.append)  # everything finished: nothing trains again
    assert sorted(said[1:3]) == ["  base/seed-0: skipped", "  base/seed-1: skipped"]


def test_the_study_command_refuses_bad_options_and_a_changed_plan(tmp_path, capsys):
    def error(*argv):
        assert main(["study", "--out", str(tmp_path / "s"), *argv]) == 2
        return capsys.readouterr().err
    assert "unknown option 'lr' for a study" in error("--set", "lr=1")
    assert "pac='a': pac takes an integer" in error("--grid", "pac=a")
    assert "expected NAME=VALUE" in error("--set", "steps")
    assert "unknown preset" in error("--preset", "nope")
    args = [f"{k.replace('_', '-')}={'x'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in TINY.items()]
    sets = [a for item in args for a in ("--set", item)]
    assert main(["study", "--out", str(tmp_path / "s"), *sets, "--seeds", "1", "--workers", "1"]) == 0
    assert "| base | 1 | 6 |" in capsys.readouterr().out
    assert "holds a study with other options" in error(*sets, "--seeds", "2")


def test_assignments_convert_to_the_options_types():
    assert parse_assignments(["pac=1,2,4", "lr-g=1e-4,2e-4"], grid=True) == {"pac": [1, 2, 4], "lr_g": [1e-4, 2e-4]}
    assert parse_assignments(["g-hidden=400x400", "metrics-every=none"], grid=False) == {
        "g_hidden": (400, 400), "metrics_every": None}
    with pytest.raises(GanEngineError, match="seed"):
        parse_assignments(["seed=3"], grid=False)


def test_a_study_over_mpi_ranks_or_the_error_that_names_mpi4py(tmp_path):
    """With mpi4py and mpiexec (pip install -e '.[mpi]'): the README's mpiexec command runs a study on 3 ranks.
    Without them: --mpi says what to install."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        with pytest.raises(GanEngineError, match=r"--mpi needs mpi4py .*pip install -e '\.\[mpi\]'"):
            run_study(Plan(str(tmp_path / "s"), TINY, {}, 1), mpi=True, say=lambda line: None)
        return
    from .util import mpiexec
    sets = [a for item in ("dataset=ring8", "model=maxout", "g-hidden=8x8", "d-hidden=8", "steps=6", "metrics-every=3",
                           "batch-size=16", "backend=numpy") for a in ("--set", item)]
    done = subprocess.run([mpiexec(), "-n", "3", sys.executable, "-m", "mpi4py.futures", "-m", "gan_engine.cli", "study",
                           "--out", str(tmp_path / "s"), *sets, "--grid", "pac=1,2", "--seeds", "2", "--mpi"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "on MPI ranks" in done.stdout
    assert [r["configuration"] for r in json.loads((tmp_path / "s" / "study.json").read_text())] == ["pac=1", "pac=2"]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a process group is POSIX-only here")
def test_ctrl_c_stops_a_study_and_the_same_command_finishes_it(tmp_path):
    import signal
    import time

    out = tmp_path / "s"
    sets = [a for item in ("dataset=ring8", "model=maxout", "g-hidden=8x8", "d-hidden=8", "steps=3000",
                           "metrics-every=1000", "checkpoint-every=500", "batch-size=16", "backend=numpy")
            for a in ("--set", item)]
    cmd = [sys.executable, "-m", "gan_engine.cli", "study", "--out", str(out), *sets, "--seeds", "4", "--workers", "2"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("base/seed-*/checkpoints/*.npz")):
        time.sleep(0.1)
    os.killpg(p.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the study and its workers
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, (stdout, stderr)
    assert not (out / "study.md").exists()
    started = sorted(d.name for d in (out / "base").iterdir())
    assert len(started) < 4 or not all((out / "base" / d / "checkpoints/step_00003000.npz").exists() for d in started)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| base | 4 | 3000 |" in done.stdout


def test_first_seed_moves_the_seeds_and_an_older_plan_without_it_still_loads(tmp_path):
    plan = Plan(str(tmp_path / "s"), TINY, {}, seeds=2, first_seed=10)
    assert [seed for _, seed, _, _ in plan.runs()] == [10, 11]
    assert [os.path.basename(folder) for _, _, folder, _ in plan.runs()] == ["seed-10", "seed-11"]
    assert all(config.seed == seed for _, seed, _, config in plan.runs())
    os.makedirs(tmp_path / "old")
    (tmp_path / "old" / "plan.json").write_text(json.dumps({"base": {"steps": 6}, "grid": {}, "seeds": 2}))
    assert load_plan(str(tmp_path / "old"), {"steps": 6}, {}, 2).first_seed == 0
    with pytest.raises(GanEngineError, match="holds a study with other options"):
        load_plan(str(tmp_path / "old"), {"steps": 6}, {}, 2, first_seed=5)


@pytest.mark.skipif(sys.platform != "linux", reason="kills a process group; the workers watch their parent")
def test_a_killed_study_leaves_no_worker_running_and_its_runs_resumable(tmp_path):
    import signal
    import time

    out = tmp_path / "s"
    sets = [a for item in ("dataset=ring8", "g-hidden=8x8", "d-hidden=8", "steps=50000", "metrics-every=10000",
                           "checkpoint-every=200", "batch-size=16", "backend=numpy") for a in ("--set", item)]
    cmd = [sys.executable, "-m", "gan_engine.cli", "study", "--out", str(out), *sets, "--seeds", "3", "--workers", "2"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("base/seed-*/checkpoints/*.npz"))) < 2:
        time.sleep(0.1)
    p.kill()  # SIGKILL to the study's process alone: it cannot stop its workers
    p.wait(timeout=60)
    deadline = time.time() + 20  # a run of 50,000 steps would go on for minutes
    while time.time() < deadline:
        try:
            os.killpg(p.pid, 0)  # a worker of the study is still running
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(p.pid, signal.SIGKILL)
        pytest.fail("the study's workers went on running after it was killed")
    started = sorted(out.glob("base/seed-*"))
    assert [d.name for d in started] == ["seed-0", "seed-1"]  # the queued seed 2 never started
    for run in started:  # each stopped with a whole checkpoint: resumable
        state, _, _ = load_checkpoint(latest_checkpoint(str(run)))
        assert 0 < state["step"] < 50000


def test_report_tables_an_interrupted_study_at_the_last_step_all_its_seeds_measured(tmp_path, capsys):
    out = tmp_path / "study"
    plan = Plan(str(out), TINY, {"d_hidden": [(8,), (4,)]}, seeds=2)
    run_study(plan, workers=2, say=lambda line: None)
    behind = out / "d-hidden=4" / "seed-1" / "metrics.csv"  # as if interrupted before its second measurement
    lines = behind.read_text().splitlines()
    behind.write_text("\n".join(line for line in lines if not line.startswith("6,")) + "\n")
    (out / "study.md").unlink()

    assert main(["study", "--out", str(out), "--report"]) == 0
    rows = {r["configuration"]: r for r in json.loads((out / "study.json").read_text())}
    assert rows["d-hidden=8"]["step"] == 6 and rows["d-hidden=4"]["step"] == 3
    for label, step in (("d-hidden=8", 6), ("d-hidden=4", 3)):
        measured = []
        for seed in (0, 1):
            with open(out / label / f"seed-{seed}" / "metrics.csv", newline="") as f:
                measured.append([float(r["high_quality"]) for r in csv.DictReader(f) if r["step"] == str(step)
                                 and r["high_quality"]][-1])
        assert rows[label]["high_quality"] == pytest.approx(np.mean(measured))
    assert f"| d-hidden=4 | 2 | 3 |" in capsys.readouterr().out
    assert os.path.getsize(out / "study.png") > 1000


def test_report_refuses_a_folder_without_a_study_unstarted_runs_and_plan_options(tmp_path, capsys):
    def error(*argv):
        assert main(["study", "--out", str(tmp_path / "s"), "--report", *argv]) == 2
        return capsys.readouterr().err

    assert "holds no study" in error()
    plan = Plan(str(tmp_path / "s"), TINY, {}, seeds=2)
    run_study(plan, workers=1, say=lambda line: None)
    assert "give --out alone, without --grid, --seeds" in error("--grid", "pac=1,2", "--seeds", "2")
    shutil.rmtree(tmp_path / "s" / "base" / "seed-1")
    assert "1 of the 2 runs have not started" in error()


def test_a_grid_of_two_axes_keeps_its_run_folders_whatever_order_the_axes_come_in(tmp_path, capsys):
    """plan.json keeps its keys sorted: --report and a resumed study find the runs the first command made."""
    out = tmp_path / "s"
    run_study(Plan(str(out), TINY, {"pac": [1], "lr_g": [1e-4]}, seeds=1), workers=1, say=lambda line: None)
    assert os.listdir(out / "lr-g=0.0001,pac=1") == ["seed-0"]
    assert main(["study", "--out", str(out), "--report"]) == 0
    assert "| lr-g=0.0001,pac=1 | 1 | 6 |" in capsys.readouterr().out
    said = []
    run_study(load_plan(str(out), TINY, {"lr_g": [1e-4], "pac": [1]}, seeds=1), workers=1, say=said.append)
    assert said[1:] == ["  lr-g=0.0001,pac=1/seed-0: skipped"], said


def test_report_live_tables_g_own_weights_at_each_checkpoint_of_runs_that_average_them(tmp_path, capsys):
    out = tmp_path / "s"
    run_study(Plan(str(out), {**TINY, "ema": 0.9}, {}, seeds=2), workers=2, say=lambda line: None)
    assert main(["study", "--out", str(out), "--report", "--live"]) == 0
    assert "study-live.md" in capsys.readouterr().out
    rows = json.loads((out / "study-live.json").read_text())
    # G's own weights, not the average, from each seed's last checkpoint, on the noise its metrics.csv used
    evaluator = Evaluator(load_dataset("ring8"))
    own = []
    for seed in (0, 1):
        state, saved, info = load_checkpoint(str(out / "base" / f"seed-{seed}" / "checkpoints/step_00000006.npz"))
        config = TrainConfig.from_dict(saved)
        G = build_generator(config, info)
        G.load_state_dict(state["G"])
        own.append(evaluator.evaluate(generate(G, evaluation_noise(config, evaluator.size)))["generated"])
        with open(out / "base" / f"seed-{seed}" / "metrics-live.csv", newline="") as f:
            assert [r["step"] for r in csv.DictReader(f)] == ["3", "6"]  # every checkpoint
    assert rows[0]["step"] == 6 and rows[0]["runs"] == 2
    for name in own[0]:
        assert rows[0][name] == pytest.approx(np.mean([o[name] for o in own]))
    averaged = json.loads((out / "study.json").read_text())[0]
    assert rows[0]["reverse_kl"] != averaged["reverse_kl"]
    assert os.path.getsize(out / "study-live.png") > 1000

    live = out / "base" / "seed-0" / "metrics-live.csv"  # measured checkpoints are read back, not measured again
    lines = live.read_text().splitlines()
    fields = lines[2].split(",")
    fields[lines[0].split(",").index("high_quality")] = "1234.0"
    live.write_text("\n".join(lines[:2] + [",".join(fields)]) + "\n")
    report_study(saved_plan(str(out)), live=True)
    assert json.loads((out / "study-live.json").read_text())[0]["high_quality"] == pytest.approx(
        (1234.0 + own[1]["high_quality"]) / 2)


def test_report_live_refuses_runs_that_average_nothing_and_goes_with_report_only(tmp_path, capsys):
    out = tmp_path / "s"
    run_study(Plan(str(out), {**TINY, "ema": 0.0}, {}, seeds=1), workers=1, say=lambda line: None)
    assert main(["study", "--out", str(out), "--report", "--live"]) == 2
    assert "runs average nothing" in capsys.readouterr().err
    assert main(["study", "--out", str(out), "--set", "steps=6", "--live"]) == 2
    assert "--live goes with --report" in capsys.readouterr().err
    assert not (out / "study-live.md").exists()


def test_the_curves_take_the_steps_every_seed_measured(tmp_path):
    """A run stopped at a step of its own (here trained to 4 steps, then on to 6) measured there and checkpointed
    there; the curves of its configuration keep to the steps all its seeds share, in both metrics files."""
    out = tmp_path / "s"
    plan = Plan(str(out), TINY, {}, seeds=2)
    run_study(plan, workers=2, say=lambda line: None)
    _, _, folder, config = plan.runs()[1]
    shutil.rmtree(folder)
    Run(folder, dataclasses.replace(config, steps=4), progress=False).train()
    Run.resume(folder, {"steps": 6}, progress=False).train()
    for source in ("metrics.csv", "metrics-live.csv"):
        report_study(plan, live=source != "metrics.csv")
        with open(os.path.join(folder, source), newline="") as f:
            assert "4" in [r["step"] for r in csv.DictReader(f) if r["high_quality"]]
        measured = []
        for seed in (0, 1):
            with open(out / "base" / f"seed-{seed}" / source, newline="") as f:
                measured.append({r["step"]: float(r["high_quality"]) for r in csv.DictReader(f) if r["high_quality"]})
        steps, values = study_curves(plan.runs(), source)["high_quality"]["base"]
        assert steps == [3, 6]
        assert values == pytest.approx([np.mean([m[str(step)] for m in measured]) for step in steps])
