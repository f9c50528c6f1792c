"""The README report's sections on tiny hand-made records: which record each cell is read from."""

from __future__ import annotations

import json

from benchmarks import harness
from benchmarks.report import accuracy, render
from benchmarks.report_stopping import stopping

RUN = {"device": "cpu", "torch": "2", "git_sha": "abc", "timestamp": "2026-01-01T00:00:00", "dtype": "float32",
       "shape": [2, 3, 16, 16]}


def test_accuracy_shows_each_series_peak_over_its_step_counts():
    points = [("encoder-only", 0, 1 * 2**20), ("fsm", 5, 2 * 2**20), ("fsm", 10, 3 * 2**20)]
    records = [dict(RUN, method=s, metrics=dict(series=s, steps=n, nmse_db=-20.0 - n, seconds=0.1 * n, peak_bytes=p))
               for s, n, p in points]
    lines = accuracy(records)
    assert "| series | dtype | peak MiB | 5 steps | 10 steps |" in lines
    assert "| fsm | float32 | 3.0 | -25.00 / 0.50 s | -30.00 / 1.00 s |" in lines


def test_stopping_reports_auto_capped_at_10_whatever_the_order_of_its_runs():
    best = dict(vae="v", size=16, encoder_only_db=-20.0, best_returned_db=-31.0, best_returned_10_db=-30.5,
                best_any_method_db=-32.0, best_any_method_10_db=-31.0, encoder_mean_share=0.5,
                decoder_channel_singular_values=[2.0, 1.0], null_channel_floor_db=-40.0, encoder_null_share=0.1)
    series = dict(best, series="fsm", nmse_db=[-25.0] * 10, keep_best_db=[-24.0] * 10, span_oracle_10_db=-33.0,
                  oracle_best_db=-31.0, gap_to_oracle_db={"pixel": 0.1, "residual": 0.2, "last": 0.3},
                  mean_share_after_10=None)
    adam = dict(best, series="adam", evaluations=[10], nmse_db=[-26.0])
    auto = dict(best, series="auto", seconds=[1.0], stop_reason=["tol"], null_share=0.2)
    long = dict(auto, cap=30, evaluations=[20.0], max_evaluations=30, nmse_db=[-31.0], gap_to_best_any_db=1.0,
                gap_to_best_returned_db=0.0)
    capped = dict(auto, cap=10, evaluations=[7.5], max_evaluations=9, nmse_db=[-30.9], gap_to_best_any_db=1.1,
                  gap_to_best_returned_db=0.1, gap_to_best_any_10_db=0.1, gap_to_best_returned_10_db=0.4)
    everywhere = dict(best, series="auto-gain3-everywhere", seconds=[2.0], stop_reason=["patience"], null_share=0.3,
                      cap=10, evaluations=[8.0], max_evaluations=10, nmse_db=[-30.7])
    lines = stopping([dict(RUN, method=m["series"], metrics=m) for m in (series, adam, long, capped, everywhere)])
    assert "| fsm | -25.00 | -25.00 | -25.00 | -25.00 | -25.00 | – | – | -24.00 | -33.00 | -31.00 | 0.10 | 0.20 | " \
        "0.30 |" in lines
    assert "| auto | 10 | 7.5 / 9 | 1.00 | **-30.90** | tol | 0.10 | 1.10 | 0.40 | 0.10 | 20 % |" in lines
    assert "| auto-gain3-everywhere | 10 | 8.0 / 10 | 2.00 | -30.70 | patience | – | – | – | – | 30 % |" in lines
    goal = next(line for line in lines if line.startswith("Issue 7's goal"))
    assert "**met** against the best a method returns, **not met** against the per-image oracle" in goal
    assert "**not met** against the best returned, **met** against the per-image oracle" in goal


def test_stopping_says_which_image_carries_the_gap_to_the_best_returned_run():
    from benchmarks.report_stopping import where_the_gap_sits

    first = dict(best_returned_run="g4 after 30", best_returned_per_image_db=[-31.0, -28.0, -31.0, -32.0],
                 image_pixel_mean=[0.1, -0.6, 0.2, 0.3], image_pixel_std=[0.4, 0.042, 0.3, 0.5])
    auto = dict(per_image_db=[-30.0, -20.0, -31.0, -32.0], per_image_mean_share=[0.1, 0.78, 0.0, 0.2])
    sits = where_the_gap_sits(auto, first)
    assert "(g4 after 30) sits, per image (`auto`'s NMSE minus that run's, dB): +1.00, +8.00, +0.00, +0.00." in sits
    assert "Image 2 (pixels: mean -0.60, std 0.042; 78 % of `auto`'s squared error there" in sits
    assert "carries 2.00 dB of the 2.25 dB gap; on the other 3 images `auto` is 0.33 dB behind on average." in sits
    ahead = where_the_gap_sits(dict(auto, per_image_db=[-32.0, -20.0, -31.0, -33.0]), first)
    assert "carries 2.00 dB of the 1.50 dB gap; on the other 3 images `auto` is 0.67 dB ahead" in ahead
    assert where_the_gap_sits({"nmse_db": [-30.0]}, first) == ""  # a record from before per-image NMSE
    assert where_the_gap_sits(dict(auto, per_image_db=[-33.0, -27.0, -31.0, -32.0]), first) == ""  # auto leads
    one = dict(first, best_returned_per_image_db=[-31.0], image_pixel_mean=[0.1], image_pixel_std=[0.4])
    assert where_the_gap_sits(dict(auto, per_image_db=[-30.0], per_image_mean_share=[0.1]), one) == ""


def test_generated_images_reports_each_series_and_a_dash_where_no_image_is_clipped():
    from benchmarks.report_generated import generated_images

    common = dict(vae="v", images=4, size=64, eps_steps=60, eps_loss=0.3, diffusion_steps=10, gamma=0.96,
                  clipped_images=0)
    rows = [dict(common, series="encoder-only", cap=0, evaluations=0.0, nmse_db=-5.0, nmse_db_median=-5.5,
                 nmse_db_clipped=None, nmse_db_unclipped=-5.0, seconds=0.0),
            dict(common, series="auto", cap=10, evaluations=7.25, nmse_db=-8.0, nmse_db_median=-8.5,
                 nmse_db_clipped=None, nmse_db_unclipped=-8.0, seconds=1.25)]
    lines = generated_images([dict(RUN, method=m["series"], metrics=m) for m in rows])
    assert "| `v` | encoder-only | – | 0.0 | -5.00 | -5.50 | – | -5.00 | – | – | – | 0.0 |" in lines  # an older file
    assert "| `v` | auto (stops itself) | 10 | 7.2 | -8.00 | -8.50 | – | -8.00 | – | – | – | 1.2 |" in lines
    assert any("(`v` 0 of them;" in line for line in lines)
    assert not any(line.startswith("What the image cannot show") for line in lines)
    unseen = dict(null_channel_floor_db=-19.5, decoder_channel_singular_values=[4.0, 0.0888],
                  null_std_sampled=0.21, null_std_encoded=0.1449, pixel_nmse_db_sampled=-41.0)
    for m, share, visible in zip(rows, (0.375, 0.8), (-9.0, -30.0), strict=True):
        m.update(unseen, null_share=share, nmse_db_visible=visible, pixel_nmse_db=visible - 7)
    lines = generated_images([dict(RUN, method=m["series"], metrics=m) for m in rows])
    auto = "| `v` | auto (stops itself) | 10 | 7.2 | -8.00 | -8.50 | – | -8.00 | 80 % | -30.00 | -37.00 | 1.2 |"
    assert auto in lines
    text = next(line for line in lines if line.startswith("What the image cannot show"))
    assert ("`v`: singular values 4 / 0.0888, the sampled latents' spread along the last combination 0.210 (std), "
            "the encoder's 0.145, floor -19.50 dB." in text)
    assert "(the sampled latents' own: `v` -41.00 dB, from rounding and clamping)." in text


def test_a_partial_results_file_is_reported_as_incomplete(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "RESULTS", tmp_path)
    partial = dict(RUN, method="summary", metrics={"note": "n", "vae": "v"})  # no "official vs invert" row
    (tmp_path / "reference_loop.json").write_text(json.dumps([partial]))
    text = render()
    assert "*`reference_loop`: results incomplete (StopIteration" in text
    assert "*`kernels`: no results yet (run `python -m benchmarks.kernels`).*" in text


def test_gpu_validation_pairs_measured_with_predicted_and_each_residue_with_its_commit():
    from benchmarks.report_gpu import gpu_validation

    plan = lambda chunk, method, **m: dict(RUN, method=method, shape=[1, 2, 3, 8, 8], metrics=dict(
        part="planner", chunk=chunk, predicted_total_bytes=2 * 2**30, **m))
    residue = lambda sha, name, left: dict(RUN, git_sha=sha, method="adam", backend=name, metrics=dict(
        part="residue", bytes_left_after_each_call=left))
    records = [plan(1, "adam", measured=True, peak_bytes=3 * 2**30, measured_over_predicted=1.5),
               plan(2, "adam", measured=False, why="too big"), plan(1, "grad", error="FloatingPointError: nan"),
               residue("old", "graphs", [2**20, 2 * 2**20, 3 * 2**20]), residue("new", "graphs", [2**20] * 3)]
    lines = gpu_validation(records)
    assert "| adam | 3.00 (2.00, 1.50x) | – (2.00) |" in lines
    assert "| grad | FloatingPointError: nan |  |" in lines
    assert "| call | git old | git new |" in lines and "| graphs | 1, 2, 3 | 1, 1, 1 |" in lines


def test_video_report_says_per_clip_what_auto_gains_at_its_larger_cap():
    from benchmarks.report_video import _auto_per_clip

    def run(cap, per_clip):
        return dict(RUN, method="auto", metrics=dict(cap=cap, per_clip_db=per_clip))

    runs = [run(50, [-22.0, -30.0, -21.0, -20.5]), dict(RUN, method="adam", metrics=dict(cap=50)),
            run(10, [-20.0, -25.0, -21.0, -20.0])]
    assert _auto_per_clip(runs) == ("Per clip, `auto` capped at 50 against capped at 10 (dB gained, sorted): "
                                    "+0.00, +0.50, +2.00, +5.00; median +1.25 dB, 2 of 4 clips gain more than 1 dB.")
    assert _auto_per_clip(runs[:2]) == ""  # one auto run
    assert _auto_per_clip([dict(RUN, method="auto", metrics=dict(cap=c)) for c in (10, 50)]) == ""  # older results


def test_video_report_says_per_clip_what_weights_per_latent_frame_gain_at_the_smallest_shared_cap():
    from benchmarks.report_video import _frame_weights_per_clip

    def run(method, cap, per_clip):
        return dict(RUN, method=method, metrics=dict(cap=cap, per_clip_db=per_clip))

    runs = [run("auto", 10, [-26.0, -25.0, -24.0]), run("auto", 50, [-30.0] * 3),
            run("auto-sample-weights", 50, [-29.0] * 3), run("auto-sample-weights", 10, [-25.0, -25.5, -21.5])]
    assert _frame_weights_per_clip(runs) == (
        "Per clip, `auto` against one set of mixing weights per video, both capped at 10 (dB gained, sorted): "
        "-0.50, +1.00, +2.50; median +1.00 dB, 1 of 3 clips gain more than 1 dB.")
    assert _frame_weights_per_clip(runs[:2]) == "" and _frame_weights_per_clip(runs[2:]) == ""  # no pair
    assert _frame_weights_per_clip(runs[1:3]).startswith(
        "Per clip, `auto` against one set of mixing weights per video, both capped at 50")


def test_video_report_gives_the_encoder_s_and_auto_s_error_per_latent_frame():
    from benchmarks.report_video import _per_latent_frame

    def run(method, cap, frames):
        return dict(RUN, method=method, metrics=dict(cap=cap, per_latent_frame_db=frames))

    runs = [run("encoder-only", None, [-15.0, -16.25]), run("auto", 10, [-24.5, -29.0]),
            run("adam", 50, [-16.0, -17.0]), run("auto", 50, [-28.125, -29.5]),
            run("auto-first-frame-together", 10, [-27.0, -29.0]), run("auto-first-frame-join", 10, [-26.5, -28.5]),
            run("auto-second-frame-together", 10, [-26.0, -28.0])]
    assert _per_latent_frame(runs) == (
        "Per latent frame (NMSE(z) dB of each clip's frame, mean over clips; frame 0 decodes to the first pixel "
        "frame alone, frame t to the 4 up to pixel frame 4t): the encoder's guess -15.00 / -16.25; `auto` capped at "
        "10 -24.50 / -29.00; `auto` capped at 50 -28.12 / -29.50; `auto` without its first frames alone capped at 10 "
        "-27.00 / -29.00; `auto` joining its first frames' result capped at 10 -26.50 / -28.50; `auto` without its "
        "first two latent frames apart capped at 10 -26.00 / -28.00.")
    assert _per_latent_frame([dict(RUN, method="auto", metrics=dict(cap=10))]) == ""  # older results


def test_video_report_has_auto_with_latent_mixing_in_both_tables_and_a_dash_for_older_predictions():
    from benchmarks.report_video import video_vaes

    acc = lambda method, cap, nmse: dict(RUN, method=method, shape=[12, 9, 3, 64, 64], metrics=dict(
        part="accuracy", cap=cap, evaluations=float(cap), nmse_db=nmse, psnr_db=20.0, seconds=1.0))
    plan = lambda method, gib, tiling: dict(RUN, method=method, shape=[1, 81, 3, 480, 832], metrics=dict(
        part="memory", vae="Wan 2.1", tiling=tiling, predicted_total_bytes=gib * 2**30))
    records = [acc("auto", 10, -25.0), acc("auto-latent", 10, -24.5),
               acc("auto-first-frame-together", 10, -26.0), acc("auto-first-frame-start", 10, -26.5),
               acc("auto-first-frame-join", 10, -27.5), acc("auto-second-frame-together", 10, -27.25),
               *(plan(m, g, False) for m, g in (("adam", 4.0), ("auto", 7.5), ("auto-latent", 4.25), ("grad", 9.0))),
               *(plan(m, g, True) for m, g in (("adam", 1.5), ("auto", 4.0), ("grad", 3.0)))]  # an older record
    lines = video_vaes(records)
    assert "| auto with latent mixing | 10 | 10.0 | -24.50 | 20.00 | 1.0 |" in lines
    assert "| auto, first frames not inverted alone first | 10 | 10.0 | -26.00 | 20.00 | 1.0 |" in lines
    assert "| auto, the first frames inverted at gain 3 | 10 | 10.0 | -26.50 | 20.00 | 1.0 |" in lines
    assert "| auto, the first frames' result joined after 4 steps | 10 | 10.0 | -27.50 | 20.00 | 1.0 |" in lines
    assert "| auto, the first two latent frames not run apart | 10 | 10.0 | -27.25 | 20.00 | 1.0 |" in lines
    assert any("a step there counts as 1/9 of an evaluation;" in line and "5/9 of an evaluation" in line
               for line in lines)
    assert "| VAE | frames x height x width | `enable_tiling()` | adam | auto | auto, latent mixing | grad |" in lines
    assert "| Wan 2.1 | 81 x 480 x 832 | no | 4.00 | 7.50 | 4.25 | 9.00 |" in lines
    assert "| Wan 2.1 | 81 x 480 x 832 | yes | 1.50 | 4.00 | – | 3.00 |" in lines


def test_video_report_gives_the_longer_clips_their_own_table_and_frames():
    from benchmarks.report_video import _longer_clips, video_vaes

    def run(method, cap, nmse, part="accuracy-long", frames=17):
        metrics = dict(part=part, evaluations=float(cap or 0), nmse_db=nmse, psnr_db=20.0, seconds=1.0,
                       per_latent_frame_db=[nmse - 1, nmse, nmse + 1])
        return dict(RUN, method=method, shape=[12, frames, 3, 64, 64],
                    metrics=metrics if cap is None else dict(metrics, cap=cap))

    longer = [run("encoder-only", None, -15.0), run("auto", 10, -25.0), run("auto-first-frame-join", 30, -26.0)]
    lines = _longer_clips(longer)
    assert lines[1].startswith("Longer clips (12 held-out clips of 17 frames at 64x64, latents `(B, 4, 5, 8, 8)`; "
                               "`python -m benchmarks.video_vaes`, or its `--long-only` alone, at git abc)")
    assert "| auto (stops itself) | 10 | 10.0 | -25.00 | 20.00 | 1.0 |" in lines
    assert "| auto, the first frames' result joined after 4 steps | 30 | 30.0 | -26.00 | 20.00 | 1.0 |" in lines
    assert lines[-1] == ("Per latent frame, these clips: the encoder's guess -16.00 / -15.00 / -14.00; auto (stops "
                         "itself) capped at 10 -26.00 / -25.00 / -24.00; auto, the first frames' result joined after 4 "
                         "steps capped at 30 -27.00 / -26.00 / -25.00.")
    assert _longer_clips([]) == []  # results from before them
    whole = video_vaes([run("auto", 10, -27.0, part="accuracy", frames=9), *longer])
    assert "\n".join(lines) in "\n".join(whole)  # after the 9-frame table, before the memory one
    assert whole.index("| auto (stops itself) | 10 | 10.0 | -27.00 | 20.00 | 1.0 |") < whole.index(lines[1])
