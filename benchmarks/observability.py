"""What the pixels can tell about a latent: helpers for benchmarks/mean_gain.py and benchmarks/stopping.py.

An 8-bit image constrains a latent direction only as far as the decoder responds to it. Two kinds of
direction respond weakly in the fixture VAEs: some per-channel spatial means (``mean_direction_response``),
and one channel combination at every position, which the decoder's first layers nearly ignore
(``decoder_null_channel``). Along the latter the image says almost nothing, so what the encoder puts
there stays: ``null_channel_floor_db`` is the NMSE(z) of a latent that is exact except for the
encoder's error along that combination, a practical floor for any method; ``null_channel_share`` is
how much of a latent's squared error lies along it.
"""

from __future__ import annotations

import torch

import decinv_fast

MEAN_PROBE = 0.05  # latent change per element of the mean probes (the latents' std is about 1)
RANDOM_DIRECTIONS = 4


@torch.no_grad()
def mean_direction_response(vae, latents: torch.Tensor) -> list[float]:
    """How strongly the decoded image responds to each per-channel-mean latent direction (latents
    ``(N, C, h, w)``): per image, the singular values of its response to unit-norm per-channel-mean
    changes (central differences) divided by its median response to unit-norm zero-mean random changes;
    the median over images, strongest first."""
    n, channels, h, w = latents.shape
    step = MEAN_PROBE * (h * w) ** 0.5  # the norm of a per-element change of MEAN_PROBE over one channel

    def response(direction: torch.Tensor) -> torch.Tensor:  # unit-norm direction per image -> (N, pixels)
        ahead = decinv_fast.decode(vae, latents + step * direction)
        back = decinv_fast.decode(vae, latents - step * direction)
        return ((ahead - back) / (2 * step)).flatten(1).float()

    means = torch.stack([response(torch.zeros_like(latents).index_fill_(1, torch.tensor([c]), (h * w) ** -0.5))
                         for c in range(channels)], 2)  # (N, pixels, C)
    gen = torch.Generator().manual_seed(0)
    typical = []
    for _ in range(RANDOM_DIRECTIONS):
        d = torch.randn(latents.shape, generator=gen).to(latents)
        d = d - d.mean((2, 3), keepdim=True)
        typical.append(response(d / d.flatten(1).norm(dim=1).view(n, 1, 1, 1)).norm(dim=1))
    relative = torch.linalg.svdvals(means) / torch.stack(typical).median(0).values[:, None]
    return relative.median(0).values.tolist()


def decoder_null_channel(vae) -> tuple[torch.Tensor, list[float]]:
    """The unit latent channel combination ``(C,)`` that a diffusers ``AutoencoderKL``'s first decoder
    layers (``post_quant_conv``, then ``decoder.conv_in``) respond to least, and the singular values of
    that linear map from latent channels, strongest first (weights only, no evaluation)."""
    first = vae.decoder.conv_in.weight.detach().float()  # (features, C, k, k)
    channels = first.shape[1]
    post = (vae.post_quant_conv.weight.detach().float()[:, :, 0, 0] if getattr(vae, "post_quant_conv", None)
            is not None else torch.eye(channels))
    linear = torch.einsum("fckl,cd->fkld", first, post).reshape(-1, channels)
    _, values, right = torch.linalg.svd(linear, full_matrices=False)
    return right[-1], values.tolist()


def null_channel_floor_db(direction: torch.Tensor, encoded: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean per-image NMSE(z) dB of ``truth`` plus the part of ``encoded - truth`` along the unit
    channel combination ``direction`` (``(C,)``; latents ``(N, C, h, w)``). With the decoder's null
    combination (``decoder_null_channel``): what remains if a method fixed everything the image shows
    and kept the encoder's guess where it shows nothing."""
    floor = truth + along_channel(direction, (encoded - truth).float())
    return float(decinv_fast.nmse_db(floor, truth, per_sample=True).mean())


def channel_component(direction: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """``(N, h, w)``: the component of ``latents`` ``(N, C, h, w)`` along the unit channel combination
    ``direction`` ``(C,)`` at every position."""
    return torch.einsum("c,nchw->nhw", direction.to(latents), latents)


def along_channel(direction: torch.Tensor, error: torch.Tensor) -> torch.Tensor:
    """The part of ``error`` ``(N, C, h, w)`` along the unit channel combination ``direction`` ``(C,)``."""
    return direction.to(error)[None, :, None, None] * channel_component(direction, error)[:, None]


def visible_nmse_db(direction: torch.Tensor, latents: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean per-image NMSE(z) dB of ``latents`` with their error along ``direction`` removed: with the
    decoder's null combination, how well a method recovered what the image shows."""
    error = (latents - truth).float()
    return float(decinv_fast.nmse_db(truth + error - along_channel(direction, error), truth, per_sample=True).mean())


def null_channel_share(direction: torch.Tensor, latents: torch.Tensor, truth: torch.Tensor) -> float:
    """Per image, the fraction of ``||latents - truth||²`` (latents ``(N, C, h, w)``) along the unit
    channel combination ``direction`` (``(C,)``), averaged over the images (as NMSE is averaged, in
    dB, per image): with the decoder's null combination, the part of the error the image can hardly show."""
    error = (latents - truth).float()
    along = along_channel(direction, error)
    return float((along.square().sum((1, 2, 3)) / error.square().sum((1, 2, 3))).mean())
