"""Build script: the pure-Python package always; the CUDA extension ``decinv_fast._C`` only when
nvcc and a CUDA build of torch are present (see ``DECINV_BUILD_CUDA``)."""

from setuptools import setup

setup()
