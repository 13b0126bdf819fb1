"""The CUDA backend's kernels run on the CPU, for tests on machines without a GPU.

g++ builds each kernels/*.cu unchanged, with emulator.h included ahead of it (and shared.ld placing its
__shared__ memory), into a shared library; the launchers are generated from the kernels' `extern "C"`
signatures. `fake_cupy()` is a stand-in for the few CuPy calls `cupy_cuda.py` makes, backed by NumPy, so the
backend's own launchers (argument order, widths, grids) run against the kernels. It checks what CuPy leaves to
the GPU to get wrong:
- every argument's type against the kernel's C signature (a Python int where the kernel takes `long long`, a
  float64 array where it takes `float*`);
- the block against the kernel's __launch_bounds__ and the device's 1024-thread limit;
- `__restrict__`: two pointer arguments that overlap in memory, where one is written (not `const`) and one is
  declared `__restrict__`, are refused before the launch;
- writes outside an array: every allocation has guard bytes on both sides, checked after each launch (they are
  0xFF, a NaN in floating point, so a read outside an array shows up in the results too);
- an element written by two blocks of a launch: a launch whose written arrays (pointer arguments without `const`)
  hold at most WRITES_CHECKED bytes times its blocks (every launch of the tests' shapes) runs block by block, and
  a byte that two blocks change is an error naming the kernel, the argument, the element and both blocks (a write
  of the value already there is not seen). A kernel whose blocks may write the same elements of an argument
  declares it on a line of its .cu source:
      // emulator: shared_writes <kernel name> <parameter name>
- __syncthreads() reached by some threads of a block after others returned, or threads of a block waiting at
  different __syncthreads() calls;
- shared memory read before the block wrote it: it holds 0xFF bytes, NaN, at the start of every block.
Between barriers a block's threads run one after another in the order `order` says, read at each launch:
forward, reversed, or shuffled (a new permutation at each barrier; shuffled:SEED picks the generator's seed, 0 by
default). GAN_ENGINE_EMULATOR_ORDER=forward|reversed|shuffled[:SEED] sets it (forward when unset), and
install(monkeypatch, thread_order) for one test; tests/conftest.py runs every emulated test in all three, so a missing
barrier gives a wrong result, or NaN, under one of them.
Stream capture is emulated as CUDA does it: while a stream captures, kernel launches, fills, assignments and
NumPy ufuncs on device arrays are recorded instead of run, and a graph launch runs the record; so a step that
keeps a changing value on the host, or reads a result during capture, replays wrongly here as on a GPU.
It is a test of the kernels' logic, not a GPU: races the three orders do not expose, warp behaviour and speed
need the real device.
"""
import contextlib
import ctypes
import hashlib
import itertools
import os
import re
import shutil
import subprocess
import tempfile
import types
from pathlib import Path
from typing import NamedTuple

import numpy as np

HEADER = Path(__file__).with_name("emulator.h")
LINKER_SCRIPT = Path(__file__).with_name("shared.ld")
# __launch_bounds__(threads) or (threads, blocks an SM), the blocks a number, a macro or a macro's call
LAUNCH_BOUNDS = r'__launch_bounds__\((\w+)(?:,\s*\w+(?:\([^)]*\))?)?\)'
KERNEL = re.compile(r'extern "C" __global__ void(?:\s+' + LAUNCH_BOUNDS + r')?\s+(\w+)\s*\(([^)]*)\)')
SHARED_WRITES = re.compile(r"^[ \t]*// emulator: shared_writes (\w+) (\w+)[ \t]*$", re.M)
SCALARS = {"float": np.float32, "double": np.float64, "int": np.int32, "long long": np.int64,
           "unsigned int": np.uint32, "unsigned long long": np.uint64}
GUARD = 4096  # bytes on each side of every allocation
# -fno-gnu-unique: each library keeps its own statics. Otherwise g++ binds a template's statics (the __shared__
# arrays of gemm.cuh, the emulator's own state) once per process, and the build of one tile shape would use the
# arrays of another's. -fdata-sections and shared.ld: every __shared__ static in one region (poisoned per block).
COMPILE = ["g++", "-std=c++17", "-O1", "-U_FORTIFY_SOURCE", "-shared", "-fPIC", "-w", "-fno-gnu-unique",
           "-fdata-sections", f"-Wl,-T,{LINKER_SCRIPT}"]
MAX_THREADS = 1024
WRITES_CHECKED = 1 << 26  # a launch's written bytes x blocks up to which it runs block by block (writes checked)
ORDERS = ("forward", "reversed", "shuffled")  # the threads' orders between barriers: emulator.h's Order

_libraries = {}
_recording = None  # while a stream captures: the list of operations a graph launch will run


def parse_order(setting):
    """(order, seed) of a thread-order setting: "forward", "reversed", "shuffled" or "shuffled:SEED" (seed 0 when
    not given)."""
    name, _, seed = setting.partition(":")
    if name not in ORDERS or (seed and not (name == "shuffled" and seed.isdigit())):
        raise ValueError(f"thread order {setting!r}: expected forward, reversed, shuffled or shuffled:SEED")
    return name, int(seed or 0)


order = parse_order(os.environ.get("GAN_ENGINE_EMULATOR_ORDER", "forward"))  # see the module's docstring


def available():
    """None when kernels can be emulated here, else why not."""
    return None if shutil.which("g++") else "no host C++ compiler (g++) to build the kernels with"


class Param(NamedTuple):
    """A kernel parameter, from its C declaration."""
    name: str
    ctype: str            # without __restrict__, e.g. "const float*"
    dtype: type           # NumPy's type of the value, or of the values it points at
    pointer: bool
    written: bool         # a pointer without const: the kernel may write through it
    restrict: bool        # declared __restrict__
    shared_writes: bool   # declared `// emulator: shared_writes <kernel> <name>`: blocks may write the same elements


def _macros(text):
    """name -> body of every object-like #define in `text` (continuation lines joined)."""
    found = re.findall(r"^#define\s+(\w+)[ \t]+((?:[^\n]*\\\n)*[^\n]*)", text, re.M)
    return {name: body.replace("\\\n", " ").strip() for name, body in found}


def _param(declaration, shared):
    """The Param of one C parameter declaration, e.g. "const float* __restrict__ x", of a kernel whose parameters
    named in `shared` are declared shared_writes."""
    ctype, name = re.fullmatch(r"\s*(.*?)\s*(\w+)\s*", declaration).groups()
    restrict = "__restrict__" in ctype
    ctype = " ".join(ctype.replace("__restrict__", "").split())
    pointer = "*" in ctype
    base = " ".join(ctype.replace("const", "").replace("*", "").split())
    return Param(name, ctype, SCALARS[base], pointer, pointer and "const" not in ctype, restrict, name in shared)


def signatures(code, headers=""):
    """kernel name -> (launch bound or None, [Param]) of every kernel in `code`; macros in a signature are expanded
    from the #defines of `code` and `headers` (the text of its includes). Raises ValueError for a shared_writes
    declaration that names no parameter of a kernel of `code`."""
    macros = _macros(code + "\n" + headers)

    def expand(text):
        for _ in range(8):
            text = re.sub(r"\b\w+\b", lambda m: macros.get(m.group(0), m.group(0)), text)
        return text

    declared = set(SHARED_WRITES.findall(code))
    found = {}
    for bound, name, params in KERNEL.findall(code):
        shared = {param for kernel, param in declared if kernel == name}
        args = [_param(declaration, shared) for declaration in expand(params).split(",")]
        found[name] = (int(expand(bound)) if bound else None, args)
    unknown = declared - {(name, arg.name) for name, (_, args) in found.items() for arg in args}
    if unknown:
        raise ValueError("`// emulator: shared_writes KERNEL PARAMETER` names no parameter of a kernel here: " +
                         ", ".join(f"{kernel} {param}" for kernel, param in sorted(unknown)))
    return found


def _launchers(kernels):
    """C++ text of one `launch_<kernel>(grid, block, args, first, end)` per kernel of `signatures()`,
    cuLaunchKernel style, that runs blocks first .. end - 1 of the grid."""
    out = []
    for name, (_, args) in kernels.items():
        call = ", ".join(f"*reinterpret_cast<{arg.ctype}*>(args[{i}])" for i, arg in enumerate(args))
        out.append(f'extern "C" int launch_{name}(const unsigned int* grid, const unsigned int* block, '
                   f"void** args, unsigned long long first, unsigned long long end) {{\n"
                   f"    return emulator::launch(grid, block, first, end, [&] {{ {name}({call}); }});\n}}\n")
    return "\n".join(out)


def _source_name(code):
    """The file name a .cu text gives itself in its first comment ("// conv.cu: ..."), else "source.cu"."""
    found = re.match(r"\s*//\s*(\w+\.cu)\b", code)
    return found.group(1) if found else "source.cu"


def _with_includes(code, folders):
    """`code` followed by the text of every header it includes, recursively, found in `folders`."""
    texts, todo = [code], re.findall(r'#include "([^"]+)"', code)
    while todo:
        name = todo.pop()
        path = next(Path(f) / name for f in folders if (Path(f) / name).exists())
        text = path.read_text()
        if text not in texts:
            texts.append(text)
            todo += re.findall(r'#include "([^"]+)"', text)
    return "\n".join(texts)


def build(code, options=()):
    """(the shared library of `code`, a .cu text, built with emulator.h and cached by content; its kernels'
    `signatures`)."""
    folders = [o.split("=", 1)[1] for o in options if o.startswith("--include-path=")]
    headers = _with_includes(code, folders)
    fibers = "__syncthreads" in headers
    flags = [f"-I{f}" for f in folders] + [o for o in options if o.startswith("-D")]
    flags.append(f"-DEMULATOR_FIBERS={int(fibers)}")
    kernels = signatures(code, headers)
    text = f'#line 1 "{_source_name(code)}"\n' + code + "\n" + _launchers(kernels)
    inputs = [HEADER.read_text(), LINKER_SCRIPT.read_text(), text, *COMPILE, *flags]
    key = hashlib.sha1("\0".join(inputs).encode()).hexdigest()[:20]
    if key not in _libraries:
        folder = Path(tempfile.gettempdir()) / "gan-engine-cuda-emulator"
        folder.mkdir(exist_ok=True)
        library = folder / f"{key}.so"
        if not library.exists():
            source = folder / f"{key}.cpp"
            source.write_text(text)
            partial = folder / f"{key}.{id(text)}.tmp"
            done = subprocess.run([*COMPILE, "-include", str(HEADER), *flags, "-o", str(partial), str(source)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"the emulated build failed:\n{done.stderr}")
            partial.replace(library)
        _libraries[key] = ctypes.CDLL(str(library))
    return _libraries[key], kernels


def _run_or_record(operation):
    """Run `operation` now, or record it for graph launches while a stream captures."""
    if _recording is None:
        operation()
    else:
        _recording.append(operation)


class DeviceArray(np.ndarray):
    """A NumPy array standing in for a CuPy one: `.data.ptr` is its address, an integer index gives a 0-d view
    (as CuPy does, not a scalar copy), and its updates obey stream capture."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.ctypes.data)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)) or (isinstance(key, tuple) and all(isinstance(k, (int, np.integer))
                                                                                 for k in key)):
            key = (key if isinstance(key, tuple) else (key,)) + (Ellipsis,)
        return super().__getitem__(key)

    def fill(self, value):
        _run_or_record(lambda: np.ndarray.fill(self, value))

    def __setitem__(self, key, value):
        _run_or_record(lambda: np.ndarray.__setitem__(self, key, value))

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        plain = [np.asarray(a).view(np.ndarray) if isinstance(a, DeviceArray) else a for a in inputs]
        if "out" in kwargs:  # in place (a /= n): run or recorded like a kernel that writes its output
            out = kwargs.pop("out")
            if method != "__call__" or kwargs or ufunc.nout != 1:
                raise RuntimeError(f"the emulator runs {ufunc.__name__}.{method} into an output only as a call")
            _run_or_record(lambda: ufunc(*plain, out=np.asarray(out[0]).view(np.ndarray)))
            return out[0]
        if _recording is None:
            out = getattr(ufunc, method)(*plain, **kwargs)
            return out.view(DeviceArray) if isinstance(out, np.ndarray) else out
        if method != "__call__" or kwargs or ufunc.nout != 1:
            raise RuntimeError(f"the emulator cannot record {ufunc.__name__}.{method} during stream capture")
        out = empty(np.broadcast_shapes(*(np.shape(a) for a in plain)), np.result_type(*plain))
        _recording.append(lambda: ufunc(*plain, out=out.view(np.ndarray)))
        return out


class _Allocation(np.ndarray):
    """Raw bytes: GUARD bytes of 0xFF, the array, GUARD bytes of 0xFF."""


def empty(shape, dtype=np.float32):
    shape = (shape,) if np.isscalar(shape) else tuple(shape)
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.full(size + 2 * GUARD, 0xFF, dtype=np.uint8).view(_Allocation)
    return raw[GUARD:GUARD + size].view(dtype).reshape(shape).view(DeviceArray)


def zeros(shape, dtype=np.float32):
    out = empty(shape, dtype)
    out[...] = 0
    return out


def asarray(a, dtype=None):
    if isinstance(a, DeviceArray) and (dtype is None or a.dtype == dtype):
        return a
    host = np.asarray(a, dtype=dtype)
    out = empty(host.shape, host.dtype)
    out[...] = host
    return out


def _allocation(a):
    """The whole guarded allocation under a view (the outermost _Allocation of its chain of bases), or None."""
    found = None
    while a is not None:
        found = a if isinstance(a, _Allocation) else found
        a = a.base
    return found


def _check_guards(name, arrays):
    for label, _, a in arrays:
        raw = _allocation(a)
        if raw is None:
            continue
        raw = raw.view(np.ndarray)
        for side, guard in (("before", raw[:GUARD]), ("after", raw[-GUARD:])):
            if (guard != 0xFF).any():
                raise AssertionError(f"{name} wrote outside argument {label}: the guard bytes {side} it changed")


class Kernel:
    """One emulated kernel, called as CuPy's RawKernel is: kernel(grid, block, args)."""

    def __init__(self, library, name, bound, params):
        self.library, self.name, self.bound, self.params = library, name, bound, params
        self.function = getattr(library, f"launch_{name}")
        self.function.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_ulonglong] * 2
        self.function.restype = ctypes.c_int
        library.emulator_error.restype = ctypes.c_char_p
        library.emulator_set_order.argtypes = [ctypes.c_int, ctypes.c_ulonglong]

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        grid, block = (tuple(map(int, grid)) + (1, 1))[:3], (tuple(map(int, block)) + (1, 1))[:3]
        self._check_geometry(grid, block)
        holders, arrays = self._arguments(args)
        self._check_restrict(arrays)
        pointers = (ctypes.c_void_p * len(holders))(*[ctypes.addressof(h) for h in holders])
        dims = [(ctypes.c_uint * 3)(*map(int, d)) for d in (grid, block)]
        blocks = int(np.prod(grid))
        watched = [(i, param, a) for i, param, a in arrays if param.written and not param.shared_writes]

        def launch(keep=holders):  # the holders own the argument values the pointers point at
            self.library.emulator_set_order(ORDERS.index(order[0]), order[1])
            if sum(a.nbytes for _, _, a in watched) * blocks <= WRITES_CHECKED:
                self._run_block_by_block(dims, pointers, grid, watched)
            else:
                self._run(dims, pointers, 0, blocks)
            _check_guards(self.name, arrays)

        _run_or_record(launch)

    def _check_geometry(self, grid, block):
        threads = int(np.prod(block))
        limit = min(self.bound or MAX_THREADS, MAX_THREADS)
        if not 0 < threads <= limit or min(grid) < 1:
            raise ValueError(f"{self.name}: grid {grid} x block {block} (at most {limit} threads a block)")

    def _arguments(self, args):
        """(ctypes holders of the argument values, [(position, Param, array)] of the pointer arguments), after
        checking every argument against the kernel's C signature."""
        if len(args) != len(self.params):
            raise TypeError(f"{self.name} takes {len(self.params)} arguments, got {len(args)}")
        holders, arrays = [], []
        for i, (arg, param) in enumerate(zip(args, self.params)):
            if param.pointer:
                if not isinstance(arg, np.ndarray) or arg.dtype != param.dtype or not arg.flags.c_contiguous:
                    raise TypeError(f"{self.name} argument {i} ({param.ctype}) got "
                                    f"{getattr(arg, 'dtype', type(arg).__name__)} {getattr(arg, 'shape', '')}")
                holders.append(ctypes.c_void_p(arg.ctypes.data))
                arrays.append((i, param, arg))
            else:
                if not isinstance(arg, np.generic) or arg.dtype != param.dtype:
                    raise TypeError(f"{self.name} argument {i} ({param.ctype}) got {arg!r} of type "
                                    f"{type(arg).__name__}; pass np.{np.dtype(param.dtype).name}")
                holders.append(np.ctypeslib.as_ctypes(np.array(arg)))
        return holders, arrays

    def _check_restrict(self, arrays):
        """Refuse two pointer arguments that overlap in memory where one is written and one is __restrict__."""
        for (i, p, a), (j, q, b) in itertools.combinations(arrays, 2):
            if (p.written or q.written) and (p.restrict or q.restrict) and np.may_share_memory(a, b):
                written = " and ".join(f"{k} ({r.name})" for k, r in ((i, p), (j, q)) if r.written)
                raise ValueError(f"{self.name}: arguments {i} ({p.name}) and {j} ({q.name}) overlap in memory and "
                                 f"the kernel writes {written}, against __restrict__")

    def _run(self, dims, pointers, first, end):
        """Run blocks first .. end - 1 of the launch."""
        if self.function(dims[0], dims[1], pointers, first, end) != 0:
            raise RuntimeError(f"{self.name}: {self.library.emulator_error().decode()}")

    def _run_block_by_block(self, dims, pointers, grid, watched):
        """Run the launch a block at a time; fail if two blocks change the same byte of an array of `watched`."""
        data = [np.asarray(a).reshape(-1).view(np.uint8) for _, _, a in watched]
        writers = [np.full(d.size, -1, dtype=np.int32) for d in data]  # the block that changed each byte, or -1
        for b in range(int(np.prod(grid))):
            before = [d.copy() for d in data]
            self._run(dims, pointers, b, b + 1)
            for (i, param, a), now, was, writer in zip(watched, data, before, writers):
                changed = np.flatnonzero(now != was)
                again = changed[writer[changed] >= 0]
                if again.size:
                    raise AssertionError(self._written_twice(i, param, again[0] // a.itemsize,
                                                             (writer[again[0]], b), grid))
                writer[changed] = b

    def _written_twice(self, i, param, element, blocks, grid):
        first, second = (_block_index(int(b), grid) for b in blocks)
        return (f"{self.name}: blocks {first} and {second} both wrote element {element} of argument {i} "
                f"({param.name}); if several blocks may write it, say so in the kernel's source: "
                f"// emulator: shared_writes {self.name} {param.name}")


def _block_index(b, grid):
    """(x, y, z) of block b of `grid` in launch order (x fastest)."""
    return b % grid[0], b // grid[0] % grid[1], b // (grid[0] * grid[1])


class RawModule:
    """cupy.RawModule(code=..., options=...) on the CPU."""

    def __init__(self, code, options=()):
        self.library, self.kernels = build(code, options)

    def get_function(self, name):
        bound, params = self.kernels[name]
        return Kernel(self.library, name, bound, params)


class _RuntimeError(Exception):
    pass


class _Graph:
    def __init__(self, operations):
        self.operations = operations

    def launch(self, stream=None):
        for operation in self.operations:
            operation()


class _Stream:
    """A stream that can capture: see the module's docstring."""

    def __init__(self, non_blocking=False):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def begin_capture(self, mode=None):
        global _recording
        if _recording is not None:
            raise RuntimeError("a stream is capturing already")
        _recording = []

    def end_capture(self):
        global _recording
        if _recording is None:
            raise RuntimeError("the stream is not capturing")
        graph, _recording = _Graph(_recording), None
        return graph


def fake_cupy():
    """A module standing in for `cupy` in cupy_cuda.py: NumPy arrays with guards, emulated kernels."""
    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1, CUDARuntimeError=_RuntimeError)
    return types.SimpleNamespace(
        emulated=True, asarray=asarray, empty=empty, zeros=zeros, asnumpy=lambda a: np.array(a).view(np.ndarray),
        zeros_like=lambda a: zeros(a.shape, a.dtype),
        RawModule=RawModule,
        cuda=types.SimpleNamespace(
            Device=lambda index=0: types.SimpleNamespace(id=index, synchronize=lambda: None, use=lambda: None,
                                                         attributes={"MultiProcessorCount": 132}),
            runtime=runtime, Stream=_Stream, get_current_stream=lambda: types.SimpleNamespace(ptr=0),
            MemoryPool=lambda: types.SimpleNamespace(malloc=None), using_allocator=lambda _: contextlib.nullcontext()))


def fake_nccl():
    """A stand-in for `cupy.cuda.nccl` between the ranks of an MPI job (mpi4py's COMM_WORLD): allReduce sums the
    memory at a device pointer over the ranks, and obeys stream capture as a kernel does."""
    kinds = {7: ctypes.c_float, 8: ctypes.c_double}

    class NcclCommunicator:
        def __init__(self, ranks, uid, rank):
            from mpi4py import MPI

            assert uid == b"one id for the job" and MPI.COMM_WORLD.Get_size() == ranks
            self.rank = rank

        def allReduce(self, send, recv, count, kind, op, stream):  # noqa: N802 (NCCL's name)
            from mpi4py import MPI

            assert send == recv and op == 0 and stream == 0, "in place, a sum, on the current stream"
            values = np.ctypeslib.as_array((kinds[kind] * count).from_address(recv))
            _run_or_record(lambda: MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, values, op=MPI.SUM))

    return types.SimpleNamespace(NCCL_FLOAT32=7, NCCL_FLOAT64=8, NCCL_SUM=0, NcclCommunicator=NcclCommunicator,
                                 get_unique_id=lambda: b"one id for the job")


def emulating(backend):
    """True when `backend` is the cuda backend running on this emulator."""
    return getattr(getattr(backend, "xp", None), "emulated", False)


def skip_if_emulating(backend, why):
    """Skip a test (with `why`) that is too long for the emulator; it still runs on a GPU."""
    import pytest

    if emulating(backend):
        pytest.skip(f"too slow on the CPU emulation of the CUDA kernels ({why}); runs on a GPU")


def install(monkeypatch, thread_order=None):
    """Make the cuda backend run on this emulator for one test, in `thread_order` (a setting for parse_order; the
    module's `order` when None); returns the backend module."""
    from gan_engine import backends
    from gan_engine.backends import cupy_cuda

    if thread_order is not None:
        monkeypatch.setattr(f"{__name__}.order", parse_order(thread_order))
    fake = fake_cupy()
    monkeypatch.setattr(cupy_cuda, "cp", fake)
    monkeypatch.setattr(cupy_cuda, "xp", fake)
    monkeypatch.setattr(cupy_cuda, "_modules", {})
    monkeypatch.setattr(cupy_cuda, "_steps", {})
    monkeypatch.setattr(cupy_cuda, "_buffers", {})
    monkeypatch.setattr(cupy_cuda, "_multiprocessor_counts", {})
    monkeypatch.setitem(backends._loaded, "cuda", (cupy_cuda, None))
    return cupy_cuda
