"""The README report's section on ``benchmarks/generated_images.py``: inverting generated images."""

from __future__ import annotations

from benchmarks.report_format import cell, provenance
from benchmarks.report_stopping import EVERYWHERE

NO_GAIN = "auto-no-gain"  # generated_images.py's auto update with mean_gain=1
LABELS = {"encoder-only": "encoder-only", "adam": "the paper's Adam", "auto": "auto (stops itself)",
          EVERYWHERE: "auto's update, gain 3 on every image (the rule before)",
          NO_GAIN: "auto's update, no gain (`mean_gain=1`)"}


def generated_images(records: list[dict]) -> list[str]:
    firsts = {}  # each VAE's first record: what its records share
    for r in records:
        firsts.setdefault(r["metrics"]["vae"], r["metrics"])
    first = records[0]["metrics"]
    clipped = ", ".join(f"`{vae}` {m['clipped_images']}" for vae, m in firsts.items())
    losses = ", ".join(f"`{vae}` {m['eps_loss']:.3f}" for vae, m in firsts.items())
    out = ["### Generated images", "", provenance("generated_images", records), "",
           f"Per VAE, {first['images']} images of {first['size']}x{first['size']} sampled by a small epsilon UNet "
           f"(trained here for {first['eps_steps']} steps on that VAE's latents, final loss {losses}; BDIA-DDIM, "
           f"{first['diffusion_steps']} steps, gamma {first['gamma']}, seeded noise), decoded by the VAE, clamped and "
           "rounded to 8 bits, then inverted back to the sampled `z0`. Per-image NMSE(z0) dB: mean, median, and means "
           f"over the images with at least 0.1 % of their values at ±1 ({clipped} of them; where `auto` takes no "
           "gain) and over the others; evaluations: mean decoder+encoder passes per image. CPU seconds for all images.",
           *unseen(firsts), "", "| VAE | decoder inversion | cap | evaluations | NMSE dB mean | median "
           "| clipped images | other images | error along it | NMSE dB without it | image NMSE dB | seconds |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        m = r["metrics"]
        share = m.get("null_share")
        out.append(f"| `{m['vae']}` | {LABELS[m['series']]} | {m['cap'] or '–'} | {m['evaluations']:.1f} | "
                   f"{m['nmse_db']:.2f} | {m['nmse_db_median']:.2f} | {cell(m['nmse_db_clipped'])} | "
                   f"{cell(m['nmse_db_unclipped'])} | {'–' if share is None else f'{100 * share:.0f} %'} | "
                   f"{cell(m.get('nmse_db_visible'))} | {cell(m.get('pixel_nmse_db'))} | {m['seconds']:.1f} |")
    return out


def unseen(firsts: dict[str, dict]) -> list[str]:
    """Per VAE (its first record's metrics), what the image cannot show (nothing for an older results file,
    whose columns read '–')."""
    if any("null_channel_floor_db" not in m for m in firsts.values()):
        return []
    per_vae = "; ".join(
        f"`{vae}`: singular values {' / '.join(f'{v:.3g}' for v in m['decoder_channel_singular_values'])}, the "
        f"sampled latents' spread along the last combination {m['null_std_sampled']:.3f} (std), the encoder's "
        f"{m['null_std_encoded']:.3f}, floor {m['null_channel_floor_db']:.2f} dB" for vae, m in firsts.items())
    own = ", ".join(f"`{vae}` {m['pixel_nmse_db_sampled']:.2f} dB" for vae, m in firsts.items())
    return ["", "What the image cannot show (`benchmarks/observability.py`, as in the self-stopping section): the "
            "decoder's first layers respond to the latent channels with the singular values given per VAE next, and "
            "hardly at all to the last of those channel combinations; a latent exact but for the encoder's error "
            f"along it scores the floor, a practical floor for every method. {per_vae}. Columns *error along it*: "
            "the share of each series' squared error along that combination (mean over images); *NMSE dB without "
            "it*: the mean NMSE(z0) with that part of the error removed, how well the method recovered what the "
            "image shows; *image NMSE dB*: the mean NMSE of the decoded latents against the 8-bit images (the "
            f"sampled latents' own: {own}, from rounding and clamping)."]
