"""Learning-rate schedules against values worked out by hand."""

import math

import pytest

from decinv_fast.reference import cosine_lr, lr_schedule, paper_lr


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
