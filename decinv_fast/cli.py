"""Command line: ``decinv invert ...`` and ``decinv demo`` (also ``python -m decinv_fast``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors import SafetensorError

from .adapters import IMAGE_VAE_KINDS, VIDEO_VAE_KINDS, as_adapter, config_image_channels
from .attention import ATTENTION
from .cli_args import (
    check_option_names,
    chunk_arg,
    count_arg,
    device_arg,
    lr_arg,
    method_options,
    option_arg,
    positive_arg,
    spelled_out_auto,
    spelled_value,
)
from .cli_io import UsageError, check_outputs, read_input
from .options import AUTO, METHODS, auto_overrides
from .reference import SCHEDULES

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
VAE_CLASSES = (*IMAGE_VAE_KINDS, *VIDEO_VAE_KINDS)


def load_vae(spec: str, dtype: torch.dtype, device: str):
    """``fixture`` or a diffusers VAE folder (or a pipeline folder with a ``vae/`` subfolder)."""
    from .fixture import load_fixture_vae

    if spec == "fixture":
        return load_fixture_vae(dtype, device)
    path, config = _vae_config(spec)
    name = config.get("_class_name")
    import diffusers

    vae = getattr(diffusers, name).from_pretrained(path, torch_dtype=dtype, local_files_only=True,
                                              low_cpu_mem_usage=False)  # no notice to install accelerate
    return vae.to(device).eval().requires_grad_(False)


def _vae_config(spec: str) -> tuple[Path, dict]:
    """A VAE folder's path (a pipeline folder's ``vae/``) and its config, of a class ``invert`` takes."""
    path = Path(spec)
    if (path / "vae" / "config.json").is_file():
        path = path / "vae"
    if not (path / "config.json").is_file():
        raise UsageError(f"--vae {spec}: no config.json there (give a diffusers VAE folder or 'fixture')")
    try:
        config = json.loads((path / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"--vae {spec}: {path / 'config.json'} is not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise UsageError(f"--vae {spec}: {path / 'config.json'} is not a JSON object (a diffusers config)")
    if config.get("_class_name") not in VAE_CLASSES:
        raise UsageError(f"--vae {spec}: class {config.get('_class_name')!r} is not one of {VAE_CLASSES}")
    return path, config


def image_channels(spec: str) -> int:
    """The channels of the images ``--vae`` takes, from its config (the input is read before the weights
    load): 4 for a VAE of RGBA images (Qwen-Image 2.1's), else 3."""
    if spec == "fixture":
        return 3
    config = _vae_config(spec)[1]  # read as the adapter reads it (a dict for its config's attributes)
    return config_image_channels(SimpleNamespace(**config), config["_class_name"]) or 3


# the API's argument spellings in its errors, as the command line spells them (``--method auto``)
FLAG_NAMES = (
    (r"\boptimizer='lbfgs'", "--lbfgs"),
    (r"\blr='auto' \(rho='auto'\)", "--lr auto"),
    (r"\bmethod='(\w+)'", r"--method \1"),
    (r"\bcuda_graphs=True", "--cuda-graphs"),
    (r"\bcompile=True", "--compile"),
    (r"^compile works", "--compile works"),
    (r"^compile must be True, False or a torch\.compile backend", "--compile-backend must name a torch.compile "
     "backend"),
    (r"\bkeep_best=True", "--keep-best"),
    (r"\(keep_best\)", "(--keep-best)"),
    (r"\battention='([\w-]+)'", r"--attention \1"),
    (r"\bchunk_frames=(\d+)", r"--chunk-frames \1"),
    (r"^decode_timestep:", "--decode-timestep:"),
    (r"^steps=(\d+):", r"--steps \1:"),
    (r"only as \(1, F, 3, H, W\) or \[frames\] \(a list of lists of PIL frames\)", "with --as-video (the folder "
     "read as one video)"),
    (r"\bdtype=torch\.(\w+)", r"--dtype \1"),
    (r"\blr=(\d[\w.+-]*)", r"--lr \1"),
    (r"\ba smaller lr\b", "a smaller --lr"),
)


def flag_names(message: str) -> str:
    """An API error's message with the flags for the arguments it names."""
    for pattern, flag in FLAG_NAMES:
        message = re.sub(pattern, flag, message)
    return message


@contextlib.contextmanager
def _flag_names(source: str | None = None):
    """Errors of the API called inside, reworded with the command line's flags (one line, as any); with
    ``source``, the input path, an error about the API's ``images`` names it instead."""
    try:
        yield
    except FloatingPointError as exc:  # a diverged run
        raise FloatingPointError(flag_names(str(exc))) from exc
    except (ValueError, TypeError) as exc:
        message = flag_names(str(exc))
        if source is not None:
            message = re.sub(r"^images:", lambda _: f"{source}:", message)
        raise UsageError(message) from exc


def cmd_invert(args) -> int:
    from safetensors.torch import save_file

    from . import api

    dtype = DTYPES[args.dtype]
    if args.lbfgs and args.method != "grad":
        raise UsageError(f"--lbfgs is grad's optimizer (use it with --method grad), not {args.method}'s")
    given = method_options(args.option)
    _check_auto(args, given)
    check_option_names(args.method, given)
    check_outputs(args.out, args.png, args.input)  # before the input is read and the VAE loaded
    images, files = read_input(Path(args.input), image_channels(args.vae), as_video=args.as_video)
    vae = load_vae(args.vae, dtype, args.device)
    if args.decode_timestep is not None:  # LTX-Video 0.9.1+ / LTX-2: the decode timestep of the pipeline's run
        with _flag_names():
            vae = as_adapter(vae, decode_timestep=args.decode_timestep)
    # auto takes no method options: its own clip_aware (options.AUTO) is what it runs with
    auto = args.method == "auto"
    clip_aware = AUTO["options"]["clip_aware"] if auto else args.clip_aware
    options = {} if auto else dict(given, clip_aware=clip_aware)
    if args.lbfgs:
        options["optimizer"] = "lbfgs"
    compile = args.compile_backend or args.compile  # a backend name, True (inductor) or False
    with _flag_names(args.input):
        result = api.invert(vae, images, method=args.method, steps=args.steps, lr=args.lr, schedule=args.schedule,
                            dtype=dtype, progress=_progress(args), chunk_frames=args.chunk_frames, tol=args.tol,
                            patience=args.patience, keep_best=args.keep_best or None, attention=args.attention,
                            cuda_graphs=args.cuda_graphs, compile=compile, **options)
    latents = result.latents.detach().contiguous().cpu()
    video = images.ndim == 5
    if video:  # a video file: its (F, C, h, w) latents, a video VAE's (C, f, h, w)
        latents = latents[0]
    meta = _metadata(args, result, given=given, clip_aware=clip_aware, compile=compile, files=files,
                     layout=_layout(videos := as_adapter(vae).encodes_videos, video, files is not None and not video))
    try:
        save_file({"latents": latents}, args.out, metadata=meta)
    except (OSError, SafetensorError) as exc:
        raise UsageError(f"--out {args.out}: cannot write it ({exc})") from exc
    print(f"wrote {args.out}: latents {tuple(latents.shape)} {latents.dtype}, residual "
          f"{float(result.residuals[0]):.4g} -> {float(result.residuals[-1]):.4g} in {result.seconds:.1f} s")
    if args.png:
        _write_panel(args.png, vae, images, result, dtype, videos)
    return 0


def _check_auto(args, given: dict) -> None:
    """``--method auto`` with a step size, schedule or method option: refused (as ``invert`` refuses them), with
    the flags of the anderson run it is, those settings replaced."""
    if args.method != "auto":
        return
    asked = auto_overrides(args.lr, args.schedule, options=given)  # what invert would refuse (--keep-best is auto's)
    if not asked:
        return
    got = " ".join(f"--{name} {value}" if name in ("lr", "schedule") else f"--option {name}={spelled_value(value)}"
                   for name, value in asked.items())
    patience = {} if args.patience is None else {"patience": args.patience}
    raise UsageError(f"--method auto chooses its own step size, schedule and options (got {got}); to change some "
                     f"of them, run the anderson method it is: {spelled_out_auto(dict(asked, **patience))}")


def _layout(videos: bool, video: bool, folder: bool) -> str:
    """The saved latents' dimensions: a video VAE's latents keep their latent frames after the channels."""
    if videos:
        return "batch,C,f,h,w" if folder else "C,f,h,w"
    return "frames,C,h,w" if video else "batch,C,h,w" if folder else "C,h,w"


def _metadata(args, result, *, given: dict, clip_aware: bool, compile, files: list[str] | None,
              layout: str) -> dict:
    """The ``.safetensors`` metadata (strings): what was asked and what ran (see the README)."""
    history, returned = result.residual_history, result.returned_step.tolist()
    # the returned iterate's residual where a step evaluated it (keep_best, auto, tol); "-" where it is
    # the last update's result, which no step evaluated
    at_returned = [f"{float(history[k, i]):.6g}" if k < result.steps_run else "-" for i, k in enumerate(returned)]
    meta = {"method": args.method, "steps": str(result.steps_run), "max_steps": str(args.steps),
            "lr": str(result.lr), "secant_lr": "-" if result.secant_lr is None else  # one per sample (--lr auto)
            ",".join(f"{float(v):.6g}" for v in result.secant_lr),
            "dtype": str(result.dtype).removeprefix("torch."), "device": str(result.latents.device),
            "backend": result.backend, "vae": args.vae, "clip_aware": str(clip_aware), "source": str(args.input),
            "layout": layout, "optimizer": "lbfgs" if args.lbfgs else ("adam" if args.method == "grad" else "none"),
            "last_step_residual": f"{float(result.residuals[-1]):.6g}", "returned_residual": ",".join(at_returned),
            "tol": str(args.tol), "keep_best": str(result.keep_best), "patience": str(result.patience),
            "chunk_frames": str(args.chunk_frames), "chunk": str(result.chunk_frames), "attention": args.attention,
            "compile": str(compile), "cuda_graphs": str(args.cuda_graphs), "decode_timestep": str(args.decode_timestep),
            "returned_step": ",".join(str(k) for k in returned),  # one per sample
            "stop_reason": ",".join(result.stop_reason), "schedule": str(args.schedule),
            "options": json.dumps(given), "first_frame_steps": "-" if result.first_frame_steps is None else
            ",".join(str(int(k)) for k in result.first_frame_steps),  # per video, where its first frame ran alone
            "second_frame_steps": str(result.second_frame_steps or "-")}
    if files is not None:
        meta["files"] = json.dumps(files)  # a folder: its file names in batch order
    return meta


def _write_panel(png: str, vae, images, result, dtype, videos: bool) -> None:
    """The ``--png`` panel of the first image (or frame): input, reconstructions and their errors;
    ``videos``: the VAE encodes whole videos."""
    from . import api
    from .inputs import to_frames
    from .visual import error_image, over_white, panel

    frames = to_frames(images, device=result.latents.device, dtype=dtype, spatial_factor=None, channels=None)
    first = frames.pixels[:1]
    if videos:  # its latents are of whole videos: decode the first video, show its first frame
        z_enc = api.encode(vae, frames.pixels[None, :frames.frames_per_video])
        z_inv = result.latents.reshape(-1, *result.latents.shape[-4:])[:1]
    else:
        z_enc = api.encode(vae, first)
        z_inv = result.latents.reshape(-1, *result.latents.shape[-3:])[:1]
    enc_rec, inv_rec = (api.decode(vae, z).reshape(-1, *first.shape[1:])[0] for z in (z_enc, z_inv))
    if first.shape[1] == 4:  # RGBA: shown (and compared) over white
        first, enc_rec, inv_rec = over_white(first), over_white(enc_rec), over_white(inv_rec)
    panel({"input": first[0], "encoder decoded": enc_rec, "inverted decoded": inv_rec,
           "error x10 (encoder)": error_image(enc_rec, first[0]),
           "error x10 (inverted)": error_image(inv_rec, first[0])}).save(png)
    print(f"wrote {png}")


def _progress(args) -> bool:
    """A progress bar unless ``--quiet``, and only on a terminal (no redraw spam in logs)."""
    return not args.quiet and sys.stderr.isatty()


def _say(line: str) -> None:
    print(f"decinv demo: {line}", file=sys.stderr, flush=True)


def cmd_demo(args) -> int:
    from .demo import format_table, run_demo

    try:
        log = None if args.quiet or _progress(args) else _say  # no progress bar (a log): a line a row
        rows = run_demo(args.out, steps=args.steps, frames=args.frames, progress=_progress(args), log=log)
    except ImportError as exc:  # the demo extra missing: one line, as for the video extra
        raise UsageError(str(exc)) from exc
    print(format_table(rows))
    print(f"wrote {Path(args.out) / 'panel.png'} and {Path(args.out) / 'convergence.png'}")
    return 0


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default, but not "(default: None)": where None stands for "not
    given", the option's help says what that means."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="decinv", description="Gradient-free decoder inversion for latent diffusion")
    sub = p.add_subparsers(dest="command", required=True)
    defaults = _DefaultsFormatter
    inv = sub.add_parser("invert", help="invert an image, a folder of images or a video", formatter_class=defaults)
    inv.add_argument("input", help="image file, folder of images (a batch, in natural order of the names: 2.png "
                     "before 10.png; with --as-video one video), or video (GIF, animated WebP or PNG; .mp4 etc. with "
                     "the video extra)")
    inv.add_argument("--as-video", action="store_true",
                     help="read the input folder as the frames of one video, in that order, not a batch of images")
    inv.add_argument("--vae", default="fixture", help="diffusers VAE (or pipeline) folder, or 'fixture'")
    inv.add_argument("--steps", type=count_arg, default=50, help="iterations at most (every method)")
    inv.add_argument("--method", default="adam", choices=METHODS,
                     help="adam: the paper's; auto: faster and stops on its own (README: Beyond the paper)")
    inv.add_argument("--lr", type=lr_arg, default=None,
                     help="step size, or 'auto' for fsm, km, anderson (default: the method's: 0.01 for adam and grad, "
                     "1 for fsm, km, anderson)")
    inv.add_argument("--schedule", default=None, choices=SCHEDULES,
                     help="the step size's schedule (default: paper; auto runs its own, constant)")
    inv.add_argument("--option", type=option_arg, action="append", metavar="NAME=VALUE",
                     help="a method option, as invert takes it (repeatable): memory=8 (anderson; grad --lbfgs), "
                     "mixing=pixel, safeguard=false, frame_weights=true (anderson); mean_gain=3, mean_gain_clipped=1 "
                     "(fsm, km, anderson); alpha=0.5 (km); eps=1e-8, betas=0.9,0.999 (adam); residual_blur=1, "
                     "first_frame_steps=18, first_frame_join=4, second_frame_steps=3 (all but grad), "
                     "first_frame_gain=1.5 (fsm, km, anderson)")
    inv.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                     help="the VAE is loaded and run in it, whatever its files hold")
    inv.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu",
                     help="cpu, cuda or cuda:N")
    inv.add_argument("--chunk-frames", type=chunk_arg, default=None,
                     help="frames per encoder/decoder call, or 'auto' (the largest the free memory holds) "
                     "(default: all at once)")
    stop = inv.add_argument_group(f"stopping (every method; auto stops on its own: keeps its best, patience "
                                  f"{AUTO['patience']})")
    stop.add_argument("--keep-best", action="store_true",
                      help="return each sample's iterate with the lowest pixel error, not the last one")
    stop.add_argument("--patience", type=count_arg, default=None,
                      help="stop a sample after this many steps without a lower pixel error (default: never)")
    stop.add_argument("--tol", type=positive_arg, default=None,
                      help="stop a sample once its relative residual is below TOL (default: never)")
    fast = inv.add_argument_group("speed and memory (GPU)")
    fast.add_argument("--attention", default="auto", choices=ATTENTION,
                      help="VAE attention for the call (auto: the VAE's own, plain math replaced by SDPA)")
    fast.add_argument("--cuda-graphs", action="store_true",
                      help="capture one step as a CUDA graph (adam, fsm, km at a fixed step size)")
    fast.add_argument("--compile", action="store_true", help="torch.compile the decoder+encoder pass (inductor)")
    fast.add_argument("--compile-backend", default=None, metavar="NAME",
                      help="torch.compile it with this backend instead (implies --compile)")
    inv.add_argument("--decode-timestep", type=float, default=None, metavar="T",
                     help="the decode_timestep the LTX pipeline decoded with (a decoder with timestep conditioning)")
    inv.add_argument("--clip-aware", action="store_true",
                     help="take pixels at 0 and 255 as clipped by the generator's pipeline (always on with auto)")
    inv.add_argument("--lbfgs", action="store_true",
                     help="with --method grad: L-BFGS with a line search instead of the paper's Adam")
    inv.add_argument("--out", default="latents.safetensors", help="the latents (safetensors, with metadata)")
    inv.add_argument("--png", default=None, help="also write a panel: input, reconstructions, errors")
    inv.add_argument("--quiet", action="store_true", help="no progress bar")
    inv.set_defaults(func=cmd_invert)
    demo = sub.add_parser("demo", help="the bundled demo: a photograph and a 16-frame pan, fixture VAE",
                          formatter_class=defaults)
    demo.add_argument("--out", default="demo_output", help="folder for panel.png and convergence.png")
    demo.add_argument("--steps", type=count_arg, default=50, help="iterations at most for each row")
    demo.add_argument("--frames", type=count_arg, default=16, help="frames of the pan")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=cmd_demo)
    return p


def _one_line(message, category, filename, lineno, line=None) -> str:
    """A warning as the command line shows it: ``decinv: warning: ...`` (no source file and line), naming
    the flags where it names the API's arguments."""
    return f"decinv: warning: {flag_names(str(message))}\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ._dispatch import BackendUnavailable

    shown = warnings.formatwarning
    warnings.formatwarning = _one_line  # how warnings print (a caller recording them still gets them whole)
    try:
        return args.func(args)
    except (ValueError, TypeError, FloatingPointError, BackendUnavailable, OSError, SafetensorError) as exc:
        print(f"decinv: error: {exc}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = shown


if __name__ == "__main__":
    sys.exit(main())
