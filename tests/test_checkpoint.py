"""Checkpoints: round trip, atomic writes that never damage the previous file, clear errors on bad files."""
import os

import numpy as np
import pytest

from gan_engine import GanEngineError, TrainingDiverged
from gan_engine.checkpoint import latest_checkpoint, load_checkpoint, resolve_checkpoint, save_checkpoint
from gan_engine.io import atomic_path

from .test_trainer import make, run


def test_round_trip(tmp_path):
    t = make()
    run(t, 3)
    path = str(tmp_path / "c.npz")
    save_checkpoint(path, t.state_dict(), {"seed": 0}, {"dim": 6})
    state, config, info = load_checkpoint(path)
    assert config == {"seed": 0} and info == {"dim": 6} and state["step"] == 3
    assert state["opt_g"]["t"] == 3
    fresh = make(seed=4)
    fresh.load_state_dict(state)
    assert run(fresh, 2) == run(t, 2)


def test_failed_write_leaves_the_previous_checkpoint_whole(tmp_path):
    t = make()
    path = str(tmp_path / "c.npz")
    save_checkpoint(path, t.state_dict(), {}, {})
    before = open(path, "rb").read()
    state = t.state_dict()
    state["G"]["0.W"][0, 0] = np.inf
    with pytest.raises(TrainingDiverged, match="non-finite values in G/0.W"):
        save_checkpoint(path, state, {}, {})
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            open(tmp, "wb").write(b"half")
            raise RuntimeError("crash mid-write")
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["c.npz"]  # no temporary files left behind


def test_bad_files(tmp_path):
    with pytest.raises(GanEngineError, match="does not exist"):
        load_checkpoint(str(tmp_path / "none.npz"))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(GanEngineError, match="not a readable gan-engine checkpoint"):
        load_checkpoint(str(tmp_path / "junk.npz"))
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(GanEngineError, match="not a readable gan-engine checkpoint"):
        load_checkpoint(str(tmp_path / "other.npz"))
    with pytest.raises(GanEngineError, match="no checkpoints"):
        resolve_checkpoint(str(tmp_path))


def test_latest_checkpoint_is_the_highest_step(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    for step in (900, 10000, 2000):
        (tmp_path / "checkpoints" / f"step_{step:08d}.npz").write_bytes(b"")
    assert latest_checkpoint(str(tmp_path)).endswith("step_00010000.npz")
