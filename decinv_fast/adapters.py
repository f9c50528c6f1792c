"""One encode/decode interface over every kind of VAE that ``invert`` accepts.

Latent conventions follow diffusers pipelines exactly (:class:`LatentSpace`)::

    E(x) = (vae.encode(x).latent_dist.mode() - shift_factor) * scaling_factor
    D(z) = vae.decode(z / scaling_factor + shift_factor).sample

or, for a config with per-channel ``latents_mean`` and ``latents_std`` (SDXL-family pipelines),
``E(x) = (mode - latents_mean) * scaling_factor / latents_std`` and its inverse.

An adapter works on *frames*: ``encode`` maps ``(N, 3, H, W)`` pixels in [-1, 1] to ``(N, C, h, w)``
latents and ``decode`` maps them back. Videos are flattened to frames by the caller; a temporal
VAE's decoder is told how many consecutive frames form one video (``frames_per_video``).

A causal 3-D video VAE (Wan, CogVideoX, HunyuanVideo, LTX-Video) compresses time as well: its latents
are ``(N, C, 1 + (F - 1) / t, h, w)`` for ``(N, 3, F, H, W)`` videos, and its causal convolutions
mix every frame with the ones before it, so frames cannot be encoded on their own. Its adapter works
on whole *videos* (``temporal_compression`` is ``t``): ``encode`` maps ``(N, 3, F, H, W)`` to
``(N, C, f, h, w)``, the layout its pipelines decode, and the caller hands it videos, not frames.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .options import caller_stacklevel

# the causal 3-D video VAEs of diffusers, whose latents compress time (see the module's docstring)
VIDEO_VAE_KINDS = ("AutoencoderKLWan", "AutoencoderKLCogVideoX", "AutoencoderKLHunyuanVideo", "AutoencoderKLLTXVideo")
VAE_KINDS = (
    "a diffusers AutoencoderKL, AutoencoderTiny or AutoencoderKLTemporalDecoder, a video VAE ("
    + ", ".join(VIDEO_VAE_KINDS) + "), or an (encode_fn, decode_fn) pair"
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
    frame_step: int | None = None  # a video VAE takes videos of 1 + k * frame_step frames
    space: LatentSpace | None = None  # a diffusers VAE's pipeline latent space

    @property
    def encodes_videos(self) -> bool:
        return self.temporal_compression is not None

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._in_dtype_of(pixels, self.encode_fn(pixels))

    def decode(self, latents: torch.Tensor, frames_per_video: int = 1) -> torch.Tensor:
        return self._in_dtype_of(latents, self.decode_fn(latents, frames_per_video))

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
    Playground v2.5), ``(raw - latents_mean) * scaling_factor / latents_std`` as those pipelines do."""

    scaling: float = 1.0
    shift: float = 0.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

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
            return z * std / self.scaling + mean
        return z / self.scaling + self.shift if self.shift else z / self.scaling

    def _per_channel(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, len(self.mean)) + (1,) * (t.dim() - 2)
        return tuple(torch.tensor(v, dtype=t.dtype, device=t.device).view(shape) for v in (self.mean, self.std))


def _kl_adapter(vae, kind: str, temporal: bool) -> VaeAdapter:
    space = LatentSpace.of(vae.config)

    def encode(x: torch.Tensor) -> torch.Tensor:
        return space.to_latent(vae.encode(x).latent_dist.mode())

    def decode(z: torch.Tensor, frames_per_video: int) -> torch.Tensor:
        if temporal:
            return vae.decode(space.to_raw(z), num_frames=frames_per_video).sample
        return vae.decode(space.to_raw(z)).sample

    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return VaeAdapter(kind, encode, decode, factor, vae.config.latent_channels, vae, temporal, space=space)


def _tiny_adapter(vae) -> VaeAdapter:
    space = LatentSpace.of(vae.config)

    def encode(x: torch.Tensor) -> torch.Tensor:
        return space.to_latent(vae.encode(x).latents)

    def decode(z: torch.Tensor, frames_per_video: int) -> torch.Tensor:
        return vae.decode(space.to_raw(z)).sample

    factor = vae.config.upsampling_scaling_factor ** (len(vae.config.encoder_block_out_channels) - 1)
    return VaeAdapter("AutoencoderTiny", encode, decode, factor, vae.config.latent_channels, vae, space=space)


def _video_adapter(vae, kind: str) -> VaeAdapter:
    """A causal 3-D video VAE, in the latent space its pipeline uses: LTX-Video keeps ``latents_mean`` and
    ``latents_std`` as buffers of the model (its pipeline reads them there), the others in the config
    (Wan) or a ``scaling_factor`` alone (CogVideoX, HunyuanVideo); see :class:`LatentSpace`."""
    config = vae.config
    space = LatentSpace.of(config)
    if kind == "AutoencoderKLLTXVideo":
        mean, std = vae.latents_mean, vae.latents_std
        if mean.is_meta or std.is_meta:  # a VAE built on the meta device (to plan with): shapes only, no values
            mean, std = torch.zeros(mean.shape), torch.ones(std.shape)
        space = LatentSpace(space.scaling, 0.0, tuple(mean.tolist()), tuple(std.tolist()))
    # LTX-Video 0.9.1+ decoders take a timestep; its pipeline's default decode_timestep is 0 (no noise added)
    timestep = bool(getattr(config, "timestep_conditioning", False))

    def encode(x: torch.Tensor) -> torch.Tensor:
        return space.to_latent(vae.encode(x).latent_dist.mode())

    def decode(z: torch.Tensor, frames_per_video: int) -> torch.Tensor:
        raw = space.to_raw(z)
        if timestep:
            return vae.decode(raw, temb=torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)).sample
        return vae.decode(raw).sample

    # the ratios the model sets itself (from its patch sizes: LTX-Video), else its config's (vars, not getattr:
    # diffusers warns when a config value is read as an attribute)
    own = vars(vae)
    if kind == "AutoencoderKLWan":
        time_factor = 2 ** sum(map(bool, config.temperal_downsample))  # (sic: the config's spelling)
        channels = config.z_dim
    else:
        time_factor = int(own.get("temporal_compression_ratio") or config.temporal_compression_ratio)
        channels = config.latent_channels
    spatial = own.get("spatial_compression_ratio") or 2 ** (len(config.block_out_channels) - 1)
    # CogVideoX encodes and decodes in batches of frames (num_latent_frames_batch_size latent frames), and
    # gets the count back only when those batches come out whole: 1 + 8k frames (its pipelines use 49)
    step = time_factor * (int(vae.num_latent_frames_batch_size) if kind == "AutoencoderKLCogVideoX" else 1)
    return VaeAdapter(kind, encode, decode, int(spatial), channels, vae, temporal_compression=time_factor,
                      frame_step=step, space=space)


def _callable_adapter(pair) -> VaeAdapter:
    encode_fn, decode_fn = pair
    if not (callable(encode_fn) and callable(decode_fn)):
        raise TypeError(f"vae must be {VAE_KINDS}; got a pair whose items are not both callable")
    return VaeAdapter("callables", encode_fn, lambda z, frames: decode_fn(z), None, None)


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


def as_adapter(vae) -> VaeAdapter:
    """Wrap ``vae`` in a :class:`VaeAdapter`, or raise a ``TypeError`` naming the accepted kinds."""
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
    try:
        from diffusers import AutoencoderKL, AutoencoderKLTemporalDecoder, AutoencoderTiny
    except ImportError:  # pragma: no cover - diffusers is a hard dependency
        AutoencoderKL = AutoencoderKLTemporalDecoder = AutoencoderTiny = ()
    if isinstance(vae, AutoencoderKLTemporalDecoder):
        return _kl_adapter(vae, "AutoencoderKLTemporalDecoder", temporal=True)
    if isinstance(vae, AutoencoderKL):
        return _kl_adapter(vae, "AutoencoderKL", temporal=False)
    if isinstance(vae, AutoencoderTiny):
        return _tiny_adapter(vae)
    import diffusers

    for kind in VIDEO_VAE_KINDS:
        video_vae = getattr(diffusers, kind, None)
        if video_vae is not None and isinstance(vae, video_vae):
            return _video_adapter(vae, kind)
    raise TypeError(f"vae must be {VAE_KINDS}; got {name}")
