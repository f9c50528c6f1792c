"""Train the fixture video VAE, a tiny ``AutoencoderKLWan`` (8x space, 4x time), on moving clips of
scikit-image's photographs (seeded, CPU, one thread, ~40 minutes). It makes the benchmarks' and tests'
video VAE that compresses time (``benchmarks/assets/fixture_video_vae``); the shipped weights came from
two runs, the second starting from the first::

    python scripts/train_fixture_video_vae.py --out build/video_base
    python scripts/train_fixture_video_vae.py --init build/video_base --steps 0 --cycle-steps 1400 --batch 4 \
        --frames 9 --cycle-lr 5e-4 --seed 2 --out benchmarks/assets/fixture_video_vae

Phase one: pixel MSE + 1e-6 KL of the posterior, Adam with a one-cycle schedule. Phase two adds the latent
cycle term ``||E(D(z)) - z||² / ||z||²`` (``z`` drawn from the posterior), as ``train_fixture_vae.py`` does
for the image fixture and for the same reason: it makes ``E∘D`` a map the fixed-point iteration converges on.
The second run trains on 9-frame clips: Wan encodes the first frame alone and then 4 at a time through a
causal cache, and a VAE trained on 5-frame clips only never learns the second group (its frames 6-9
reconstructed 4-6 dB worse). Held-out photographs (``testbed.HELDOUT_PHOTOS``) are never trained on;
their clips' PSNR is logged. At the end ``latents_mean``/``latents_std`` are set per channel from training
latents, the latent space Wan pipelines use, and fp32 weights and ``training.json`` are saved.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from argument_types import positive  # noqa: E402

ARCH = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=1, attn_scales=[],
            temperal_downsample=[False, True, True], dropout=0.0)


def arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=7500, help="phase one steps (0: skip it)")
    p.add_argument("--cycle-steps", type=int, default=1500, help="phase two steps, with the cycle term")
    p.add_argument("--batch", type=positive(int), default=8)
    p.add_argument("--frames", type=positive(int), default=5, help="frames per clip: 1 + 4k")
    p.add_argument("--size", type=positive(int), default=32, help="clip side in pixels, a multiple of 8")
    p.add_argument("--lr", type=positive(float), default=2e-3, help="phase one's peak learning rate")
    p.add_argument("--cycle-lr", type=positive(float), default=3e-4, help="phase two's starting learning rate")
    p.add_argument("--kl", type=float, default=1e-6)
    p.add_argument("--cycle-weight", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=positive(int), default=250)
    p.add_argument("--init", default=None, help="start from these weights (a save_pretrained folder)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if (args.frames - 1) % 4 or args.size % 8:
        p.error(f"--frames must be 1 + 4k and --size a multiple of 8, got {args.frames} and {args.size}")
    return args


def cycle_term(vae, recon: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``||E(D(z)) - z||² / ||z||²`` with ``E`` the posterior's mean."""
    return (vae.encode(recon).latent_dist.mean - z).pow(2).mean() / z.detach().pow(2).mean()


def train(vae, args, held: torch.Tensor, log: list[dict]) -> None:
    from decinv_fast.testbed_video import RandomClips

    clips = RandomClips(args.size, args.frames, args.seed)
    start = time.time()
    for phase, steps, lr, weight in ((1, args.steps, args.lr, 0.0),
                                     (2, args.cycle_steps, args.cycle_lr, args.cycle_weight)):
        if steps == 0:
            continue
        opt = torch.optim.Adam(vae.parameters(), lr=lr)
        sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05) if phase == 1
                 else torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * 0.1))
        for step in range(1, steps + 1):
            x = clips.batch(args.batch)
            posterior = vae.encode(x).latent_dist
            z = posterior.sample()
            recon = vae.decode(z).sample
            mse = (recon - x).pow(2).mean()
            loss = mse + args.kl * posterior.kl().mean()
            if weight:
                loss = loss + weight * cycle_term(vae, recon, z)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % args.log_every == 0 or step == steps:
                psnr = held_out_psnr(vae, held)
                print(f"phase {phase} step {step} mse {mse.item():.5f} held-out PSNR {psnr:.2f} dB "
                      f"({time.time() - start:.0f} s)", flush=True)
                log.append(dict(phase=phase, step=step, mse=mse.item(), heldout_psnr=psnr,
                                seconds=round(time.time() - start)))


@torch.no_grad()
def held_out_psnr(vae, clips: torch.Tensor) -> float:
    """Mean PSNR of ``D(E(x))`` over ``clips`` ``(N, 3, F, H, W)`` (raw latents: the config's latent space
    is set only at the end)."""
    from decinv_fast.visual import psnr

    was = vae.training
    vae.eval()
    recon = vae.decode(vae.encode(clips).latent_dist.mode()).sample
    vae.train(was)
    return sum(psnr(r, x) for r, x in zip(recon, clips, strict=True)) / len(clips)


@torch.no_grad()
def set_latent_space(vae, args) -> None:
    """Per-channel mean and std of training latents (raw ``mode()``): the config's ``latents_mean``, ``latents_std``."""
    from decinv_fast.testbed_video import RandomClips

    vae.eval()
    clips = RandomClips(args.size * 2, 9, args.seed + 1)
    latents = torch.cat([vae.encode(clips.batch(8)).latent_dist.mode() for _ in range(8)])
    vae.register_to_config(latents_mean=latents.mean(dim=(0, 2, 3, 4)).tolist(),
                           latents_std=latents.std(dim=(0, 2, 3, 4)).tolist())


def main(argv: list[str] | None = None) -> None:
    from diffusers import AutoencoderKLWan

    args = arguments(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    vae = AutoencoderKLWan(**ARCH).train()
    phases = []
    if args.init:
        init = AutoencoderKLWan.from_pretrained(args.init, local_files_only=True, low_cpu_mem_usage=False)
        vae.load_state_dict(init.state_dict())
        phases = json.loads((Path(args.init) / "training.json").read_text())["phases"]
    from decinv_fast.testbed_video import heldout_clips

    held = heldout_clips(64, 9)[:8].transpose(1, 2).contiguous()  # (8, 3, 9, 64, 64), as the VAE takes them
    log: list[dict] = []
    start = time.time()
    train(vae, args, held, log)
    set_latent_space(vae, args)
    out = Path(args.out)
    vae.save_pretrained(out, safe_serialization=True)
    own = dict(command=" ".join(["python", "scripts/train_fixture_video_vae.py", *(argv or sys.argv[1:])]),
               args=vars(args), seconds=round(time.time() - start), heldout_psnr=held_out_psnr(vae, held), log=log)
    (out / "training.json").write_text(json.dumps(dict(arch=ARCH, phases=[*phases, own]), indent=1) + "\n")
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
