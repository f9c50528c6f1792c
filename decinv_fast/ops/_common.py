"""Checks and small helpers shared by the update-op launchers."""

from __future__ import annotations

import torch

from ..options import math_dtype

LATENT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_latents(name: str, ref: torch.Tensor, **tensors: torch.Tensor) -> None:
    """Every tensor must match ``ref`` in shape, dtype and device and be contiguous."""
    if ref.dtype not in LATENT_DTYPES:
        raise TypeError(f"{name}: latents must be one of {LATENT_DTYPES}, got {ref.dtype}")
    if ref.dim() != 2:
        raise ValueError(f"{name}: latents must be viewed as (B, elements per sample), got shape {tuple(ref.shape)}")
    for key, t in dict(z=ref, **tensors).items():
        if t.shape != ref.shape or t.dtype != ref.dtype or t.device != ref.device:
            raise ValueError(
                f"{name}: {key} must match the latents ({tuple(ref.shape)}, {ref.dtype}, {ref.device}); "
                f"got ({tuple(t.shape)}, {t.dtype}, {t.device})"
            )
        if not t.is_contiguous():
            raise ValueError(f"{name}: {key} must be contiguous (got strides {t.stride()})")


def check_step_inputs(name: str, ref: torch.Tensor, sq_norm: torch.Tensor, table: torch.Tensor,
                      step: torch.Tensor, columns: int, master: torch.Tensor | None) -> None:
    """Shapes of the per-sample norm output, the per-step table, the step counter and the master copy."""
    if sq_norm.dtype != torch.float32 or sq_norm.shape != ref.shape[:1] or sq_norm.device != ref.device:
        raise ValueError(f"{name}: sq_norm must be float32 of shape ({ref.shape[0]},) on {ref.device}")
    table_dtype = math_dtype(ref.dtype)
    if table.dtype != table_dtype or table.dim() != 2 or table.shape[1] != columns or table.device != ref.device:
        raise ValueError(f"{name}: table must be {str(table_dtype)[6:]} (steps, {columns}) on {ref.device} "
                         f"for {str(ref.dtype)[6:]} latents")
    if not table.is_contiguous():
        raise ValueError(f"{name}: table must be contiguous")
    if step.dtype != torch.int64 or step.numel() != 1 or step.device != ref.device:
        raise ValueError(f"{name}: step must be a one-element int64 tensor on {ref.device}")
    if master is not None:
        if master.dtype != torch.float32 or master.shape != ref.shape or master.device != ref.device:
            raise ValueError(f"{name}: master must be float32 {tuple(ref.shape)} on {ref.device}")
        if not master.is_contiguous():
            raise ValueError(f"{name}: master must be contiguous")


def sample_sq_norm(g: torch.Tensor, out: torch.Tensor) -> None:
    """``out[b] = sum(g[b]**2)`` in fp32, written in place."""
    torch.sum(g.float().square(), dim=1, out=out)


def step_row(table: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """The current row of the per-step table, read on the device (no host sync)."""
    return table.index_select(0, step.view(1))[0]


def host_step(table: torch.Tensor, step: torch.Tensor) -> tuple[int, list[float]]:
    """The step index and its table row as Python numbers (host sync; reference backend only)."""
    k = int(step)
    return k, table[k].tolist()
