"""Which kernel ``F.scaled_dot_product_attention`` runs for given inputs, for the memory planner.

PyTorch picks a fused kernel (flash, memory-efficient, cuDNN: output and log-sum-exp only) when one
accepts the inputs, else its math fallback, which builds the tokens x tokens matrix, in fp32 for fp16 /
bf16 inputs (it upcasts them). The rules below are PyTorch's own gates (``sdp_utils.cpp``,
``sdp_utils_cpp.cpp``) that decide between the two for the inputs VAEs pass; a user's switches
(``torch.nn.attention.sdpa_kernel``) are not read. The CPU's rule is checked against PyTorch's own choice
(tests/test_sdpa_rules.py); the GPU's (sm80 and later) is read from those gates, and its check against
PyTorch's choice there has not run yet (it needs a GPU).

The one that matters in practice: every fused kernel needs the head dimension laid out with stride 1.
Cosmos' VAE, for a batch of one video, passes its spatial and temporal attention a query viewed
straight from its ``(B, C, T, H, W)`` activation (channels last in the view, stride ``T*H*W``), so
PyTorch runs the math kernel there, on a GPU as on the CPU (seen on an H100: 32.3 GiB for one video
predicted at 10.1 GiB as fused, and turning the math kernel off made the call fail).
"""

from __future__ import annotations

import torch

HALF = (torch.float16, torch.bfloat16)


def fused_kernel_takes(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attn_mask: torch.Tensor | None, dropout_p: float, device_type: str) -> bool:
    """Whether a fused SDPA kernel accepts these inputs on ``device_type`` (``"cpu"`` or ``"cuda"``)."""
    tensors = (query, key, value)
    if (query.dim() not in (3, 4) or any(t.dim() != query.dim() for t in tensors) or query.shape[-2] == 0
            or key.shape[-2] == 0 or not _mask_broadcasts(attn_mask, query, key)):
        return False
    strides_one = all(t.stride(-1) == 1 for t in tensors)
    same_head_dim = query.shape[-1] == key.shape[-1] == value.shape[-1]
    if device_type != "cuda":  # the CPU's flash kernel, the only fused one there; its mask: (L, S) or the query's dims
        return (strides_one and same_head_dim and dropout_p == 0
                and query.dtype in (torch.float32, torch.float64, *HALF)
                and (attn_mask is None or attn_mask.dim() in (2, query.dim())))
    half = query.dtype in HALF
    flash = (attn_mask is None and half and same_head_dim and query.shape[-1] <= 256
             and (strides_one or query.shape[-1] == 1))
    align = 8 if half else 4  # the memory-efficient kernel's GEMM alignment (sm80 and later)
    efficient = (query.dtype in (torch.float32, *HALF) and strides_one
                 and (attn_mask is None or attn_mask.stride(-1) == 1)
                 and query.shape[-1] == key.shape[-1] and query.shape[-1] % align == 0 and value.shape[-1] % align == 0
                 and query.shape[:2] == key.shape[:2] == value.shape[:2])
    return flash or efficient


def _mask_broadcasts(attn_mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor) -> bool:
    """No mask, or one that broadcasts to the scores' shape ``(..., L, S)`` (else the call fails on any kernel)."""
    if attn_mask is None:
        return True
    scores = (*query.shape[:-1], key.shape[-2])
    try:
        return torch.broadcast_shapes(attn_mask.shape, scores) == scores
    except RuntimeError:
        return False
