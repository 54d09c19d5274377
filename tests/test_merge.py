"""merge-lora: merged outputs equal adapted outputs; the merged folder is a plain diffusers transformer."""

import pytest
import torch

from sanasr_cli.models.lora import EMA_ADAPTER_DIR, add_lora, lora_config, save_adapter
from sanasr_cli.models.merge import merge_model
from sanasr_cli.models.sanasr import load_model, save_model_dir
from tests.helpers import invoke


def _randomize_lora(transformer, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.fixture
def adapted_dir(tmp_path, fresh_tiny_model):
    """A tiny model directory with a non-trivial LoRA adapter (and an EMA adapter with other weights)."""
    model = fresh_tiny_model
    add_lora(model.transformer, lora_config(rank=4, alpha=8))
    _randomize_lora(model.transformer, 1)
    folder = save_model_dir(model, tmp_path / "adapted", save_transformer=False)
    _randomize_lora(model.transformer, 2)
    save_adapter(model.transformer, folder / EMA_ADAPTER_DIR)
    return folder


def _velocity(transformer, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, text = torch.randn(2, 8, 2, 3, generator=g), torch.randn(2, 6, 32, generator=g)
    with torch.no_grad():
        return transformer(x, encoder_hidden_states=text, timestep=torch.tensor([900.0, 300.0]), return_dict=False)[0]


@pytest.mark.numerics
def test_merged_outputs_equal_adapted_and_load_in_diffusers(adapted_dir, tmp_path):
    from diffusers import SanaTransformer2DModel

    adapted = load_model(adapted_dir)
    expected = _velocity(adapted.transformer)
    images = torch.rand(1, 3, 16, 16)
    expected_sr = adapted.restore(images, ["tree"])
    assert not torch.allclose(expected, _velocity(load_model("tiny").transformer))  # the adapter matters

    merged = load_model(adapted_dir)
    merge_model(merged)
    assert not any("lora_" in n for n, _ in merged.transformer.named_parameters())
    torch.testing.assert_close(_velocity(merged.transformer), expected, rtol=1e-4, atol=1e-5)
    out = save_model_dir(merged, tmp_path / "merged")
    plain = SanaTransformer2DModel.from_pretrained(out / "transformer")
    torch.testing.assert_close(_velocity(plain), expected, rtol=1e-4, atol=1e-5)
    assert not any("lora" in k for k in plain.state_dict())
    reloaded = load_model(out)
    assert reloaded.description.adapter is None and reloaded.description.lora["merged"] is True
    torch.testing.assert_close(reloaded.restore(images, ["tree"]), expected_sr, rtol=1e-4, atol=1e-4)


@pytest.mark.numerics
def test_merge_scale_and_ema(adapted_dir):
    base = load_model("tiny").transformer.state_dict()
    weights = {}
    for kind, kw in {"one": {}, "half": {"scale": 0.5}, "ema": {"ema": True}}.items():
        m = load_model(adapted_dir)
        record = merge_model(m, **kw)
        weights[kind] = m.transformer.state_dict()
        assert record["merged_from"] == (EMA_ADAPTER_DIR if kind == "ema" else "adapter")
    key = "transformer_blocks.0.attn1.to_q.weight"
    delta_one = weights["one"][key] - base[key]
    torch.testing.assert_close(weights["half"][key] - base[key], 0.5 * delta_one, rtol=1e-4, atol=1e-6)
    assert delta_one.abs().max() > 1e-3
    assert not torch.allclose(weights["ema"][key], weights["one"][key])


def test_cli_merge_lora_and_bad_inputs(adapted_dir, tmp_path):
    out = tmp_path / "merged"
    r = invoke("merge-lora", adapted_dir, "-o", out, "--ema", "--scale", "0.8")
    assert r.exit_code == 0, r.output
    assert (out / "transformer" / "config.json").is_file() and not (out / "adapter").exists()
    assert any((out / "transformer").glob("*.safetensors"))
    r = invoke("merge-lora", adapted_dir, "-o", out)
    assert r.exit_code == 2 and "already exists" in r.output
    r = invoke("merge-lora", out, "-o", tmp_path / "again")  # already merged: nothing to merge
    assert r.exit_code == 2 and "no LoRA adapter" in r.output and "Traceback" not in r.output
    r = invoke("merge-lora", tmp_path / "nowhere", "-o", tmp_path / "x")
    assert r.exit_code == 2 and "does not exist" in r.output
    (tmp_path / "empty").mkdir()
    r = invoke("merge-lora", tmp_path / "empty", "-o", tmp_path / "x")
    assert r.exit_code == 2 and "sanasr.json" in r.output
    for f in (out / "transformer").glob("*.safetensors"):
        f.unlink()
    r = invoke("merge-lora", out, "-o", tmp_path / "x")
    assert r.exit_code == 2 and "no weights" in r.output and "Traceback" not in r.output


def test_a_training_run_folder_means_its_newest_checkpoint(adapted_dir, tmp_path, monkeypatch):
    """Issue 35: `sanasr merge-lora runs/sr -o models/sr-merged --ema` (README) and `prune runs/sr ...`
    (prune-merge.md) were refused ("not a model directory"): a run folder is its newest checkpoint, said in one
    line. Steps compare as numbers (10 after 9), a checkpoint without sanasr.json is passed over."""
    import json
    import shutil

    run = tmp_path / "runs" / "sr"
    for step in (9, 10):
        shutil.copytree(adapted_dir, run / f"checkpoint-{step}")
    (run / "checkpoint-11").mkdir()  # a save that did not finish: no sanasr.json
    monkeypatch.chdir(tmp_path)
    merged = invoke("merge-lora", "runs/sr", "-o", "models/sr-merged", "--ema")
    assert merged.exit_code == 0, merged.output
    assert "runs/sr is a training run: using its newest checkpoint, runs/sr/checkpoint-10" in merged.output
    history = json.loads((tmp_path / "models" / "sr-merged" / "sanasr.json").read_text())["history"]
    assert history[-1]["input"] == "runs/sr/checkpoint-10" and history[-1]["ema"] is True
    pruned = invoke("prune", "runs/sr", "-o", "models/sr-tail", "--budget", "75000", "--strategy", "tail")
    assert pruned.exit_code == 0 and "runs/sr/checkpoint-10" in pruned.output, pruned.output
    assert load_model("runs/sr").source_dir.resolve() == run / "checkpoint-10"  # the Python API: the same rule
    empty = invoke("merge-lora", "runs", "-o", "models/x")
    assert empty.exit_code == 2 and "not a model directory" in empty.output, empty.output
