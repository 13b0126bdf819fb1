"""FLOP counts of the MLP GAN training step, to report FLOP/s next to every time."""


def dense_flops(batch, dims):
    """Multiply-adds x 2 of one GEMM pass over a chain of Dense layers with sizes dims = (d0, d1, ..., dn)."""
    return sum(2 * batch * i * o for i, o in zip(dims[:-1], dims[1:]))


def step_flops(batch, g_dims, d_dims, k_disc=1):
    """FLOPs of one training step (k D steps + 1 G step) of the GEMMs, which dominate.

    A D step: G forward, then D forward and backward (dW; dx for all but the first layer) on reals and fakes.
    A G step: G forward, D forward, D backward (dx only), G backward (dW; dx for all but the first layer).
    """
    g, d = dense_flops(batch, g_dims), dense_flops(batch, d_dims)
    g_inner, d_inner = dense_flops(batch, g_dims[1:]), dense_flops(batch, d_dims[1:])
    d_step = g + 2 * (d + d + d_inner)
    g_step = g + d + d + g + g_inner
    return k_disc * d_step + g_step
