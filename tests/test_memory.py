"""Peak-memory reporting on the CPU (the allocator's own allocation events)."""

import torch

import decinv_fast
from decinv_fast.memory import CpuAllocatorPeak, cpu_allocator_peak


def test_cpu_allocator_peak_counts_a_known_buffer():
    def make():
        a = torch.empty(1_000_000)  # 4 MB
        b = torch.empty(500_000)  # 2 MB alive together with a
        del a, b
        return torch.empty(10)

    _, peak = cpu_allocator_peak(make)
    assert 6_000_000 <= peak < 6_100_000


def test_nested_measurement_is_none_not_a_guess():
    with CpuAllocatorPeak() as outer:
        with CpuAllocatorPeak() as inner:
            torch.ones(1000)
    assert inner.peak_bytes is None
    assert outer.peak_bytes >= 4000


def test_invert_reports_peak_and_gradient_based_needs_more(tiny_kl):
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    free = decinv_fast.invert(tiny_kl, x, steps=2)
    grad = decinv_fast.invert(tiny_kl, x, steps=2, method="grad")
    assert isinstance(free.peak_bytes, int) and free.peak_bytes > 0
    assert grad.peak_bytes > 2 * free.peak_bytes
    assert decinv_fast.invert(tiny_kl, x, steps=1, measure_memory=False).peak_bytes is None
