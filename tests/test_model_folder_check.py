"""Issue 27: a model folder is untrusted input. Each hostile folder is built from a tmp copy of the shipped nano
(`sanasr_cli/models/nano/sr`, base `shipped:nano`) and run through the real CLI in-process: the documented exit
code, one `error:` line, no traceback, no output file. Also: a NaN made mid-pipeline never reaches a file, and
the huge configs are refused fast and small (time and peak RSS measured here)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sanasr_cli.models.lora import EMA_ADAPTER_DIR, add_lora, lora_config
from sanasr_cli.models.presets import NANO_DIR
from tests.helpers import load_each_in_a_fresh_process, one_error_line, run, save_photo

TORCH_THREADS = 1
NANO_SR = NANO_DIR / "sr"
WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def lora_nano(tmp_path_factory):
    """nano with a rank-2 LoRA adapter and an EMA copy of it (adapter/, adapter_ema/), written once."""
    from sanasr_cli.models.sanasr import load_model, save_model_dir

    model = load_model("nano")
    add_lora(model.transformer, lora_config(rank=2, alpha=2))
    with torch.no_grad():
        for name, p in model.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1e-3)  # a LoRA that changes something
    folder = save_model_dir(model, tmp_path_factory.mktemp("lora") / "m", save_transformer=True)
    shutil.copytree(folder / "adapter", folder / EMA_ADAPTER_DIR)
    return folder


def _json(path: Path, **changes) -> None:
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))  # json writes NaN / Infinity as Python's json reads them


def _tensors(path: Path, change) -> None:
    state = load_file(str(path))
    change(state)
    save_file(state, str(path))


def _first_key(state: dict, word: str) -> str:
    return next(k for k in sorted(state) if word in k)


def _set_nan(state, word="to_q.weight"):
    key = _first_key(state, word)
    state[key] = state[key].clone()
    state[key].view(-1)[3] = float("nan")


def _drop(state, words=("lora_B",), keep=0):
    for key in [k for k in sorted(state) if any(w in k for w in words)][keep:]:
        del state[key]


def _tamper(m: Path, case: str, tmp: Path) -> None:
    desc, tconfig = m / "sanasr.json", m / "transformer" / "config.json"
    adapter = m / "adapter"
    simple = {
        "tau_g_nan": (desc, {"tau_g": float("nan")}),
        "tau_g_inf": (desc, {"tau_g": float("inf")}),
        "tau_g_1e308": (desc, {"tau_g": 1e308}),
        "tau_g_negative": (desc, {"tau_g": -5000}),
        "flow_shift_nan": (desc, {"flow_shift": float("nan")}),
        "flow_shift_negative": (desc, {"flow_shift": -3}),
        "flow_shift_zero": (desc, {"flow_shift": 0}),
        "norm_eps_nan": (tconfig, {"norm_eps": float("nan")}),
        "norm_eps_zero": (tconfig, {"norm_eps": 0.0}),
        "num_layers_3": (tconfig, {"num_layers": 3}),
        "num_layers_minus_1": (tconfig, {"num_layers": -1}),
        "num_layers_0": (tconfig, {"num_layers": 0}),
        "heads_huge": (tconfig, {"num_attention_heads": 10**9}),
        "lora_alpha_nan": (adapter / "adapter_config.json", {"lora_alpha": float("nan")}),
        "lora_r_zero": (adapter / "adapter_config.json", {"r": 0}),
        "shipped_escape": (desc, {"encoder": f"shipped:{tmp}/elsewhere"}),
        "vae_decoder_elsewhere": (desc, {"vae_decoder": str(tmp / "elsewhere")}),
        "base_elsewhere": (desc, {"base_source": str(tmp / "elsewhere")}),
        "shipped_base_escape": (desc, {"base_source": "shipped:../../elsewhere"}),
    }
    if case in simple:
        path, changes = simple[case]
        if case == "shipped_escape":
            (m / f"shipped:{tmp}" / "elsewhere").mkdir(parents=True)  # the decoy that passed the folder check
        _json(path, **changes)
    elif case == "transformer_weight_nan":
        _tensors(m / WEIGHTS, _set_nan)
    elif case == "transformer_weight_int":
        _tensors(m / WEIGHTS, lambda s: s.update({"proj_out.bias": s["proj_out.bias"].to(torch.int32)}))
    elif case == "transformer_key_missing":
        _tensors(m / WEIGHTS, lambda s: s.pop("proj_out.bias"))
    elif case == "transformer_key_misshaped":
        _tensors(m / WEIGHTS, lambda s: s.update({"proj_out.bias": torch.zeros(7)}))
    elif case == "adapter_weight_nan":
        _tensors(adapter / "adapter_model.safetensors", lambda s: _set_nan(s, "lora_A"))
    elif case == "adapter_keys_missing":
        _tensors(adapter / "adapter_model.safetensors", lambda s: _drop(s, ("lora_",), keep=2))
    elif case == "weights_file_link_out":
        outside = tmp / "outside.safetensors"
        shutil.copy(m / WEIGHTS, outside)
        (m / WEIGHTS).unlink()
        (m / WEIGHTS).symlink_to(outside)
    elif case == "pickle_beside_decoy":
        (m / WEIGHTS).unlink()
        (m / "transformer" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04pickle")
        (m / "transformer" / "decoy.safetensors").write_bytes(b"")
    elif case in ("description_fifo", "description_folder", "description_dev_zero", "description_deep"):
        desc.unlink()
        if case == "description_fifo":
            os.mkfifo(desc)
        elif case == "description_folder":
            desc.mkdir()
        elif case == "description_dev_zero":
            desc.symlink_to("/dev/zero")
        else:
            desc.write_text("[" * 100_000 + "]" * 100_000)
    elif case == "description_link_out":  # issue 34, item 6: a sanasr.json outside the folder was read
        shutil.move(desc, tmp / "elsewhere.json")
        desc.symlink_to(tmp / "elsewhere.json")
    else:
        raise AssertionError(case)


# (case, needs the LoRA folder, the words the one line must hold)
CASES = [
    ("tau_g_nan", False, "'tau_g' must be a finite number"),
    ("tau_g_inf", False, "'tau_g' must be a finite number"),
    ("tau_g_1e308", False, "'tau_g' must be at most 1000"),
    ("tau_g_negative", False, "'tau_g' must be > 0"),
    ("flow_shift_nan", False, "'flow_shift' must be a finite number"),
    ("flow_shift_negative", False, "'flow_shift' must be > 0"),
    ("flow_shift_zero", False, "'flow_shift' must be > 0"),
    ("norm_eps_nan", False, "'norm_eps' must be a finite number"),
    ("norm_eps_zero", False, "'norm_eps' must be > 0"),
    ("num_layers_3", False, "the weights hold 'transformer_blocks.3."),
    ("num_layers_minus_1", False, "'num_layers' = -1 is out of range"),
    ("num_layers_0", False, "'num_layers' must be at least 1"),
    ("heads_huge", False, "'num_attention_heads' = 1000000000 is out of range"),
    ("transformer_weight_nan", False, "holds NaN or infinite values"),
    ("transformer_weight_int", False, "'proj_out.bias' is I32, not a floating-point tensor"),
    ("transformer_key_missing", False, "the weights lack 'proj_out.bias'"),
    ("transformer_key_misshaped", False, "'proj_out.bias' has shape [7]"),
    ("lora_alpha_nan", True, "'lora_alpha' must be a finite number"),
    ("lora_r_zero", True, "'r' must be a whole number"),
    ("adapter_weight_nan", True, "holds NaN or infinite values"),
    ("adapter_keys_missing", True, "the weights lack"),
    ("shipped_escape", False, "is not one of the students shipped with sanasr"),
    ("vae_decoder_elsewhere", False, "pass --vae-decoder"),
    ("base_elsewhere", False, "pass --base"),
    ("shipped_base_escape", False, "is not a base shipped with sanasr"),
    ("weights_file_link_out", False, "leads outside the model directory"),
    ("pickle_beside_decoy", False, "sanasr loads only diffusion_pytorch_model.safetensors"),
    ("description_fifo", False, "sanasr.json is a FIFO"),
    ("description_folder", False, "sanasr.json is a folder"),
    ("description_dev_zero", False, "sanasr.json is a device"),
    ("description_deep", False, "nested too deeply"),
    ("description_link_out", False, "'sanasr.json' leads outside the model directory"),
]


def _copy(src: Path, tmp: Path) -> Path:
    m = tmp / "M"
    shutil.copytree(src, m)
    return m


def _assert_refused(result, code: int, words: str, out: Path) -> str:
    assert result.exit_code == code, result.output
    line = one_error_line(result)
    assert words in line, line
    assert "Traceback" not in result.output and "this is a bug" not in line
    assert not out.exists() or not any(p.suffix == ".png" for p in out.rglob("*")), list(out.rglob("*"))
    return line


@pytest.mark.parametrize(("case", "lora", "words"), CASES, ids=[c[0] for c in CASES])
def test_a_hostile_model_folder_is_refused_in_one_line(tmp_path, lora_nano, case, lora, words):
    m = _copy(lora_nano if lora else NANO_SR, tmp_path)
    _tamper(m, case, tmp_path)
    save_photo(tmp_path / "in" / "cat.png", 12, 12)
    result = run("upscale", tmp_path / "in", "-o", tmp_path / "out", "--model", m, "--tile", "none")
    _assert_refused(result, 2, words, tmp_path / "out")


@pytest.mark.parametrize("command", ["prune", "merge-lora"])
def test_prune_and_merge_refuse_a_nan_weight_and_write_no_model(tmp_path, lora_nano, command):
    m = _copy(lora_nano, tmp_path)
    _tensors(m / "adapter" / "adapter_model.safetensors", lambda s: _set_nan(s, "lora_B"))
    args = ["prune", m, "-o", tmp_path / "new", "--budget", "0.9", "--strategy", "tail"] if command == "prune" else []
    args = args or ["merge-lora", m, "-o", tmp_path / "new"]
    result = run(*args)
    _assert_refused(result, 2, "holds NaN or infinite values", tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_merge_lora_ema_with_missing_keys_is_refused(tmp_path, lora_nano):
    m = _copy(lora_nano, tmp_path)
    _tensors(m / EMA_ADAPTER_DIR / "adapter_model.safetensors", lambda s: _drop(s, ("lora_B",), keep=1))
    result = run("merge-lora", m, "-o", tmp_path / "new", "--ema")
    line = _assert_refused(result, 2, "the weights lack", tmp_path / "new")
    assert EMA_ADAPTER_DIR in line and not (tmp_path / "new").exists()


def test_merge_lora_ema_does_not_follow_a_link_out_of_the_folder(tmp_path, lora_nano):
    m = _copy(lora_nano, tmp_path)
    shutil.move(m / EMA_ADAPTER_DIR, tmp_path / "ema_elsewhere")
    (m / EMA_ADAPTER_DIR).symlink_to(tmp_path / "ema_elsewhere")
    result = run("merge-lora", m, "-o", tmp_path / "new", "--ema")
    _assert_refused(result, 2, "leads outside the model directory", tmp_path / "new")


def test_the_untouched_copies_still_load_and_run(tmp_path, lora_nano):
    """The checks pass what sanasr writes: a plain copy of nano and of the LoRA folder upscale (exit 0)."""
    save_photo(tmp_path / "in" / "cat.png", 12, 12)
    for i, src in enumerate((NANO_SR, lora_nano)):
        m = _copy(src, tmp_path / str(i))
        result = run("upscale", tmp_path / "in", "-o", tmp_path / f"out{i}", "--model", m, "--tile", "none")
        assert result.exit_code == 0, result.output
        assert (tmp_path / f"out{i}" / "cat.png").is_file()


@pytest.mark.parametrize("case", ["num_layers", "lora_rank"])
def test_huge_configs_are_refused_fast_and_small(tmp_path, lora_nano, case):
    """num_layers 100000 / r 200000: refused from the header shapes before anything is built (under 5 s, peak
    RSS under 1 GB above the process's baseline; ru_maxrss is in KiB on Linux)."""
    m = _copy(lora_nano, tmp_path)
    if case == "num_layers":
        _json(m / "transformer" / "config.json", num_layers=100_000)
    else:
        _json(m / "adapter" / "adapter_config.json", r=200_000)
    save_photo(tmp_path / "in" / "cat.png", 12, 12)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = run("upscale", tmp_path / "in", "-o", tmp_path / "out", "--model", m, "--tile", "none")
    seconds = time.perf_counter() - start
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024
    _assert_refused(result, 2, "'r' must be a whole number" if case == "lora_rank" else "layers", tmp_path / "out")
    assert seconds < 5 and grown_mb < 1024, (seconds, grown_mb)


def test_a_nan_made_mid_pipeline_never_reaches_a_file(tmp_path):
    """A weight set to NaN in memory (past every load check): the file fails with one line, nothing written."""
    from sanasr_cli.errors import NonFiniteOutputError
    from sanasr_cli.models.sanasr import load_model
    from sanasr_cli.pipeline.sana_sr import SanaSRPipeline
    from sanasr_cli.pipeline.upscale import UpscaleOptions, upscale_files

    model = load_model("nano")
    with torch.no_grad():
        model.transformer.proj_out.weight.view(-1)[0] = float("nan")
    src = tmp_path / "in"
    save_photo(src / "cat.png", 12, 12)
    (rec,) = upscale_files(model, [src / "cat.png"], src, tmp_path / "out", UpscaleOptions(tile="none"))
    assert rec.status == "failed" and rec.error.endswith("model produced non-finite values: check the model folder"), (
        rec.error
    )
    assert not any(p.suffix == ".png" for p in (tmp_path / "out").rglob("*"))
    with pytest.raises(NonFiniteOutputError):  # the Python API: an exception, never a black image
        SanaSRPipeline(model)(torch.rand(3, 12, 12), tile="none")


# ---------------------------------------------------------------- number flags and resumed state, up front


@pytest.fixture(scope="module")
def hq(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hq")
    for i in range(2):
        save_photo(folder / f"p{i}.png", 32, 32, seed=i)
    return folder


FLAG_ROWS = [
    (["upscale", "{hq}", "-o", "{out}", "--model", "tiny", "--scale", "1e9"], "--scale must be > 0 and at most 16"),
    (["upscale", "{hq}", "-o", "{out}", "--model", "tiny", "--seed", str(10**30)], "--seed must be from 0"),
    (["merge-lora", str(NANO_SR), "-o", "{out}", "--scale", "nan"], "--scale must be a finite number"),
    (["prune", "tiny", "-o", "{out}", "--budget", "1e400", "--strategy", "tail"], "finite parameter count"),
    (["train", "--lr", "inf"], "--lr"),
    (["train", "--lambda-pixel", "nan"], "--lambda-pixel"),
    (["train", "--lambda-perceptual", "inf"], "--lambda-perceptual"),
    (["train", "--max-grad-norm", "nan"], "--max-grad-norm"),
    (["train", "--seed", str(10**22)], "--seed"),
]


@pytest.mark.parametrize(("args", "words"), FLAG_ROWS, ids=[" ".join(r[0][-2:]) for r in FLAG_ROWS])
def test_number_flags_are_checked_up_front(tmp_path, hq, args, words):
    from tests.helpers import TINY_TRAIN

    out = tmp_path / "out"
    if args[0] == "train":
        args = ["train", *TINY_TRAIN, "--hq", "{hq}", "-o", "{out}", "--max-steps", "1", *args[1:]]
    result = run(*[a.format(hq=hq, out=out) for a in args])
    assert result.exit_code == 2, result.output
    assert words in one_error_line(result)
    assert not out.exists()  # nothing written: refused before any work


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"scheduler": {"base_lrs": [float("nan")], "last_epoch": 1, "_step_count": 2}}, "scheduler.base_lrs"),
        ({"scheduler": {"base_lrs": [1e-4], "last_epoch": 10**30, "_step_count": 2}}, "scheduler.last_epoch"),
        ({"epoch": 10**30}, "'epoch' is 1000000000000000000000000000000"),
    ],
)
def test_a_resumed_state_out_of_range_is_refused(change, words):
    from sanasr_cli.training.checkpoint import CheckpointReadError, check_state

    state = {"step": 2, "epoch": 0, "batch_in_epoch": 2, "num_processes": 1, "scaler": None, "rng": {}}
    state["scheduler"] = {"base_lrs": [1e-4], "last_epoch": 2, "_step_count": 3, "_last_lr": [1e-4]}
    check_state(dict(state), "state.json")  # what sanasr writes passes
    with pytest.raises(CheckpointReadError, match=words.replace("[", r"\[")):
        check_state({**state, **change}, "state.json")


# ---------------------------------------------------------------- the rest of the round


def test_train_with_only_broken_hq_leaves_no_run_folder(tmp_path):
    from tests.helpers import TINY_TRAIN

    (tmp_path / "hq").mkdir()
    (tmp_path / "hq" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    run_dir = tmp_path / "RUN"
    result = run("train", *TINY_TRAIN, "--hq", tmp_path / "hq", "-o", run_dir, "--max-steps", "1")
    assert result.exit_code == 2, result.output
    assert "no usable HQ images" in one_error_line(result)
    assert not run_dir.exists()


def test_a_tag_file_that_is_not_text_is_not_used(tmp_path, caplog):
    from sanasr_cli.prompts.taggers import FileTagger

    cat = save_photo(tmp_path / "cat.png")
    for data in (b"\xff\xfe\x00bin", b"tabby\x1b[2Jsofa"):  # invalid UTF-8; a terminal escape
        (tmp_path / "cat.txt").write_bytes(data)
        caplog.clear()
        assert FileTagger().tags(None, cat) == []
        assert len([r for r in caplog.records if "not a text file of tags" in r.getMessage()]) == 1
    (tmp_path / "cat.txt").write_text("tabby, sofa\n")
    assert FileTagger().tags(None, cat) == ["tabby", " sofa"]


def test_the_python_api_names_bad_arguments(tiny_model):
    from sanasr_cli.pipeline.sana_sr import SanaSRPipeline

    pipe = SanaSRPipeline(tiny_model)
    image = torch.rand(3, 8, 8)
    with pytest.raises(TypeError, match="prompt must be a string"):
        pipe(image, prompt=5)
    with pytest.raises(ValueError, match="meta-device tensor"):
        pipe(torch.empty(3, 8, 8, device="meta"))
    with pytest.raises(ValueError, match="empty batch"):
        pipe(torch.rand(0, 3, 8, 8))
    with pytest.raises(ValueError, match="batch_size must be an integer"):
        pipe(image, batch_size=True)
    with pytest.raises(ValueError, match="scale must be at most 16"):
        pipe(image, scale=1e9)


def test_eval_csv_where_nothing_can_be_written_is_refused_before_the_metrics(tmp_path):
    """/sys passes a permission-bit check as root (os.access says yes); the write is tried up front instead."""
    if not Path("/sys").is_dir():
        pytest.skip("no /sys on this system")
    save_photo(tmp_path / "in" / "a.png", 8, 8)
    args = ["eval", "--sr", tmp_path / "in", "--hr", tmp_path / "in", "--metrics", "psnr", "--csv", "/sys/x.csv"]
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert "--csv /sys/x.csv: cannot write in /sys" in one_error_line(result)


@pytest.mark.parametrize("command", ["merge-lora", "prune"])
def test_a_damaged_or_misshaped_ema_adapter_is_one_line(tmp_path, lora_nano, command):
    m = _copy(lora_nano, tmp_path)
    ema = m / EMA_ADAPTER_DIR / "adapter_model.safetensors"
    if command == "merge-lora":
        ema.write_bytes(b"\xff" * 64)  # damaged
        words = "not a readable safetensors file"
        args = ["merge-lora", m, "-o", tmp_path / "new", "--ema"]
    else:
        _tensors(ema, lambda s: s.update({(k := _first_key(s, "lora_A")): torch.zeros(3, *s[k].shape[1:])}))
        words = "has shape [3,"
        args = ["prune", m, "-o", tmp_path / "new", "--budget", "0.9", "--strategy", "tail", "--ema"]
    result = run(*args)
    line = _assert_refused(result, 2, words, tmp_path / "new")
    assert EMA_ADAPTER_DIR in line and not (tmp_path / "new").exists()


def test_an_interrupted_upscale_accounts_for_every_input(tmp_path, fresh_tiny_model):
    """Ctrl-C (a KeyboardInterrupt from the second transformer call): the first output is listed ok, the one in
    flight and the one never started as interrupted; nothing half-written."""
    from sanasr_cli.cli.upscale import _run
    from sanasr_cli.pipeline.upscale import UpscaleOptions

    images = [save_photo(tmp_path / "in" / f"p{i}.png", 8, 8, seed=i) for i in range(3)]
    calls = []

    def interrupt(_module, _args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    fresh_tiny_model.transformer.register_forward_pre_hook(interrupt)
    records, interrupted = _run(
        fresh_tiny_model, images, tmp_path / "in", tmp_path / "out", UpscaleOptions(tile="none"), 0, show=False
    )
    assert interrupted
    status = {Path(r.input).name: r.status for r in records}
    assert status == {"p0.png": "ok", "p1.png": "interrupted", "p2.png": "interrupted"}
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["p0.png"]


def test_a_skipped_photo_is_one_clean_warning_line(tmp_path, hq):
    """train with a truncated photo beside good ones: the DatasetWarning is one `warning:` line naming it."""
    from tests.helpers import TINY_TRAIN

    shutil.copytree(hq, tmp_path / "hq")
    good = (tmp_path / "hq" / "p0.png").read_bytes()
    (tmp_path / "hq" / "cut.png").write_bytes(good[: len(good) // 2])
    result = run("train", *TINY_TRAIN, "--hq", tmp_path / "hq", "-o", tmp_path / "RUN", "--max-steps", "1")
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.output.splitlines() if "cut.png" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: skipped"), result.output
    assert "DatasetWarning" not in result.output


def test_bench_counts_only_a_folder_whose_configs_pass(tmp_path):
    """bench builds the folder's transformer from its config on the meta device: the same checks run first,
    so num_layers 100000 is refused at once instead of building 100000 blocks."""
    m = _copy(NANO_SR, tmp_path)
    _json(m / "transformer" / "config.json", num_layers=100_000)
    result = run("bench", "--model", m, "--latency", "off", "--size", "64")
    assert result.exit_code == 2, result.output
    assert "'num_layers' = 100000 is out of range" in one_error_line(result)


def test_a_local_base_is_used_when_the_user_names_it(tmp_path, monkeypatch):
    """base_source naming a local folder: refused alone, used with --base or SANASR_BASE naming it."""
    from sanasr_cli.models.presets import BASE_ENV_VAR, resolve_base_source

    base = tmp_path / "my_base"
    shutil.copytree(resolve_base_source("shipped:nano"), base)
    m = _copy(NANO_SR, tmp_path)
    _json(m / "sanasr.json", base_source=str(base))
    save_photo(tmp_path / "in" / "cat.png", 12, 12)
    monkeypatch.delenv(BASE_ENV_VAR, raising=False)
    up = ["upscale", tmp_path / "in", "--model", m, "--tile", "none", "-o"]
    _assert_refused(run(*up, tmp_path / "o1"), 2, f"pass --base {base}", tmp_path / "o1")
    assert run(*up, tmp_path / "o2", "--base", base).exit_code == 0
    monkeypatch.setenv(BASE_ENV_VAR, str(base))
    assert run(*up, tmp_path / "o3").exit_code == 0
    assert (tmp_path / "o2" / "cat.png").is_file() and (tmp_path / "o3" / "cat.png").is_file()


ALLOCATION_CASES = ["position_table", "padded_layers"]


@pytest.fixture(scope="module")
def allocation_cases_measured(tmp_path_factory):
    """Each case of ALLOCATION_CASES made in a copy of nano's folder, then loaded in a process of its own (one new
    interpreter, a fork per folder: tests/helpers.py): case -> (words its refusal must say, (outcome, seconds,
    peak RSS growth in MB))."""
    folders, words = [], []
    for case in ALLOCATION_CASES:
        m = _copy(NANO_SR, tmp_path_factory.mktemp(case))
        config = m / "transformer" / "config.json"
        if case == "position_table":
            _json(config, sample_size=768, interpolation_scale=1)  # 768: nano's largest tensor dimension
            words.append("MiB of tables its weights do not hold")
        else:
            _json(config, num_layers=20_000)
            # 20 000 empty tensors, one of them 20000 x 0 (so 20000 is within the largest dimension too)
            pads = {f"pad.{i}": torch.zeros(20_000 if i == 0 else 0, 0) for i in range(20_000)}
            _tensors(m / WEIGHTS, lambda s, pads=pads: s.update(pads))
            words.append("'num_layers' = 20000 builds about")
        folders.append(m)
    return dict(zip(ALLOCATION_CASES, zip(words, load_each_in_a_fresh_process(folders), strict=True), strict=True))


@pytest.mark.parametrize("case", ALLOCATION_CASES)
def test_what_a_config_makes_the_loader_allocate_is_capped_before_it_is_built(allocation_cases_measured, case):
    """Issue 34, item 7: a non-persistent sin-cos position table (`interpolation_scale` 1 with the largest
    `sample_size` the header allows: 75 MB of table for nano's 7 MB of weights, GB for a wider model) and 20 000
    zero-size padding tensors (one 20000 x 0) that lift the layer caps to `num_layers` 20000 (minutes and GB of
    building on the meta device) are refused from the header and two small meta builds: in well under a second
    of work and under 200 MB, measured in a fresh process."""
    words, (outcome, seconds, grown_mb) = allocation_cases_measured[case]
    assert outcome.startswith("REFUSED") and words in outcome, outcome
    assert seconds < 5 and grown_mb < 200, (seconds, grown_mb)
