"""Tree-ring watermark detection: encoder-only vs gradient-free (the paper's Adam, and ``method="auto"``,
which stops on its own within the same steps) vs gradient-based decoder inversion.

The analogue of Table 2 of Hong et al. (NeurIPS 2024) on the fixture VAE. ``--samples`` watermarked
and as many clean images are generated with BDIA-DDIM by a small epsilon UNet (trained here, seeded,
on fixture latents of the training photographs -- or a seeded random UNet with ``--eps-model random``),
decoded, saved as 8-bit PNGs and read back; each is then inverted image -> z0 (one of the four
decoder inversions) -> zT (BDIA inversion from z0) and tested against the ring key. Reported per
method: ROC AUC, TPR at 1% FPR (empirical; with fewer than 100 clean images that is TPR at zero
false positives), TPR/FPR at the theoretical p < 0.01, z0/zT NMSE against the known truths, time.

    python -m benchmarks.watermark_detection            # 32 + 32 images, 128x128 (~10-15 CPU minutes, estimated)
    python -m benchmarks.watermark_detection --quick    # 8 + 8 images, 64x64, short training (~1 min)
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from diffusers.utils import logging as diffusers_logging
from PIL import Image

import decinv_fast
from benchmarks import harness
from benchmarks.common import arg_parser, sd_ddim_scheduler
from benchmarks.watermark_eps_model import random_eps_model, train_eps_model
from decinv_fast.diffusion import Schedule
from decinv_fast.fixture import fixture_dir, new_fixture_vae
from decinv_fast.watermark import detect, generate, make_ring_key, roc_auc, save_images, tpr_at_fpr

log = logging.getLogger("watermark_detection")

CONFIGS = {
    "full": dict(samples=32, size=128, radius=3, diffusion_steps=20, decoder_steps=50, eps_steps=1200, crops=1024),
    "quick": dict(samples=8, size=64, radius=2, diffusion_steps=10, decoder_steps=10, eps_steps=60, crops=128),
}
BENCHMARK = "watermark_detection"
METHODS = (("encoder-only", "encoder"), ("gradient-free", "adam"), ("gradient-free auto", "auto"),
           ("gradient-based", "grad"))


def load_vae(seed: int):
    """The trained fixture VAE, or (clearly labelled) an untrained one of its architecture."""
    try:
        vae = decinv_fast.load_fixture_vae()
    except FileNotFoundError:
        torch.manual_seed(seed)
        vae = new_fixture_vae().eval().requires_grad_(False)
        return vae, "UNTRAINED fixture-architecture AutoencoderKL (trained weights absent: numbers meaningless)"
    weights = sorted(fixture_dir().glob("*.safetensors"))
    digest = hashlib.sha256(weights[0].read_bytes()).hexdigest()[:12] if weights else "unknown"
    return vae, f"fixture AutoencoderKL (trained weights, sha256 {digest})"


def through_png(images: torch.Tensor, folder: Path, prefix: str) -> torch.Tensor:
    """Save ``(B, 3, H, W)`` uint8 images as PNG and read them back (the 8-bit file path)."""
    paths = save_images(images, folder, prefix)
    back = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    out = torch.from_numpy(back).permute(0, 3, 1, 2).contiguous()
    if not torch.equal(out, images):
        raise RuntimeError("the PNG round trip changed the pixels")
    return out


def run_method(vae, unet, grid, key, images, truths, *, method, steps, gamma, batch) -> dict:
    """Detection over ``images`` in batches; returns per-image tensors and the stage timings."""
    parts, seconds = [], 0.0
    options = {} if method == "encoder" else dict(steps=steps)
    for start in range(0, len(images), batch):
        sl = slice(start, start + batch)
        begin = time.perf_counter()
        det = detect(vae, unet, grid, key, images[sl], gamma=gamma, method=method, **options)
        seconds += time.perf_counter() - begin
        z0_true, zT_true = truths[0][sl], truths[1][sl]
        parts.append(dict(
            score=det.score, log10_p=det.log10_p,
            z0_nmse=decinv_fast.nmse_db(det.inversion.z0.float(), z0_true.float(), per_sample=True),
            zT_nmse=decinv_fast.nmse_db(det.zT.float(), zT_true.float(), per_sample=True),
        ))
    merged = {k: torch.cat([p[k].double().cpu() for p in parts]) for k in parts[0]}
    merged["seconds"] = seconds
    return merged


def summarise(wm: dict, clean: dict, n_images: int) -> dict:
    tpr, fpr = tpr_at_fpr(wm["score"], clean["score"], 0.01)
    return dict(
        auc=roc_auc(wm["score"], clean["score"]), tpr_at_1pct_fpr=tpr, empirical_fpr_at_that_threshold=fpr,
        tpr_at_p_below_0_01=float((wm["log10_p"] < -2).double().mean()),
        fpr_at_p_below_0_01=float((clean["log10_p"] < -2).double().mean()),
        median_log10_p_watermarked=float(wm["log10_p"].median()), median_log10_p_clean=float(clean["log10_p"].median()),
        z0_nmse_db_median=float(torch.cat([wm["z0_nmse"], clean["z0_nmse"]]).median()),
        zT_nmse_db_median=float(torch.cat([wm["zT_nmse"], clean["zT_nmse"]]).median()),
        seconds_per_image=(wm["seconds"] + clean["seconds"]) / n_images,
    )


def main(argv=None) -> list[dict]:
    parser = arg_parser("Tree-ring watermark detection benchmark (Table 2 analogue)",
                        quick="8 + 8 small images, short training (~1 minute)")
    parser.add_argument("--samples", type=int, default=None, help="watermarked images (and as many clean ones)")
    parser.add_argument("--eps-model", choices=("trained", "random"), default="trained")
    parser.add_argument("--gamma", type=float, default=0.96, help="BDIA gamma for generation and inversion")
    parser.add_argument("--batch", type=int, default=16, help="images per inversion call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default=None, help="results JSON (default: the harness's "
                                                     "benchmarks/results/watermark_detection[_quick].json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    diffusers_logging.set_verbosity_error()  # accelerate hints and dtype notes are noise here
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = dict(CONFIGS["quick" if args.quick else "full"])
    if args.samples:
        cfg["samples"] = args.samples
    n, latent = cfg["samples"], cfg["size"] // 8
    started = time.perf_counter()

    vae, vae_note = load_vae(args.seed)
    scheduler = sd_ddim_scheduler()
    if args.eps_model == "trained":
        unet, eps_record = train_eps_model(vae, scheduler, image_size=cfg["size"], steps=cfg["eps_steps"],
                                           seed=args.seed, crops=cfg["crops"])
        eps_note = (f"small UNet2DModel TRAINED here for {eps_record['steps']} steps on fixture latents of "
                    f"training-photo crops (loss {eps_record['first_loss']:.3f} -> {eps_record['final_loss']:.3f})")
    else:
        unet, eps_record = random_eps_model(latent, args.seed), dict(kind="random", seed=args.seed)
        eps_note = "small UNet2DModel with seeded RANDOM weights (untrained)"
    grid = Schedule.from_scheduler(scheduler, cfg["diffusion_steps"])
    key = make_ring_key((4, latent, latent), radius=cfg["radius"], channel=3, seed=args.seed + 7)

    gen = torch.Generator().manual_seed(args.seed + 11)
    noise = torch.randn(2 * n, 4, latent, latent, generator=gen)
    marked = generate(vae, unet, grid, noise[:n], key=key, gamma=args.gamma)
    plain = generate(vae, unet, grid, noise[n:], gamma=args.gamma)
    with tempfile.TemporaryDirectory() as tmp:
        images_wm = through_png(marked.images, Path(tmp), "watermarked")
        images_clean = through_png(plain.images, Path(tmp), "clean")

    rows = []
    config = dict(cfg, gamma=args.gamma, key_channel=key.channel, key_bins=key.size, vae=vae_note, eps_model=eps_note,
                  eps_record=eps_record, scheduler="DDIMScheduler (Stable Diffusion config)", seed=args.seed,
                  generated_z0_std=float(marked.z0.std()))
    for label, method in METHODS:
        log.info("detecting with %s decoder inversion", label)
        kw = dict(method=method, steps=cfg["decoder_steps"], gamma=args.gamma, batch=args.batch)
        wm = run_method(vae, unet, grid, key, images_wm, (marked.z0, marked.zT), **kw)
        clean = run_method(vae, unet, grid, key, images_clean, (plain.z0, plain.zT), **kw)
        row = harness.record(BENCHMARK, method=label, backend="n/a" if method == "encoder" else "auto",
                             dtype=torch.float32, shape=[n, 3, cfg["size"], cfg["size"]], device="cpu",
                             metrics=summarise(wm, clean, 2 * n))
        row["config"] = dict(config, invert_method=method, decoder_steps=0 if method == "encoder" else kw["steps"])
        rows.append(row)

    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=1) + "\n")
    else:
        out = harness.save(BENCHMARK + ("_quick" if args.quick else ""), rows)
    print(f"VAE:       {vae_note}")
    print(f"eps model: {eps_note}")
    print(f"setup:     {n} watermarked + {n} clean, {cfg['size']}x{cfg['size']} images (latents 4x{latent}x{latent}), "
          f"ring radius {cfg['radius']} in channel 3 ({key.size} bins), BDIA gamma={args.gamma}, "
          f"{cfg['diffusion_steps']} DDIM steps, {cfg['decoder_steps']} decoder-inversion steps")
    header = f"{'method':<20}{'AUC':>7}{'TPR@1%FPR':>11}{'TPR p<.01':>11}{'FPR p<.01':>11}" \
             f"{'z0 NMSE':>10}{'zT NMSE':>10}{'s/img':>8}"
    print(header)
    for row in rows:
        m = row["metrics"]
        print(f"{row['method']:<20}{m['auc']:>7.3f}{m['tpr_at_1pct_fpr']:>11.3f}{m['tpr_at_p_below_0_01']:>11.3f}"
              f"{m['fpr_at_p_below_0_01']:>11.3f}{m['z0_nmse_db_median']:>9.2f}d{m['zT_nmse_db_median']:>9.2f}d"
              f"{m['seconds_per_image']:>8.3f}")
    print(f"(TPR@1%FPR: threshold = highest clean score when fewer than 100 clean images; NMSE medians in dB; "
          f"total {time.perf_counter() - started:.0f} s) -> {out}")
    return rows


if __name__ == "__main__":
    main()
