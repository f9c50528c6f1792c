"""Tiny random-weight models and schedulers shared by the diffusion and watermark tests."""

from __future__ import annotations

import torch

SD_SCHEDULE = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False,
                   steps_offset=1, clip_sample=False)


def sd_scheduler(**overrides):
    """A ``DDIMScheduler`` with Stable Diffusion's configuration (no clipping)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**{**SD_SCHEDULE, **overrides})


def tiny_unet(dtype: torch.dtype = torch.float32, seed: int = 0):
    """``UNet2DModel``: 4 channels, 8x8 latents, widths (8, 16), one attention block."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, attention_head_dim=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )
    return unet.to(dtype).eval().requires_grad_(False)


def tiny_cond_unet(dtype: torch.dtype = torch.float32, seed: int = 0, **config):
    """``UNet2DConditionModel``: 4 channels, 8x8 latents, cross-attention to 8-dim text embeddings (``config``:
    other values of its config, e.g. per-block ``cross_attention_dim``)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**{**dict(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, attention_head_dim=4, cross_attention_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ), **config})
    return unet.to(dtype).eval().requires_grad_(False)


def tiny_text_time_unet(dtype: torch.dtype = torch.float32, seed: int = 0):
    """SDXL-style ``UNet2DConditionModel`` (``addition_embed_type="text_time"``): like :func:`tiny_cond_unet`, and it
    takes ``added_cond_kwargs`` with ``text_embeds`` ``(B, 8)`` (the pooled embedding) and ``time_ids`` ``(B, 6)``."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        norm_num_groups=4, attention_head_dim=4, cross_attention_dim=8, addition_embed_type="text_time",
        addition_time_embed_dim=4, projection_class_embeddings_input_dim=8 + 6 * 4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    return unet.to(dtype).eval().requires_grad_(False)


def text_embeddings(batch: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(conditional, unconditional)`` random ``(B, 5, 8)`` / ``(1, 5, 8)`` embeddings."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 5, 8, generator=gen).to(dtype), torch.randn(1, 5, 8, generator=gen).to(dtype))


def noise(shape=(2, 4, 8, 8), dtype: torch.dtype = torch.float32, seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


class LinearPatchVae:
    """An exactly invertible stand-in VAE as an ``(encode_fn, decode_fn)`` pair.

    ``D`` maps every latent pixel (4 values) linearly to an 8x8 RGB patch (192 values); ``E`` is its
    pseudo-inverse, so ``E(D(z)) = z``: decoder inversion is exact up to the 8-bit rounding of the
    image, which isolates the diffusion stage and the watermark statistics from VAE errors.
    """

    def __init__(self, gain: float = 0.02, seed: int = 3):
        gen = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(192, 4, generator=gen, dtype=torch.float64) * gain
        self.pinv = torch.linalg.pinv(self.weight)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        b, _, h, w = z.shape
        x = torch.einsum("oc,bchw->bohw", self.weight.to(z.dtype), z).reshape(b, 3, 8, 8, h, w)
        return x.permute(0, 1, 4, 2, 5, 3).reshape(b, 3, 8 * h, 8 * w)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        b, _, big_h, big_w = x.shape
        h, w = big_h // 8, big_w // 8
        patches = x.reshape(b, 3, h, 8, w, 8).permute(0, 1, 3, 5, 2, 4).reshape(b, 192, h, w)
        return torch.einsum("co,bohw->bchw", self.pinv.to(x.dtype), patches)

    @property
    def pair(self):
        return (self.encode, self.decode)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error ``||a - b|| / ||b||``, in float64."""
    return float((a.double() - b.double()).norm() / b.double().norm())
