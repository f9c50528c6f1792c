"""Beyond the paper: ``mean_gain`` across image sizes.

``method="auto"`` with its ``mean_gain`` set to 1, 2, 3 or 4, every other option as
``options.AUTO`` (its ``mean_gain_clipped=1`` included: images with at least 0.1 % of their values at +-1
keep gain 1), on both VAEs of benchmarks/stopping.py at crops of 64, 128 and 256 pixels; capped
at 10 and at 30 decoder+encoder evaluations, stopping on its own. Protocol and score as there
(``make_target``; mean per-image NMSE(z) dB). Also, per VAE and size, the encoder-only NMSE and the
share of its squared error in the latents' per-channel spatial means (the part the gain scales);
per run, that share of the error of the latent it returns (``returned_mean_share``); and how much the
decoded image moves along the per-channel-mean directions (``mean_direction_response``): per image,
the singular values of the decoder's response to unit-norm per-channel-mean latent changes (central
differences at ``E(x)``), divided by its median response to unit-norm zero-mean random changes; the
median over images, strongest first. Values far below 1 mark means the pixels barely constrain.
``auto``'s own gain is the one with the best NMSE summed over every cell here (both VAEs, the three
sizes, both caps): real images have larger latents than stopping.py's 64x64 and 128x128 crops.

    python -m benchmarks.mean_gain            # 64/128/256 px, 8/4/4 crops (~8 CPU minutes)
    python -m benchmarks.mean_gain --quick    # 32/64 px, 2 crops, cap 10
"""

from __future__ import annotations

import time

import torch

import decinv_fast
from benchmarks import harness
from benchmarks.common import save, start_run
from benchmarks.observability import mean_direction_response
from benchmarks.stopping import VAES, load, mean_share, per_image_db
from decinv_fast.options import AUTO, auto_kwargs
from decinv_fast.protocol import make_target
from decinv_fast.testbed import heldout_crops

BENCHMARK = "mean_gain"
GAINS = (1.0, 2.0, 3.0, 4.0)
CONFIGS = {"full": dict(sizes={64: 8, 128: 4, 256: 4}, caps=(10, 30)),
           "quick": dict(sizes={32: 2, 64: 2}, caps=(10,))}


def auto_with_gain(vae, images: torch.Tensor, gain: float, cap: int):
    return decinv_fast.invert(vae, images, steps=cap, measure_memory=False, **auto_kwargs(mean_gain=gain))


def measure(name: str, size: int, crops: int, caps: tuple[int, ...]) -> list[dict]:
    vae = load(name)
    target = make_target(vae, heldout_crops(size=size, count=crops), seed=0)
    encoded = decinv_fast.encode(vae, target.images)
    common = dict(vae=name, size=size, crops=crops, encoder_only_db=float(per_image_db(encoded, target.latents).mean()),
                  encoder_mean_share=mean_share(encoded - target.latents),
                  mean_direction_response=mean_direction_response(vae, encoded))
    records = []
    for gain in GAINS:
        for cap in caps:
            start = time.perf_counter()
            out = auto_with_gain(vae, target.images, gain, cap)
            metrics = dict(common, mean_gain=gain, auto_gain=AUTO["options"]["mean_gain"], cap=cap,
                           seconds=time.perf_counter() - start,
                           evaluations=float(out.stopped_at.float().mean()),
                           nmse_db=float(per_image_db(out.latents, target.latents).mean()),
                           returned_mean_share=mean_share(out.latents - target.latents))
            records.append(harness.record(BENCHMARK, method="auto", backend="auto", dtype=torch.float32,
                                          shape=tuple(target.images.shape), device="cpu", metrics=metrics))
            print(f"{name:14s} {size:4d}px gain {gain:.0f} cap {cap:2d}: {metrics['nmse_db']:7.2f} dB "
                  f"after {metrics['evaluations']:.1f} evaluations", flush=True)
    return records


def main(argv: list[str] | None = None) -> None:
    cfg, args = start_run(CONFIGS, __doc__, argv)
    records = []
    for name in VAES:
        for size, crops in cfg["sizes"].items():
            records += measure(name, size, crops, cfg["caps"])
    print(f"wrote {save(BENCHMARK, records, args.quick)}")


if __name__ == "__main__":
    main()
