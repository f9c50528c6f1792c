"""Learning-rate schedules against values worked out by hand, and the step table the updates read."""

import math

import pytest
import torch

from decinv_fast import reference
from decinv_fast.loop import Plan, step_table
from decinv_fast.reference import cosine_lr, flat_from, lr_schedule, paper_lr


def test_paper_schedule_50_steps():
    lr = 0.01
    s = lr_schedule(50, lr, "paper")  # N_cut = 50, W = 5, cosine until i < 40
    assert s[0] == pytest.approx(0.002)
    assert s[4] == pytest.approx(0.01)
    assert s[5] == pytest.approx(0.01)  # cosine starts at its peak
    assert s[20] == pytest.approx(lr * (1 + math.cos(math.pi * 15 / 45)) / 2)
    assert s[39] == pytest.approx(lr * (1 + math.cos(math.pi * 34 / 45)) / 2)
    assert s[40:] == [s[39]] * 10  # flat last 2/10


def test_paper_schedule_caps_at_100_steps():
    s = lr_schedule(250, 0.01, "paper")  # N_cut = 100, W = 10
    assert s[0] == pytest.approx(0.001)
    assert s[9] == pytest.approx(0.01)
    assert s[79] == pytest.approx(0.01 * (1 + math.cos(math.pi * 69 / 90)) / 2)
    assert s[80:] == [s[79]] * 170


def test_paper_schedule_short_runs_have_no_warmup():
    assert lr_schedule(1, 0.5, "paper") == [0.5]
    s = lr_schedule(5, 1.0, "paper")  # W = 0; i < 4 cosine over 5; then flat
    assert s[:4] == pytest.approx([(1 + math.cos(math.pi * i / 5)) / 2 for i in range(4)])
    assert s[4] == s[3]


def test_paper_lr_matches_list():
    assert [paper_lr(i, 37, 0.3) for i in range(37)] == lr_schedule(37, 0.3, "paper")


def test_cosine_schedule_matches_transformers_convention():
    s = lr_schedule(10, 1.0, "cosine")  # warmup 1 step starting at 0, then cosine to zero
    assert s[0] == 0.0
    assert s[1] == pytest.approx(1.0)
    assert s[5] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 9)))
    assert cosine_lr(10, 10, 1.0) == pytest.approx(0.0)


def test_constant_and_unknown():
    assert lr_schedule(3, 0.2, "constant") == [0.2] * 3
    with pytest.raises(ValueError, match="schedule"):
        lr_schedule(3, 0.2, "linear")


@pytest.mark.parametrize("steps", [1, 2, 5, 9, 10, 11, 15, 99, 100, 101, 250])
def test_paper_schedule_is_flat_from_flat_from_and_equals_paper_lr_everywhere(steps):
    s, flat = lr_schedule(steps, 0.3, "paper"), flat_from(steps, "paper")
    assert s == [paper_lr(i, steps, 0.3) for i in range(steps)]
    assert 0 <= flat < steps and s[flat:] == [s[flat]] * (steps - flat)
    assert flat == 0 or s[flat - 1] != s[flat]  # the first flat step, not a later one
    assert flat_from(steps, "constant") == 0 and flat_from(steps, "cosine") == steps - 1


def test_a_long_paper_schedule_works_out_only_its_changing_head(monkeypatch):
    calls = []

    def counted(i, steps, lr):
        calls.append(i)
        return paper_lr(i, steps, lr)

    monkeypatch.setattr(reference, "paper_lr", counted)
    s = reference.lr_schedule(10**6, 0.01, "paper")
    assert len(s) == 10**6 and s[-1] == s[79] == paper_lr(79, 100, 0.01)
    assert len(calls) == 80


def _table_row_by_row(plan: Plan, dtype: torch.dtype) -> torch.Tensor:
    rates = [paper_lr(i, plan.steps, plan.lr) for i in range(plan.steps)] if plan.schedule == "paper" else \
        lr_schedule(plan.steps, plan.lr, plan.schedule)
    betas = plan.options.get("betas", reference.ADAM_BETAS) if plan.method == "adam" else ()
    return torch.tensor([(r, *(1 - b ** (k + 1) for b in betas)) for k, r in enumerate(rates)], dtype=dtype)


@pytest.mark.parametrize("steps", [1, 2, 7, 80, 81, 250, 40_000])
@pytest.mark.parametrize("method,options", [("adam", {}), ("adam", {"betas": (0.0, 0.5)}), ("fsm", {})])
@pytest.mark.parametrize("schedule", ["paper", "constant", "cosine"])
def test_the_step_table_equals_its_rows_worked_out_one_by_one(steps, method, options, schedule):
    # 40_000 steps: Adam's 1 - 0.999^(k+1) reaches 1.0 in double near k = 37_000, and the table repeats its row
    for dtype in (torch.float32, torch.float64):
        plan = Plan(method, steps, 0.37, schedule, options, "auto", 1)
        table, expected = step_table(plan, torch.device("cpu"), dtype), _table_row_by_row(plan, dtype)
        assert table.dtype == expected.dtype and torch.equal(table, expected)
