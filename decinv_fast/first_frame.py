"""The first latent frame of a video solved apart (option ``first_frame_steps``), then the whole run from it.

A causal video VAE (Wan's, Mochi's, Cosmos's, ...: ``VaeAdapter.first_frame_alone``) encodes its first latent
frame from the first frame alone and decodes that latent frame to the first frame alone, so the first latent
frame of ``E(D(z)) = E(x)`` is a problem of its own: ``E(D(z0)) = E(x0)`` on the first frame. It is also the
one the whole run solves slowest (benchmarks/video_vaes.py, ``per_latent_frame_db``: the first frame decodes from
latent channels its decoder barely reads), while a step on it alone costs a decoder and an encoder pass over one
frame instead of F. So ``first_frame_steps = k`` runs the method on the videos' first frames alone (1-frame
videos, stopping as the whole run stops), and the whole run takes its result as its first latent frame. The
whole run's cap is ``steps - ceil(k / F)``: the first run's steps count as ``1 / F`` of an evaluation each, so
``steps`` still bounds the evaluations of the whole. Where that leaves no step after the join (below), the VAE's
first latent frame is not a problem of its own or the inputs are images or 1-frame videos, it does not run
(``InversionResult.first_frame_steps`` is then ``None``), so ``auto`` can set it for all.

``first_frame_join = s`` (default 0: the whole run starts there) lets the whole run take ``s`` steps from ``E(x)``
first and gives the point of its step ``s`` the first frames' result as its first latent frame; Anderson's history,
whose differences that breaks, restarts there, and ``tol`` and ``patience`` stop no video before that step
(``Tracker.earliest_stop``), so each returns a point chosen among evaluations that include the joined one. On the
fixture video VAE the second latent frame converges much faster while the first one still moves with it (from
``E(x)``: -26.4 dB after 3 steps) than from the first frames' result (-24.6, then a slow climb, even from the exact
first latent frame): on 9-frame clips joining at step 4 gains 0.26 dB at 10 evaluations (benchmarks/video_vaes.py,
the series ``auto-first-frame-join``; 0.75 on another set of clips, scratch). But the later latent frames converge
faster from the first frames' result, and on 17-frame clips joining at step 4 loses 0.3 dB at 10 (its last latent
frame 1 dB worse; the benchmark's longer clips, and another draw in scratch) and ties at 30, so ``auto``, meant for
videos of 16 frames and more, starts there.

``first_frame_gain`` (fsm, km, anderson): the first frames' run's mean gain for every video (default: the run's
own, ``mean_gain`` and ``mean_gain_clipped``). ``auto``: 1.5, which beat 1, 2, 2.5 and 3 at 10 evaluations on two
draws (scratch; a latent frame whose decoder barely reads two of its four channels is another problem than a
whole image) and gains 0.64 dB at 10 on the benchmark (the series ``auto-first-frame-start``: gain 3).
"""

from __future__ import annotations

import dataclasses
import math

from .inputs import Frames
from .loop import Plan
from .options import option


def first_frame_steps(adapter, frames: Frames, plan: Plan) -> int:
    """The steps of the run on the first frames the plan asks for and can take (0: none): a VAE whose first latent
    frame is a problem of its own, videos of more than one latent frame, and a step of the whole run left from
    the one where its first latent frame takes the first run's result (``first_frame_join``)."""
    k = option(plan.options, "first_frame_steps")
    if not k or not frames.videos or not adapter.first_frame_alone:
        return 0
    count = frames.frames_per_video
    if count <= 1 or _whole_steps(plan.steps, k, count) <= joins_at(plan):
        return 0
    return k


def joins_at(plan: Plan) -> int:
    """The whole run's step whose point takes the first frames' result as its first latent frame (0: the start)."""
    return option(plan.options, "first_frame_join")


def _whole_steps(steps: int, k: int, count: int) -> int:
    """The whole run's cap: ``steps`` less the first run's ``k`` steps on one frame of ``count``, rounded up."""
    return steps - math.ceil(k / count)


def first_frames(frames: Frames) -> Frames:
    """The videos' first frames as 1-frame videos ``(B, 3, 1, H, W)``."""
    return Frames(frames.pixels[:, :, :1].contiguous(), frames.batch, 1, False, videos=True)


def plans(plan: Plan, k: int, count: int) -> tuple[Plan, Plan]:
    """The first frames' plan (``k`` steps, the same method and options but ``first_frame_gain`` for every mean
    gain where given) and the whole run's, whose cap is lowered by ``ceil(k / count)`` (its ``start`` and
    ``join`` set once the first run is done)."""
    options = dict(plan.options, first_frame_steps=0, first_frame_join=0, first_frame_gain=None)
    gain = option(plan.options, "first_frame_gain")
    if gain is not None:
        options.update(mean_gain=gain, mean_gain_clipped=gain)
    first = dataclasses.replace(plan, steps=k, options=options)
    return first, dataclasses.replace(plan, steps=_whole_steps(plan.steps, k, count))
