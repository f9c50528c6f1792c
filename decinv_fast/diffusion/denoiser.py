"""``eps(z, t)`` from whatever predicts the noise: a diffusers UNet or any callable.

Supported models:

- ``diffusers.UNet2DModel``: ``model(z, t, **cond)`` (e.g. ``class_labels``);
- ``diffusers.UNet2DConditionModel``: ``model(z, t, encoder_hidden_states=..., **cond)``;
- any callable ``eps(z, t, **cond)`` returning a tensor shaped like ``z`` (or an output with
  ``.sample``, or a tuple whose first item is the tensor).

``t`` is passed as a Python ``int``. A model that also predicts variances (``2C`` output channels
for ``C`` input channels) is cut to its first ``C`` channels, as diffusers pipelines do.

Classifier-free guidance (``guidance_scale = w != 1``) runs the unconditional and the conditional
branch in one batched call and combines them as ``eps = eps_u + w * (eps_c - eps_u)``; it needs
``encoder_hidden_states`` and ``negative_encoder_hidden_states`` (the empty-prompt embedding).
Other tensor conditions whose first dimension is the batch, also inside a dict such as SDXL's
``added_cond_kwargs``, are repeated for the two branches: the unconditional branch gets the same ones.
SDXL's pipeline gives the unconditional branch its own ``added_cond_kwargs`` (the negative pooled
embedding ``text_embeds`` and the negative ``time_ids``); pass them as ``negative_added_cond_kwargs``,
a dict with the same keys whose tensors differ from ``added_cond_kwargs``' at most in the batch
(``B`` or 1 in both), as ``negative_encoder_hidden_states`` is to ``encoder_hidden_states``.
"""

from __future__ import annotations

import torch

from ..options import check_finite, is_int, is_real, tensor_hint
from .checks import check_state


def _kind(model) -> str:
    config = getattr(model, "config", None)
    if isinstance(model, torch.nn.Module) and config is not None and "in_channels" in config:
        return "unet2d_condition" if "cross_attention_dim" in config else "unet2d"
    if not callable(model):
        raise TypeError(f"model must be a diffusers UNet or a callable eps(z, t, **cond), got {type(model).__name__}")
    return "callable"


class Denoiser:
    """A noise predictor bound to its conditioning: ``denoiser(z, t) -> eps`` (same shape as ``z``).

    Args:
        model: see the module docstring.
        guidance_scale: classifier-free guidance weight ``w`` (1 = no guidance, one branch).
        encoder_hidden_states: ``(B or 1, L, D)`` text embeddings (``UNet2DConditionModel``).
        negative_encoder_hidden_states: ``(B or 1, L, D)`` unconditional embeddings for guidance.
        negative_added_cond_kwargs: the unconditional branch's ``added_cond_kwargs`` for guidance
            (SDXL: ``text_embeds`` the negative pooled embedding, ``time_ids``); by default it gets
            the conditional branch's.
        **cond: further keyword arguments for the model.

    ``calls`` counts model evaluations (a guided evaluation is one batched call).
    """

    def __init__(self, model, *, guidance_scale: float = 1.0, encoder_hidden_states: torch.Tensor | None = None,
                 negative_encoder_hidden_states: torch.Tensor | None = None,
                 negative_added_cond_kwargs: dict | None = None, **cond):
        self.model = model
        self.kind = _kind(model)
        if not is_real(guidance_scale):
            raise ValueError("guidance_scale must be a finite number, "
                             f"got {guidance_scale!r}{tensor_hint(guidance_scale)}")
        self.guidance_scale = float(guidance_scale)
        self.guided = self.guidance_scale != 1.0
        if self.kind == "unet2d_condition" and encoder_hidden_states is None:
            raise ValueError("encoder_hidden_states is required for a UNet2DConditionModel (text embeddings)")
        if self.kind == "unet2d" and encoder_hidden_states is not None:
            raise ValueError("encoder_hidden_states given but a UNet2DModel takes no text conditioning")
        if self.guided and (encoder_hidden_states is None or negative_encoder_hidden_states is None):
            raise ValueError(
                f"guidance_scale={guidance_scale} needs encoder_hidden_states and negative_encoder_hidden_states "
                "(the unconditional embedding); use guidance_scale=1.0 for no guidance"
            )
        if not self.guided and negative_encoder_hidden_states is not None:
            raise ValueError("negative_encoder_hidden_states is only used with guidance_scale != 1")
        self.encoder_hidden_states = encoder_hidden_states
        self.negative_encoder_hidden_states = negative_encoder_hidden_states
        self.negative_added_cond_kwargs = _negative_added(negative_added_cond_kwargs, cond, self.guided)
        self.cond = cond
        _check_finite_conditioning(encoder_hidden_states=encoder_hidden_states,
                                   negative_encoder_hidden_states=negative_encoder_hidden_states,
                                   negative_added_cond_kwargs=self.negative_added_cond_kwargs, **cond)
        self.calls = 0

    @property
    def parameter(self) -> torch.Tensor | None:
        """One of the model's weights (for its dtype and device), if it has any."""
        if isinstance(self.model, torch.nn.Module):
            return next(self.model.parameters(), None)
        return None

    @property
    def keywords(self) -> dict:
        """The keyword arguments it is bound with (embeddings that are ``None`` left out, then
        ``guidance_scale``): ``Denoiser(d.model, **d.keywords)`` is an equal denoiser."""
        keywords = dict(self.cond)
        for key in ("encoder_hidden_states", "negative_encoder_hidden_states", "negative_added_cond_kwargs"):
            if getattr(self, key) is not None:
                keywords[key] = getattr(self, key)
        keywords["guidance_scale"] = self.guidance_scale
        return keywords

    def check(self, z: torch.Tensor, name: str) -> None:
        """Raise a clear error if ``z`` (argument ``name``) cannot go through this model."""
        check_state(name, z)
        weight = self.parameter
        if weight is not None and z.dtype != weight.dtype:
            raise TypeError(
                f"{name} is {z.dtype} but the eps model's weights are {weight.dtype}; convert one of them "
                f"(model.to({z.dtype}) or {name}.to({weight.dtype}))"
            )
        if weight is not None and z.device != weight.device:
            raise ValueError(f"{name} is on {z.device} but the eps model is on {weight.device}")
        if self.kind != "callable":
            channels = int(self.model.config.in_channels)
            if z.dim() != 4 or z.shape[1] != channels:
                raise ValueError(f"{name} must be (B, {channels}, h, w) for this UNet, got shape {tuple(z.shape)}")
        for label in ("encoder_hidden_states", "negative_encoder_hidden_states"):
            emb = getattr(self, label)
            if emb is None:
                continue
            if not isinstance(emb, torch.Tensor) or emb.dtype != z.dtype or emb.device != z.device:
                got = f"{emb.dtype} on {emb.device}" if isinstance(emb, torch.Tensor) else type(emb).__name__
                raise TypeError(f"{label} must be a {z.dtype} tensor on {z.device} like {name}, got {got}")
            if emb.dim() != 3 or emb.shape[0] not in (1, z.shape[0]):
                raise ValueError(f"{label} must be (B or 1, L, D) with B={z.shape[0]}, got shape {tuple(emb.shape)}")
        neg, pos = self.negative_encoder_hidden_states, self.encoder_hidden_states
        width = _embedding_width(self.model) if pos is not None and self.kind == "unet2d_condition" else None
        if width is not None and pos.shape[-1] != width[0]:
            raise ValueError(f"encoder_hidden_states must be (B or 1, L, {width[0]}) for this UNet (its "
                             f"{width[1]}), got shape {tuple(pos.shape)}")
        if neg is not None and neg.shape[1:] != pos.shape[1:]:
            raise ValueError(
                f"negative_encoder_hidden_states {tuple(neg.shape)} and encoder_hidden_states {tuple(pos.shape)} "
                "differ in (L, D)"
            )
        if self.negative_added_cond_kwargs is not None:
            for label, extra in (("added_cond_kwargs", self.cond["added_cond_kwargs"]),
                                 ("negative_added_cond_kwargs", self.negative_added_cond_kwargs)):
                for key, value in extra.items():
                    if value.shape[0] not in (1, z.shape[0]):
                        raise ValueError(f"{label}[{key!r}] must be (B or 1, ...) with B={z.shape[0]} like {name}, "
                                         f"got shape {tuple(value.shape)}")

    def _embeddings(self, emb: torch.Tensor, batch: int) -> torch.Tensor:
        return emb.expand(batch, *emb.shape[1:]) if emb.shape[0] != batch else emb

    def _branches(self, negative: torch.Tensor, positive: torch.Tensor, batch: int) -> torch.Tensor:
        """The unconditional branch's condition, then the conditional one's, each of batch ``batch``."""
        return torch.cat([self._embeddings(negative, batch), self._embeddings(positive, batch)])

    def _call(self, z: torch.Tensor, t: int, **kwargs) -> torch.Tensor:
        if self.kind == "callable":
            out = self.model(z, t, **kwargs)
        else:
            out = self.model(z, t, return_dict=False, **kwargs)
        if not isinstance(out, torch.Tensor):
            got = type(out).__name__
            out = out.sample if hasattr(out, "sample") else out[0] if isinstance(out, tuple | list) and out else out
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"the eps model returned {got}, not a tensor shaped like z {tuple(z.shape)} (nor an "
                                "output with .sample or a tuple whose first item is one)")
        if out.dim() == z.dim() and out.shape[1] == 2 * z.shape[1] and out.shape[2:] == z.shape[2:]:
            out = out[:, : z.shape[1]]
        if out.shape != z.shape:
            raise ValueError(f"the eps model returned shape {tuple(out.shape)} for input shape {tuple(z.shape)}")
        return out.to(z.dtype)

    def __call__(self, z: torch.Tensor, t: int) -> torch.Tensor:
        self.calls += 1
        batch = z.shape[0]
        kwargs = dict(self.cond)
        if not self.guided:
            if self.encoder_hidden_states is not None:
                kwargs["encoder_hidden_states"] = self._embeddings(self.encoder_hidden_states, batch)
            return self._call(z, t, **kwargs)
        for key, value in kwargs.items():
            if key == "added_cond_kwargs" and self.negative_added_cond_kwargs is not None:
                negative = self.negative_added_cond_kwargs
                kwargs[key] = {k: self._branches(negative[k], v, batch) for k, v in value.items()}
            elif isinstance(value, dict):  # e.g. SDXL's added_cond_kwargs
                kwargs[key] = {k: _twice(v, batch) for k, v in value.items()}
            else:
                kwargs[key] = _twice(value, batch)
        kwargs["encoder_hidden_states"] = self._branches(self.negative_encoder_hidden_states,
                                                         self.encoder_hidden_states, batch)
        uncond, cond = self._call(torch.cat([z, z]), t, **kwargs).chunk(2)
        return uncond + self.guidance_scale * (cond - uncond)


def _check_finite_conditioning(**cond) -> None:
    """A ``ValueError`` naming the key (``added_cond_kwargs['text_embeds']`` inside a dict) of a floating conditioning
    tensor with NaN/inf: an input error, before the pass (where it would surface as a non-finite eps)."""
    for key, value in cond.items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for inner, item in items:
            if isinstance(item, torch.Tensor) and (item.is_floating_point() or item.is_complex()):
                check_finite(key if inner is None else f"{key}[{inner!r}]", item)


def _embedding_width(model) -> tuple[int, str] | None:
    """The width ``D`` a ``UNet2DConditionModel`` takes its ``encoder_hidden_states`` in, and the config key that
    sets it: ``encoder_hid_dim`` where they are projected first (``"text_proj"``, ``"text_image_proj"``), else
    ``cross_attention_dim`` (per-block widths: the one they share); ``None`` where that is not one number
    (per-block widths that differ, an image projection that replaces them, IP-Adapter's)."""
    config = model.config
    hid_dim, hid_type = config.get("encoder_hid_dim"), config.get("encoder_hid_dim_type")
    if hid_dim is not None:
        known = hid_type in (None, "text_proj", "text_image_proj") and is_int(hid_dim)
        return (hid_dim, "encoder_hid_dim") if known else None
    if hid_type is not None:
        return None
    width = config.get("cross_attention_dim")
    if isinstance(width, (list, tuple)) and width and len(set(width)) == 1:
        width = width[0]
    return (width, "cross_attention_dim") if is_int(width) else None


def _twice(value, batch: int):
    """A batched tensor repeated for the two guidance branches; anything else as is."""
    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return torch.cat([value, value])
    return value


def _negative_added(negative, cond: dict, guided: bool) -> dict | None:
    """``negative_added_cond_kwargs`` checked against ``cond["added_cond_kwargs"]`` (a copy of the dict)."""
    if negative is None:
        return None
    if not guided:
        raise ValueError("negative_added_cond_kwargs is only used with guidance_scale != 1")
    if "added_cond_kwargs" not in cond:
        raise ValueError("negative_added_cond_kwargs needs added_cond_kwargs (the conditional branch's)")
    if not isinstance(negative, dict):
        raise TypeError(f"negative_added_cond_kwargs must be a dict, got {type(negative).__name__}")
    positive = cond["added_cond_kwargs"]
    if not isinstance(positive, dict):
        raise TypeError(f"added_cond_kwargs must be a dict when negative_added_cond_kwargs is given, "
                        f"got {type(positive).__name__}")
    if set(negative) != set(positive):
        raise ValueError(f"negative_added_cond_kwargs has the keys {sorted(negative)} but added_cond_kwargs has "
                         f"{sorted(positive)}")
    for key, pos in positive.items():
        neg = negative[key]
        for label, value in (("added_cond_kwargs", pos), ("negative_added_cond_kwargs", neg)):
            if not isinstance(value, torch.Tensor) or value.dim() == 0:
                got = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
                raise TypeError(f"{label}[{key!r}] must be a tensor with a batch dimension (B or 1, ...), got {got}")
        if neg.shape[1:] != pos.shape[1:]:
            raise ValueError(f"negative_added_cond_kwargs[{key!r}] has shape {tuple(neg.shape)} but "
                             f"added_cond_kwargs[{key!r}] has {tuple(pos.shape)}; they must differ at most in the "
                             "batch")
        if neg.dtype != pos.dtype or neg.device != pos.device:
            raise TypeError(f"negative_added_cond_kwargs[{key!r}] is {neg.dtype} on {neg.device} but "
                            f"added_cond_kwargs[{key!r}] is {pos.dtype} on {pos.device}")
    return {key: negative[key] for key in positive}


def as_denoiser(model, **cond) -> Denoiser:
    """``model`` bound to ``cond`` (a :class:`Denoiser` is returned as is; it takes no more ``cond``).

    The one way to get ``eps(z, t)`` from a model and its conditioning. (The custom autograd
    functions take the same arguments apart instead, with ``_autodiff.bind``, to differentiate the
    conditioning tensors.)"""
    if isinstance(model, Denoiser):
        if cond:
            raise TypeError(f"conditioning {sorted(cond)} given for a Denoiser that is already bound")
        return model
    return Denoiser(model, **cond)
