"""Peak-memory measurement around a call, on the GPU and on the CPU.

* CUDA: the caching allocator's peak (``torch.cuda.max_memory_allocated``) during the call,
  absolute (model weights included), as the paper reports it. Measuring resets the device's peak
  statistics (``torch.cuda.reset_peak_memory_stats``): a peak the caller was tracking starts over.
* CPU: the peak of the bytes PyTorch's CPU allocator handed out during the call *beyond what was
  allocated when it started* (weights and inputs that already existed are not counted). It is read
  from the allocation and free events the allocator reports to the PyTorch profiler, so it counts
  every tensor buffer, kernel-internal ones included, and nothing else. If another profiler is
  already running, the peak is ``None`` (unmeasured), never a guess.
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler's start/stop chatter (kineto writes to fd 2 directly)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _profiler_running() -> bool:
    return bool(torch.autograd.profiler._is_profiler_enabled)


class CpuAllocatorPeak:
    """``with CpuAllocatorPeak() as m: ...`` then ``m.peak_bytes`` (``None`` if a profiler was running)."""

    def __init__(self):
        self.peak_bytes: int | None = None
        self._prof = None

    def __enter__(self) -> CpuAllocatorPeak:
        if _profiler_running():
            return self
        from torch.profiler import ProfilerActivity, profile

        os.environ.setdefault("KINETO_LOG_LEVEL", "5")
        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        with _quiet_stderr():
            self._prof.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._prof is None:
            return
        with _quiet_stderr():
            self._prof.__exit__(*exc)
        events = [e for e in self._prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        live = peak = 0
        for event in sorted(events, key=lambda e: e.start_ns()):
            live += event.nbytes()
            peak = max(peak, live)
        self.peak_bytes = peak


class PeakMemory:
    """``with PeakMemory(device) as pm: ...`` then ``pm.peak_bytes`` (int, or None if unmeasurable)."""

    def __init__(self, device: torch.device | str, enabled: bool = True):
        self.device = torch.device(device)
        self.enabled = enabled
        self.peak_bytes: int | None = None
        self._cpu: CpuAllocatorPeak | None = None

    def __enter__(self) -> PeakMemory:
        if not self.enabled:
            return self
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._cpu = CpuAllocatorPeak().__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        elif self._cpu is not None:
            self._cpu.__exit__(*exc)
            self.peak_bytes = self._cpu.peak_bytes


def cpu_allocator_peak(fn) -> tuple[object, int | None]:
    """Run ``fn()``; return ``(its result, the CPU allocator's peak bytes during it)``."""
    with CpuAllocatorPeak() as measure:
        result = fn()
    return result, measure.peak_bytes


def available_ram() -> int:
    """``MemAvailable`` of this machine in bytes (Linux; 8 GiB when unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def cuda_obtainable(device: torch.device, share: float = 0.9) -> int:
    """Bytes this process's allocator can still get on ``device``, ``share`` of them: the driver's free memory
    and what its own cache keeps reserved but unused (blocks earlier calls freed, which the driver does not
    count as free), within the process's cap (``torch.cuda.set_per_process_memory_fraction``). What the
    process holds already (its weights, inputs, other models) is not in it."""
    free, total = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    obtainable = free + torch.cuda.memory_reserved(device) - allocated
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)  # not in every torch
    if fraction is not None:
        obtainable = min(obtainable, int(fraction(device) * total) - allocated)
    return int(share * max(obtainable, 0))
