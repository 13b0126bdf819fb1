"""Test helpers: tolerance comparison with a useful failure message, finite-difference gradients, mpiexec."""
import os
import shutil
import sys

import numpy as np
import pytest


def assert_close(name, out, ref, atol=1e-6, rtol=1e-6):
    """Assert |out - ref| <= atol + rtol * |ref| elementwise, naming the tensor, the worst index and some pairs."""
    out, ref = np.asarray(out, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert out.shape == ref.shape, f"{name}: shape {out.shape} != reference shape {ref.shape}"
    excess = np.abs(out - ref) - (atol + rtol * np.abs(ref))
    if out.size and (np.isnan(out).any() or excess.max() > 0):
        worst = np.unravel_index(np.nanargmax(np.where(np.isnan(out), np.inf, excess)), out.shape)
        bad = np.argwhere(~(excess <= 0))[:5]
        pairs = ", ".join(f"{tuple(i)}: {out[tuple(i)]:.8g} vs {ref[tuple(i)]:.8g}" for i in bad)
        raise AssertionError(f"{name}: {int((~(excess <= 0)).sum())} of {out.size} values out of tolerance "
                             f"(atol={atol}, rtol={rtol}); worst at {worst}: {out[worst]:.8g} vs {ref[worst]:.8g}; "
                             f"{pairs}")


def numerical_grad(f, x, eps=1e-6):
    """Central-difference gradient of the scalar f() with respect to the array x (perturbed in place)."""
    g = np.zeros(x.shape, dtype=np.float64)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return g


def rel_error(a, b):
    """||a - b|| / (||a|| + ||b||), 0 when both are zero."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    return 0.0 if denom == 0 else float(np.linalg.norm(a - b) / denom)


def mpiexec():
    """The mpiexec of this environment (on PATH, or beside this Python: the MPICH wheel's), or fail the test."""
    pytest.importorskip("mpi4py", reason="needs mpi4py: pip install -e '.[mpi]'")
    found = shutil.which("mpiexec", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    return found or pytest.fail("mpi4py is installed but no mpiexec is on PATH or beside this Python")
