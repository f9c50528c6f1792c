"""The first latent frame of a video solved apart (option ``first_frame_steps``), then the whole run from it.

A causal video VAE (Wan's, Mochi's, Cosmos's, ...: ``VaeAdapter.first_frame_alone``) encodes its first latent
frame from the first frame alone and decodes that latent frame to the first frame alone, so the first latent
frame of ``E(D(z)) = E(x)`` is a problem of its own: ``E(D(z0)) = E(x0)`` on the first frame. It is also the
one the whole run solves slowest (benchmarks/video_vaes.py, ``per_latent_frame_db``: the first frame decodes from
latent channels its decoder barely reads), while a step on it alone costs a decoder and an encoder pass over one
frame instead of F. So ``first_frame_steps = k`` runs the method on the videos' first frames alone (1-frame
videos, stopping as the whole run stops), and the whole run starts there: the first latent frame at that
run's result, the others at ``E(x)``'s. The whole run's cap is ``steps - ceil(k / F)``: the first run's steps
count as ``1 / F`` of an evaluation each, so ``steps`` still bounds the evaluations of the whole. Where that
leaves no step, the VAE's first latent frame is not a problem of its own or the inputs are images or 1-frame
videos, it does not run (``InversionResult.first_frame_steps`` is then ``None``), so ``auto`` can set it for all.
"""

from __future__ import annotations

import dataclasses
import math

from .inputs import Frames
from .loop import Plan
from .options import option


def first_frame_steps(adapter, frames: Frames, plan: Plan) -> int:
    """The steps of the run on the first frames the plan asks for and can take (0: none): a VAE whose first latent
    frame is a problem of its own, videos of more than one latent frame, and a step left for the whole run."""
    k = option(plan.options, "first_frame_steps")
    if not k or not frames.videos or not adapter.first_frame_alone:
        return 0
    count = frames.frames_per_video
    if count <= 1 or plan.steps - math.ceil(k / count) < 1:
        return 0
    return k


def first_frames(frames: Frames) -> Frames:
    """The videos' first frames as 1-frame videos ``(B, 3, 1, H, W)``."""
    return Frames(frames.pixels[:, :, :1].contiguous(), frames.batch, 1, False, videos=True)


def plans(plan: Plan, k: int, count: int) -> tuple[Plan, Plan]:
    """The first frames' plan (``k`` steps, the same method and options) and the whole run's, whose cap is lowered
    by ``ceil(k / count)`` (its ``start`` set once the first run is done)."""
    first = dataclasses.replace(plan, steps=k, options=dict(plan.options, first_frame_steps=0))
    return first, dataclasses.replace(plan, steps=plan.steps - math.ceil(k / count))
