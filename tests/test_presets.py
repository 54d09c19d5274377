import pytest
import torch

from sanasr_cli.errors import MissingWeightsError, ModelDirError
from sanasr_cli.models.presets import get_preset
from sanasr_cli.models.sanasr import build_random_transformer, load_model


def test_sana_600m_architecture_with_random_weights():
    """The real-size transformer builds without any download: 28 blocks, about 592 M parameters."""
    with torch.device("meta"):
        transformer = build_random_transformer(get_preset("sana-600m-512"), seed=0)
    assert len(transformer.transformer_blocks) == 28
    n = sum(p.numel() for p in transformer.parameters())
    assert 590e6 < n < 594e6
    per_block = sum(p.numel() for p in transformer.transformer_blocks[0].parameters())
    assert per_block == pytest.approx(20.65e6, rel=1e-3)


def test_one_real_size_block_runs_on_cpu():
    """A real-size block with real (random) weights, on CPU: shapes of SANA-600M at 512 px (16x16 latents)."""
    from diffusers import SanaTransformer2DModel

    cfg = dict(get_preset("sana-600m-512").transformer, num_layers=1)
    torch.manual_seed(0)
    t = SanaTransformer2DModel(**cfg).eval()
    with torch.no_grad():
        out = t(
            torch.randn(1, 32, 16, 16),
            encoder_hidden_states=torch.randn(1, 8, 2304),
            timestep=torch.tensor([900.0]),
            return_dict=False,
        )[0]
    assert out.shape == (1, 32, 16, 16) and torch.isfinite(out).all()


def test_tiny_is_deterministic_from_the_seed():
    a = load_model("tiny", seed=3)
    b = load_model("tiny", seed=3)
    c = load_model("tiny", seed=4)
    wa = a.transformer.transformer_blocks[0].attn1.to_q.weight
    torch.testing.assert_close(wa, b.transformer.transformer_blocks[0].attn1.to_q.weight)
    assert not torch.equal(wa, c.transformer.transformer_blocks[0].attn1.to_q.weight)
    assert len(a.transformer.transformer_blocks) >= 4


def test_missing_local_base_names_component_and_fix(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingWeightsError) as info:
        load_model("sana-600m-512", base=str(tmp_path / "empty"))
    msg = str(info.value)
    assert "'transformer'" in msg and str(tmp_path / "empty") in msg and "--base" in msg
    with pytest.raises(ModelDirError, match="not found"):  # not there at all: never looked up on the hub
        load_model("sana-600m-512", base=str(tmp_path / "nowhere"))


def test_missing_hub_weights_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("SANASR_BASE", raising=False)
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(MissingWeightsError) as info:
        load_model("sana-600m-512")
    msg = str(info.value)
    assert "Efficient-Large-Model/Sana_600M_512px_diffusers" in msg and "transformer" in msg
    assert "HF_HUB_OFFLINE" in msg


def test_partial_local_base_names_the_missing_component(tmp_path):
    """A local copy with only a transformer: the error names the VAE, the next missing piece."""
    from sanasr_cli.models.presets import get_preset as gp

    cfg = dict(gp("tiny").transformer)
    from diffusers import SanaTransformer2DModel

    SanaTransformer2DModel(**cfg).save_pretrained(tmp_path / "base" / "transformer")
    with pytest.raises(MissingWeightsError) as info:
        load_model("sana-600m-512", base=str(tmp_path / "base"))
    assert "'vae'" in str(info.value)
