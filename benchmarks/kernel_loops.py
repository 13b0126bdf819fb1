"""What one 16-deep K slice of each GEMM kernel costs in instructions, read from the machine code, without a GPU.

    python -m benchmarks.kernel_loops [--arch sm_90] [--tiles 128x128,64x64] [--all-paths] [--kernels DIR]
                                      [--json FILE] [FILE.cu ...]

Compiles kernels/*.cu (dense.cu and conv.cu by default) for each tile shape with nvcc -cubin, disassembles them
(cuobjdump and nvdisasm: the pip wheels nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm put them in
site-packages/nvidia/cu13/bin, which is searched too), and prints, for each kernel, its main loop: the backward
branch whose body holds the most FFMAs (gemm.cuh's multiply, one K slice an iteration). Per slice: instructions,
FFMAs, shared-memory reads, global reads, and integer divisions by a run-time value (each a MUFU.RCP and some 15
more instructions). A kernel whose readers step their K halves (gemm.cuh's STEPS) has two copies of the loop,
one that steps and one that makes the halves anew (a launch whose windows' taps do not divide 16): the shorter is
counted, the others' instructions are listed beside it. A slice of a TILE_M x TILE_N tile is TILE_M TILE_N 16 / 256
FFMAs a thread; what the loop holds beyond them is index math and loads. Beside them, what ptxas reports of the
kernel built: its registers a thread (which, with its shared memory, say how many blocks an SM runs at once) and
the bytes it spills to local memory (the kernel as shipped with --all-paths; with plain loads it may need fewer).
--kernels DIR counts another folder of kernels (an older commit's: `git archive REV kernels | tar -x -C OLD`, then
OLD/kernels), to set before beside after. --json also writes the counts to FILE, {kernel: {"64x64": {...}}}, for
the models' --loops (benchmarks/gemm_plans.py --fit, benchmarks/perf_model.py).

By default gemm.cuh's `read` is compiled as a plain load (a forward's operands), so the loop has one path:
a kernel takes its activation as an argument, and the compiler makes a copy of the loop for each activation a
gradient operand may apply; --all-paths keeps them all (static counts then add the copies together). These are
static counts of machine code, not timings: a GPU run (benchmarks/test_bench_cuda.py) says what they cost.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from gan_engine import kernels

PLAIN_READ = ("return act == ACT_IDENTITY ? v[at] : act_backward(y[at], v[at], act, alpha);", "return v[at];")
COLUMNS = ("instructions", "ffma", "lds", "ldg", "divisions", "other_copies", "registers", "spilled_bytes")
INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;]+);")
BACKWARD_BRANCH = re.compile(r"\bBRA\s+(?:\S+\s+)?0x([0-9a-f]+)")


def tools():
    """Directories to search for cuobjdump and nvdisasm: PATH, then the pip wheels' bin folders."""
    import site

    wheels = [Path(p) / "nvidia" / sub / "bin" for p in site.getsitepackages() for sub in ("cu13", "cu12")]
    return os.pathsep.join([os.environ.get("PATH", ""), *map(str, wheels)])


def main_loops(sass):
    """{kernel: (instructions, FFMA, LDS, LDG, divisions, other copies)} of each function's shortest loop among
    those with the most FFMAs; other copies: the instructions of the rest of them, a tuple."""
    loops = {}
    for function in sass.split("Function : ")[1:]:
        name = function.split("\n", 1)[0].strip()
        code = [(int(a, 16), text.strip()) for a, text in INSTRUCTION.findall(function)]
        found = []
        for address, text in code:
            branch = BACKWARD_BRANCH.search(text)
            if branch and int(branch.group(1), 16) < address:
                body = [t for a, t in code if int(branch.group(1), 16) <= a <= address]
                found.append((len(body), *(sum(op in t for t in body) for op in ("FFMA", "LDS", "LDG", "MUFU.RCP"))))
        if found:
            most = max(counts[1] for counts in found)
            copies = sorted(counts for counts in found if counts[1] == most)
            loops[name] = (*copies[0], tuple(counts[0] for counts in copies[1:]))
    return loops


def resources(ptxas_log):
    """{kernel: (registers, spill store bytes)} from the report of nvcc -Xptxas -v."""
    found, name, described = {}, None, None
    for line in ptxas_log.splitlines():
        entry = re.search(r"Compiling entry function '(\w+)'", line)
        if entry:
            name = entry.group(1)
        properties = re.search(r"Function properties for (\w+)", line)
        if properties:  # the kernel's own, or a device function's it calls
            described = properties.group(1)
        spills = re.search(r"(\d+) bytes spill stores", line)
        if spills and name and described == name:
            found[name] = (found.get(name, (0, 0))[0], int(spills.group(1)))
        registers = re.search(r"Used (\d+) registers", line)
        if registers and name:
            found[name] = (int(registers.group(1)), found.get(name, (0, 0))[1])
    return found


def read_counts(path):
    """The counts of a --json file, {kernel: {"64x64": {...}}}; exits saying what is wrong with one that is not."""
    try:
        return json.loads(Path(path).read_text())["loops"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sys.exit(f"{path} is not a benchmarks.kernel_loops --json file ({type(exc).__name__}: {exc}); make one with "
                 "python -m benchmarks.kernel_loops --json FILE")


def compile_and_read(source, tile, arch, folder, env):
    """{kernel: main_loops' counts + resources'} of `source` (a kernels/ file name) built for `tile` (TILE_M,
    TILE_N) from `folder`."""
    cubin = folder / f"{source}.{tile[0]}x{tile[1]}.cubin"
    built = subprocess.run(["nvcc", f"-arch={arch}", "-cubin", f"-DTILE_M={tile[0]}", f"-DTILE_N={tile[1]}",
                            f"-I{folder}", "-Xptxas", "-v", str(folder / source), "-o", str(cubin)], check=True,
                           capture_output=True, text=True, env=env)
    sass = subprocess.run(["cuobjdump", "-sass", str(cubin)], check=True, capture_output=True, text=True, env=env)
    used = resources(built.stderr)
    return {name: counts + used.get(name, (0, 0)) for name, counts in main_loops(sass.stdout).items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="*", default=["dense.cu", "conv.cu"], help="kernels/ files")
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--tiles", default="128x128,64x64,32x32,16x64,64x16")
    parser.add_argument("--all-paths", action="store_true", help="keep every activation path of the loop")
    parser.add_argument("--kernels", type=Path, default=kernels.DIRECTORY, help="the folder of kernels to count")
    parser.add_argument("--json", type=Path, help="also write the counts to this file")
    args = parser.parse_args(argv)
    env = dict(os.environ, PATH=tools())
    missing = [t for t in ("nvcc", "cuobjdump", "nvdisasm") if shutil.which(t, path=env["PATH"]) is None]
    if missing:
        sys.exit(f"kernel_loops needs {', '.join(missing)}: the CUDA toolkit's nvcc, and pip install "
                 "nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm")
    tiles = [tuple(int(v) for v in t.split("x")) for t in args.tiles.split(",")]
    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for path in [*args.kernels.glob("*.cu"), *args.kernels.glob("*.cuh")]:
            text = path.read_text()
            if path.name == "gemm.cuh" and not args.all_paths:
                assert PLAIN_READ[0] in text, "gemm.cuh's read() changed: update PLAIN_READ"
                text = text.replace(*PLAIN_READ)
            (folder / path.name).write_text(text)
        print(f"{args.arch}, {'every activation path' if args.all_paths else 'one path (plain loads)'}; per K slice:")
        print("| kernel | tile | instructions | FFMA | LDS | LDG | divisions | other copies | registers | spilled "
              "bytes |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for source in args.sources:
            for tile in tiles:
                for name, counts in sorted(compile_and_read(source, tile, args.arch, folder, env).items()):
                    found.setdefault(name, {})[f"{tile[0]}x{tile[1]}"] = dict(zip(COLUMNS, counts))
                    copies = " ".join(map(str, counts[5])) or "-"
                    print(f"| {name} | {tile[0]}x{tile[1]} | " + " | ".join(map(str, (*counts[:5], copies,
                                                                                   *counts[6:]))) + " |")
    if args.json:
        args.json.write_text(json.dumps({"arch": args.arch, "all_paths": args.all_paths, "loops": found}, indent=1))


if __name__ == "__main__":
    main()
