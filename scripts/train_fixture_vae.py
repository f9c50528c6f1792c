"""Train the bundled fixture VAE on crops of scikit-image's photographs (seeded, CPU, ~1 hour).

Two phases (``make fixture`` runs both; ~45 + ~10 minutes on 2 idle cores)::

    python scripts/train_fixture_vae.py --steps 6000 --out build/fixture_base
    python scripts/train_fixture_vae.py --init build/fixture_base --cycle-weight 0.2 --steps 1200 \
        --lr 3e-4 --seed 1 --out decinv_fast/assets/fixture_vae

Why the second phase: at this scale, pixel MSE + KL alone gives an encoder that is a poor left
inverse of the decoder (``E(D(z))`` far from ``z``: encoder-only NMSE -14.8 dB) and a map ``E∘D``
that is not cocoercive, so the fixed-point iteration the paper analyses does not converge on it
(gradient-free Adam gained 1.8 dB and drifted away with more steps; the forward step diverged).
The paper verifies cocoercivity for the real SD / LaVie / InstaFlow VAEs; a short fine-tune with a
latent cycle-consistency term ``||E(D(z)) - z||² / ||z||²`` (``z`` drawn from the posterior) gives
the small VAE that property, and better reconstructions too. The numbers are in
``decinv_fast/assets/fixture_vae/evaluation.json`` (``scripts/evaluate_fixture_vae.py``).

Every ``--log-every`` steps it logs the held-out PSNR and writes a resumable checkpoint
(``<out>/train_state.pt``, not shipped); ``--resume`` continues from it with the same RNG streams (the
same weights as a run never stopped) and refuses a checkpoint of other training arguments.
``<out>/training.json`` records the phases that made the weights: a ``--init`` run lists its initial
weights' phases before its own.

Loss: pixel MSE + a small KL term (the SD VAE's recipe without the perceptual and GAN terms, which
would need downloaded networks), plus the cycle term in phase two. Held-out photographs
(``testbed.HELDOUT_PHOTOS``) are never trained on; their PSNR is logged. At the end the latent
``scaling_factor`` and ``shift_factor`` are set so that training latents have zero mean and unit
variance, and fp16 weights are saved.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import time
from pathlib import Path

import torch
from argument_types import crop_size, not_negative, positive

from decinv_fast.fixture import load_fixture_vae, new_fixture_vae
from decinv_fast.testbed import RandomCrops, heldout_crops
from decinv_fast.visual import psnr

log = logging.getLogger("train_fixture_vae")
# the arguments that shape the weights: a checkpoint resumes only under the same ones
RUN_ARGS = ("steps", "batch", "size", "lr", "kl_weight", "seed", "init", "cycle_weight")


@torch.no_grad()
def heldout_psnr(vae, images: torch.Tensor) -> float:
    vae.eval()
    recon = vae.decode(vae.encode(images).latent_dist.mode()).sample
    vae.train()
    return psnr(recon, images)


@torch.no_grad()
def latent_statistics(vae, crops: RandomCrops, batches: int = 16) -> tuple[float, float]:
    vae.eval()
    latents = torch.cat([vae.encode(crops.batch(32)).latent_dist.mode() for _ in range(batches)])
    return latents.mean().item(), latents.std().item()


def save_state(path: Path, step: int, vae, opt, sched, crops: RandomCrops, run: dict) -> None:
    state = dict(step=step, model=vae.state_dict(), opt=opt.state_dict(), sched=sched.state_dict(),
                 torch_rng=torch.get_rng_state(), crop_rng=crops.gen.get_state(), run=run)
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def load_state(path: Path, vae, opt, sched, crops: RandomCrops, run: dict) -> int:
    state = torch.load(path, weights_only=False)
    saved = state.get("run")
    if saved is not None and saved != run:
        changed = ", ".join(f"--{k.replace('_', '-')} {saved.get(k)} (now {run.get(k)})" for k in RUN_ARGS
                            if saved.get(k) != run.get(k))
        raise SystemExit(f"--resume: {path} is a run with other arguments: {changed}")
    vae.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    torch.set_rng_state(state["torch_rng"])
    crops.gen.set_state(state["crop_rng"])
    return state["step"]


def train(args) -> dict:
    run = {k: getattr(args, k) for k in RUN_ARGS}
    out = Path(args.out)
    state_path = out / "train_state.pt"
    if args.resume and not state_path.exists():
        raise SystemExit(f"--resume: no checkpoint {state_path} to continue from")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    vae = new_fixture_vae().train()
    if args.init:  # fine-tune from saved weights (diffusers folder)
        vae.load_state_dict(load_fixture_vae(folder=args.init).state_dict())
    crops = RandomCrops(args.size, seed=args.seed)
    heldout = heldout_crops(size=128, count=12)
    opt = torch.optim.Adam(vae.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    out.mkdir(parents=True, exist_ok=True)
    first = load_state(state_path, vae, opt, sched, crops, run) + 1 if args.resume else 1
    start = time.time()
    last = min(args.steps, args.stop_after or args.steps)
    for step in range(first, last + 1):
        x = crops.batch(args.batch)
        posterior = vae.encode(x).latent_dist
        z = posterior.sample()
        recon = vae.decode(z).sample
        loss = (recon - x).pow(2).mean() + args.kl_weight * posterior.kl().mean()
        if args.cycle_weight:  # latent cycle consistency: E(D(z)) ~ z around the data's latents
            z_cycle = vae.encode(recon).latent_dist.mean
            loss = loss + args.cycle_weight * (z_cycle - z).pow(2).mean() / z.detach().pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % args.log_every == 0 or step == last:
            log.info("step %d loss %.5f held-out PSNR %.2f dB (%.0f s)", step, loss.item(),
                     heldout_psnr(vae, heldout), time.time() - start)
            save_state(state_path, step, vae, opt, sched, crops, run)
    if last < args.steps:
        return dict(stopped_after=last, note="unfinished run; export it with --export-checkpoint")
    report = dict(command=shlex.join(["python", "scripts/train_fixture_vae.py", *args.argv]),
                  **export(vae, crops, heldout, out), steps=args.steps, seed=args.seed,
                  seconds=round(time.time() - start))
    (out / "training.json").write_text(json.dumps({"phases": [*init_phases(args.init), report]}, indent=2) + "\n")
    return report


def init_phases(init: str | None) -> list[dict]:
    """The phases that made the ``--init`` weights, from their ``training.json`` (none if it has none)."""
    record = Path(init) / "training.json" if init else None
    if record is None or not record.is_file():
        return []
    report = json.loads(record.read_text())
    return report["phases"] if "phases" in report else [report]  # an older one-phase report


def export(vae, crops: RandomCrops, heldout: torch.Tensor, out: Path) -> dict:
    """Set the latent scaling/shift from training latents and save fp16 weights (diffusers format)."""
    mean, std = latent_statistics(vae, crops)
    vae.register_to_config(scaling_factor=1.0 / std, shift_factor=mean)
    vae.eval().half().save_pretrained(out, safe_serialization=True)
    return dict(heldout_psnr_fp32=heldout_psnr(vae.float(), heldout), scaling_factor=1.0 / std, shift_factor=mean)


def export_checkpoint(state_dir: Path, out: Path, seed: int, size: int) -> dict:
    """Export the weights of an unfinished run's checkpoint (for development while it trains); the latent
    statistics come from crops of the run's size and seed + 1 (the checkpoint's own, where it records them)."""
    path = state_dir / "train_state.pt"
    if not path.is_file():
        raise SystemExit(f"--export-checkpoint: no checkpoint {path}")
    state = torch.load(path, weights_only=False)
    run = state.get("run") or dict(seed=seed, size=size)
    vae = new_fixture_vae()
    vae.load_state_dict(state["model"])
    return export(vae, RandomCrops(run["size"], seed=run["seed"] + 1), heldout_crops(size=128, count=12), out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=positive(int), default=6000)
    p.add_argument("--batch", type=positive(int), default=16)
    p.add_argument("--size", type=crop_size, default=64, help="training crop side in pixels (a multiple of 8)")
    p.add_argument("--lr", type=positive(float), default=2e-3)
    p.add_argument("--kl-weight", type=not_negative, default=1e-6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive(int), default=2)
    p.add_argument("--log-every", type=positive(int), default=250)
    p.add_argument("--out", required=True,
                   help="folder for the weights (the shipped ones: decinv_fast/assets/fixture_vae, as make fixture)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/train_state.pt")
    p.add_argument("--init", default=None, help="start from these weights (a diffusers VAE folder)")
    p.add_argument("--cycle-weight", type=not_negative, default=0.0,
                   help="weight of the latent cycle-consistency loss ||E(D(z)) - z||^2 / ||z||^2")
    p.add_argument("--stop-after", type=positive(int), default=None,
                   help="stop after this many steps of the --steps schedule (a shorter-trained variant)")
    p.add_argument("--export-checkpoint", metavar="DIR", default=None,
                   help="only export the checkpoint in DIR (an unfinished run) to --out, then stop")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # recorded in training.json
    if args.init and not (Path(args.init) / "config.json").is_file():
        p.error(f"--init {args.init}: no config.json there (a folder this script wrote)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.export_checkpoint:
        log.info("%s", export_checkpoint(Path(args.export_checkpoint), Path(args.out), args.seed, args.size))
        return
    log.info("%s", train(args))


if __name__ == "__main__":
    main()
