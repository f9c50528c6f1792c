"""Diffusion inversion: DDIM and BDIA-DDIM sampling and inversion, and image -> z0 -> zT.

    from decinv_fast.diffusion import Schedule, bdia_sample, bdia_invert
    grid = Schedule.from_scheduler(pipe.scheduler, 50)
    z0, z1 = bdia_sample(pipe.unet, grid, zT, gamma=0.96, encoder_hidden_states=text)
    zT_again = bdia_invert(pipe.unet, grid, z0, z1, gamma=0.96, encoder_hidden_states=text)  # exact

See :mod:`.steps` for the pinned formulas and :mod:`.samplers` for what is exact and what is not.

Gradients through sampling (memory independent of the number of steps):

    z0 = adjoint_sample(unet, grid, zT, order=2, encoder_hidden_states=text)   # AdjointDEIS, :mod:`.adjoint`
    z0, z1 = reversible_bdia_sample(unet, grid, zT, gamma=0.96)                 # exact, :mod:`.reversible`
    loss(z0).backward()
    result = optimize_noise(unet, grid, zT, loss, method="adjoint")            # guided generation
"""

from .adjoint import AdjointGradients, adjoint_gradients, adjoint_sample
from .denoiser import Denoiser, as_denoiser
from .ei import ei_sample
from .guidance import NoiseOptimization, optimize_noise
from .pipeline import NoiseInversion, invert_to_noise
from .reversible import reversible_bdia_sample, unrolled_bdia_sample
from .samplers import BdiaPair, bdia_invert, bdia_invert_from_z0, bdia_sample, ddim_invert, ddim_sample
from .schedule import Schedule, as_schedule, ddim_timesteps
from .steps import bdia_inverse_step, bdia_step, ddim_coefficients, ddim_step

__all__ = [
    "Schedule", "as_schedule", "ddim_timesteps", "Denoiser", "as_denoiser",
    "ddim_coefficients", "ddim_step", "bdia_step", "bdia_inverse_step",
    "BdiaPair", "ddim_sample", "ddim_invert", "bdia_sample", "bdia_invert", "bdia_invert_from_z0",
    "NoiseInversion", "invert_to_noise",
    "ei_sample", "adjoint_sample", "adjoint_gradients", "AdjointGradients",
    "reversible_bdia_sample", "unrolled_bdia_sample", "optimize_noise", "NoiseOptimization",
]
