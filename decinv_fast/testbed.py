"""Real photographs for training and evaluating the fixture VAE (scikit-image's bundled data).

The photographs are split by *whole image*: the fixture VAE never sees a pixel of a held-out
photograph during training, so every evaluation on ``heldout_crops`` is on unseen content.
scikit-image is a development dependency; it is imported lazily with a clear error.
"""

from __future__ import annotations

import numpy as np
import torch

TRAIN_PHOTOS = (
    "astronaut", "chelsea", "hubble_deep_field", "immunohistochemistry", "retina",
    "coins", "moon", "brick", "grass", "gravel", "clock", "cell", "page", "text",
)
HELDOUT_PHOTOS = ("coffee", "rocket", "camera")


def load_photo(name: str) -> np.ndarray:
    """One bundled photograph as uint8 ``(H, W, 3)`` (grey images replicated to RGB)."""
    try:
        import skimage.data
    except ImportError as exc:  # pragma: no cover - dev dependency missing
        raise ImportError("the fixture test bed needs scikit-image: pip install 'decinv-fast[dev]'") from exc
    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(..., H, W, 3)`` -> float32 ``(..., 3, H, W)`` in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float() / 127.5 - 1.0
    return x.movedim(-1, -3).contiguous()


def grid_crops(image: np.ndarray, size: int, count: int) -> list[np.ndarray]:
    """``count`` crops of ``size``² spread evenly over the photograph (deterministic)."""
    h, w = image.shape[:2]
    if not 1 <= size <= min(h, w):
        raise ValueError(f"size: crops of {size}x{size} do not fit in a {h}x{w} photograph (at most {min(h, w)})")
    cols = max(1, int(np.ceil(np.sqrt(count * w / h))))
    rows = int(np.ceil(count / cols))
    ys = np.linspace(0, h - size, rows).round().astype(int)
    xs = np.linspace(0, w - size, cols).round().astype(int)
    crops = [image[y:y + size, x:x + size] for y in ys for x in xs]
    return crops[:count]


def heldout_crops(size: int = 64, count: int = 8) -> torch.Tensor:
    """``count`` crops from the held-out photographs, ``(count, 3, size, size)`` in [-1, 1]."""
    per_photo = -(-count // len(HELDOUT_PHOTOS))
    crops: list[np.ndarray] = []
    for name in HELDOUT_PHOTOS:
        crops += grid_crops(load_photo(name), size, per_photo)
    order = np.arange(len(crops)).reshape(len(HELDOUT_PHOTOS), per_photo).T.reshape(-1)
    return to_tensor(np.stack([crops[i] for i in order[:count]]))


class RandomCrops:
    """Seeded stream of random training crops (random scale, position and flips)."""

    def __init__(self, size: int, seed: int, names: tuple[str, ...] = TRAIN_PHOTOS):
        self.size = size
        self.photos = [to_tensor(load_photo(n)) for n in names]
        self.gen = torch.Generator().manual_seed(seed)

    def _one(self) -> torch.Tensor:
        photo = self.photos[int(torch.randint(len(self.photos), (1,), generator=self.gen))]
        h, w = photo.shape[-2:]
        # around the photographs' own scale (held-out crops are evaluated at native resolution)
        scale = float(torch.empty(1).uniform_(0.8, 1.25, generator=self.gen))
        side = min(h, w, int(round(self.size / scale)))
        y = int(torch.randint(h - side + 1, (1,), generator=self.gen))
        x = int(torch.randint(w - side + 1, (1,), generator=self.gen))
        crop = photo[:, y:y + side, x:x + side]
        if side != self.size:
            crop = torch.nn.functional.interpolate(
                crop[None], size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
            )[0]
        if bool(torch.randint(2, (1,), generator=self.gen)):
            crop = crop.flip(-1)
        return crop

    def batch(self, n: int) -> torch.Tensor:
        return torch.stack([self._one() for _ in range(n)]).clamp(-1, 1)


@torch.no_grad()
def reconstruction_psnr(vae, images: torch.Tensor) -> float:
    """Mean over images of the PSNR (dB) of ``D(E(x))`` against ``x`` (images in [-1, 1])."""
    from .api import decode, encode
    from .visual import psnr

    recon = decode(vae, encode(vae, images))
    return sum(psnr(r, x) for r, x in zip(recon, images, strict=True)) / len(images)
