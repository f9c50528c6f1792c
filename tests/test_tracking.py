"""The tracker's rules step by step: stop reasons, their precedence, and the step a latent is from."""

import torch

from decinv_fast.tracking import Tracker


def feed(tracker, steps):
    """Observe ``(pixel error², relative residual)`` pairs, one per step, for a batch of one."""
    y = torch.zeros(1, 2)
    for k, (pixel, rel) in enumerate(steps):
        tracker.observe(torch.tensor([k]), y + k, torch.tensor([pixel]), torch.tensor([rel]))


def test_a_sample_stopped_by_patience_keeps_its_reason_when_it_later_reaches_tol():
    """A stopped sample is still evaluated while the batch runs on: falling below tol afterwards must not
    relabel the stop, nor move the step it stopped at."""
    tracker = Tracker(torch.zeros(1, 2), keep_best=False, tol=0.1, patience=1)
    feed(tracker, [(1.0, 1.0), (2.0, 1.0), (3.0, 0.01)])  # patience stops at step 1; tol is met at step 2
    assert tracker.reasons() == ["patience"] and tracker.stop_step.tolist() == [2]


def test_tol_stops_a_sample_while_patience_is_also_watching():
    """With both rules on, reaching tol stops the sample even though its pixel error is still improving."""
    tracker = Tracker(torch.zeros(1, 2), keep_best=False, tol=0.5, patience=3)
    feed(tracker, [(1.0, 0.1)])
    assert tracker.reasons() == ["tol"] and not bool(tracker.active.any())
    assert tracker.stop_step.tolist() == [1]


def test_tol_wins_when_both_rules_stop_a_sample_at_the_same_step():
    tracker = Tracker(torch.zeros(1, 2), keep_best=False, tol=0.5, patience=1)
    feed(tracker, [(1.0, 1.0), (2.0, 0.1)])  # step 1: no improvement (patience) and below tol
    assert tracker.reasons() == ["tol"] and tracker.stop_step.tolist() == [2]


def test_a_sample_still_running_returns_the_final_point_and_the_step_count():
    """Without keep_best, a sample no rule stopped returns ``final`` = ``z_steps_run``, reported as step
    ``steps_run`` (the point after the last update, never evaluated), next to one stopped earlier."""
    y = torch.zeros(2, 2)
    tracker = Tracker(y, keep_best=False, tol=0.5, patience=None)
    for k in range(3):  # sample 0 falls below tol at step 1, sample 1 never does
        rel = torch.tensor([1.0 if k == 0 else 0.1, 1.0])
        tracker.observe(torch.tensor([k]), y + k, torch.tensor([1.0, 1.0]), rel)
    final = torch.full((2, 2), 7.0)
    latents, returned = tracker.finish(final, steps_run=3)
    assert returned.tolist() == [1, 3] and tracker.stop_step.tolist() == [2, 3]
    assert torch.equal(latents, torch.tensor([[1.0, 1.0], [7.0, 7.0]]))


def test_no_rule_but_divergence_stops_a_sample_before_the_earliest_stop():
    """``earliest_stop`` (a video's first-frame join): tol and patience wait for it, then stop at once if they
    still hold; a non-finite criterion stops a sample at any step."""
    tracker = Tracker(torch.zeros(1, 2), keep_best=False, tol=0.5, patience=1, earliest_stop=2)
    feed(tracker, [(1.0, 0.1), (2.0, 0.1)])  # tol met at steps 0 and 1, no improvement at step 1: both wait
    assert bool(tracker.active.all())
    feed(tracker, [(1.0, 0.1), (2.0, 0.1), (3.0, 0.1)])
    assert tracker.reasons() == ["tol"] and tracker.stop_step.tolist() == [3]
    tracker = Tracker(torch.zeros(1, 2), keep_best=True, tol=None, patience=1, earliest_stop=2)
    feed(tracker, [(1.0, 1.0), (float("nan"), 1.0)])
    assert tracker.reasons() == ["diverged"] and tracker.stop_step.tolist() == [1]
