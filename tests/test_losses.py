import math

import pytest
import torch

from sanasr_cli.training.losses import (
    LossWeights,
    PromptProtocol,
    channel_gaussian_kl,
    compute_task_losses,
    consistency_mse,
    pixel_mse,
    sample_alignment_timestep,
)


def test_kl_hand_computation_one_channel():
    # q_hat values [1, 3] -> mu 2, s 1 ; q_H values [0, 4] -> mu 2, s 4
    q_hat = torch.tensor([1.0, 3.0]).view(1, 1, 1, 2)
    q_h = torch.tensor([0.0, 4.0]).view(1, 1, 1, 2)
    expected = 0.5 * (math.log(4 / 1) + (1 + 0) / 4 - 1)
    assert channel_gaussian_kl(q_hat, q_h, eps=0.0).item() == pytest.approx(expected)


def test_kl_mean_shift_and_averaging():
    # two channels: identical (KL 0), and mean-shifted by 2 with equal variance 1 -> 0.5 * (0 + (1 + 4)/1 - 1) = 2
    a = torch.tensor([[-1.0, 1.0], [-1.0, 1.0]]).view(1, 2, 1, 2)
    b = torch.tensor([[-1.0, 1.0], [1.0, 3.0]]).view(1, 2, 1, 2)
    assert channel_gaussian_kl(a, b, eps=0.0).item() == pytest.approx((0 + 2.0) / 2)
    assert channel_gaussian_kl(a, a).item() == pytest.approx(0.0, abs=1e-6)


def test_consistency_and_pixel_are_mean_squared_errors():
    a, b = torch.zeros(1, 2, 2, 2), torch.full((1, 2, 2, 2), 3.0)
    assert consistency_mse(a, b).item() == 9.0
    x, y = torch.zeros(2, 3, 2, 2), torch.ones(2, 3, 2, 2) * 0.5
    assert pixel_mse(x, y).item() == 0.25


def test_alignment_timestep_range_is_inclusive():
    g = torch.Generator().manual_seed(0)
    p = PromptProtocol(900, 3, 5)
    seen = {sample_alignment_timestep(p, g) for _ in range(200)}
    assert seen == {3, 4, 5}
    assert PromptProtocol.named("lq") == PromptProtocol(999.0, 20, 980)


def test_task_losses_terms_and_gradient_only_to_lora(fresh_tiny_model):
    from sanasr_cli.models.lora import add_lora, lora_config, lora_parameters

    model = fresh_tiny_model
    add_lora(model.transformer, lora_config(rank=4, alpha=4))
    torch.manual_seed(0)
    lq, hq = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    embeds, mask = model.prompts.encode(["tree", "sky"])
    g = torch.Generator().manual_seed(1)
    terms = compute_task_losses(
        model.restorer,
        model.codec,
        lq,
        hq,
        embeds,
        mask,
        LossWeights(perceptual=0),
        PromptProtocol(),
        perceptual=None,
        generator=g,
    )
    # at init lora_B = 0 so f_theta == f_0: the consistency term is exactly zero
    assert terms.consistency.item() == pytest.approx(0.0, abs=1e-10)
    assert terms.align.item() > 0 and terms.pixel.item() > 0
    assert 70 <= terms.timestep <= 650
    torch.testing.assert_close(terms.total, terms.pixel + terms.align + terms.consistency)
    terms.total.backward()
    grads = {n: p.grad for n, p in model.transformer.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)
    assert all(p.grad is None for p in model.codec.vae.parameters())
    assert lora_parameters(model.transformer)


def test_calibration_weight_scales_by_omega(tiny_model):
    from sanasr_cli.models.schedule import timestep_weight

    lq, hq = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    embeds, mask = tiny_model.prompts.encode(["tree"])
    kw = dict(weights=LossWeights(perceptual=0), protocol=PromptProtocol(), perceptual=None, with_consistency=False)
    with torch.no_grad():
        plain = compute_task_losses(
            tiny_model.restorer,
            tiny_model.codec,
            lq,
            hq,
            embeds,
            mask,
            generator=torch.Generator().manual_seed(5),
            **kw,
        )
        cal = compute_task_losses(
            tiny_model.restorer,
            tiny_model.codec,
            lq,
            hq,
            embeds,
            mask,
            generator=torch.Generator().manual_seed(5),
            calibration_weight=True,
            **kw,
        )
    assert cal.timestep == plain.timestep
    assert cal.total.item() == pytest.approx(timestep_weight(plain.timestep) * plain.total.item(), rel=1e-5)


def test_zero_weighted_prior_terms_are_not_computed(fresh_tiny_model):
    """lambda_a = lambda_c = 0 (a pixel-only run): one transformer pass and one encode, not three passes and two
    encodes; the total is the pixel term; the run's random stream is the same as with the prior terms on."""
    from sanasr_cli.models.lora import add_lora, lora_config

    model = fresh_tiny_model
    add_lora(model.transformer, lora_config(rank=4, alpha=4))
    lq, hq = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    embeds, mask = model.prompts.encode(["tree", "sky"])
    calls = {"transformer": 0, "encode": 0}
    hooks = [
        model.transformer.register_forward_hook(lambda *a: calls.__setitem__("transformer", calls["transformer"] + 1)),
        model.codec.vae.encoder.register_forward_hook(lambda *a: calls.__setitem__("encode", calls["encode"] + 1)),
    ]

    def run(weights):
        g = torch.Generator().manual_seed(1)
        terms = compute_task_losses(
            model.restorer, model.codec, lq, hq, embeds, mask, weights, PromptProtocol(), None, generator=g
        )
        return terms, g.initial_seed(), torch.randn(1, generator=g)

    full, _, after_full = run(LossWeights(perceptual=0))
    assert calls == {"transformer": 4, "encode": 2}
    calls.update(transformer=0, encode=0)
    pixel, _, after_pixel = run(LossWeights(perceptual=0, align=0, consistency=0))
    for h in hooks:
        h.remove()
    assert calls == {"transformer": 1, "encode": 1}
    assert pixel.align.item() == 0 and pixel.consistency.item() == 0
    torch.testing.assert_close(pixel.total, pixel.pixel)
    torch.testing.assert_close(pixel.pixel, full.pixel)
    torch.testing.assert_close(after_pixel, after_full)  # same draws consumed
