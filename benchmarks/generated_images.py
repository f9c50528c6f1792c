"""Decoder inversion of generated images: the latents a diffusion model sampled, not an encoder's.

benchmarks/stopping.py and mean_gain.py invert photographs whose true latent lies near the encoder's
output. Here the truth is what a diffusion model sampled, for each of stopping.py's two fixture VAEs: the
watermark study's small epsilon UNet, trained here (seeded) on that VAE's latents of the training
photographs, runs BDIA-DDIM from seeded noise (no key); the VAE decodes, and the images are clamped and
rounded to 8 bits, as a pipeline saves them. Each is inverted back to ``z0`` by: encoder-only, the
paper's Adam (10 and 50 steps), ``auto`` capped at 10 and at 50 evaluations (stopping on its own), and
``auto``'s update with its gain on every image (``auto-gain3-everywhere``, the rule before
``mean_gain_clipped``) and with no gain (``mean_gain=1``), both capped at 10. Score: per-image NMSE(z0)
dB against the sampled latent, mean and median, and the means over the images with and without at
least 0.1 % of their values at +-1 (``clipping.CLIPPED_SHARE``: where ``auto`` takes no gain).
What the image cannot show (benchmarks/observability.py, as in stopping.py): the share of each series'
squared error along the channel combination the decoder's first layers nearly ignore, the NMSE with that
part of the error removed (``nmse_db_visible``), the floor (the encoder's error along it, the rest exact),
and the spread along it of the sampled latents and of the encoder's. And what the image shows: the NMSE of
each series' decoded latents against the 8-bit images, beside the sampled latents' own (rounding and clamping).

    python -m benchmarks.generated_images           # 64 images, 128x128, both VAEs (~35 CPU minutes)
    python -m benchmarks.generated_images --quick   # 8 images, 64x64, short training
"""

from __future__ import annotations

import time

import torch

import decinv_fast
from benchmarks import harness
from benchmarks.common import save, sd_ddim_scheduler, start_run
from benchmarks.observability import (
    channel_component,
    decoder_null_channel,
    null_channel_floor_db,
    null_channel_share,
    visible_nmse_db,
)
from benchmarks.report_generated import NO_GAIN
from benchmarks.report_stopping import EVERYWHERE
from benchmarks.stopping import VAES, load, per_image_db
from benchmarks.watermark_detection import CONFIGS as WATERMARK
from benchmarks.watermark_eps_model import train_eps_model
from decinv_fast.clipping import CLIPPED_SHARE, clipped_share
from decinv_fast.diffusion import Schedule
from decinv_fast.inputs import to_frames
from decinv_fast.loop import chunks
from decinv_fast.options import auto_kwargs
from decinv_fast.watermark import generate

BENCHMARK = "generated_images"
BATCH = 16  # images per invert call
RUNS = (("adam", 10, {}), ("adam", 50, {}), ("auto", 10, dict(method="auto")), ("auto", 50, dict(method="auto")),
        (EVERYWHERE, 10, auto_kwargs(mean_gain_clipped=None)), (NO_GAIN, 10, auto_kwargs(mean_gain=1.0)))
GENERATION = ("size", "diffusion_steps", "eps_steps", "crops")  # as the watermark study's
CONFIGS = {"full": dict(images=64, **{k: WATERMARK["full"][k] for k in GENERATION}, runs=RUNS),
           "quick": dict(images=8, **{k: WATERMARK["quick"][k] for k in GENERATION},
                         runs=tuple((label, cap // 5, kw) for label, cap, kw in RUNS))}
GAMMA, SEED = 0.96, 0


def generated(vae, cfg: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``(uint8 images, their sampled z0, the epsilon model's training record)``."""
    scheduler = sd_ddim_scheduler()
    unet, record = train_eps_model(vae, scheduler, image_size=cfg["size"], steps=cfg["eps_steps"], seed=SEED,
                                   crops=cfg["crops"])
    latent = cfg["size"] // 8
    noise = torch.randn(cfg["images"], 4, latent, latent, generator=torch.Generator().manual_seed(SEED + 11))
    sample = generate(vae, unet, Schedule.from_scheduler(scheduler, cfg["diffusion_steps"]), noise, gamma=GAMMA)
    return sample.images, sample.z0.float(), record


def scores(db: torch.Tensor, clipped: torch.Tensor) -> dict:
    """Mean and median per-image NMSE, and the means over the clipped and the other images (None if none)."""
    def mean(mask: torch.Tensor):
        return float(db[mask].mean()) if bool(mask.any()) else None

    return dict(nmse_db=float(db.mean()), nmse_db_median=float(db.median()), nmse_db_clipped=mean(clipped),
                nmse_db_unclipped=mean(~clipped))


def along_std(direction: torch.Tensor, latents: torch.Tensor) -> float:
    """The spread of ``latents`` ``(N, C, h, w)`` along the unit channel combination ``direction``: the std
    over every image and position of their component along it."""
    return float(channel_component(direction, latents.float()).std())


def pixel_db(vae, latents: torch.Tensor, pixels: torch.Tensor) -> float:
    """Mean per-image NMSE dB of the decoded ``latents`` against the 8-bit images ``pixels`` (in [-1, 1])."""
    decoded = decinv_fast.decode(vae, latents, chunk_frames=BATCH)
    return float(decinv_fast.nmse_db(decoded.float(), pixels.float(), per_sample=True).mean())


def inverted(vae, images: torch.Tensor, cap: int, kw: dict) -> tuple[torch.Tensor, float]:
    """The latents ``invert`` returns for the uint8 ``images`` (as a user passes them; float pixels of a bright
    image would read as [0, 1] and warn), ``BATCH`` per call, and the mean evaluations per image."""
    parts, evaluations = [], []
    for batch in chunks(len(images), BATCH):
        out = decinv_fast.invert(vae, images[batch], steps=cap, measure_memory=False, **kw)
        parts.append(out.latents)
        evaluations.append(out.stopped_at.float())
    return torch.cat(parts), float(torch.cat(evaluations).mean())


def measure(name: str, cfg: dict) -> list[dict]:
    vae = load(name)
    start = time.perf_counter()
    images, z0, eps_record = generated(vae, cfg)
    pixels = to_frames(images, device=None, dtype=None, spatial_factor=None, channels=None).pixels  # as invert reads
    # them: for the clipped share and the decoded images' error
    clipped = clipped_share(pixels.flatten(1)) >= CLIPPED_SHARE
    generation_seconds = time.perf_counter() - start
    start = time.perf_counter()
    encoded = decinv_fast.encode(vae, images)
    runs = [("encoder-only", 0, encoded, 0.0, time.perf_counter() - start)]
    null, channel_values = decoder_null_channel(vae)
    common = dict(vae=name, size=cfg["size"], images=len(images), clipped_images=int(clipped.sum()),
                  diffusion_steps=cfg["diffusion_steps"], gamma=GAMMA, eps_steps=eps_record["steps"],
                  eps_loss=eps_record["final_loss"], generation_seconds=generation_seconds,
                  null_channel_floor_db=null_channel_floor_db(null, encoded, z0),
                  decoder_channel_singular_values=channel_values,
                  null_std_sampled=along_std(null, z0), null_std_encoded=along_std(null, encoded),
                  pixel_nmse_db_sampled=pixel_db(vae, z0, pixels))
    print(f"{name}: {len(images)} generated images, {common['clipped_images']} clipped", flush=True)
    for label, cap, kw in cfg["runs"]:
        start = time.perf_counter()
        latents, evaluations = inverted(vae, images, cap, kw)
        runs.append((label, cap, latents, evaluations, time.perf_counter() - start))
    records = []
    for label, cap, latents, evaluations, seconds in runs:
        metrics = dict(common, series=label, cap=cap, evaluations=evaluations, seconds=seconds,
                       **scores(per_image_db(latents, z0), clipped), null_share=null_channel_share(null, latents, z0),
                       nmse_db_visible=visible_nmse_db(null, latents, z0), pixel_nmse_db=pixel_db(vae, latents, pixels))
        records.append(harness.record(BENCHMARK, method=label, backend="auto", dtype=torch.float32,
                                      shape=tuple(images.shape), device="cpu", metrics=metrics))
        print(f"{label:22s} cap {cap:2d}: {metrics['nmse_db']:7.2f} dB mean, {metrics['nmse_db_median']:7.2f} median, "
              f"{evaluations:.1f} evaluations, {seconds:.1f} s", flush=True)
    return records


def main(argv: list[str] | None = None) -> None:
    cfg, args = start_run(CONFIGS, __doc__, argv)
    records = [r for name in VAES for r in measure(name, cfg)]
    print(f"wrote {save(BENCHMARK, records, args.quick)}")


if __name__ == "__main__":
    main()
