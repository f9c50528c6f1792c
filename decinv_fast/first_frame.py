"""The first latent frames of a video solved apart (options ``first_frame_steps``, ``second_frame_steps``), then
the whole run from them.

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

``second_frame_steps = s`` (``auto``: 3) runs ``s`` steps from ``E(x)`` on the videos' first ``1 + t`` frames alone
(``t`` the temporal compression), which a causal VAE encodes to its first two latent frames alone and decodes them
to alone (tests/test_video_vaes.py measures it), and the whole run starts its second latent frame at that run's
point of step ``s`` (its first at the first frames' result; without ``first_frame_steps``, both at that run's). Each
of its steps counts as ``(1 + t) / F`` of an evaluation. Why: the first frames' result stalls the second latent
frame (above), which converges fast from ``E(x)`` while the first moves with it, and a run on its 5 frames alone
gets that speed for 5/17 of an evaluation a step on 17 frames, without holding back the later frames as the join
does. On the fixture video VAE at a cap of 10: 9-frame clips +0.28 dB (benchmarks/video_vaes.py, the series
``auto-second-frame-together``; scratch: +0.16 to +0.36 on two other draws of ``z*`` and two other sets of clips),
17-frame clips +0.12 (+0.19 capped at 30; scratch, another draw: +0.11), 13-frame clips +0.04 (scratch; there it
costs a step of the whole run); on two other video VAEs trained by the fixture's recipe for fewer steps (scratch)
9-frame clips -0.03 and +0.00, 17-frame clips +0.14 and +0.22. Its second latent frame gains about 2 dB, the third
loses about 0.5. It runs for videos of three latent frames or more. (Started at the true first two latent frames,
the third does not stall: scratch.)

``first_frame_gain`` (fsm, km, anderson): the first frames' run's mean gain for every video (default: the run's
own, ``mean_gain`` and ``mean_gain_clipped``). ``auto``: 1.5, which beat 1, 2, 2.5 and 3 at 10 evaluations on two
draws (scratch; a latent frame whose decoder barely reads two of its four channels is another problem than a
whole image) and gains 0.73 dB at 10 on the benchmark (the series ``auto-first-frame-start``: gain 3; 0.64 before
``second_frame_steps``).
"""

from __future__ import annotations

import dataclasses
import math

from .inputs import Frames
from .loop import Plan
from .options import option


@dataclasses.dataclass(frozen=True)
class Apart:
    """The runs apart that a plan asks for and can take: ``k`` steps on the first frames (0: none) with ``first``,
    ``s`` on the first two latent frames' ``second`` frames (0: none) with ``pair``, and the ``whole`` run's plan,
    its cap lowered by their cost (its ``start`` and ``join`` set once they are done)."""

    k: int
    s: int
    second: int
    first: Plan
    pair: Plan
    whole: Plan


def plan_apart(adapter, frames: Frames, plan: Plan) -> Apart | None:
    """The runs apart for ``plan``, or ``None`` where none runs. Both need a VAE whose first latent frame is a
    problem of its own and videos of more than one latent frame; the second, more than two (else it is the whole
    run); together they need a step of the whole run left after the one where it takes their result
    (``first_frame_join``)."""
    k = option(plan.options, "first_frame_steps")
    s = option(plan.options, "second_frame_steps")
    count = frames.frames_per_video
    if not (k or s) or not frames.videos or not adapter.first_frame_alone or count <= 1:
        return None
    second = second_frames(adapter)
    if count <= second:  # two latent frames at most: the second run would be the whole one
        s = 0
    whole = plan.steps - math.ceil((k + s * second) / count)  # a step on n frames counts n / count, rounded up
    if not (k or s) or whole <= joins_at(plan):
        return None
    return Apart(k, s, second, *_plans(plan, k, s, whole))


def joins_at(plan: Plan) -> int:
    """The whole run's step whose point takes the runs apart's result as its first latent frames (0: the start)."""
    return option(plan.options, "first_frame_join")


def second_frames(adapter) -> int:
    """The frames the first two latent frames of a causal video VAE decode to: ``1 + temporal_compression``."""
    return 1 + adapter.temporal_compression


def leading_frames(frames: Frames, count: int) -> Frames:
    """The videos' first ``count`` frames as videos ``(B, 3, count, H, W)``."""
    return Frames(frames.pixels[:, :, :count].contiguous(), frames.batch, count, False, videos=True)


def _plans(plan: Plan, k: int, s: int, whole: int) -> tuple[Plan, Plan, Plan]:
    """The first frames' plan (``k`` steps, the same method and options but ``first_frame_gain`` for every mean
    gain where given), the first two latent frames' (``s`` steps from ``E(x)``, the same method and options, no
    best-point tracking or stopping: the point of its step ``s``, as the join takes it) and the whole run's
    (``whole`` steps)."""
    options = dict(plan.options, first_frame_steps=0, first_frame_join=0, first_frame_gain=None,
                   second_frame_steps=0)
    gain = option(plan.options, "first_frame_gain")
    first_options = dict(options) if gain is None else dict(options, mean_gain=gain, mean_gain_clipped=gain)
    first = dataclasses.replace(plan, steps=k, options=first_options)
    pair = dataclasses.replace(plan, steps=s, options=options, keep_best=False, tol=None, patience=None)
    return first, pair, dataclasses.replace(plan, steps=whole)
