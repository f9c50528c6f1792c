"""Triton kernels (``@triton.jit`` functions only), installed as ``decinv_fast.kernels``.

Launchers live in ``decinv_fast/ops/``; import this package only where Triton is available.
"""
