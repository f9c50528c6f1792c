"""The planner's model of which SDPA kernel PyTorch runs (``decinv_fast.sdpa_rules``): PyTorch's own choice
(``torch._fused_sdp_choice``, 0 = math) on the CPU here, and on a GPU where one is present."""

import pytest
import torch

from decinv_fast.sdpa_rules import fused_kernel_takes


def _cases(dtype, device="cpu"):
    """(name, query, key, value, attn_mask, dropout_p): the layouts, head sizes and masks VAEs pass, and the
    ones each gate refuses."""
    def rand(*shape):
        return torch.randn(*shape, dtype=dtype, device=device)

    base = rand(2, 3, 16, 8)
    channels_strided = rand(2, 3, 8, 16).transpose(-1, -2)  # Cosmos: the head dim viewed from channels-first
    inputs = {"contiguous": (base, base, base), "query strided": (channels_strided, base, base),
              "value strided": (base, base, channels_strided), "value head 4": (base, base, rand(2, 3, 16, 4)),
              "head 12": (rand(2, 3, 16, 12),) * 3, "empty query": (base[:, :, :0], base, base),
              "3-D": (base[0], base[0], base[0]), "batch and heads swapped": (base.transpose(0, 1),) * 3}
    ones = torch.ones(16, 16, dtype=torch.bool, device=device)
    masks = {"none": None, "causal bool": ones.tril(), "4-D float": rand(2, 3, 16, 16), "transposed bool": ones.t(),
             "3-D float": rand(3, 16, 16), "strided float": rand(16, 32)[:, ::2]}
    for name, (q, k, v) in inputs.items():
        for mask_name, mask in masks.items():
            for dropout in (0.0, 0.1):
                yield f"{name}, mask {mask_name}, dropout {dropout}", q, k, v, mask, dropout


def _pytorch_fuses(q, k, v, mask, dropout) -> bool:
    return torch._fused_sdp_choice(q, k, v, mask, dropout) != 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_the_cpu_rule_is_pytorchs_choice(dtype):
    wrong = [name for name, q, k, v, mask, dropout in _cases(dtype)
             if fused_kernel_takes(q, k, v, mask, dropout, "cpu") != _pytorch_fuses(q, k, v, mask, dropout)]
    assert not wrong
    # and the grid holds both answers (a rule that always said one thing would fail above)
    answers = {_pytorch_fuses(q, k, v, mask, dropout) for _, q, k, v, mask, dropout in _cases(dtype)}
    assert answers == {True, False}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_gpu_rule_as_pytorchs_gates_read(dtype):
    """On the meta device (no GPU here): the gates of PyTorch's flash and memory-efficient kernels (sm80+)."""
    half = dtype != torch.float32

    def meta(*shape):
        return torch.empty(*shape, dtype=dtype, device="meta")

    sd_attention = meta(1, 1, 4096, 512)  # the SD VAE's one head of 512: memory-efficient (flash stops at 256)
    assert fused_kernel_takes(sd_attention, sd_attention, sd_attention, None, 0.0, "cuda")
    cosmos = meta(16, 1, 512, 14080).transpose(-1, -2)  # Cosmos' spatial attention for a batch of one video
    assert not fused_kernel_takes(cosmos, cosmos, cosmos, None, 0.0, "cuda")
    mask = torch.ones(16, 16, dtype=torch.bool, device="meta")
    # flash: half precision, no mask; memory-efficient: a head of a multiple of 8 in half precision, of 4 in fp32
    head_102, head_100 = meta(2, 1, 16, 102), meta(2, 1, 16, 100)
    assert fused_kernel_takes(head_102, head_102, head_102, None, 0.0, "cuda") == half
    assert not fused_kernel_takes(head_102, head_102, head_102, mask, 0.0, "cuda")
    assert fused_kernel_takes(head_100, head_100, head_100, mask, 0.0, "cuda") == (not half)
    head_8 = meta(2, 1, 16, 8)
    assert fused_kernel_takes(head_8, head_8, head_8, mask, 0.0, "cuda")
    assert not fused_kernel_takes(head_8, head_8, head_8, mask.t(), 0.0, "cuda")  # a mask's last dim strided
    # a 3-D mask for 4-D inputs (HunyuanVideo 1.5's): memory-efficient reads no mask dims; the CPU's flash does
    mask_3d = torch.zeros(1, 16, 16, dtype=dtype, device="meta")
    assert fused_kernel_takes(head_8, head_8, head_8, mask_3d, 0.0, "cuda")
    assert not fused_kernel_takes(head_8, head_8, head_8, mask_3d, 0.0, "cpu")


@pytest.mark.requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_the_gpu_rule_is_pytorchs_choice(dtype):
    wrong = [name for name, q, k, v, mask, dropout in _cases(dtype, "cuda")
             if fused_kernel_takes(q, k, v, mask, dropout, "cuda") != _pytorch_fuses(q, k, v, mask, dropout)]
    assert not wrong
