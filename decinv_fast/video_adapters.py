"""Adapters of the causal 3-D video VAEs of diffusers, in the latent space each one's pipelines use.

Their latents compress time: ``(N, 3, F, H, W)`` videos encode to ``(N, C, 1 + (F - 1) / t, h, w)``
latents, and decode back to ``F`` frames only for ``F = 1 + k * frame_step`` (see
:class:`~decinv_fast.adapters.VaeAdapter`). The latent spaces, as the pipelines decode them:

- ``(raw - latents_mean) * scaling_factor / latents_std`` with the constants in the config (Wan, Qwen-Image
  and 2.1, Mochi: ``LatentSpace.of``) or kept as buffers of the model (LTX-Video, LTX-2);
- ``raw * scaling_factor`` (CogVideoX, HunyuanVideo, HunyuanVideo 1.5, EasyAnimate's Magvit);
- Cosmos 1.0's: ``(raw - latents_mean) * sigma_data / latents_std``, the statistics per channel and latent
  frame, ``sigma_data`` its scheduler's (:data:`COSMOS_SIGMA_DATA`).
"""

from __future__ import annotations

import contextlib
import math

import torch

from .adapters import LatentSpace, VaeAdapter, buffer_statistics, spatial_ratio

# the kinds whose latents_mean / latents_std are buffers of the model (their pipelines read them there)
BUFFER_SPACE = ("AutoencoderKLLTXVideo", "AutoencoderKLLTX2Video")
# the kinds whose config spells the sizes as Wan's does (z_dim, temperal_downsample)
WAN_CONFIG = ("AutoencoderKLWan", "AutoencoderKLQwenImage", "AutoencoderKLQwenImage21")
# Qwen-Image 2.1's VAE folds the single frame of a still image away in its convolutions: 1-frame videos only
STILLS_ONLY = ("AutoencoderKLQwenImage21",)
# Cosmos 1.0's pipelines scale by their scheduler's sigma_data, not the VAE's: EDMEulerScheduler's default, 0.5
COSMOS_SIGMA_DATA = 0.5
# HunyuanVideo 1.5's attention mask breaks for a batch of more than one video (diffusers 0.42): one per call
ONE_VIDEO_PER_CALL = ("AutoencoderKLHunyuanVideo15",)
# the seed of the noise a noise-injecting decoder (LTX-Video 0.9.1+) adds in every call, fixed (see _fixed_noise)
DECODER_NOISE_SEED = 0


# the kinds whose first latent frame is encoded from the first frame alone and decoded to it alone (and LTX-2's
# with causal encoder and decoder): _first_frame_alone
FIRST_FRAME_ALONE = ("AutoencoderKLWan", "AutoencoderKLQwenImage", "AutoencoderKLQwenImage21",
                     "AutoencoderKLHunyuanVideo15", "AutoencoderKLMochi", "AutoencoderKLMagvit", "AutoencoderKLCosmos")


def video_adapter(vae, kind: str, decode_timestep: float | None = None) -> VaeAdapter:
    """The adapter of ``vae``, a diffusers video VAE of class ``kind`` (one of ``VIDEO_VAE_KINDS``);
    ``decode_timestep``: see :func:`~decinv_fast.adapters.as_adapter`."""
    config = vae.config
    if kind == "AutoencoderKLCosmos":
        space = _cosmos_space(config)
    else:
        space = _buffer_space(vae, LatentSpace.of(config)) if kind in BUFFER_SPACE else LatentSpace.of(config)
    # LTX-Video 0.9.1+ and LTX-2 decoders may take a timestep; their pipelines' default decode_timestep is 0
    # (and then no noise is mixed into the latent); a decoder that injects noise of its own: see _fixed_noise
    timestep = bool(getattr(config, "timestep_conditioning", False))
    at = _checked_timestep(decode_timestep, timestep, kind)
    noisy = any(getattr(config, "decoder_inject_noise", None) or ())
    one_per_call = kind in ONE_VIDEO_PER_CALL
    _check_decoded_frames(vae, kind)

    def raw_of(x: torch.Tensor) -> torch.Tensor:
        return vae.encode(x).latent_dist.mode()

    def pixels_of(raw: torch.Tensor) -> torch.Tensor:
        with _fixed_noise(raw.device) if noisy else contextlib.nullcontext():
            if timestep:
                return vae.decode(raw, temb=torch.full((raw.shape[0],), at, dtype=raw.dtype, device=raw.device)).sample
            return vae.decode(raw).sample

    def encode(x: torch.Tensor) -> torch.Tensor:
        return space.to_latent(_per_video(raw_of, x) if one_per_call else raw_of(x))

    def decode(z: torch.Tensor, frames_per_video: int) -> torch.Tensor:
        raw = space.to_raw(z)
        return _per_video(pixels_of, raw) if one_per_call else pixels_of(raw)

    time_factor, spatial, channels = _sizes(vae, kind)
    # CogVideoX encodes and decodes in batches of frames (num_latent_frames_batch_size latent frames), and
    # gets the count back only when those batches come out whole: 1 + 8k frames (its pipelines use 49)
    step = time_factor * (int(vae.num_latent_frames_batch_size) if kind == "AutoencoderKLCogVideoX" else 1)
    step = 0 if kind in STILLS_ONLY else step
    return VaeAdapter(kind, encode, decode, spatial, channels, vae, temporal_compression=time_factor,
                      frame_step=step, space=space,
                      min_latent_size=_smallest_latent(config), random_decoder=noisy, decode_timestep=decode_timestep,
                      first_frame_alone=_first_frame_alone(config, kind))


def _first_frame_alone(config, kind: str) -> bool:
    """Whether the VAE encodes its first latent frame from the first frame alone and decodes it to that frame
    alone (tests/test_video_vaes.py measures it for every kind): the causal ones; CogVideoX's and HunyuanVideo's
    normalise over time, LTX-Video's decoder is not causal, LTX-2's as its config says."""
    if kind == "AutoencoderKLLTX2Video":
        return bool(getattr(config, "encoder_causal", True)) and bool(getattr(config, "decoder_causal", True))
    return kind in FIRST_FRAME_ALONE


def _checked_timestep(decode_timestep, conditioned: bool, kind: str) -> float:
    """The decode timestep to run with: 0 by default (the pipelines'), else a finite number >= 0 for a
    decoder that takes one."""
    if decode_timestep is None:
        return 0.0
    if not conditioned:
        raise ValueError(f"decode_timestep: {kind}'s decoder takes no timestep (its config's timestep_conditioning "
                         "is off)")
    if isinstance(decode_timestep, bool) or not isinstance(decode_timestep, int | float) or not (
            math.isfinite(decode_timestep) and decode_timestep >= 0):
        raise ValueError(f"decode_timestep must be a finite number >= 0 (the pipeline's), got {decode_timestep!r}")
    return float(decode_timestep)


@contextlib.contextmanager
def _fixed_noise(device: torch.device):
    """LTX-Video 0.9.1+'s decoder adds noise drawn from the global RNG in every call
    (``decoder_inject_noise``; not scaled by the decode timestep), so each decoding of one latent
    differs. Inside this context its draws come from a fixed seed: ``D`` is a function (the
    iteration's fixed point exists, batches equal one-by-one runs, runs repeat), and the caller's RNG
    state is left as it was. The pipeline decoded the given video with another draw, a difference no
    latent removes."""
    index = (torch.cuda.current_device() if device.index is None else device.index) if device.type == "cuda" else None
    with torch.random.fork_rng(devices=[] if index is None else [index], device_type="cuda"):
        torch.random.default_generator.manual_seed(DECODER_NOISE_SEED)
        if index is not None:
            torch.cuda.default_generators[index].manual_seed(DECODER_NOISE_SEED)
        yield


def pixel_channels(config, kind: str) -> int | None:
    """The videos' channels where the config's ``in_channels`` counts more: Mochi's counts its Fourier
    features (each pixel channel and a sine and a cosine of it at two frequencies: 3 * 5 = 15); Wan 2.2's
    VAE (``patch_size`` 2) its pixels' 2x2 patches (3 * 4 = 12)."""
    if kind == "AutoencoderKLMochi":
        return config.in_channels // 5
    patch = getattr(config, "patch_size", None) if kind in WAN_CONFIG else None
    return config.in_channels // patch**2 if patch else None


def _smallest_latent(config) -> int:
    """LTX-2's decoder pads by reflection, which needs at least 2 latent pixels a side."""
    return 2 if getattr(config, "decoder_spatial_padding_mode", None) == "reflect" else 1


def _buffer_space(vae, space: LatentSpace) -> LatentSpace:
    """LTX-Video's and LTX-2's latent space: the config's ``scaling_factor``, the model's buffers."""
    mean, std = buffer_statistics(vae.latents_mean, vae.latents_std)
    return LatentSpace(space.scaling, 0.0, tuple(mean.tolist()), tuple(std.tolist()))


def _cosmos_space(config) -> LatentSpace:
    """Cosmos 1.0's latent space: its pipelines' ``(raw - mean) * sigma_data / std`` with statistics per
    channel and latent frame (the config's lists, ``latent_channels`` times the frames they cover), or
    ``raw * sigma_data`` without them."""
    mean, std, channels = config.latents_mean, config.latents_std, config.latent_channels
    if mean is None or std is None:
        return LatentSpace(COSMOS_SIGMA_DATA)
    if len(mean) != len(std) or len(mean) % channels or min(std) <= 0:
        raise ValueError(f"the VAE's config: latents_mean and latents_std must hold {channels} values per latent "
                         f"frame (std > 0), got {len(mean)} and {len(std)} values")
    return LatentSpace(COSMOS_SIGMA_DATA, 0.0, tuple(map(float, mean)), tuple(map(float, std)),
                       frames=len(mean) // channels)


def _sizes(vae, kind: str) -> tuple[int, int, int]:
    """Time and space compression and latent channels: the ratios the model sets itself, else its config's
    (vars, not getattr: diffusers warns when a config value is read as an attribute)."""
    config, own = vae.config, vars(vae)
    if kind in WAN_CONFIG:
        time_factor = 2 ** sum(map(bool, config.temperal_downsample))  # (sic: the config's spelling)
        channels = config.z_dim
    else:
        time_factor = int(own.get("temporal_compression_ratio") or config.temporal_compression_ratio)
        channels = config.latent_channels
    return time_factor, spatial_ratio(vae), channels


def _per_video(run, batch: torch.Tensor) -> torch.Tensor:
    """``run`` on each video of ``batch`` on its own, concatenated."""
    if batch.shape[0] == 1:
        return run(batch)
    return torch.cat([run(one) for one in batch.split(1)])


def _check_decoded_frames(vae, kind: str) -> None:
    """Mochi's decoder drops the frames its causal padding added (``drop_last_temporal_frames``, its
    default and its pipeline's); without that it decodes ``6 f`` frames, which no video it encoded has."""
    if kind == "AutoencoderKLMochi" and not vars(vae).get("drop_last_temporal_frames", True):
        raise ValueError("vae: this AutoencoderKLMochi has drop_last_temporal_frames=False, so it decodes 6 frames "
                         "per latent frame and never the 1 + 6k frames it encoded; set vae.drop_last_temporal_frames "
                         "= True (its default, as MochiPipeline decodes)")
