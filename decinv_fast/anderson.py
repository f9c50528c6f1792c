"""Anderson acceleration of the fixed-point map ``G(y) = y - rho * T(y)``, per sample, safeguarded.

With ``g_k = G(y_k) - y_k = -rho_k * T(y_k)`` and the last ``m`` differences
``dY_i = y_{i+1} - y_i``, ``dG_i = g_{i+1} - g_i`` (type-II Anderson mixing, full relaxation)::

    gamma   = argmin ||g_k - dG gamma||² + lam ||gamma||²     (lam = reg * trace(dG^T dG) / m)
    y_{k+1} = y_k + g_k - (dY + dG) gamma

solved per sample as a small ``m x m`` system in fp32 (batched, no Python loop over samples).
``m = 0`` is exactly the forward step method. Safeguard: a mixed step whose point decodes to a
*larger* pixel error ``||D(y) - x||`` than the last accepted point is rejected; that sample takes the
plain step ``y_acc + g_acc`` from the accepted point instead and forgets its history. Plain steps are
always accepted. Memory: ``2m + 4`` fp32 latents per sample.
"""

from __future__ import annotations

import torch

from .options import check_int


class AndersonMixer:
    """Mixing state for a batch of samples viewed as ``(B, n)``."""

    def __init__(self, y: torch.Tensor, memory: int, reg: float = 1e-6):
        check_int("memory (Anderson history m)", memory, 0)
        batch, n = y.shape
        device = y.device
        self.m, self.reg = memory, reg
        self.dy = torch.zeros(memory, batch, n, device=device)
        self.dg = torch.zeros(memory, batch, n, device=device)
        self.valid = torch.zeros(memory, batch, dtype=torch.bool, device=device)
        self.slot = 0
        self.prev_y = y.float().clone()
        self.prev_g = torch.zeros(batch, n, device=device)
        self.has_prev = torch.zeros(batch, dtype=torch.bool, device=device)
        self.acc_y = self.prev_y.clone()
        self.acc_g = torch.zeros_like(self.prev_g)
        self.acc_error = torch.full((batch,), float("inf"), device=device)
        self.plain = torch.ones(batch, dtype=torch.bool, device=device)  # was the last step a plain one
        self.rejected = torch.zeros(batch, dtype=torch.int64, device=device)  # count, for diagnostics

    def step(self, y: torch.Tensor, g: torch.Tensor, pixel_error: torch.Tensor) -> torch.Tensor:
        """Given the evaluated point ``y``, its ``g = -rho T(y)`` (fp32) and pixel error², return the
        next point (fp32 ``(B, n)``)."""
        y = y.float()
        reject = ~self.plain & (pixel_error > self.acc_error)
        accept = ~reject
        self.rejected += reject.long()
        # history: the newest differences, for samples that accepted this point
        if self.m:
            push = accept & self.has_prev
            self.dy[self.slot] = torch.where(push[:, None], y - self.prev_y, self.dy[self.slot])
            self.dg[self.slot] = torch.where(push[:, None], g - self.prev_g, self.dg[self.slot])
            self.valid[self.slot] = torch.where(accept, push, self.valid[self.slot])
            self.valid &= accept[None, :]  # a rejection forgets the sample's history
            self.slot = (self.slot + 1) % self.m
        mixed, used = self._mix(y, g)
        plain_from_acc = self.acc_y + self.acc_g
        nxt = torch.where(reject[:, None], plain_from_acc, mixed)
        # bookkeeping: accepted points become the reference; rejected samples restart from acc
        self.acc_y = torch.where(accept[:, None], y, self.acc_y)
        self.acc_g = torch.where(accept[:, None], g, self.acc_g)
        self.acc_error = torch.where(accept, pixel_error, self.acc_error)
        self.prev_y = torch.where(accept[:, None], y, self.acc_y)
        self.prev_g = torch.where(accept[:, None], g, self.acc_g)
        self.has_prev = torch.ones_like(self.has_prev)
        self.plain = reject | ~used
        return nxt

    def _mix(self, y: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The Anderson point for every sample, and whether any history was used."""
        if self.m == 0:
            return y + g, torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
        mask = self.valid.T.float()  # (B, m)
        dg = self.dg * self.valid[:, :, None]
        gram = torch.einsum("ibn,jbn->bij", dg, dg)  # (B, m, m)
        rhs = torch.einsum("ibn,bn->bi", dg, g)
        scale = gram.diagonal(dim1=1, dim2=2).sum(1).clamp_min(1e-30) / self.m
        eye = torch.eye(self.m, device=y.device)
        # unused columns get a unit diagonal and zero right-hand side -> gamma = 0 there
        system = gram + (self.reg * scale)[:, None, None] * eye + torch.diag_embed(1 - mask)
        gamma, _ = torch.linalg.solve_ex(system, rhs * mask)
        gamma = torch.nan_to_num(gamma) * mask
        correction = torch.einsum("bi,ibn->bn", gamma, self.dy * self.valid[:, :, None] + dg)
        return y + g - correction, mask.sum(1) > 0
