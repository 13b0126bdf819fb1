"""Convolutional layers, batch norm and the DCGAN models: whole-model gradient checks, train and eval
semantics, running statistics in checkpoints, and errors that name the layer and the shapes."""
import numpy as np
import pytest

from gan_engine import GanEngineError, Trainer
from gan_engine.checkpoint import load_checkpoint, save_checkpoint
from gan_engine.layers import (Activation, BatchNorm, Conv2d, ConvTranspose2d, Dense, Flatten, LeakyReLU, ReLU,
                               Reshape, Sequential)
from gan_engine.models import dcgan_channels, dcgan_depth, dcgan_discriminator, dcgan_generator

from .test_models import _model_gradcheck


def test_small_dcgan_generator_gradcheck_float64():
    G = dcgan_generator(z_dim=3, image_shape=(2, 8, 8), channels=(4, 3), backend="numpy", dtype=np.float64, seed=2)
    assert G.in_features == 3 and G.out_features == 2 * 8 * 8
    _model_gradcheck(G, np.random.default_rng(0).standard_normal((4, 3)), need_dx=True)


def test_small_dcgan_discriminator_gradcheck_float64():
    D = dcgan_discriminator(image_shape=(1, 8, 8), channels=(3, 4), backend="numpy", dtype=np.float64, seed=3)
    assert D.out_features == 1
    _model_gradcheck(D, np.random.default_rng(1).standard_normal((5, 64)), need_dx=True)


def test_standalone_layers_gradcheck_float64():
    # ReLU after an input with no exact zeros: a finite difference across its kink would be meaningless
    model = Sequential([Reshape((2, 3, 3)), Conv2d(2, 3, 3, 1, 1, bias=False), BatchNorm(3), LeakyReLU(0.1),
                        ConvTranspose2d(3, 2, 3, 2, 1, output_padding=1), ReLU(), Flatten(),
                        Dense(2 * 6 * 6, 5), BatchNorm(5, activation="tanh"), Activation("sigmoid")],
                       backend="numpy", dtype=np.float64, seed=4)
    assert model.out_shape == (5,)
    x = np.random.default_rng(2).standard_normal((4, 18))
    _model_gradcheck(model, x, need_dx=True)


@pytest.mark.parametrize("image_shape, g, d", [
    ((1, 8, 8), (128, 64), (64, 128)),
    ((1, 28, 28), (128, 64), (64, 128)),
    ((3, 32, 32), (256, 128, 64), (64, 128, 256)),
    ((3, 64, 64), (512, 256, 128, 64), (64, 128, 256, 512)),
])
def test_dcgan_sizes_follow_the_image_shape(image_shape, g, d):
    assert dcgan_channels(image_shape) == (g, d)
    G = dcgan_generator(16, image_shape, backend="numpy")
    D = dcgan_discriminator(image_shape, backend="numpy")
    x = G.forward(np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32))
    assert x.shape == (2, int(np.prod(image_shape))) and np.abs(x).max() <= 1
    assert D.forward(x).shape == (2, 1)
    convs = [layer for layer in G.layers if isinstance(layer, ConvTranspose2d)]
    assert [c.out_channels for c in convs] == [*g[1:], image_shape[0]]
    assert [c.out_channels for c in D.layers if isinstance(c, Conv2d)] == list(d)


def test_dcgan_follows_radford_guidelines():
    G = dcgan_generator(16, (1, 28, 28), backend="numpy")
    D = dcgan_discriminator((1, 28, 28), backend="numpy")
    # batch norm everywhere except G's output and D's input; ReLU in G, leaky ReLU in D, tanh output
    assert [type(layer).__name__ for layer in G.layers] == [
        "Dense", "Reshape", "BatchNorm", "ConvTranspose2d", "BatchNorm", "ConvTranspose2d", "Flatten"]
    assert [bn.activation for bn in G.layers if isinstance(bn, BatchNorm)] == ["relu", "relu"]
    assert G.layers[-2].activation == "tanh"
    assert [type(layer).__name__ for layer in D.layers] == [
        "Reshape", "Conv2d", "Conv2d", "BatchNorm", "Flatten", "Dense"]
    assert D.layers[1].activation == "leaky_relu" and D.layers[3].activation == "leaky_relu"
    assert D.layers[1].alpha == 0.2
    W = np.concatenate([v.ravel() for k, v in D.parameters().items() if k.endswith(".W")])
    assert abs(W.std() - 0.02) < 0.001  # N(0, 0.02)
    assert dcgan_depth(8) == 2 and dcgan_depth(28) == 2 and dcgan_depth(32) == 3 and dcgan_depth(64) == 4


def test_batchnorm_train_and_eval_modes():
    G = dcgan_generator(4, (1, 8, 8), channels=(6, 4), backend="numpy", dtype=np.float64, seed=0)
    z = np.random.default_rng(0).standard_normal((8, 4))
    stats_before = G.flat_stats.copy()
    a = G.forward(z, train=False).copy()
    assert np.array_equal(G.flat_stats, stats_before)  # eval leaves the running statistics alone
    b = G.forward(z[:3], train=False)
    np.testing.assert_allclose(b, a[:3], atol=1e-12)  # eval: each sample independent of its batch
    t = G.forward(z, train=True).copy()
    assert not np.array_equal(G.flat_stats, stats_before)  # train moves them
    t3 = G.forward(z[:3], train=True)
    assert np.abs(t3 - t[:3]).max() > 1e-3  # train: normalised by the batch, so the batch matters
    assert np.abs(t - a).max() > 1e-3


def test_running_statistics_survive_a_checkpoint(tmp_path):
    data = np.random.default_rng(0).uniform(-1, 1, (32, 64)).astype(np.float32)
    make = lambda: Trainer(dcgan_generator(4, (1, 8, 8), (8, 4), backend="numpy", seed=0),
                           dcgan_discriminator((1, 8, 8), (4, 8), backend="numpy", seed=1), data, batch_size=8)
    trainer = make()
    trainer.train(3)
    names = set(trainer.G.statistics())
    assert {"2.running_mean", "2.running_var", "4.running_mean", "4.running_var"} == names
    save_checkpoint(str(tmp_path / "c.npz"), trainer.state_dict(), {}, {})
    restored = make()
    assert not np.array_equal(restored.G.flat_stats, trainer.G.flat_stats)
    state, _, _ = load_checkpoint(str(tmp_path / "c.npz"))
    restored.load_state_dict(state)
    assert np.array_equal(restored.G.flat_stats, trainer.G.flat_stats)
    assert np.array_equal(restored.D.flat_stats, trainer.D.flat_stats)
    z = np.random.default_rng(1).standard_normal((5, 4))
    assert np.array_equal(restored.generate(z), trainer.generate(z))
    assert trainer.read_metrics(trainer.step()) == restored.read_metrics(restored.step())


def test_optimizer_leaves_running_statistics_alone():
    G = dcgan_generator(4, (1, 8, 8), (4, 4), backend="numpy", seed=0)
    assert G.flat_stats.size == 4 * 4 and G.flat_params.size + G.flat_stats.size == sum(
        v.size for v in G.state_dict().values())


def test_kernel_larger_than_padded_input_names_layer_and_shapes():
    with pytest.raises(GanEngineError, match=r"layer 1 \(Conv2d\(2, 3, kernel_size=5.*kernel 5x5 is larger than "
                                             r"the padded input 4x4 \(input \(N, 2, 2, 2\), padding 1\)"):
        Sequential([Reshape((2, 2, 2)), Conv2d(2, 3, 5, 1, 1)], backend="numpy")


def test_output_padding_must_be_smaller_than_stride():
    with pytest.raises(GanEngineError, match=r"ConvTranspose2d\(4, 2.*output_padding \(2\) must be smaller than "
                                             r"stride \(2\)"):
        ConvTranspose2d(4, 2, 4, 2, 1, output_padding=2)


def test_channel_mismatch_names_layer_and_shapes():
    with pytest.raises(GanEngineError, match=r"layer 2 \(ConvTranspose2d\(5, 1.*expects input of shape "
                                             r"\(N, 5, H, W\), got \(N, 4, 2, 2\)"):
        Sequential([Dense(3, 16), Reshape((4, 2, 2)), ConvTranspose2d(5, 1)], backend="numpy")
    with pytest.raises(GanEngineError, match=r"layer 1 \(BatchNorm\(3, identity\)\): expects input of shape "
                                             r"\(N, 3\) or \(N, 3, H, W\), got \(N, 4\)"):
        Sequential([Dense(2, 4), BatchNorm(3)], backend="numpy")
    with pytest.raises(GanEngineError, match=r"cannot reshape \(N, 10\) to \(N, 1, 3, 3\)"):
        Sequential([Dense(2, 10), Reshape((1, 3, 3))], backend="numpy")


def test_batchnorm_train_mode_needs_more_than_one_value():
    model = Sequential([Dense(2, 3), BatchNorm(3)], backend="numpy")
    with pytest.raises(GanEngineError, match=r"layer 1 .*more than one value per channel.*\(1, 3\)"):
        model.forward(np.ones((1, 2), dtype=np.float32))
    assert model.forward(np.ones((1, 2), dtype=np.float32), train=False).shape == (1, 3)


def test_dcgan_rejects_shapes_it_cannot_make():
    with pytest.raises(GanEngineError, match="needs image data"):
        dcgan_generator(4, None, backend="numpy")
    with pytest.raises(GanEngineError, match="square images, got 8x6"):
        dcgan_discriminator((1, 8, 6), backend="numpy")
    with pytest.raises(GanEngineError, match=r"3 upsampling layers.*multiple of 8.*28x28; give 2 channel sizes"):
        dcgan_generator(4, (1, 28, 28), channels=(256, 128, 64), backend="numpy")
    with pytest.raises(GanEngineError, match=r"at least 32x32 pixels, got 8x8"):
        dcgan_discriminator((1, 8, 8), channels=(4, 4, 4, 4, 4), backend="numpy")
    with pytest.raises(GanEngineError, match="pass in_shape: the first layer Conv2d"):
        Sequential([Conv2d(1, 2)], backend="numpy")


def test_generate_in_chunks_equals_one_pass(backend):
    """generate() runs GENERATE_BATCH rows at a time; eval mode makes every sample independent of the rest."""
    from gan_engine.trainer import GENERATE_BATCH, generate

    G = dcgan_generator(8, (1, 8, 8), (8, 4), backend=backend, seed=0)
    z = np.random.default_rng(0).standard_normal((GENERATE_BATCH + 3, 8)).astype(np.float32)
    whole = generate(G, z)
    assert whole.shape == (GENERATE_BATCH + 3, 64)
    one_pass = backend.to_numpy(G.forward(backend.asarray(z), train=False))
    np.testing.assert_allclose(whole, one_pass, atol=1e-6)
    np.testing.assert_allclose(generate(G, z[-5:]), whole[-5:], atol=1e-6)
