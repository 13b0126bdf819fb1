"""What a benchmark needs to know about the machine: the CPU's FMA peak, and a quiet start for each timing."""
import os
import time


def cpu_peak_gflops():
    """This CPU's FP32 FMA peak in GFLOP/s, and how it was computed: cores x SIMD lanes (8 with AVX2, 16 with
    AVX-512) x 2 FMA units x 2 FLOPs x clock (the nominal clock /proc/cpuinfo reports). None off Linux."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return None, "unknown (no /proc/cpuinfo)"
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    mhz = next((float(line.split(":", 1)[1]) for line in info.splitlines() if line.startswith("cpu MHz")), None)
    if mhz is None:
        return None, "unknown (no clock in /proc/cpuinfo)"
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags and "fma" in flags else 4
    cores = len(os.sched_getaffinity(0))
    peak = cores * lanes * 2 * 2 * mhz / 1e3
    return peak, f"{cores} cores x {lanes} lanes x 2 FMA units x 2 FLOPs x {mhz / 1e3:.2f} GHz = {peak:.0f} GFLOP/s"


FP32_LANES_PER_SM = {(8, 0): 64, (8, 6): 128, (8, 9): 128, (9, 0): 128}  # A100; RTX 30/40; H100/H200


def gpu_peak_gflops(props):
    """A CUDA device's FP32 FMA peak (no tensor cores) in GFLOP/s from CuPy's device properties, and how:
    SMs x FP32 lanes per SM x 2 FLOPs x the boost clock. None for an architecture not in FP32_LANES_PER_SM."""
    lanes = FP32_LANES_PER_SM.get((props["major"], props["minor"]))
    if lanes is None:
        return None, f"unknown (sm_{props['major']}{props['minor']})"
    sms, ghz = props["multiProcessorCount"], props["clockRate"] / 1e6
    peak = sms * lanes * 2 * ghz
    return peak, f"{sms} SMs x {lanes} FP32 lanes x 2 FLOPs x {ghz:.2f} GHz = {peak / 1e3:.1f} TFLOP/s"


def settle(seconds=0.5):
    """Wait until the BLAS and OpenMP worker threads of the previous case stop spinning (OpenBLAS and libgomp
    spin for up to a few hundred ms after their last call), so they do not steal cores from the next timing."""
    time.sleep(seconds)
