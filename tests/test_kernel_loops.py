"""benchmarks/kernel_loops.py reads a GEMM kernel's main loop out of its machine code."""
import shutil

import pytest

from benchmarks import kernel_loops

# Two functions in cuobjdump's layout: the first has a short loop without FFMAs and a longer one with them (the
# one to report), the second no backward branch at all.
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
"""


def test_the_loop_with_the_most_ffmas_is_counted():
    loops = kernel_loops.main_loops(SASS)
    assert loops == {"first_kernel": (6, 2, 1, 1, 1)}  # 0x30..0x80: 6 instructions, FFMA, LDS, LDG, MUFU.RCP


TOOLS = ("nvcc", "cuobjdump", "nvdisasm")


@pytest.mark.skipif(any(shutil.which(t, path=kernel_loops.tools()) is None for t in TOOLS),
                    reason="needs nvcc, cuobjdump and nvdisasm (pip install nvidia-cuda-cuobjdump "
                           "nvidia-cuda-nvdisasm)")
def test_the_dense_kernels_loop_is_mostly_ffmas(capsys):
    kernel_loops.main(["dense.cu", "--tiles", "64x64"])
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if "dense_forward_kernel" in line]
    assert len(rows) == 1
    instructions, ffma, divisions = int(rows[0][2]), int(rows[0][3]), int(rows[0][6])
    assert ffma == 64 * 64 * 16 // 256 and instructions > ffma and divisions == 0
