"""Every CUDA source compiles with NVRTC for every target architecture, warnings as errors, with or without a
GPU (NVRTC needs no driver: the cuda-python bindings and the nvidia-cuda-nvrtc wheel are dev dependencies)."""
import re
import shutil
import subprocess

import numpy as np
import pytest

from gan_engine import kernels
from gan_engine.backends import cupy_cuda

from . import cuda_emulator

try:
    from cuda.bindings import nvrtc
except ImportError as exc:  # pragma: no cover - the dev install has it
    nvrtc = None
    MISSING = f"cuda-python's NVRTC bindings are not installed ({exc}); pip install -e '.[dev]'"

SOURCES = kernels.sources()


def compile_source(name, text, arch, extra=()):
    """(ok, log) of compiling `text` for `arch` with the kernels' options (and `extra` ones)."""
    err, program = nvrtc.nvrtcCreateProgram(text.encode(), f"{name}.cu".encode(), 0, [], [])
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, err
    options = [f"--gpu-architecture={arch}".encode()]
    options += [o.encode() for o in (*kernels.options(), *kernels.WARNINGS_AS_ERRORS, *extra)]
    (result,) = nvrtc.nvrtcCompileProgram(program, len(options), options)
    _, size = nvrtc.nvrtcGetProgramLogSize(program)
    log = b" " * size
    nvrtc.nvrtcGetProgramLog(program, log)
    nvrtc.nvrtcDestroyProgram(program)
    return result == nvrtc.nvrtcResult.NVRTC_SUCCESS, log.decode(errors="replace").strip()


@pytest.mark.skipif(nvrtc is None, reason=MISSING if nvrtc is None else "")
@pytest.mark.parametrize("arch", kernels.ARCHITECTURES)
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_kernel_source_compiles(name, arch):
    ok, log = compile_source(name, SOURCES[name], arch)
    assert ok, f"{name}.cu does not compile for {arch}:\n{log}"


GEMM_SOURCES = sorted(name for name, text in SOURCES.items() if '#include "gemm.cuh"' in text)


@pytest.mark.skipif(nvrtc is None, reason=MISSING if nvrtc is None else "")
@pytest.mark.parametrize("tile", sorted(cupy_cuda.GEMM_TILES), ids=lambda t: f"{t[0]}x{t[1]}")
@pytest.mark.parametrize("name", GEMM_SOURCES)
def test_gemm_sources_compile_for_every_tile_shape(name, tile):
    """The CUDA backend compiles dense.cu and conv.cu once per gemm.cuh tile shape it uses (-DTILE_M, -DTILE_N)."""
    ok, log = compile_source(name, SOURCES[name], kernels.ARCHITECTURES[-1], (f"-DTILE_M={tile[0]}",
                                                                             f"-DTILE_N={tile[1]}"))
    assert ok, f"{name}.cu does not compile for tile {tile}:\n{log}"
    assert GEMM_SOURCES == ["conv", "dense"]


@pytest.mark.skipif(nvrtc is None, reason=MISSING if nvrtc is None else "")
def test_the_compile_check_catches_a_warning():
    ok, log = compile_source("broken", "extern \"C\" __global__ void k(float* x) { int unused; x[0] = 1.f; }",
                             kernels.ARCHITECTURES[0])
    assert not ok and "unused" in log


def test_every_kernel_is_named_after_an_op_and_documented():
    """extern "C" kernels are `<op>_kernel` (or a helper the file's header lists) and each file opens with a
    header comment naming its kernels and shapes."""
    for name, text in SOURCES.items():
        header = text.split("\n\n")[0]
        assert header.startswith(f"// {name}.cu:"), f"{name}.cu must open with a '// {name}.cu: ...' header"
        for _, kernel in re.findall(r'extern "C" __global__ void(?:\s+' + cuda_emulator.LAUNCH_BOUNDS + r')?\s+(\w+)',
                                    text):
            assert kernel.endswith("_kernel"), f"{name}.cu: kernel {kernel} does not end in _kernel"
            assert kernel in header, f"{name}.cu: kernel {kernel} is not listed in the header comment"


# Philox4x32-10 known answers from Salmon et al.'s Random123 (kat_vectors): counter, key -> output.
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]
# philox.cuh built for the host with the kernel emulator's CUDA definitions (tests/cuda_emulator/emulator.h).
KAT_MAIN = """
#include <cstdio>
#include "philox.cuh"
int main() {
    unsigned a, b, c, d, k0, k1;
    while (scanf("%x %x %x %x %x %x", &a, &b, &c, &d, &k0, &k1) == 6) {
        uint4 r = philox4x32_10(make_uint4(a, b, c, d), make_uint2(k0, k1));
        printf("%x %x %x %x\\n", r.x, r.y, r.z, r.w);
    }
}
"""


DIVISOR_MAIN = """
#include <cstdio>
#include "common.cuh"
int main() {
    int d;
    unsigned x, r;
    while (scanf("%d %u", &d, &x) == 2) {
        const unsigned q = Divisor(d).divmod(x, r);
        printf("%u %u\\n", q, r);
    }
}
"""


def run_on_host(tmp_path, main, lines):
    """The output lines of the C++ program `main`, built with g++ against the kernels' headers (and the emulator's
    stand-ins for CUDA's built-ins), given `lines` on its standard input."""
    (tmp_path / "main.cpp").write_text(main)
    subprocess.run(["g++", "-std=c++17", "-O1", "-include", str(cuda_emulator.HEADER), f"-I{kernels.DIRECTORY}",
                    "-o", str(tmp_path / "main"), str(tmp_path / "main.cpp")], check=True, capture_output=True,
                   text=True)
    done = subprocess.run([str(tmp_path / "main")], input="\n".join(lines), capture_output=True, text=True,
                          check=True)
    return done.stdout.splitlines()


HOST_COMPILER = pytest.mark.skipif(shutil.which("g++") is None, reason="no host C++ compiler (g++) to build with")


@HOST_COMPILER
def test_philox_matches_the_known_answers(tmp_path):
    lines = [" ".join(f"{v:x}" for v in ctr + key) for ctr, key, _ in PHILOX_KAT]
    got = [tuple(int(v, 16) for v in line.split()) for line in run_on_host(tmp_path, KAT_MAIN, lines)]
    assert got == [want for _, _, want in PHILOX_KAT]


@HOST_COMPILER
def test_divisor_divides_as_integer_division(tmp_path):
    """common.cuh's Divisor (multiply-high, add, shift) gives x / d and x % d for every d and x below 2^31: small
    divisors, powers of two and their neighbours, the largest, random ones; numerators at and around multiples of
    d, the largest, random ones."""
    rng = np.random.default_rng(0)
    top = 2**31 - 1
    divisors = {*range(1, 301), top, *rng.integers(1, top, 200).tolist()}
    divisors |= {v for k in range(1, 31) for v in (2**k - 1, 2**k, 2**k + 1)}
    pairs = []
    for d in sorted(divisors):
        multiple = top // d * d
        numerators = {0, 1, d - 1, d, d + 1, 2 * d - 1, multiple - 1, multiple, top,
                      *rng.integers(0, 2**31, 8).tolist()}
        pairs += [(d, x) for x in sorted(numerators) if 0 <= x <= top]
    got = run_on_host(tmp_path, DIVISOR_MAIN, [f"{d} {x}" for d, x in pairs])
    assert got == [f"{x // d} {x % d}" for d, x in pairs]
