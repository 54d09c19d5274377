import json

import pytest
import torch

from sanasr_cli.errors import ModelDirError
from sanasr_cli.models.description import ModelDescription
from sanasr_cli.models.lora import add_lora, lora_config, lora_parameters
from sanasr_cli.models.sanasr import load_model, save_model_dir


def _run(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, 20, 28, generator=g)
    return model.restore(x, ["tree, " + model.description.prompt.template])


def test_save_load_round_trip_gives_identical_outputs(fresh_tiny_model, tmp_path):
    model = fresh_tiny_model
    model.restorer.tau_g = 850.0
    model.description.prompt.template = "clean, sharp"
    with torch.no_grad():  # change the weights so a silent fallback to the seed would be caught
        model.transformer.transformer_blocks[1].attn1.to_q.weight.mul_(1.5)
    expected = _run(model)
    out = save_model_dir(model, tmp_path / "m")
    assert (out / "sanasr.json").is_file()
    assert (out / "transformer" / "config.json").is_file()
    assert list((out / "transformer").glob("*.safetensors"))
    loaded = load_model(out)
    assert loaded.restorer.tau_g == 850.0
    assert loaded.description.prompt.template == "clean, sharp"
    torch.testing.assert_close(_run(loaded), expected, rtol=0, atol=0)


def test_model_dir_without_transformer_uses_the_seeded_base(tiny_model, tmp_path):
    out = save_model_dir(tiny_model, tmp_path / "m", save_transformer=False)
    assert not (out / "transformer").exists()
    desc = json.loads((out / "sanasr.json").read_text())
    assert desc["transformer"] == "base" and desc["base_preset"] == "tiny" and desc["random_seed"] == 0
    torch.testing.assert_close(_run(load_model(out)), _run(tiny_model), rtol=0, atol=0)


def test_adapter_round_trip_and_peft_folder(fresh_tiny_model, tmp_path):
    model = fresh_tiny_model
    add_lora(model.transformer, lora_config(rank=4, alpha=8))
    with torch.no_grad():
        for p in lora_parameters(model.transformer):
            p.normal_(0, 0.05)
    expected = _run(model)
    out = save_model_dir(model, tmp_path / "m", save_transformer=False)
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    loaded = load_model(out)
    torch.testing.assert_close(_run(loaded), expected, rtol=0, atol=0)

    # the adapter folder is a plain PEFT folder
    from peft import PeftModel

    from sanasr_cli.models.presets import get_preset
    from sanasr_cli.models.sanasr import build_random_transformer

    peft_model = PeftModel.from_pretrained(build_random_transformer(get_preset("tiny"), 0), str(out / "adapter"))
    names = [n for n, _ in peft_model.named_parameters() if "lora_A" in n]
    assert names and any("attn2.to_out.0" in n for n in names)


def test_refuses_to_overwrite_and_is_atomic(tiny_model, tmp_path):
    out = save_model_dir(tiny_model, tmp_path / "m", save_transformer=False)
    with pytest.raises(FileExistsError):
        save_model_dir(tiny_model, out, save_transformer=False)
    save_model_dir(tiny_model, out, save_transformer=False, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temp folders left behind


def test_unknown_spec_and_broken_dirs(tmp_path):
    with pytest.raises(ModelDirError, match="neither a preset"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelDirError, match="sanasr.json not found"):
        load_model(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "sanasr.json").write_text("{not json")
    with pytest.raises(ModelDirError, match="not valid JSON"):
        load_model(bad)
    noweights = tmp_path / "noweights"
    noweights.mkdir()
    ModelDescription(transformer="transformer").save(noweights)
    with pytest.raises(ModelDirError, match="no config.json"):
        load_model(noweights)
