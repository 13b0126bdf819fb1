"""Presets and the PacGAN protocol's maxout GAN: the options a preset sets, overridden by the user's and recorded
in full; the models it builds, layer by layer."""
import json

import numpy as np
import pytest

from gan_engine.cli import _say_dataset_defaults, main
from gan_engine.config import DATASET_DEFAULTS, TrainConfig
from gan_engine.data import load_dataset
from gan_engine.layers import BatchNorm, Dense, Maxout
from gan_engine.presets import PRESETS, with_preset
from gan_engine.run import build_trainer


def test_the_pacgan_preset_builds_the_protocols_models():
    config = TrainConfig(**with_preset("pacgan-grid25", {"pac": 3, "backend": "numpy", "steps": 1}))
    trainer = build_trainer(config, load_dataset("grid25"))
    G, D = trainer.G, trainer.D
    dense = [layer for layer in G.layers if isinstance(layer, Dense)]
    norms = [layer for layer in G.layers if isinstance(layer, BatchNorm)]
    assert [(d.in_features, d.out_features, d.bias) for d in dense] == [
        (2, 400, False), (400, 400, False), (400, 400, False), (400, 400, False), (400, 2, True)]
    assert [(b.num_features, b.momentum, b.activation) for b in norms] == [(400, 0.05, "relu")] * 4
    maxouts = [layer for layer in D.layers if isinstance(layer, Maxout)]
    assert [(m.in_features, m.units, m.pieces) for m in maxouts] == [(6, 200, 5), (200, 200, 5), (200, 200, 5)]
    assert isinstance(D.layers[-1], Dense) and D.out_features == 1
    # weights N(0, 0.02), biases 0
    W = G.parameters()["2.W"]
    assert abs(float(W.std()) - 0.02) < 0.001 and not D.parameters()["0.b"].any()
    assert (trainer.batch_size, trainer.pac, trainer.opt_d.lr, trainer.opt_d.beta1) == (100, 3, 1e-4, 0.8)


def test_a_preset_run_records_every_option_and_the_users_win(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "pacgan-ring8", "--steps", "3", "--batch-size", "16", "--g-hidden", "8,8",
                 "--d-hidden", "8", "--out", str(out), "--quiet"]) == 0
    record = json.loads((out / "config.json").read_text())
    for key, value in PRESETS["pacgan-ring8"].items():
        if key not in ("steps", "batch_size", "g_hidden", "d_hidden"):
            assert record[key] == value, key
    assert (record["steps"], record["batch_size"], record["g_hidden"], record["d_hidden"]) == (3, 16, [8, 8], [8])
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--preset", "pacgan-ring8"]) == 2
    assert "a resumed run keeps the options" in capsys.readouterr().err
    assert main(["train", "--preset", "pacgan-cifar", "--out", str(tmp_path / "x")]) == 2
    assert "unknown preset 'pacgan-cifar'; choose one of: pacgan-ring8, pacgan-grid25" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_the_maxout_gan_trains_on_a_mixture_without_diverging(backend):
    config = TrainConfig(**with_preset("pacgan-ring8", {"backend": backend, "g_hidden": (32, 32), "d_hidden": (16,),
                                                        "batch_size": 32, "pac": 2}))
    trainer = build_trainer(config, load_dataset("ring8"))
    metrics = trainer.train(50, every=50)
    assert np.isfinite(list(metrics.values())).all() and 0 < metrics["d_real"] < 1


def test_ring8_and_grid25_train_with_their_own_defaults_and_the_options_given_win(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "grid25", "--steps", "2", "--g-hidden", "8", "--d-hidden", "8",
                 "--backend", "numpy", "--out", str(out), "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "grid25's defaults: --model maxout --z-dim 2 --init normal --lr-g 0.0002 --lr-d 0.0002 --beta1 0.5 " \
           "--batch-size 100 --pac 2 --ema 0.999" in said
    assert "--steps" not in said.splitlines()[0]  # given: not a default
    record = json.loads((out / "config.json").read_text())
    for key, value in DATASET_DEFAULTS["grid25"].items():
        if key not in ("steps", "g_hidden", "d_hidden"):
            assert record[key] == value, key
    assert record["steps"] == 2 and record["g_hidden"] == [8] and record["d_hidden"] == [8]
    assert TrainConfig.with_defaults(dataset="ring8").d_hidden == DATASET_DEFAULTS["ring8"]["d_hidden"]
    _say_dataset_defaults(TrainConfig.with_defaults(dataset="ring8"), {"dataset": "ring8"})
    said = capsys.readouterr().out
    assert "--g-hidden 128,128,128 --d-hidden 64,64,64" in said and "(128" not in said
    # digits keeps TrainConfig's own defaults
    assert TrainConfig.with_defaults(dataset="digits") == TrainConfig()
    assert TrainConfig.with_defaults(dataset="ring8", model="mlp").model == "mlp"


@pytest.mark.parametrize("preset", list(PRESETS))
def test_a_preset_sets_every_option_a_datasets_defaults_set(preset):
    """So a preset's run is the published protocol whatever the dataset's defaults say."""
    for dataset, defaults in DATASET_DEFAULTS.items():
        assert set(defaults) <= set(PRESETS[preset]), (preset, dataset)
    options = with_preset(preset, {})
    assert TrainConfig.with_defaults(**options) == TrainConfig(**options)
