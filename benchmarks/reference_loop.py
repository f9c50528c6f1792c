"""The official code's gradient-free loop, side by side with ``invert``: same results? how much faster? why?

:func:`official_loop` re-implements the control flow of ``decoder_inv_nograd`` in the authors' code
(github.com/smhongok/dec-inv, ``src/stable_diffusion/inverse_stable_diffusion.py``) in its fp32 mode
with Adam and the lr schedule on, written here from reading it:

* every decoder call and every encoder call of a step first makes ``copy.deepcopy(vae).float()``;
* the decoder sees one image at a time (a list comprehension over the batch, then ``torch.cat``);
* Adam is Python-level arithmetic with separate, allocating tensor ops (``m`` and ``v`` start as the
  Python number 0), and the warmup+cosine step size is evaluated in Python at every step;
* ``E(x)`` is computed once with the VAE itself (no copy), everything under ``torch.inference_mode``.

Two deliberate differences, so the results can be compared with ``invert``: the official encoder
call *samples* the posterior by default; here it takes the mode, as ``invert`` does. And the official
code hard-codes SD's scaling 0.18215 (multiplying by its reciprocal to decode); here the VAE's own
``scaling_factor`` / ``shift_factor`` are applied as diffusers pipelines (and ``invert``) apply them.

Each overhead can be switched off on its own (:class:`Overheads`) to attribute the speed ratio.
Timings are interleaved (variant A B C ... repeated) and the best of the repeats is kept.

    python -m benchmarks.reference_loop            # fixture VAE 64x64 and SD-2.1 layout 64x64 (~3-4 CPU minutes)
    python -m benchmarks.reference_loop --quick    # 32x32, 2-3 steps (< 1 minute)
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

import decinv_fast
from benchmarks import harness
from benchmarks.common import VAE_LABELS, arg_parser, interleaved, load_vae, protocol_inputs, run_engine, save
from decinv_fast.loop import Plan, step_table
from decinv_fast.ops import adam_residual_step

BENCHMARK = "reference_loop"
CONFIGS = {
    "full": [dict(vae="fixture", size=64, batch=4, steps=10, repeat=3),
             dict(vae="sd21", size=64, batch=2, steps=3, repeat=2)],
    "quick": [dict(vae="fixture", size=32, batch=2, steps=3, repeat=1),
              dict(vae="sd21", size=32, batch=2, steps=2, repeat=1)],
}
ENGINE = "engine loop"  # invert's iteration object stepped directly: invert minus its wrapper (input checks, result)
BETAS = (0.9, 0.999)
EPS_FP32 = 1e-8
NOTE = ("official control flow re-implemented (fp32 mode, adam, lr schedule on); encoder takes the posterior "
        "mode (official default: a sample) and the VAE's own scaling/shift (official: 0.18215 hard-coded)")


@dataclass(frozen=True)
class Overheads:
    """Which of the official code's costs :func:`official_loop` pays."""

    deepcopy: bool = True  # copy.deepcopy(vae).float() before every decode and every encode call
    per_image: bool = True  # the decoder is called one image at a time
    eager_update: bool = True  # Python-level Adam, separate allocating ops (else: the engine's update op)


VARIANTS = {
    "official": Overheads(),
    "no deepcopy": Overheads(deepcopy=False),
    "batched decode": Overheads(per_image=False),
    "engine update op": Overheads(eager_update=False),
    "none of the three": Overheads(False, False, False),
}


def official_lr(i: int, steps: int, lr: float, last: list[float]) -> float:
    """The official schedule, evaluated per step: warmup over a tenth, cosine until 80% of
    ``min(steps, 100)``, then the last rate held (``last`` carries it between calls)."""
    n_cut = min(steps, 100)
    warmup = n_cut // 10
    if i < 0.8 * n_cut:
        if i < warmup:
            last[0] = (i + 1) / warmup * lr
        else:
            last[0] = lr * (1 + math.cos(math.pi * (i - warmup) / (n_cut - warmup))) / 2
    return last[0]


@torch.inference_mode()
def official_loop(vae, images: torch.Tensor, *, steps: int, lr: float = 0.01,
                  overheads: Overheads | None = None) -> torch.Tensor:
    """Gradient-free Adam with the official code's control flow (every overhead on unless
    ``overheads`` says otherwise); returns the final latents."""
    overheads = overheads or Overheads()
    scaling = float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)

    def fresh_vae():
        return copy.deepcopy(vae).float() if overheads.deepcopy else vae

    def encode_with(module, pixels):
        return ((module.encode(pixels).latent_dist.mode() - shift) * scaling).contiguous()

    def decode(z):
        module, unscaled = fresh_vae(), z / scaling + shift
        if overheads.per_image:
            return torch.cat([module.decode(unscaled[i:i + 1]).sample for i in range(len(z))], dim=0)
        return module.decode(unscaled).sample

    e_x = encode_with(vae, images).float()
    z = e_x.clone()
    b1, b2 = BETAS
    if overheads.eager_update:
        m, v, last_lr = 0, 0, [lr]
    else:  # the update op invert runs, on preallocated buffers, step values read from a device table
        flat = lambda t: t.view(len(t), -1)
        m, v, sq_norm = torch.zeros_like(z), torch.zeros_like(z), torch.zeros(len(z))
        table = step_table(Plan("adam", steps, lr, "paper", {}, "auto", len(z)), z.device)
        counter = torch.zeros(1, dtype=torch.int64)
    for i in range(steps):
        edz = encode_with(fresh_vae(), decode(z))
        if overheads.eager_update:
            g = edz - e_x
            lr_now = official_lr(i, steps, lr, last_lr)
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * (g**2)
            m_hat = m / (1 - b1 ** (i + 1))
            v_hat = v / (1 - b2 ** (i + 1))
            z -= lr_now * m_hat / (torch.sqrt(v_hat) + EPS_FP32)
        else:
            adam_residual_step(flat(edz), flat(e_x), flat(z), flat(m), flat(v), sq_norm, table, counter,
                               eps=EPS_FP32, betas=BETAS)
            counter += 1
    return z


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def compare(cfg: dict, vae) -> list[dict]:
    """Batch of 1: are ``official_loop`` and ``invert`` bit-identical? Then the batch of ``cfg['batch']``:
    every variant timed (interleaved, best of ``repeat``) and compared with ``invert``'s latents."""
    steps = cfg["steps"]
    shape_of = lambda x: tuple(x.shape)
    one = protocol_inputs(cfg, vae, 1)
    z_official = official_loop(vae, one, steps=steps)
    z_invert = decinv_fast.invert(vae, one, steps=steps).latents
    same = dict(max_abs_diff=max_abs(z_official, z_invert), bit_identical=bool(torch.equal(z_official, z_invert)))
    print(f"[{cfg['vae']}] batch 1, {steps} steps: official vs invert max |dz| = {same['max_abs_diff']:.3g}, "
          f"bit-identical: {same['bit_identical']}")
    records = [harness.record(BENCHMARK, method="official vs invert (batch 1)", backend="torch", dtype=torch.float32,
                              shape=shape_of(one), device="cpu",
                              metrics=dict(vae=VAE_LABELS[cfg["vae"]], steps=steps, note=NOTE, **same))]

    x = protocol_inputs(cfg, vae, cfg["batch"])
    official_loop(vae, x, steps=1, overheads=Overheads(deepcopy=False))  # warm-up: per-image and batched shapes
    decinv_fast.invert(vae, x, steps=1)
    outputs: dict[str, torch.Tensor] = {}

    def engine_loop() -> torch.Tensor:
        return run_engine(vae, x, steps)

    def runner(name: str):
        if name == "invert":
            return lambda: outputs.__setitem__(name, decinv_fast.invert(vae, x, steps=steps,
                                                                       measure_memory=False).latents)
        if name == ENGINE:
            return lambda: outputs.__setitem__(name, engine_loop())
        return lambda: outputs.__setitem__(name, official_loop(vae, x, steps=steps, overheads=VARIANTS[name]))

    names = [*VARIANTS, ENGINE, "invert"]
    times = interleaved({n: runner(n) for n in names}, repeat=cfg["repeat"], warmup=0)
    best = {n: min(t) for n, t in times.items()}
    _, deepcopy_seconds = harness.wall(lambda: copy.deepcopy(vae).float(), repeat=3)
    gap = best["official"] - best["invert"]
    print(f"[{cfg['vae']}] batch {cfg['batch']}, {cfg['size']}x{cfg['size']}, {steps} steps, best of {cfg['repeat']}:")
    for n in names:
        saved = best["official"] - best[n]
        share = saved / gap if n in VARIANTS and n != "official" and gap > 0 else None
        metrics = dict(vae=VAE_LABELS[cfg["vae"]], steps=steps, repeat=cfg["repeat"], seconds=best[n],
                       seconds_all=times[n], seconds_per_step=best[n] / steps,
                       speedup_vs_official=best["official"] / best[n], seconds_saved_vs_official=saved,
                       share_of_official_invert_gap=share,
                       max_abs_diff_vs_invert=max_abs(outputs[n], outputs["invert"]),
                       overheads=VARIANTS[n].__dict__ if n in VARIANTS else None, note=NOTE)
        records.append(harness.record(BENCHMARK, method=n, backend="torch", dtype=torch.float32,
                                      shape=shape_of(x), device="cpu", metrics=metrics))
        share_text = "" if share is None else f", {100 * share:.0f}% of the official-invert gap"
        print(f"  {n:<18}{best[n]:>8.2f} s  ({best['official'] / best[n]:.2f}x vs official{share_text}); "
              f"max |dz| vs invert {metrics['max_abs_diff_vs_invert']:.3g}")
    ratio = best["official"] / best["invert"]
    summary = dict(vae=VAE_LABELS[cfg["vae"]], steps=steps, speed_ratio_official_over_invert=ratio,
                   deepcopy_seconds=deepcopy_seconds, deepcopies_per_step=2,
                   decoder_calls_per_step_official=cfg["batch"], note=NOTE)
    records.append(harness.record(BENCHMARK, method="summary", backend="torch", dtype=torch.float32,
                                  shape=shape_of(x), device="cpu", metrics=summary))
    print(f"  speed ratio official / invert: {ratio:.2f}x; one deepcopy(vae).float() = {deepcopy_seconds:.3f} s "
          f"(2 per step)")
    return records


def main(argv: list[str] | None = None) -> list[dict]:
    parser = arg_parser(__doc__, quick="smoke run: 32x32 images, 2-3 steps")
    args = parser.parse_args(argv)
    records = []
    for cfg in CONFIGS["quick" if args.quick else "full"]:
        records += compare(cfg, load_vae(cfg["vae"]))
    path = save(BENCHMARK, records, args.quick)
    print(f"wrote {len(records)} records to {path}")
    return records


if __name__ == "__main__":
    main()
