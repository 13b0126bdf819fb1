"""Presets: named sets of train options that reproduce a published protocol. A preset fills the options the user
did not give; config.json records every option of the run, so a preset run is as reproducible as any other.

pacgan-ring8 and pacgan-grid25 are the 2-D mixture experiments of PacGAN (Lin et al., NeurIPS 2018, Table 1),
as the authors' code runs them: G from 2-D N(0, 1) noise through 4 hidden layers of 400 (Dense without bias, batch
norm with running-statistics momentum 0.05, ReLU) to a Dense 2; D of 3 maxout layers of 200 units of 5 pieces and a
Dense 1; weights N(0, 0.02), biases 0; Adam lr 1e-4, beta1 0.8; batch 100; 400 epochs of 100,000 points (400,000
steps); simultaneous updates (their code's training algorithm takes D's and G's gradients from one batch at the same
weights, then updates both); batch norm as the Blocks library of their code has it (epsilon 1e-4 added to the
variance, a running average of the standard deviation) and with packing per pack slot (their G makes each of the m
samples of a pack in a batch of its own); real packs made once, 100,000 of them, each slot's point drawn from the
data with replacement (their data set), a step's B drawn from them; the sample-quality metrics on 2,500 samples.
`--pac m` gives the PacGANm rows.
"""
from .errors import check_choice

_PACGAN = {"model": "maxout", "z_dim": 2, "prior": "normal", "init": "normal", "optimizer": "adam", "lr_g": 1e-4,
           "lr_d": 1e-4, "beta1": 0.8, "beta2": 0.999, "batch_size": 100, "pac": 1, "steps": 400_000,
           "loss": "non-saturating", "update": "simultaneous", "metrics_every": 20_000, "checkpoint_every": 20_000,
           "bn_eps": 1e-4, "bn_running": "stdev", "pack_norm": "slot",  # batch norm as theirs (Blocks; G per slot)
           "real_packs": "fixed",  # N packs of pac points made once, as their data set
           "sample_every": 20_000, "log_every": 1000,
           "g_hidden": None, "d_hidden": None,  # None: the protocol's sizes (the maxout model's)
           "ema": 0.0}  # samples from G as it is: the protocol averages no weights
PRESETS = {"pacgan-ring8": {**_PACGAN, "dataset": "ring8"}, "pacgan-grid25": {**_PACGAN, "dataset": "grid25"}}


def with_preset(name, given):
    """The train options of preset `name` overridden by those `given` (name -> value)."""
    check_choice("preset", name, tuple(PRESETS))
    return {**PRESETS[name], **given}
