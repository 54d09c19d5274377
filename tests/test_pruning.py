"""Pruning library: budgets, Eq. 22-24 against hand computations, Eq. 11 selection, block removal, MACs."""

import itertools
import math
import random

import pytest
import torch

from sanasr_cli.models.schedule import timestep_weight
from sanasr_cli.pruning.blocks import BlockSizes, block_sizes, count_parameters, remove_blocks
from sanasr_cli.pruning.budget import parse_budget
from sanasr_cli.pruning.saliency import (
    FisherAccumulator,
    fisher_block_saliency,
    fisher_statistics,
    magnitude_block_saliency,
)
from sanasr_cli.pruning.select import BudgetError, greedy_select, random_scores, tail_scores


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0.35B", 350_000_000),
        ("344M", 344_000_000),
        ("350000000", 350_000_000),
        ("0.35b", 350_000_000),
        ("1.5e8", 150_000_000),
        ("500K", 500_000),
        (" 2G ", 2_000_000_000),
        (12, 12),
    ],
)
def test_parse_budget(text, expected):
    assert parse_budget(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "0.35T", "-3M", "0", "1,000", "M"])
def test_parse_budget_rejects(text):
    with pytest.raises(ValueError):
        parse_budget(text)


def test_omega_hand_values():
    assert timestep_weight(0) == pytest.approx(1.0)
    assert timestep_weight(1000) == pytest.approx(0.0)
    assert timestep_weight(100) == pytest.approx((math.log(1001) - math.log(101)) / math.log(1001))
    t = torch.tensor([0.0, 1000.0])
    torch.testing.assert_close(timestep_weight(t), torch.tensor([1.0, 0.0], dtype=torch.float64))


class ToyDiT(torch.nn.Module):
    """Two 'blocks' plus a fixed part, named like SanaTransformer2DModel's parameters."""

    def __init__(self):
        super().__init__()
        self.proj_in = torch.nn.Linear(2, 2, bias=False)
        self.transformer_blocks = torch.nn.ModuleList([torch.nn.Linear(2, 1, bias=False) for _ in range(2)])
        with torch.no_grad():
            self.proj_in.weight.copy_(torch.eye(2))
            self.transformer_blocks[0].weight.copy_(torch.tensor([[1.0, 2.0]]))
            self.transformer_blocks[1].weight.copy_(torch.tensor([[-1.0, 0.5]]))

    def forward(self, x):
        h = self.proj_in(x)
        return self.transformer_blocks[0](h) + self.transformer_blocks[1](h)


def test_fisher_accumulation_matches_hand_computation():
    toy = ToyDiT()
    acc = FisherAccumulator(toy)
    # step 1: x = (1, 1), y = 0, L = (w0.x + w1.x)^2 = (3 - 0.5)^2; dL/dw_block = 2 r x with r = 2.5
    # step 2: x = (2, 0), y = 0, r = 2 - 2 = 0 ... use x = (0, 2): r = 4 + 1 = 5
    xs, omegas = [torch.tensor([1.0, 1.0]), torch.tensor([0.0, 2.0])], [0.5, 0.25]
    for x, om in zip(xs, omegas, strict=True):
        toy(x).pow(2).sum().backward()
        acc.accumulate(om)
    fisher = acc.fisher()
    r1, r2 = 2.5, 5.0
    g1 = torch.tensor([[2 * r1 * 1, 2 * r1 * 1]])
    g2 = torch.tensor([[0.0, 2 * r2 * 2]])
    expected_block = (0.5 * g1**2 + 0.25 * g2**2) / 2
    torch.testing.assert_close(fisher["transformer_blocks.0.weight"], expected_block)
    torch.testing.assert_close(fisher["transformer_blocks.1.weight"], expected_block)  # same grads: h . 1
    # the fixed part is accumulated too ("every transformer parameter"): dL/dW_in[i, j] = 2 r (w0 + w1)_i x_j
    wsum = torch.tensor([0.0, 2.5])
    gin1, gin2 = 2 * r1 * torch.outer(wsum, xs[0]), 2 * r2 * torch.outer(wsum, xs[1])
    torch.testing.assert_close(fisher["proj_in.weight"], (0.5 * gin1**2 + 0.25 * gin2**2) / 2)
    assert all(p.grad is None for p in toy.parameters())  # gradients consumed


def test_block_saliency_matches_hand_computation():
    toy = ToyDiT()
    fisher = {
        "proj_in.weight": torch.ones(2, 2),
        "transformer_blocks.0.weight": torch.tensor([[1.0, 3.0]]),
        "transformer_blocks.1.weight": torch.tensor([[0.0, 0.5]]),
    }
    eps = 0.5
    s = fisher_block_saliency(toy, fisher, eps_p=eps)
    assert s[0] == pytest.approx(1 / 1.5 + 4 / 3.5)
    assert s[1] == pytest.approx(1 / 0.5 + 0.25 / 1.0)
    assert magnitude_block_saliency(toy) == pytest.approx([5.0, 1.25])
    # the F_i that enter S_l (blocks only, proj_in is not counted): one of 4 below eps_p (and exactly 0)
    stats = fisher_statistics(toy, fisher, eps_p=eps)
    assert (stats["count"], stats["below_eps_p"], stats["zero"]) == (4, 1, 1)
    assert stats["fraction_below_eps_p"] == 0.25 and (stats["min"], stats["max"]) == (0.0, 3.0)
    assert stats["decades"] == {"1e-1": 1, "1e0": 2}  # 0.5 | 1 and 3


def _brute_force(scores, sizes: BlockSizes, budget):
    n, best = sizes.num_blocks, None
    middle = range(1, n - 1)
    for r in range(n - 1):
        for combo in itertools.combinations(middle, r):
            kept = (0, *combo, n - 1)
            if sizes.kept_total(kept) <= budget:
                value = sum(scores[i] for i in kept)
                best = value if best is None else max(best, value)
    return best


def test_greedy_is_optimal_for_equal_block_sizes():
    rng = random.Random(0)
    for n in range(3, 9):
        sizes = BlockSizes(tuple([10] * n), fixed=7)
        for _ in range(10):
            scores = [rng.uniform(0, 1) for _ in range(n)]
            budget = rng.randint(sizes.minimum, sizes.total - 1)
            sel = greedy_select(scores, sizes, budget)
            assert {0, n - 1} <= set(sel.kept)
            assert sel.params == sizes.kept_total(sel.kept) <= budget
            assert sum(scores[i] for i in sel.kept) == pytest.approx(_brute_force(scores, sizes, budget))


def test_first_and_last_kept_even_with_lowest_scores():
    sizes = BlockSizes((5,) * 6, fixed=0)
    sel = greedy_select([-9, 5, 4, 3, 2, -9], sizes, budget=20)
    assert sel.kept == (0, 1, 2, 5)


def test_greedy_with_unequal_sizes_skips_what_does_not_fit():
    # the docstring's case: block 1 (score 10, size 8) fits alone; blocks 2 + 3 (score 6, size 4 each) beat it
    sizes = BlockSizes((1, 8, 4, 4, 1), fixed=0)
    sel = greedy_select([0, 10, 6, 6, 0], sizes, budget=10)
    assert sel.kept == (0, 1, 4) and sel.params == 10
    assert _brute_force([0, 10, 6, 6, 0], sizes, 10) == 12  # greedy is feasible, not optimal here


def test_budget_errors_name_the_minimum_and_the_model_size():
    sizes = BlockSizes((10,) * 4, fixed=5)
    with pytest.raises(BudgetError, match="minimum 25"):
        greedy_select([1] * 4, sizes, 24)
    with pytest.raises(BudgetError, match="nothing to prune"):
        greedy_select([1] * 4, sizes, 45)
    assert greedy_select([1] * 4, sizes, 25).kept == (0, 3)


def test_baseline_scores():
    sizes = BlockSizes((10,) * 6, fixed=0)
    assert greedy_select(tail_scores(6), sizes, 40).kept == (0, 1, 2, 5)
    assert random_scores(6, 1) == random_scores(6, 1) != random_scores(6, 2)


def test_remove_blocks_keeps_weights_and_loads_in_diffusers(tmp_path):
    from diffusers import SanaTransformer2DModel

    from sanasr_cli.models.presets import PRESETS
    from sanasr_cli.models.sanasr import build_random_transformer

    full = build_random_transformer(PRESETS["tiny"], seed=0)
    pruned = remove_blocks(full, [0, 2, 3])
    assert pruned.config.num_layers == 3 and len(pruned.transformer_blocks) == 3
    torch.testing.assert_close(
        pruned.transformer_blocks[1].attn1.to_q.weight, full.transformer_blocks[2].attn1.to_q.weight
    )
    sizes = block_sizes(full)
    assert count_parameters(pruned) == sizes.kept_total([0, 2, 3])
    pruned.save_pretrained(tmp_path / "t", safe_serialization=True)
    loaded = SanaTransformer2DModel.from_pretrained(tmp_path / "t")
    assert count_parameters(loaded) == count_parameters(pruned)
    # the pruned forward equals running the full model's blocks 0, 2, 3 in order
    x, text = torch.randn(1, 8, 2, 2), torch.randn(1, 5, 32)
    kw = dict(encoder_hidden_states=text, timestep=torch.tensor([900.0]), return_dict=False)
    with torch.no_grad():
        out = loaded(x, **kw)[0]
        full.transformer_blocks = torch.nn.ModuleList([full.transformer_blocks[i] for i in (0, 2, 3)])
        ref = full(x, **kw)[0]
    torch.testing.assert_close(out, ref)


def test_real_size_budget_keeps_16_of_28_blocks_and_counts_match(tmp_path):
    """SANA-600M architecture on the meta device (no weights, no memory): 0.35B keeps 16 of 28 blocks."""
    from accelerate import init_empty_weights
    from diffusers import SanaTransformer2DModel

    from sanasr_cli.models.presets import PRESETS
    from sanasr_cli.pruning.macs import transformer_macs

    with init_empty_weights():
        full = SanaTransformer2DModel(**PRESETS["sana-600m-512"].transformer)
    sizes = block_sizes(full)
    assert sizes.num_blocks == 28 and sizes.total == count_parameters(full)
    for strategy_scores in (tail_scores(28), random_scores(28, 0)):
        sel = greedy_select(strategy_scores, sizes, parse_budget("0.35B"))
        assert len(sel.kept) == 16 and {0, 27} <= set(sel.kept)
    pruned = remove_blocks(full, list(sel.kept))
    assert count_parameters(pruned) == sel.params <= 350_000_000
    # the saved config rebuilds exactly that many parameters
    pruned.save_config(tmp_path)
    with init_empty_weights():
        rebuilt = SanaTransformer2DModel.from_config(SanaTransformer2DModel.load_config(tmp_path))
    assert rebuilt.config.num_layers == 16 and count_parameters(rebuilt) == sel.params
    assert transformer_macs(pruned.config, 16, 16, 300) < transformer_macs(full.config, 16, 16, 300)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_alignment_timestep_with_a_cuda_generator():
    """Calibration on GPU seeds one CUDA generator for t_k and eps (compute_task_losses)."""
    from sanasr_cli.training.losses import PromptProtocol, sample_alignment_timestep

    g = torch.Generator(device="cuda").manual_seed(0)
    assert 70 <= sample_alignment_timestep(PromptProtocol(), g) <= 650


def test_calibrated_fisher_weights_by_omega_in_the_loss_and_in_the_sum(fresh_tiny_model):
    """Eq. 21 + 23 read literally (the code's reading): L_cal = omega (L_rec + lambda_a L_align) and F adds
    omega * (dL_cal/dw)^2, so F = mean_k omega_k^3 g_k^2 with g the gradient of the unweighted loss. Dropping
    omega from the loss gives omega g^2, dropping it from the sum omega^2 g^2: both fail here."""
    from sanasr_cli.pruning.calibrate import CalibrationBatch, calibrate_fisher
    from sanasr_cli.training.losses import LossWeights, PromptProtocol, compute_task_losses

    model, transformer = fresh_tiny_model, fresh_tiny_model.transformer
    weights, protocol = LossWeights(perceptual=0.0), PromptProtocol.named("hq")
    g = torch.Generator().manual_seed(3)
    batches = []
    for prompt in ("tree, clean", "sky, sharp"):
        hq = torch.rand(1, 3, 16, 16, generator=g)
        up = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(hq, 4), scale_factor=4).clamp(0, 1)
        batches.append(CalibrationBatch(up, hq, [prompt]))
    fisher, steps = calibrate_fisher(model, iter(batches), 2, weights, protocol, None, torch.Generator().manual_seed(7))

    # by hand: the same draws (t_k, eps) from the same seed, the gradient g of the unweighted loss
    names = [n for n, _ in transformer.named_parameters()]
    readings = {p: {n: 0.0 for n in names} for p in (3, 2, 1)}  # power of omega -> F
    draws = torch.Generator().manual_seed(7)
    hand_steps = []
    transformer.requires_grad_(True)
    try:
        for b in batches:
            with torch.no_grad():
                embeds, mask = model.prompts.encode(b.prompts)
            terms = compute_task_losses(
                model.restorer, model.codec, b.lq_upsampled, b.hq, embeds, mask, weights, protocol, None,
                generator=draws, with_consistency=False, calibration_weight=False,
            )  # fmt: skip
            grads = torch.autograd.grad(terms.total, list(transformer.parameters()), allow_unused=True)
            t = terms.timestep
            omega = (math.log(1001) - math.log(t + 1)) / math.log(1001)  # Eq. 22, T = 1000
            hand_steps.append((t, omega, omega * float(terms.total.detach())))
            for power, f in readings.items():
                for n, gr in zip(names, grads, strict=True):
                    f[n] = f[n] + (omega**power) * (0 if gr is None else gr.detach().square()) / 2
    finally:
        transformer.requires_grad_(False)
    blocks = [n for n in names if n.startswith("transformer_blocks.")]
    assert any(float(fisher[n].abs().max()) > 0 for n in blocks)
    for n in names:
        expected = torch.as_tensor(readings[3][n], dtype=torch.float32).expand_as(fisher[n])
        torch.testing.assert_close(fisher[n], expected, rtol=1e-3, atol=1e-12)
    for (t, omega, loss), rec in zip(hand_steps, steps, strict=True):  # L_cal itself carries omega (Eq. 21)
        assert rec.timestep == t and rec.omega == pytest.approx(omega) and rec.loss == pytest.approx(loss, rel=1e-5)
    # the other readings are far from what the code computes (omega <= 0.38 for t >= 70)
    for power in (1, 2):
        other = sum(float(torch.as_tensor(readings[power][n]).sum()) for n in blocks)
        ours = sum(float(fisher[n].sum()) for n in blocks)
        assert other > 2 * ours
