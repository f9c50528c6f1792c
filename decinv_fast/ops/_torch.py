"""The ``torch`` backend: eager tensor ops on preallocated buffers, no host sync.

Without a master copy the arithmetic is ``reference.py``'s, op for op and in the latents' own
dtype, so results are bit-identical to it. With a fp32 master copy of ``z`` the math runs in fp32
and only the stored state (``z``, ``m``, ``v``) is rounded to the latents' dtype.
"""

from __future__ import annotations

import torch

from ._common import sample_sq_norm, step_row


def adam(edz, e_x, z, m, v, sq_norm, table, step, master, eps, betas) -> None:
    b1, b2 = betas
    row = step_row(table, step)
    lr_k, c1_k, c2_k = row[0], row[1], row[2]
    if master is not None:
        g = edz.float().sub_(e_x.float())
        m32, v32 = m.float(), v.float()
        _adam_core(g, m32, v32, master, lr_k, c1_k, c2_k, eps, b1, b2, sq_norm)
        m.copy_(m32), v.copy_(v32), z.copy_(master)
        return
    _adam_core(edz.sub_(e_x), m, v, z, lr_k, c1_k, c2_k, eps, b1, b2, sq_norm)


def _adam_core(g, m, v, z, lr_k, c1_k, c2_k, eps, b1, b2, sq_norm) -> None:
    """The official update in place; ``g`` is consumed as scratch."""
    sample_sq_norm(g, sq_norm)
    tmp = torch.mul(g, 1 - b1)
    m.mul_(b1).add_(tmp)
    torch.mul(g, g, out=tmp)
    v.mul_(b2).add_(tmp.mul_(1 - b2))
    m_hat = torch.div(m, c1_k, out=tmp)
    denom = torch.div(v, c2_k, out=g).sqrt_().add_(eps)
    z.sub_(m_hat.mul_(lr_k).div_(denom))


def fsm(edz, e_x, z, sq_norm, table, step, master) -> None:
    rho_k = step_row(table, step)[0]
    if master is not None:
        g = edz.float().sub_(e_x.float())
        sample_sq_norm(g, sq_norm)
        master.sub_(g.mul_(rho_k))
        z.copy_(master)
        return
    g = edz.sub_(e_x)
    sample_sq_norm(g, sq_norm)
    z.sub_(g.mul_(rho_k))


def km(edz, e_x, y, z, sq_norm, table, step, master, alpha) -> None:
    rho_k = step_row(table, step)[0]
    if master is not None:  # master is the fp32 evaluation point y
        g = edz.float().sub_(e_x.float())
        sample_sq_norm(g, sq_norm)
        z_new = torch.sub(master, g.mul_(rho_k), out=g)
        master.copy_(torch.sub(z_new, z.float()).mul_(alpha).add_(z_new))
        y.copy_(master)
        z.copy_(z_new)
        return
    g = edz.sub_(e_x)
    sample_sq_norm(g, sq_norm)
    z_new = torch.sub(y, g.mul_(rho_k), out=g)
    torch.sub(z_new, z, out=y).mul_(alpha).add_(z_new)
    z.copy_(z_new)
