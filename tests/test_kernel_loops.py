"""benchmarks/kernel_loops.py reads a GEMM kernel's main loop out of its machine code."""
import shutil

import pytest

from benchmarks import kernel_loops

# Three functions in cuobjdump's layout: the first has a short loop without FFMAs and a longer one with them (the
# one to report), the second no backward branch at all, the third two copies of a loop with 2 FFMAs (report the
# shorter, list the other).
SASS = """
        Function : first_kernel
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   IADD3 R2, R2, 0x1, RZ ;
        /*0020*/              @P0 BRA 0x10 ;
        /*0030*/                   LDG.E.CONSTANT R4, desc[UR4][R6.64] ;
        /*0040*/                   LDS.128 R8, [R3] ;
        /*0050*/                   FFMA R10, R8, R9, R10 ;
        /*0060*/                   MUFU.RCP R11, R12 ;
        /*0070*/                   FFMA R13, R8, R9, R13 ;
        /*0080*/              @P1 BRA 0x30 ;
        /*0090*/                   EXIT ;
        Function : second_kernel
        /*0000*/                   FFMA R10, R8, R9, R10 ;
        /*0010*/                   BRA 0x20 ;
        /*0020*/                   EXIT ;
        Function : copies_kernel
        /*0000*/                   FFMA R10, R8, R9, R10 ;
        /*0010*/                   IADD3 R2, R2, 0x1, RZ ;
        /*0020*/                   IADD3 R3, R3, 0x1, RZ ;
        /*0030*/                   FFMA R13, R8, R9, R13 ;
        /*0040*/              @P0 BRA 0x0 ;
        /*0050*/                   FFMA R10, R8, R9, R10 ;
        /*0060*/                   FFMA R13, R8, R9, R13 ;
        /*0070*/              @P1 BRA 0x50 ;
        /*0080*/                   EXIT ;
"""


def test_the_loop_with_the_most_ffmas_is_counted():
    loops = kernel_loops.main_loops(SASS)
    assert loops == {"first_kernel": (6, 2, 1, 1, 1, ()),  # 0x30..0x80: 6 instructions, FFMA, LDS, LDG, MUFU.RCP
                     "copies_kernel": (3, 2, 0, 0, 0, (5,))}  # 0x50..0x70; the copy 0x00..0x40 beside it


# nvcc -Xptxas -v's report of two kernels (sm_90): the first spills, the second does not (a device function
# it calls does, which is not the kernel's).
PTXAS = """
ptxas info    : Compiling entry function 'spilling_kernel' for 'sm_90'
ptxas info    : Function properties for spilling_kernel
    8 bytes stack frame, 12 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 17412 bytes smem
ptxas info    : Function properties for _Z6helperv
    16 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Compiling entry function 'small_kernel' for 'sm_90'
ptxas info    : Function properties for small_kernel
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 9220 bytes smem
"""


def test_registers_and_spills_are_read_for_each_kernel():
    assert kernel_loops.resources(PTXAS) == {"spilling_kernel": (255, 12), "small_kernel": (40, 0)}


TOOLS = ("nvcc", "cuobjdump", "nvdisasm")


@pytest.mark.skipif(any(shutil.which(t, path=kernel_loops.tools()) is None for t in TOOLS),
                    reason="needs nvcc, cuobjdump and nvdisasm (pip install nvidia-cuda-cuobjdump "
                           "nvidia-cuda-nvdisasm)")
def test_the_dense_kernels_loop_is_mostly_ffmas(capsys):
    kernel_loops.main(["dense.cu", "--tiles", "64x64"])
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if "dense_forward_kernel" in line]
    assert len(rows) == 1
    instructions, ffma, divisions, registers = int(rows[0][2]), int(rows[0][3]), int(rows[0][6]), int(rows[0][8])
    assert ffma == 64 * 64 * 16 // 256 and instructions > ffma and divisions == 0
    assert 16 < registers <= 255  # more than its 4 x 4 accumulators
