"""Tracing for the memory planner: one encoder/decoder pass of a weightless (``meta``) copy of the VAE,
under a dispatch mode that counts the bytes of live tensors and with attention run as the kernel that
would run (see :mod:`.planner` for what is modelled and how it is checked)."""

from __future__ import annotations

import copy
import weakref

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from .attention import auto_processors


class LiveBytes(TorchDispatchMode):
    """Tracks the bytes of live storages created inside the mode and their peak.

    ``conv_copy=True`` models oneDNN on the CPU, which, for a batch of one, converts a convolution's
    input to a blocked layout in a temporary buffer of the same size while the output is being
    written; batches of two or more usually convolve without that copy (measured: tests/test_planner.py,
    benchmarks/memory_vs_frames.py; one exception seen: the full-width SD layout at 64x64 with a
    batch of two copies after all, and is predicted 14% low).
    """

    def __init__(self, conv_copy: bool = False):
        super().__init__()
        self.conv_copy = conv_copy
        self.live = 0
        self.peak = 0
        self._refs: dict[int, list] = {}  # storage id -> [tensor count, bytes]

    def _release(self, key: int) -> None:
        entry = self._refs.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self._refs[key]

    def _track(self, t) -> None:
        if not isinstance(t, torch.Tensor):
            return
        key = t.untyped_storage()._cdata
        entry = self._refs.get(key)
        if entry is None:
            nbytes = t.untyped_storage().nbytes()
            entry = self._refs[key] = [0, nbytes]
            self.live += nbytes
            self.peak = max(self.peak, self.live)
        entry[0] += 1
        weakref.finalize(t, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            self._track(t)
        if self.conv_copy and func is torch.ops.aten.convolution.default and args[0].shape[0] == 1:
            x = args[0]
            self.peak = max(self.peak, self.live + x.numel() * x.element_size())
        return out


class _FlashLike(torch.autograd.Function):
    """Memory stand-in for a fused attention kernel: output and log-sum-exp only; the backward
    produces dq, dk, dv without a tokens x tokens matrix."""

    @staticmethod
    def forward(ctx, q, k, v):
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


class AttentionModel(TorchFunctionMode):
    """While tracing, runs ``scaled_dot_product_attention`` as the kernel that would run: a fused
    one (:class:`_FlashLike`) or, with ``math=True``, the explicit softmax(QK^T)V decomposition."""

    def __init__(self, math: bool):
        super().__init__()
        self.math = math

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.scaled_dot_product_attention:
            if self.math:
                return torch.ops.aten._scaled_dot_product_attention_math(*args[:3])[0]
            return _FlashLike.apply(*args[:3])
        return func(*args, **(kwargs or {}))


def meta_vae(module: torch.nn.Module, dtype: torch.dtype, attention: str) -> torch.nn.Module:
    """A weightless copy of ``module`` in ``dtype``; with ``attention="auto"`` it runs the processors the run
    keeps (see :func:`_kept_processors`), otherwise diffusers' default SDPA ones (``AttentionModel`` runs
    them as the kernel asked for)."""
    with torch.device("meta"):
        meta = type(module).from_config(module.config)
    kept = _kept_processors(module) if attention == "auto" else {}
    if kept:
        meta.set_attn_processor({**meta.attn_processors, **kept})
    # nn.Module.to: diffusers' own .to() warns about fp32-kept modules, irrelevant for a meta copy;
    # device too: some layers make their parameters on the CPU whatever the default device
    # (AutoencoderKLTemporalDecoder's time mixer)
    return torch.nn.Module.to(meta, device="meta", dtype=dtype).eval().requires_grad_(False)


def _kept_processors(module: torch.nn.Module) -> dict:
    """Copies of the attention processors a run with ``attention="auto"`` keeps (``auto_processors``)
    other than the stock fused ones (the meta copy's default SDPA stands for those, xformers included):
    traced as they compute, one that calls SDPA is a fused kernel and one that computes
    softmax(QK^T)V itself (a subclass of diffusers' ``AttnProcessor``, ``SlicedAttnProcessor``) builds
    the tokens x tokens matrix. Copied so the trace leaves the user's processors as they are."""
    own = _own_processors(module)
    try:
        return copy.deepcopy(own)  # one call: a processor shared by several layers stays shared
    except Exception as error:
        raise ValueError(f"attention='auto' plans with the VAE's own attention processors "
                         f"({own_processor_names(module)}), which could not be copied for the trace ({error}); "
                         f"{STANDARD_ONE}") from error


STANDARD_ONE = "pass attention='sdpa' or 'math' to plan with a standard one"


def _own_processors(module: torch.nn.Module) -> dict:
    from diffusers.models import attention_processor as ap

    fused = (ap.AttnProcessor2_0, ap.XFormersAttnProcessor)
    kept = auto_processors(dict(getattr(module, "attn_processors", None) or {}))
    return {name: p for name, p in kept.items() if type(p) not in fused}


def own_processor_names(module: torch.nn.Module) -> str:
    """The class names of the non-stock processors ``attention="auto"`` keeps ("" when none)."""
    return "+".join(sorted({type(p).__name__ for p in _own_processors(module).values()}))


def peak_bytes(run, attention: str, device: str) -> int:
    """Peak bytes of the tensors ``run()`` creates (with the CPU's convolution copies on ``cpu``)."""
    tracker = LiveBytes(conv_copy=torch.device(device).type == "cpu")
    with AttentionModel(math=attention == "math"), tracker:
        run()
    return tracker.peak


def chunk_pass(meta, chunk, pixel, latent, dtype, per_video, method):
    """``run()`` for :func:`peak_bytes`: ``E(D(z))`` of one chunk on the meta copy (for ``grad``: the
    decoder forward and the backward of the pixel loss)."""

    def run() -> None:
        z = torch.empty((chunk,) + latent, dtype=dtype, device="meta")
        if method == "grad":
            z.requires_grad_(True)
            x = torch.empty((chunk,) + pixel, dtype=dtype, device="meta")
            with torch.enable_grad():
                (meta.decode(z, per_video) - x).square().sum().backward()
        else:
            with torch.no_grad():
                meta.encode(meta.decode(z, per_video))

    return run
