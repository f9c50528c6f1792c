"""CUDA graphs over the whole inversion step, with an eager stand-in that runs anywhere.

The step (every chunk's decoder + encoder pass and the fused update) only touches preallocated
buffers and reads its per-step values from device tensors (``loop.GradientFreeIteration``), so one
capture serves every step: replays see the new step counter, step size and bias corrections
without re-capture. Capture needs warm-up runs, which would advance the iteration, so the state is
snapshotted before warm-up and restored before capture.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)

WARMUP_STEPS = 2


class EagerGraph:
    """A stand-in with ``torch.cuda.CUDAGraph``'s replay interface that simply re-runs the function:
    lets the capture/replay logic run (and be tested) on the CPU."""

    def __init__(self, fn: Callable[[], None]):
        self.fn = fn

    def replay(self) -> None:
        self.fn()


_SIDE_STREAMS: dict[tuple[int, int], torch.cuda.Stream] = {}


def side_stream(device: torch.device) -> torch.cuda.Stream:
    """The stream warm-ups and captures run on: one per device and thread, made once and reused.

    cuBLAS keeps a workspace for every stream it has run on for the life of the process, so a new
    stream per call leaves memory behind each time (seen on an H100: 66 MiB more after every
    ``invert(..., cuda_graphs=True)`` with fresh streams; benchmarks/gpu_validation.py, ``residue``).
    Per thread, so that graphs of calls running at once in two threads do not share a workspace."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    key = (index, threading.get_ident())
    if key not in _SIDE_STREAMS:
        _SIDE_STREAMS[key] = torch.cuda.Stream(torch.device("cuda", index))
    return _SIDE_STREAMS[key]


def _capture_cuda(fn: Callable[[], None], device: torch.device):
    """Capture on a stream of ``device`` itself: ``torch.cuda.graph``'s default stream belongs to whichever
    device was current at the process's first capture, and kernels on the latents' own device would
    then miss the capture (a graph that replays nothing)."""
    with torch.cuda.device(device):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=side_stream(device)):
            fn()
    return graph


def _warm_up(fn: Callable[[], None], device: torch.device, steps: int) -> None:
    if device.type != "cuda":
        for _ in range(steps):
            fn()
        return
    side = side_stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(steps):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)


class GraphedStep:
    """``GraphedStep(iteration)()`` runs one step by replaying a captured graph of
    ``iteration.run_step``. ``capture`` defaults to a real CUDA graph on CUDA devices and to
    :class:`EagerGraph` elsewhere. If capture fails, a warning is issued and steps run eagerly.
    """

    def __init__(self, iteration, *, capture: Callable | None = None):
        self.iteration = iteration
        device = iteration.z.device
        if capture is None and device.type != "cuda":
            warnings.warn(f"cuda_graphs=True on a {device.type} device: there are no CUDA graphs; the step runs "
                          f"eagerly, after the capture path's {WARMUP_STEPS} warm-up steps (extra time, same result)",
                          RuntimeWarning, stacklevel=3)
        capture = capture or (_capture_cuda if device.type == "cuda" else (lambda fn, dev: EagerGraph(fn)))
        saved = iteration.snapshot()
        try:
            _warm_up(iteration.run_step, device, min(WARMUP_STEPS, iteration.plan.steps))
            iteration.restore(saved)
            self.graph = capture(iteration.run_step, device)
            self.captured = True
        except Exception as exc:  # capture can fail in many ways (host syncs, unsupported ops)
            iteration.restore(saved)
            warnings.warn(f"CUDA graph capture failed, running eagerly instead: {exc}", RuntimeWarning, stacklevel=3)
            log.debug("graph capture failure", exc_info=True)
            self.graph = EagerGraph(iteration.run_step)
            self.captured = False

    def __call__(self) -> None:
        self.graph.replay()
