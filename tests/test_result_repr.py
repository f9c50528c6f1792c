"""``InversionResult``'s one-line repr: first and last residual, the returned steps (at most 8 shown), the
secant step sizes (``lr="auto"``), every stop reason once, the peak in MiB."""

import torch

from decinv_fast.result import InversionResult


def result(batch: int, stop_reason: list[str], peak_bytes: int | None) -> InversionResult:
    steps = 3
    history = torch.tensor([0.5, 0.25, 0.125])[:, None].expand(steps, batch)
    return InversionResult(
        latents=torch.zeros(batch, 4, 2, 2, dtype=torch.float16), residuals=history[:, 0].clone(),
        per_sample_residual=history[-1].clone(), residual_history=history.clone(), steps_run=steps, seconds=1.5,
        peak_bytes=peak_bytes, method="fsm", dtype=torch.float16, backend="torch",
        pixel_residual_history=history.clone(), returned_step=torch.arange(batch),
        stopped_at=torch.full((batch,), steps), stop_reason=stop_reason)


def test_repr_shows_the_first_and_last_residual_and_every_stop_reason_once():
    text = repr(result(3, ["tol", "steps", "tol"], peak_bytes=3 * 2**20))
    assert "residual 0.5 -> 0.125," in text, text
    assert "stopped by steps/tol," in text, text
    assert "latents (3, 4, 2, 2) float16" in text and "returned_step [0, 1, 2]," in text, text
    assert "1.50 s, peak 3.0 MiB, backend='torch')" in text, text
    assert "peak" not in repr(result(3, ["tol"] * 3, peak_bytes=None))


def test_repr_shows_eight_returned_steps_and_marks_more():
    eight, nine = repr(result(8, ["steps"] * 8, None)), repr(result(9, ["steps"] * 9, None))
    assert "returned_step [0, 1, 2, 3, 4, 5, 6, 7]," in eight, eight
    assert "returned_step [0, 1, 2, 3, 4, 5, 6, 7, ...]," in nine, nine
    assert "stopped by steps," in nine and "\n" not in nine


def test_repr_shows_each_samples_secant_step_size_only_for_lr_auto():
    """``secant_lr`` (``lr="auto"``) was in the result but not in its one-line summary."""
    auto = result(2, ["steps"] * 2, None)
    auto.secant_lr = torch.tensor([0.7071, 1.0])
    text = repr(auto)
    assert "returned_step [0, 1], secant_lr [0.707, 1], stopped by steps," in text, text
    assert "secant_lr" not in repr(result(2, ["steps"] * 2, None))
