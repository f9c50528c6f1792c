"""Build script: the pure-Python package always; the CUDA extension ``decinv_fast._C`` only when
nvcc and a CUDA build of torch are present (never keyed on ``torch.cuda.is_available()``, so it
builds on GPU-less machines too).

Environment:
  DECINV_BUILD_CUDA   unset: build the extension when possible, else install pure Python (with a
                      message saying why); ``1``: must build (fails loudly otherwise); ``0``: never.
  DECINV_CUDA_ARCHS   ";"-separated compute capabilities (default ``80;90``), e.g. ``80;86;90a``
                      or ``9.0+PTX``; each becomes ``-gencode`` flags.
  CUDA_HOME           the toolkit to use; without it, the one the ``nvcc`` on PATH belongs to.
  MAX_JOBS            parallel compile jobs (honoured by torch's BuildExtension through ninja).

torch must be importable while building: install it first, then ``pip install --no-build-isolation``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
SOURCES = [
    "csrc/bindings.cpp",
    "csrc/adam_residual_step.cu",
    "csrc/fsm_residual_step.cu",
    "csrc/km_residual_step.cu",
]
DEFAULT_ARCHS = "80;90"


def _say(message: str) -> None:
    print(f"decinv-fast setup: {message}", file=sys.stderr)


def _cuda_home() -> str | None:
    """CUDA_HOME / CUDA_PATH when set; else the toolkit the nvcc on PATH belongs to (nvcc may be a
    wrapper script outside the toolkit, so ask nvcc itself where it lives)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        dry = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull], capture_output=True, text=True,
                             timeout=120)
        found = re.search(r"^#\$ _HERE_=(.+)$", dry.stdout + dry.stderr, re.MULTILINE)
    except (OSError, subprocess.SubprocessError):
        found = None
    if found:
        return os.path.dirname(found.group(1).strip())
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def _nvcc_release(nvcc: str) -> str | None:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"release (\d+\.\d+)", out)
    return found.group(1) if found else None


def gencode_flags(archs: str) -> list[str]:
    """``"80;90a;9.0+PTX"`` -> nvcc ``-gencode`` flags (SASS for each, plus PTX where ``+PTX``)."""
    flags = []
    for item in filter(None, (part.strip() for part in re.split(r"[;,\s]+", archs))):
        found = re.fullmatch(r"(\d+)(?:\.(\d))?([af]?)(\+PTX)?", item, re.IGNORECASE)
        if not found:
            raise SystemExit(f"DECINV_CUDA_ARCHS: cannot read {item!r} (expected e.g. '80', '90a', '8.6+PTX')")
        major, minor, suffix, ptx = found.groups()
        cc = f"{major}{minor or ''}{suffix}"
        flags.append(f"-gencode=arch=compute_{cc},code=sm_{cc}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{cc},code=compute_{cc}")
    if not flags:
        raise SystemExit("DECINV_CUDA_ARCHS is empty")
    return flags


def _cuda_build() -> tuple[str | None, dict]:
    """``(None, setup kwargs)`` when the extension can be built, else ``(why not, {})``."""
    home = _cuda_home()
    if home is None:
        return "no nvcc found (set CUDA_HOME or put nvcc on PATH)", {}
    nvcc = os.path.join(home, "bin", "nvcc")
    if not os.access(nvcc, os.X_OK):
        return f"CUDA_HOME={home} has no bin/nvcc", {}
    # torch.utils.cpp_extension reads CUDA_HOME once, when first imported (below)
    os.environ["CUDA_HOME"] = home
    try:
        import torch
    except ImportError as exc:
        return (f"torch is not importable at build time ({exc}); an isolated build? Install torch first, "
                "then pip install --no-build-isolation"), {}
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is not a CUDA build", {}
    release = _nvcc_release(nvcc)
    if release is None or release.split(".")[0] != torch.version.cuda.split(".")[0]:
        return f"nvcc {release} ({nvcc}) does not match torch's CUDA {torch.version.cuda}", {}
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    class BuildWithCachedObjects(BuildExtension):
        """torch's BuildExtension, with the object files kept in build/: pip's editable builds use a
        fresh temporary directory each time, so every reinstall would recompile every kernel."""

        def finalize_options(self):
            super().finalize_options()
            self.build_temp = os.path.join(ROOT, "build", "decinv_fast_C")

    extension = CUDAExtension(
        name="decinv_fast._C",
        sources=SOURCES,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={
            "cxx": ["-O3"],
            "nvcc": ["-O3", "-lineinfo", *gencode_flags(os.environ.get("DECINV_CUDA_ARCHS", DEFAULT_ARCHS))],
        },
    )
    return None, {"ext_modules": [extension], "cmdclass": {"build_ext": BuildWithCachedObjects}}


def extension_kwargs() -> dict:
    """setup() arguments for the CUDA extension, following DECINV_BUILD_CUDA."""
    mode = os.environ.get("DECINV_BUILD_CUDA", "").strip()
    if mode not in ("", "0", "1"):
        raise SystemExit(f"DECINV_BUILD_CUDA must be 0, 1 or unset, got {mode!r}")
    if mode == "0":
        _say("DECINV_BUILD_CUDA=0: installing without the CUDA extension decinv_fast._C")
        return {}
    reason, kwargs = _cuda_build()
    if reason is None:
        return kwargs
    if mode == "1":
        raise SystemExit(f"DECINV_BUILD_CUDA=1 but the CUDA extension decinv_fast._C cannot be built: {reason}")
    _say(f"installing without the CUDA extension decinv_fast._C: {reason}. "
         "The torch and triton backends still work; decinv_fast.info() shows the reason.")
    return {}


setup(**extension_kwargs())
