"""Checkpoints: one .npz holding both models, both optimizers, the step, the random state and the config.

Arrays are stored under "G/<param>", "D/<param>", "opt_g/<buffer>", "opt_d/<buffer>"; everything else is JSON in
the 0-d string array "meta". Files are written atomically (temporary file + rename), so a crash or Ctrl-C
during a write never damages the previous checkpoint.
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


def checkpoint_name(step):
    return os.path.join(CHECKPOINT_DIR, f"step_{step:08d}.npz")


def save_checkpoint(path, state, config, data_info):
    """Atomically write a Trainer.state_dict() with the run's config (dict) and data_info (dim, output, shape)."""
    arrays, scalars = {}, {}
    for part in ("G", "D", "opt_g", "opt_d"):
        scalars[part] = {}
        for key, value in state[part].items():
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
    """Read a checkpoint file -> (state for Trainer.load_state_dict, config dict, data_info dict)."""
    if not os.path.isfile(path):
        raise GanEngineError(f"checkpoint {path!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            files = {k: f[k] for k in f.files}
        meta = json.loads(str(files.pop("meta")))
        if meta.get("format") != FORMAT:
            raise ValueError("no gan-engine metadata")
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise GanEngineError(f"{path} is not a readable gan-engine checkpoint ({exc}); it may be truncated or "
                             "corrupt: use an earlier checkpoint from the same run folder") from exc
    if meta["version"] > VERSION:
        raise GanEngineError(f"{path} was written by a newer gan-engine (checkpoint version {meta['version']})")
    state = {"step": meta["step"], "rng": meta["rng"]}
    for part in ("G", "D", "opt_g", "opt_d"):
        state[part] = dict(meta["scalars"][part])
        prefix = part + "/"
        state[part].update({k[len(prefix):]: v for k, v in files.items() if k.startswith(prefix)})
    return state, meta["config"], meta["data"]


def all_checkpoints(run_dir):
    """Paths of the step checkpoints in run_dir/checkpoints, in step order."""
    paths = glob.glob(os.path.join(run_dir, CHECKPOINT_DIR, "step_*.npz"))
    steps = [(int(m.group(1)), p) for p in paths if (m := re.search(r"step_(\d+)\.npz$", p))]
    return [p for _, p in sorted(steps)]


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
