"""A training run in a folder: config.json, metrics.csv, loss.png, samples/, checkpoints/; resumable and
interruptible (Ctrl-C finishes the current step, writes a checkpoint and says how to resume).
"""
import contextlib
import csv
import dataclasses
import json
import os
import signal
import sys
import warnings

import numpy as np

from .checkpoint import (CHECKPOINT_DIR, checkpoint_name, latest_checkpoint, load_checkpoint, newest_good_checkpoint,
                         save_checkpoint)
from .config import RESUMABLE, TrainConfig, from_record, record
from .data import load_dataset
from .errors import GanEngineError, check_choice
from .estimate import StepClock, warm_up
from .interpolate import METHODS, interpolation_grid
from .io import write_json, write_text
from .metrics import Evaluator
from .models import build_discriminator, build_generator, hidden_sizes
from .optim import WeightAverage, make_optimizer
from .plots import save_image_grid, save_loss_curve, save_scatter
from .trainer import METRICS, Trainer, TrainingDiverged, generate, sample_noise

FIXED_IMAGES = 64   # the sample grid's fixed noise batch
FIXED_POINTS = 2500  # the scatter plot's fixed noise batch (the VEEGAN / PacGAN sample count)
SCATTER_REAL = 5000


def build_trainer(config, dataset, comm=None):
    """A Trainer for a TrainConfig on a Dataset (models seeded from config.seed), over the ranks of `comm` if given."""
    info = data_info(dataset)
    G = build_generator(config, info)
    D = build_discriminator(config, info)
    hyper = dict(beta1=config.beta1, beta2=config.beta2, momentum=config.momentum)
    return Trainer(G, D, dataset.x, batch_size=config.batch_size, k_disc=config.k_disc, loss=config.loss,
                   prior=config.prior, label_smoothing=config.label_smoothing, seed=config.seed, pac=config.pac,
                   ema=config.ema, update=config.update, real_packs=config.real_packs, comm=comm,
                   opt_g=make_optimizer(config.optimizer, G, config.lr_g, **hyper),
                   opt_d=make_optimizer(config.optimizer, D, config.lr_d, **hyper))


def data_info(dataset):
    """What sampling needs to know of the data without loading it again."""
    return {"name": dataset.name, "dim": dataset.dim, "output": dataset.output,
            "image_shape": list(dataset.image_shape) if dataset.image_shape else None}


def save_samples(samples, info, path, real=None, title=None):
    """Samples (n, D) -> a PNG: an image grid, or a scatter plot (over `real` points when given) for 2-D data."""
    if info["image_shape"]:
        save_image_grid(samples, tuple(info["image_shape"]), path)
    else:
        save_scatter(samples, path, real=real, title=title)


class Run:
    """A run folder. `Run(out, config).train()` starts one; `Run.resume(out, overrides).train()` continues one."""

    def __init__(self, out, config, state=None, progress=True, restart=False, comm=None):
        self.out, self.config, self.progress = out, config, progress
        self.dataset = load_dataset(config.dataset, config.data, config.image_size, config.channels)
        self.trainer = build_trainer(config, self.dataset, comm)
        self.info = data_info(self.dataset)
        self.history = {"step": [], **{k: [] for k in METRICS}}
        self.evaluator = Evaluator(self.dataset) if config.metrics_every else None
        self.columns = ("step",) + METRICS + (self.evaluator.names if self.evaluator else ())  # metrics.csv
        self.best = None  # best.json's contents: the best checkpoint so far by Evaluator.score
        self.bar = None   # the progress bar while train() runs
        if state is not None:
            self.trainer.load_state_dict(state)
        self._open_folder(state is not None, restart)
        n = FIXED_IMAGES if self.info["image_shape"] else FIXED_POINTS
        self.fixed_noise = sample_noise(n, config.z_dim, config.prior, seed=[config.seed, 1])
        if self.evaluator:
            self.eval_noise = evaluation_noise(config, self.evaluator.size)

    def _open_folder(self, resumed, restart):
        """A new run's folder and metrics.csv header, or a resumed run's history and best; then config.json."""
        out = self.out
        if not resumed:
            if not restart and (os.path.exists(os.path.join(out, "config.json")) or latest_checkpoint(out)):
                raise GanEngineError(f"{out} already holds a run; continue it with `gan-engine train --resume {out}` "
                                     "or choose another --out")
            os.makedirs(out, exist_ok=True)
            write_text(self.metrics_path, ",".join(self.columns) + "\n")
        else:
            self._load_history()
            self._load_best()
        write_json(os.path.join(out, "config.json"), record(self.config, self.resolved()))

    @classmethod
    def resume(cls, out, overrides=None, progress=True, comm=None):
        """Continue the run in `out` from its newest checkpoint that loads and is finite (newer damaged ones are
        skipped with a warning and left on disk); a run stopped before its first checkpoint starts again from
        step 0 with its recorded config.json. `overrides` may change only RESUMABLE options."""
        if not os.path.isdir(out):
            raise GanEngineError(f"nothing to resume: {out} is not a folder")
        remove_temporary_files(out)
        good, skipped = newest_good_checkpoint(out)
        for path, why in skipped:
            warnings.warn(f"skipped {path}: {why}", RuntimeWarning, stacklevel=2)
        if good is None:
            config = _recorded_config(out, skipped)
            state = None
            warnings.warn(f"{out} has no usable checkpoint yet: it starts again from step 0 with its recorded "
                          "config.json", RuntimeWarning, stacklevel=2)
        else:
            path, state, saved, _ = good
            try:
                config = TrainConfig.from_dict(saved)
            except GanEngineError as exc:
                raise GanEngineError(f"the config saved in {path} is damaged: {exc}") from exc
        for key, value in (overrides or {}).items():
            if key not in RESUMABLE and value != getattr(config, key):
                raise GanEngineError(f"cannot change {key.replace('_', '-')} when resuming (the run used "
                                     f"{getattr(config, key)!r}); only {', '.join(RESUMABLE)} may change")
        config = dataclasses.replace(config, **{k: v for k, v in (overrides or {}).items() if k in RESUMABLE})
        if state is not None and config.steps <= state["step"]:
            raise GanEngineError(f"the run is already at step {state['step']}; pass --steps N with N > "
                                 f"{state['step']} to train further")
        return cls(out, config, state, progress, restart=state is None, comm=comm)

    def resolved(self):
        """The config with what the run resolved in place of "auto" and the defaults left as null."""
        g_hidden, d_hidden = hidden_sizes(self.config, self.info)
        c, h, _ = self.info["image_shape"] if self.config.dataset == "folder" else (None, None, None)
        return dataclasses.replace(self.config, backend=self.trainer.backend.name, g_hidden=g_hidden,
                                   d_hidden=d_hidden, image_size=h, channels=c)

    @property
    def metrics_path(self):
        return os.path.join(self.out, "metrics.csv")

    def _load_history(self):
        """Read metrics.csv, dropping rows past the checkpoint's step (a run killed after its last checkpoint).
        Columns it already has are kept, even when this resumed run no longer measures them."""
        step = self.trainer.step_count
        try:
            with open(self.metrics_path, newline="") as f:
                reader = csv.DictReader(f)
                rows = [r for r in reader if int(r["step"]) <= step]
                old = tuple(reader.fieldnames or ())
        except (OSError, KeyError, ValueError) as exc:
            raise GanEngineError(f"cannot read {self.metrics_path} ({exc})") from exc
        self.columns += tuple(c for c in old if c not in self.columns)
        lines = [",".join(self.columns)] + [",".join(r.get(k) or "" for k in self.columns) for r in rows]
        write_text(self.metrics_path, "\n".join(lines) + "\n")
        for r in rows:
            self.history["step"].append(int(r["step"]))
            for k in METRICS:
                self.history[k].append(float(r[k]))

    def _load_best(self):
        path = os.path.join(self.out, "best.json")
        if os.path.exists(path):
            try:
                with open(path) as f:
                    self.best = json.load(f)
            except (OSError, ValueError) as exc:
                raise GanEngineError(f"cannot read {path} ({exc}); remove it to start the best checkpoint afresh") from exc

    def train(self):
        """Train to config.steps. Returns "done" or "interrupted" (after Ctrl-C, with a checkpoint written).

        Raises GanEngineError when training diverges; the last good checkpoint stays as it was.
        """
        from tqdm import tqdm
        warm_up(self.trainer.backend, self.trainer.G.dtype, self.say)  # before the bar: its ETA starts after it
        interrupted = []
        previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
        self.bar = bar = tqdm(total=self.config.steps, initial=self.trainer.step_count, disable=not self.progress,
                              unit="step", dynamic_ncols=True, file=sys.stderr)
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # NaN and inf are detected and reported below
                stopped = self._loop(bar, interrupted)
        except TrainingDiverged as exc:
            good, _ = newest_good_checkpoint(self.out)
            where = f"the last good checkpoint is {good[0]}" if good else "no checkpoint was written"
            raise GanEngineError(f"{exc}; {where}. Try a smaller learning rate.") from exc
        except OSError as exc:  # a full or read-only disk: every checkpoint written so far is whole
            good, _ = newest_good_checkpoint(self.out)
            where = (f"the last good checkpoint is {good[0]}; continue with `gan-engine train --resume {self.out}`"
                     if good else "no checkpoint was written")
            raise GanEngineError(f"cannot write {exc.filename or 'to ' + self.out}: {exc.strerror or exc}; "
                                 f"{where} once that is fixed") from exc
        finally:
            bar.close()
            self.bar = None
            signal.signal(signal.SIGINT, previous)
        if stopped:
            self.checkpoint()
            self.save_pictures(self.trainer.step_count)  # a run stopped before its first sample step has one too
            return "interrupted"
        return "done"

    def say(self, line):
        """Print a line of news (a compile notice, the time estimate) without breaking the progress bar."""
        if self.bar is not None and self.progress:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def _loop(self, bar, interrupted):
        """Step to config.steps; True when Ctrl-C stopped it first (every rank at the same step)."""
        cfg, trainer = self.config, self.trainer
        clock = StepClock(cfg.steps)
        while trainer.step_count < cfg.steps:
            if trainer.comm.any(interrupted):  # over several ranks: all stop at the same step
                return True
            metrics = trainer.step()
            step = trainer.step_count
            bar.update(1)
            estimate = clock.tick(step)
            if estimate:
                self.say(estimate)
            last = step == cfg.steps
            measure = cfg.metrics_every and (step % cfg.metrics_every == 0 or last)
            quality = self.evaluate(step) if measure else None
            if step % cfg.log_every == 0 or last or measure:
                self._log(step, metrics, bar, quality)
            if step % cfg.sample_every == 0 or last:
                self.save_pictures(step)
            if step % cfg.checkpoint_every == 0 or last:
                self.checkpoint()
        return False

    def _log(self, step, metrics, bar, quality=None):
        values = self.trainer.read_metrics(metrics)
        self.history["step"].append(step)
        for k in METRICS:
            self.history[k].append(values[k])
        row = {"step": step, **values, **(quality or {})}
        with open(self.metrics_path, "a") as f:
            f.write(",".join(repr(row[k]) if k in row else "" for k in self.columns) + "\n")
        bar.set_postfix({k: f"{v:.3f}" for k, v in values.items()}, refresh=False)

    def evaluate(self, step):
        """Sample-quality metrics of G now (from a fixed noise batch); a new best writes best.npz and best.json."""
        samples = self.trainer.generate(self.eval_noise)
        if not np.isfinite(samples).all():
            raise TrainingDiverged(f"training diverged at step {step}: the generator makes non-finite samples")
        result = self.evaluator.evaluate(samples)
        score = self.evaluator.score(result["generated"])
        if self.best is None or score > self.best["score"]:
            save_checkpoint(os.path.join(self.out, "best.npz"), self.trainer.state_dict(), self.config.to_dict(),
                            self.info)
            self.best = {"step": step, "score": score, **result}
            write_json(os.path.join(self.out, "best.json"), self.best)
        return result["generated"]

    def save_pictures(self, step):
        """samples/step_N.png from the fixed noise batch, and loss.png."""
        samples = self.trainer.generate(self.fixed_noise)
        real = self.dataset.x[:SCATTER_REAL] if self.info["image_shape"] is None else None
        save_samples(samples, self.info, os.path.join(self.out, "samples", f"step_{step:08d}.png"), real,
                     title=f"{self.dataset.name}, step {step}")
        if self.history["step"]:
            save_loss_curve(self.history["step"], self.history, os.path.join(self.out, "loss.png"),
                            title=f"{os.path.basename(os.path.abspath(self.out))}: {self.config.model} GAN on "
                                  f"{self.dataset.name}, {self.trainer.backend.name}")

    def checkpoint(self):
        """Write checkpoints/step_N.npz for the current step (atomically)."""
        state = self.trainer.state_dict()
        path = os.path.join(self.out, checkpoint_name(state["step"]))
        save_checkpoint(path, state, self.config.to_dict(), self.info)
        return path


def _recorded_config(out, skipped):
    """The TrainConfig in out/config.json of a run with no usable checkpoint, or GanEngineError."""
    path = os.path.join(out, "config.json")
    if not os.path.exists(path):
        why = f" (and {len(skipped)} damaged checkpoints)" if skipped else ""
        raise GanEngineError(f"nothing to resume in {out}: no config.json and no usable checkpoint in "
                             f"{os.path.join(out, CHECKPOINT_DIR)}{why}")
    try:
        with open(path) as f:
            return from_record(json.load(f))
    except (OSError, ValueError, TypeError) as exc:  # GanEngineError is a ValueError
        raise GanEngineError(f"cannot resume {out}: {path} is damaged ({exc}) and there is no usable checkpoint; "
                             "start a new run with another --out") from exc


def remove_temporary_files(out):
    """Remove the temporary files (".<name>.<random>.tmp", io.atomic_path's) that a killed write left in a run
    folder: its top, checkpoints/ and samples/."""
    for folder in (out, os.path.join(out, CHECKPOINT_DIR), os.path.join(out, "samples")):
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                if name.startswith(".") and name.endswith(".tmp"):
                    with contextlib.suppress(FileNotFoundError):  # another rank of the run removed it first
                        os.remove(os.path.join(folder, name))


def load_generator(path, backend="auto", average=True):
    """(G with the checkpoint's weights, its TrainConfig, its data_info, its step) from a checkpoint file; a run
    that averaged its generator (--ema) gives the averaged weights, the ones its samples and metrics came from
    (average=False: G's own weights at that step)."""
    state, saved, info = load_checkpoint(path)
    config = TrainConfig.from_dict({**saved, "backend": backend})
    G = build_generator(config, info)
    G.load_state_dict(state["G"])
    if average:
        weights = WeightAverage(G, config.ema)
        weights.load_state_dict(state["G_average"])
        weights.apply()
    return G, config, info, state["step"]


def generate_from_checkpoint(path, n, seed=0, backend="auto"):
    """(samples (n, D) host array, data_info) from a checkpoint file, with G rebuilt from its config."""
    G, config, info, _ = load_generator(path, backend)
    return generate(G, sample_noise(n, config.z_dim, config.prior, seed)), info


def evaluation_noise(config, n, seed=None):
    """The noise (n, z_dim) that sample quality is measured on: the run's own fixed draw (the one --metrics-every
    uses, so a checkpoint measures the same in training and in `evaluate`), or one from `seed`."""
    return sample_noise(n, config.z_dim, config.prior, seed=[config.seed, 2] if seed is None else seed)


def evaluate_checkpoints(paths, seed=None, backend="auto", cache_dir=None, average=True):
    """For each checkpoint path in turn, yield the sample-quality metrics of its generator (its weight average, if
    the run kept one and `average`) and their real-data calibration (metrics.Evaluator) with "step" and
    "checkpoint", on evaluation_noise(config, size, seed). The run's data is loaded and prepared once."""
    evaluator = None
    for path in paths:
        G, config, _, step = load_generator(path, backend, average)
        if evaluator is None:
            dataset = load_dataset(config.dataset, config.data, config.image_size, config.channels)
            evaluator = Evaluator(dataset, cache_dir)
        samples = generate(G, evaluation_noise(config, evaluator.size, seed))
        yield {"step": step, "checkpoint": path, **evaluator.evaluate(samples)}


def interpolate_from_checkpoint(path, rows=8, steps=10, method="linear", seed=0, backend="auto"):
    """(samples (rows * steps, D) host array, data_info): G decodes `rows` latent paths of `steps` points each."""
    check_choice("interpolation", method, METHODS)
    G, config, info, _ = load_generator(path, backend)
    if not info["image_shape"]:
        raise GanEngineError(f"interpolate draws image grids, but {info['name']} is 2-D points; "
                             "use `gan-engine sample` for a scatter plot")
    return generate(G, interpolation_grid(rows, steps, config.z_dim, config.prior, method, seed)), info
