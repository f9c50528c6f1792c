"""``_dispatch`` on the CPU: ``resolve_backend`` checks the name first, ``auto`` stays on torch even
where the Triton interpreter could run, torch / reference run every dtype; ``available_backends``
says how Triton can run without a GPU."""

import pytest
import torch

from decinv_fast._dispatch import available_backends, resolve_backend


def test_an_unknown_backend_is_a_value_error_naming_the_choices():
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("fsm_residual_step", torch.zeros(2, 5), "bogus")


def test_auto_on_the_cpu_is_torch_even_under_the_triton_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    cpu = torch.zeros(2, 5)
    assert resolve_backend("fsm_residual_step", cpu, "auto") == "torch"
    assert resolve_backend("fsm_residual_step", cpu, "triton") == "triton"  # asked for: it can run


@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_torch_and_reference_run_float64(backend):
    assert resolve_backend("km_residual_step", torch.zeros(2, 5, dtype=torch.float64), backend) == backend


@pytest.mark.parametrize("interpret,says", [("1", "available under TRITON_INTERPRET=1 only"),
                                            ("0", "installed, but no CUDA device (set TRITON_INTERPRET=1")])
def test_available_backends_says_how_triton_runs_without_a_gpu(monkeypatch, interpret, says):
    monkeypatch.setenv("TRITON_INTERPRET", interpret)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    report = available_backends()
    assert report["triton"].startswith(says), report
    assert report["torch"] == report["reference"] == "available"
