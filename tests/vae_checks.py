"""Checks the image-VAE test modules share: batches against one-by-one runs, the planner against the CPU's peak."""

import torch

import decinv_fast
from decinv_fast.memory import cpu_allocator_peak
from decinv_fast.planner import plan


def assert_auto_batches_equal_one_by_one_runs(vae, x: torch.Tensor) -> None:
    """``auto`` on the batch ``x`` returns each sample's latents and step as its run alone does (up to the
    convolutions' batch-size rounding)."""
    whole = decinv_fast.invert(vae, x, method="auto", steps=4, measure_memory=False)
    for i in range(x.shape[0]):
        alone = decinv_fast.invert(vae, x[i:i + 1], method="auto", steps=4, measure_memory=False)
        torch.testing.assert_close(alone.latents, whole.latents[i:i + 1], rtol=1e-4, atol=5e-5)
        assert alone.returned_step.tolist() == whole.returned_step[i:i + 1].tolist()


def assert_planned_within_25_percent(vae, x: torch.Tensor, method: str) -> None:
    """One step in chunks of two images: the planner's added bytes within 25% of the CPU allocator's peak."""
    run = dict(steps=1, method=method, chunk_frames=2, measure_memory=False)
    decinv_fast.invert(vae, x, **run)  # load kernels outside the measurement
    _, measured = cpu_allocator_peak(lambda: decinv_fast.invert(vae, x, **run))
    predicted = plan(vae, x.shape, dtype=torch.float32, device="cpu", method=method).added_per_chunk[2]
    assert abs(predicted - measured) <= 0.25 * measured, (predicted, measured)
