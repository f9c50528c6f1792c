"""Fused inertial Krasnoselskii-Mann step: residual, update, extrapolation and per-block ``sum(g*g)``."""

import triton
import triton.language as tl


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
    block = tl.program_id(0).to(tl.int64)
    sample = tl.program_id(1).to(tl.int64)
    cols = block * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n
    offs = sample * n + cols

    rho_k = tl.load(table_ptr + tl.load(step_ptr))

    edz = tl.load(edz_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    e_x = tl.load(e_x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z_k = tl.load(z_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_MASTER:
        y = tl.load(master_ptr + offs, mask=mask, other=0.0)
    else:
        y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)

    g = edz - e_x
    z_new = y - g * rho_k
    y = (z_new - z_k) * alpha + z_new

    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
    if HAS_MASTER:
        tl.store(master_ptr + offs, y, mask=mask)
    tl.store(z_ptr + offs, z_new.to(z_ptr.dtype.element_ty), mask=mask)
    tl.store(partial_ptr + sample * n_blocks + block, tl.sum(g * g, axis=0))
