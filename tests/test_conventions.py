"""The conventions that touch pretrained SANA weights, checked against diffusers itself (not our helpers):
the timestep the transformer is fed, the flow perturbation, and SANA's prompt encoding."""

import logging
import shutil

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SanaPipeline

from sanasr_cli.models.description import ModelDescription
from sanasr_cli.models.restorer import OneStepRestorer
from sanasr_cli.models.sanasr import load_model, save_model_dir
from sanasr_cli.models.schedule import flow_sigma, model_timestep, perturb
from sanasr_cli.training.losses import LossWeights, PromptProtocol, compute_task_losses


@pytest.mark.parametrize("shift", [3.0, 1.0])
@pytest.mark.parametrize("tau", [900, 999, 70, 650, 1])
def test_sigma_and_model_timestep_equal_flow_match_scheduler(tau, shift):
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    index = 1000 - tau  # the scheduler's training grid runs t = 1000/1000 ... 1/1000
    assert float(sched.sigmas[index]) == pytest.approx(flow_sigma(tau, shift), rel=1e-6)
    assert float(sched.timesteps[index]) == pytest.approx(float(model_timestep(tau, shift)), rel=1e-5)


def test_perturbation_equals_scheduler_scale_noise():
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    g = torch.Generator().manual_seed(0)
    z, eps = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    for tau in (70, 300, 650, 900):
        t = sched.timesteps[1000 - tau].reshape(1)
        expected = sched.scale_noise(z, t, eps)
        torch.testing.assert_close(perturb(z, eps, float(flow_sigma(tau, 3.0))), expected)


class _RecordingTransformer(torch.nn.Module):
    """Wraps the real tiny SanaTransformer2DModel and records the timestep tensor it is called with."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, []

    @property
    def dtype(self):
        return self.inner.dtype

    @property
    def config(self):
        return self.inner.config

    def forward(self, **kwargs):
        self.seen.append(kwargs["timestep"].clone())
        return self.inner(**kwargs)


def _tiny_inputs(model, n=1):
    z = torch.randn(n, 8, 2, 2, generator=torch.Generator().manual_seed(1))
    embeds, mask = model.prompts.encode(["a cat"] * n)
    return z, embeds, mask


def test_restorer_feeds_the_transformer_1000_sigma_in_float32():
    model = load_model("tiny")
    rec = _RecordingTransformer(model.transformer).to(torch.bfloat16)
    restorer = OneStepRestorer(rec, tau_g=999.0, flow_shift=3.0)
    z, embeds, mask = _tiny_inputs(model)
    restorer(z, embeds, mask)
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    (t,) = rec.seen
    assert t.dtype == torch.float32  # bf16 would round 999.33 to 1000
    assert float(t[0]) == pytest.approx(float(sched.timesteps[1]), rel=1e-6)


def test_alignment_branch_feeds_1000_sigma_t():
    model = load_model("tiny")
    rec = _RecordingTransformer(model.transformer)
    restorer = OneStepRestorer(rec, tau_g=900.0, flow_shift=3.0)
    lq = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    embeds, mask = model.prompts.encode(["a cat"])
    terms = compute_task_losses(
        restorer,
        model.codec,
        lq,
        lq,
        embeds,
        mask,
        LossWeights(perceptual=0),
        PromptProtocol(),
        None,
        generator=torch.Generator().manual_seed(3),
    )
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    fed = [float(t[0]) for t in rec.seen]
    assert fed[0] == pytest.approx(float(sched.timesteps[100]), rel=1e-6)  # tau_g = 900
    assert fed[1:] == pytest.approx([float(sched.timesteps[1000 - terms.timestep])] * 3, rel=1e-6)


def test_description_records_convention_and_legacy_dirs_warn(tmp_path, caplog):
    model = load_model("tiny")
    out = save_model_dir(model, tmp_path / "m")
    desc = ModelDescription.load(out)
    assert desc.timestep_convention == "sigma*1000" and desc.prompt.complex_human_instruction
    # a folder written before the convention was recorded
    legacy = tmp_path / "legacy"
    shutil.copytree(out, legacy)
    text = (legacy / "sanasr.json").read_text()
    import json

    d = json.loads(text)
    d.pop("timestep_convention")
    d["prompt"].pop("complex_human_instruction")
    (legacy / "sanasr.json").write_text(json.dumps(d))
    with caplog.at_level(logging.WARNING, logger="sanasr"):
        old = load_model(legacy)
    assert any(str(legacy) in r.getMessage() and "timestep convention" in r.getMessage() for r in caplog.records)
    assert old.restorer.timestep_convention == "raw-tau"
    assert not old.prompts.complex_human_instruction
    z, embeds, mask = _tiny_inputs(old)
    rec = _RecordingTransformer(old.transformer)
    old.restorer.transformer = rec
    old.restorer(z, embeds, mask)
    assert float(rec.seen[0][0]) == 900.0  # runs as it was trained


# ---------------------------------------------------------------- prompt encoding


def _sana_pipeline(model):
    return SanaPipeline(
        tokenizer=model.prompts.tokenizer,
        text_encoder=model.prompts.text_encoder,
        vae=model.codec.vae,
        transformer=model.transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )


def _chi():
    import inspect

    return inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default


PROMPTS = [
    "A Cat on a table, clean, extremely detailed, best quality, sharp, high-resolution",
    "  blurry photo of a dog with jpeg artifacts, noisy  ",
    "tree",
    ", ".join(["red flower"] * 60),  # over-long: truncated
]


@pytest.mark.parametrize("chi", [True, False])
def test_prompt_encoding_equals_sana_pipeline_encode_prompt(chi):
    model = load_model("tiny")
    model.prompts.complex_human_instruction = chi
    pipe = _sana_pipeline(model)
    max_len = model.prompts.max_length
    ref_embeds, ref_mask, *_ = pipe.encode_prompt(
        PROMPTS,
        do_classifier_free_guidance=False,
        max_sequence_length=max_len,
        complex_human_instruction=_chi() if chi else None,
    )
    embeds, mask = model.prompts.encode(PROMPTS)
    assert embeds.shape == ref_embeds.shape == (len(PROMPTS), max_len, model.prompts.hidden_size)
    torch.testing.assert_close(embeds, ref_embeds, rtol=0, atol=0)
    # our mask is theirs with the degradation words of the prompt zeroed, and nothing else changed
    assert torch.all(mask <= ref_mask)
    changed = (mask != ref_mask).sum(dim=1).tolist()
    assert changed[0] == 0 and changed[2] == 0 and changed[3] == 0
    assert changed[1] == 4  # blurry, jpeg, artifacts, noisy


def test_degradation_mask_hits_only_prompt_tokens_after_the_prefix():
    model = load_model("tiny")
    tok = model.prompts.tokenize(["a blurry cat"])
    ids = tok["input_ids"][0]
    zeroed = (tok["attention_mask"][0] - tok["mask"][0]).nonzero().flatten().tolist()
    assert len(zeroed) == 1
    assert model.prompts.tokenizer.convert_ids_to_tokens(int(ids[zeroed[0]])) == "blurry"
    # and the prefix really is SANA's instruction: no unknown words in it with the local tokenizer
    chi_ids = model.prompts.tokenizer("\n".join(_chi()).lower())["input_ids"]
    assert model.prompts.tokenizer.unk_token_id not in chi_ids
