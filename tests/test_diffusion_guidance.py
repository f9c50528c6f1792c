"""Classifier-free guidance with SDXL-style extra conditions (``added_cond_kwargs``), and the unconditional branch's
own ones (``negative_added_cond_kwargs``: SDXL's negative pooled embedding and time ids)."""

from __future__ import annotations

import pytest
import torch
from diffusion_models import noise, rel, sd_scheduler, text_embeddings, tiny_text_time_unet

from decinv_fast.diffusion import Denoiser, Schedule, bdia_sample, ddim_sample, reversible_bdia_sample

SCALE = 3.0


@pytest.fixture(scope="module")
def unet():
    return tiny_text_time_unet()


def extra_conditions(batch: int = 2) -> tuple[dict, dict]:
    """``(added_cond_kwargs, negative_added_cond_kwargs)``: the negative ones with batch 1, as a pipeline's empty
    prompt gives them, and unlike the conditional ones in both keys."""
    gen = torch.Generator().manual_seed(5)
    added = dict(text_embeds=torch.randn(batch, 8, generator=gen), time_ids=torch.randn(batch, 6, generator=gen))
    negative = dict(text_embeds=torch.randn(1, 8, generator=gen), time_ids=torch.randn(1, 6, generator=gen))
    return added, negative


def two_branches(unet, text, empty, added, negative):
    """Guidance written out as diffusers' SDXL pipeline does it: each branch with its own embeddings."""
    def eps(z, t):
        batch = z.shape[0]
        with torch.no_grad():
            eps_c = unet(z, t, encoder_hidden_states=text, added_cond_kwargs=added).sample
            eps_u = unet(z, t, encoder_hidden_states=empty.expand(batch, -1, -1),
                         added_cond_kwargs={k: v.expand(batch, -1) for k, v in negative.items()}).sample
        return eps_u + SCALE * (eps_c - eps_u)
    return eps


def test_guidance_repeats_added_cond_kwargs_for_both_branches(unet):
    """Without ``negative_added_cond_kwargs`` the batched tensors of ``added_cond_kwargs`` go to both branches, like
    the other batched conditions (the batch of 2 used to fail inside the UNet)."""
    z = noise()
    text, empty = text_embeddings(2)
    added, _ = extra_conditions()
    guided = Denoiser(unet, encoder_hidden_states=text, negative_encoder_hidden_states=empty, guidance_scale=SCALE,
                      added_cond_kwargs=added)
    assert torch.allclose(guided(z, 500), two_branches(unet, text, empty, added, added)(z, 500), atol=1e-5)
    assert added["text_embeds"].shape == (2, 8)  # the caller's dict is not changed


def test_the_unconditional_branch_gets_negative_added_cond_kwargs(unet):
    """With ``negative_added_cond_kwargs`` the unconditional branch gets them (SDXL's negative pooled embedding and
    time ids), in the same one batched call; the conditional branch keeps ``added_cond_kwargs``."""
    z = noise()
    text, empty = text_embeddings(2)
    added, negative = extra_conditions()
    guided = Denoiser(unet, encoder_hidden_states=text, negative_encoder_hidden_states=empty, guidance_scale=SCALE,
                      added_cond_kwargs=added, negative_added_cond_kwargs=negative)
    expected = two_branches(unet, text, empty, added, negative)(z, 500)
    out = guided(z, 500)
    assert torch.allclose(out, expected, atol=1e-5) and guided.calls == 1
    # it matters: the branches sharing added_cond_kwargs give another eps
    shared = Denoiser(unet, encoder_hidden_states=text, negative_encoder_hidden_states=empty, guidance_scale=SCALE,
                      added_cond_kwargs=added)
    assert rel(shared(z, 500), out) > 1e-3
    assert negative["text_embeds"].shape == (1, 8) and added["text_embeds"].shape == (2, 8)  # not changed
    # Denoiser.keywords keeps them: an equal denoiser
    assert torch.equal(Denoiser(guided.model, **guided.keywords)(z, 500), out)


def test_samplers_and_the_autograd_functions_take_negative_added_cond_kwargs(unet):
    """The samplers' keywords and a bound Denoiser (which the custom autograd functions take apart) carry them."""
    grid = Schedule.from_scheduler(sd_scheduler(), 4)
    z_T = noise()
    text, empty = text_embeddings(2)
    added, negative = extra_conditions()
    cond = dict(encoder_hidden_states=text, negative_encoder_hidden_states=empty, guidance_scale=SCALE,
                added_cond_kwargs=added, negative_added_cond_kwargs=negative)
    reference = two_branches(unet, text, empty, added, negative)
    torch.testing.assert_close(ddim_sample(unet, grid, z_T, **cond), ddim_sample(reference, grid, z_T),
                               atol=1e-5, rtol=1e-5)
    expected = bdia_sample(reference, grid, z_T, gamma=0.96).z0
    for model, keywords in ((unet, cond), (Denoiser(unet, **cond), {})):
        pair = reversible_bdia_sample(model, grid, z_T, gamma=0.96, params=(), **keywords)
        torch.testing.assert_close(pair.z0, expected, atol=1e-5, rtol=1e-5)


def _guided(**changes):
    text, empty = text_embeddings(2)
    added, negative = extra_conditions()
    cond = dict(encoder_hidden_states=text, negative_encoder_hidden_states=empty, guidance_scale=SCALE,
                added_cond_kwargs=added, negative_added_cond_kwargs=negative)
    for key, change in changes.items():
        cond[key] = change(cond[key]) if callable(change) else change
    return {k: v for k, v in cond.items() if v is not None}


ADDED = "added_cond_kwargs"
NEGATIVE = "negative_added_cond_kwargs"


@pytest.mark.parametrize("changes, error, match", [
    ({"guidance_scale": 1.0, "negative_encoder_hidden_states": None}, ValueError,
     "negative_added_cond_kwargs is only used with guidance_scale != 1"),
    ({ADDED: None}, ValueError, "negative_added_cond_kwargs needs added_cond_kwargs"),
    ({NEGATIVE: lambda d: list(d.values())}, TypeError, "negative_added_cond_kwargs must be a dict, got list"),
    ({ADDED: lambda d: list(d.values())}, TypeError, "added_cond_kwargs must be a dict .*, got list"),
    ({NEGATIVE: lambda d: {"text_embeds": d["text_embeds"]}}, ValueError,
     r"negative_added_cond_kwargs has the keys \['text_embeds'\] but added_cond_kwargs has "
     r"\['text_embeds', 'time_ids'\]"),
    ({NEGATIVE: lambda d: {**d, "time_ids": [0.0] * 6}}, TypeError,
     r"negative_added_cond_kwargs\['time_ids'\] must be a tensor .*, got list"),
    ({ADDED: lambda d: {**d, "time_ids": torch.tensor(1.0)}}, TypeError,
     r"added_cond_kwargs\['time_ids'\] must be a tensor with a batch dimension"),
    ({NEGATIVE: lambda d: {**d, "time_ids": d["time_ids"][:, :5]}}, ValueError,
     r"negative_added_cond_kwargs\['time_ids'\] has shape \(1, 5\) but added_cond_kwargs\['time_ids'\] has "
     r"\(2, 6\); they must differ at most in the batch"),
    ({NEGATIVE: lambda d: {**d, "text_embeds": d["text_embeds"].double()}}, TypeError,
     r"negative_added_cond_kwargs\['text_embeds'\] is torch.float64 on cpu but added_cond_kwargs\['text_embeds'\] "
     r"is torch.float32 on cpu"),
])
def test_bad_negative_added_cond_kwargs(unet, changes, error, match):
    with pytest.raises(error, match=match):
        Denoiser(unet, **_guided(**changes))


@pytest.mark.parametrize("key", [ADDED, NEGATIVE])
def test_extra_conditions_with_another_batch_than_the_state(unet, key):
    """Both dicts' tensors must have the state's batch or 1 (they are expanded for the batched call)."""
    grid = Schedule.from_scheduler(sd_scheduler(), 4)
    cond = _guided(**{key: lambda d: {**d, "time_ids": torch.zeros(3, 6)}})
    with pytest.raises(ValueError, match=rf"^{key}\['time_ids'\] must be \(B or 1, ...\) with B=2 like z_T, "
                                         r"got shape \(3, 6\)$"):
        ddim_sample(unet, grid, noise(), **cond)


@pytest.mark.parametrize("sampler", ["reversible_bdia_sample", "adjoint_sample"])
def test_a_nested_conditioning_tensor_that_requires_grad_is_refused(unet, sampler):
    """The custom autograd functions differentiate the conditioning tensors passed as keywords; one inside
    ``added_cond_kwargs`` that requires grad would get no gradient without a word, so it is refused by name."""
    import decinv_fast.diffusion as diffusion

    run = getattr(diffusion, sampler)
    grid = Schedule.from_scheduler(sd_scheduler(), 2)
    text, _ = text_embeddings(2)
    added, _ = extra_conditions()
    wanted = dict(added, text_embeds=added["text_embeds"].clone().requires_grad_(True))
    extra = dict(gamma=0.96) if sampler == "reversible_bdia_sample" else {}
    with pytest.raises(ValueError, match=r"added_cond_kwargs\['text_embeds'\] requires grad, .* pass it detached"):
        run(unet, grid, noise(), encoder_hidden_states=text, added_cond_kwargs=wanted, **extra)
    with torch.no_grad():  # no gradient asked for: runs
        run(unet, grid, noise(), encoder_hidden_states=text, added_cond_kwargs=wanted, **extra)
    run(unet, grid, noise(), encoder_hidden_states=text, added_cond_kwargs=added, **extra)
