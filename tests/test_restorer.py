import pytest
import torch

from sanasr_cli.models.restorer import OneStepRestorer
from sanasr_cli.models.schedule import flow_sigma


def test_eq4_against_hand_computation(tiny_model):
    """z_hat = z_L - sigma_{tau_g} * f(z_L, 1000 sigma_{tau_g}, c, m), computed here by hand from the raw
    transformer (fed 1000 * sigma, as SANA was trained: 964.29 for tau_g = 900, shift 3)."""
    torch.manual_seed(0)
    transformer = tiny_model.transformer
    restorer = OneStepRestorer(transformer, tau_g=900, flow_shift=3.0)
    z = torch.randn(2, transformer.config.in_channels, 4, 5)
    embeds, mask = tiny_model.prompts.encode(["a tree", "sky, clean"])
    with torch.no_grad():
        v = transformer(
            hidden_states=z,
            encoder_hidden_states=embeds,
            encoder_attention_mask=mask,
            timestep=torch.tensor([1000 * 2.7 / 2.8] * 2),
            return_dict=False,
        )[0]
        z_hat = restorer(z, embeds, mask)
    sigma = 3 * 0.9 / (1 + 2 * 0.9)
    assert restorer.sigma_g == pytest.approx(sigma)
    torch.testing.assert_close(z_hat, z - sigma * v)
    # the update is not trivial
    assert (z_hat - z).abs().mean() > 1e-4


def test_tau_g_and_shift_change_sigma(tiny_model):
    r = OneStepRestorer(tiny_model.transformer, tau_g=999, flow_shift=1.0)
    assert r.sigma_g == pytest.approx(0.999)
    assert OneStepRestorer(tiny_model.transformer, tau_g=500, flow_shift=3.0).sigma_g == pytest.approx(
        flow_sigma(500, 3.0)
    )


def test_frozen_prior_disables_the_adapter(fresh_tiny_model):
    from sanasr_cli.models.lora import add_lora, lora_config, lora_parameters

    model = fresh_tiny_model
    add_lora(model.transformer, lora_config(rank=4, alpha=4))
    with torch.no_grad():
        for p in lora_parameters(model.transformer):
            p.add_(0.1)  # lora_B starts at zero; make the adapter do something
    z = torch.randn(1, 8, 3, 3)
    embeds, mask = model.prompts.encode(["a tree"])
    with torch.no_grad():
        adapted = model.restorer.velocity(z, 900, embeds, mask)
        with model.restorer.frozen_prior():
            prior = model.restorer.velocity(z, 900, embeds, mask)
        again = model.restorer.velocity(z, 900, embeds, mask)
    assert not torch.allclose(adapted, prior)
    torch.testing.assert_close(adapted, again)  # adapter re-enabled after the context
