"""SANA's deep-compression autoencoder (``AutoencoderDC``), FLUX.2's VAE (``AutoencoderKLFlux2``) and HunyuanImage
2.1's (``AutoencoderKLHunyuanImage``): latents in their pipelines' space, every method equal to the reference,
batches equal to one-by-one runs, the planner, and the command line. (Qwen-Image's VAE encodes images as
1-frame videos: tests/test_video_vaes.py.)"""

import pytest
import torch
from vae_checks import assert_auto_batches_equal_one_by_one_runs, assert_planned_within_25_percent
from video_vae_models import vae_class

import decinv_fast
from decinv_fast import reference
from decinv_fast.adapters import as_adapter
from decinv_fast.planner import plan
from decinv_fast.protocol import make_target

pytestmark = pytest.mark.usefixtures("single_thread")
KINDS = ("dc", "flux2", "hunyuanimage")


def make_vae(kind: str):
    torch.manual_seed(0)
    if kind == "dc":  # SANA's block types at factor 4 (the released VAEs: 32); RMS norms, as SANA 1.0's decoder
        vae = vae_class("AutoencoderDC")(latent_channels=4, attention_head_dim=4,
                            encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
                            decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
                            encoder_block_out_channels=(8, 16, 16), decoder_block_out_channels=(8, 16, 16),
                            encoder_layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
                            encoder_qkv_multiscales=((), (), (5,)), decoder_qkv_multiscales=((), (), (5,)),
                            downsample_block_type="Conv", upsample_block_type="interpolate",
                            decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407)
    elif kind == "hunyuanimage":  # HunyuanImage 2.1's (32x, 64 channels), at 8x; its group norms take 32 channels
        vae = vae_class("AutoencoderKLHunyuanImage")(in_channels=3, out_channels=3, latent_channels=8,
                                                     block_out_channels=(32,) * 4, layers_per_block=1,
                                                     spatial_compression_ratio=8, sample_size=32, scaling_factor=0.75)
    else:  # factor 8 and 4 latent channels: 16 pipeline channels at 1/16 of the pixels
        vae = vae_class("AutoencoderKLFlux2")(down_block_types=("DownEncoderBlock2D",) * 4,
                                 up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8,) * 4,
                                 layers_per_block=1, latent_channels=4, norm_num_groups=4)
        # its batch norm is never run; checkpoints ship its running statistics, the pipelines' normalisation
        vae.bn.running_mean.copy_(torch.linspace(-0.3, 0.3, 16))
        vae.bn.running_var.copy_(torch.linspace(0.6, 1.4, 16))
    return vae.eval().requires_grad_(False)


@pytest.fixture(scope="module", params=KINDS)
def image_vae(request):
    return request.param, make_vae(request.param)


def images(batch: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=g) * 2 - 1


def pipeline_latents(kind: str, vae, x: torch.Tensor) -> tuple[torch.Tensor, object]:
    """The latents as the pipelines make them from an image, and their way back to the decoder's input."""
    if kind == "dc":  # pipeline_sana: vae.decode(latents / scaling_factor); its controlnet: encode(x).latent * s
        s = vae.config.scaling_factor
        return vae.encode(x).latent * s, lambda z: z / s
    if kind == "hunyuanimage":  # pipeline_hunyuanimage: vae.decode(latents / scaling_factor)
        s = vae.config.scaling_factor
        return vae.encode(x).latent_dist.mode() * s, lambda z: z / s
    raw = vae.encode(x).latent_dist.mode()  # pipeline_flux2._encode_vae_image, then its decode side
    n, c, h, w = raw.shape
    patched = raw.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, c * 4, h // 2, w // 2)
    mean = vae.bn.running_mean.view(1, -1, 1, 1)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)

    def to_raw(z):
        z = z * std + mean
        return z.reshape(n, c, 2, 2, h // 2, w // 2).permute(0, 1, 4, 2, 5, 3).reshape(n, c, h, w)

    return (patched - mean) / std, to_raw


def test_latents_and_decodings_are_the_pipelines(image_vae):
    kind, vae = image_vae
    x = images()
    expected, to_raw = pipeline_latents(kind, vae, x)
    z = decinv_fast.encode(vae, x)
    assert z.shape == {"dc": (2, 4, 8, 8), "flux2": (2, 16, 2, 2), "hunyuanimage": (2, 8, 4, 4)}[kind]
    assert torch.equal(z, expected)
    assert torch.equal(decinv_fast.decode(vae, z), vae.decode(to_raw(z)).sample)


@pytest.mark.parametrize("method,options", [("adam", {}), ("fsm", {"lr": 0.5}), ("km", {"lr": 0.3, "alpha": 0.3}),
                                            ("grad", {})])
def test_every_method_is_the_reference(image_vae, method, options):
    kind, vae = image_vae
    x = images()
    a = as_adapter(vae)
    run = {"adam": reference.adam, "fsm": reference.fsm, "km": reference.km, "grad": reference.gradient_based}[method]
    ref_options = {("rho" if k == "lr" else k): v for k, v in options.items()}
    ref = run(a.encode, lambda z: a.decode(z, 1), x, steps=3, schedule="paper", **ref_options)
    out = decinv_fast.invert(vae, x, method=method, steps=3, schedule="paper", measure_memory=False, **options)
    assert torch.equal(out.latents, ref.latents)


def test_auto_batches_equal_one_by_one_runs(image_vae):
    assert_auto_batches_equal_one_by_one_runs(image_vae[1], images())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ["adam", "auto"])
def test_planner_prediction_within_25_percent_of_measured(kind, method):
    assert_planned_within_25_percent(make_vae(kind), images(4), method)


@pytest.mark.parametrize("kind", KINDS)
def test_a_vae_built_on_the_meta_device_plans_as_the_real_one_without_warnings(kind):
    """FLUX.2's pipeline statistics are buffers: a meta copy has none, and plans with stand-ins."""
    import warnings

    real = make_vae(kind)
    with torch.device("meta"):
        weightless = type(real).from_config(real.config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predicted = plan(weightless, (2, 3, 32, 32), dtype=torch.float32, device="cuda").per_chunk
        assert predicted == plan(real, (2, 3, 32, 32), dtype=torch.float32, device="cuda").per_chunk


def test_flux2_takes_multiples_of_16_and_samples_targets_in_its_space():
    vae = make_vae("flux2")
    with pytest.raises(ValueError, match="images: height 40 and width 32 must be multiples of 16"):
        decinv_fast.invert(vae, images(1, 48)[..., :40, :32], steps=1)
    target = make_target(vae, images(), seed=3)
    assert target.latents.shape == (2, 16, 2, 2)
    assert not torch.equal(target.latents, decinv_fast.encode(vae, images()))  # drawn, not the mode
    with pytest.raises(TypeError, match="make_target needs a diffusers VAE with a latent distribution; AutoencoderDC "
                                        "has none"):
        make_target(make_vae("dc"), images())


@pytest.mark.parametrize("kind", KINDS)
def test_the_command_line_inverts_with_a_saved_vae(tmp_path, kind):
    """``decinv invert image.png --vae <a saved AutoencoderDC / ...Flux2 / ...HunyuanImage>``: the latents of
    ``invert`` on the same pixels."""
    import numpy as np
    from cli_runs import run_invert
    from PIL import Image

    make_vae(kind).save_pretrained(tmp_path / kind)
    pixels = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "image.png")
    latents, meta = run_invert(tmp_path / "image.png", tmp_path / "z.st", "--vae", str(tmp_path / kind))
    assert meta["layout"] == "C,h,w"
    vae = type(make_vae(kind)).from_pretrained(tmp_path / kind).eval().requires_grad_(False)
    assert torch.equal(latents, decinv_fast.invert(vae, pixels, steps=1, measure_memory=False).latents)


def test_hunyuanimage_with_its_own_tiling_runs_or_says_its_tiling_failed():
    """diffusers 0.42's ``AutoencoderKLHunyuanImage.tiled_encode`` reads a 5-D shape from images: a user who
    called ``vae.enable_tiling()`` is told the error came from the VAE's tiled pass (a later diffusers that
    mends it runs, as untiled)."""
    vae = make_vae("hunyuanimage")
    vae.enable_tiling(tile_sample_min_size=32, tile_overlap_factor=0.25)
    x = images(1, 64)
    try:
        out = decinv_fast.invert(vae, x, steps=1)
    except Exception as error:  # noqa: BLE001 -- whatever diffusers raises, the note must name the tiling
        assert any("own tiling on" in note for note in getattr(error, "__notes__", ())), error
    else:
        assert out.latents.shape == (1, 8, 8, 8)
