"""Helpers the command-line tests share: one ``decinv invert`` run and the latents file it wrote."""

from safetensors import safe_open

from decinv_fast.cli import main


def read_latents(path):
    """The ``latents`` tensor of a file ``decinv invert`` wrote, and its metadata."""
    with safe_open(str(path), "pt") as f:
        return f.get_tensor("latents"), f.metadata()


def run_invert(path, out, *extra):
    """``decinv invert path --steps 1 --out out`` (must succeed) -> what it wrote."""
    assert main(["invert", str(path), "--steps", "1", "--out", str(out), "--quiet", *extra]) == 0
    return read_latents(out)
