"""The seeds' Algorithm 1 (Goodfellow et al. 2014): k discriminator steps, then one generator step; or, with
update="simultaneous", both players' gradients from one batch at the same weights, then both updates.

Every step draws a fresh real batch (indices uniform with replacement) and fresh noise from the trainer's own
random state, so the same seed gives bit-identical losses and a restored state continues the same sequence.
"""
import math
import warnings

import numpy as np

from .backends.numpy_ref import PRIORS, noise
from .distributed import ONE_PROCESS
from .errors import GanEngineError, check_choice
from .losses import GENERATOR_LOSSES, d_loss, d_loss_fake, d_loss_real, g_loss
from .memory import check_memory
from .optim import Adam, WeightAverage
from .real_batches import REAL_BATCHES, REAL_PACKS

METRICS = ("d_loss", "g_loss", "d_real", "d_fake")
GENERATE_BATCH = 256  # rows per forward pass in generate()
LOSS_BOUND = 1e4        # |loss| beyond this counts as divergence, like NaN
GRAPH_WARMUP_STEPS = 2  # eager steps before a step is captured: kernels compiled, buffers allocated, Adam counting
FEW_SAMPLES = 100       # less training data than this draws a warning: D memorises it and G copies it
UPDATES = ("alternating", "simultaneous")  # the step's rule: Trainer.alternating_step, Trainer.simultaneous_step


class TrainingDiverged(GanEngineError):
    """A loss became NaN or infinite."""


class Trainer:
    """Trains generator G against discriminator D on `data` (N, D) with the seeds' Algorithm 1.

    G and D must share a backend and dtype. `opt_g`/`opt_d` default to Adam(lr=2e-4, beta1=0.5), the DCGAN
    setting. `k_disc` D steps per G step; `loss` is the generator loss ("non-saturating" or "minimax");
    `prior` the noise prior ("normal" or "uniform" on [-1, 1]); `label_smoothing` the one-sided smoothing of
    D's real targets (1 -> 1 - s). With `graph` (the default) and a backend that can capture (cuda), the step is
    captured once as a CUDA graph after GRAPH_WARMUP_STEPS eager steps and replayed from then on: one launch a
    step. The metrics a replayed step returns are then the same device arrays every step, rewritten by the next.
    `pac` m > 1 is PacGAN's packing (Lin et al. 2018): D judges m samples at once, a real batch and a fake batch of
    B m samples each, packed by `pack` into B inputs of m F values; D must read pac x G's output size.
    `comm` (gan_engine.distributed.world(), under mpiexec) trains over its ranks: each computes B / P rows of every
    global batch of B and the gradients are averaged over the ranks before each update, so P ranks follow one
    process of batch B (every rank builds the same models and data and passes the same seed).
    `ema` > 0 keeps an exponential moving average of G's weights with that decay (optim.WeightAverage, updated
    after every G step), and `generate`/`sample` draw from it; 0 (the default) draws from G as it is.
    `update` is the step's rule: "alternating" (the default: `alternating_step`, Algorithm 1) or "simultaneous"
    (`simultaneous_step`, the rule of the PacGAN authors' code; k_disc must be 1).
    G's BatchNorm layers built with slots=pac take each pack slot's statistics apart (layers.BatchNorm): G then
    trains as if it made the m samples of every pack in m batches of B, as the PacGAN authors' code does.
    `real_packs` is how a step draws its reals (real_batches.py): "drawn" (the default) B m points of the data,
    uniform with replacement; "fixed" B of N packs of m points made once from the data and the seed, as the PacGAN
    authors' code trains.
    """

    def __init__(self, generator, discriminator, data, *, opt_g=None, opt_d=None, batch_size=64, k_disc=1,
                 loss="non-saturating", prior="normal", label_smoothing=0.0, seed=0, graph=True, pac=1, comm=None,
                 ema=0.0, update="alternating", real_packs="drawn"):
        G, D = generator, discriminator
        if G.backend is not D.backend or G.dtype != D.dtype:
            raise GanEngineError(f"G and D must share a backend and dtype, got {G.backend.name}/{G.dtype} "
                                 f"and {D.backend.name}/{D.dtype}")
        check_choice("generator loss", loss, GENERATOR_LOSSES)
        check_choice("noise prior", prior, PRIORS)
        if int(batch_size) != batch_size or batch_size < 1:
            raise GanEngineError(f"batch size must be a positive integer, got {batch_size}")
        if int(k_disc) != k_disc or k_disc < 1:
            raise GanEngineError(f"k_disc (D steps per G step) must be a positive integer, got {k_disc}")
        check_choice("update rule", update, UPDATES)
        check_choice("real packs", real_packs, REAL_PACKS)
        if update == "simultaneous" and k_disc != 1:
            raise GanEngineError(f"the simultaneous update makes one D and one G update a step: k_disc must be 1, "
                                 f"got {k_disc}")
        if not 0.0 <= label_smoothing < 1.0:
            raise GanEngineError(f"label smoothing must be in [0, 1), got {label_smoothing}")
        if isinstance(pac, bool) or int(pac) != pac or pac < 1:
            raise GanEngineError(f"pac (samples D sees at once) must be a positive integer, got {pac}")
        pac = int(pac)
        slots = {getattr(layer, "slots", 1) for layer in G.layers} - {1, pac}
        if slots:
            raise GanEngineError(f"G's batch norm takes the statistics of {min(slots)} pack slots apart, but pac is "
                                 f"{pac}: build its BatchNorm layers with slots={pac} (per pack slot) or 1")
        check_memory(G, D, int(batch_size) * pac)
        data = check_data(data, G.out_features)
        if pac * G.out_features != D.in_features:
            packed = f" (pac {pac} x {G.out_features})" if pac > 1 else ""
            raise GanEngineError(f"G makes samples of size {G.out_features} but D reads {D.in_features}; it must read "
                                 f"{pac * G.out_features}{packed}")
        self.G, self.D, self.backend = G, D, G.backend
        self.opt_g = opt_g or Adam(G, lr=2e-4, beta1=0.5)
        self.opt_d = opt_d or Adam(D, lr=2e-4, beta1=0.5)
        if self.opt_g.model is not G or self.opt_d.model is not D:
            raise GanEngineError("opt_g must be built on the generator and opt_d on the discriminator")
        warn_unusual(len(data), int(batch_size) * pac, {"G": self.opt_g, "D": self.opt_d})
        self.g_average = WeightAverage(G, ema)
        self.batch_size, self.k_disc, self.loss, self.prior, self.pac = int(batch_size), int(k_disc), loss, prior, pac
        self.label_smoothing = float(label_smoothing)
        self.update, self.real_packs = update, real_packs
        self._update_step = getattr(self, f"{update}_step")  # the rule's step: alternating_step, simultaneous_step
        self.z_dim = G.in_features
        self.comm = comm or ONE_PROCESS
        self.comm.share_training(G, D, self.batch_size)  # over several ranks: checks, NCCL, synchronized batch norm
        ranks, rank = self.comm.size, self.comm.rank
        self.local_batch = self.batch_size // ranks  # this rank's rows of every global batch
        be, xp, B, m = self.backend, self.backend.xp, self.local_batch, self.pac
        self.reals = REAL_BATCHES[real_packs](be, data, pac, seed, G.dtype)  # draws each step's real batch
        self.data = self.reals.data                               # (N, D) or (N m, D) fixed packs, on the backend
        self.rng = be.new_rng(seed)
        self.step_count = 0
        self.use_graph = bool(graph) and hasattr(be, "capture")
        self._graph = None      # (replay, its metrics, Adam step increments per replay) once captured
        self._eager_steps = 0   # since the start or the last load_state_dict, towards GRAPH_WARMUP_STEPS
        # D judges reals and fakes in one pass of 2 B inputs when no layer of D mixes the rows of its batch (no
        # batch norm): the same gradients as two passes, in half the calls and twice the rows a GEMM
        self.one_d_pass = getattr(D, "rows_independent", False)
        passes = 2 if self.one_d_pass else 1
        # Every rank draws the whole global batch (B ranks x B m indices and noise rows) from the same stream and
        # keeps its own B m: the ranks together see what one process would (B here: this rank's rows)
        mine = slice(rank * B * m, (rank + 1) * B * m)
        self._all_idx = xp.empty(ranks * B * m, dtype=np.int64)                     # (P B m,)
        self._first_row = mine.start                                                # this rank's in it
        self._samples = xp.empty((passes * B * m, G.out_features), dtype=G.dtype)  # (B m | 2 B m, F): reals, fakes
        self._real = self._samples[:B * m]                                          # (B m, F)
        self._all_z = xp.zeros((ranks * B * m, self.z_dim), dtype=G.dtype)         # (P B m, Z), zeros until drawn
        self._z = self._all_z[mine]                                                 # (B m, Z)
        self._dlogits = xp.empty((passes * B, 1), dtype=G.dtype)                   # (B | 2 B, 1)
        self._g_dlogits = xp.empty((B, 1), dtype=G.dtype)                          # simultaneous: G's, on fakes

    def _noise(self):
        self.backend.noise(self.rng, self.prior, self._all_z)
        return self._z

    def d_step(self):
        """One discriminator update on a fresh real batch and fresh fakes; G gets no gradient.

        Returns (loss, mean D(x), mean D(G(z))) as backend 0-d arrays.
        """
        loss, d_real, d_fake, _, _ = self._d_gradients()
        self.comm.average(self.D.flat_grads)  # over several ranks: their mean (one allreduce)
        self.opt_d.step()
        return loss, d_real, d_fake

    def _d_gradients(self):
        """D's gradients (zeroed first) of its loss on a fresh real batch and fresh fakes from G (whose forward
        stays cached for a backward). Returns (loss, mean D(x), mean D(G(z))), the fakes' logits (B, 1) and the
        fakes' rows in D's last forward (None: all of it), for a backward through D at the fakes."""
        be, D, B = self.backend, self.D, self.local_batch
        D.zero_grad()
        real = self.reals.draw_rows(self.rng, self._all_idx, self._first_row, self._real)  # (B m, F)
        fake = self.G.forward(self._noise())                                                # (B m, F)
        if self.one_d_pass:  # reals then fakes, (2 B m, F): one forward, the two losses in one call, one backward
            self._samples[len(real):] = fake
            logits = D.forward(self.pack(self._samples))                                   # (2 B, 1)
            loss, d_real, d_fake = d_loss(be, logits, self._dlogits, self.label_smoothing)
            D.backward(self._dlogits)
            return loss, d_real, d_fake, logits[B:], slice(B, None)
        loss_real, d_real = d_loss_real(be, D.forward(self.pack(real)), self._dlogits, self.label_smoothing)
        D.backward(self._dlogits)
        fake_logits = D.forward(self.pack(fake))                                          # (B, 1)
        loss_fake, d_fake = d_loss_fake(be, fake_logits, self._dlogits)
        D.backward(self._dlogits)
        return loss_real + loss_fake, d_real, d_fake, fake_logits, None

    def g_step(self):
        """One generator update through a fixed D (D's gradients are not accumulated). Returns the loss."""
        be, G, D = self.backend, self.G, self.D
        G.zero_grad()
        dlogits = self._dlogits[:self.local_batch]                                # (B, 1)
        loss, _ = g_loss(be, D.forward(self.pack(G.forward(self._noise()))), dlogits, self.loss)
        dfake = D.backward(dlogits, need_dx=True, param_grads=False)          # (B, m F)
        G.backward(dfake.reshape(self._z.shape[0], -1))                      # (B m, F)
        self.comm.average(G.flat_grads)
        self.opt_g.step()
        self.g_average.update()
        return loss

    def simultaneous_step(self):
        """One step of the rule in the PacGAN authors' code (the ALI algorithm of Dumoulin et al.): one real batch
        and one batch of fakes, D's loss and G's loss on the same logits, both players' gradients at the weights
        they had before the step, then both updates. G's batch norm sees one batch a step. Returns the step's
        metrics like `step`; d_fake is the fakes' mean D, before either update."""
        G, D = self.G, self.D
        G.zero_grad()
        d_loss, d_real, d_fake, fake_logits, fake_rows = self._d_gradients()
        loss_g, _ = g_loss(self.backend, fake_logits, self._g_dlogits, self.loss)
        dfake = D.backward(self._g_dlogits, need_dx=True, param_grads=False, rows=fake_rows)  # (B, m F)
        G.backward(dfake.reshape(self._z.shape[0], -1))                                      # (B m, F)
        self.comm.average(D.flat_grads)
        self.comm.average(G.flat_grads)
        self.opt_d.step()
        self.opt_g.step()
        self.g_average.update()
        self.step_count += 1
        return {"d_loss": d_loss, "g_loss": loss_g, "d_real": d_real, "d_fake": d_fake}

    def alternating_step(self):
        """k_disc D steps, then one G step on fresh noise through the updated D (Algorithm 1)."""
        for _ in range(self.k_disc):
            d_loss, d_real, d_fake = self.d_step()
        g = self.g_step()
        self.step_count += 1
        return {"d_loss": d_loss, "g_loss": g, "d_real": d_real, "d_fake": d_fake}

    def pack(self, x):
        """Samples (B m, F) -> D's packed input (B, m F): each row the features of m consecutive samples side by
        side (for flat images (C, H, W): m images stacked along the channels). Reals and fakes both go through
        here, so they are packed the same way. A view: no copy."""
        return x.reshape(x.shape[0] // self.pac, -1)

    def step(self):
        """One step of the trainer's update rule (`alternating_step` or `simultaneous_step`). Returns backend 0-d
        arrays: d_loss, g_loss, d_real, d_fake
        (D's figures are from the last D step, before its update). Replays the captured graph once there is one."""
        if self._graph is not None:
            replay, metrics, counts = self._graph
            replay()
            for opt, n in counts:
                opt.t += n
            self.step_count += 1
            return metrics
        if self.use_graph and self._eager_steps >= GRAPH_WARMUP_STEPS:
            return self._capture_step()
        self._eager_steps += 1
        return self._eager_step()

    def _capture_step(self):
        """Capture one step as a graph, then run it. If capture fails: warn, and stay eager for good."""
        counted = [(opt, opt.t) for opt in (self.opt_d, self.opt_g, self.g_average) if hasattr(opt, "t")]
        step_count = self.step_count
        try:
            replay, metrics = self.backend.capture(self._eager_step)
        except BaseException as exc:  # nothing ran on the device: the host counters go back too
            for opt, t in counted:
                opt.t = t
            self.step_count = step_count
            if not isinstance(exc, Exception):  # Ctrl-C: stop, with a state that matches the device
                raise
            self.use_graph = False
            warnings.warn(f"capturing the training step as a CUDA graph failed ({type(exc).__name__}: {exc}); "
                          "training goes on with eager launches", RuntimeWarning, stacklevel=3)
            return self.step()
        self._graph = (replay, metrics, [(opt, opt.t - t) for opt, t in counted])
        replay()  # capturing ran nothing on the device: this is the step
        return metrics

    def _eager_step(self):
        """The step's launches, one by one; host counters move as it goes."""
        return self._update_step()

    def read_metrics(self, metrics):
        """Backend metrics -> dict of floats; raises TrainingDiverged if any is NaN or infinite, or a loss is beyond
        LOSS_BOUND (a BCE that large means D's logits are in the thousands: the run has blown up)."""
        values = {k: float(self.backend.to_numpy(v)) for k, v in metrics.items()}
        values = self.comm.average_values(values)  # over several ranks (every rank calls this at the same steps)
        self.comm.check_same([self.G.flat_params, self.D.flat_params], "parameters")
        if not all(math.isfinite(v) for v in values.values()):
            raise TrainingDiverged(f"training diverged at step {self.step_count}: {values}")
        if max(abs(values["d_loss"]), abs(values["g_loss"])) > LOSS_BOUND:
            raise TrainingDiverged(f"training diverged at step {self.step_count}: a loss is beyond {LOSS_BOUND:g} "
                                   f"({values})")
        return values

    def train(self, steps, callback=None, every=100):
        """Run `steps` steps; every `every` steps (and at the last) call callback(step, metrics as floats).

        Returns the last metrics as floats. Raises TrainingDiverged on a NaN or infinite loss.
        """
        if int(steps) != steps or steps < 1:
            raise GanEngineError(f"steps must be a positive integer, got {steps}")
        for i in range(int(steps)):
            metrics = self.step()
            if (i + 1) % every == 0 or i + 1 == steps:
                values = self.read_metrics(metrics)
                if callback is not None:
                    callback(self.step_count, values)
        return values

    def generate(self, z):
        """Host noise z (n, Z) -> host samples (n, D) float32: G (its weight average, with `ema`) in eval mode, a
        copy safe to keep."""
        with self.g_average.applied():
            return generate(self.G, z)

    def sample(self, n=64, seed=None):
        """n host samples (n, D) from fresh prior noise drawn by its own generator (the training stream is
        left alone)."""
        return self.generate(sample_noise(n, self.z_dim, self.prior, seed))

    def state_dict(self):
        """Everything a resumed run needs: step, random state, both models, both optimizers and G's weight average
        (host arrays; the average empty without `ema`)."""
        return {"step": self.step_count, "rng": self.backend.rng_state(self.rng),
                "G": self.G.state_dict(), "D": self.D.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "G_average": self.g_average.state_dict()}

    def load_state_dict(self, state):
        """Restore a `state_dict`; the next step continues exactly as the saved run would have."""
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.g_average.load_state_dict(state.get("G_average", {}))  # none in checkpoints from before `ema`
        try:
            self.backend.set_rng_state(self.rng, state["rng"])
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            if isinstance(exc, GanEngineError):
                raise
            raise GanEngineError(f"the saved random state is damaged ({type(exc).__name__}: {exc})") from exc
        self.step_count = int(state["step"])
        self._graph, self._eager_steps = None, 0  # warm up and capture again from the restored state


def generate(G, z):
    """Host noise z (n, Z) -> host samples (n, D) float32 from generator G in eval mode (a copy).

    Runs GENERATE_BATCH rows at a time: in eval mode every sample is independent of the others, and the
    buffers a forward pass keeps (per batch shape) stay small however many samples are asked for.
    """
    z = np.asarray(z)
    if z.ndim != 2 or z.shape[1] != G.in_features:
        raise GanEngineError(f"noise must have shape (n, {G.in_features}), got {z.shape}")
    out = np.empty((z.shape[0], G.out_features), dtype=np.float32)
    for start in range(0, z.shape[0], GENERATE_BATCH):
        chunk = G.backend.asarray(z[start:start + GENERATE_BATCH], G.dtype)
        out[start:start + chunk.shape[0]] = G.backend.to_numpy(G.forward(chunk, train=False))
    return out


def sample_noise(n, z_dim, prior="normal", seed=None):
    """Host float32 noise (n, z_dim) from the prior, drawn by NumPy's generator seeded with `seed`."""
    if int(n) != n or n < 1:
        raise GanEngineError(f"the number of samples must be a positive integer, got {n}")
    check_choice("noise prior", prior, PRIORS)
    return noise(np.random.default_rng(seed), prior, np.empty((int(n), z_dim), dtype=np.float32))


def warn_unusual(n, batch_size, optimizers):
    """Warn, a line each, of settings that run but rarely train: a batch larger than the data (batches are drawn
    with replacement, so each repeats samples), fewer than FEW_SAMPLES samples, a learning rate above its
    optimizer's LARGE_LR. optimizers: {"G": opt, "D": opt}."""
    if batch_size > n:
        warnings.warn(f"the batch size {batch_size} is larger than the {n} training samples: every batch repeats "
                      f"samples (they are drawn with replacement); a batch of at most {n} is usual", stacklevel=3)
    if n < FEW_SAMPLES:
        warnings.warn(f"only {n} training samples: D can memorise so few and G learns to copy them; a GAN needs "
                      "hundreds at least, thousands to make new samples", stacklevel=3)
    for name, opt in optimizers.items():
        if opt.lr > opt.LARGE_LR:
            warnings.warn(f"{name}'s learning rate {opt.lr:g} is above {opt.LARGE_LR:g}, far beyond what "
                          f"{type(opt).__name__} trains GANs with: expect it to diverge", stacklevel=3)


def check_data(data, dim=None):
    """Validate training data: a finite float array (N, dim) with N >= 1. Returns it as a NumPy array."""
    data = np.asarray(data)
    if data.ndim != 2:
        raise GanEngineError(f"training data must be a 2-D array (samples, features), got shape {data.shape}")
    if not np.issubdtype(data.dtype, np.floating):
        raise GanEngineError(f"training data must be floating point (scaled to the model's range), got {data.dtype}")
    if data.shape[0] < 1:
        raise GanEngineError("training data is empty")
    if dim is not None and data.shape[1] != dim:
        raise GanEngineError(f"training data has {data.shape[1]} features per sample but the discriminator "
                             f"reads {dim}")
    bad = ~np.isfinite(data)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise GanEngineError(f"training data has {int(bad.sum())} NaN or infinite values (first in sample {row}); "
                             "clean or drop those samples")
    return data
