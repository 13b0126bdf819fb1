"""`gan-engine evaluate` (one checkpoint, a whole run folder, mixtures, errors) and `train --metrics-every`."""
import csv
import json

from PIL import Image

from gan_engine.checkpoint import load_checkpoint
from gan_engine.cli import main

from .test_cli import error_of
from .test_dcgan_cli import train


def test_evaluate_a_checkpoint_and_a_run_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GAN_ENGINE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert train(out, "--steps", "8") == 0  # checkpoints at steps 4 and 8
    capsys.readouterr()
    report = tmp_path / "one.json"
    assert main(["evaluate", "--checkpoint", str(out / "checkpoints/step_00000008.npz"), "--json", str(report)]) == 0
    text = capsys.readouterr().out
    assert "(step 8)" in text and "frechet_distance" in text and "held-out accuracy" in text
    one = json.loads(report.read_text())
    assert one["step"] == 8 and one["classifier_accuracy"] >= 0.95
    assert set(one["generated"]) == set(one["real"]) == {"classes_covered", "class_kl", "classifier_score",
                                                         "frechet_distance"}
    assert list((tmp_path / "cache").iterdir())  # the classifier was cached where asked
    runs = tmp_path / "all.json"
    assert main(["evaluate", "--checkpoint", str(out), "--json", str(runs)]) == 0
    every = json.loads(runs.read_text())
    assert [r["step"] for r in every] == [4, 8] and every[1]["generated"] == one["generated"]
    assert Image.open(out / "metrics.png").size[1] > 100


def test_evaluate_on_a_mixture_and_errors(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--dataset", "ring8", "--hidden", "8", "--steps", "2",
                 "--batch-size", "8", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out)]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert lines["metric"].split()[-1] == "better"  # which way each metric improves
    assert "higher" in lines["modes_captured"] and "higher" in lines["high_quality"] and "lower" in lines["reverse_kl"]
    real_high_quality = lines["high_quality"].split()[2]  # a percentage, with its sign
    assert real_high_quality.endswith("%") and 95 < float(real_high_quality[:-1]) <= 100
    (tmp_path / "empty").mkdir()
    assert "no checkpoints in" in error_of(capsys, ["evaluate", "--checkpoint", str(tmp_path / "empty")])
    assert "does not exist" in error_of(capsys, ["evaluate", "--checkpoint", str(tmp_path / "none.npz")])


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_metrics_every_logs_quality_and_keeps_the_best_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--dataset", "ring8", "--hidden", "16", "--batch-size", "32", "--lr", "1e-3",
            "--log-every", "5", "--checkpoint-every", "10", "--sample-every", "100", "--metrics-every", "4", "--quiet"]
    assert main([*args, "--steps", "10"]) == 0
    rows = _csv(out / "metrics.csv")
    assert list(rows[0]) == ["step", "d_loss", "g_loss", "d_real", "d_fake", "modes_captured", "modes_reached",
                             "high_quality", "reverse_kl"]
    assert [r["step"] for r in rows] == ["4", "5", "8", "10"]  # log steps, and every metrics step
    assert [bool(r["reverse_kl"]) for r in rows] == [True, False, True, True]
    best = json.loads((out / "best.json").read_text())
    scores = {int(r["step"]): int(r["modes_captured"]) + float(r["high_quality"]) / 100 for r in rows if r["reverse_kl"]}
    assert best["step"] == max(scores, key=lambda s: (scores[s], -s)) and best["score"] == max(scores.values())
    state, _, _ = load_checkpoint(str(out / "best.npz"))
    assert state["step"] == best["step"]
    # resumed, the run keeps its interval, and the rows measured before stay whole
    assert main(["train", "--resume", str(out), "--steps", "15", "--quiet"]) == 0
    resumed = _csv(out / "metrics.csv")
    assert resumed[:4] == rows
    assert [r["step"] for r in resumed[4:]] == ["12", "15"] and all(r["reverse_kl"] for r in resumed[4:])


def test_metrics_every_on_digits_and_on_unlabelled_images(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GAN_ENGINE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert train(out, "--steps", "4", "--metrics-every", "2") == 0
    rows = _csv(out / "metrics.csv")
    assert [r["step"] for r in rows] == ["2", "4"] and float(rows[-1]["frechet_distance"]) > 0
    assert json.loads((out / "best.json").read_text())["real"]["classes_covered"] == 10
    images = tmp_path / "imgs"
    images.mkdir()
    for i in range(3):
        Image.new("L", (8, 8), 40 * i).save(images / f"{i}.png")
    assert "has no labels" in error_of(capsys, ["train", "--out", str(tmp_path / "f"), "--dataset", "folder",
                                                "--data", str(images), "--metrics-every", "5", "--quiet"])
    assert "metrics-every must be a positive integer" in error_of(
        capsys, ["train", "--out", str(tmp_path / "g"), "--metrics-every", "0", "--quiet"])
