"""One encode/decode interface over every kind of VAE that ``invert`` accepts.

Latent conventions follow diffusers pipelines exactly (:class:`LatentSpace`)::

    E(x) = (vae.encode(x).latent_dist.mode() - shift_factor) * scaling_factor
    D(z) = vae.decode(z / scaling_factor + shift_factor).sample

or, for a config with per-channel ``latents_mean`` and ``latents_std`` (SDXL-family pipelines),
``E(x) = (mode - latents_mean) * scaling_factor / latents_std`` and its inverse.

An adapter works on *frames*: ``encode`` maps ``(N, 3, H, W)`` pixels in [-1, 1] to ``(N, C, h, w)``
latents and ``decode`` maps them back. Videos are flattened to frames by the caller; a temporal
VAE's decoder is told how many consecutive frames form one video (``frames_per_video``).

A causal 3-D video VAE (Wan, CogVideoX, HunyuanVideo, LTX-Video, ...: :mod:`.video_adapters`)
compresses time as well: its latents are ``(N, C, 1 + (F - 1) / t, h, w)`` for ``(N, 3, F, H, W)``
videos, and its causal convolutions mix every frame with the ones before it, so frames cannot be
encoded on their own. Its adapter works on whole *videos* (``temporal_compression`` is ``t``):
``encode`` maps ``(N, 3, F, H, W)`` to ``(N, C, f, h, w)``, the layout its pipelines decode, and the
caller hands it videos, not frames.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .options import caller_stacklevel

# the diffusers VAEs that work frame by frame (the last three are newer than the floor, diffusers 0.30)
IMAGE_VAE_KINDS = ("AutoencoderKL", "AutoencoderTiny", "AutoencoderKLTemporalDecoder", "AutoencoderDC",
                   "AutoencoderKLFlux2", "AutoencoderKLHunyuanImage")
# the causal 3-D video VAEs of diffusers, whose latents compress time (see the module's docstring;
# Qwen-Image's is Wan 2.1's architecture, used for images as 1-frame videos; Qwen-Image 2.1's is Wan's made
# for still RGBA images only)
VIDEO_VAE_KINDS = ("AutoencoderKLWan", "AutoencoderKLCogVideoX", "AutoencoderKLHunyuanVideo", "AutoencoderKLLTXVideo",
                   "AutoencoderKLQwenImage", "AutoencoderKLHunyuanVideo15", "AutoencoderKLMochi",
                   "AutoencoderKLLTX2Video", "AutoencoderKLQwenImage21", "AutoencoderKLMagvit", "AutoencoderKLCosmos")
VAE_KINDS = (
    "a diffusers " + ", ".join(IMAGE_VAE_KINDS) + ", a video VAE (" + ", ".join(VIDEO_VAE_KINDS)
    + "), or an (encode_fn, decode_fn) pair"
)


@dataclass
class VaeAdapter:
    """Encoder and decoder of one VAE in the pipeline's latent space.

    ``spatial_factor`` and ``latent_channels`` are ``None`` for callables (unknown until called).
    ``module`` is the ``nn.Module`` behind the adapter, if any (for dtype/device/attention).
    ``temporal_compression`` is set for a causal 3-D video VAE, whose ``encode``/``decode`` take whole
    videos ``(N, 3, F, H, W)`` / ``(N, C, f, h, w)``; ``None`` for the VAEs that work frame by frame.
    Such a VAE decodes ``f`` latent frames to ``1 + (f - 1) * temporal_compression`` frames, and
    reproduces the frame count it encoded only for ``1 + k * frame_step`` frames.
    """

    kind: str
    encode_fn: Callable[[torch.Tensor], torch.Tensor]
    decode_fn: Callable[[torch.Tensor, int], torch.Tensor]
    spatial_factor: int | None
    latent_channels: int | None
    module: nn.Module | None = None
    temporal: bool = False
    temporal_compression: int | None = None
    frame_step: int | None = None  # a video VAE takes videos of 1 + k * frame_step frames (0: 1-frame ones only)
    space: LatentSpace | None = None  # a diffusers VAE's pipeline latent space
    min_latent_size: int = 1  # the smallest latent height and width its decoder takes
    random_decoder: bool = False  # its decoder draws noise in every call (drawn from a fixed seed: video_adapters)
    decode_timestep: float | None = None  # as_adapter's option (kept for the copies a run in another dtype makes)
    # its first latent frame is encoded from the first frame alone and decoded to it alone (a causal video VAE's):
    # a problem of its own (first_frame.py)
    first_frame_alone: bool = False

    @property
    def encodes_videos(self) -> bool:
        return self.temporal_compression is not None

    @property
    def image_channels(self) -> int | None:
        """The channels of the images it takes (:func:`config_image_channels`); ``None`` for callables
        (unknown until called)."""
        return None if self.module is None else config_image_channels(self.module.config, self.kind)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        with self._naming_tiling("encode"):
            return self._in_dtype_of(pixels, self.encode_fn(pixels))

    def decode(self, latents: torch.Tensor, frames_per_video: int = 1) -> torch.Tensor:
        with self._naming_tiling("decode"):
            return self._in_dtype_of(latents, self.decode_fn(latents, frames_per_video))

    @contextmanager
    def _naming_tiling(self, part: str):
        """An error raised inside a VAE whose own tiling is on gets a note saying so (diffusers' tiled
        passes are separate code, and some fail where the untiled one works: 0.42's HunyuanImage 2.1
        ``tiled_encode`` reads a 5-D shape from images); the error itself is re-raised as it was."""
        try:
            yield
        except Exception as error:
            if getattr(self.module, "use_tiling", False) and not isinstance(error, torch.OutOfMemoryError):
                error.add_note(f"decinv_fast: this was raised inside {self.kind}.{part} with the VAE's own tiling "
                               "on (vae.enable_tiling()); if the VAE runs this input with vae.disable_tiling(), "
                               "its tiled pass is what fails")
            raise

    def _in_dtype_of(self, given: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """A module's output in its input's dtype: under ``torch.autocast`` the VAE computes in the
        autocast dtype, but the iteration state (and the latents returned) stay in the run's dtype
        (a no-op otherwise). A callable pair's outputs are its own business and are left alone."""
        return out if self.module is None else out.to(given.dtype)

    @property
    def device(self) -> torch.device | None:
        """Where the VAE computes: its parameters' device, or, for a VAE offloaded by a pipeline's
        ``enable_model_cpu_offload``/``enable_sequential_cpu_offload`` (accelerate hooks, which move
        the weights there for each call), the hooks' execution device, as diffusers pipelines read it."""
        if self.module is None:
            return None
        return offload_execution_device(self.module) or next(self.module.parameters()).device

    @property
    def dtype(self) -> torch.dtype | None:
        if self.module is None:
            return None
        return next(self.module.parameters()).dtype


def offload_execution_device(module: nn.Module) -> torch.device | None:
    """The execution device of accelerate's offload hooks on ``module`` or its submodules (``None`` if
    it has none)."""
    for sub in module.modules():
        device = getattr(getattr(sub, "_hf_hook", None), "execution_device", None)
        if device is not None:
            return torch.device(device)
    return None


@dataclass(frozen=True)
class LatentSpace:
    """The pipeline's latent space of a VAE: ``(raw - shift_factor) * scaling_factor``, or, when the
    config sets per-channel ``latents_mean`` and ``latents_std`` (SDXL-family pipelines use them, e.g.
    Playground v2.5), ``(raw - latents_mean) * scaling_factor / latents_std`` as those pipelines do;
    with ``patch`` > 1 (FLUX.2), of the raw latent's ``patch x patch`` patches as channels (:func:`patchify`)."""

    scaling: float = 1.0
    shift: float = 0.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    patch: int = 1  # FLUX.2: 2x2 patches of the raw latent become channels before the per-channel scaling
    frames: int = 1  # Cosmos: statistics per channel and latent frame, for up to this many latent frames

    @classmethod
    def of(cls, config) -> LatentSpace:
        scaling = getattr(config, "scaling_factor", None)
        shift = getattr(config, "shift_factor", None)
        space = cls(1.0 if scaling is None else float(scaling), 0.0 if shift is None else float(shift))
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is None or std is None:  # the pipelines apply them only as a pair
            return space
        channels = getattr(config, "latent_channels", None) or getattr(config, "z_dim", None) or len(mean)  # Wan: z_dim
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise ValueError(f"the VAE's config: latents_mean and latents_std must hold {channels} values (std > 0), "
                             f"got {list(mean)} and {list(std)}")
        if space.shift:
            raise ValueError("the VAE's config sets both shift_factor and latents_mean/latents_std; diffusers "
                             "pipelines use one or the other, so its latent space is ambiguous")
        return cls(space.scaling, 0.0, tuple(map(float, mean)), tuple(map(float, std)))

    def to_latent(self, raw: torch.Tensor) -> torch.Tensor:
        """Latents ``(N, C, ...)`` in the pipeline's space from the encoder's raw ones."""
        if self.patch > 1:
            raw = patchify(raw, self.patch)
        if self.mean is not None:
            mean, std = self._per_channel(raw)
            z = (raw - mean) * self.scaling / std
        else:
            z = (raw - self.shift) * self.scaling if self.shift else raw * self.scaling
        # contiguous: encoder outputs can come back channels-last, and the decoder's arithmetic (hence
        # every later bit) depends on the input layout; one canonical layout keeps runs reproducible.
        return z.contiguous()

    def to_raw(self, z: torch.Tensor) -> torch.Tensor:
        """What the decoder takes, from pipeline-space latents."""
        if self.mean is not None:
            mean, std = self._per_channel(z)
            raw = z * std / self.scaling + mean
        else:
            raw = z / self.scaling + self.shift if self.shift else z / self.scaling
        return unpatchify(raw, self.patch) if self.patch > 1 else raw

    def _per_channel(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.frames > 1:  # (1, C, frames, 1, 1), the first f of them for f latent frames, as Cosmos's pipelines
            f = t.shape[2]
            if f > self.frames:
                raise ValueError(f"latents: {f} latent frames, but the VAE's latents_mean / latents_std cover "
                                 f"{self.frames} (its pipelines take no more)")
            return tuple(torch.tensor(v, dtype=t.dtype, device=t.device).view(1, -1, self.frames, 1, 1)[:, :, :f]
                         for v in (self.mean, self.std))
        shape = (1, len(self.mean)) + (1,) * (t.dim() - 2)
        return tuple(torch.tensor(v, dtype=t.dtype, device=t.device).view(shape) for v in (self.mean, self.std))


def config_image_channels(config, kind: str) -> int | None:
    """The channels of the images a diffusers VAE of class ``kind`` with this config takes: 3 (RGB), 4 for
    Qwen-Image 2.1's RGBA VAE. Its ``in_channels`` (Qwen-Image's spells it ``input_channels``), less what
    Mochi's and Wan 2.2's count besides the pixels (:func:`~decinv_fast.video_adapters.pixel_channels`)."""
    from .video_adapters import pixel_channels

    return (pixel_channels(config, kind) or getattr(config, "in_channels", None)
            or getattr(config, "input_channels", None))


def buffer_statistics(mean: torch.Tensor, spread: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel latent statistics a model keeps as buffers (LTX's, FLUX.2's batch norm); a VAE built on
    the meta device (to plan with) has their shapes only, and zeros and ones stand in."""
    if mean.is_meta or spread.is_meta:
        return torch.zeros(mean.shape), torch.ones(spread.shape)
    return mean, spread


def spatial_ratio(vae) -> int:
    """The ratio a model sets itself (HunyuanImage 2.1's 32 from 5 blocks, LTX-Video's from its patch sizes,
    Mochi's from its expansions; vars, not getattr: diffusers warns when a config value is read as an
    attribute), else one halving per block after the first."""
    own = vars(vae).get("spatial_compression_ratio") or getattr(vae.config, "spatial_compression_ratio", None)
    return int(own or 2 ** (len(vae.config.block_out_channels) - 1))


def patchify(raw: torch.Tensor, p: int) -> torch.Tensor:
    """``(N, C, h, w)`` to ``(N, C * p * p, h / p, w / p)``: channel ``c * p * p + dy * p + dx`` holds the
    pixel ``(dy, dx)`` of each ``p x p`` patch of channel ``c``, as the FLUX.2 pipelines order them."""
    n, c, h, w = raw.shape
    return raw.reshape(n, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4).reshape(n, c * p * p, h // p, w // p)


def unpatchify(z: torch.Tensor, p: int) -> torch.Tensor:
    """The inverse of :func:`patchify`."""
    n, c, h, w = z.shape
    return z.reshape(n, c // (p * p), p, p, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c // (p * p), h * p, w * p)


def _kl_adapter(vae, kind: str, temporal: bool) -> VaeAdapter:
    space = LatentSpace.of(vae.config)

    def encode(x: torch.Tensor) -> torch.Tensor:
        return space.to_latent(vae.encode(x).latent_dist.mode())

    def decode(z: torch.Tensor, frames_per_video: int) -> torch.Tensor:
        if temporal:
            return vae.decode(space.to_raw(z), num_frames=frames_per_video).sample
        return vae.decode(space.to_raw(z)).sample

    return VaeAdapter(kind, encode, decode, spatial_ratio(vae), vae.config.latent_channels, vae, temporal, space=space)


def _tiny_adapter(vae) -> VaeAdapter:
    space = LatentSpace.of(vae.config)

    def encode(x: torch.Tensor) -> torch.Tensor:
        return space.to_latent(vae.encode(x).latents)

    def decode(z: torch.Tensor, frames_per_video: int) -> torch.Tensor:
        return vae.decode(space.to_raw(z)).sample

    factor = vae.config.upsampling_scaling_factor ** (len(vae.config.encoder_block_out_channels) - 1)
    return VaeAdapter("AutoencoderTiny", encode, decode, factor, vae.config.latent_channels, vae, space=space)


def _dc_adapter(vae) -> VaeAdapter:
    """SANA's deep-compression autoencoder: a deterministic encoder (``.latent``, no distribution); its
    pipelines decode ``latents / scaling_factor``."""
    space = LatentSpace.of(vae.config)

    def encode(x: torch.Tensor) -> torch.Tensor:
        return space.to_latent(vae.encode(x).latent)

    def decode(z: torch.Tensor, frames_per_video: int) -> torch.Tensor:
        return vae.decode(space.to_raw(z)).sample

    factor = 2 ** (len(vae.config.encoder_block_out_channels) - 1)
    return VaeAdapter("AutoencoderDC", encode, decode, factor, vae.config.latent_channels, vae, space=space)


def _flux2_adapter(vae) -> VaeAdapter:
    """FLUX.2's VAE in its pipelines' latent space: the raw latent's 2x2 patches as channels, normalised by
    the running statistics of the VAE's batch norm (``vae.bn``, never run):
    ``(patchify(raw) - running_mean) / sqrt(running_var + batch_norm_eps)``, ``(N, 4 C, H / 16, W / 16)``;
    the pipelines' token packing (a row-major flatten of that) is left to them."""
    mean, var = buffer_statistics(vae.bn.running_mean, vae.bn.running_var)
    std = torch.sqrt(var + vae.config.batch_norm_eps)  # in the buffers' dtype, as the pipelines compute it
    space = LatentSpace(1.0, 0.0, tuple(mean.tolist()), tuple(std.tolist()), patch=2)

    def encode(x: torch.Tensor) -> torch.Tensor:
        return space.to_latent(vae.encode(x).latent_dist.mode())

    def decode(z: torch.Tensor, frames_per_video: int) -> torch.Tensor:
        return vae.decode(space.to_raw(z)).sample

    factor = 2 ** len(vae.config.block_out_channels)  # the encoder's 2 ** (blocks - 1), times the 2x2 patches
    return VaeAdapter("AutoencoderKLFlux2", encode, decode, factor, 4 * vae.config.latent_channels, vae, space=space)


def _callable_adapter(pair) -> VaeAdapter:
    encode_fn, decode_fn = pair
    if not (callable(encode_fn) and callable(decode_fn)):
        raise TypeError(f"vae must be {VAE_KINDS}; got a pair whose items are not both callable")
    return VaeAdapter("callables", _returns_tensor(encode_fn, "encode_fn"),
                      _returns_tensor(lambda z, frames: decode_fn(z), "decode_fn"), None, None)


def _returns_tensor(fn, name: str):
    """``fn``, refusing an output that is not a tensor, or not one per input row, with an error naming the
    function."""
    def checked(*args):
        out = fn(*args)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"vae: {name} returned {type(out).__name__}; an (encode_fn, decode_fn) pair must "
                            "return tensors (for a diffusers VAE's output, pass the VAE itself)")
        rows = args[0].shape[0]
        if out.dim() == 0 or out.shape[0] != rows:
            raise ValueError(f"vae: {name} returned shape {tuple(out.shape)} for {rows} input(s) of shape "
                             f"{tuple(args[0].shape[1:])}; it must return one row per input, batch first")
        return out
    return checked


def upcast_hint(adapter: VaeAdapter, dtype: torch.dtype) -> str:
    """Why a half-precision run of this VAE may overflow, when its config says so (else empty)."""
    config = getattr(adapter.module, "config", None)
    if dtype in (torch.float16, torch.bfloat16) and getattr(config, "force_upcast", False):
        return (" (this VAE's config sets force_upcast: diffusers pipelines run it in float32 because its "
                "half-precision activations overflow)")
    return ""


def check_output_finite(what: str, adapter: VaeAdapter, out: torch.Tensor) -> None:
    """A non-finite encoder or decoder output is an error naming the likely cause, not NaN returned
    (``meta`` tensors, which have no values, pass)."""
    if out.device.type != "meta" and not bool(torch.isfinite(out).all()):
        advice = "use dtype=torch.float32" if out.dtype in (torch.float16, torch.bfloat16) else "check the inputs"
        raise FloatingPointError(f"the {what} is non-finite in {out.dtype}; {advice}{upcast_hint(adapter, out.dtype)}")


def as_adapter(vae, *, decode_timestep: float | None = None) -> VaeAdapter:
    """Wrap ``vae`` in a :class:`VaeAdapter`, or raise a ``TypeError`` naming the accepted kinds.

    ``decode_timestep``: for a decoder with timestep conditioning (LTX-Video 0.9.1+, LTX-2), the
    ``decode_timestep`` its pipeline decoded with (``None``: 0, the pipelines' default). Pass the
    adapter to ``invert``, ``encode``, ``decode``, ``plan`` as the VAE. A pipeline with
    ``decode_noise_scale`` s decodes ``(1 - s) z + s * noise``: that mixture is the latent ``invert``
    finds."""
    if decode_timestep is not None and isinstance(vae, VaeAdapter | tuple | list):
        raise ValueError("decode_timestep is an option of a diffusers VAE whose decoder takes a timestep; got "
                         + ("an adapter (set it when making the adapter)" if isinstance(vae, VaeAdapter) else
                            "callables"))
    if isinstance(vae, VaeAdapter):
        return vae
    if isinstance(vae, tuple | list) and len(vae) == 2:
        return _callable_adapter(vae)
    if isinstance(vae, nn.Module) and isinstance(getattr(vae, "_orig_mod", None), nn.Module):  # torch.compile(vae)
        warnings.warn("vae is a torch.compile'd module: that compiles its forward(), which invert does not "
                      "call (it calls encode and decode); using the VAE itself. Pass compile=True to compile "
                      "invert's encoder + decoder pass", UserWarning, stacklevel=caller_stacklevel())
        vae = vae._orig_mod
    name = type(vae).__name__
    if hasattr(vae, "vae") and hasattr(vae, "components"):  # a DiffusionPipeline
        raise TypeError(f"vae must be {VAE_KINDS}; got the pipeline {name}: pass its VAE, pipe.vae")
    import diffusers

    image_adapters = {"AutoencoderKL": lambda v: _kl_adapter(v, "AutoencoderKL", False),
                      "AutoencoderTiny": _tiny_adapter,
                      "AutoencoderKLTemporalDecoder": lambda v: _kl_adapter(v, "AutoencoderKLTemporalDecoder", True),
                      "AutoencoderDC": _dc_adapter, "AutoencoderKLFlux2": _flux2_adapter,
                      "AutoencoderKLHunyuanImage": lambda v: _kl_adapter(v, "AutoencoderKLHunyuanImage", False)}
    for kind in IMAGE_VAE_KINDS:  # exact classes: none of these subclasses another
        image_vae = getattr(diffusers, kind, None)  # None: a kind newer than the installed diffusers
        if image_vae is not None and isinstance(vae, image_vae):
            if decode_timestep is not None:
                raise ValueError(f"decode_timestep: {kind}'s decoder takes no timestep")
            return image_adapters[kind](vae)
    from .video_adapters import video_adapter

    for kind in VIDEO_VAE_KINDS:
        video_vae = getattr(diffusers, kind, None)
        if video_vae is not None and isinstance(vae, video_vae):
            return video_adapter(vae, kind, decode_timestep)
    raise TypeError(f"vae must be {VAE_KINDS}; got {name}")
