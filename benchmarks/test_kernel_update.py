"""pytest-benchmark timings of one gradient-free Adam update on the CPU (see ``benchmarks/kernels.py``).

Run through ``python -m benchmarks.kernels``, which turns the JSON into harness records; or directly::

    .venv/bin/python -m pytest benchmarks/test_kernel_update.py --benchmark-json=out.json

Benchmarks measure; nothing here asserts. ``make test`` does not collect this file (testpaths = tests).
"""

from __future__ import annotations

import shutil

import pytest

from benchmarks.kernels import CPU_PROVIDERS, FUSED, LATENTS, make_provider


@pytest.mark.parametrize("latent", LATENTS, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("provider", CPU_PROVIDERS)
def test_adam_update(benchmark, provider, latent):
    if provider == FUSED and shutil.which("c++") is None:
        pytest.skip("no C++ compiler to build the host version of the fused kernel")
    step = make_provider(provider, latent)
    benchmark.extra_info.update(provider=provider, latent=list(latent), dtype="float32")
    benchmark(step.run)
