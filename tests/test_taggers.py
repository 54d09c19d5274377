"""Taggers (clip, dape), the shared post-processing, the tag cache and the one-prompt-rule protocol.

The CLIP tagger runs on a tiny random `CLIPModel` saved to a folder with a tokenizer built in code and a real
`CLIPImageProcessor` (no download). The dape tagger's package (SeeSR's `ram`) is not installable from PyPI, so
its missing-package / missing-weights messages are what is tested here.
"""

import copy
import json

import pytest
import torch
from PIL import Image

from sanasr_cli.cli import app
from sanasr_cli.errors import TaggerUnavailableError
from sanasr_cli.prompts import dape
from sanasr_cli.prompts.base import tagger_input
from sanasr_cli.prompts.cache import CachedTagger, default_cache_dir
from sanasr_cli.prompts.clip_tagger import ClipTagger, load_vocabulary, parse_vocabulary, select_tags
from sanasr_cli.prompts.rule import PromptRule, measure_tagger, prompt_for_image, rule_mismatch, tag_files
from sanasr_cli.prompts.taggers import make_tagger
from sanasr_cli.prompts.template import is_degradation_word
from tests.helpers import make_photo_like, runner


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(make_photo_like(24, 20, 5)).save(path)
    return path


def _read(path):
    from sanasr_cli.data.io import read_image

    return read_image(path)[0]


# ---------------------------------------------------------------- vocabulary and top-k selection


def test_builtin_vocabulary_is_clean_content_words():
    vocab = load_vocabulary()
    assert len(vocab) > 300
    assert len(set(vocab)) == len(vocab)
    assert not [t for t in vocab if is_degradation_word(t)]
    assert not [t for t in vocab if t.startswith("#") or t != t.strip()]
    assert {"tree", "dog", "building", "sky"} <= set(vocab)


def test_vocabulary_file_parsing_and_errors(tmp_path):
    assert parse_vocabulary("# comment\ntree\n\n  palm   tree  # inline\ntree\nsky\n") == [
        "tree",
        "palm tree",
        "sky",
    ]
    f = tmp_path / "v.txt"
    f.write_text("cat\ndog\n")
    assert load_vocabulary(f) == ["cat", "dog"]
    with pytest.raises(TaggerUnavailableError, match="not found"):
        load_vocabulary(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(TaggerUnavailableError, match="no tags"):
        load_vocabulary(tmp_path / "empty.txt")


def test_select_tags_top_k_threshold_and_order():
    vocab = ["a", "b", "c", "d", "e"]
    scores = torch.tensor([0.10, 0.40, 0.05, 0.40, 0.05])
    assert select_tags(scores, vocab, top_k=3, threshold=0.0) == ["b", "d", "a"]  # tie keeps vocabulary order
    assert select_tags(scores, vocab, top_k=10, threshold=0.06) == ["b", "d", "a"]
    assert select_tags(scores, vocab, top_k=1, threshold=0.0) == ["b"]
    assert select_tags(scores, vocab, top_k=5, threshold=0.5) == []
    assert select_tags(scores, vocab, top_k=0, threshold=0.0) == []
    with pytest.raises(ValueError):
        select_tags(scores[:3], vocab, top_k=2, threshold=0.0)


def test_tagger_input_upsamples_x4_then_resizes():
    x = torch.rand(3, 10, 7)
    assert tagger_input(x).shape == (1, 3, 40, 28)
    y = tagger_input(x, 32)
    assert y.shape == (1, 3, 32, 32) and 0 <= y.min() and y.max() <= 1


# ---------------------------------------------------------------- the clip tagger on a tiny random CLIP


def test_clip_scores_match_clipmodel_forward(tiny_clip, photo):
    from transformers import CLIPModel, CLIPProcessor

    vocab = ["tree", "dog", "sky", "building", "car"]
    vfile = photo.parent / "v.txt"
    vfile.write_text("\n".join(vocab))
    tagger = ClipTagger(model=str(tiny_clip), vocab=vfile, top_k=3, threshold=0.0)
    image = _read(photo)
    scores = tagger.scores(image)
    assert scores.shape == (5,) and torch.isclose(scores.sum(), torch.tensor(1.0))

    # independent reference: CLIPModel.forward on the same inputs
    model, proc = CLIPModel.from_pretrained(tiny_clip), CLIPProcessor.from_pretrained(tiny_clip)
    enc = proc.tokenizer([f"a photo of {t}" for t in vocab], padding=True, return_tensors="pt")
    pixels = proc(images=tagger_input(image), do_rescale=False, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=pixels)
    torch.testing.assert_close(scores, ref.logits_per_image.softmax(-1)[0], rtol=1e-5, atol=1e-6)

    tags = tagger.tags(image, photo)
    assert tags == select_tags(scores, vocab, 3, 0.0) and len(tags) == 3
    assert ClipTagger(model=str(tiny_clip), vocab=vfile, top_k=5, threshold=1.01).tags(image, photo) == []


def test_same_post_processing_for_clip_tags(tiny_clip, photo, tmp_path):
    vfile = tmp_path / "v.txt"
    vfile.write_text("Tree\nblurry\njpeg artifacts\nsky\nnone\n")
    rule = PromptRule(
        tagger="clip",
        template="clean",
        tag_limit=5,
        tagger_options={"model": str(tiny_clip), "vocab": str(vfile), "top_k": 5, "threshold": 0.0},
    )
    tagger = make_tagger("clip", **rule.normalized().tagger_options)
    raw = tagger.tags(_read(photo), photo)
    assert sorted(raw) == sorted(["Tree", "blurry", "jpeg artifacts", "sky", "none"])
    prompt = prompt_for_image(rule, _read(photo), photo, tagger=tagger)
    kept = [t for t in raw if t.lower() in ("tree", "sky")]
    assert prompt == ", ".join([t.lower() for t in kept] + ["clean"])  # confidence order, degradation words gone


def test_clip_missing_model_is_one_clear_error(tmp_path, photo):
    tagger = ClipTagger(model=str(tmp_path / "no_clip_here"))
    with pytest.raises(TaggerUnavailableError, match="--tagger-model"):
        tagger.tags(_read(photo), photo)


# ---------------------------------------------------------------- the tag cache


def test_cache_second_call_does_not_run_the_tagger(tiny_clip, photo, tmp_path):
    cache = tmp_path / "cache"
    first = CachedTagger(ClipTagger(model=str(tiny_clip)), cache)
    tags = first.tags(_read(photo), photo)
    assert first.runs == 1 and first.hits == 0
    assert len(list(cache.rglob("*.json"))) == 1

    # a new command (new tagger object, same cache folder): the CLIP model is never even loaded
    inner = ClipTagger(model=str(tiny_clip))
    second = CachedTagger(inner, cache)
    assert second.tags(_read(photo), photo) == tags
    assert second.runs == 0 and second.hits == 1 and inner.model is None

    # the key is the content, not the path: a copy elsewhere hits; changed bytes miss
    copy_path = tmp_path / "elsewhere.png"
    copy_path.write_bytes(photo.read_bytes())
    assert second.tags(_read(copy_path), copy_path) == tags and second.runs == 0
    Image.fromarray(make_photo_like(24, 20, 6)).save(photo)
    second.tags(_read(photo), photo)
    assert second.runs == 1

    # another tagger identity (other top_k) misses too
    other = CachedTagger(ClipTagger(model=str(tiny_clip), top_k=2), cache)
    other.tags(_read(copy_path), copy_path)
    assert other.runs == 1


def test_cache_survives_damaged_entries_and_can_be_off(tiny_clip, photo, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    CachedTagger(ClipTagger(model=str(tiny_clip)), cache).tags(_read(photo), photo)
    (entry,) = cache.rglob("*.json")
    assert json.loads(entry.read_text())["file"] == "photo.png"
    entry.write_text("{not json")
    again = CachedTagger(ClipTagger(model=str(tiny_clip)), cache)
    again.tags(_read(photo), photo)
    assert again.runs == 1 and json.loads(entry.read_text())["tags"]  # rewritten
    monkeypatch.setenv("SANASR_TAG_CACHE", "off")
    assert default_cache_dir() is None
    monkeypatch.setenv("SANASR_TAG_CACHE", str(tmp_path / "c2"))
    assert default_cache_dir() == tmp_path / "c2"
    assert default_cache_dir(tmp_path / "c3") == tmp_path / "c3"


def test_tag_files_fills_the_cache_then_releases(tiny_clip, image_folder, tmp_path):
    released = []

    class Recording(ClipTagger):
        def release(self):
            released.append(True)
            super().release()

    paths = sorted(image_folder.iterdir())
    cached = CachedTagger(Recording(model=str(tiny_clip)), tmp_path / "cache")
    tags = tag_files(cached, paths)
    assert set(tags) == {str(p) for p in paths} and cached.runs == 3 and released == [True]
    assert tag_files(cached, paths) == tags and cached.runs == 3  # all from the cache


def test_measure_tagger_reports_its_own_cost(tiny_clip):
    cost = measure_tagger(ClipTagger(model=str(tiny_clip)), torch.rand(3, 16, 16), repeats=2)
    assert cost.tagger == "clip" and cost.image_size == (16, 16)
    assert cost.params == sum(
        p.numel() for p in __import__("transformers").CLIPModel.from_pretrained(tiny_clip).parameters()
    )
    assert cost.first_seconds > 0 and cost.median_seconds > 0 and cost.peak_cuda_bytes is None
    assert cost.macs is not None and cost.macs > 0


def test_clip_image_macs_matches_a_real_forward(tiny_clip):
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPConfig, CLIPModel

    from sanasr_cli.prompts.clip_tagger import clip_image_macs

    cfg = CLIPConfig.from_pretrained(tiny_clip)
    model = CLIPModel.from_pretrained(tiny_clip, attn_implementation="eager")  # eager: counted on CPU too
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.get_image_features(pixel_values=torch.zeros(1, 3, 32, 32))
    assert clip_image_macs(cfg) == counter.get_total_flops() // 2 > 0
    assert ClipTagger(model=str(tiny_clip)).count_macs() == clip_image_macs(cfg)


# ---------------------------------------------------------------- dape (SeeSR's ram): requirements


def test_dape_missing_package_message_names_install_and_files(tmp_path):
    assert not dape.ram_available()  # SeeSR's ram is not on PyPI; if this fails, the real path can be tested
    with pytest.raises(TaggerUnavailableError) as e:
        make_tagger("dape", weights=str(tmp_path))
    msg = str(e.value)
    assert "ram.models.ram_lora" in msg and "git clone https://github.com/cswry/SeeSR" in msg
    assert "ram_swin_large_14m.pth" in msg and "DAPE.pth" in msg and "\n" not in msg


def test_dape_missing_weights_messages(tmp_path):
    missing = dape.missing_requirements(None, have_package=True)
    assert len(missing) == 1 and "--tagger-weights" in missing[0] and "DAPE.pth" in missing[0]
    (tmp_path / "DAPE.pth").write_bytes(b"x")
    missing = dape.missing_requirements(tmp_path, have_package=True)
    assert len(missing) == 1 and str(tmp_path / "ram_swin_large_14m.pth") in missing[0]
    assert str(tmp_path / "DAPE.pth") not in missing[0]
    (tmp_path / "ram_swin_large_14m.pth").write_bytes(b"x")
    assert dape.missing_requirements(tmp_path, have_package=True) == []
    assert dape.missing_requirements(tmp_path / "DAPE.pth", have_package=True) == []  # the file form
    assert len(dape.missing_requirements(None, have_package=False)) == 2


def test_dape_input_and_tag_parsing():
    x = torch.full((3, 20, 30), 0.485)
    y = dape.dape_input(x)
    assert y.shape == (1, 3, 384, 384) and y.dtype == torch.float32
    assert y[0, 0].abs().max() < 1e-4  # the red channel sits at ImageNet's mean
    torch.testing.assert_close(y[0, 2], torch.full((384, 384), (0.485 - 0.406) / 0.225), rtol=0, atol=1e-4)
    assert dape.parse_ram_tags("tree, leaf,  sky") == ["tree", "leaf", "sky"]
    assert dape.parse_ram_tags("tree | leaf | ") == ["tree", "leaf"]


def test_ram_checkpoints_are_loaded_without_pickle_code(tmp_path):
    import fractions
    import pickle

    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.ones(2)}, "extra": fractions.Fraction(1, 3)}, path)
    assert isinstance(torch.load(path, weights_only=False)["extra"], fractions.Fraction)  # plain torch
    with dape._weights_only_torch_load():
        with pytest.raises(pickle.UnpicklingError):
            torch.load(path)  # as RAM's loader calls it: no weights_only argument
        with pytest.raises(pickle.UnpicklingError):
            torch.load(path, weights_only=False)  # forced, whatever the caller asks
    torch.save({"model": {"w": torch.ones(2)}}, tmp_path / "ok.pth")
    with dape._weights_only_torch_load():
        assert torch.equal(torch.load(tmp_path / "ok.pth")["model"]["w"], torch.ones(2))
    assert torch.load is not None and torch.load.__name__ == "load"  # restored


def test_cli_dape_unavailable_is_one_line_exit_1(image_folder, tmp_path):
    result = runner.invoke(
        app,
        [
            "upscale",
            str(image_folder),
            "-o",
            str(tmp_path / "o"),
            "--model",
            "tiny",
            "--tagger",
            "dape",
            "--tagger-weights",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 1, result.output
    assert "dape tagger cannot run" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- one prompt rule: mismatch warnings


def test_rule_mismatch_one_line_per_field():
    model = PromptRule(tagger="clip", tagger_options={"model": "m1"})
    assert rule_mismatch(model, PromptRule(tagger="clip", tagger_options={"model": "m1", "top_k": 8})) == []
    lines = rule_mismatch(
        model, PromptRule(tagger="clip", template="clean", tagger_options={"model": "m2", "threshold": 0.2})
    )
    assert len(lines) == 3
    assert any(line.startswith("template:") for line in lines)
    assert any("tagger option model: 'm1' vs 'm2'" in line for line in lines)
    assert any("tagger option threshold: 0.01 vs 0.2" in line for line in lines)
    lines = rule_mismatch(model, PromptRule(tagger="none"))
    assert len(lines) == 1 and lines[0].startswith("tagger: 'clip' vs 'none'")  # other taggers' options: not compared
    assert PromptRule.from_dict(
        PromptRule(tagger="dape", tagger_options={"weights": "w"}).to_dict()
    ).tagger_options == {"weights": "w"}


@pytest.fixture
def model_dir_with_file_rule(tiny_model, tmp_path):
    from sanasr_cli.models.sanasr import save_model_dir

    desc = copy.deepcopy(tiny_model.description)
    desc.prompt = PromptRule(tagger="file", template="clean, sharp")
    return save_model_dir(tiny_model, tmp_path / "m", description=desc, save_transformer=False)


def test_cli_warns_on_rule_mismatch(model_dir_with_file_rule, image_folder, tmp_path):
    args = [
        "upscale",
        str(image_folder / "a.png"),
        "-o",
        str(tmp_path / "o"),
        "--model",
        str(model_dir_with_file_rule),
    ]
    same = runner.invoke(app, args)
    assert same.exit_code == 0, same.output
    assert "warning" not in same.output

    other = runner.invoke(app, args + ["--tagger", "none", "--template", "crisp"])
    assert other.exit_code == 0, other.output
    lines = [line for line in other.output.splitlines() if line.startswith("warning:   ")]
    assert len(lines) == 2
    assert "tagger: 'file' vs 'none'" in lines[0] and "template: 'clean, sharp' vs 'crisp'" in lines[1]


def test_cli_option_of_another_tagger_is_a_usage_error(image_folder, tmp_path):
    result = runner.invoke(
        app,
        ["upscale", str(image_folder), "-o", str(tmp_path / "o"), "--model", "tiny", "--tagger-model", "x"],
    )
    assert result.exit_code == 2 and "applies to the clip tagger" in result.output


def test_cli_upscale_with_clip_tagger_fills_the_cache_once(tiny_clip, image_folder, tmp_path):
    cache = tmp_path / "cache"
    args = [
        "upscale",
        str(image_folder),
        "-o",
        str(tmp_path / "o"),
        "--model",
        "tiny",
        "--tagger",
        "clip",
        "--tagger-model",
        str(tiny_clip),
        "--tag-cache",
        str(cache),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output  # a preset has no trained prompt rule to differ from
    entries = sorted(cache.rglob("*.json"))
    assert len(entries) == 3
    mtimes = [e.stat().st_mtime_ns for e in entries]
    assert runner.invoke(app, args).exit_code == 0
    assert [e.stat().st_mtime_ns for e in sorted(cache.rglob("*.json"))] == mtimes  # nothing re-tagged


def test_cli_clip_model_not_found_is_one_line_exit_1(image_folder, tmp_path):
    result = runner.invoke(
        app,
        [
            "upscale",
            str(image_folder),
            "-o",
            str(tmp_path / "o"),
            "--model",
            "tiny",
            "--tagger",
            "clip",
            "--tagger-model",
            str(tmp_path / "no_clip"),
            "--tag-cache",
            "off",
        ],
    )
    assert result.exit_code == 1, result.output
    assert "could not be loaded" in result.output and "Traceback" not in result.output


def test_tag_files_skips_unreadable_files(tiny_clip, image_folder, tmp_path):
    (image_folder / "broken.png").write_text("not a png")
    paths = sorted(image_folder.iterdir())
    seen = []
    tags = tag_files(CachedTagger(ClipTagger(model=str(tiny_clip)), None), paths, on_done=seen.append)
    assert seen == paths and str(image_folder / "broken.png") not in tags and len(tags) == 3


def test_upscale_prompts_come_from_the_same_rule_and_cache(tiny_model, tiny_clip, image_folder, tmp_path):
    from sanasr_cli.pipeline.upscale import UpscaleOptions, upscale_files
    from sanasr_cli.prompts.rule import tagger_from_rule

    rule = PromptRule(
        tagger="clip", template="clean", tagger_options={"model": str(tiny_clip), "top_k": 3, "threshold": 0.0}
    )
    cache = tmp_path / "cache"
    paths = sorted(image_folder.iterdir())[:2]
    options = UpscaleOptions(scale=1.0, prompt_rule=rule, tagger=tagger_from_rule(rule, cache_dir=cache))
    records = upscale_files(tiny_model, paths, image_folder, tmp_path / "o", options)
    assert [r.status for r in records] == ["ok", "ok"]
    # what eval / train would compute for the same files: same prompts, without running the tagger again
    again = tagger_from_rule(rule, cache_dir=cache)
    assert [prompt_for_image(rule, _read(p), p, tagger=again) for p in paths] == [r.prompt for r in records]
    assert again.runs == 0 and again.tagger.model is None
    assert all(r.prompt.endswith(", clean") and r.prompt.count(",") == 3 for r in records)


def test_training_prompts_tag_the_protocols_crop_with_an_image_tagger(tiny_clip):
    """batch_prompts hands an image tagger the HQ crop under hq and the LQ crop under lq (never a path: crop
    tags must not enter the per-file cache)."""
    from sanasr_cli.training.data import ItemFiles, batch_prompts

    options = {"model": str(tiny_clip), "top_k": 8, "threshold": 0.0}
    rule = PromptRule(tagger="clip", template="clean", tagger_options=options)
    tagger = make_tagger("clip", **rule.normalized().tagger_options)
    hq = torch.from_numpy(make_photo_like(32, 32, 1)).permute(2, 0, 1)[None].float() / 255
    lq = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))  # other content, other tags
    by_image = {name: prompt_for_image(rule, img[0], None, tagger) for name, img in (("hq", hq), ("lq", lq))}
    assert by_image["hq"] != by_image["lq"]
    files = [ItemFiles(None, None)]
    for source in ("hq", "lq"):
        assert batch_prompts(rule, tagger, source, lq, hq, files) == [by_image[source]]
