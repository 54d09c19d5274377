"""Model presets: the real SANA-600M 512px components and a tiny architecture demo.

Both presets use the same library classes (diffusers `SanaTransformer2DModel` and `AutoencoderDC`, transformers
`Gemma2Model`); only the configs differ. `tiny` is built from a seed with random weights and a tokenizer made
locally, so tests and the offline quick start never touch the network. It is an untrained architecture demo:
its outputs are not meaningful super-resolution.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sanasr_cli.prompts.template import APP_B_TEMPLATE, DEGRADATION_WORDS, SEC_3_2_TEMPLATE

SANA_600M_512_HUB_ID = "Efficient-Large-Model/Sana_600M_512px_diffusers"
BASE_ENV_VAR = "SANASR_BASE"


@dataclass(frozen=True)
class Preset:
    """Everything needed to build one family of components; configs are passed to the classes as they are."""

    name: str
    transformer: dict
    vae: dict
    text_encoder: dict  # transformers.Gemma2Config kwargs
    flow_shift: float
    hub_id: str | None = None  # where pretrained weights live (None: random weights only)
    max_text_length: int = 300
    notes: str = ""
    extra: dict = field(default_factory=dict)
    counting_only: bool = False  # random weights at real size: for `sanasr bench`'s counts, not for restoring
    # bf16 is `--precision auto` on a CPU with native bf16 (models/precision.py) only where the model's bf16 outputs
    # were measured to agree with fp32's (SANA-600M: 49 dB at 128 -> 512 px, issue 36)
    bf16_agrees: bool = False


_DCAE_F32C32_SANA = dict(
    in_channels=3,
    latent_channels=32,
    attention_head_dim=32,
    encoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
    decoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
    encoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
    decoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
    encoder_layers_per_block=(2, 2, 2, 3, 3, 3),
    decoder_layers_per_block=(3, 3, 3, 3, 3, 3),
    encoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
    decoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
    upsample_block_type="interpolate",
    downsample_block_type="Conv",
    decoder_norm_types="rms_norm",
    decoder_act_fns="silu",
    scaling_factor=0.41407,
)

# DC-AE-Lite (mit-han-lab/dc-ae-lite-f32c32-sana-1.1-diffusers): the DC-AE f32c32 SANA-1.0 encoder unchanged, a
# decoder of ResBlocks only (no EfficientViT blocks, no first-stage layers) with a SiLU output convolution. It is
# usable without retraining (same latent space); `--vae-decoder lite`. Counted on the meta device at 512x512:
# 939 GMACs against 1046 for the full decoder, so its gain is mostly GPU wall time (its authors: 1.8x faster).
DC_AE_LITE_HUB_ID = "mit-han-lab/dc-ae-lite-f32c32-sana-1.1-diffusers"
_DC_AE_LITE_DECODER = dict(
    decoder_block_types="ResBlock",
    decoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
    decoder_layers_per_block=(0, 3, 5, 4, 4, 4),
    decoder_qkv_multiscales=((),) * 6,
    decoder_norm_types="rms_norm",
    decoder_act_fns="silu",
    decoder_conv_act_fn="silu",
    upsample_block_type="interpolate",
)
VAE_DECODERS = ("full", "lite")  # --vae-decoder also takes a local AutoencoderDC folder

_SANA_600M_TRANSFORMER = dict(
    in_channels=32,
    out_channels=32,
    num_attention_heads=36,
    attention_head_dim=32,
    num_layers=28,
    num_cross_attention_heads=16,
    cross_attention_head_dim=72,
    cross_attention_dim=1152,
    caption_channels=2304,
    mlp_ratio=2.5,
    sample_size=16,
    patch_size=1,
    norm_elementwise_affine=False,
    norm_eps=1e-6,
)

_GEMMA2_2B = dict(
    vocab_size=256000,
    hidden_size=2304,
    intermediate_size=9216,
    num_hidden_layers=26,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    hidden_activation="gelu_pytorch_tanh",
    max_position_embeddings=8192,
    rms_norm_eps=1e-6,
    query_pre_attn_scalar=256,
    sliding_window=4096,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    pad_token_id=0,
    bos_token_id=2,
    eos_token_id=1,
)

# Tiny: 4 transformer blocks (so pruning has something to choose), tens of channels, f8 VAE.
_TINY_TEXT_HIDDEN = 32
_TINY_TRANSFORMER = dict(
    in_channels=8,
    out_channels=8,
    num_attention_heads=2,
    attention_head_dim=16,
    num_layers=4,
    num_cross_attention_heads=2,
    cross_attention_head_dim=16,
    cross_attention_dim=32,
    caption_channels=_TINY_TEXT_HIDDEN,
    mlp_ratio=2.5,
    sample_size=8,
    patch_size=1,
    norm_elementwise_affine=False,
    norm_eps=1e-6,
)
_TINY_VAE = dict(
    in_channels=3,
    latent_channels=8,
    attention_head_dim=8,
    encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
    decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
    encoder_block_out_channels=(8, 16, 16, 32),
    decoder_block_out_channels=(8, 16, 16, 32),
    encoder_layers_per_block=(1, 1, 1, 1),
    decoder_layers_per_block=(1, 1, 1, 1),
    encoder_qkv_multiscales=((), (), (5,), (5,)),
    decoder_qkv_multiscales=((), (), (5,), (5,)),
    upsample_block_type="interpolate",
    downsample_block_type="Conv",
    decoder_norm_types="rms_norm",
    decoder_act_fns="silu",
    scaling_factor=0.5,
)
_TINY_TEXT = dict(
    vocab_size=None,  # set from the locally built tokenizer
    hidden_size=_TINY_TEXT_HIDDEN,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    hidden_activation="gelu_pytorch_tanh",
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    query_pre_attn_scalar=16,
    sliding_window=256,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

# nano: a small SANA-SR trained here on real photos (recipes/nano/; model card in models/nano/). Same
# classes as the real model. The DC-AE is f4c32 (3 stages: 16/32/64 channels) rather than SANA's f32c32: the SR
# output can be no better than what the frozen decoder can draw, and on a CPU budget of minutes only a mildly
# compressing autoencoder gets well above the bicubic baseline (measured: after the same minutes, wider f4c16
# variants stayed near 22-24 dB on held-out photos). The transformer uses patch 2, so it sees one token per 8x8
# pixels; 6 LinearDiT blocks of width 128; a 2-layer random (frozen) Gemma-2 of width 64 with the local tokenizer.
_NANO_TEXT_HIDDEN = 64
_NANO_TRANSFORMER = dict(
    in_channels=32,
    out_channels=32,
    num_attention_heads=4,
    attention_head_dim=32,
    num_layers=6,
    num_cross_attention_heads=4,
    cross_attention_head_dim=32,
    cross_attention_dim=128,
    caption_channels=_NANO_TEXT_HIDDEN,
    mlp_ratio=2.5,
    sample_size=32,
    patch_size=2,
    norm_elementwise_affine=False,
    norm_eps=1e-6,
)
_NANO_VAE = dict(
    in_channels=3,
    latent_channels=32,
    attention_head_dim=16,
    encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
    decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
    encoder_block_out_channels=(16, 32, 64),
    decoder_block_out_channels=(16, 32, 64),
    encoder_layers_per_block=(1, 1, 2),
    decoder_layers_per_block=(1, 2, 2),
    encoder_qkv_multiscales=((), (), (5,)),
    decoder_qkv_multiscales=((), (), (5,)),
    upsample_block_type="interpolate",
    downsample_block_type="Conv",
    decoder_norm_types="rms_norm",
    decoder_act_fns="silu",
    scaling_factor=1.0,  # the recipe sets 1 / std of the trained encoder's latents
)
_NANO_TEXT = dict(
    vocab_size=None,  # set from the locally built tokenizer (saved with the weights)
    hidden_size=_NANO_TEXT_HIDDEN,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,
    hidden_activation="gelu_pytorch_tanh",
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
    query_pre_attn_scalar=32,
    sliding_window=1024,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
# The shipped nano files live in the package: models/nano/base (diffusers layout, like a local SANA copy) and
# models/nano/sr (the SANA-SR model directory that `--model nano` loads).
NANO_DIR = Path(__file__).resolve().parent / "nano"
# nano-fast: nano with distilled students of its DC-AE (experiments/nano_fast.py; model card in models/nano_fast/).
# Only the students ship there (encoder/, decoder/); the rest is nano's, so nano-fast follows nano's SR transformer.
NANO_FAST_DIR = NANO_DIR.parent / "nano_fast"
SHIPPED_BASE_PREFIX = "shipped:"  # base_source "shipped:nano" = the package's models/nano/base

PRESETS: dict[str, Preset] = {
    "sana-600m-512": Preset(
        name="sana-600m-512",
        transformer=_SANA_600M_TRANSFORMER,
        vae=_DCAE_F32C32_SANA,
        text_encoder=_GEMMA2_2B,
        flow_shift=3.0,
        hub_id=SANA_600M_512_HUB_ID,
        notes="SANA-600M 512px LinearDiT (28 blocks), DC-AE f32c32, Gemma-2 2B text encoder",
        bf16_agrees=True,
    ),
    "tiny": Preset(
        name="tiny",
        transformer=_TINY_TRANSFORMER,
        vae=_TINY_VAE,
        text_encoder=_TINY_TEXT,
        flow_shift=3.0,
        hub_id=None,
        max_text_length=64,
        notes="untrained architecture demo: same classes, tiny configs, random weights from a seed",
    ),
    "nano": Preset(
        name="nano",
        transformer=_NANO_TRANSFORMER,
        vae=_NANO_VAE,
        text_encoder=_NANO_TEXT,
        flow_shift=3.0,
        hub_id=SHIPPED_BASE_PREFIX + "nano",
        notes="small SANA-SR trained here on real photos (f4c32 DC-AE, 6-block LinearDiT, 2-layer Gemma-2)",
    ),
    # The cost target of `sanasr distill` at real size: SANA-600M's components with the transformer pruned to
    # 0.35B (16 of 28 blocks: all blocks are alike, so which 16 a saliency ranking keeps does not change the
    # count) and the student encoder / decoder of STUDENT_CONFIGS["sana-600m-512"]. Random weights: for counting
    # (`sanasr bench`) only; the students' quality on the real DC-AE is unmeasured (docs/distill.md).
    "sana-600m-512-fast": Preset(
        name="sana-600m-512-fast",
        transformer=dict(_SANA_600M_TRANSFORMER, num_layers=16),
        vae=_DCAE_F32C32_SANA,
        text_encoder=_GEMMA2_2B,
        flow_shift=3.0,
        hub_id=None,
        notes="counting only (random weights): SANA-600M pruned to 16 blocks (0.35B) + distilled-student shapes "
        "of the DC-AE encoder (reads the LQ) and decoder",
        extra={"students": "sana-600m-512"},
        counting_only=True,
        bf16_agrees=True,
    ),
}

# `--model NAME` for these loads the shipped SANA-SR model directory (the preset of the same name is its base).
SHIPPED_MODELS: dict[str, Path] = {"nano": NANO_DIR / "sr"}
# `--model NAME` for these loads a shipped model directory plus the students shipped in a folder of their own.
SHIPPED_STUDENTS: dict[str, tuple[str, Path]] = {"nano-fast": ("nano", NANO_FAST_DIR)}
# The names `--model` runs: the shipped models and the untrained demo, offline, then the real base (hub weights).
# The demo's list offers the offline ones, and the others only where their weights are here (demo.session).
# `sana-600m-512-fast` is for counting with `sanasr bench` only (random weights).
OFFLINE_MODELS = ("nano", "nano-fast", "tiny")
MODEL_NAMES = (*OFFLINE_MODELS, "sana-600m-512")


def resolve_base_source(source: str | None) -> str | None:
    """'shipped:nano' -> the package's models/nano/base folder; anything else unchanged."""
    if source and source.startswith(SHIPPED_BASE_PREFIX):
        return str(NANO_DIR.parent / source[len(SHIPPED_BASE_PREFIX) :] / "base")
    return source


def lite_vae_config(preset: Preset) -> dict:
    """The preset's VAE config with a DC-AE-Lite decoder: for SANA's f32c32 DC-AE the released one; for the small
    presets (tiny, nano) the same design at their widths (ResBlocks only, no layers in the first stage, SiLU
    output). The encoder part is the preset's own."""
    if preset.vae is _DCAE_F32C32_SANA:
        return {**preset.vae, **_DC_AE_LITE_DECODER}
    vae = preset.vae
    n = len(vae["decoder_block_out_channels"])
    return {
        **vae,
        "decoder_block_types": "ResBlock",
        "decoder_layers_per_block": (0, *vae["decoder_layers_per_block"][1:]),
        "decoder_qkv_multiscales": ((),) * n,
        "decoder_conv_act_fn": "silu",
    }


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset '{name}'; known presets: {', '.join(PRESETS)}") from None


def default_base_source(preset: Preset, base: str | None = None) -> str | None:
    """Where pretrained weights come from: --base, else $SANASR_BASE, else the preset's hub id."""
    return base or os.environ.get(BASE_ENV_VAR) or preset.hub_id


# Words the locally built tokenizer knows: the quality template, degradation words, and common content tags.
_LOCAL_VOCAB_WORDS = """
a an the of and with in on at to from by for is are this that photo image picture scene view close up
clean sharp best quality detailed 8k high resolution extremely highly realistic photorealistic natural
tree trees foliage leaf leaves branch grass flower flowers plant forest garden field mountain hill rock stone
sky cloud clouds sun sunset sunrise night light water sea ocean lake river beach sand snow ice wave
building house city street road car bus bicycle window door wall roof bridge tower church sign text
person man woman child face hair eye eyes hand people crowd portrait smile
dog cat bird horse animal fish insect butterfly
table chair food plate cup bottle book computer phone screen
red green blue yellow white black brown orange purple pink gray grey dark bright
texture pattern fabric wood metal glass brick
""".split()


def build_local_tokenizer(extra_words: tuple[str, ...] = ()):
    """A small word-level tokenizer made in code (no download), with offsets like a real fast tokenizer.

    Used by the tiny preset and by real-size random-weight builds (bench), where Gemma's tokenizer is not at hand.
    """
    import re

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from sanasr_cli.models.text_encoder import sana_complex_human_instruction

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    words: list[str] = []
    for phrase in (
        list(_LOCAL_VOCAB_WORDS)
        + list(DEGRADATION_WORDS)
        + APP_B_TEMPLATE.split(",")
        + SEC_3_2_TEMPLATE.split(",")
        + list(extra_words)
    ):
        for w in phrase.replace("-", " - ").lower().split():
            if w not in words and w not in specials:
                words.append(w)
    # SANA's complex human instruction, split as the Whitespace pre-tokenizer splits it (so it is no run of <unk>)
    for w in re.findall(r"\w+|[^\w\s]+", "\n".join(sana_complex_human_instruction()).lower()):
        if w not in words and w not in specials:
            words.append(w)
    words += [w for w in (",", ".", "-", "!", "?", ":", ";", "'", '"', "(", ")") if w not in words]
    vocab = {tok: i for i, tok in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="right",
    )
