"""The ``triton`` backend: one fused Triton kernel per step, then a deterministic per-sample sum.

Each op launches its kernel from ``kernels/`` on the grid ``(cdiv(n, BLOCK), B)``: program ``(j, b)``
updates elements ``[j*BLOCK, (j+1)*BLOCK)`` of sample ``b`` (latents viewed as ``(B, n)``) and writes
the sum of ``g*g`` over them into ``partials[b, j]``; ``torch.sum(partials, dim=1, out=sq_norm)``
finishes the norms. No float atomics (the norms do not depend on scheduling), no host sync, and the
per-step values (``lr_k`` / ``rho_k``, Adam's bias corrections) are read by the kernel from the device
``table`` at row ``step``, so a captured CUDA graph replays correctly as ``step`` advances.

Block-size rule (:func:`block_config`):

* Triton interpreter (``TRITON_INTERPRET=1``, CPU): programs run one after another, each paying a
  fixed Python cost, so blocks are large: ``min(INTERPRET_BLOCK = 65536, next_power_of_2(n))``.
* GPU: the op is memory-bound and latents are small (4x64x64 per image), so blocks are sized to keep
  enough programs in flight: 256 elements while ``B*n < 2**17``, 1024 while ``B*n < 2**22``, else 4096
  (each tier gives at least ~128 programs once ``B*n >= 2**15``); never more than
  ``next_power_of_2(n)`` nor fewer than 128. ``num_warps = clamp(BLOCK // 256, 1, 8)``: 4 to 16
  elements per thread.

Kernels run with ``enable_fp_fusion=False`` and IEEE division / square root, so fp32 results follow
the reference's order of operations (no contraction of ``b*m + c*g`` into an FMA).
Triton itself is imported lazily, the first time a kernel is launched.
"""

from __future__ import annotations

import contextlib

import torch

INTERPRET_BLOCK = 65536
GPU_BLOCKS = ((1 << 17, 256), (1 << 22, 1024), (None, 4096))  # (B*n below this, BLOCK)
MIN_GPU_BLOCK = 128
MAX_BATCH = 65535  # CUDA's limit on the second grid dimension


def next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def block_config(n: int, batch: int, interpreted: bool) -> tuple[int, int]:
    """``(BLOCK, num_warps)`` for latents of ``batch`` samples of ``n`` elements (rule in the module doc)."""
    if interpreted:
        return min(INTERPRET_BLOCK, next_power_of_2(n)), 1
    total = batch * n
    block = next(b for limit, b in GPU_BLOCKS if limit is None or total < limit)
    block = max(MIN_GPU_BLOCK, min(block, next_power_of_2(n)))
    return block, max(1, min(8, block // 256))


def adam(edz, e_x, z, m, v, sq_norm, table, step, master, eps, betas) -> None:
    """Fused Adam step (math in ``kernels/adam_residual_step.py``); arguments as ``ops/_torch.py``."""
    from ..kernels.adam_residual_step import adam_residual_step_kernel

    b1, b2 = float(betas[0]), float(betas[1])
    _launch(adam_residual_step_kernel, z, sq_norm, master, (edz, e_x, z, m, v), (table, step),
            (b1, 1.0 - b1, b2, 1.0 - b2, float(eps)))


def fsm(edz, e_x, z, sq_norm, table, step, master) -> None:
    """Fused forward step (math in ``kernels/fsm_residual_step.py``); arguments as ``ops/_torch.py``."""
    from ..kernels.fsm_residual_step import fsm_residual_step_kernel

    _launch(fsm_residual_step_kernel, z, sq_norm, master, (edz, e_x, z), (table, step), ())


def km(edz, e_x, y, z, sq_norm, table, step, master, alpha) -> None:
    """Fused inertial KM step (math in ``kernels/km_residual_step.py``); arguments as ``ops/_torch.py``."""
    from ..kernels.km_residual_step import km_residual_step_kernel

    _launch(km_residual_step_kernel, z, sq_norm, master, (edz, e_x, y, z), (table, step), (float(alpha),))


def on_device(device: torch.device):
    """``device`` made current for a launch on a CUDA device (the latents need not be on the current
    one); nothing elsewhere."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _launch(kernel, z: torch.Tensor, sq_norm: torch.Tensor, master: torch.Tensor | None,
            latents: tuple, step_args: tuple, scalars: tuple) -> None:
    """Launch ``kernel(*latents, master, partials, table, step, n, n_blocks, *scalars)`` on the grid
    ``(n_blocks, B)`` and reduce the per-block partial sums into ``sq_norm`` (``(B,)`` fp32)."""
    from triton.runtime.interpreter import InterpretedFunction

    batch, n = z.shape
    if n == 0:
        sq_norm.zero_()
        return
    if batch > MAX_BATCH:
        raise ValueError(f"the Triton update kernels take at most {MAX_BATCH} samples per call, got {batch}")
    block, num_warps = block_config(n, batch, isinstance(kernel, InterpretedFunction))
    n_blocks = -(-n // block)
    # one block per sample: the kernel writes the norms directly
    direct = n_blocks == 1 and sq_norm.is_contiguous()
    partials = sq_norm if direct else torch.empty((batch, n_blocks), dtype=torch.float32, device=z.device)
    with on_device(z.device):  # Triton launches on the current device and its current stream
        kernel[(n_blocks, batch)](
            *latents, master if master is not None else z, partials, *step_args, n, n_blocks, *scalars,
            HAS_MASTER=master is not None, BLOCK=block, num_warps=num_warps, enable_fp_fusion=False,
        )
    if not direct:
        torch.sum(partials, dim=1, out=sq_norm)
