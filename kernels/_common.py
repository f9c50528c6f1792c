"""``@triton.jit`` pieces every fused update kernel shares: the block of a sample it owns, the residual,
the iterate in storage or fp32 master precision, and the per-block partial sum of squares."""

import triton
import triton.language as tl


@triton.jit
def sample_block(n, BLOCK: tl.constexpr):
    """``(block, sample, offs, mask)`` of program ``(pid0, pid1)`` over contiguous ``(B, n)`` buffers."""
    block = tl.program_id(0).to(tl.int64)
    sample = tl.program_id(1).to(tl.int64)
    cols = block * BLOCK + tl.arange(0, BLOCK)
    return block, sample, sample * n + cols, cols < n


@triton.jit
def load_fp32(ptr, offs, mask):
    return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def load_residual(edz_ptr, e_x_ptr, offs, mask):
    """``g = edz - e_x`` in fp32."""
    return load_fp32(edz_ptr, offs, mask) - load_fp32(e_x_ptr, offs, mask)


@triton.jit
def load_iterate(ptr, master_ptr, offs, mask, HAS_MASTER: tl.constexpr):
    """The fp32 master copy when there is one, else the stored value widened to fp32."""
    if HAS_MASTER:
        x = tl.load(master_ptr + offs, mask=mask, other=0.0)
    else:
        x = load_fp32(ptr, offs, mask)
    return x


@triton.jit
def store_iterate(ptr, master_ptr, offs, mask, x, HAS_MASTER: tl.constexpr):
    """``x`` into the master copy (if any) and, rounded to the storage dtype, into ``ptr``."""
    if HAS_MASTER:
        tl.store(master_ptr + offs, x, mask=mask)
    tl.store(ptr + offs, x.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def store_partial(partial_ptr, sample, n_blocks, block, squares):
    """``partial[sample, block] = sum(squares)`` (masked lanes hold zeros)."""
    tl.store(partial_ptr + sample * n_blocks + block, tl.sum(squares, axis=0))
