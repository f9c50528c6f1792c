"""``first_frame_steps`` (on in ``auto``): a causal video VAE's first frames inverted alone, then the whole run
starting there (decinv_fast/first_frame.py)."""

import dataclasses
import math

import pytest
import torch
from video_vae_models import make_vae

import decinv_fast
from decinv_fast.api import prepare_run
from decinv_fast.loop import make_iteration
from decinv_fast.options import AUTO, auto_kwargs

pytestmark = pytest.mark.usefixtures("single_thread")
K = AUTO["options"]["first_frame_steps"]


@pytest.fixture(scope="module")
def clips():
    torch.manual_seed(0)
    return torch.rand(2, 5, 3, 32, 32) * 2 - 1  # 5 frames: Wan's 2 latent frames


@pytest.fixture(scope="module")
def clips9():
    torch.manual_seed(2)
    return torch.rand(2, 9, 3, 32, 32) * 2 - 1  # 9 frames: Wan's 3 latent frames


def by_hand(vae, clips, steps, **kwargs):
    """The first frames inverted alone for ``first_frame_steps`` and the first two latent frames' 5 frames from
    ``E(x)`` for ``second_frame_steps`` (no best point, no stop: the point of its last step), then the whole run
    (its cap lowered by ceil((k + 5 s) / F)) with its first latent frame set to the first run's result and its
    second to the second run's (both to the second run's without a first) before its step ``first_frame_join``
    (and Anderson's history restarted there, after the first step), from the public pieces: what ``invert``
    must equal. The first frames' run takes ``first_frame_gain`` as its mean gains, where given."""
    k, join = kwargs.pop("first_frame_steps"), kwargs.pop("first_frame_join", 0)
    s = kwargs.pop("second_frame_steps", 0)
    gain = kwargs.pop("first_frame_gain", None)
    gains = {} if gain is None else dict(mean_gain=gain, mean_gain_clipped=gain)
    alone = decinv_fast.invert(vae, clips[:, :1].contiguous(), steps=k, **dict(kwargs, **gains)) if k else None
    start = None if alone is None else alone.latents
    if s:
        pair = decinv_fast.invert(vae, clips[:, :5].contiguous(), steps=s, **dict(kwargs, keep_best=False,
                                                                                   patience=None))
        start = pair.latents[:, :, :2] if start is None else torch.cat([start, pair.latents[:, :, 1:2]], 2)
    cap = steps - math.ceil((k + 5 * s) / clips.shape[1])
    adapter, frames, plan = prepare_run(vae, clips, steps=cap, first_frame_steps=0, **kwargs)
    iteration = make_iteration(adapter, frames, plan)
    steps_run = 0
    while steps_run < plan.steps and (iteration.tracker is None or bool(iteration.tracker.active.any())):
        if steps_run == join:  # where the first latent frames take the runs apart's result
            iteration.z[:, :, :start.shape[2]] = start  # fsm, adam and anderson evaluate z itself
            if join and getattr(iteration, "mixer", None) is not None:
                iteration.mixer.restart()
        iteration.run_step()
        steps_run += 1
    return alone, iteration.finish(steps_run)[0]


@pytest.mark.parametrize("frames", [5, 9], ids=["2-latent-frames", "3-latent-frames"])
@pytest.mark.parametrize("kwargs", [auto_kwargs(), auto_kwargs(first_frame_join=2),
                                    dict(method="fsm", lr=0.5, first_frame_steps=3),
                                    dict(method="fsm", lr=0.5, first_frame_steps=3, first_frame_join=2),
                                    dict(method="fsm", lr=0.5, first_frame_steps=3, first_frame_gain=2),
                                    dict(method="fsm", lr=0.5, first_frame_steps=3, second_frame_steps=2),
                                    dict(method="adam", first_frame_steps=2), dict(method="adam", first_frame_steps=2,
                                                                                 first_frame_join=1)],
                         ids=["auto", "auto-join", "fsm", "fsm-join", "fsm-gain", "fsm-second", "adam", "adam-join"])
def test_the_first_frames_alone_then_the_whole_run_from_there(clips, clips9, kwargs, frames):
    """With 3 latent frames auto's second run (``second_frame_steps``) runs too; with 2 it does not."""
    vae, clips = make_vae("wan"), clips if frames == 5 else clips9
    apart = kwargs["first_frame_steps"] + (5 * kwargs.get("second_frame_steps", 0) if frames == 9 else 0)
    steps = math.ceil(apart / frames) + 2 + kwargs.get("first_frame_join", 0)
    out = decinv_fast.invert(vae, clips, steps=steps, **kwargs)
    alone, latents = by_hand(vae, clips, steps, **dict(kwargs, second_frame_steps=0 if frames == 5 else
                                                        kwargs.get("second_frame_steps", 0)))
    assert torch.equal(out.first_frame_steps, alone.stopped_at)
    assert out.second_frame_steps == (kwargs.get("second_frame_steps") or None if frames == 9 else None)
    assert out.steps_run <= steps - math.ceil(apart / frames)
    torch.testing.assert_close(out.latents, latents, rtol=0, atol=0)
    without = decinv_fast.invert(vae, clips, steps=steps, **dict(kwargs, first_frame_steps=0, second_frame_steps=0))
    assert not torch.equal(out.latents, without.latents) and without.first_frame_steps is None


@pytest.mark.parametrize("kwargs", [dict(method="fsm", lr=0.5, second_frame_steps=2),
                                    dict(auto_kwargs(first_frame_steps=0), first_frame_join=1),
                                    dict(method="adam", second_frame_steps=3)], ids=["fsm", "auto-join", "adam"])
def test_the_first_two_latent_frames_alone_then_the_whole_run_from_there(clips9, kwargs):
    """``second_frame_steps`` without ``first_frame_steps``: the whole run takes both latent frames of the second
    run, where ``first_frame_join`` says."""
    vae = make_vae("wan")
    steps = math.ceil(5 * kwargs["second_frame_steps"] / 9) + 2 + kwargs.get("first_frame_join", 0)
    out = decinv_fast.invert(vae, clips9, steps=steps, **kwargs)
    _, latents = by_hand(vae, clips9, steps, **dict(kwargs, first_frame_steps=0))
    assert out.first_frame_steps is None and out.second_frame_steps == kwargs["second_frame_steps"]
    torch.testing.assert_close(out.latents, latents, rtol=0, atol=0)
    without = decinv_fast.invert(vae, clips9, steps=steps, **dict(kwargs, second_frame_steps=0))
    assert not torch.equal(out.latents, without.latents)


def test_auto_solves_the_first_frames_alone_first(clips):
    vae = make_vae("wan")
    out = decinv_fast.invert(vae, clips, steps=K, method="auto")
    spelled = decinv_fast.invert(vae, clips, steps=K, **auto_kwargs())
    assert torch.equal(out.latents, spelled.latents) and torch.equal(out.first_frame_steps, spelled.first_frame_steps)
    assert out.first_frame_steps.shape == (2,) and int(out.first_frame_steps.max()) <= K


@pytest.mark.parametrize("case", ["images", "not separable", "one latent frame", "no step left",
                                  "no step after the join", "no step left for both"])
def test_where_it_cannot_run_it_does_not(clips, clips9, case):
    """Images, a VAE whose first latent frame is not a problem of its own (CogVideoX's: it normalises over
    time), 1-frame videos, or a cap that ``ceil(k / F)`` (``ceil((k + 5 s) / F)``) would use up: the run without
    the runs apart, bit for bit."""
    vae, images, steps, join = make_vae("wan"), clips, 4, {}  # ceil(18 / 5) = 4: no step left
    if case == "images":
        vae, images, steps = make_vae("wan"), clips[:, 0], 8
    elif case == "not separable":
        torch.manual_seed(1)
        vae, images, steps = make_vae("cogvideox"), torch.rand(1, 9, 3, 32, 32) * 2 - 1, 8
    elif case == "one latent frame":
        images, steps = clips[:, :1], 8
    elif case == "no step after the join":
        steps, join = 7, {"first_frame_join": 3}  # the whole run's cap 7 - 4: the join's step, none after it
    elif case == "no step left for both":
        images, steps = clips9, 4  # ceil((18 + 5 * 3) / 9) = 4 (ceil(18 / 9) = 2 alone would leave two)
    out = decinv_fast.invert(vae, images, steps=steps, **auto_kwargs(**join))
    plain = decinv_fast.invert(vae, images, steps=steps, **auto_kwargs(first_frame_steps=0, second_frame_steps=0,
                                                                       **join))
    assert out.first_frame_steps is None and out.second_frame_steps is None
    assert torch.equal(out.latents, plain.latents)


@pytest.mark.parametrize("case", ["two latent frames", "images", "not separable"])
def test_where_the_second_run_cannot_run_it_does_not(clips, case):
    """The first two latent frames' run alone: not where they are the whole video, nor where the first runs not."""
    vae, images = make_vae("wan"), clips  # 5 frames: 2 latent frames
    if case == "images":
        images = clips[:, 0]
    elif case == "not separable":
        torch.manual_seed(1)
        vae, images = make_vae("cogvideox"), torch.rand(1, 9, 3, 32, 32) * 2 - 1
    kw = dict(method="fsm", lr=0.5, steps=6)
    out = decinv_fast.invert(vae, images, second_frame_steps=3, **kw)
    assert out.second_frame_steps is None and torch.equal(out.latents, decinv_fast.invert(vae, images, **kw).latents)


def test_the_start_replaces_only_the_first_latent_frame(clips):
    adapter, frames, plan = prepare_run(make_vae("wan"), clips, method="fsm", steps=2)
    start = torch.full((2, 4, 1, 4, 4), 0.25)
    z = make_iteration(adapter, frames, dataclasses.replace(plan, start=start)).z
    e_x = make_iteration(adapter, frames, plan).z
    assert torch.equal(z[:, :, :1], start) and torch.equal(z[:, :, 1:], e_x[:, :, 1:])


@pytest.mark.parametrize("name", ["first_frame_steps", "first_frame_join", "second_frame_steps"])
@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_bad_first_frame_options(clips, name, value):
    with pytest.raises(ValueError, match=f"{name} must be an int >= 0"):
        decinv_fast.invert(make_vae("wan"), clips, steps=8, method="fsm", **{name: value})


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), "1"])
def test_bad_first_frame_gain(clips, value):
    with pytest.raises(ValueError, match="first_frame_gain"):
        decinv_fast.invert(make_vae("wan"), clips, steps=8, method="fsm", first_frame_steps=2, first_frame_gain=value)


def test_adam_has_no_first_frame_gain(clips):
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['first_frame_gain'\] for method='adam'"):
        decinv_fast.invert(make_vae("wan"), clips, steps=2, method="adam", first_frame_gain=2)


@pytest.mark.parametrize("name", ["first_frame_steps", "second_frame_steps"])
def test_grad_has_no_first_frame_steps(clips, name):
    with pytest.raises(TypeError, match=rf"unknown option\(s\) \['{name}'\] for method='grad'"):
        decinv_fast.invert(make_vae("wan"), clips, steps=2, method="grad", **{name: 2})


@pytest.mark.filterwarnings("ignore:cuda_graphs=True on a cpu device")
def test_the_join_survives_the_graph_warm_up(clips):
    """cuda_graphs=True (on the CPU: the capture path's warm-up, then eager steps): the join writes into the
    buffers the graph replays, between steps, so the run equals the one without graphs."""
    kw = dict(steps=6, method="fsm", lr=0.5, first_frame_steps=3, first_frame_join=2)
    graphed = decinv_fast.invert(make_vae("wan"), clips, cuda_graphs=True, **kw)
    torch.testing.assert_close(graphed.latents, decinv_fast.invert(make_vae("wan"), clips, **kw).latents,
                               rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore:cuda_graphs=True on a cpu device")
def test_the_runs_apart_run_eagerly_before_the_graphed_whole_run(clips9):
    """cuda_graphs=True graphs the whole run only; the runs apart (both, auto on 3 latent frames) run before it,
    so the result equals the run without graphs."""
    kw = dict(steps=8, method="fsm", lr=0.5, first_frame_steps=3, second_frame_steps=2)
    graphed = decinv_fast.invert(make_vae("wan"), clips9, cuda_graphs=True, **kw)
    assert graphed.second_frame_steps == 2
    torch.testing.assert_close(graphed.latents, decinv_fast.invert(make_vae("wan"), clips9, **kw).latents,
                               rtol=0, atol=0)


@pytest.mark.parametrize("kwargs", [dict(method="fsm", lr=0.5, tol=1e9),
                                    dict(method="adam", lr=0.5, patience=1, keep_best=True)], ids=["tol", "patience"])
def test_no_video_stops_before_the_join(clips, kwargs):
    """tol and patience stop no video before the step that evaluates the joined point, then at once if they hold:
    a tol every step meets would stop all at step 0, and here Adam's pixel error first rises (patience at step 1),
    before any saw the first frames' result."""
    out = decinv_fast.invert(make_vae("wan"), clips, steps=8, first_frame_steps=3, first_frame_join=2, **kwargs)
    assert out.first_frame_steps is not None and int(out.stopped_at.min()) >= 3
    if "tol" in kwargs:
        assert out.stopped_at.tolist() == [3, 3] and out.stop_reason == ["tol", "tol"]


def test_the_runs_apart_batch_and_chunk_as_the_whole_run_does(clips9):
    """With both runs apart (auto on 3 latent frames), a batch of videos equals each video alone, and one video
    per encoder/decoder call equals the whole batch per call: in fp64, since this random-weight VAE's decodings
    match no latent and the runs grow its latents, and fp32 rounding with them (6e-4 apart, with or without the
    runs apart)."""
    vae, kw = make_vae("wan"), dict(steps=7, method="auto", dtype=torch.float64)
    whole = decinv_fast.invert(vae, clips9, **kw)
    assert whole.second_frame_steps == 3 and whole.first_frame_steps is not None
    chunked = decinv_fast.invert(vae, clips9, chunk_frames=9, **kw)
    torch.testing.assert_close(chunked.latents, whole.latents, rtol=0, atol=1e-9)
    for i in range(2):
        alone = decinv_fast.invert(vae, clips9[i:i + 1], **kw)
        torch.testing.assert_close(alone.latents, whole.latents[i:i + 1], rtol=0, atol=1e-9)
        assert alone.returned_step.tolist() == whole.returned_step[i:i + 1].tolist()
