"""The discrete noise schedule that DDIM and BDIA-DDIM walk along.

States are indexed by ``i = N, ..., 1, 0`` from pure noise ``z_N = z_T`` to the clean latent ``z_0``.
State ``i >= 1`` sits at the model timestep ``t_i`` (what the epsilon model is called with) and at
the noise level ``alphabar_i = alphas_cumprod[t_i]``; the clean state has no model timestep and the
level ``alphabar_0`` (diffusers' ``final_alpha_cumprod``: 1 when ``set_alpha_to_one``). With

    a_i = sqrt(alphabar_i),   s_i = sqrt(1 - alphabar_i),

a state is ``z_i = a_i * x0 + s_i * eps`` (variance preserving).

Grid convention. A step from state ``i`` lands exactly on the level of state ``i - 1`` (the next
timestep of the list, or ``alphabar_0`` after the last one). ``DDIMScheduler.step`` instead lands on
``alphas_cumprod[t - num_train_timesteps // num_inference_steps]``; the two agree whenever the
timesteps are evenly spaced by ``num_train_timesteps // num_inference_steps`` ("leading" spacing,
and "trailing" when the step count divides ``num_train_timesteps``). For the other spacings
diffusers' step lands between grid points; BDIA needs the two directions of a step to meet the same
levels, so the grid convention is used throughout.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..options import check_int, is_int, tensor_hint

log = logging.getLogger(__name__)

SPACINGS = ("leading", "trailing", "linspace")


def ddim_timesteps(num_inference_steps: int, *, num_train_timesteps: int = 1000, spacing: str = "leading",
                   steps_offset: int = 0) -> list[int]:
    """The timesteps ``DDIMScheduler.set_timesteps(num_inference_steps)`` produces, descending.

    - ``"leading"``: ``k * (T // n) + steps_offset`` for ``k = n-1, ..., 0``;
    - ``"trailing"``: ``round(arange(T, 0, -T / n)) - 1`` with NumPy's float ``arange``, as diffusers computes it
      (``round(T - k * T / n) - 1`` but where ``T - k * T / n`` is a half-integer: the ``arange``'s rounding
      error then decides), its first ``n`` values (diffusers emits an extra ``-1`` for a few ``n``, e.g. 61);
    - ``"linspace"``: ``round(linspace(0, T - 1, n))`` reversed.
    """
    if not is_int(num_inference_steps) or num_inference_steps < 1:
        raise ValueError("num_inference_steps must be a positive int, "
                         f"got {num_inference_steps!r}{tensor_hint(num_inference_steps)}")
    check_int("num_train_timesteps", num_train_timesteps, 1)
    check_int("steps_offset", steps_offset, 0)  # a negative offset gave a negative timestep, a float was truncated
    n, big_t = int(num_inference_steps), int(num_train_timesteps)
    if steps_offset >= big_t:
        raise ValueError(f"steps_offset={steps_offset} must be below num_train_timesteps={big_t}")
    if n > big_t:
        raise ValueError(f"num_inference_steps={n} exceeds num_train_timesteps={big_t}")
    if spacing == "leading":
        ratio = big_t // n
        values = np.arange(n)[::-1] * ratio + int(steps_offset)
    elif spacing == "trailing":
        # diffusers' float arange, whose rounding decides the ties (n = 48: 937.4999... -> 936, not 937)
        values = (np.round(np.arange(big_t, 0, -big_t / n)).astype(np.int64) - 1)[:n]
    elif spacing == "linspace":
        values = np.linspace(0, big_t - 1, n).round()[::-1]
    else:
        raise ValueError(f"timestep_spacing must be one of {SPACINGS}, got {spacing!r}")
    return [int(v) for v in values]


def _check_alphabar(name: str, values: Sequence[float]) -> None:
    for v in values:
        if not (math.isfinite(v) and 0.0 < v <= 1.0):
            zero_snr = ("; 0 is a zero-terminal-SNR level (rescale_betas_zero_snr=True): pure noise, where the "
                        "eps-form step divides by sqrt(alphas_cumprod)" if v == 0.0 else "")
            raise ValueError(f"{name}: every value must lie in (0, 1], found {v!r}{zero_snr}")


def _as_int_list(name: str, timesteps) -> list[int]:
    if isinstance(timesteps, torch.Tensor):
        if timesteps.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(timesteps.shape)}")
        if timesteps.is_floating_point() and not bool((timesteps == timesteps.round()).all()):
            raise ValueError(f"{name} must hold integer timesteps, got {timesteps.tolist()}")
        timesteps = timesteps.tolist()
    if isinstance(timesteps, np.ndarray):
        timesteps = timesteps.tolist()
    if not isinstance(timesteps, Sequence) or isinstance(timesteps, str) or len(timesteps) == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of ints, got {timesteps!r}")
    out = []
    for t in timesteps:
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) or t != int(t):
            raise ValueError(f"{name} must hold integer timesteps, got {t!r}")
        out.append(int(t))
    return out


@dataclass(frozen=True)
class Schedule:
    """A checked DDIM grid: model timesteps and noise levels of every state.

    Attributes:
        timesteps: ``(t_N, ..., t_1)``, strictly decreasing model timesteps (the sampling order).
        alphas_cumprod: ``(alphabar_0, alphabar_1, ..., alphabar_N)`` in float64, indexed by state.
    """

    timesteps: tuple[int, ...]
    alphas_cumprod: tuple[float, ...]

    @property
    def num_steps(self) -> int:
        """``N``: model calls of one sampling or inversion pass."""
        return len(self.timesteps)

    def t(self, i: int) -> int:
        """Model timestep of state ``i`` (``1 <= i <= N``)."""
        if not 1 <= i <= self.num_steps:
            raise IndexError(f"state {i} has no model timestep (states 1..{self.num_steps} do)")
        return self.timesteps[self.num_steps - i]

    def alphabar(self, i: int) -> float:
        """Noise level ``alphabar_i`` of state ``i`` (``0 <= i <= N``)."""
        return self.alphas_cumprod[i]

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod, timesteps, *, final_alpha_cumprod: float = 1.0) -> Schedule:
        """A grid on any training schedule: ``alphas_cumprod`` ``(T,)`` and descending ``timesteps``.

        Custom (non-DDIM) spacings are allowed here; ``final_alpha_cumprod`` is ``alphabar_0``.
        """
        table = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64)
        if table.dim() != 1 or table.numel() == 0:
            raise ValueError(f"alphas_cumprod must be a non-empty 1-D table, got shape {tuple(table.shape)}")
        steps = _as_int_list("timesteps", timesteps)
        if any(b >= a for a, b in zip(steps, steps[1:], strict=False)):
            raise ValueError(f"timesteps must be strictly decreasing (sampling order t_N > ... > t_1), got {steps}")
        if steps[-1] < 0 or steps[0] >= table.numel():
            raise ValueError(
                f"timesteps must lie in [0, {table.numel() - 1}] (the length of alphas_cumprod), got {steps}"
            )
        levels = [float(final_alpha_cumprod)] + [float(table[t]) for t in reversed(steps)]
        _check_alphabar("final_alpha_cumprod", levels[:1])
        _check_alphabar("alphas_cumprod", levels[1:])
        n = len(steps)
        for i in range(2, n + 1):  # state i sits at t_i = steps[n - i]; more noise (smaller alphabar) at larger t
            if levels[i] > levels[i - 1]:
                raise ValueError(
                    f"alphas_cumprod must not increase with the timestep (it is the signal level, more noise at "
                    f"larger t): {levels[i]:.6g} at t={steps[n - i]} > {levels[i - 1]:.6g} at t={steps[n - i + 1]}"
                )
        if levels[0] < levels[1]:
            raise ValueError(
                f"final_alpha_cumprod={levels[0]:.6g} is below alphabar {levels[1]:.6g} at the last timestep "
                f"t={steps[-1]}: the clean state must be the least noisy"
            )
        return cls(tuple(steps), tuple(levels))

    @classmethod
    def from_scheduler(cls, scheduler, num_inference_steps: int | None = None, *, timesteps=None) -> Schedule:
        """The grid of a diffusers scheduler (``DDIMScheduler`` or any with ``alphas_cumprod``).

        Timesteps come from, in order: ``timesteps`` (checked against the scheduler), else
        ``num_inference_steps`` (the scheduler's DDIM spacing: its ``timestep_spacing`` and
        ``steps_offset``), else ``scheduler.timesteps`` after ``scheduler.set_timesteps(n)``.
        ``alphabar_0`` is the scheduler's ``final_alpha_cumprod`` (1 if it has none). A
        ``DDIMInverseScheduler`` gives the grid of its forward scheduler (its ascending timesteps reversed,
        ``alphabar_0`` from its ``initial_alpha_cumprod``); ``timesteps`` are always given in sampling order.
        A scheduler whose timesteps repeat (``PNDMScheduler``'s warm-up) is refused unless
        ``num_inference_steps`` is given: its DDIM spacing rule then gives the grid.
        Only epsilon prediction is supported; ``clip_sample``/``thresholding`` are ignored (a clipped
        step is not invertible), with a warning.
        """
        table, config = _scheduler_parts(scheduler)
        final = _final_level(scheduler)
        if timesteps is not None:
            steps = _as_int_list("timesteps", timesteps)
            if num_inference_steps is not None and num_inference_steps != len(steps):
                raise ValueError(f"num_inference_steps={num_inference_steps} but {len(steps)} timesteps were given")
            expected = _expected_timesteps(scheduler, config, len(steps))
            if steps != expected:
                raise ValueError(
                    f"timesteps {steps} do not match the scheduler's grid for {len(steps)} steps, {expected} "
                    f"(timestep_spacing={config.get('timestep_spacing', 'leading')!r}, "
                    f"steps_offset={config.get('steps_offset', 0)}); use Schedule.from_alphas_cumprod(...) "
                    "for a custom grid"
                )
        elif num_inference_steps is not None:
            steps = _expected_timesteps(None, config, num_inference_steps)
        elif getattr(scheduler, "num_inference_steps", None) is not None:
            steps = _scheduler_timesteps(scheduler)
            _check_no_repeats(scheduler, steps)
        else:
            raise ValueError(
                "scheduler has no timesteps yet: call scheduler.set_timesteps(n) first, or give the step count: "
                "Schedule.from_scheduler(scheduler, n) for the samplers, num_inference_steps=n for invert_to_noise"
            )
        return cls.from_alphas_cumprod(table, steps, final_alpha_cumprod=final)


def _scheduler_parts(scheduler) -> tuple[torch.Tensor, dict]:
    table = getattr(scheduler, "alphas_cumprod", None)
    config = getattr(scheduler, "config", None)
    if table is None or config is None or "num_train_timesteps" not in config:
        raise TypeError(
            "scheduler must be a Schedule or a diffusers scheduler with alphas_cumprod and "
            f"config.num_train_timesteps, got {type(scheduler).__name__}"
        )
    prediction = config.get("prediction_type", "epsilon")
    if prediction != "epsilon":
        raise ValueError(
            f"scheduler.config.prediction_type={prediction!r}: DDIM/BDIA here need an epsilon-prediction model"
        )
    for flag in ("clip_sample", "thresholding"):
        if config.get(flag, False):
            log.warning("scheduler.config.%s=True is ignored: a clipped DDIM step cannot be inverted", flag)
    return torch.as_tensor(table), dict(config)


def _is_inverse(scheduler) -> bool:
    """diffusers' ``DDIMInverseScheduler``: timesteps ascending, ``alphabar_0`` kept as ``initial_alpha_cumprod``."""
    return getattr(scheduler, "final_alpha_cumprod", None) is None and hasattr(scheduler, "initial_alpha_cumprod")


def _final_level(scheduler) -> float:
    """``alphabar_0``: ``final_alpha_cumprod`` (``DDIMScheduler``), ``initial_alpha_cumprod`` (the same level, where
    ``DDIMInverseScheduler`` starts), else 1 (schedulers that end noise-free, e.g. DDPM)."""
    value = getattr(scheduler, "initial_alpha_cumprod" if _is_inverse(scheduler) else "final_alpha_cumprod", None)
    return 1.0 if value is None else float(value)


def _scheduler_timesteps(scheduler) -> list[int]:
    """The scheduler's own timesteps in sampling order (an inverse scheduler's ascending list reversed)."""
    steps = _as_int_list("scheduler.timesteps", scheduler.timesteps)
    return steps[::-1] if _is_inverse(scheduler) else steps


def _repeated(steps: list[int]) -> list[int]:
    """The timesteps that occur more than once in ``steps``, in order of their first repeat."""
    seen, out = set(), []
    for t in steps:
        if t in seen and t not in out:
            out.append(t)
        seen.add(t)
    return out


def _check_no_repeats(scheduler, steps: list[int]) -> None:
    """Timesteps that repeat are a multistep method's extra model calls, not a DDIM grid; nor are their distinct
    values in general (PNDM's Runge-Kutta warm-up adds half steps). Refuse them, naming what to pass instead."""
    repeated = _repeated(steps)
    if repeated:
        n = scheduler.num_inference_steps
        raise ValueError(
            f"scheduler.timesteps repeat (t={', '.join(map(str, repeated))} more than once in {steps}): "
            f"{type(scheduler).__name__} calls the model several times at a timestep (PNDMScheduler's warm-up: "
            "Runge-Kutta steps, at half steps too, with skip_prk_steps=False, and a repeated first PLMS step even "
            f"with skip_prk_steps=True), which is no DDIM grid; pass num_inference_steps={n} "
            f"(Schedule.from_scheduler(scheduler, {n})) instead, for the DDIM grid on this scheduler's noise table, "
            "timestep_spacing and steps_offset"
        )


def _expected_timesteps(scheduler, config: dict, n: int) -> list[int]:
    """The scheduler's own timesteps if they were set for ``n`` steps and do not repeat, else its DDIM spacing rule
    (the grid ``num_inference_steps=n`` gives, also for a scheduler whose timesteps repeat)."""
    if scheduler is not None and getattr(scheduler, "num_inference_steps", None) == n:
        own = _scheduler_timesteps(scheduler)
        if not _repeated(own):
            return own
    return ddim_timesteps(
        n, num_train_timesteps=int(config["num_train_timesteps"]),
        spacing=config.get("timestep_spacing", "leading"), steps_offset=int(config.get("steps_offset", 0) or 0),
    )


def as_schedule(schedule, num_inference_steps: int | None = None) -> Schedule:
    """A :class:`Schedule` from a ``Schedule`` or a diffusers scheduler (see ``Schedule.from_scheduler``)."""
    if isinstance(schedule, Schedule):
        if num_inference_steps is not None and not is_int(num_inference_steps):  # as a scheduler's is checked
            raise ValueError("num_inference_steps must be a positive int, "
                             f"got {num_inference_steps!r}{tensor_hint(num_inference_steps)}")
        if num_inference_steps is not None and num_inference_steps != schedule.num_steps:
            raise ValueError(
                f"num_inference_steps={num_inference_steps} but the Schedule has {schedule.num_steps} steps"
            )
        return schedule
    return Schedule.from_scheduler(schedule, num_inference_steps)
