"""Fused forward step: residual, update and per-block ``sum(g*g)`` in one pass."""

import triton
import triton.language as tl


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
    block = tl.program_id(0).to(tl.int64)
    sample = tl.program_id(1).to(tl.int64)
    cols = block * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n
    offs = sample * n + cols

    rho_k = tl.load(table_ptr + tl.load(step_ptr))

    edz = tl.load(edz_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    e_x = tl.load(e_x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_MASTER:
        z = tl.load(master_ptr + offs, mask=mask, other=0.0)
    else:
        z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)

    g = edz - e_x
    z = z - g * rho_k

    if HAS_MASTER:
        tl.store(master_ptr + offs, z, mask=mask)
    tl.store(z_ptr + offs, z.to(z_ptr.dtype.element_ty), mask=mask)
    tl.store(partial_ptr + sample * n_blocks + block, tl.sum(g * g, axis=0))
