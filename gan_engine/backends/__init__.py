"""Backend registry: every backend is a module that computes the ops of ``numpy_ref`` under the same names.

Loading any backend sets up the thread policy (``threads``), which pins NumPy's BLAS to one thread.
``get_backend("auto")`` picks the first available of ``AUTO_ORDER``; the environment variable
``GAN_ENGINE_BACKEND`` replaces that choice ("auto" only: an explicit name always wins). A new backend joins by
adding one line to ``BACKENDS``; the engine never branches on the backend.
"""
import importlib
import os
import types

from ..errors import GanEngineError
from . import threads

# name -> module path. Each module defines `unavailable_reason()` (None when usable) and every op in numpy_ref.OPS.
BACKENDS = {
    "cuda": "gan_engine.backends.cupy_cuda",
    "numba": "gan_engine.backends.numba_cpu",
    "numpy": "gan_engine.backends.numpy_ref",
}
AUTO_ORDER = ("cuda", "numba", "numpy")
ENV_VAR = "GAN_ENGINE_BACKEND"

_loaded = {}


def _load(name):
    """Import a backend module; return (module or None, reason it is unavailable or None)."""
    if name not in _loaded:
        threads.policy()
        try:
            module = importlib.import_module(BACKENDS[name])
            reason = module.unavailable_reason()
        except ImportError as exc:
            module, reason = None, f"import failed: {exc}"
        _loaded[name] = (module if reason is None else None, reason)
    return _loaded[name]


def backend_status():
    """List of (name, available, reason) for every registered backend, in auto-selection order."""
    names = [n for n in AUTO_ORDER if n in BACKENDS] + [n for n in BACKENDS if n not in AUTO_ORDER]
    out = []
    for name in names:
        _, reason = _load(name)
        out.append((name, reason is None, reason or "available"))
    return out


def get_backend(name="auto"):
    """Return the backend module called `name` ("numpy", "numba", "cuda" or "auto"); a module passes through.

    "auto" (or None) reads GAN_ENGINE_BACKEND if set, else picks cuda > numba > numpy, the first available.
    """
    if isinstance(name, types.ModuleType):
        return name
    if name in (None, "auto"):
        name = os.environ.get(ENV_VAR, "auto") or "auto"
        if name == "auto":
            for candidate in AUTO_ORDER:
                if candidate in BACKENDS and _load(candidate)[1] is None:
                    return _load(candidate)[0]
            raise GanEngineError("no backend is available (this should not happen: numpy is always there)")
        source = f" (from {ENV_VAR})"
    else:
        source = ""
    if name not in BACKENDS:
        known = ", ".join(sorted(BACKENDS)) + ", auto"
        raise GanEngineError(f"unknown backend {name!r}{source}; choose one of: {known}")
    module, reason = _load(name)
    if module is None:
        raise GanEngineError(f"backend {name!r}{source} is not available: {reason}. "
                             "Run `gan-engine info` to see which backends are.")
    return module
