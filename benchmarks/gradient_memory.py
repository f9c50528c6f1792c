"""Peak memory and time of d loss / d(z_T, text) through N sampling steps: autograd vs AdjointDEIS vs reversible BDIA.

One random-weight ``UNet2DConditionModel`` (SD's layout, tiny widths), SD's DDIM grid, fp32 on the
CPU, one image, loss ``mean((z_0 - target)^2)``. For every N, each method runs forward + loss +
backward for the gradients w.r.t. ``z_T`` and the text embedding:

- ``autograd DDIM`` / ``autograd 2M`` / ``autograd BDIA``: autograd through the unrolled sampler;
- ``AdjointDEIS-1`` / ``AdjointDEIS-2M``, ``recompute`` or ``cache`` states;
- ``reversible BDIA`` (gamma 0.96): exact gradients, states rebuilt backwards.

Recorded per run: the CPU allocator's peak during the call beyond what existed before
(``decinv_fast.memory.cpu_allocator_peak``: weights and inputs excluded), the best wall time of ``repeat`` runs
(the first doubling as warm-up; measured without the profiler), model calls, and the gradient's relative difference
from autograd through the same sampler (DDIM for AdjointDEIS-1, 2M for -2M, BDIA for reversible).

    python -m benchmarks.gradient_memory            # N = 10, 25, 50, 100, 16x16 latents (~5 CPU minutes)
    python -m benchmarks.gradient_memory --quick    # N = 10, 20, 40, 8x8 latents (~1 minute)
    python -m benchmarks.gradient_memory --plot     # only redraw the PNG from the JSON
"""

from __future__ import annotations

import functools
import logging

import torch

from benchmarks import harness
from benchmarks.common import arg_parser, save, sd_ddim_scheduler
from benchmarks.plot import plot_gradient_memory
from decinv_fast.diffusion import (
    Schedule,
    adjoint_sample,
    ei_sample,
    reversible_bdia_sample,
    unrolled_bdia_sample,
)
from decinv_fast.memory import cpu_allocator_peak

BENCHMARK = "gradient_memory"
CONFIGS = {
    "full": dict(steps=(10, 25, 50, 100), size=16, widths=(32, 64), repeat=2),
    "quick": dict(steps=(10, 20, 40), size=8, widths=(16, 32), repeat=1),
}
METHODS = {
    # name: (sampler kind, options, autograd reference method)
    "autograd DDIM": ("autograd", dict(order=1), None),
    "autograd 2M": ("autograd", dict(order=2), None),
    "autograd BDIA": ("autograd-bdia", {}, None),
    "AdjointDEIS-1 recompute": ("adjoint", dict(order=1, states="recompute"), "autograd DDIM"),
    "AdjointDEIS-1 cache": ("adjoint", dict(order=1, states="cache"), "autograd DDIM"),
    "AdjointDEIS-2M recompute": ("adjoint", dict(order=2, states="recompute"), "autograd 2M"),
    "AdjointDEIS-2M cache": ("adjoint", dict(order=2, states="cache"), "autograd 2M"),
    "reversible BDIA": ("reversible", {}, "autograd BDIA"),
}
GAMMA = 0.96
log = logging.getLogger(__name__)


def build(cfg: dict):
    """``(unet, scheduler, z_T, text, target)``: a random-weight conditional UNet and fixed inputs."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=cfg["size"], in_channels=4, out_channels=4, block_out_channels=cfg["widths"], layers_per_block=1,
        norm_num_groups=8, attention_head_dim=8, cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ).eval().requires_grad_(False)
    scheduler = sd_ddim_scheduler()
    gen = torch.Generator().manual_seed(1)
    shape = (1, 4, cfg["size"], cfg["size"])
    z_T, target = torch.randn(shape, generator=gen), 0.5 * torch.randn(shape, generator=gen)
    text = torch.randn(1, 8, 32, generator=gen)
    return unet, scheduler, z_T, text, target


def gradients(method: str, unet, grid: Schedule, z_T, text, target):
    """Forward + loss + backward of one method: ``(grad z_T, grad text)``."""
    kind, options, _ = METHODS[method]
    z = z_T.clone().requires_grad_(True)
    emb = text.clone().requires_grad_(True)
    if kind == "autograd":
        z0 = ei_sample(unet, grid, z, encoder_hidden_states=emb, **options)
    elif kind == "autograd-bdia":
        z0 = unrolled_bdia_sample(unet, grid, z, gamma=GAMMA, encoder_hidden_states=emb).z0
    elif kind == "adjoint":
        z0 = adjoint_sample(unet, grid, z, encoder_hidden_states=emb, **options)
    else:
        z0 = reversible_bdia_sample(unet, grid, z, gamma=GAMMA, encoder_hidden_states=emb).z0
    ((z0 - target) ** 2).mean().backward()
    return z.grad, emb.grad


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def run_one(method: str, unet, grid: Schedule, inputs: tuple, repeat: int):
    """``(grads, peak bytes, best seconds, model calls)`` of one method at one grid.

    The best of ``repeat + 1`` timed runs (the first is also the warm-up), then one profiled run.
    """
    call = functools.partial(gradients, method, unet, grid, *inputs)
    _, seconds = harness.wall(call, repeat=repeat + 1)
    calls = [0]
    hook = unet.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        grads, peak = cpu_allocator_peak(call)
    finally:
        hook.remove()
    return grads, peak, seconds, calls[0]


def measure(cfg: dict, mode: str) -> list[dict]:
    unet, scheduler, z_T, text, target = build(cfg)
    records = []
    for steps in cfg["steps"]:
        grid = Schedule.from_scheduler(scheduler, steps)
        grads = {}
        for method, (_, _, reference) in METHODS.items():
            grads[method], peak, seconds, calls = run_one(method, unet, grid, (z_T, text, target), cfg["repeat"])
            metrics = dict(mode=mode, steps=steps, peak_bytes=peak, seconds=seconds, model_calls=calls,
                           threads=torch.get_num_threads())
            if reference is not None:
                metrics["grad_zT_rel_diff"] = _rel(grads[method][0], grads[reference][0])
                metrics["grad_text_rel_diff"] = _rel(grads[method][1], grads[reference][1])
                metrics["reference"] = reference
            log.info("%s N=%d: %.2f MiB, %.3f s", method, steps, (peak or 0) / 2**20, seconds)
            records.append(harness.record(BENCHMARK, method=method, backend="torch", dtype=torch.float32,
                                          shape=tuple(z_T.shape), device="cpu", metrics=metrics))
    return records


def main(argv: list[str] | None = None) -> list[dict]:
    parser = arg_parser(__doc__, quick="smoke run: N = 10, 20, 40 on 8x8 latents")
    parser.add_argument("--plot", action="store_true", help="only redraw the plot from the saved JSON")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: tiny model)")
    args = parser.parse_args(argv)
    if args.plot:
        plot_gradient_memory()
        return []
    torch.set_num_threads(args.threads)
    mode = "quick" if args.quick else "full"
    records = measure(CONFIGS[mode], mode)
    path = save(BENCHMARK, records, args.quick)
    plot_gradient_memory()
    for r in records:
        m = r["metrics"]
        diff = f"  grad diff vs {m['reference']}: {m['grad_zT_rel_diff']:.1e}" if "reference" in m else ""
        print(f"{r['method']:<26} N={m['steps']:<4} peak {m['peak_bytes'] / 2**20:8.2f} MiB  {m['seconds']:7.3f} s  "
              f"calls {m['model_calls']:4d}{diff}")
    print(f"wrote {path}")
    return records


if __name__ == "__main__":
    main()
