"""A small epsilon-prediction UNet for the watermark benchmark, trained (seeded, CPU) on fixture latents.

Data: latents ``E(x)`` (the fixture VAE's scaled encoder mode) of random crops of the *training*
photographs (``decinv_fast.testbed.TRAIN_PHOTOS``). Loss: the DDPM noise-prediction MSE
``|| eps_theta(a_t x0 + s_t eps, t) - eps ||^2`` with ``t`` uniform over the scheduler's training
timesteps. A few CPU minutes make a weak but real denoiser: its samples live near the VAE's latent
distribution, unlike those of a random-weight UNet. ``random_eps_model`` is the honest alternative
when no training is wanted.

    python -m benchmarks.watermark_eps_model --size 128 --steps 1500
"""

from __future__ import annotations

import logging
import math
import time

import torch

import decinv_fast
from benchmarks.common import arg_parser, sd_ddim_scheduler
from decinv_fast.testbed import RandomCrops

log = logging.getLogger("watermark_eps_model")


def make_unet(latent_size: int, seed: int):
    """The benchmark's UNet2DModel: 4 latent channels, widths (32, 64, 64), attention at the bottom."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=latent_size, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64), layers_per_block=1,
        norm_num_groups=8, attention_head_dim=16,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    )


def random_eps_model(latent_size: int, seed: int = 0):
    """An untrained (seeded, default-initialised) UNet of the same architecture, in eval mode."""
    return make_unet(latent_size, seed).eval().requires_grad_(False)


@torch.no_grad()
def fixture_latents(vae, image_size: int, count: int, seed: int, batch: int = 32) -> torch.Tensor:
    """``(count, 4, image_size / 8, image_size / 8)`` encoder latents of random training crops."""
    crops = RandomCrops(image_size, seed)
    parts = []
    for start in range(0, count, batch):
        parts.append(decinv_fast.encode(vae, crops.batch(min(batch, count - start))))
    return torch.cat(parts)


def train_eps_model(vae, scheduler, *, image_size: int, steps: int, seed: int = 0, crops: int = 1024,
                    batch: int = 32, lr: float = 2e-3) -> tuple[torch.nn.Module, dict]:
    """Train :func:`make_unet` on fixture latents; returns the model (eval, frozen) and a record."""
    start = time.perf_counter()
    data = fixture_latents(vae, image_size, crops, seed)
    encode_seconds = time.perf_counter() - start
    unet = make_unet(data.shape[-1], seed).train()
    table = scheduler.alphas_cumprod.to(torch.float32)
    gen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 20)

    def lr_at(k: int) -> float:
        return lr * min(1.0, (k + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * k / steps))

    losses = []
    for k in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(k)
        x0 = data[torch.randint(len(data), (batch,), generator=gen)]
        flip = torch.rand(batch, generator=gen) < 0.5
        x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        t = torch.randint(len(table), (batch,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        ab = table[t][:, None, None, None]
        zt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        loss = (unet(zt, t).sample - eps).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if (k + 1) % max(1, steps // 10) == 0:
            log.info("eps model step %d/%d loss %.4f", k + 1, steps, sum(losses[-50:]) / len(losses[-50:]))
    record = dict(kind="trained", steps=steps, batch=batch, crops=crops, lr=lr, seed=seed,
                  latent_shape=list(data.shape[1:]), latent_std=float(data.std()),
                  final_loss=sum(losses[-50:]) / len(losses[-50:]), first_loss=losses[0],
                  encode_seconds=encode_seconds, seconds=time.perf_counter() - start,
                  parameters=sum(p.numel() for p in unet.parameters()))
    return unet.eval().requires_grad_(False), record


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--size", type=int, default=128, help="image crop size (latents are size/8)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="folder to save the UNet (diffusers format)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    scheduler = sd_ddim_scheduler()
    unet, record = train_eps_model(decinv_fast.load_fixture_vae(), scheduler, image_size=args.size,
                                   steps=args.steps, seed=args.seed)
    log.info("%s", record)
    if args.out:
        unet.save_pretrained(args.out)


if __name__ == "__main__":
    main()
