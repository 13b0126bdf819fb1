"""CUDA C sources of the engine's kernels, one file per op family (installed as ``gan_engine.kernels``).

The CUDA backend reads them with ``importlib.resources.files("gan_engine.kernels")``.
"""
