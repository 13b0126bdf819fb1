"""FLOP counts of a GAN training step, from the models' layers, to report FLOP/s next to every time.

Only the GEMM-like layers count (Dense, Maxout, Conv2d, ConvTranspose2d: 2 FLOPs per multiply-add); batch norm,
activations and the optimizers are a few FLOPs per value and are left out.
"""
import math

from gan_engine.layers import Conv2d, ConvTranspose2d, Dense, Maxout


def layer_flops(model, batch):
    """FLOPs of one forward pass of each layer of a Sequential for a batch; its backward costs the same for the
    weight gradient and again for the input gradient."""
    flops = []
    for layer, in_shape, out_shape in zip(model.layers, model.shapes, model.shapes[1:]):
        if isinstance(layer, Dense):
            flops.append(2 * batch * layer.in_features * layer.out_features)
        elif isinstance(layer, Maxout):  # every piece of every unit
            flops.append(2 * batch * layer.in_features * layer.units * layer.pieces)
        elif isinstance(layer, Conv2d):  # every output value: C_in k k multiply-adds
            flops.append(2 * batch * math.prod(out_shape) * layer.in_channels * layer.kernel_size ** 2)
        elif isinstance(layer, ConvTranspose2d):  # every input value: C_out k k multiply-adds
            flops.append(2 * batch * math.prod(in_shape) * layer.out_channels * layer.kernel_size ** 2)
        else:
            flops.append(0)
    return flops


def step_flops(G, D, batch, k_disc=1, pac=1, update="alternating"):
    """FLOPs of one training step (k D steps + 1 G step, or one simultaneous update); with packing G makes batch x
    pac samples for D's batch.

    A D step: G forward, then D forward and backward (weight gradients; input gradients below all but the first
    weighted layer) on reals and on fakes. A G step: G forward, D forward, D backward (input gradients only, all
    the way), G backward (weight gradients; input gradients below all but its first weighted layer). A
    simultaneous update: a D step, then D's input gradients on the fakes and G's backward, without the G step's own
    G and D forwards.
    """
    g_layers, d_layers = layer_flops(G, batch * pac), layer_flops(D, batch)
    g, d = sum(g_layers), sum(d_layers)
    g_inner = g - next(f for f in g_layers if f)  # input gradients a model's own backward computes
    d_inner = d - next(f for f in d_layers if f)
    d_step = g + 2 * (d + d + d_inner)
    if update == "simultaneous":
        return d_step + d + g + g_inner
    g_step = g + d + d + g + g_inner
    return k_disc * d_step + g_step

