"""Tiny random-weight diffusers video VAEs, one per kind ``invert`` takes, for the video VAE tests."""

import diffusers
import pytest
import torch


def vae_class(name: str):
    """The diffusers class ``name``; the test is skipped on a diffusers too old to have it."""
    cls = getattr(diffusers, name, None)
    if cls is None:
        pytest.skip(f"diffusers {diffusers.__version__} has no {name}")
    return cls


# each kind with a frame count it takes (1 + 4k; CogVideoX and LTX-Video 1 + 8k, Mochi 1 + 6k) and its latent frames
KINDS = {"wan": (5, 2), "cogvideox": (9, 3), "hunyuan": (5, 2), "ltx": (9, 2), "ltx-timestep": (9, 2),
         "qwen": (5, 2), "hunyuan15": (5, 2), "mochi": (7, 2), "ltx2": (5, 2), "ltx2-timestep": (5, 2),
         "wan22": (5, 2), "magvit": (5, 2), "cosmos": (9, 2)}
COSMOS_STATS = ([0.1 * i - 0.5 for i in range(12)], [0.6 + 0.05 * i for i in range(12)])  # 4 channels x 3 frames
WAN_STATS = dict(latents_mean=[0.1, 0.2, -0.1, 0.0], latents_std=[1.5, 2.0, 0.8, 1.0])


def tiny_ltx(**overrides):
    config = dict(latent_channels=8, block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4,
                  layers_per_block=(1,) * 5, decoder_layers_per_block=(1,) * 5,
                  spatio_temporal_scaling=(True, True, True, False),
                  decoder_spatio_temporal_scaling=(True, True, True, False), decoder_inject_noise=(False,) * 5,
                  upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, scaling_factor=0.9)
    config.update(overrides)
    return with_statistics(vae_class("AutoencoderKLLTXVideo")(**config))


def tiny_ltx2(**overrides):
    """LTX-2's VAE at 16x / 4x (the released one is 32x / 8x); its config must set both ratios, which the class
    would otherwise compute from the patch sizes (wrongly for these down-sampling types)."""
    config = dict(latent_channels=8, block_out_channels=(8,) * 3, decoder_block_out_channels=(8, 16),
                  layers_per_block=(1,) * 4, decoder_layers_per_block=(1,) * 3, spatio_temporal_scaling=(True,) * 3,
                  decoder_spatio_temporal_scaling=(True,) * 2, decoder_inject_noise=(False,) * 3,
                  downsample_type=("spatial", "temporal", "spatiotemporal"), upsample_type=("spatiotemporal",) * 2,
                  upsample_residual=(True,) * 2, upsample_factor=(2, 2), spatial_compression_ratio=16,
                  temporal_compression_ratio=4, scaling_factor=0.9)
    config.update(overrides)
    return with_statistics(vae_class("AutoencoderKLLTX2Video")(**config))


def tiny_qwen21():
    """Qwen-Image 2.1's VAE (RGBA images, still ones only, 16x; the released one has 64 latent channels), with
    4 latent channels and 8 base channels."""
    torch.manual_seed(0)
    vae = vae_class("AutoencoderKLQwenImage21")(base_dim=8, decoder_base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1, 1],
                                                num_res_blocks=1, **WAN_STATS)
    return vae.eval().requires_grad_(False)


def with_statistics(vae):
    """LTX's latents_mean / latents_std are buffers, filled by its checkpoints as here."""
    vae.latents_mean.copy_(torch.linspace(-0.2, 0.3, 8))
    vae.latents_std.copy_(torch.linspace(0.5, 2.0, 8))
    return vae


def make_vae(kind: str):
    torch.manual_seed(0)
    if kind in ("wan", "qwen"):
        vae = vae_class("AutoencoderKLWan" if kind == "wan" else "AutoencoderKLQwenImage")(
            base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1] if kind == "wan" else [1, 2, 2, 2], num_res_blocks=1,
            temperal_downsample=[False, True, True], **WAN_STATS)
    elif kind == "wan22":  # Wan 2.2's VAE (TI2V-5B): residual blocks on the pixels' 2x2 patches (12 channels), 16x
        vae = vae_class("AutoencoderKLWan")(base_dim=8, decoder_base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1],
                                            num_res_blocks=1, temperal_downsample=[False, True, True], is_residual=True,
                                            patch_size=2, scale_factor_spatial=16, in_channels=12, out_channels=12,
                                            **WAN_STATS)
    elif kind == "cogvideox":
        vae = vae_class("AutoencoderKLCogVideoX")(block_out_channels=(8,) * 4, latent_channels=4,
                                                  layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4)
    elif kind == "hunyuan":
        vae = vae_class("AutoencoderKLHunyuanVideo")(latent_channels=4, block_out_channels=(8,) * 4,
                                                     layers_per_block=1, norm_num_groups=2,
                                                     spatial_compression_ratio=8, temporal_compression_ratio=4)
    elif kind == "hunyuan15":
        vae = vae_class("AutoencoderKLHunyuanVideo15")(latent_channels=4, block_out_channels=(8,) * 4,
                                                       layers_per_block=1, spatial_compression_ratio=8,
                                                       temporal_compression_ratio=4, scaling_factor=1.03682)
    elif kind == "mochi":  # its group norms take multiples of 32 channels; the released 12 latent channels
        vae = vae_class("AutoencoderKLMochi")(encoder_block_out_channels=(32,) * 4,
                                              decoder_block_out_channels=(32,) * 4, latent_channels=12,
                                              layers_per_block=(1,) * 5,
                                              add_attention_block=(False, True, False, False, True))
    elif kind == "magvit":  # EasyAnimate's (8x space, 4x time; the released one: widths 128-512, 16 channels)
        vae = vae_class("AutoencoderKLMagvit")(block_out_channels=(16,) * 4, latent_channels=4, layers_per_block=1,
                                               norm_num_groups=8)
    elif kind == "cosmos":  # Cosmos 1.0's (8x space and time); statistics per channel for 3 latent frames
        vae = vae_class("AutoencoderKLCosmos")(encoder_block_out_channels=(8,) * 4, decode_block_out_channels=(8,) * 4,
                                               latent_channels=4, attention_resolutions=(), resolution=32,
                                               num_layers=1, latents_mean=COSMOS_STATS[0], latents_std=COSMOS_STATS[1])
    elif kind.startswith("ltx2"):
        vae = tiny_ltx2(timestep_conditioning=kind == "ltx2-timestep")
    else:
        vae = tiny_ltx(timestep_conditioning=kind == "ltx-timestep")
    return vae.eval().requires_grad_(False)


def video_of(frames: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, frames, 3, 32, 32, generator=g) * 2 - 1
