"""Measure the fixture VAE as a test bed and write ``evaluation.json`` beside its weights.

    python scripts/evaluate_fixture_vae.py [--vae decinv_fast/assets/fixture_vae]

* Reconstruction PSNR of ``D(E(x))`` on held-out crops (photographs never trained on).
* NMSE(z) in dB the paper's way (``protocol.make_target``: ``z*`` drawn from the latent
  distribution, ``x = D(z*)`` rounded to 8 bits, invert ``x``) for encoder-only, gradient-free Adam
  and the gradient-based baseline at 20/50/100 steps; the mean over crops of per-crop dB.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
from argument_types import crop_size, positive

import decinv_fast
from decinv_fast.fixture import fixture_dir
from decinv_fast.protocol import make_target
from decinv_fast.testbed import heldout_crops, reconstruction_psnr

log = logging.getLogger("evaluate_fixture_vae")
STEPS = (20, 50, 100)


def mean_db(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    return float(decinv_fast.nmse_db(estimate.float(), truth, per_sample=True).mean())


def evaluate(vae_dir: str, count: int, size: int, seed: int) -> dict:
    vae = decinv_fast.load_fixture_vae(folder=vae_dir)
    images = heldout_crops(size=size, count=count)
    target = make_target(vae, images, seed=seed)
    rows = {"encoder-only": mean_db(decinv_fast.encode(vae, target.images), target.latents)}
    for steps in STEPS:
        for name, kw in (("gradient-free adam", {}), ("gradient-based adam", {"method": "grad"})):
            result = decinv_fast.invert(vae, target.images, steps=steps, **kw)
            rows[f"{name} {steps} steps"] = mean_db(result.latents, target.latents)
            log.info("%s %d steps: %.2f dB (%.1f s)", name, steps, rows[f"{name} {steps} steps"], result.seconds)
    return {
        "heldout_crops": count, "crop_size": size, "target_seed": seed,
        "reconstruction_psnr_db": reconstruction_psnr(vae, images),
        "reconstruction_psnr_db_128px": reconstruction_psnr(vae, heldout_crops(size=128, count=12)),
        "nmse_db": rows,
        "gain_adam50_over_encoder_db": rows["encoder-only"] - rows["gradient-free adam 50 steps"],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", default=str(fixture_dir()), help="a saved VAE of the fixture's kind; the report goes there")
    p.add_argument("--count", type=positive(int), default=12, help="held-out crops")
    p.add_argument("--size", type=crop_size, default=64, help="their side in pixels (a multiple of 8)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not (Path(args.vae) / "config.json").is_file():
        p.error(f"--vae {args.vae}: no config.json there")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    report = evaluate(args.vae, args.count, args.size, args.seed)
    out = Path(args.vae) / "evaluation.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    log.info("%s\nwrote %s", json.dumps(report, indent=2), out)


if __name__ == "__main__":
    main()
