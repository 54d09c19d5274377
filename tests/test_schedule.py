import math

import pytest
import torch

from sanasr_cli.models.schedule import flow_sigma, perturb, read_flow_shift, timestep_weight


def test_flow_sigma_matches_hand_computation():
    # t = 0.9, s = 3: 3*0.9 / (1 + 2*0.9) = 2.7 / 2.8
    assert flow_sigma(900, 3.0) == pytest.approx(2.7 / 2.8)
    # no shift: sigma = t
    assert flow_sigma(250, 1.0) == pytest.approx(0.25)
    assert flow_sigma(0, 3.0) == 0
    assert flow_sigma(1000, 3.0) == pytest.approx(1.0)
    # LQ-prompt protocol tau = 999
    assert flow_sigma(999, 3.0) == pytest.approx(3 * 0.999 / (1 + 2 * 0.999))


def test_flow_sigma_on_tensors_is_monotone():
    taus = torch.arange(0, 1001, 50, dtype=torch.float64)
    sig = flow_sigma(taus, 3.0)
    assert torch.all(sig[1:] > sig[:-1])
    assert sig[10].item() == pytest.approx(flow_sigma(500.0, 3.0))


def test_perturb_alpha_is_one_minus_sigma():
    z = torch.tensor([[[[2.0]]]])
    eps = torch.tensor([[[[-1.0]]]])
    assert perturb(z, eps, 0.25).item() == pytest.approx(0.75 * 2 - 0.25)
    zb = torch.ones(2, 1, 1, 1)
    out = perturb(zb, torch.zeros_like(zb), torch.tensor([0.0, 0.5]))
    assert out.flatten().tolist() == [1.0, 0.5]


def test_timestep_weight_eq22():
    assert timestep_weight(0) == pytest.approx(1.0)
    assert timestep_weight(1000) == pytest.approx(0.0)
    assert timestep_weight(99) == pytest.approx((math.log(1001) - math.log(100)) / math.log(1001))
    t = torch.tensor([0, 99, 1000])
    assert timestep_weight(t).tolist() == pytest.approx([1.0, timestep_weight(99), 0.0])


def test_read_flow_shift(tmp_path):
    (tmp_path / "scheduler_config.json").write_text('{"_class_name": "DPMSolverMultistepScheduler", "flow_shift": 3.0}')
    assert read_flow_shift(tmp_path) == 3.0
    (tmp_path / "scheduler_config.json").write_text('{"shift": 2.5}')
    assert read_flow_shift(tmp_path) == 2.5
