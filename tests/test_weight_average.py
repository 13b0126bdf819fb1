"""The moving average of G's weights (--ema): its arithmetic on every backend, the trainer sampling from it, and
checkpoints keeping it."""
import csv
import json

import numpy as np
import pytest

from gan_engine import GanEngineError, Trainer, WeightAverage
from gan_engine.checkpoint import load_checkpoint, save_checkpoint
from gan_engine.cli import main
from gan_engine.config import TrainConfig
from gan_engine.models import batchnorm_generator, maxout_discriminator
from gan_engine.run import Run, load_generator
from gan_engine.trainer import generate, sample_noise

from .util import assert_close


def generator(backend="numpy", seed=0):
    return batchnorm_generator(z_dim=2, hidden=(8, 8), out_dim=2, backend=backend, seed=seed)  # has running stats


def make(ema, backend="numpy"):
    data = np.random.default_rng(0).standard_normal((200, 2)).astype(np.float32)
    D = maxout_discriminator(in_dim=2, hidden=(8,), pieces=3, backend=backend, seed=1)
    return Trainer(generator(backend), D, data, batch_size=16, seed=0, ema=ema)


def test_the_applied_average_is_the_decay_weighted_mean_of_the_weights_so_far(backend):
    G, rng, d = generator(backend), np.random.default_rng(3), 0.9
    average = WeightAverage(G, d)
    seen = []
    for _ in range(4):
        params = rng.standard_normal(G.flat_params.size)
        stats = rng.uniform(0.5, 2, G.flat_stats.size)
        G.flat_params[...] = backend.asarray(params, G.dtype)
        G.flat_stats[...] = backend.asarray(stats, G.dtype)
        seen.append(np.concatenate([params, stats]))
        average.update()
    weights = d ** np.arange(3, -1, -1)  # d^(t - i) for the 4 updates
    want = weights @ np.array(seen) / weights.sum()
    last = backend.to_numpy(G.flat_params).copy()
    with average.applied():
        got = np.concatenate([backend.to_numpy(G.flat_params), backend.to_numpy(G.flat_stats)])
        assert_close("averaged weights", got, want, atol=1e-5, rtol=1e-5)
    assert np.array_equal(backend.to_numpy(G.flat_params), last), "applied() must give the model its weights back"


def test_decay_zero_stores_nothing_and_leaves_the_model_as_it_is():
    G = generator()
    average = WeightAverage(G, 0.0)
    before = G.flat_params.copy()
    average.update()
    G.flat_params += 1
    with average.applied():
        assert np.array_equal(G.flat_params, before + 1)
    assert average.params.size == 0 and average.state_dict() == {}
    with pytest.raises(GanEngineError, match="decay"):
        WeightAverage(G, 1.0)


def test_the_trainer_samples_from_the_average_and_trains_the_live_weights():
    averaged, plain = make(0.99), make(0.0)
    for _ in range(30):
        averaged.step()
        plain.step()
    assert np.array_equal(averaged.G.flat_params, plain.G.flat_params), "averaging must not change training"
    z = sample_noise(50, 2, seed=0)
    live = plain.generate(z)
    assert np.array_equal(generate(averaged.G, z), live)
    got = averaged.generate(z)
    with averaged.g_average.applied():
        assert np.array_equal(got, generate(averaged.G, z))
    assert not np.allclose(got, live, atol=1e-4), "samples must come from the averaged weights"


def test_a_resumed_run_continues_the_average_bit_for_bit(tmp_path):
    whole, first = make(0.95), make(0.95)
    for _ in range(12):
        whole.step()
    for _ in range(7):
        first.step()
    path = str(tmp_path / "c.npz")
    save_checkpoint(path, first.state_dict(), {}, {})
    state, _, _ = load_checkpoint(path)
    second = make(0.95)
    second.load_state_dict(state)
    for _ in range(5):
        second.step()
    assert second.g_average.t == whole.g_average.t == 12
    assert np.array_equal(second.g_average.params, whole.g_average.params)
    assert np.array_equal(second.g_average.stats, whole.g_average.stats)


def test_a_checkpoints_generator_is_the_average_and_an_old_checkpoint_has_none(tmp_path):
    config = TrainConfig.with_defaults(dataset="ring8", steps=20, ema=0.9, g_hidden=(8,), d_hidden=(8,),
                                       checkpoint_every=20, sample_every=20, backend="numpy")
    run = Run(str(tmp_path / "run"), config, progress=False)
    run.train()
    path = str(tmp_path / "run" / "checkpoints" / "step_00000020.npz")
    G, *_ = load_generator(path, backend="numpy")
    z = sample_noise(40, 2, seed=1)
    assert np.array_equal(generate(G, z), run.trainer.generate(z))
    state, saved, info = load_checkpoint(path)
    del state["G_average"]
    with pytest.raises(GanEngineError, match="no weight average"):
        run.trainer.load_state_dict(state)
    old = str(tmp_path / "old.npz")  # a checkpoint written before averaging existed: no G_average part at all
    save_checkpoint(old, state, {k: v for k, v in saved.items() if k != "ema"}, info)
    state, saved, _ = load_checkpoint(old)
    assert state["G_average"] == {} and "ema" not in saved
    G, config, *_ = load_generator(old, backend="numpy")
    assert config.ema == 0.0 and np.array_equal(generate(G, z), generate(run.trainer.G, z))


def test_evaluate_measures_the_average_the_run_measured_and_live_the_weights_of_the_step(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "ring8", "--ema", "0.9", "--steps", "40", "--g-hidden", "8", "--d-hidden", "8",
                 "--metrics-every", "40", "--backend", "numpy", "--out", str(out), "--quiet"]) == 0
    checkpoint = str(out / "checkpoints" / "step_00000040.npz")
    for extra, name in (([], "average.json"), (["--live"], "live.json")):
        assert main(["evaluate", "--checkpoint", checkpoint, "--backend", "numpy", "--json", str(tmp_path / name),
                     *extra]) == 0
    capsys.readouterr()
    averaged, live = (json.loads((tmp_path / name).read_text())["generated"] for name in ("average.json", "live.json"))
    with open(out / "metrics.csv", newline="") as f:
        logged = list(csv.DictReader(f))[-1]
    assert averaged == pytest.approx({k: float(logged[k]) for k in averaged}, rel=1e-12)
    state, saved, info = load_checkpoint(checkpoint)
    G, *_ = load_generator(checkpoint, backend="numpy", average=False)
    assert all(np.array_equal(G.state_dict()[k], v) for k, v in state["G"].items())
    assert live != averaged
