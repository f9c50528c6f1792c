"""Peak-memory reporting on the CPU (the allocator's own allocation events)."""

import io
import os

import pytest
import torch

import decinv_fast
from decinv_fast import memory
from decinv_fast.memory import CpuAllocatorPeak, PeakMemory, available_ram, cpu_allocator_peak


def test_cpu_allocator_peak_counts_a_known_buffer():
    def make():
        a = torch.empty(1_000_000)  # 4 MB
        b = torch.empty(500_000)  # 2 MB alive together with a
        del a, b
        return torch.empty(10)

    result, peak = cpu_allocator_peak(make)
    assert 6_000_000 <= peak < 6_100_000 and result.shape == (10,)


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


def test_measuring_leaves_stderr_as_it_was(capfd):
    """The profiler's chatter is silenced during the measurement only: fd 2 writes again afterwards."""
    cpu_allocator_peak(lambda: torch.ones(10))
    os.write(2, b"after the measurement\n")
    assert "after the measurement" in capfd.readouterr().err


def test_a_disabled_measurement_starts_no_profiler():
    with PeakMemory("cpu", enabled=False) as off:
        torch.ones(1000)
    assert off.peak_bytes is None
    assert cpu_allocator_peak(lambda: torch.ones(1000))[1] >= 4000  # a later measurement is not nested in it


@pytest.mark.parametrize("meminfo, expected", [
    ("MemTotal: 16000 kB\nMemFree: 1000 kB\nMemAvailable: 3000 kB\n", 3000 * 1024),
    (OSError("no /proc"), 8 * 2**30),
], ids=["meminfo", "unreadable"])
def test_available_ram_reads_memavailable_in_kib(monkeypatch, meminfo, expected):
    def fake_open(path):
        assert path == "/proc/meminfo"
        if isinstance(meminfo, Exception):
            raise meminfo
        return io.StringIO(meminfo)

    monkeypatch.setattr(memory, "open", fake_open, raising=False)
    assert available_ram() == expected
