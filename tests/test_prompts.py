import torch

from sanasr_cli.models.presets import build_local_tokenizer
from sanasr_cli.prompts.rule import PromptRule, prompt_for_image
from sanasr_cli.prompts.taggers import FileTagger, make_tagger
from sanasr_cli.prompts.template import DEFAULT_TEMPLATE, build_prompt, clean_tags, degradation_spans


def test_prompt_concatenation_eq12():
    assert build_prompt(["tree", "foliage"], "clean, sharp") == "tree, foliage, clean, sharp"
    assert build_prompt([], "clean, sharp") == "clean, sharp"
    assert build_prompt(["tree"], "clean", user_prompt="autumn park") == "autumn park, tree, clean"
    assert build_prompt(["tree"]) == "tree, " + DEFAULT_TEMPLATE


def test_clean_tags_drops_degradation_dedups_and_limits():
    raw = [
        "Tree",
        "blurry",
        "tree",
        " leaf ",
        "",
        "None",
        "jpeg artifacts",
        "low quality photo",
        "sky",
        "branch",
    ]
    assert clean_tags(raw) == ["tree", "leaf", "sky", "branch"]
    assert clean_tags(raw, limit=2) == ["tree", "leaf"]


def test_degradation_spans_whole_words_only():
    text = "blurry tree, noisy sky, jpeg artifacts, blueberry, noiseless"
    words = [text[a:b] for a, b in degradation_spans(text)]
    assert words == ["blurry", "noisy", "jpeg artifacts"]


def test_mask_zeroes_degradation_tokens(tiny_model):
    enc = tiny_model.prompts
    prompt = "tree, blurry, low quality, sky, " + DEFAULT_TEMPLATE
    tok = enc.tokenize([prompt])
    tokens = enc.tokenizer.convert_ids_to_tokens(tok["input_ids"][0])
    attn, mask = tok["attention_mask"][0], tok["mask"][0]
    masked = [t for t, a, m in zip(tokens, attn, mask, strict=True) if a == 1 and m == 0]
    assert masked == ["blurry", "low", "quality"]
    # "best quality" of the template stays visible; padding stays masked
    kept = [t for t, m in zip(tokens, mask, strict=True) if m == 1]
    assert "best" in kept and "quality" in kept and "tree" in kept and "sky" in kept
    assert attn.sum() < len(attn)  # right padding to max_length
    # the encoder runs over SANA's instruction + the prompt: len(CHI tokens) + max_length - 2 positions
    assert tok["input_ids"].shape[1] == enc.token_budget > enc.max_length
    embeds, m = enc.encode([prompt])
    assert embeds.shape[1] == m.shape[1] == enc.max_length  # first token + the last max_length - 1


def test_mask_can_be_turned_off(tiny_model):
    from sanasr_cli.models.text_encoder import PromptEncoder

    enc = PromptEncoder(
        tiny_model.prompts.tokenizer,
        tiny_model.prompts.text_encoder,
        max_length=32,
        mask_degradation_words=False,
    )
    tok = enc.tokenize(["blurry tree"])
    torch.testing.assert_close(tok["mask"], tok["attention_mask"])


def test_encode_caches_identical_prompts(tiny_model):
    enc = tiny_model.prompts
    calls = []
    handle = enc.text_encoder.register_forward_hook(lambda m, i, o: calls.append(i))
    try:
        enc._cache.clear()
        e1, m1 = enc.encode(["a tree", "a tree", "sky"])
        e2, m2 = enc.encode(["sky"])
    finally:
        handle.remove()
    assert len(calls) == 1  # one batched call for the two distinct prompts, none for the cached one
    torch.testing.assert_close(e1[0], e1[1])
    torch.testing.assert_close(e1[2], e2[0])
    assert e1.shape == (3, enc.max_length, enc.hidden_size)


def test_file_tagger_reads_txt_beside_image(tmp_path):
    img = tmp_path / "cat.png"
    img.write_bytes(b"")
    (tmp_path / "cat.txt").write_text("cat, blurry\nsofa")
    assert FileTagger().tags(None, img) == ["cat", " blurry", "sofa"]
    rule = PromptRule(tagger="file", template="clean")
    assert prompt_for_image(rule, None, img) == "cat, sofa, clean"
    assert prompt_for_image(rule, None, tmp_path / "dog.png") == "clean"  # no tag file: template only
    assert make_tagger("none").tags(None, img) == []


def test_local_tokenizer_has_offsets_and_right_padding():
    tok = build_local_tokenizer()
    enc = tok(["tree sky"], padding="max_length", max_length=6, return_offsets_mapping=True)
    assert enc["attention_mask"][0] == [1, 1, 1, 0, 0, 0]
    assert enc["offset_mapping"][0][1] == (0, 4)


def test_default_template_is_app_b_and_the_local_tokenizer_knows_both():
    """App. B's suffix is the default (the experiments used it); Sec. 3.2's stays available by name. The tiny
    preset's word-level tokenizer must know every word of both, or their tokens would all be <unk>."""
    from sanasr_cli.prompts.template import APP_B_TEMPLATE, SEC_3_2_TEMPLATE

    assert DEFAULT_TEMPLATE == APP_B_TEMPLATE == "clean, extremely detailed, best quality, sharp, high-resolution"
    assert SEC_3_2_TEMPLATE == "clean, sharp, best quality, detailed, 8K, high-resolution"
    assert PromptRule().template == APP_B_TEMPLATE  # what a new model records
    tok = build_local_tokenizer()
    for template in (APP_B_TEMPLATE, SEC_3_2_TEMPLATE):
        ids = tok(template)["input_ids"]
        assert tok.unk_token_id not in ids and len(ids) > len(template.split(",")), template


def test_rule_overrides_change_only_what_is_given_and_name_what_cannot_apply():
    import pytest

    from sanasr_cli.errors import PromptRuleError

    model_rule = PromptRule(tagger="clip", template="clean", tagger_options={"model": "m", "top_k": 4})
    assert model_rule.with_overrides() == model_rule and model_rule.with_overrides() is not model_rule
    same_tagger = model_rule.with_overrides(tagger="clip", tag_vocab="v.txt", template="crisp")
    assert same_tagger.tagger_options == {"model": "m", "top_k": 4, "vocab": "v.txt"}
    assert same_tagger.template == "crisp" and model_rule.tagger_options == {"model": "m", "top_k": 4}
    dape = model_rule.with_overrides(tagger="dape", tagger_weights="w")  # clip's options do not carry over
    assert (dape.tagger, dape.tagger_options, dape.template) == ("dape", {"weights": "w"}, "clean")
    with pytest.raises(PromptRuleError, match="unknown tagger 'ram'; known: clip, dape, file, none"):
        model_rule.with_overrides(tagger="ram")
    with pytest.raises(PromptRuleError, match=r"--tagger-weights applies to the dape tagger, not 'clip'"):
        model_rule.with_overrides(tagger_weights="w")
    with pytest.raises(ValueError, match="--tagger-model applies to the clip tagger, not 'none'"):
        model_rule.with_overrides(tagger="none", tagger_model="m")  # a ValueError for Python callers


def test_the_python_api_takes_the_same_overrides(tmp_path):
    import pytest
    from PIL import Image

    from sanasr_cli import SanaSRPipeline
    from sanasr_cli.errors import PromptRuleError
    from tests.helpers import make_photo_like

    photo = tmp_path / "cat.png"
    Image.fromarray(make_photo_like(8, 8, 1)).save(photo)
    photo.with_suffix(".txt").write_text("tabby cat, sofa")
    pipe = SanaSRPipeline.from_pretrained("tiny", tagger="file", template="crisp")
    assert (pipe.prompt_rule.tagger, pipe.prompt_rule.template) == ("file", "crisp")
    assert pipe.model.description.prompt.tagger == "none"  # the model's own rule is untouched
    with Image.open(photo) as im:
        assert pipe(im, output_type="pt").prompts == ["tabby cat, sofa, crisp"]
    with pytest.raises(PromptRuleError, match="--tag-vocab applies to the clip tagger"):
        SanaSRPipeline.from_pretrained("tiny", tag_vocab="tags.txt")
