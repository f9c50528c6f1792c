"""decinv_fast: fast, memory-frugal gradient-free decoder inversion for latent diffusion models.

    import decinv_fast
    z = decinv_fast.invert(pipe.vae, image).latents   # instead of vae.encode(image).latent_dist.mode() * scaling
"""

from ._dispatch import BackendUnavailable
from .adapters import as_adapter
from .api import decode, encode, invert
from .diffusion import invert_to_noise
from .fixture import load_fixture_vae
from .info import info
from .metrics import nmse_db
from .planner import plan
from .result import InversionResult

__version__ = "0.1.0"
__all__ = [
    "invert", "encode", "decode", "nmse_db", "plan", "invert_to_noise", "load_fixture_vae", "InversionResult", "info",
    "BackendUnavailable", "as_adapter",
]
