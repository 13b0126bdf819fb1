"""The NumPy backend: the reference's ops (`numpy_ref`, the definition) under the engine's thread policy.

Every op is numpy_ref's own function. Those that call BLAS (dense and the convolutions) first tell the thread
policy their size, so the reference too runs a small GEMM on one thread and stays off the cores that other
processes keep busy (see threads.py). Nothing else differs: this module adds no maths.
"""
import functools

from . import numpy_ref
from .numpy_ref import *  # noqa: F401,F403 (every op and helper of the reference, as it is)
from .threads import use_blas

name = numpy_ref.name


def _governed(op, macs):
    """op, preceded by use_blas(macs(*args)): macs estimates the multiply-adds of its largest GEMM."""
    @functools.wraps(op)
    def run(*args, **kwargs):
        use_blas(macs(*args))
        return op(*args, **kwargs)
    return run


def _pixels(a, stride=1):
    """N H W of an (N, C, H, W) array, over the stride's area: the output pixels of a strided window."""
    sh, sw = numpy_ref._pair(stride)
    return a.shape[0] * a.shape[2] * a.shape[3] // (sh * sw)


# x (N, I), W (I, O): N I O. Convolutions: every output pixel (conv2d) or input pixel (transposed) meets all of W.
dense_forward = _governed(numpy_ref.dense_forward, lambda x, W, *_: x.shape[0] * W.size)
dense_backward = _governed(numpy_ref.dense_backward, lambda x, W, *_: x.shape[0] * W.size)
conv2d_forward = _governed(numpy_ref.conv2d_forward, lambda x, W, b, stride, *_: _pixels(x, stride) * W.size)
conv2d_backward = _governed(numpy_ref.conv2d_backward, lambda x, W, y, *_: _pixels(y) * W.size)
conv_transpose2d_forward = _governed(numpy_ref.conv_transpose2d_forward, lambda x, W, *_: _pixels(x) * W.size)
conv_transpose2d_backward = _governed(numpy_ref.conv_transpose2d_backward, lambda x, W, *_: _pixels(x) * W.size)
