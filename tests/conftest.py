"""Shared fixtures: every backend through one parametrised fixture (unavailable ones skipped with the reason)."""
import pytest

from gan_engine.backends import BACKENDS, backend_status, get_backend

from . import cuda_emulator

EMULATED = "cuda-emulated"  # the cuda backend's launchers and kernels, run on the CPU (tests/cuda_emulator)
# test id -> the threads' order between barriers on the emulator (None: GAN_ENGINE_EMULATOR_ORDER, else forward)
EMULATED_ORDERS = {EMULATED: None, f"{EMULATED}-reversed": "reversed", f"{EMULATED}-shuffled": "shuffled"}


def _backend_params():
    status = {name: reason for name, ok, reason in backend_status() if not ok}
    params = []
    for name in BACKENDS:
        marks = [pytest.mark.gpu] if name == "cuda" else []
        if name in status:
            marks.append(pytest.mark.skip(reason=f"backend {name} unavailable: {status[name]}"))
        params.append(pytest.param(name, marks=marks, id=name))
    reason = cuda_emulator.available()
    marks = [pytest.mark.skip(reason=f"cannot emulate the CUDA kernels: {reason}")] if reason else []
    params += [pytest.param(name, marks=marks, id=name) for name in EMULATED_ORDERS]
    return params


def _backend(name, monkeypatch):
    if name not in EMULATED_ORDERS:
        return get_backend(name)
    return cuda_emulator.install(monkeypatch, EMULATED_ORDERS[name])


@pytest.fixture(params=_backend_params())
def backend(request, monkeypatch):
    """Each registered backend module in turn, and the cuda backend on the CPU emulator in each thread order."""
    return _backend(request.param, monkeypatch)


@pytest.fixture(params=[p for p in _backend_params() if p.values[0] == "cuda" or p.values[0] in EMULATED_ORDERS])
def cuda_backend(request, monkeypatch):
    """The cuda backend on a GPU, and on the CPU emulator in each thread order."""
    return _backend(request.param, monkeypatch)


@pytest.fixture
def ref():
    """The NumPy reference backend."""
    return get_backend("numpy")


@pytest.fixture(scope="session")
def classifier_cache(tmp_path_factory):
    """A classifier cache folder shared by the whole run, so the digits classifier is trained once."""
    return str(tmp_path_factory.mktemp("classifier-cache"))
