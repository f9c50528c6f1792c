"""The bundled fixture VAE: a small SD-family ``AutoencoderKL`` trained on real photographs.

Four latent channels, 8x downsampling and a mid-block self-attention, like the Stable Diffusion VAE,
but about 40x narrower so that it trains on two CPU cores in about an hour
(``scripts/train_fixture_vae.py``, seeded). Weights ship inside the package as fp16 safetensors.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

FIXTURE_ARCH = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(32, 64, 96, 96),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=16,
    sample_size=64,
)


def fixture_dir() -> Path:
    """Folder holding the fixture's ``config.json`` and weights."""
    return Path(str(resources.files("decinv_fast") / "assets" / "fixture_vae"))


def load_fixture_vae(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                     folder: str | Path | None = None):
    """Load the bundled fixture VAE (a diffusers ``AutoencoderKL``) in eval mode, offline; ``folder``:
    another saved VAE of the fixture's kind (e.g. a training checkpoint) instead."""
    from diffusers import AutoencoderKL

    from .options import DTYPES

    if dtype not in DTYPES:  # from_pretrained would load a string such as "fp16" as float32, with a log line
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    folder = fixture_dir() if folder is None else Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"fixture VAE missing at {folder}; run scripts/train_fixture_vae.py")
    vae = AutoencoderKL.from_pretrained(folder, torch_dtype=dtype, local_files_only=True, low_cpu_mem_usage=False)
    return vae.to(device).eval().requires_grad_(False)


def new_fixture_vae():
    """An untrained VAE of the fixture's architecture (for training and for tests)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**FIXTURE_ARCH)
