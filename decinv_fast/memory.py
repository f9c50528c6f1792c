"""Peak-memory measurement around a call, on the GPU and on the CPU.

* CUDA: the caching allocator's peak (``torch.cuda.max_memory_allocated``) during the call,
  absolute (model weights included), as the paper reports it.
* CPU (Linux): the process's resident-set high-water mark during the call minus the resident set
  when the call started, i.e. the most memory the call added at any moment. The high-water mark is
  reset by writing ``5`` to ``/proc/self/clear_refs``; where that is not possible the peak is
  ``None`` (unmeasured), never a guess.
"""

from __future__ import annotations

from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_cpu_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """``with PeakMemory(device) as pm: ...`` then ``pm.peak_bytes`` (int, or None if unmeasurable)."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.peak_bytes: int | None = None
        self._baseline: int | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif _reset_cpu_peak():
            self._baseline = _status_kib("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        elif self._baseline is not None:
            high = _status_kib("VmHWM")
            if high is not None:
                self.peak_bytes = max(0, high - self._baseline) * 1024


def cpu_allocator_peak(fn) -> tuple[object, int]:
    """Run ``fn()`` and return ``(its result, the CPU allocator's peak bytes during it)``.

    Reads the allocation and free events that PyTorch's CPU allocator reports to the profiler, so it
    counts every tensor buffer (kernel-internal ones included) and nothing else: the CPU analogue of
    ``torch.cuda.max_memory_allocated``, used to validate the memory planner and by the benchmarks.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return result, peak
