"""PacGAN packing (Lin et al. 2018): D judges m samples at once; reals and fakes are packed the same way, G and
sampling are unchanged, and pac is a run option that resume and evaluate keep."""
import json

import numpy as np
import pytest

from gan_engine import GanEngineError, Trainer, mlp_discriminator, mlp_generator
from gan_engine.checkpoint import load_checkpoint
from gan_engine.cli import main
from gan_engine.config import TrainConfig
from gan_engine.models import dcgan_discriminator, dcgan_generator


def _packed_trainer(pac, model="mlp", batch=4):
    if model == "mlp":
        G, D = mlp_generator(3, (8,), 2, backend="numpy"), mlp_discriminator(2 * pac, (8,), backend="numpy")
    else:
        G = dcgan_generator(3, (1, 8, 8), (8, 4), backend="numpy")
        D = dcgan_discriminator((pac, 8, 8), (4, 8), backend="numpy")
    data = np.random.default_rng(0).uniform(-1, 1, (500, G.out_features)).astype(np.float32)
    return Trainer(G, D, data, batch_size=batch, pac=pac), data


@pytest.mark.parametrize("model", ["mlp", "dcgan"])
def test_reals_and_fakes_are_packed_alike_m_consecutive_samples_per_input(model):
    trainer, data = _packed_trainer(3, model)
    seen, made = [], []
    d_forward, g_forward = trainer.D.forward, trainer.G.forward
    trainer.D.forward = lambda x, train=True: (seen.append(np.array(x)), d_forward(x, train))[1]
    trainer.G.forward = lambda z, train=True: (made.append(g_forward(z, train).copy()), made[-1])[1]
    trainer.d_step()
    # D's two inputs (B, 3 F) each, or with no batch norm in D (the MLP) one input of both, reals first (2 B, 3 F)
    assert len(seen) == (1 if model == "mlp" else 2)
    real, fake = np.split(np.concatenate(seen), 2)
    assert real.shape == fake.shape == (4, 3 * data.shape[1])
    want_real = data[trainer._all_idx]  # one rank: its B m = 12 samples drawn
    for i in range(4):  # input i is samples 3i, 3i + 1, 3i + 2 side by side (for images: stacked channels)
        assert np.array_equal(real[i], np.concatenate(want_real[3 * i:3 * i + 3]))
        assert np.array_equal(fake[i], np.concatenate(made[0][3 * i:3 * i + 3]))


def test_the_generator_gradient_is_unpacked_back_to_its_samples():
    trainer, _ = _packed_trainer(2)
    got = []
    g_backward = trainer.G.backward
    trainer.G.backward = lambda dy, **kw: (got.append(np.array(dy)), g_backward(dy, **kw))[1]
    trainer.g_step()
    dx_of_d = trainer.D.layers[0]._buffers  # D's input gradient (B, 2 F), kept in its first layer's buffer
    (packed,) = [v for (key, _), v in dx_of_d.items() if key == "dx"]
    assert got[0].shape == (8, 2) and np.array_equal(got[0], packed.reshape(8, 2))


def test_pac_errors_name_the_sizes():
    G, D = mlp_generator(3, (8,), 2, backend="numpy"), mlp_discriminator(2, (8,), backend="numpy")
    data = np.zeros((500, 2), np.float32)
    with pytest.raises(GanEngineError, match=r"D reads 2; it must read 6 \(pac 3 x 2\)"):
        Trainer(G, D, data, pac=3)
    with pytest.raises(GanEngineError, match="pac .* must be a positive integer, got 0"):
        Trainer(G, D, data, pac=0)


def test_pac_is_a_run_option_kept_by_resume_and_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--dataset", "ring8", "--model", "mlp", "--hidden", "8", "--batch-size", "8", "--pac", "2",
            "--checkpoint-every", "5", "--quiet"]
    assert main(["train", "--out", str(out), *args, "--steps", "5"]) == 0
    assert json.loads((out / "config.json").read_text())["pac"] == 2
    assert main(["train", "--resume", str(out), "--steps", "10", "--quiet"]) == 0
    state, config, _ = load_checkpoint(str(out / "checkpoints/step_00000010.npz"))
    assert config["pac"] == 2 and state["D"]["0.W"].shape == (4, 8)  # D reads two 2-D points at once
    assert main(["evaluate", "--checkpoint", str(out)]) == 0
    assert "cannot change pac" in _error(capsys, ["train", "--resume", str(out), "--steps", "20", "--pac", "3"])


def _error(capsys, argv):
    capsys.readouterr()
    assert main(argv) == 2
    return capsys.readouterr().err


def test_a_config_saved_before_pac_existed_loads_as_pac_1():
    saved = TrainConfig().to_dict()
    del saved["pac"]
    assert TrainConfig.from_dict(saved).pac == 1
    del saved["z_dim"]  # any other missing option is still refused
    with pytest.raises(GanEngineError, match="lacks z_dim"):
        TrainConfig.from_dict(saved)


@pytest.mark.parametrize("pac", [1, 3])
def test_fixed_packs_are_made_once_and_a_batch_takes_whole_packs(pac):
    """real_packs="fixed" (the PacGAN authors' data set): N packs of m points made once from the seed, each slot's
    point drawn from the N with replacement; every real input D sees is one of those packs, whole."""
    G, D = mlp_generator(3, (8,), 2, backend="numpy"), mlp_discriminator(2 * pac, (8,), backend="numpy")
    data = np.random.default_rng(0).uniform(-1, 1, (50, 2)).astype(np.float32)
    trainer = Trainer(G, D, data, batch_size=40, pac=pac, seed=7, real_packs="fixed")
    packs = trainer.data.reshape(50, pac * 2)  # (N, m F): the N packs, made once
    points = {tuple(p) for p in data}
    assert all(tuple(p) in points for p in trainer.data)  # made of the data's points
    assert len({tuple(p) for p in trainer.data}) < 50  # drawn with replacement: some points twice, some never
    seen = []
    d_forward = trainer.D.forward
    trainer.D.forward = lambda x, train=True: (seen.append(np.array(x[:40])), d_forward(x, train))[1]
    for _ in range(5):
        trainer.d_step()
    pack_set = {tuple(p) for p in packs}
    assert all(tuple(row) in pack_set for batch in seen for row in batch)
    again = Trainer(G, D, data, batch_size=40, pac=pac, seed=7, real_packs="fixed")  # resume: the same packs
    assert np.array_equal(again.data, trainer.data)
    assert not np.array_equal(Trainer(G, D, data, pac=pac, seed=8, real_packs="fixed").data, trainer.data)
    with pytest.raises(GanEngineError, match="unknown real packs 'fresh'"):
        Trainer(G, D, data, pac=pac, real_packs="fresh")
