"""Checkpoints: one .npz holding both models, both optimizers, the step, the random state and the config.

Arrays are stored under "G/<param>", "D/<param>", "opt_g/<buffer>", "opt_d/<buffer>" and, for a run that averages
its generator, "G_average/<buffer>"; everything else is JSON in the 0-d string array "meta". Files are written
atomically (temporary file + rename), so a crash or Ctrl-C during a write never damages the previous checkpoint.
"""
import glob
import json
import os
import re
import zipfile

import numpy as np

from .errors import GanEngineError
from .io import atomic_path
from .trainer import TrainingDiverged

FORMAT = "gan-engine-checkpoint"
VERSION = 1
CHECKPOINT_DIR = "checkpoints"
PARTS = ("G", "D", "opt_g", "opt_d")  # every checkpoint has them
OPTIONAL_PARTS = ("G_average",)       # empty or absent (checkpoints from before it) when the run has none


def checkpoint_name(step):
    return os.path.join(CHECKPOINT_DIR, f"step_{step:08d}.npz")


def save_checkpoint(path, state, config, data_info):
    """Atomically write a Trainer.state_dict() with the run's config (dict) and data_info (dim, output, shape)."""
    arrays, scalars = {}, {}
    for part in PARTS + OPTIONAL_PARTS:
        scalars[part] = {}
        for key, value in state.get(part, {}).items():
            if isinstance(value, np.ndarray):
                if not np.isfinite(value).all():
                    raise TrainingDiverged(f"refusing to checkpoint non-finite values in {part}/{key} at step "
                                         f"{state['step']}: training diverged")
                arrays[f"{part}/{key}"] = value
            else:
                scalars[part][key] = value
    meta = {"format": FORMAT, "version": VERSION, "step": state["step"], "rng": state["rng"],
            "scalars": scalars, "config": config, "data": data_info}
    arrays["meta"] = np.array(json.dumps(meta))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())


def load_checkpoint(path):
    """Read a checkpoint file -> (state for Trainer.load_state_dict, config dict, data_info dict).

    Raises GanEngineError for a file that is missing, truncated, not a gan-engine checkpoint (pickled objects are
    refused, never run), has damaged metadata, or holds NaN or infinite parameters or optimizer state."""
    if not os.path.isfile(path):
        raise GanEngineError(f"checkpoint {path!r} does not exist")
    damaged = f"{path} is not a readable gan-engine checkpoint"
    pickled = (f"{path} is not a gan-engine checkpoint: it holds pickled Python objects, which gan-engine refuses "
               "to load (loading them could run code)")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:1] == b"\x80":  # a pickle (protocol 2 or later), which np.load would offer to unpickle
        raise GanEngineError(pickled)
    if magic != b"PK\x03\x04":
        raise GanEngineError(f"{damaged}: it is not an .npz archive; it may be truncated or corrupt")
    try:
        with np.load(path, allow_pickle=False) as f:
            files = {k: f[k] for k in f.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):  # an archive with object arrays in it
            raise GanEngineError(pickled) from exc
        raise GanEngineError(f"{damaged} ({exc}); it may be truncated or corrupt") from exc
    except (OSError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise GanEngineError(f"{damaged} ({exc}); it may be truncated or corrupt") from exc
    try:
        meta = _check_meta(json.loads(str(files.pop("meta"))))
    except (KeyError, ValueError, TypeError) as exc:
        raise GanEngineError(f"{damaged}: its metadata {exc}; it may be hand-edited or corrupt") from exc
    if meta["version"] > VERSION:
        raise GanEngineError(f"{path} was written by a newer gan-engine (checkpoint version {meta['version']})")
    state = {"step": meta["step"], "rng": meta["rng"]}
    for part in PARTS + OPTIONAL_PARTS:
        state[part] = dict(meta["scalars"].get(part, {}))
        prefix = part + "/"
        state[part].update({k[len(prefix):]: v for k, v in files.items() if k.startswith(prefix)})
        for key, value in state[part].items():
            if isinstance(value, np.ndarray) and not (value.dtype.kind == "f" and np.isfinite(value).all()):
                raise GanEngineError(f"{path} holds {'NaN or infinite' if value.dtype.kind == 'f' else 'non-float'} "
                                     f"values in {part}/{key}: the run had diverged or the file is damaged; use "
                                     "an earlier checkpoint")
    return state, meta["config"], meta["data"]


def _check_meta(meta):
    """meta as saved by save_checkpoint, or ValueError saying what is wrong with it."""
    if not isinstance(meta, dict):
        raise ValueError(f"is a {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT:
        raise ValueError("has no gan-engine format mark")
    kinds = {"version": int, "step": int, "rng": dict, "scalars": dict, "config": dict, "data": dict}
    for key, kind in kinds.items():
        if key not in meta:
            raise ValueError(f"lacks {key!r}")
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            raise ValueError(f"has {key!r} = {meta[key]!r}, not a{'n' if kind is int else ''} {kind.__name__}")
    if meta["step"] < 0 or meta["version"] < 1:
        raise ValueError(f"has step {meta['step']} and version {meta['version']}")
    for part in PARTS + OPTIONAL_PARTS:
        if not isinstance(meta["scalars"].get(part, None if part in PARTS else {}), dict):
            raise ValueError(f"lacks the scalars of {part}")
    return meta


def newest_good_checkpoint(run_dir):
    """(path, state, config, data_info) of the newest checkpoint in run_dir that loads and is finite, or None; and
    [(path, why)] for the newer ones skipped (left on disk, never deleted)."""
    skipped = []
    for path in reversed(all_checkpoints(run_dir)):
        try:
            return (path, *load_checkpoint(path)), skipped
        except GanEngineError as exc:
            skipped.append((path, str(exc)))
    return None, skipped


def checkpoint_step(path):
    """The step in a step checkpoint's name (.../step_00002000.npz -> 2000), or None for another file."""
    m = re.search(r"step_(\d+)\.npz$", path)
    return int(m.group(1)) if m else None


def all_checkpoints(run_dir):
    """Paths of the step checkpoints in run_dir/checkpoints, in step order."""
    paths = glob.glob(os.path.join(run_dir, CHECKPOINT_DIR, "step_*.npz"))
    return sorted((p for p in paths if checkpoint_step(p) is not None), key=checkpoint_step)


def latest_checkpoint(run_dir):
    """Path of the highest-step checkpoint in run_dir/checkpoints, or None."""
    paths = all_checkpoints(run_dir)
    return paths[-1] if paths else None


def resolve_checkpoint(path):
    """A checkpoint file, or a run folder (its latest checkpoint) -> checkpoint file path."""
    if os.path.isdir(path):
        found = latest_checkpoint(path)
        if found is None:
            raise GanEngineError(f"no checkpoints in {os.path.join(path, CHECKPOINT_DIR)}")
        return found
    if not os.path.exists(path):
        raise GanEngineError(f"checkpoint {path!r} does not exist")
    return path
