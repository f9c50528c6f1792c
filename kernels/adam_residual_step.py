"""Fused gradient-free Adam step: residual, moments, update and per-block ``sum(g*g)`` in one pass."""

import triton
import triton.language as tl

from ._common import load_fp32, load_iterate, load_residual, sample_block, store_iterate, store_partial


@triton.jit
def adam_residual_step_kernel(
    edz_ptr, e_x_ptr, z_ptr, m_ptr, v_ptr, master_ptr, partial_ptr, table_ptr, step_ptr,
    n, n_blocks, b1, one_minus_b1, b2, one_minus_b2, eps,
    HAS_MASTER: tl.constexpr, BLOCK: tl.constexpr,
):
    """One Adam step on block ``pid0`` of sample ``pid1``; grid ``(cdiv(n, BLOCK), B)``.

    Shapes: ``edz``, ``e_x``, ``z``, ``m``, ``v`` contiguous ``(B, n)`` in one storage dtype
    (fp32/fp16/bf16); ``master`` fp32 ``(B, n)`` (read only when ``HAS_MASTER``); ``partial`` fp32
    ``(B, n_blocks)``; ``table`` fp32 ``(steps, 3)``; ``step`` int64 ``(1,)``. With ``k = step[0]``
    and ``(lr_k, c1_k, c2_k) = table[k]`` (``c1_k = 1 - b1^(k+1)``, ``c2_k = 1 - b2^(k+1)``), all
    in fp32 and in the reference's order of operations::

        g = edz - e_x
        m = b1*m + (1-b1)*g                  (two products, then the sum)
        v = b2*v + (1-b2)*(g*g)
        z = z - (lr_k * (m / c1_k)) / (sqrt(v / c2_k) + eps)
        partial[b, pid0] = sum over the block of g*g

    ``one_minus_b1`` / ``one_minus_b2`` are ``1 - b1`` / ``1 - b2`` computed on the host in double,
    as the reference's Python arithmetic does. Division and square root are IEEE round-to-nearest
    (``div_rn`` / ``sqrt_rn``). With ``HAS_MASTER`` the update reads and writes the fp32 ``master``
    and ``z`` receives its rounding; ``m`` and ``v`` are always stored in the storage dtype.
    """
    block, sample, offs, mask = sample_block(n, BLOCK)

    row = table_ptr + tl.load(step_ptr) * 3
    lr_k = tl.load(row)
    c1_k = tl.load(row + 1)
    c2_k = tl.load(row + 2)

    g = load_residual(edz_ptr, e_x_ptr, offs, mask)
    m = load_fp32(m_ptr, offs, mask)
    v = load_fp32(v_ptr, offs, mask)
    z = load_iterate(z_ptr, master_ptr, offs, mask, HAS_MASTER)

    g2 = g * g
    m = b1 * m + one_minus_b1 * g
    v = b2 * v + one_minus_b2 * g2
    m_hat = tl.div_rn(m, c1_k)
    v_hat = tl.div_rn(v, c2_k)
    z = z - tl.div_rn(lr_k * m_hat, tl.sqrt_rn(v_hat) + eps)

    tl.store(m_ptr + offs, m.to(m_ptr.dtype.element_ty), mask=mask)
    tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=mask)
    store_iterate(z_ptr, master_ptr, offs, mask, z, HAS_MASTER)
    store_partial(partial_ptr, sample, n_blocks, block, g2)
