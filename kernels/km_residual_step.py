"""Fused inertial Krasnoselskii-Mann step: residual, update, extrapolation and per-block ``sum(g*g)``."""

import triton
import triton.language as tl

from ._common import load_fp32, load_iterate, load_residual, sample_block, store_iterate, store_partial


@triton.jit
def km_residual_step_kernel(
    edz_ptr, e_x_ptr, y_ptr, z_ptr, master_ptr, partial_ptr, table_ptr, step_ptr,
    n, n_blocks, alpha,
    HAS_MASTER: tl.constexpr, BLOCK: tl.constexpr,
):
    """One inertial KM step on block ``pid0`` of sample ``pid1``; grid ``(cdiv(n, BLOCK), B)``.

    Shapes: ``edz``, ``e_x``, ``y``, ``z`` contiguous ``(B, n)`` in one storage dtype
    (fp32/fp16/bf16); ``master`` fp32 ``(B, n)`` (read only when ``HAS_MASTER``); ``partial`` fp32
    ``(B, n_blocks)``; ``table`` fp32 ``(steps, 1)``; ``step`` int64 ``(1,)``. ``y`` is the point
    ``edz = E(D(y))`` was evaluated at (``master`` its fp32 copy when ``HAS_MASTER``, which the update
    reads instead of ``y``), ``z`` the iterate ``z_k``. With ``rho_k = table[step[0], 0]``, in fp32::

        g = edz - e_x
        z_new = y - g * rho_k
        y = (z_new - z_k) * alpha + z_new        (the next evaluation point; also into master)
        z = z_new
        partial[b, pid0] = sum over the block of g*g
    """
    block, sample, offs, mask = sample_block(n, BLOCK)

    rho_k = tl.load(table_ptr + tl.load(step_ptr))

    g = load_residual(edz_ptr, e_x_ptr, offs, mask)
    z_k = load_fp32(z_ptr, offs, mask)
    y = load_iterate(y_ptr, master_ptr, offs, mask, HAS_MASTER)

    z_new = y - g * rho_k
    y = (z_new - z_k) * alpha + z_new

    store_iterate(y_ptr, master_ptr, offs, mask, y, HAS_MASTER)
    tl.store(z_ptr + offs, z_new.to(z_ptr.dtype.element_ty), mask=mask)
    store_partial(partial_ptr, sample, n_blocks, block, g * g)
