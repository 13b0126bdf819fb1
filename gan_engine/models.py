"""The models: the seeds' MLP GAN, DCGAN (Radford et al. 2016) sized by the image shape, and the maxout GAN of
the PacGAN paper's 2-D mixtures (Lin et al. 2018).

Both discriminators return logits (the sigmoid lives in the loss). Every model has a flat interface: G maps
noise (N, z_dim) to samples (N, D) and D maps samples (N, D) to logits (N, 1), with D = C*H*W for images.
"""
import numpy as np

from .backends.numpy_ref import conv2d_output_size
from .errors import GanEngineError, check_choice
from .layers import BatchNorm, Conv2d, ConvTranspose2d, Dense, Flatten, Maxout, Reshape, Sequential

MODELS = ("mlp", "dcgan", "maxout")
# With packing, G's batch-norm statistics over the whole batch of B m samples ("batch"), or per pack slot, over each
# slot's B samples, as if G made every slot in a batch of its own ("slot": the PacGAN authors' code)
PACK_NORMS = ("batch", "slot")
MLP_HIDDEN = (512,)
MAXOUT_G_HIDDEN, MAXOUT_D_HIDDEN = (400,) * 4, (200,) * 3  # the PacGAN 2-D mixture protocol's sizes
MAXOUT_PIECES = 5
MAXOUT_BN_MOMENTUM = 0.05
DCGAN_WIDTH = 64  # channels of G's last and D's first hidden layer; the others double towards the middle


def _check_hidden(hidden):
    hidden = tuple(int(h) for h in hidden)
    if any(h < 1 for h in hidden):
        raise GanEngineError(f"hidden sizes must be positive, got {hidden}")
    return hidden


def mlp_generator(z_dim=100, hidden=(128,), out_dim=784, alpha=0.2, init="xavier", backend="auto",
                  dtype=np.float32, seed=0, output="tanh"):
    """G: z (N, z_dim) -> [Dense + leaky ReLU(alpha)] per hidden size -> Dense + `output` -> x (N, out_dim).

    `output` is "tanh" for data in [-1, 1] (images) and "identity" for unbounded data (2-D points).
    """
    dims = (z_dim, *_check_hidden(hidden), out_dim)
    layers = [Dense(dims[i], dims[i + 1], "leaky_relu", alpha, init) for i in range(len(dims) - 2)]
    layers.append(Dense(dims[-2], dims[-1], output, alpha, init))
    return Sequential(layers, backend=backend, dtype=dtype, seed=seed)


def mlp_discriminator(in_dim=784, hidden=(128,), alpha=0.2, init="xavier", backend="auto", dtype=np.float32, seed=1):
    """D: x (N, in_dim) -> [Dense + leaky ReLU(alpha)] per hidden size -> Dense -> logits (N, 1)."""
    dims = (in_dim, *_check_hidden(hidden), 1)
    layers = [Dense(dims[i], dims[i + 1], "leaky_relu", alpha, init) for i in range(len(dims) - 2)]
    layers.append(Dense(dims[-2], dims[-1], "identity", alpha, init))
    return Sequential(layers, backend=backend, dtype=dtype, seed=seed)


def batchnorm_generator(z_dim=2, hidden=MAXOUT_G_HIDDEN, out_dim=2, init="normal", momentum=MAXOUT_BN_MOMENTUM,
                        backend="auto", dtype=np.float32, seed=0, output="identity", norm=None):
    """G: z (N, z_dim) -> [Dense without bias + BatchNorm(momentum) + ReLU] per hidden size -> Dense + `output`
    -> x (N, out_dim): the PacGAN protocol's generator (4 x 400 for the 2-D mixtures). `norm`: more BatchNorm
    options (eps, running, slots), as norm_options gives them."""
    dims = (z_dim, *_check_hidden(hidden))
    layers = []
    for d_in, d_out in zip(dims, dims[1:]):
        layers += [Dense(d_in, d_out, init=init, bias=False),
                   BatchNorm(d_out, momentum, activation="relu", init=init, **(norm or {}))]
    layers.append(Dense(dims[-1], out_dim, output, init=init))
    return Sequential(layers, backend=backend, dtype=dtype, seed=seed)


def maxout_discriminator(in_dim=2, hidden=MAXOUT_D_HIDDEN, pieces=MAXOUT_PIECES, init="normal", backend="auto",
                         dtype=np.float32, seed=1):
    """D: x (N, in_dim) -> [Maxout(units, pieces)] per hidden size -> Dense -> logits (N, 1): the PacGAN protocol's
    discriminator (3 x 200 units of 5 pieces for the 2-D mixtures)."""
    dims = (in_dim, *_check_hidden(hidden))
    layers = [Maxout(d_in, d_out, pieces, init) for d_in, d_out in zip(dims, dims[1:])]
    layers.append(Dense(dims[-1], 1, init=init))
    return Sequential(layers, backend=backend, dtype=dtype, seed=seed)


def dcgan_depth(side):
    """How many stride-2 layers a DCGAN gets for square images of this side: as many as keep the smallest
    feature map at 4 pixels or more (2 for images under 16 pixels), at most 4 (28 -> 2, 32 -> 3, 64 -> 4, 8 -> 2)."""
    smallest = 2 if side < 16 else 4
    depth = 0
    while depth < 4 and side % 2 ** (depth + 1) == 0 and side // 2 ** (depth + 1) >= smallest:
        depth += 1
    return depth


def dcgan_channels(image_shape, width=DCGAN_WIDTH):
    """Default (G channels, D channels) for an image shape: G halves from width * 2^(n-1) down to width, D doubles
    from width up; n = dcgan_depth. 28x28: (128, 64) and (64, 128); 64x64: (512, 256, 128, 64) and the reverse."""
    depth = dcgan_depth(_check_image_shape(image_shape)[1])
    if depth == 0:
        raise GanEngineError(f"dcgan needs image sides divisible by 2 (at least 4 pixels), got "
                             f"{image_shape[1]}x{image_shape[2]}")
    g = tuple(width * 2 ** (depth - 1 - i) for i in range(depth))
    return g, g[::-1]


def _check_image_shape(image_shape):
    if image_shape is None or len(image_shape) != 3:
        raise GanEngineError("dcgan needs image data (C, H, W); for 2-D points use --model mlp")
    c, h, w = (int(s) for s in image_shape)
    if h != w:
        raise GanEngineError(f"dcgan needs square images, got {h}x{w}")
    return c, h, w


def dcgan_generator(z_dim=100, image_shape=(1, 28, 28), channels=None, init="normal", backend="auto",
                    dtype=np.float32, seed=0, norm=None):
    """DCGAN G: z (N, z_dim) -> Dense -> (c0, s, s) -> BN + ReLU -> [ConvT(4, 2, 1) + BN + ReLU] ...
    -> ConvT(4, 2, 1) + tanh -> x (N, C*H*W).

    `channels` (c0, ..., c_{n-1}) gives the n hidden feature maps; every ConvT doubles the side, so the start
    side is s = H / 2^n. No batch norm on the output; convolutions before batch norm have no bias.
    Defaults: dcgan_channels(image_shape). `norm`: more BatchNorm options (eps, running, slots).
    """
    norm = norm or {}
    c, h, _ = _check_image_shape(image_shape)
    channels = _check_hidden(channels or dcgan_channels(image_shape)[0])
    n = len(channels)
    if h % 2 ** n:
        raise GanEngineError(f"a dcgan generator with {n} upsampling layers (channels {','.join(map(str, channels))}) "
                             f"makes images whose side is a multiple of {2 ** n}, but the data is {h}x{h}; "
                             f"give {dcgan_depth(h)} channel sizes (the default for this size)")
    s = h // 2 ** n
    layers = [Dense(z_dim, channels[0] * s * s, init=init), Reshape((channels[0], s, s)),
              BatchNorm(channels[0], activation="relu", init=init, **norm)]
    for c_in, c_out in zip(channels, channels[1:]):
        layers += [ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False, init=init),
                   BatchNorm(c_out, activation="relu", init=init, **norm)]
    layers += [ConvTranspose2d(channels[-1], c, 4, 2, 1, activation="tanh", init=init), Flatten()]
    return Sequential(layers, backend=backend, dtype=dtype, seed=seed)


def dcgan_discriminator(image_shape=(1, 28, 28), channels=None, alpha=0.2, init="normal", backend="auto",
                        dtype=np.float32, seed=1, norm=None):
    """DCGAN D: x (N, C*H*W) -> (C, H, W) -> Conv(4, 2, 1) + LeakyReLU -> [Conv(4, 2, 1) + BN + LeakyReLU] ...
    -> Flatten -> Dense -> logits (N, 1).

    `channels` (c0, ..., c_{n-1}): every strided convolution halves the side. No batch norm on the input
    layer; no pooling. Defaults: dcgan_channels(image_shape). `norm`: more BatchNorm options (eps, running).
    """
    c, h, w = _check_image_shape(image_shape)
    channels = _check_hidden(channels or dcgan_channels(image_shape)[1])
    layers = [Reshape((c, h, w)), Conv2d(c, channels[0], 4, 2, 1, activation="leaky_relu", alpha=alpha, init=init)]
    for c_in, c_out in zip(channels, channels[1:]):
        layers += [Conv2d(c_in, c_out, 4, 2, 1, bias=False, init=init),
                   BatchNorm(c_out, activation="leaky_relu", alpha=alpha, init=init, **(norm or {}))]
    side = h
    for _ in channels:
        if side < 2:
            raise GanEngineError(f"a dcgan discriminator with {len(channels)} stride-2 layers needs images of at least "
                                 f"{2 ** len(channels)}x{2 ** len(channels)} pixels, got {h}x{w}; give fewer channel sizes")
        side = conv2d_output_size(side, 4, 2, 1)
    layers += [Flatten(), Dense(channels[-1] * side * side, 1, init=init)]
    return Sequential(layers, backend=backend, dtype=dtype, seed=seed)


def hidden_sizes(config, info):
    """(G's, D's) hidden sizes for a TrainConfig on data of this info: config.g_hidden / d_hidden, or the model's
    defaults (MLP_HIDDEN; dcgan_channels of the image shape)."""
    if config.g_hidden and config.d_hidden:
        return config.g_hidden, config.d_hidden
    if config.model == "dcgan":
        g, d = dcgan_channels(info["image_shape"])
    else:
        g, d = (MAXOUT_G_HIDDEN, MAXOUT_D_HIDDEN) if config.model == "maxout" else (MLP_HIDDEN, MLP_HIDDEN)
    return config.g_hidden or g, config.d_hidden or d


def norm_options(config, generator):
    """The BatchNorm options of a TrainConfig: eps and running statistic, and for G with pack_norm "slot" the pac
    slots whose statistics it takes apart."""
    slots = config.pac if generator and config.pack_norm == "slot" else 1
    return {"eps": config.bn_eps, "running": config.bn_running, "slots": slots}


def build_generator(config, info):
    """G for a TrainConfig and the data's info (dim, output, image_shape); seeded by config.seed."""
    check_choice("model", config.model, MODELS)
    dtype, hidden, norm = np.dtype(config.dtype), hidden_sizes(config, info)[0], norm_options(config, True)
    if config.model == "dcgan":
        return dcgan_generator(config.z_dim, info["image_shape"], hidden, config.init, config.backend, dtype,
                               seed=config.seed, norm=norm)
    if config.model == "maxout":
        return batchnorm_generator(config.z_dim, hidden, info["dim"], config.init, MAXOUT_BN_MOMENTUM, config.backend,
                                   dtype, seed=config.seed, output=info["output"], norm=norm)
    return mlp_generator(config.z_dim, hidden, info["dim"], config.alpha, config.init, config.backend, dtype,
                         seed=config.seed, output=info["output"])


def build_discriminator(config, info):
    """D for a TrainConfig and the data's info; seeded by config.seed + 1. With config.pac m it reads m samples at
    once: m times the features (MLP), m times the image channels (DCGAN)."""
    check_choice("model", config.model, MODELS)
    dtype, hidden, m = np.dtype(config.dtype), hidden_sizes(config, info)[1], config.pac
    if config.model == "dcgan":
        c, h, w = _check_image_shape(info["image_shape"])
        return dcgan_discriminator((m * c, h, w), hidden, config.alpha, config.init, config.backend, dtype,
                                   seed=config.seed + 1, norm=norm_options(config, False))
    if config.model == "maxout":
        return maxout_discriminator(m * info["dim"], hidden, MAXOUT_PIECES, config.init, config.backend, dtype,
                                    seed=config.seed + 1)
    return mlp_discriminator(m * info["dim"], hidden, config.alpha, config.init, config.backend, dtype,
                             seed=config.seed + 1)
