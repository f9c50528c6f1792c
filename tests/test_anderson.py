"""Anderson mixing's bookkeeping around a rejected step, on the mixer itself (small hand-made points)."""

import pytest
import torch

from decinv_fast.anderson import AndersonMixer

# Evaluated points, their steps g = -rho T(y) and decoded residuals D(y) - x (3 latent, 4 pixel elements).
Y = [torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.5]])]
G = [torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.5]]), torch.tensor([[0.5, 0.5, -1.0]])]
R = [torch.tensor([[2.0, 0.0, 1.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0, 0.5]]), torch.tensor([[0.5, 2.0, 1.0, 1.0]])]


@pytest.mark.parametrize("pixels", [None, 4], ids=["latent", "pixel"])
def test_after_a_rejection_the_mixing_restarts_from_the_accepted_point(pixels):
    """A rejected point leaves no trace: its history is forgotten, and the next history column is the
    difference to the last *accepted* point, so the mixed step after the plain restart equals that of a
    fresh mixer that never saw the rejected point nor the history before the accepted one."""
    def residual(k):
        return None if pixels is None else R[k]

    mixer = AndersonMixer(Y[0], memory=3, pixels=pixels)
    mixer.step(Y[0], G[0], torch.tensor([4.0]), residual(0))  # plain step
    mixer.step(Y[1], G[1], torch.tensor([2.0]), residual(1))  # accepted, mixed next
    restart = mixer.step(Y[2], G[2], torch.tensor([3.0]), residual(2))  # worse: rejected
    assert int(mixer.rejected) == 1 and torch.equal(restart, Y[1] + G[1])
    g3, r3 = torch.tensor([[0.2, -0.3, 0.1]]), torch.tensor([[0.5, 0.5, 0.5, 0.0]])
    got = mixer.step(restart, g3, torch.tensor([1.0]), None if pixels is None else r3)

    fresh = AndersonMixer(Y[1], memory=3, pixels=pixels)
    fresh.step(Y[1], G[1], torch.tensor([2.0]), residual(1))
    want = fresh.step(restart, g3, torch.tensor([1.0]), None if pixels is None else r3)
    assert not torch.equal(want, restart + g3)  # a mixed step, not a plain one
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("pixels", [None, 4], ids=["latent", "pixel"])
@pytest.mark.parametrize("safeguard", [True, False])
def test_a_restarted_mixer_steps_as_a_fresh_one(pixels, safeguard):
    """``restart`` (first_frame_join: the first latent frame replaced between steps) forgets everything: from
    there the mixer returns exactly what a new one returns, a plain step first, even after a worse point."""
    def residual(k):
        return None if pixels is None else R[k]

    mixer = AndersonMixer(Y[0], memory=3, pixels=pixels, safeguard=safeguard)
    mixer.step(Y[0], G[0], torch.tensor([1.0]), residual(0))
    mixer.step(Y[1], G[1], torch.tensor([0.5]), residual(1))
    mixer.restart()
    fresh = AndersonMixer(Y[0], memory=3, pixels=pixels, safeguard=safeguard)
    for k, error in ((2, 3.0), (1, 2.0), (0, 4.0)):  # the first worse than every earlier point
        got = mixer.step(Y[k], G[k], torch.tensor([error]), residual(k))
        assert torch.equal(got, fresh.step(Y[k], G[k], torch.tensor([error]), residual(k)))
    assert torch.equal(mixer.rejected, fresh.rejected) and int(mixer.rejected) == int(safeguard)


@pytest.mark.parametrize("mixing", ["latent", "pixel"])
def test_a_history_longer_than_the_run_stores_only_what_the_run_can_fill(tiny_kl, images_32, monkeypatch, mixing):
    """memory=8 over 3 steps: the latents of buffers of all 8 columns, to rounding; memory=10**6 allocates no
    10**6 columns (it used to ask for terabytes)."""
    import decinv_fast
    from decinv_fast import accelerated

    kw = dict(method="anderson", steps=3, mixing=mixing, measure_memory=False)
    capped = decinv_fast.invert(tiny_kl, images_32, memory=8, **kw).latents
    monkeypatch.setattr(accelerated, "AndersonMixer", lambda *a, steps, **k: AndersonMixer(*a, **k))
    full = decinv_fast.invert(tiny_kl, images_32, memory=8, **kw).latents
    monkeypatch.undo()
    torch.testing.assert_close(capped, full, rtol=1e-5, atol=1e-6)  # the solver rounds a smaller system apart
    assert torch.isfinite(decinv_fast.invert(tiny_kl, images_32, memory=10**6, **kw).latents).all()
