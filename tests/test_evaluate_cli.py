"""`gan-engine evaluate`: one checkpoint, a whole run folder (JSON and a plot), mixtures, and its errors."""
import json

from PIL import Image

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
    text = capsys.readouterr().out
    assert "modes_captured" in text and "high_quality" in text and "reverse_kl" in text
    (tmp_path / "empty").mkdir()
    assert "no checkpoints in" in error_of(capsys, ["evaluate", "--checkpoint", str(tmp_path / "empty")])
    assert "does not exist" in error_of(capsys, ["evaluate", "--checkpoint", str(tmp_path / "none.npz")])
