"""``decinv demo``: invert a real photograph and a 16-frame pan with the bundled fixture VAE.

Follows the paper's protocol (``protocol.make_target``): the answer ``z*`` is known, the image
inverted is its 8-bit decoding, and each method is scored by NMSE(z) in dB, pixel PSNR of its
reconstruction, the steps it ran, wall time and peak memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .api import decode, encode, invert
from .fixture import load_fixture_vae
from .inputs import to_frames
from .memory import PeakMemory
from .metrics import nmse_db
from .options import check_int
from .protocol import make_target
from .visual import convergence_plot, error_image, panel, psnr


@dataclass
class Row:
    case: str
    method: str
    nmse_db: float
    psnr_db: float
    steps: float | None  # mean over the batch of the steps each sample ran (``auto`` stops on its own)
    seconds: float
    peak_bytes: int | None


def bundled_photo() -> np.ndarray:
    """The bundled real photograph (uint8 ``(256, 384, 3)``, held out from the fixture's training)."""
    with resources.files("decinv_fast").joinpath("assets/coffee.png").open("rb") as f:
        return np.asarray(Image.open(f).convert("RGB"))


def pan_clip(photo: np.ndarray, frames: int, size: int) -> np.ndarray:
    """``frames`` square crops sliding left to right across the photograph: ``(F, size, size, 3)``."""
    h, w = photo.shape[:2]
    y = (h - size) // 2
    xs = np.linspace(0, w - size, frames).round().astype(int)
    return np.stack([photo[y:y + size, x:x + size] for x in xs])


METHODS = (
    ("gradient-free fp32", dict(method="adam")),
    ("gradient-free bf16", dict(method="adam", dtype=torch.bfloat16)),
    ("gradient-free auto fp32", dict(method="auto")),
    ("gradient-based fp32", dict(method="grad")),
)


def _score(case, name, vae, z, target, steps, seconds, peak) -> Row:
    recon = decode(vae, z.float())
    return Row(case, name, nmse_db(z.float(), target.latents), psnr(recon, target.images), steps, seconds, peak)


def run_case(vae, case: str, pixels: torch.Tensor, steps: int, chunk: int | None, progress: bool,
             log: Callable[[str], None] | None = None):
    """All methods on one input; returns the table rows and the per-step curves. ``log``: told of each
    row as it is done (``"image 256x256: gradient-free fp32, 9.9 s"``)."""
    target = make_target(vae, pixels, seed=0)
    start = time.perf_counter()
    with PeakMemory(target.images.device) as pm:
        z_enc = encode(vae, target.images, chunk_frames=chunk)  # as many frames per call as the runs below
    rows = [_score(case, "encoder-only", vae, z_enc, target, None, time.perf_counter() - start, pm.peak_bytes)]
    curves, latents = {}, {"encoder-only": z_enc}
    for name, kw in METHODS:
        track: list[float] = []
        result = invert(vae, target.images, steps=steps, progress=progress, chunk_frames=chunk,
                        callback=lambda k, z, track=track: track.append(nmse_db(z.float(), target.latents)), **kw)
        rows.append(_score(case, name, vae, result.latents, target, float(result.stopped_at.float().mean()),
                           result.seconds, result.peak_bytes))
        # the gradient-based baseline's residual is its pixel error (what it minimises)
        label = f"{name} (pixel residual)" if kw["method"] == "grad" else name
        curves[label] = {"nmse_db": track, "residual": result.residuals.tolist()}
        latents[name] = result.latents
        if log is not None:
            log(f"{case}: {name}, {result.seconds:.1f} s")
    return rows, curves, latents, target


def run_demo(out_dir: str | Path = "demo_output", *, steps: int = 50, frames: int = 16, frame_size: int = 128,
             chunk_frames: int = 4, progress: bool = True, log: Callable[[str], None] | None = None) -> list[Row]:
    """Run the demo, write ``panel.png`` and ``convergence.png`` into ``out_dir``; return the rows.
    ``log``: told of each row as it is done (the command line's word of progress without a terminal)."""
    for name, value in (("steps", steps), ("frames", frames), ("frame_size", frame_size),
                        ("chunk_frames", chunk_frames)):
        check_int(name, value, 1)  # before minutes of work, not after the still image's runs
    photo = bundled_photo()
    largest = min(photo.shape[:2]) // 8 * 8  # the pan's square crops must fit in the photo's height
    if frame_size % 8 or frame_size > largest:
        raise ValueError(f"frame_size must be a multiple of 8 (the VAE's downsampling factor) in [8, {largest}] "
                         f"(the pan's crops of the bundled {photo.shape[0]}x{photo.shape[1]} photo), got {frame_size}")
    try:
        import matplotlib  # noqa: F401  (convergence.png is drawn after the still image's runs)
    except ImportError as exc:
        raise ImportError("the demo draws convergence.png with matplotlib, which is not installed: "
                          "pip install 'decinv-fast[demo]'") from exc
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    vae = load_fixture_vae()
    image = to_frames(photo[:, 64:320], device=None, dtype=torch.float32, spatial_factor=8, channels=3).pixels
    rows, curves, latents, target = run_case(vae, "image 256x256", image, steps, None, progress, log)
    x = target.images[0]
    encoder_decoded = decode(vae, latents["encoder-only"])[0]
    inverted_decoded = decode(vae, latents["gradient-free fp32"])[0]
    panel({
        "original (8-bit D(z*))": x,
        "encoder E(x) decoded": encoder_decoded,
        "gradient-free decoded": inverted_decoded,
        "error x10 encoder": error_image(encoder_decoded, x),
        "error x10 gradient-free": error_image(inverted_decoded, x),
    }).save(out / "panel.png")
    convergence_plot(out / "convergence.png", curves)
    clip = to_frames(pan_clip(photo, frames, frame_size)[None], device=None, dtype=torch.float32,
                     spatial_factor=8, channels=3).pixels
    video = clip.reshape(1, frames, *clip.shape[1:])
    video_rows, _, _, _ = run_case(vae, f"video {frames}x{frame_size}x{frame_size}", video, steps,
                                   chunk_frames, progress, log)
    return rows + video_rows


def format_table(rows: list[Row]) -> str:
    """A plain-text table of the rows (what ``decinv demo`` prints)."""
    head = (f"{'case':<22} {'method':<23} {'NMSE(z) dB':>10} {'PSNR dB':>8} {'steps':>6} {'seconds':>8} "
            f"{'peak MiB':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        peak = "n/a" if r.peak_bytes is None else f"{r.peak_bytes / 2**20:.1f}"
        steps = "–" if r.steps is None else f"{r.steps:g}"
        lines.append(f"{r.case:<22} {r.method:<23} {r.nmse_db:>10.2f} {r.psnr_db:>8.2f} {steps:>6} "
                     f"{r.seconds:>8.2f} {peak:>9}")
    return "\n".join(lines)
