"""`sanasr prune` on the tiny preset: fisher end to end, strategies, saved folder, errors, gate."""

import itertools
import json

import pytest
import torch

from sanasr_cli.pruning.blocks import block_sizes, count_parameters
from sanasr_cli.pruning.calibrate import CalibrationBatch
from sanasr_cli.pruning.prune import PruneOptions, prune_model, save_pruned
from sanasr_cli.pruning.report import REPORT_FILE
from sanasr_cli.pruning.saliency import magnitude_block_saliency
from sanasr_cli.training.losses import PerceptualLoss
from tests.helpers import invoke, pair_folder, photo_folder

# tiny: P_fix 18376, P_l 17984 x 4 blocks -> 3 blocks need 72328, the minimum (blocks 0 and 3) is 54344
THREE_BLOCKS = 75_000


def _batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    for i in itertools.count():
        hq = torch.rand(1, 3, 16, 16, generator=g)
        lq = torch.nn.functional.avg_pool2d(hq, 4)
        up = torch.nn.functional.interpolate(lq, scale_factor=4, mode="bicubic").clamp(0, 1)
        yield CalibrationBatch(up, hq, [["tree", "sky, blurry"][i % 2] + ", clean, sharp"])


@pytest.mark.numerics
def test_fisher_prune_end_to_end(fresh_tiny_model, tmp_path):
    from diffusers import SanaTransformer2DModel

    from sanasr_cli.models.sanasr import load_model

    model = fresh_tiny_model
    seen = []
    options = PruneOptions(budget=THREE_BLOCKS, budget_text="75K", strategy="fisher", steps=2, seed=1)
    pruned, report = prune_model(model, options, _batches(), PerceptualLoss(random_backbone=True), on_step=seen.append)
    assert [s.step for s in seen] == [1, 2]
    cal = report.calibration
    assert all(70 <= t <= 650 for t in cal["timesteps"]) and cal["steps"] == 2
    assert report.kept[0] == 0 and report.kept[-1] == 3 and len(report.kept) == 3
    scores = [b.saliency for b in report.blocks]
    middle = max((1, 2), key=lambda i: (scores[i], -i))
    assert report.kept == [0, middle, 3] and all(s > 0 for s in scores)
    assert report.macs_after < report.macs_before
    assert all(p.grad is None and not p.requires_grad for p in model.transformer.parameters())

    out = save_pruned(model, pruned, report, tmp_path / "pruned")
    saved = json.loads((out / REPORT_FILE).read_text())
    loaded = SanaTransformer2DModel.from_pretrained(out / "transformer")
    assert loaded.config.num_layers == 3 == saved["num_blocks_after"]
    assert count_parameters(loaded) == saved["params_after"] == report.params_after <= THREE_BLOCKS
    assert saved["params_before"] == count_parameters(model.transformer)
    assert saved["kept"] == report.kept and saved["steps"] == 2 and saved["seed"] == 1
    assert [b["params"] for b in saved["blocks"]] == list(block_sizes(model.transformer).block)
    # the pruned model directory loads and runs; its outputs are the pruned transformer's
    reloaded = load_model(out)
    assert reloaded.description.pruning["kept"] == report.kept
    x = torch.rand(1, 3, 16, 16)
    model.restorer.transformer = pruned
    torch.testing.assert_close(reloaded.restore(x, ["tree"]), model.restore(x, ["tree"]))


def _report(folder):
    return json.loads((folder / REPORT_FILE).read_text())


def test_cli_baseline_strategies(tmp_path):
    from sanasr_cli.models.presets import PRESETS
    from sanasr_cli.models.sanasr import build_random_transformer

    kept = {}
    for i, (strategy, seed) in enumerate([("tail", 0), ("magnitude", 0), ("random", 3), ("random", 3)]):
        out = tmp_path / f"{i}-{strategy}"
        r = invoke("prune", "tiny", "-o", out, "--budget", THREE_BLOCKS, "--strategy", strategy, "--seed", seed)
        assert r.exit_code == 0, r.output
        rep = _report(out)
        assert rep["strategy"] == strategy and rep["steps"] == 0 and rep["params_after"] <= THREE_BLOCKS
        kept.setdefault(strategy, []).append(rep["kept"])
    assert kept["tail"] == [[0, 1, 3]]
    mag = magnitude_block_saliency(build_random_transformer(PRESETS["tiny"], seed=0))
    assert kept["magnitude"] == [[0, 1 if mag[1] >= mag[2] else 2, 3]]
    assert kept["random"][0] == kept["random"][1]
    assert "prune: random" in r.output and "params" in r.output  # the rich table


def test_cli_bad_inputs(tmp_path, tiny_model):
    out = tmp_path / "out"
    for args, message in [
        (["--budget", "50K", "--strategy", "tail"], "minimum 54.3K (54344)"),
        (["--budget", "1M", "--strategy", "tail"], "nothing to prune"),
        (["--budget", "lots", "--strategy", "tail"], "cannot read budget"),
        (["--budget", "75K"], "needs calibration data"),
        (["--budget", "75K", "--strategy", "best"], "unknown strategy"),
        (["--budget", "75K", "--strategy", "tail", "--validate", tmp_path], "lq/ and hq/"),
    ]:
        r = invoke("prune", "tiny", "-o", out, *args)
        assert r.exit_code == 2, (args, r.output)
        assert message in r.output and "Traceback" not in r.output
        assert not out.exists()
    pairs = pair_folder(tmp_path / "pairs", n=1)
    for bad in (["--protocol", "crop"], ["--validate-metrics", "psnr,sharpness"]):
        r = invoke("prune", "tiny", "-o", out, "--budget", "75K", "--strategy", "tail", "--validate", pairs, *bad)
        assert r.exit_code == 2 and "unknown" in r.output and not out.exists(), r.output
    r = invoke("prune", tmp_path / "missing", "-o", out, "--budget", "75K", "--strategy", "tail")
    assert r.exit_code == 2 and "does not exist" in r.output
    from sanasr_cli.models.sanasr import save_model_dir

    desc = type(tiny_model.description).from_dict(tiny_model.description.to_dict())  # the fixture stays intact
    no_weights = save_model_dir(tiny_model, tmp_path / "no_weights", description=desc)
    for f in (no_weights / "transformer").glob("*.safetensors"):
        f.unlink()
    r = invoke("prune", no_weights, "-o", out, "--budget", "75K", "--strategy", "tail")
    assert r.exit_code == 2 and "no weights" in r.output and not out.exists()


def test_validation_gate(tmp_path, fresh_tiny_model):
    from sanasr_cli.pruning.validate import relative_drop, validate_pruning

    pairs = pair_folder(tmp_path / "pairs", n=1)
    assert relative_drop(20.0, 19.0) == pytest.approx(0.05)
    assert relative_drop(0.5, 0.6, lower_better=True) == pytest.approx(0.2)
    same = validate_pruning(fresh_tiny_model, fresh_tiny_model.transformer, pairs, max_drop=0.0)
    assert same.passed and same.pairs == 1 and all(d == 0 for d in same.drop.values())
    # the gate runs `sanasr eval`'s pipeline: no colour fix unless asked (upscale's wavelet gives other scores)
    plain = validate_pruning(fresh_tiny_model, fresh_tiny_model.transformer, pairs, color_fix="none")
    fixed = validate_pruning(fresh_tiny_model, fresh_tiny_model.transformer, pairs, color_fix="wavelet")
    assert same.color_fix == "none" and same.before == plain.before != fixed.before
    broken = build_broken(fresh_tiny_model.transformer)
    bad = validate_pruning(fresh_tiny_model, broken, pairs, max_drop=0.03)
    assert not bad.passed and "psnr" in bad.failed

    out = tmp_path / "out"
    r = invoke(
        "prune",
        "tiny",
        "-o",
        out,
        "--budget",
        THREE_BLOCKS,
        "--strategy",
        "tail",
        "--validate",
        pairs,
        "--max-drop",
        "0.03",
    )
    rep = _report(out)  # written whether or not the gate passes
    v = rep["validation"]
    assert set(v["before"]) == {"psnr", "ssim"} and v["pairs"] == 1 and v["protocol"] == "full"
    assert "psnry" in v["variants"]["psnr"]  # sanasr eval's exact metric variant
    failed = [k for k in v["drop"] if v["drop"][k] > 0.03]
    assert v["failed"] == failed and r.exit_code == (1 if failed else 0), r.output


def build_broken(transformer):
    """A copy of the transformer whose output projection is scaled up: far worse restorations."""
    import copy

    broken = copy.deepcopy(transformer)
    with torch.no_grad():
        broken.proj_out.weight.mul_(50)
    return broken


def test_cli_fisher_with_paired_and_online_calibration(tmp_path):
    pairs = pair_folder(tmp_path / "pairs")
    hq = photo_folder(tmp_path / "hq_only", 2, (40, 40), seed=10, prefix="h")
    reports = {}
    for name, calib, lambda_p in (("paired", pairs, 2.0), ("online", hq, 0.0)):  # LPIPS on once
        out = tmp_path / name
        r = invoke(
            "prune",
            "tiny",
            "-o",
            out,
            "--budget",
            THREE_BLOCKS,
            "--calib",
            calib,
            "--steps",
            2,
            "--crop",
            16,
            "--seed",
            5,
            "--lambda-p",
            lambda_p,
        )
        assert r.exit_code == 0, r.output
        rep = reports[name] = _report(out)
        assert rep["strategy"] == "fisher" and rep["steps"] == 2 and rep["calibration"]["steps"] == 2
        assert rep["calibration"]["source"] == str(calib) and len(rep["kept"]) == 3
        assert rep["calibration"]["prompt_source"] == "hq"  # tiny: HQ-prompt protocol (tau_g 900)
        f = rep["fisher"]  # share of F_i below eps_p, over the weights that enter S_l
        assert rep["eps_p"] == f["eps_p"] == 1e-8
        assert f["count"] == sum(b["params"] for b in rep["blocks"]) == sum(f["decades"].values()) + f["zero"]
        assert 0 <= f["below_eps_p"] <= f["count"] and f["fraction_below_eps_p"] == f["below_eps_p"] / f["count"]
        assert f["min"] <= f["max"] and "F_i below eps_p" in r.output
        assert all(b["saliency"] > 0 for b in rep["blocks"])
        assert "calibrate" in r.output
    assert reports["paired"]["blocks"] != reports["online"]["blocks"]  # the data reaches the saliency


def test_cli_interrupted_calibration_writes_nothing(tmp_path, monkeypatch):
    import sanasr_cli.pruning.calibrate as calibrate

    real = calibrate.compute_task_losses
    calls = []

    def interrupt_on_second_step(*args, **kwargs):  # Ctrl-C in the middle of calibration
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(calibrate, "compute_task_losses", interrupt_on_second_step)
    out = tmp_path / "models" / "pruned"
    r = invoke(
        "prune",
        "tiny",
        "-o",
        out,
        "--budget",
        THREE_BLOCKS,
        "--calib",
        pair_folder(tmp_path / "pairs"),
        "--steps",
        4,
        "--crop",
        16,
        "--lambda-p",
        0,
    )
    assert r.exit_code == 1 and "interrupted" in r.output and "Traceback" not in r.output
    assert len(calls) == 2 and not out.exists()
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_real_size_prune_report_matches_saved_transformer(tiny_model, tmp_path):
    """SANA-600M architecture, random weights, no download: --budget 0.35B keeps 16 of 28 blocks, and the
    saved
    transformer (bf16, uninitialised memory: only shapes matter here) has exactly the report's parameters."""
    from accelerate import init_empty_weights
    from diffusers import SanaTransformer2DModel
    from safetensors import safe_open

    from sanasr_cli.models.presets import PRESETS
    from sanasr_cli.models.restorer import OneStepRestorer
    from sanasr_cli.models.sanasr import SanaSR
    from sanasr_cli.pruning.budget import parse_budget

    with init_empty_weights():
        real = SanaTransformer2DModel(**PRESETS["sana-600m-512"].transformer).to(torch.bfloat16)
    # the real-size DiT with a small codec and text encoder: only the transformer is pruned and counted
    desc = type(tiny_model.description).from_dict(tiny_model.description.to_dict())
    model = SanaSR(tiny_model.codec, tiny_model.prompts, OneStepRestorer(real), desc)
    pruned, report = prune_model(model, PruneOptions(budget=parse_budget("0.35B"), strategy="tail"))
    assert report.num_blocks_before == 28 and report.num_blocks_after == 16
    assert report.kept == [*range(15), 27] and report.params_before == count_parameters(real)
    assert report.params_after <= 350_000_000 < report.params_after + report.blocks[15].params
    pruned.to_empty(device="cpu")
    out = save_pruned(model, pruned, report, tmp_path / "real")
    saved = json.loads((out / REPORT_FILE).read_text())
    config = SanaTransformer2DModel.load_config(out / "transformer")
    numel = 0
    for f in (out / "transformer").glob("*.safetensors"):
        with safe_open(f, "pt") as sf:
            for key in sf.keys():
                shape = sf.get_slice(key).get_shape()
                numel += int(torch.tensor(shape).prod()) if shape else 1
    assert config["num_layers"] == 16 and numel == saved["params_after"] == report.params_after


@pytest.mark.numerics
def test_prune_merges_an_adapter_first(fresh_tiny_model, tmp_path):
    from sanasr_cli.models.lora import add_lora, lora_config
    from sanasr_cli.models.merge import merge_model
    from sanasr_cli.models.sanasr import load_model, save_model_dir
    from sanasr_cli.pruning.blocks import remove_blocks

    add_lora(fresh_tiny_model.transformer, lora_config(rank=2, alpha=2))
    with torch.no_grad():
        for name, p in fresh_tiny_model.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    adapted = save_model_dir(fresh_tiny_model, tmp_path / "adapted", save_transformer=False)
    r = invoke("prune", adapted, "-o", tmp_path / "pruned", "--budget", THREE_BLOCKS, "--strategy", "tail")
    assert r.exit_code == 0 and "merged the LoRA adapter" in r.output, r.output
    pruned = load_model(tmp_path / "pruned")
    assert pruned.description.adapter is None and pruned.description.lora["merged"] is True
    assert not (tmp_path / "pruned" / "adapter").exists()
    reference = load_model(adapted)
    merge_model(reference)
    expected = remove_blocks(reference.transformer, [0, 1, 3])
    for (name, a), (_, b) in zip(pruned.transformer.named_parameters(), expected.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


@pytest.mark.numerics
def test_prune_ema_merges_the_ema_adapter(fresh_tiny_model, tmp_path):
    from sanasr_cli.models.lora import EMA_ADAPTER_DIR, add_lora, lora_config, save_adapter
    from sanasr_cli.models.merge import merge_model
    from sanasr_cli.models.sanasr import load_model, save_model_dir
    from sanasr_cli.pruning.blocks import remove_blocks

    add_lora(fresh_tiny_model.transformer, lora_config(rank=2, alpha=2))
    lora_b = [p for n, p in fresh_tiny_model.transformer.named_parameters() if "lora_B" in n]
    with torch.no_grad():
        for p in lora_b:
            p.normal_(0, 0.3)
    adapted = save_model_dir(fresh_tiny_model, tmp_path / "adapted", save_transformer=False)
    no_ema = invoke("prune", adapted, "-o", tmp_path / "x", "--budget", THREE_BLOCKS, "--strategy", "tail", "--ema")
    assert no_ema.exit_code == 2 and not (tmp_path / "x").exists(), no_ema.output
    with torch.no_grad():  # an EMA adapter with other weights, as `train` writes beside adapter/
        for p in lora_b:
            p.mul_(-0.5)
    save_adapter(fresh_tiny_model.transformer, adapted / EMA_ADAPTER_DIR)
    r = invoke("prune", adapted, "-o", tmp_path / "pruned", "--budget", THREE_BLOCKS, "--strategy", "tail", "--ema")
    assert r.exit_code == 0, r.output
    pruned = load_model(tmp_path / "pruned")
    reference = load_model(adapted)
    merge_model(reference, ema=True)
    expected = remove_blocks(reference.transformer, [0, 1, 3])
    for (name, a), (_, b) in zip(pruned.transformer.named_parameters(), expected.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    assert any(h.get("ema") is True for h in pruned.description.history)


def _sidecar_pairs(folder):
    pair_folder(folder, n=1)
    (folder / "hq" / "0.txt").write_text("red flower, tree")
    (folder / "lq" / "0.txt").write_text("blue car")
    return folder


def test_calibration_prompts_come_from_the_protocols_image(tmp_path):
    """App. A.1: calibration tags the image the model's training tagged; HQ-prompt models the HQ crop."""
    from sanasr_cli.prompts.rule import PromptRule
    from sanasr_cli.pruning.calib_data import calibration_batches

    pairs = _sidecar_pairs(tmp_path / "pairs")
    rule = PromptRule(tagger="file")
    for source, words in (("hq", "red flower, tree, "), ("lq", "blue car, ")):
        batches, n = calibration_batches([pairs], rule, crop=16, source=source)
        assert n == 1 and next(batches).prompts == [words + rule.template]
    # HQ folders degraded online: the synthesised LQ has no file, its content is the HQ file's (its sidecar)
    hq_only = photo_folder(tmp_path / "hq_only", 1, (40, 40), seed=10, prefix="h")
    (hq_only / "h0.txt").write_text("sky")
    batches, _ = calibration_batches([hq_only], rule, crop=16, source="lq")
    assert next(batches).prompts == ["sky, " + rule.template]


def test_protocol_name_follows_the_training_record():
    from sanasr_cli.models.description import ModelDescription
    from sanasr_cli.pruning.prune import protocol_for, protocol_name

    assert protocol_name(ModelDescription()) == "hq"
    assert protocol_name(ModelDescription(tau_g=999.0)) == "lq"  # no record: read from tau_g (App. B)
    trained = ModelDescription(history=[{"command": "train", "protocol": "lq"}, {"command": "merge-lora"}])
    assert protocol_name(trained) == "lq"
    proto = protocol_for(trained)
    assert (proto.t_min, proto.t_max, proto.tau_g) == (20, 980, 900.0)  # the model's own tau_g is kept


def test_cli_calibration_tags_the_image_the_model_was_trained_with(tmp_path, fresh_tiny_model, monkeypatch):
    """An LQ-prompt model (its train record) is calibrated on prompts from the LQ crop's sidecar."""
    from sanasr_cli.models.sanasr import save_model_dir
    from sanasr_cli.models.text_encoder import PromptEncoder

    model_dir = tmp_path / "lq_model"
    fresh_tiny_model.description.history.append({"command": "train", "protocol": "lq"})
    save_model_dir(fresh_tiny_model, model_dir)
    pairs = _sidecar_pairs(tmp_path / "pairs")
    seen, real_encode = [], PromptEncoder.encode

    def spy(self, prompts, *args, **kwargs):
        seen.extend(prompts)
        return real_encode(self, prompts, *args, **kwargs)

    monkeypatch.setattr(PromptEncoder, "encode", spy)
    out = tmp_path / "out"
    r = invoke(
        "prune", model_dir, "-o", out, "--budget", THREE_BLOCKS, "--calib", pairs, "--steps", 1, "--crop", 16,
        "--lambda-p", 0, "--tagger", "file",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "prompts from the LQ crop" in r.output
    assert seen and all(p.startswith("blue car, clean") for p in seen), seen
    cal = _report(out)["calibration"]
    assert cal["prompt_source"] == "lq" and cal["protocol"]["t_min"] == 20


def test_validate_takes_a_folder_relative_to_the_working_folder(tmp_path, monkeypatch):
    """Issue 35: `prune ... --validate pairs` (relative, as the docs write it) ran the whole calibration and then
    died with "is not in the subpath" (a bug)."""
    pair_folder(tmp_path / "pairs", n=1)
    monkeypatch.chdir(tmp_path)
    r = invoke("prune", "tiny", "-o", "out", "--budget", THREE_BLOCKS, "--strategy", "tail", "--validate", "pairs")
    assert r.exit_code in (0, 1) and "bug in sanasr" not in r.output, r.output  # 1: the gate may fail
    assert _report(tmp_path / "out")["validation"]["pairs"] == 1
