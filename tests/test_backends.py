"""The backend registry: names, auto selection, the environment override, clear errors."""
import pytest

from gan_engine import GanEngineError, backend_status, get_backend
from gan_engine.backends import AUTO_ORDER, BACKENDS
from gan_engine.backends import numpy_ref


def test_numpy_is_always_available():
    assert ("numpy", True, "available") in backend_status()
    assert get_backend("numpy") is numpy_ref


def test_auto_picks_the_first_available_in_order(monkeypatch):
    monkeypatch.delenv("GAN_ENGINE_BACKEND", raising=False)
    first = next(name for name, ok, _ in backend_status() if ok)
    assert get_backend("auto").name == first == get_backend(None).name
    assert [n for n, _, _ in backend_status()][:1] == [n for n in AUTO_ORDER if n in BACKENDS][:1]


def test_environment_overrides_auto_but_not_an_explicit_name(monkeypatch):
    monkeypatch.setenv("GAN_ENGINE_BACKEND", "numpy")
    assert get_backend("auto") is numpy_ref
    monkeypatch.setenv("GAN_ENGINE_BACKEND", "abacus")
    with pytest.raises(GanEngineError, match="unknown backend 'abacus' \\(from GAN_ENGINE_BACKEND\\)"):
        get_backend("auto")
    assert get_backend("numpy") is numpy_ref


def test_unknown_backend_lists_the_choices():
    with pytest.raises(GanEngineError, match="choose one of: .*numpy.*auto"):
        get_backend("tpu")


def test_every_backend_provides_every_reference_op(backend):
    missing = [op for op in numpy_ref.OPS if not callable(getattr(backend, op, None))]
    assert not missing, f"backend {backend.name} lacks {missing}"
