"""Fused forward step: residual, update and per-block ``sum(g*g)`` in one pass."""

import triton
import triton.language as tl

from ._common import load_iterate, load_residual, sample_block, store_iterate, store_partial


@triton.jit
def fsm_residual_step_kernel(
    edz_ptr, e_x_ptr, z_ptr, master_ptr, partial_ptr, table_ptr, step_ptr,
    n, n_blocks,
    HAS_MASTER: tl.constexpr, BLOCK: tl.constexpr,
):
    """One forward step on block ``pid0`` of sample ``pid1``; grid ``(cdiv(n, BLOCK), B)``.

    Shapes: ``edz``, ``e_x``, ``z`` contiguous ``(B, n)`` in one storage dtype (fp32/fp16/bf16);
    ``master`` fp32 ``(B, n)`` (read only when ``HAS_MASTER``); ``partial`` fp32 ``(B, n_blocks)``;
    ``table`` fp32 ``(steps, 1)``; ``step`` int64 ``(1,)``. With ``rho_k = table[step[0], 0]``, in
    fp32::

        g = edz - e_x
        z = z - g * rho_k
        partial[b, pid0] = sum over the block of g*g

    With ``HAS_MASTER`` the step reads and writes the fp32 ``master`` and ``z`` receives its rounding.
    """
    block, sample, offs, mask = sample_block(n, BLOCK)

    rho_k = tl.load(table_ptr + tl.load(step_ptr))

    g = load_residual(edz_ptr, e_x_ptr, offs, mask)
    z = load_iterate(z_ptr, master_ptr, offs, mask, HAS_MASTER)
    z = z - g * rho_k

    store_iterate(z_ptr, master_ptr, offs, mask, z, HAS_MASTER)
    store_partial(partial_ptr, sample, n_blocks, block, g * g)
