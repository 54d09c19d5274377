"""Issue 15: every command, walked with a table of bad inputs.

For each row: the documented exit code (2 bad input / refused write, 1 failed), exactly one `error:` line, no
traceback, and every file that was there before keeps its bytes (nothing is written, replaced or deleted).
"""

import json

import pytest
import torch
from PIL import Image

from tests.helpers import TINY_TRAIN, make_photo_like, one_error_line, run, snapshot

TORCH_THREADS = 1  # tiny tensors: one intra-op thread (see tests/conftest.py)


def _tree(tmp):
    """in/ (two photos and a corrupt one), a description-only model directory (tiny preset, no weights to
    load), a training run, a plain file and a link to it, a folder of corrupt images."""
    (tmp / "in").mkdir()
    for i, name in enumerate(("a.png", "b.png")):
        Image.fromarray(make_photo_like(8, 8, i)).save(tmp / "in" / name)
    (tmp / "model").mkdir()
    (tmp / "model" / "sanasr.json").write_text(json.dumps({"format": "sanasr-model", "version": 1}))
    (tmp / "run" / "checkpoint-1").mkdir(parents=True)
    (tmp / "run" / "checkpoint-1" / "sanasr.json").write_text(json.dumps({"format": "sanasr-model", "version": 1}))
    (tmp / "run" / "log.jsonl").write_text('{"step": 1}\n')
    (tmp / "file.txt").write_text("a file")
    (tmp / "link").symlink_to(tmp / "file.txt")
    (tmp / "corrupt" / "hq").mkdir(parents=True)
    (tmp / "corrupt" / "lq").mkdir()
    (tmp / "corrupt" / "hq" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp / "corrupt" / "lq" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (tmp / "array.json").write_text("[1, 2]")
    (tmp / "notes").mkdir()
    (tmp / "notes" / "degradation.json").write_text("the user's notes")
    for name, value in {
        "jpeg.json": {"jpeg_range": [500, 1000]},
        "prob_neg.json": {"gaussian_noise_prob": -3},
        "prob_big.json": {"sinc_prob": 5},
        "poisson.json": {"poisson_scale_range": [-1, 2]},
    }.items():
        (tmp / name).write_text(json.dumps(value))
    (tmp / "badmodel").mkdir()
    (tmp / "badmodel" / "sanasr.json").write_text("[]")
    (tmp / "escape").mkdir()
    (tmp / "escape" / "sanasr.json").write_text(
        json.dumps({"format": "sanasr-model", "version": 1, "transformer": "../../x"})
    )


UP = ["upscale", "{t}/in", "-o", "{t}/out", "--model", "tiny"]
ROWS = [
    # (command line, exit code, words in the error line)
    (["upscale", "{t}/missing", "-o", "{t}/out", "--model", "tiny"], 2, "does not exist"),
    ([*UP, "--scale", "inf"], 2, "--scale"),
    ([*UP, "--max-pixels", "inf"], 2, "--max-pixels"),
    ([*UP, "--suffix", "/../../x"], 2, "--suffix"),
    ([*UP, "--report", "{t}/in"], 2, "is a folder"),
    ([*UP, "--report", "{t}/file.txt/r.json"], 2, "is a file, not a folder"),
    (["upscale", "{t}/in", "-o", "{t}/in/out", "--model", "tiny"], 2, "inside the input folder"),
    (["upscale", "{t}/in", "-o", "{t}/out", "--model", "{t}/badmodel"], 2, "not an object"),
    (["upscale", "{t}/in", "-o", "{t}/out", "--model", "{t}/escape"], 2, "'transformer'"),
    # a distilled decoder student decodes in place of the VAE's decoder: --vae-decoder would be ignored
    (["upscale", "{t}/in", "-o", "{t}/out", "--model", "nano-fast", "--vae-decoder", "full"], 2, "decoder student"),
    (["bench", "--model", "nano-fast", "--latency", "off", "--vae-decoder", "lite"], 2, "decoder student"),
    (["degrade", "{t}/in", "-o", "{t}/d", "--config", "{t}/jpeg.json"], 2, "jpeg_range"),
    (["degrade", "{t}/in", "-o", "{t}/d", "--config", "{t}/prob_neg.json"], 2, "gaussian_noise_prob"),
    (["degrade", "{t}/in", "-o", "{t}/d", "--config", "{t}/prob_big.json"], 2, "sinc_prob"),
    (["degrade", "{t}/in", "-o", "{t}/d", "--config", "{t}/poisson.json"], 2, "poisson_scale_range"),
    (["degrade", "{t}/in", "-o", "{t}/d", "--config", "{t}/array.json"], 2, "JSON object"),
    (["degrade", "{t}/in", "-o", "{t}/notes"], 2, "degradation.json already exists and was not written by sanasr"),
    (["merge-lora", "{t}/in", "-o", "{t}/m"], 2, "sanasr.json"),
    (["merge-lora", "{t}/model", "-o", "{t}/file.txt", "--overwrite"], 2, "not a folder"),
    (["merge-lora", "{t}/model", "-o", "{t}/link", "--overwrite"], 2, "not a folder"),
    (["merge-lora", "{t}/run/checkpoint-1", "-o", "{t}/run", "--overwrite"], 2, "never replaced"),
    (["merge-lora", "{t}/badmodel", "-o", "{t}/m"], 2, "not an object"),
    (["prune", "{t}/model", "-o", "{t}/p", "--budget", "lots"], 2, "budget"),
    (
        ["prune", "{t}/run/checkpoint-1", "-o", "{t}/run", "--overwrite", "--budget", "1", "--strategy", "tail"],
        2,
        "never replaced",
    ),
    (
        ["prune", "tiny", "-o", "{t}/p", "--budget", "60K", "--calib", "{t}/corrupt/hq", "--steps", "1"],
        2,
        "1 unreadable",
    ),
    (["prune", "tiny", "-o", "{t}/p", "--budget", "60K", "--calib", "{t}/corrupt", "--steps", "1"], 2, "2 unreadable"),
    (["train", "--hq", "{t}/missing", "-o", "{t}/r", "--model", "tiny"], 2, "--hq"),
    (["train", "--hq", "{t}/in", "-o", "{t}/r", "--model", "{t}/badmodel"], 2, "not an object"),
    (["eval", "--sr", "{t}/in", "--hr", "{t}/in", "--metrics", "psnr", "--json", "{t}/in"], 2, "is a folder"),
    (["eval", "--sr", "{t}/in", "--hr", "{t}/in", "--metrics", "psnr", "--csv", "{t}/file.txt/x.csv"], 2, "is a file"),
    (["eval", "--model", "{t}/badmodel", "--lq", "{t}/in"], 2, "not an object"),
    (["eval", "--hr", "{t}/in"], 2, "exactly one of"),
    (["bench", "--model", "tiny", "--size", "8"], 2, "--size"),
    (["bench", "--model", "tiny", "--compare-backends", "--compare", "osediff"], 2, "does not take --compare"),
    (["bench", "--model", "tiny", "--compare-backends", "--precision", "bf16"], 2, "on the CPU in fp32"),
    (["bench", "--model", "tiny", "--plot", "{t}/in", "--latency", "off"], 2, "is a folder"),
    (["bench", "--model", "{t}/escape", "--latency", "off"], 2, "'transformer'"),
    (["distill", "encoder", "tiny", "-o", "{t}/d", "--hq", "{t}/nothing"], 2, "not a folder"),
    (["distill", "encoder", "tiny", "-o", "{t}/d", "--hq", "{t}/corrupt/hq"], 2, "unreadable image"),
    (["distill", "decoder", "{t}/badmodel", "-o", "{t}/d", "--hq", "{t}/in"], 2, "not an object"),
    (["distill", "encoder", "tiny", "-o", "{t}/file.txt", "--hq", "{t}/in"], 2, "already exists"),
    (["distill", "encoder", "tiny", "-o", "{t}/d", "--hq", "{t}/in", "--resume", "{t}/run"], 2, "not a distill"),
    # issue 34: a report that is an input, a model name too long for a file name, an OUT that cannot be a folder
    ([*UP, "--report", "{t}/in/a.png"], 2, "is an input of this run"),
    (["eval", "--sr", "{t}/in", "--hr", "{t}/in", "--metrics", "psnr", "--json", "{t}/in/b.png"], 2, "is an input"),
    (["upscale", "{t}/in", "-o", "{t}/out", "--model", "m" * 5000], 2, "neither a preset nor a model directory"),
    (["export", "m" * 5000, "-o", "{t}/e"], 2, "neither a preset nor a model directory"),
    (["export", "tiny", "-o", "{t}/file.txt/sub"], 2, "file.txt is not a folder"),
    (["export", "tiny", "-o", "/dev/full/x"], 2, "/dev/full is not a folder"),
]


@pytest.mark.parametrize("args, code, words", ROWS, ids=[" ".join(r[0][:1] + r[0][-2:]) for r in ROWS])
def test_bad_input_is_one_line_with_the_documented_exit_code(tmp_path, args, code, words):
    _tree(tmp_path)
    before = snapshot(tmp_path)
    result = run(*[a.format(t=tmp_path) for a in args])
    assert result.exit_code == code, result.output
    assert words in one_error_line(result), result.output
    assert snapshot(tmp_path) == before  # nothing written, replaced or deleted


CUDA_ROWS = [
    [*UP, "--device", "cuda"],
    ["eval", "--model", "tiny", "--lq", "{t}/in", "--hr", "{t}/in", "--save-dir", "{t}/e", "--device", "cuda"],
    ["bench", "--model", "tiny", "--device", "cuda"],
    ["degrade", "{t}/in", "-o", "{t}/d", "--device", "cuda"],
    ["demo", "--model", "tiny", "--device", "cuda"],
    ["prune", "tiny", "-o", "{t}/p", "--budget", "60K", "--strategy", "tail", "--device", "cuda"],
    ["distill", "encoder", "tiny", "-o", "{t}/d", "--hq", "{t}/in", "--device", "cuda"],
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without a CUDA GPU")
@pytest.mark.parametrize("args", CUDA_ROWS, ids=[r[0] for r in CUDA_ROWS])
def test_device_cuda_without_a_gpu_is_one_usage_line(tmp_path, args):
    """Issue 35: upscale, eval, bench, degrade and demo said "unexpected BadParameter ... (this is a bug)", exit 1."""
    _tree(tmp_path)
    before = snapshot(tmp_path)
    result = run(*[a.format(t=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert "--device" in line and "no CUDA GPU" in line and "bug" not in line, result.output
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- train --resume from a damaged checkpoint

TRAIN = [*TINY_TRAIN, "--validation-images", "0"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real one-step run (checkpoint-1 with adapter/, adapter_ema/, train/) and its HQ folder."""
    from sanasr_cli.cli import app
    from tests.helpers import runner

    root = tmp_path_factory.mktemp("trained")
    for i in range(4):
        Image.fromarray(make_photo_like(40, 48, i)).save(_mkdir(root / "hq") / f"img{i}.png")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    result = runner.invoke(app, ["train", "--hq", str(root / "hq"), "-o", str(root / "run"), "--max-steps", "1",
                                 "--save-every", "1", *TRAIN])  # fmt: skip
    torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    return root


def _mkdir(p):
    p.mkdir(parents=True, exist_ok=True)
    return p


class _RunsCode:
    """Pickles as a call of os.system: loading it without weights_only would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _edit_json(rel, **fields):
    def edit(ckpt, marker):
        path = ckpt / rel
        data = json.loads(path.read_text())
        data.update(fields)
        path.write_text(json.dumps(data))

    return edit


def _truncate(rel, keep):
    def cut(ckpt, marker):
        path = ckpt / rel
        path.write_bytes(path.read_bytes()[:keep])

    return cut


def _rng_numpy(ckpt, marker):
    path = ckpt / "train/state.json"
    state = json.loads(path.read_text())
    state["rng"]["0"]["numpy"] = "MT19937"
    path.write_text(json.dumps(state))


def _pickle_with_code(ckpt, marker):
    torch.save({"state": {}, "param_groups": [], "x": _RunsCode(marker)}, ckpt / "train/optimizer.pt")


RESUME_ROWS = [
    # (what is done to checkpoint-1, words in the error line)
    (_pickle_with_code, "train/optimizer.pt holds Python objects that are not tensors"),
    (_truncate("train/optimizer.pt", 5000), "train/optimizer.pt is damaged, truncated"),
    (_truncate("train/rng.safetensors", 3000), "train/rng.safetensors is damaged, truncated"),
    (lambda c, m: (c / "train/rng.safetensors").write_bytes(b"\x10" + b"\x00" * 7 + b"{not json"), "rng.safetensors"),
    (lambda c, m: (c / "adapter/adapter_model.safetensors").write_bytes(b"\xff" * 8 + b"{}"), "adapter/adapter_model"),
    (_truncate("adapter_ema/adapter_model.safetensors", 100), "adapter_ema/adapter_model.safetensors is damaged"),
    (_edit_json("train/state.json", step="two"), "'step' must be a whole number >= 0, not \"two\""),
    (_edit_json("train/state.json", epoch=-1), "'epoch' must be a whole number >= 0"),
    (_edit_json("train/state.json", scheduler=[1]), "'scheduler' must be an object"),
    (_edit_json("train/state.json", scheduler={"last_epoch": 1}), "train/state.json is damaged"),
    (_rng_numpy, "random states are not the ones sanasr writes"),
    (lambda c, m: (c / "train/state.json").write_text("[1]"), "train/state.json is not a JSON object"),
    (lambda c, m: (c / "train/train_config.json").write_text("{oops"), "train/train_config.json"),
    (_edit_json("train/train_config.json", hq=5), "train/train_config.json"),
]


@pytest.mark.parametrize("tamper, words", RESUME_ROWS, ids=[w[:40] for _, w in RESUME_ROWS])
def test_resume_from_a_damaged_checkpoint_is_one_line_exit_2(trained_run, tmp_path, tamper, words):
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(trained_run / "run", folder)
    marker = tmp_path / "code-ran"
    tamper(folder / "checkpoint-1", marker)
    before = snapshot(folder)
    result = run(*["train", "--hq", str(trained_run / "hq"), "-o", str(folder), "--max-steps", "2",
                      "--save-every", "1", "--resume", "latest", *TRAIN])  # fmt: skip
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert words in line and str(folder / "checkpoint-1") in line, line
    assert "weights_only" not in result.output and "bug in sanasr" not in line
    assert not marker.exists()  # the tampered pickle was refused unread
    after = snapshot(folder)
    # the run's own train_config.json (the resolved options) is rewritten on every start; nothing else changes
    assert {k: v for k, v in after.items() if k != "train_config.json"} == {
        k: v for k, v in before.items() if k != "train_config.json"
    }
