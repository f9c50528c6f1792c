"""Shared fixtures, markers and the per-dtype tolerance table."""

from __future__ import annotations

import os

# The Triton interpreter must be selected before any @triton.jit decorator runs.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Relative tolerances against the fp32 reference; low precision uses the 2x-torch rule (DESIGN §5.8).
TOLERANCE = {
    torch.float32: dict(rtol=1e-6, atol=1e-7),
    torch.float16: dict(rtol=1e-3, atol=1e-5),
    torch.bfloat16: dict(rtol=8e-3, atol=1e-4),
}


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    has_cuda = torch.cuda.is_available()
    for item in items:
        if "requires_cuda" in item.keywords and not has_cuda:
            item.add_marker(skip_cuda)
        if "requires_ext" in item.keywords:
            from decinv_fast._extension import extension_error

            if extension_error() is not None:
                item.add_marker(pytest.mark.skip(reason=f"extension unavailable: {extension_error()}"))


def tiny_kl_config(**overrides) -> dict:
    """A random-weight AutoencoderKL with the SD layout (8x down, 4 latent channels), tiny widths."""
    config = dict(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
        sample_size=32,
    )
    config.update(overrides)
    return config


@pytest.fixture(scope="session")
def tiny_kl():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(**tiny_kl_config(scaling_factor=0.5, shift_factor=0.1)).eval().requires_grad_(False)


@pytest.fixture(scope="session")
def fixture_vae():
    from decinv_fast import load_fixture_vae

    return load_fixture_vae()


@pytest.fixture
def photo_png(tmp_path):
    """A 32x32 crop of the bundled photograph saved as an 8-bit RGB PNG (the command line's input)."""
    from PIL import Image

    from decinv_fast.demo import bundled_photo

    path = tmp_path / "photo.png"
    Image.fromarray(bundled_photo()[:32, :32]).save(path)
    return path


@pytest.fixture
def images_32():
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 32, 32, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def single_thread():
    """For modules of tiny models (``pytestmark = pytest.mark.usefixtures("single_thread")``): they gain
    nothing from threads, and on a shared 2-core machine OpenMP waits dominate."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
