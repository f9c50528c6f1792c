"""Moving clips of the bundled photographs, for the fixture video VAE (``benchmarks/assets/fixture_video_vae``).

A clip is a crop box that pans across a photograph and may zoom, rendered frame by frame with bilinear
sampling. Training clips come from ``testbed.TRAIN_PHOTOS`` at random; the held-out clips, from the
photographs the VAE never sees (``testbed.HELDOUT_PHOTOS``), move in four fixed ways.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .testbed import HELDOUT_PHOTOS, TRAIN_PHOTOS, load_photo, to_tensor


def render_clip(photo: torch.Tensor, boxes: list[tuple[float, float, float]], size: int,
                flip: bool = False) -> torch.Tensor:
    """``photo`` ``(3, H, W)`` seen through one square box ``(centre x, centre y, side)`` in pixels per frame,
    as ``(3, F, size, size)`` in [-1, 1] (the layout a video VAE takes); mirrored left-right with ``flip``."""
    h, w = photo.shape[-2:]
    thetas = [[[side / w * (-1 if flip else 1), 0.0, 2 * cx / w - 1], [0.0, side / h, 2 * cy / h - 1]]
              for cx, cy, side in boxes]
    grid = F.affine_grid(torch.tensor(thetas, dtype=torch.float32), (len(boxes), 3, size, size), align_corners=False)
    frames = F.grid_sample(photo[None].expand(len(boxes), -1, -1, -1), grid, mode="bilinear",
                           padding_mode="reflection", align_corners=False)
    return frames.transpose(0, 1).clamp(-1, 1)


class RandomClips:
    """Seeded stream of training clips: a box of 0.8 to 1.25 times the clip's size, panning up to a fifth of
    it per frame in a random direction, half of them zooming by 0.85 to 1.18 over the clip, half mirrored."""

    def __init__(self, size: int, frames: int, seed: int, names: tuple[str, ...] = TRAIN_PHOTOS):
        self.size, self.frames = size, frames
        self.photos = [to_tensor(load_photo(n)) for n in names]
        self.gen = torch.Generator().manual_seed(seed)

    def _uniform(self, low: float, high: float) -> float:
        return float(torch.empty(1).uniform_(low, high, generator=self.gen))

    def _one(self) -> torch.Tensor:
        photo = self.photos[int(torch.randint(len(self.photos), (1,), generator=self.gen))]
        h, w = photo.shape[-2:]
        side0 = self.size / self._uniform(0.8, 1.25)
        side1 = side0 * self._uniform(0.85, 1.18) if self._uniform(0, 1) < 0.5 else side0
        speed, angle = self._uniform(0, 0.2) * self.size, self._uniform(0, 2 * math.pi)
        dx, dy = (speed * f(angle) * (self.frames - 1) for f in (math.cos, math.sin))
        half = max(side0, side1) / 2
        x0 = self._uniform(half + max(0, -dx), w - half - max(0, dx)) if w - 2 * half > abs(dx) else w / 2
        y0 = self._uniform(half + max(0, -dy), h - half - max(0, dy)) if h - 2 * half > abs(dy) else h / 2
        boxes = [(x0 + dx * s, y0 + dy * s, side0 + (side1 - side0) * s) for s in np.linspace(0, 1, self.frames)]
        return render_clip(photo, boxes, self.size, flip=self._uniform(0, 1) < 0.5)

    def batch(self, n: int) -> torch.Tensor:
        """``n`` clips ``(n, 3, F, size, size)``."""
        return torch.stack([self._one() for _ in range(n)])


def heldout_clips(size: int = 64, frames: int = 9) -> torch.Tensor:
    """12 clips of the held-out photographs, 4 each: a pan right, a pan down, a zoom in and a diagonal pan,
    ``(12, frames, 3, size, size)`` in [-1, 1] (``invert``'s video layout)."""
    clips = []
    for name in HELDOUT_PHOTOS:
        photo = to_tensor(load_photo(name))
        h, w = photo.shape[-2:]
        t = np.linspace(0, 1, frames)
        travel = 0.12 * size * (frames - 1)
        motions = [
            [(w * 0.3 + travel * s, h * 0.45, size) for s in t],
            [(w * 0.6, h * 0.3 + travel * s, size) for s in t],
            [(w * 0.5, h * 0.55, size * (1.25 - 0.35 * s)) for s in t],
            [(w * 0.25 + 0.7 * travel * s, h * 0.65 - 0.7 * travel * s, size) for s in t],
        ]
        clips += [render_clip(photo, boxes, size) for boxes in motions]
    return torch.stack(clips).transpose(1, 2).contiguous()
