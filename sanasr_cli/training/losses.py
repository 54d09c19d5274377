"""The SANA-SR objective (Eq. 5-8, 16-17, 21; App. A.4-A.7), shared by `train` and `prune` calibration.

Pure tensor functions first (each unit-tested against a hand computation), then `compute_task_losses`, which runs
one restore step and the frozen-prior branch on a batch and returns every term separately.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sanasr_cli.models.restorer import OneStepRestorer
from sanasr_cli.models.schedule import flow_sigma, perturb, timestep_weight
from sanasr_cli.models.vae import LatentCodec


@dataclass
class LossWeights:
    """lambda_2, lambda_p, lambda_a, lambda_c of Eq. 7-8 (paper defaults 1, 2, 1, 1), and the weight of the MSE
    to a teacher's output (`train --teacher`: beyond the paper; 0 without a teacher)."""

    pixel: float = 1.0
    perceptual: float = 2.0
    align: float = 1.0
    consistency: float = 1.0
    teacher: float = 0.0


@dataclass
class PromptProtocol:
    """tau_g and the alignment range [t_min, t_max] (App. B): HQ-prompt (900, 70..650) or LQ-prompt (999, 20..980)."""

    tau_g: float = 900.0
    t_min: int = 70
    t_max: int = 650

    @classmethod
    def named(cls, name: str) -> PromptProtocol:
        if name == "hq":
            return cls(900.0, 70, 650)
        if name == "lq":
            return cls(999.0, 20, 980)
        raise ValueError(f"unknown prompt protocol '{name}' (use hq or lq)")


def pixel_mse(x_hat: torch.Tensor, x_hq: torch.Tensor) -> torch.Tensor:
    """1/(3HW) ||x_hat - x_H||^2, averaged over the batch (Eq. 7)."""
    return F.mse_loss(x_hat.float(), x_hq.float())


def channel_gaussian_kl(q_hat: torch.Tensor, q_hq: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """L_align (Eq. 5, 19): KL between channel-wise Gaussian summaries of two (B, C, h, w) responses.

    1/(2BC) sum_{b,c} [ log((s_H + eps)/(s_hat + eps)) + (s_hat + (mu_hat - mu_H)^2)/(s_H + eps) - 1 ],
    with mu, s the spatial mean and (biased) variance of each channel of each sample.
    """
    q_hat, q_hq = q_hat.float(), q_hq.float()
    mu_hat, mu_h = q_hat.mean(dim=(2, 3)), q_hq.mean(dim=(2, 3))
    s_hat = q_hat.var(dim=(2, 3), unbiased=False)
    s_h = q_hq.var(dim=(2, 3), unbiased=False)
    terms = torch.log((s_h + eps) / (s_hat + eps)) + (s_hat + (mu_hat - mu_h) ** 2) / (s_h + eps) - 1
    return 0.5 * terms.mean()


def consistency_mse(q_adapt: torch.Tensor, q_base: torch.Tensor) -> torch.Tensor:
    """L_cons (Eq. 6): 1/|Omega| ||f_theta(z~) - f_0(z~)||^2."""
    return F.mse_loss(q_adapt.float(), q_base.float())


def sample_alignment_timestep(protocol: PromptProtocol, generator: torch.Generator | None = None) -> int:
    """t ~ U{t_min, ..., t_max} (Eq. 16), inclusive."""
    # drawn on the generator's own device: a CUDA generator cannot drive a CPU draw (and eps below is on CUDA)
    device = generator.device if generator is not None else None
    t = torch.randint(protocol.t_min, protocol.t_max + 1, (1,), generator=generator, device=device)
    return int(t.item())


class PerceptualLoss(torch.nn.Module):
    """LPIPS (VGG) from the `lpips` package, inputs in [0, 1]. Frozen.

    `random_backbone=True` skips the torchvision VGG download (tests, offline smoke runs); real training needs the
    pretrained VGG16 weights, which torchvision caches under ~/.cache/torch.
    """

    def __init__(self, random_backbone: bool = False):
        super().__init__()
        import lpips

        try:
            if random_backbone:
                self.net = _lpips_with_random_vgg_features()
            else:
                self.net = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=False, verbose=False)
        except Exception as e:  # noqa: BLE001 - torchvision's download error types vary
            raise RuntimeError(
                "LPIPS needs torchvision's pretrained VGG16 weights (vgg16-397923af.pth) in the torch hub cache "
                f"(~/.cache/torch/hub/checkpoints); download them once with network access. Cause: {e}"
            ) from None
        self.net.eval().requires_grad_(False)

    def forward(self, x_hat: torch.Tensor, x_hq: torch.Tensor) -> torch.Tensor:
        return self.net(x_hat.float() * 2 - 1, x_hq.float() * 2 - 1).mean()


def _lpips_with_random_vgg_features():
    """LPIPS-VGG with its (bundled) linear heads and a randomly initialised VGG16 trunk.

    lpips builds the trunk with `torchvision.models.vgg16(...).features`, which also creates and initialises
    the 120 M-parameter classifier that LPIPS never uses (seconds and ~0.5 GB per process); for the random
    trunk we hand it the same VGG16 feature layers (torchvision's `make_layers(cfgs["D"])`, initialised as
    torchvision does) without the classifier.
    """
    import lpips
    from lpips import pretrained_networks
    from torchvision.models import vgg as tv_vgg

    class _FeaturesOnly:
        def __init__(self, pretrained=False, **_):
            self.features = tv_vgg.make_layers(tv_vgg.cfgs["D"], batch_norm=False)
            for m in self.features.modules():
                if isinstance(m, torch.nn.Conv2d):  # torchvision VGG's own init
                    torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    torch.nn.init.constant_(m.bias, 0)

    original = pretrained_networks.tv.vgg16
    pretrained_networks.tv.vgg16 = _FeaturesOnly
    try:
        return lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
    finally:
        pretrained_networks.tv.vgg16 = original


@dataclass
class TaskLossTerms:
    """Every term of one step, plus what produced it (for logging and the pruning weights)."""

    total: torch.Tensor
    pixel: torch.Tensor
    perceptual: torch.Tensor
    align: torch.Tensor
    consistency: torch.Tensor
    timestep: int
    x_hat: torch.Tensor
    teacher: torch.Tensor | None = None

    def as_floats(self) -> dict[str, float]:
        return {
            "loss": float(self.total.detach()),
            "pixel": float(self.pixel.detach()),
            "perceptual": float(self.perceptual.detach()),
            "align": float(self.align.detach()),
            "consistency": float(self.consistency.detach()),
            "teacher": float(self.teacher.detach()) if self.teacher is not None else 0.0,
            "t": self.timestep,
        }


def compute_task_losses(
    restorer: OneStepRestorer,
    codec: LatentCodec,
    lq_upsampled: torch.Tensor,
    hq: torch.Tensor,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    weights: LossWeights,
    protocol: PromptProtocol,
    perceptual: PerceptualLoss | None,
    generator: torch.Generator | None = None,
    with_consistency: bool = True,
    calibration_weight: bool = False,
    teacher: torch.Tensor | None = None,
) -> TaskLossTerms:
    """Algorithm 1, lines 3-8 (and Algorithm 2, line 6 with `calibration_weight=True, with_consistency=False`).

    lq_upsampled, hq: (B, 3, H, W) in [0, 1], H and W multiples of the VAE factor. The random draws (t and eps)
    come from `generator` (on the latents' device), so a seed reproduces a step exactly.
    Returns L = L_rec + lambda_a L_align + lambda_c L_cons (without the last term when with_consistency=False),
    times omega(t) when calibration_weight (Eq. 21); with a `teacher` output (B, 3, H, W) in [0, 1] and a
    teacher weight, plus weights.teacher x MSE(x_hat, teacher) (distillation from a peer, beyond the paper).
    """
    # the frozen-prior terms cost two or three more transformer passes and an HQ encode: skipped at weight 0
    # (a pixel-only run, e.g. nano's ablation); the timestep and noise are drawn anyway, so the random stream of
    # a run does not depend on the weights
    need_align = bool(weights.align)
    need_prior = need_align or (with_consistency and bool(weights.consistency))
    with torch.no_grad():
        z_lq = codec.encode(lq_upsampled)
        z_hq = codec.encode(hq) if need_align else None
    z_hat = z_lq.float() - restorer.sigma_g * restorer.velocity(z_lq, restorer.tau_g, embeds, mask).float()
    x_hat = codec.decode(z_hat, clamp=False)
    zero = x_hat.new_zeros(())
    l_pix = pixel_mse(x_hat, hq) if weights.pixel else zero
    l_teacher = pixel_mse(x_hat, teacher) if (teacher is not None and weights.teacher) else zero
    l_lp = perceptual(x_hat, hq) if (perceptual is not None and weights.perceptual) else zero

    t = sample_alignment_timestep(protocol, generator)
    sigma_t = float(flow_sigma(t, restorer.flow_shift))
    eps = torch.randn(z_hat.shape, generator=generator, device=z_hat.device, dtype=torch.float32)
    l_align = l_cons = zero
    if need_prior:
        zt_hat = perturb(z_hat, eps, sigma_t)
        with restorer.frozen_prior():
            q_hat = restorer.velocity(zt_hat, t, embeds, mask)
            if need_align:
                with torch.no_grad():
                    q_hq = restorer.velocity(perturb(z_hq.float(), eps, sigma_t), t, embeds, mask)
                l_align = channel_gaussian_kl(q_hat, q_hq)
        if with_consistency and weights.consistency:
            q_adapt = restorer.velocity(zt_hat, t, embeds, mask)
            l_cons = consistency_mse(q_adapt, q_hat)
    total = weights.pixel * l_pix + weights.perceptual * l_lp + weights.align * l_align
    if weights.teacher and teacher is not None:
        total = total + weights.teacher * l_teacher
    if with_consistency:
        total = total + weights.consistency * l_cons
    if calibration_weight:
        total = float(timestep_weight(t)) * total
    return TaskLossTerms(total, l_pix, l_lp, l_align, l_cons, t, x_hat, l_teacher)
