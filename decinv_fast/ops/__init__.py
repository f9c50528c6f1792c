"""Fused update ops: one pass over the latent per inversion step (see each launcher's docstring)."""

from . import _library  # noqa: F401  (torch.library schemas of the three ops; see _library.py)
from .adam_residual_step import adam_residual_step
from .fsm_residual_step import fsm_residual_step
from .km_residual_step import km_residual_step

__all__ = ["adam_residual_step", "fsm_residual_step", "km_residual_step"]
