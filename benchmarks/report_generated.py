"""The README report's section on ``benchmarks/generated_images.py``: inverting generated images."""

from __future__ import annotations

from benchmarks.report_format import cell, provenance
from benchmarks.report_stopping import EVERYWHERE

NO_GAIN = "auto-no-gain"  # generated_images.py's auto update with mean_gain=1
LABELS = {"encoder-only": "encoder-only", "adam": "the paper's Adam", "auto": "auto (stops itself)",
          EVERYWHERE: "auto's update, gain 3 on every image (the rule before)",
          NO_GAIN: "auto's update, no gain (`mean_gain=1`)"}


def generated_images(records: list[dict]) -> list[str]:
    first = records[0]["metrics"]
    clipped = ", ".join(f"`{vae}` {n}" for vae, n in dict((r["metrics"]["vae"], r["metrics"]["clipped_images"])
                                                          for r in records).items())
    losses = ", ".join(f"`{vae}` {loss:.3f}" for vae, loss in dict((r["metrics"]["vae"], r["metrics"]["eps_loss"])
                                                                 for r in records).items())
    out = ["### Generated images", "", provenance("generated_images", records), "",
           f"Per VAE, {first['images']} images of {first['size']}x{first['size']} sampled by a small epsilon UNet "
           f"(trained here for {first['eps_steps']} steps on that VAE's latents, final loss {losses}; BDIA-DDIM, "
           f"{first['diffusion_steps']} steps, gamma {first['gamma']}, seeded noise), decoded by the VAE, clamped and "
           "rounded to 8 bits, then inverted back to the sampled `z0`. Per-image NMSE(z0) dB: mean, median, and means "
           f"over the images with at least 0.1 % of their values at ±1 ({clipped} of them; where `auto` takes no "
           "gain) and over the others; evaluations: mean decoder+encoder passes per image. CPU seconds for all images.",
           "", "| VAE | decoder inversion | cap | evaluations | NMSE dB mean | median | clipped images | other images "
           "| seconds |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        m = r["metrics"]
        out.append(f"| `{m['vae']}` | {LABELS[m['series']]} | {m['cap'] or '–'} | {m['evaluations']:.1f} | "
                   f"{m['nmse_db']:.2f} | {m['nmse_db_median']:.2f} | {cell(m['nmse_db_clipped'])} | "
                   f"{cell(m['nmse_db_unclipped'])} | {m['seconds']:.1f} |")
    return out
