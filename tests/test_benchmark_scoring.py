"""The benchmarks' scoring on tiny hand-made inputs (benchmarks/stopping.py's, what the README's stopping section
reports; benchmarks/video_vaes.py's per latent frame)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.report_stopping import _goal
from benchmarks.stopping import (
    AUTO_CAP,
    Best,
    choose,
    keep_best_images,
    mean_share,
    mean_shares,
    per_image_db,
    score_series,
    span_oracle_db,
)


def test_per_image_db_is_one_value_per_image():
    truth = torch.ones((2, 1, 2, 2))
    z = truth.clone()
    z[0] += 0.1  # image 0: NMSE 0.01 = -20 dB; image 1: 0.0001 = -40 dB
    z[1] += 0.01
    assert per_image_db(z, truth).tolist() == pytest.approx([-20.0, -40.0], abs=1e-4)


def test_choose_takes_each_images_lowest_criterion():
    criterion = torch.tensor([[3.0, 1.0], [1.0, 2.0], [2.0, 3.0]])  # (points, images)
    nmse = torch.tensor([[-10.0, -11.0], [-20.0, -21.0], [-30.0, -31.0]])
    assert choose(criterion, nmse).tolist() == [-20.0, -11.0]


def test_keep_best_images_choose_among_the_first_n_evaluated_points():
    run = {"pixel": torch.tensor([[2.0, 2.0], [1.0, 3.0], [0.5, 1.0]]),
           "nmse": torch.tensor([[-10.0, -10.0], [-20.0, -30.0], [-40.0, -50.0]])}
    # n = 1: only z_0; n = 2: image 0 takes z_1 (pixel 1 < 2), image 1 keeps z_0; n = 3: both take z_2
    assert keep_best_images(run).tolist() == [[-10.0, -10.0], [-20.0, -10.0], [-40.0, -50.0]]
    assert keep_best_images(run).mean(1).tolist() == [-10.0, -15.0, -45.0]


def test_best_keeps_the_lowest_overall_and_within_the_evaluation_cap():
    best = Best(torch.tensor([-10.0, -30.0]))  # the encoder's per-image NMSE: mean -20
    assert (best.any, best.capped, best.images, best.run) == (-20.0, -20.0, [-10.0, -30.0], "encoder-only")
    best.offer(torch.tensor([-30.0, -30.0]), AUTO_CAP, "a")  # at the cap: counts for both
    best.offer(torch.tensor([-35.0, -45.0]), AUTO_CAP + 1, "b")  # over it: only for the overall best
    best.offer(torch.tensor([-25.0, -25.0]), 1, "c")  # worse than both: changes neither
    assert (best.any, best.capped, best.images, best.run) == (-40.0, -30.0, [-35.0, -45.0], "b")
    best.offer(torch.tensor([-34.0, -36.0]), 5, "d")
    assert (best.any, best.capped, best.images, best.run) == (-40.0, -35.0, [-35.0, -45.0], "b")


def test_mean_shares_is_mean_share_of_each_frame_alone():
    frames = torch.stack([torch.full((3, 4, 4), 0.5), torch.tensor([1.0, -1.0]).repeat(24).view(3, 4, 4)])
    assert mean_shares(frames) == pytest.approx([1.0, 0.0], abs=1e-12)


def test_mean_share_is_the_share_of_the_per_channel_spatial_means():
    constant = torch.full((2, 3, 4, 4), 0.5)
    assert mean_share(constant) == pytest.approx(1.0)
    zero_mean = torch.tensor([1.0, -1.0]).repeat(8).view(1, 1, 4, 4).expand(2, 3, 4, 4)
    assert mean_share(zero_mean) == pytest.approx(0.0, abs=1e-12)
    # channel 0 all 1 (mean part 16), channel 1 zero-mean +-1 (16): half the squared error in the means
    mixed = torch.stack([torch.ones(4, 4), zero_mean[0, 0]])[None]
    assert mean_share(mixed) == pytest.approx(0.5)


def test_span_oracle_finds_a_truth_in_the_affine_span_of_the_points():
    gen = torch.Generator().manual_seed(0)
    points = [torch.randn((2, 4, 2, 2), generator=gen) for _ in range(3)]
    truth = points[0] + 0.3 * (points[1] - points[0]) - 0.6 * (points[2] - points[0])
    assert (span_oracle_db(points, truth) < -100).all()
    # off the span, each image's best point there is no worse than any of the points
    off = truth + 0.1 * torch.randn(truth.shape, generator=gen)
    at_points = torch.stack([per_image_db(p, off) for p in points]).min(0).values
    assert (span_oracle_db(points, off) <= at_points + 1e-4).all()


@pytest.mark.parametrize(("gap", "evaluations", "verdict"), [
    (0.3, 10, "met"), (0.2, 10, "met"), (0.31, 10, "not met"), (0.2, 11, "not met"), (0.5, 11, "not met")])
def test_issue_7_goal_is_within_0_3_db_in_at_most_10_evaluations(gap, evaluations, verdict):
    assert _goal({"gap_to_best_returned_db": gap, "max_evaluations": evaluations}, "gap_to_best_returned_db") == verdict


def test_score_series_offers_each_images_oracle_and_each_step_counts_returned_point():
    """Two images, 12 evaluations (2 past the cap). The oracle is each image's best evaluated point or the
    returned z_12; within the cap, the first 10 evaluated or z_10. The returned point after n evaluations is
    the better of the last iterate and keep_best's pick (here always z_0, the lowest pixel error)."""
    assert AUTO_CAP == 10
    nmse = torch.full((12, 2), -10.0)
    nmse[3, 0], nmse[11, 0], nmse[5, 1] = -30.0, -50.0, -40.0  # image 0's best evaluated is past the cap
    curve = torch.full((12, 2), -12.0)
    curve[9] = torch.tensor([-35.0, -20.0])  # z_10: image 0's best within the cap
    curve[11] = torch.tensor([-14.0, -45.0])  # z_12: image 1's best overall
    pixel = torch.ones(12, 2)
    pixel[0] = 0.5
    residual = torch.ones(12, 2)
    residual[11, 0], residual[5, 1] = 0.1, 0.1
    run = dict(nmse=nmse, curve=curve, pixel=pixel, residual=residual, final=torch.tensor([-20.0, -45.0]),
               span_oracle=-60.0, mean_share_late=0.25, times=[0.1 * k for k in range(12)])
    best_any, best_returned = Best(torch.full((2,), -5.0)), Best(torch.full((2,), -5.0))
    row = score_series(run, best_any, best_returned, "s")
    assert (best_any.any, best_any.capped) == (-47.5, -37.5)  # oracles [-50, -45] and [-35, -40]
    assert (best_any.run, best_any.images) == ("s, oracle", [-50.0, -45.0])
    assert (best_returned.any, best_returned.capped) == (-29.5, -27.5)  # the mean of z_12, of z_10
    assert (best_returned.run, best_returned.images) == ("s after 12", [-14.0, -45.0])
    # a run whose keep_best pick beats its last iterate offers the pick, per image, under that name
    kept_wins = dict(run, pixel=torch.ones(12, 2))  # keep_best picks z_0 (the first lowest): nmse[0] = -10
    kept_wins["curve"] = torch.full((12, 2), -8.0)
    best = Best(torch.full((2,), -5.0))
    score_series(kept_wins, Best(torch.full((2,), -5.0)), best, "k")
    assert (best.any, best.run, best.images) == (-10.0, "k with keep_best after 1", [-10.0, -10.0])
    assert row["oracle_best_db"] == -47.5 and row["final_db"] == -32.5
    assert row["gap_to_oracle_db"] == {"pixel": 37.5, "residual": 2.5, "last": 15.0}
    assert row["evaluations"] == list(range(1, 13)) and row["keep_best_db"] == [-10.0] * 12
    assert row["nmse_db"] == [-12.0] * 9 + [-27.5, -12.0, -29.5]
    assert (row["span_oracle_10_db"], row["mean_share_after_10"], row["seconds"]) == (-60.0, 0.25, run["times"])


def test_generated_images_scores_split_the_clipped_images_from_the_others():
    from benchmarks.generated_images import scores

    db = torch.tensor([-10.0, -20.0, -30.0, -40.0])
    split = scores(db, torch.tensor([True, False, False, True]))
    assert split == dict(nmse_db=-25.0, nmse_db_median=-30.0, nmse_db_clipped=-25.0, nmse_db_unclipped=-25.0)
    none_clipped = scores(db[1:], torch.zeros(3, dtype=torch.bool))
    assert none_clipped["nmse_db_clipped"] is None and none_clipped["nmse_db_unclipped"] == -30.0


def test_per_latent_frame_nmse_is_each_clip_s_frame_then_the_mean():
    from benchmarks.video_vaes import per_latent_frame_db

    truth = torch.ones(2, 3, 2, 4, 4)
    latents = truth.clone()
    latents[0, :, 0] += 0.1  # clip 0, frame 0: an error of 1% of its energy (-20 dB)
    latents[1, :, 0] += 0.01  # clip 1, frame 0: -40 dB
    latents[:, :, 1] += 1.0  # frame 1: 0 dB in both clips
    assert per_latent_frame_db(latents, truth) == pytest.approx([-30.0, 0.0])
