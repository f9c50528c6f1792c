"""``decinv invert``'s argument types (argparse refuses a malformed value before anything loads) and the
method options of ``--option NAME=VALUE``."""

from __future__ import annotations

import argparse
import math

import torch

from .cli_io import UsageError
from .options import METHOD_OPTIONS, auto_kwargs

# method options with a flag of their own (invert's ``rho`` is ``lr`` under another name), and the others
OWN_FLAGS = {"clip_aware": "--clip-aware", "optimizer": "--lbfgs", "rho": "--lr"}
OPTION_NAMES = sorted(set().union(*METHOD_OPTIONS.values()) - set(OWN_FLAGS))


def positive_arg(spec: str) -> float:
    """``--tol`` (and ``--lr``'s numbers): a positive, finite number."""
    try:
        value = float(spec)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"not a positive number: {spec!r}")
    return value


def lr_arg(spec: str) -> float | str:
    """``--lr``: a positive, finite number, or ``auto`` (the per-sample secant step size of fsm, km and anderson),
    refused by argparse before any model loads."""
    return _or_auto(spec, positive_arg, "a positive number")


def count_arg(spec: str) -> int:
    """``--steps``, ``--patience``, ``--frames``: a positive int, refused by argparse before any model loads."""
    try:
        value = int(spec)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive int: {spec!r}")
    return value


def chunk_arg(spec: str) -> int | str:
    """``--chunk-frames``: a positive number of frames, or ``auto`` (the memory planner's choice)."""
    return _or_auto(spec, count_arg, "a positive number of frames")


def _or_auto(spec: str, parse, what: str):
    """``auto``, or ``spec`` read by ``parse``; its error then says ``what`` else was expected."""
    if spec == "auto":
        return spec
    try:
        return parse(spec)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"not {what} or 'auto': {spec!r}") from None


def device_arg(spec: str) -> str:
    """``--device``: ``cpu``, or ``cuda`` / ``cuda:N`` of a CUDA device this machine has (argparse shows
    the error as one usage line). Other torch devices (meta, mps, ...) are not ones decinv runs on."""
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a torch device: {spec!r} (use cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{spec}: decinv runs on cpu or cuda (cuda:N), not on {device.type}")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{spec}: this machine has no usable CUDA device; use --device cpu")
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"{spec}: this machine has {count} CUDA device(s)")
    return spec


def option_arg(spec: str) -> tuple[str, object]:
    """``--option NAME=VALUE``: a method option as ``invert`` takes it. VALUE reads as ``true``/``false``, an int,
    a number, numbers separated by commas (``betas=0.9,0.99``), or else as text (``mixing=pixel``); whether the
    method takes it, and the value, ``invert`` checks."""
    name, equals, text = spec.partition("=")
    name, text = name.strip(), text.strip()
    if not (equals and name.isidentifier() and text):
        raise argparse.ArgumentTypeError(f"not NAME=VALUE: {spec!r} (e.g. memory=8)")
    if name in OWN_FLAGS:
        raise argparse.ArgumentTypeError(f"{name} has a flag of its own: {OWN_FLAGS[name]}")
    if name not in OPTION_NAMES:  # invert's other arguments (steps, tol, ...) are flags
        raise argparse.ArgumentTypeError(f"{name} is no method option (those are {', '.join(OPTION_NAMES)})")
    if "," in text:
        parts = [_option_value(part.strip()) for part in text.split(",")]
        return name, tuple(parts) if all(isinstance(v, int | float) for v in parts) else text
    return name, _option_value(text)


def _option_value(text: str) -> bool | int | float | str:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def method_options(pairs: list[tuple[str, object]] | None) -> dict:
    """The ``--option`` pairs as ``invert``'s keyword arguments; a name given twice is an error."""
    options = {}
    for name, value in pairs or []:
        if name in options:
            twice = f"{spelled_value(options[name])} and {spelled_value(value)}"
            raise UsageError(f"--option {name} is given twice ({twice})")
        options[name] = value
    return options


def check_option_names(method: str, options: dict) -> None:
    """``--option`` names ``--method`` does not take: refused before anything loads, naming those it takes through
    ``--option`` (not ``clip_aware``, ``optimizer`` or ``rho``: they have flags of their own)."""
    unknown = sorted(set(options) - METHOD_OPTIONS[method])
    if unknown:
        takes = ", ".join(sorted(METHOD_OPTIONS[method] - set(OWN_FLAGS))) or "none"
        raise UsageError(f"unknown --option name(s) {unknown} for --method {method}; it takes: {takes}")


def spelled_value(value) -> str:
    """An option's value as ``--option`` takes it."""
    if isinstance(value, bool):
        return str(value).lower()
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def spelled_out_auto(given: dict) -> str:
    """The flags of the ``anderson`` run that ``--method auto`` is, with the settings ``given`` (``lr``,
    ``schedule``, ``patience`` or method options) replaced: what to run to vary some of them."""
    flags = []
    for name, value in auto_kwargs(**given).items():
        if name in ("method", "lr", "schedule", "patience"):
            flags.append(f"--{name} {value}")
        elif name in ("keep_best", "clip_aware"):
            flags += [f"--{name.replace('_', '-')}"] if value else []
        else:
            flags.append(f"--option {name}={spelled_value(value)}")
    return " ".join(flags)
