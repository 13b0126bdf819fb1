"""CUDA C sources of the engine's kernels, one file per op family (installed as ``gan_engine.kernels``).

The CUDA backend compiles them at run time with CuPy's NVRTC; the tests compile every one with NVRTC for each
architecture in ARCHITECTURES, GPU or not, so a kernel that does not compile fails everywhere.
"""
import hashlib
import re
from pathlib import Path

DIRECTORY = Path(__file__).resolve().parent  # where the sources are read from (a benchmark may point it elsewhere)
ARCHITECTURES = ("sm_80", "sm_90")  # A100, H100 / H200
WARNINGS_AS_ERRORS = ("-Werror", "all-warnings")  # the tests' compile check, per architecture


def options():
    """NVRTC options of the CUDA backend's compilations (CuPy adds the device's architecture)."""
    return ("--std=c++17", f"--include-path={DIRECTORY}")


def sources():
    """name -> CUDA C text of every .cu file, e.g. "dense" -> the text of dense.cu."""
    return {path.stem: path.read_text() for path in sorted(DIRECTORY.glob("*.cu"))}


def fingerprint():
    """A hash of every .cu and .cuh file. CuPy's kernel cache keys on a source's own text, not on the headers it
    includes, so the CUDA backend passes this as a define: a header edit then recompiles."""
    digest = hashlib.sha1()
    for path in sorted(DIRECTORY.glob("*.cu*")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def constant(name):
    """The integer of `#define name <integer>` in the kernel sources (e.g. "REDUCE_THREADS" -> 256): a launch
    constant is written once, in the .cu or .cuh file whose kernels assume it, and the backend reads it there."""
    for path in sorted(DIRECTORY.glob("*.cu*")):
        found = re.search(rf"^#define\s+{name}\s+(\d+)\s*$", path.read_text(), re.M)
        if found:
            return int(found.group(1))
    raise KeyError(f"no '#define {name} <integer>' in {DIRECTORY}")
