"""Helpers shared by the benchmark scripts: the two VAEs, the engine's iteration without ``invert``'s
wrapper, interleaved best-of-N timing, and small formatting helpers.

Measurements only: nothing here asserts.
"""

from __future__ import annotations

import argparse
import logging
import warnings
from collections.abc import Callable

import torch

from benchmarks import harness

# The Stable Diffusion 2.1 VAE's layer layout (diffusers AutoencoderKL config of
# stabilityai/stable-diffusion-2-1 "vae"): 4 down/up blocks of widths 128-256-512-512, 2 resnets per
# block, mid-block attention, 4 latent channels, 8x downsampling. Weights are random (seeded).
SD21_ARCH = dict(
    in_channels=3, out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, norm_num_groups=32,
    sample_size=768, scaling_factor=0.18215,
)
VAE_LABELS = {
    "fixture": "fixture VAE (bundled, trained; SD-2.1 layout at 1/4-1/5 width, 1/35 of its parameters)",
    "sd21": "SD-2.1 VAE layout, random weights (seed 0)",
}


def arg_parser(doc: str, quick: str | None = None) -> argparse.ArgumentParser:
    """The command line every benchmark script starts from: ``doc``'s first line (the module docstring)
    as its description and, when ``quick`` is given, the ``--quick`` smoke-run flag with ``quick`` as its
    help. Each script adds only its own flags."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    if quick is not None:
        parser.add_argument("--quick", action="store_true", help=quick)
    return parser


def start_run(configs: dict, doc: str, argv: list[str] | None, parser: argparse.ArgumentParser | None = None):
    """A benchmark's start: parse ``--quick`` (and ``parser``'s own flags), silence the libraries, use 2
    threads. Returns the config (``configs["quick"]`` or ``configs["full"]``) and the parsed arguments."""
    args = (parser or arg_parser(doc, "smoke run: its numbers only check the code")).parse_args(argv)
    quiet()
    torch.set_num_threads(2)
    return configs["quick" if args.quick else "full"], args


def replace_predictions(benchmark: str, is_prediction, new: list[dict]) -> list[dict]:
    """The saved full run's records with its planner predictions (``is_prediction(record)``) replaced by
    ``new``: after a planner change, the measured records stay as they were measured."""
    kept = [r for r in harness.load(benchmark) if not is_prediction(r)]
    if not kept:
        raise SystemExit(f"no saved results of {benchmark} to keep: run it in full first")
    return kept + new


def quiet() -> None:
    """Silence diffusers' and torch's chatter (accelerate hints, FutureWarnings) in benchmark output."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch.utils.cpp_extension")


def sd21_vae(seed: int = 0):
    """A diffusers ``AutoencoderKL`` with the SD-2.1 VAE layout and seeded random weights (fp32, eval)."""
    from diffusers import AutoencoderKL

    quiet()
    torch.manual_seed(seed)
    return AutoencoderKL(**SD21_ARCH).eval().requires_grad_(False)


def load_vae(name: str):
    """``"fixture"`` (the bundled trained VAE) or ``"sd21"`` (SD-2.1 layout, random weights)."""
    quiet()
    if name == "fixture":
        import decinv_fast

        return decinv_fast.load_fixture_vae()
    if name == "sd21":
        return sd21_vae()
    raise ValueError(f"unknown VAE {name!r}; expected 'fixture' or 'sd21'")


def sd_ddim_scheduler():
    """A ``DDIMScheduler`` with Stable Diffusion's configuration (scaled-linear betas, no clipping)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def random_images(shape, seed: int = 0) -> torch.Tensor:
    """Uniform pixels in [-1, 1] (for the random-weight VAE, where content does not matter)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=gen) * 2 - 1


def engine_iteration(vae, images: torch.Tensor, *, method: str = "adam", steps: int = 50, chunk: int | None = None,
                     schedule: str = "paper"):
    """The iteration object ``invert`` builds for these arguments (its ``run_step`` is one inversion step),
    without ``invert``'s wrapper (attention switch, peak-memory profiler, result)."""
    from decinv_fast.api import prepare_run
    from decinv_fast.loop import make_iteration

    return make_iteration(*prepare_run(vae, images, method=method, steps=steps, schedule=schedule, chunk_frames=chunk))


def run_engine(vae, images: torch.Tensor, steps: int) -> torch.Tensor:
    """``steps`` engine steps of a fresh :func:`engine_iteration`: the inversion loop without ``invert``'s
    wrapper; returns the latents."""
    with torch.no_grad():
        iteration = engine_iteration(vae, images, steps=steps)
        for _ in range(steps):
            iteration.run_step()
    return iteration.latents


def protocol_inputs(cfg: dict, vae, batch: int) -> torch.Tensor:
    """``batch`` images for ``cfg["vae"]`` at ``cfg["size"]``: for the fixture, 8-bit decoded held-out
    crops (the paper's protocol, contiguous); uniform noise for the random-weight SD layout."""
    if cfg["vae"] == "fixture":
        from decinv_fast.protocol import make_target
        from decinv_fast.testbed import heldout_crops

        return make_target(vae, heldout_crops(cfg["size"], batch)).images
    return random_images((batch, 3, cfg["size"], cfg["size"]))


def resolved_backend(method: str, latents: torch.Tensor) -> str:
    """The update backend ``backend="auto"`` runs for these latents (``torch.optim.Adam`` for ``grad``)."""
    if method == "grad":
        return "torch.optim.Adam"
    from decinv_fast._dispatch import resolve_backend

    return resolve_backend(f"{method}_residual_step", latents, "auto")


def interleaved(fns: dict[str, Callable[[], object]], repeat: int, warmup: int = 1,
                device: str = "cpu") -> dict[str, list[float]]:
    """Wall seconds of every function, run round-robin (A B C A B C ...) ``repeat`` times after
    ``warmup`` untimed rounds, so that a change in machine load hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    for _ in range(repeat):
        for name, fn in fns.items():
            times[name].append(harness.wall(fn, device)[1])
    return times


def save(benchmark: str, records: list[dict], quick: bool):
    """Tag every record with the run mode (``"quick"`` smoke run or ``"full"``) and save them: a full
    run to ``results/<benchmark>.json`` (what the plots and the README report read), a smoke run to
    ``results/<benchmark>_quick.json``, so that checking the code never replaces measured results."""
    for r in records:
        r["metrics"]["mode"] = "quick" if quick else "full"
    return harness.save(benchmark + ("_quick" if quick else ""), records)
