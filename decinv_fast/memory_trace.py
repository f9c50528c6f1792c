"""Tracing for the memory planner: one encoder/decoder pass of a weightless (``meta``) copy of the VAE,
under a dispatch mode that counts the bytes of live tensors and with attention run as the kernel that
would run (see :mod:`.planner` for what is modelled and how it is checked)."""

from __future__ import annotations

import copy
import math
import weakref

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from .attention import auto_processors
from .sdpa_rules import fused_kernel_takes


class LiveBytes(TorchDispatchMode):
    """Tracks the bytes of live storages created inside the mode and their peak.

    ``device="cpu"`` adds what a CPU convolution holds besides its output (:func:`cpu_conv_scratch`):
    oneDNN converts the weights of every 2-D convolution it runs to its blocked layout, a temporary copy
    (45.6 MiB for one of Qwen-Image 2.1's 1152-channel 3x3 convolutions), and, for a batch of one, the
    input too, in a buffer of the same size, while the output is being written; 2-D batches of two or
    more usually convolve without the input's copy (measured: tests/test_planner.py,
    benchmarks/memory_vs_frames.py; one exception seen: the full-width SD layout at 64x64 with a batch of
    two copies after all, and is predicted 14% low). Not modelled: a channels-last
    activation (SANA's and HunyuanImage 2.1's attention hand one on) stays channels-last through the CPU's
    convolutions and group norms, which copy each weight to that layout, but not through the meta
    kernels, whose outputs are contiguous: their released VAEs are predicted 38-75% low at 64-128 px, and
    Qwen-Image 2.1's on two 32x32 images 45.6 MiB low (its attention's output is channels-last for a batch
    of two, not of one).
    Mimicking the layout fixed those two but broke FLUX.2's (whose attention output the CPU's kernels,
    unlike the meta ones, stride as contiguous for a batch of one), so it was left out.
    3-D convolutions (the video VAEs') copy their input and weights at any batch, or, with fewer input
    channels than a SIMD register holds floats, their output padded to that many channels. Convolutions
    PyTorch keeps out of oneDNN (small batches of one, half precision, ...) unfold their input into a
    column buffer of ``N * C_in * prod(kernel) * prod(output's spatial size)`` elements, 27 times the
    output for a 3x3x3 kernel (measured on AVX-512: tests/test_planner_video.py).

    ``device="cuda"`` adds cuDNN's workspace (:func:`cuda_conv_workspace`): the input and the output
    again, in the channels-last layout its tensor-core kernels run in (seen on an H100 with torch 2.11,
    fp16 2-D and bf16 3-D convolutions: benchmarks/gpu_validation.py).
    """

    def __init__(self, device: str | None = None):
        super().__init__()
        self.scratch = {"cpu": (cpu_conv_scratch, cpu_conv_backward_scratch),
                        "cuda": (cuda_conv_workspace, cuda_conv_backward_workspace)}.get(device)
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
        if self.scratch is not None and func is torch.ops.aten.convolution.default:
            self.peak = max(self.peak, self.live + self.scratch[0](*args))
        elif self.scratch is not None and func is torch.ops.aten.convolution_backward.default:
            self.peak = max(self.peak, self.live + self.scratch[1](*args))
        elif func is torch.ops.aten._safe_softmax.default:  # the math attention's softmax, one op on meta
            # inside, it marks the scores equal to -inf: a bool matrix beside its input and output (measured
            # on the CPU, Cosmos' VAE at 704x1280: the prediction 10% low without it)
            self.peak = max(self.peak, self.live + args[0].numel())
        return out


def cuda_conv_workspace(x, weight, bias, stride, padding, dilation, transposed, output_padding, groups) -> int:
    """Bytes cuDNN's workspace holds during a convolution: its input and output in channels-last layout.

    Measured on an H100 (torch 2.11, cuDNN's heuristic choice, benchmarks/gpu_validation.py): at the peak
    of the SD-2.1 decoder in fp16 the live convolution blocks were exactly the input plus the output again
    (batches of 1 and 4); the same rule brings the bf16 video VAEs' (3-D) predictions to within a few
    percent. fp32 was not measured; the rule is applied to it too (an over-prediction is the safe side)."""
    if transposed:
        return 0
    spatial = _output_size(x, weight, stride, padding, dilation)
    return (x.numel() + x.shape[0] * weight.shape[0] * math.prod(spatial)) * x.element_size()


def cuda_conv_backward_workspace(grad, x, weight, *_) -> int:
    """cuDNN's workspace for a convolution's backward: the output's gradient and the input, channels-last."""
    return (grad.numel() + x.numel()) * x.element_size()


def cpu_conv_scratch(x, weight, bias, stride, padding, dilation, transposed, output_padding, groups) -> int:
    """Bytes a CPU convolution (``aten.convolution``'s arguments, meta tensors) holds besides its output:
    oneDNN's copies, or the native kernels' column buffer (see :class:`LiveBytes`)."""
    backend = _cpu_backend(x, weight, stride, padding, dilation, transposed, output_padding, groups)
    size = x.element_size()
    if backend in _NATIVE_UNFOLDING:
        return _columns(x, weight, stride, padding)
    if backend.startswith("Mkldnn") and x.dim() == 5:  # a 3-D convolution, whatever the batch
        block = 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8  # floats per SIMD register
        if x.shape[1] < block:  # its output in oneDNN's blocked layout, channels padded to the block, then copied
            spatial = _output_size(x, weight, stride, padding)
            return x.shape[0] * -(-weight.shape[0] // block) * block * math.prod(spatial) * size
        return (x.numel() + weight.numel()) * size  # its input and weights in the blocked layout
    copies = weight.numel() if backend.startswith("Mkldnn") else 0  # oneDNN's blocked weights
    return (copies + (x.numel() if x.shape[0] == 1 else 0)) * size


def cpu_conv_backward_scratch(grad, x, weight, bias_sizes, stride, padding, dilation, transposed, output_padding,
                              groups, mask) -> int:
    """Bytes ``aten.convolution_backward`` holds besides its outputs on the CPU: the native 3-D kernel's
    column buffer for the input's gradient (the 2-D one and oneDNN's, measured, add little)."""
    backend = _cpu_backend(x, weight, stride, padding, dilation, transposed, output_padding, groups)
    return _columns(x, weight, stride, padding) if mask[0] and backend == "Slow3d" else 0


def _cpu_backend(x, weight, stride, padding, dilation, transposed, output_padding, groups) -> str:
    """The convolution backend PyTorch picks for CPU tensors of these shapes (asked with zero-size stand-ins,
    expanded); "" where it cannot be asked."""
    select = getattr(torch._C, "_select_conv_backend", None)
    if select is None or transposed:
        return ""
    cpu = [torch.empty((), dtype=t.dtype).expand(t.shape) for t in (x, weight)]
    return str(select(*cpu, None, list(stride), list(padding), list(dilation), transposed, list(output_padding),
                      groups, None)).rsplit(".", 1)[-1]


def _columns(x, weight, stride, padding) -> int:
    """Bytes of the native kernels' unfolded input (none for a 1x1 convolution: a matrix product of the input)."""
    kernel = weight.shape[2:]
    if all(k == 1 for k in kernel) and all(s == 1 for s in stride) and not any(padding):
        return 0
    spatial = _output_size(x, weight, stride, padding)
    return x.shape[0] * weight.shape[1] * math.prod(kernel) * math.prod(spatial) * x.element_size()


def _output_size(x, weight, stride, padding, dilation=None) -> list[int]:
    dilation = dilation or [1] * (x.dim() - 2)
    return [(n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, p, k, s, d in zip(x.shape[2:], padding, weight.shape[2:], stride, dilation, strict=True)]


_NATIVE_UNFOLDING = ("Slow2d", "Slow3d")  # the CPU backends that convolve through a column buffer


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
    """While tracing, runs ``scaled_dot_product_attention`` as the kernel that would run on ``device``: a
    fused one (:class:`_FlashLike`) where PyTorch would pick one (:func:`.sdpa_rules.fused_kernel_takes`),
    else, and always with ``math=True``, PyTorch's math kernel (the tokens x tokens matrix)."""

    def __init__(self, math: bool, device: str = "cuda"):
        super().__init__()
        self.math = math
        self.device = torch.device(device).type

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is not F.scaled_dot_product_attention:
            return func(*args, **(kwargs or {}))
        call = _sdpa_arguments(*args, **(kwargs or {}))
        if not self.math and fused_kernel_takes(call["query"], call["key"], call["value"], call["attn_mask"],
                                                call["dropout_p"], self.device):
            return _FlashLike.apply(call["query"], call["key"], call["value"])
        return torch.ops.aten._scaled_dot_product_attention_math(**call)[0]


def _sdpa_arguments(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                    enable_gqa=False) -> dict:
    """``F.scaled_dot_product_attention``'s arguments by name, as its math kernel takes them."""
    return dict(query=query, key=key, value=value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                scale=scale, enable_gqa=enable_gqa)


def meta_vae(module: torch.nn.Module, dtype: torch.dtype, attention: str) -> torch.nn.Module:
    """A weightless copy of ``module`` in ``dtype``; with ``attention="auto"`` it runs the processors the run
    keeps (see :func:`_kept_processors`), otherwise diffusers' default SDPA ones (``AttentionModel`` runs
    them as the kernel asked for)."""
    with torch.device("meta"):
        meta = type(module).from_config(module.config)
    kept = _kept_processors(module) if attention == "auto" else {}
    if kept:
        meta.set_attn_processor({**meta.attn_processors, **kept})
    _copy_settings(module, meta)
    # nn.Module.to: diffusers' own .to() warns about fp32-kept modules, irrelevant for a meta copy;
    # device too: some layers make their parameters on the CPU whatever the default device
    # (AutoencoderKLTemporalDecoder's time mixer)
    meta = torch.nn.Module.to(meta, device="meta", dtype=dtype).eval().requires_grad_(False)
    for name in SPACE_BUFFERS:  # read as numbers by the adapter (its latent space), never by the forward pass
        buffer = module._buffers.get(name)  # not getattr: diffusers warns on config values read as attributes
        if buffer is not None and not buffer.is_meta:
            setattr(meta, name, buffer.detach().to("cpu", copy=True))
    return meta


# buffers holding the pipeline's latent space (LTX-Video keeps its latents_mean/latents_std there, not in
# its config): a meta copy has no values to read, so it keeps the real ones (a few floats, on the CPU)
SPACE_BUFFERS = ("latents_mean", "latents_std")


def _copy_settings(module: torch.nn.Module, meta: torch.nn.Module) -> None:
    """The VAE's own switches and sizes set after construction (``enable_tiling()``, ``enable_slicing()``,
    tile sizes, CogVideoX's and LTX-Video's frame batches, HunyuanVideo's frame-wise passes), which
    ``from_config`` does not restore and which set how much one call holds at once."""
    for name, value in vars(module).items():
        if not name.startswith("_") and name != "training" and type(value) in (bool, int, float):
            setattr(meta, name, value)


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
    """Peak bytes of the tensors ``run()`` creates, with what convolutions hold besides them on ``device``."""
    tracker = LiveBytes(torch.device(device).type)
    with AttentionModel(math=attention == "math", device=device), tracker:
        run()
    return tracker.peak


def chunk_pass(meta, chunk, pixel, latent, dtype, per_video, method):
    """``run()`` for :func:`peak_bytes`: ``E(D(z))`` of one chunk on the meta copy, with the pixel residual
    ``loop.make_codec`` holds while the encoder runs (for ``grad``: the encoder pass of its starting point
    ``E(x)``, then the decoder forward and the backward of the pixel loss; the peak is the larger). A chunk
    is ``chunk`` rows of ``pixel``/``latent`` shape: frames, or a video VAE's whole videos ``(3, F, H, W)``
    and ``(C, f, h, w)``."""

    def run() -> None:
        z = torch.empty((chunk,) + latent, dtype=dtype, device="meta")
        if method == "grad":
            z.requires_grad_(True)
            x = torch.empty((chunk,) + pixel, dtype=dtype, device="meta")
            with torch.no_grad():  # E(x), chunk by chunk, before the first step (loop.PixelErrorIteration)
                meta.encode(x)
            with torch.enable_grad():
                (meta.decode(z, per_video) - x).square().sum().backward()
        else:
            with torch.no_grad():
                decoded = meta.decode(z, per_video)
                residual = torch.empty_like(decoded)  # the codec's D(y) - x, squared in place, lives through E
                meta.encode(decoded)
                del residual

    return run
