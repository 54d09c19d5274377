"""Issue 14: `sanasr train` takes its defaults from TrainConfig (one source) and accepts `--config
train_config.json` (the file a run writes), explicit flags overriding the file's values."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
import typer.main

from sanasr_cli.cli import app
from sanasr_cli.cli import train as train_cli
from sanasr_cli.training.config import TrainConfig, apply_offline_defaults
from tests.helpers import TINY_TRAIN, photo_folder, runner

TORCH_THREADS = 1


def test_every_flag_default_is_train_configs():
    command = typer.main.get_command(app).commands["train"]
    defaults = TrainConfig()
    fields_by_name = {f.name for f in fields(TrainConfig)}
    checked = set()
    for param in command.params:
        if param.name in fields_by_name and param.name not in ("output", "hq", "pairs"):
            assert param.default == getattr(defaults, param.name), param.name
            checked.add(param.name)
    # every field is a flag but the prompt rule (made from the prompt flags), x4 and Adam's betas and eps
    assert checked == fields_by_name - {"output", "hq", "pairs", "prompt_rule", "scale", "adam_beta1",
                                        "adam_beta2", "adam_eps"}  # fmt: skip


@pytest.fixture
def captured(monkeypatch):
    """Stop before training: keep the TrainConfig the command built."""
    seen = []
    monkeypatch.setattr(train_cli, "_run", seen.append)
    return seen


def test_flags_without_config_give_train_configs_defaults(tmp_path, captured):
    hq = photo_folder(tmp_path / "hq", 2)
    result = runner.invoke(app, ["train", "--hq", str(hq), "-o", str(tmp_path / "run"), "--model", "tiny"])
    assert result.exit_code == 0, result.output
    (config,) = captured
    want = TrainConfig(model="tiny")
    apply_offline_defaults(want, set())  # a shipped preset trains offline: no LPIPS where VGG16 is not here
    got, want = config.to_dict(), want.to_dict()
    for key in want.keys() - {"hq", "output", "prompt_rule"}:
        assert got[key] == want[key], key
    assert config.hq == [hq.resolve()] and config.output == tmp_path / "run" and config.prompt_rule is not None


def test_config_file_of_a_run_with_flags_overriding_it(tmp_path, monkeypatch):
    """A real run's train_config.json, read back: the same config; a flag given changes only its field."""
    hq = photo_folder(tmp_path / "hq", 2)
    first = [*TINY_TRAIN, "--hq", str(hq), "-o", str(tmp_path / "run"), "--max-steps", "1", "--save-every", "1",
             "--validation-images", "0", "--lr", "1e-4", "--tagger", "file", "--template", "sharp"]  # fmt: skip
    result = runner.invoke(app, ["train", *first])
    assert result.exit_code == 0, result.output
    written = tmp_path / "run" / "train_config.json"
    saved = json.loads(written.read_text())
    captured = []
    monkeypatch.setattr(train_cli, "_run", captured.append)  # from here on: stop before training
    result = runner.invoke(app, ["train", "--config", str(written)])
    assert result.exit_code == 0, result.output
    assert captured[-1].to_dict() == saved  # everything from the file, -o included
    result = runner.invoke(
        app, ["train", "--config", str(written), "-o", str(tmp_path / "run2"), "--lora-rank", "8", "--lr", "2e-4"]
    )
    assert result.exit_code == 0, result.output
    got = captured[-1].to_dict()
    assert (got["output"], got["lora_rank"], got["lr"]) == (str(tmp_path / "run2"), 8, 2e-4)
    assert {k: v for k, v in got.items() if k not in ("output", "lora_rank", "lr")} == {
        k: v for k, v in saved.items() if k not in ("output", "lora_rank", "lr")
    }  # the file's values, the default-valued flags not given included (e.g. --max-steps 1, --crop 16)
    assert got["prompt_rule"]["tagger"] == "file" and got["prompt_rule"]["template"] == "sharp"
    result = runner.invoke(app, ["train", "--config", str(written), "--template", "clean"])
    assert captured[-1].prompt_rule["tagger"] == "file" and captured[-1].prompt_rule["template"] == "clean"


def test_a_bad_config_or_no_output_is_one_line_exit_2(tmp_path, captured):
    hq = photo_folder(tmp_path / "hq", 2)
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    for args, expected in (
        (["--config", str(tmp_path / "missing.json")], "--config"),
        (["--config", str(bad)], "not a train_config.json"),
        (["--hq", str(hq), "--model", "tiny"], "--output"),
    ):
        result = runner.invoke(app, ["train", *args])
        assert result.exit_code == 2, (args, result.output)
        lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and expected in lines[0], (args, result.output)
        assert "Traceback" not in result.output
    assert captured == []


def test_resume_latest_as_documented_continues_the_run_without_repeating_its_flags(tmp_path):
    """Issue 35: docs/train.md's `sanasr train --hq photos -o runs/sr --resume latest` failed unless every flag
    of the first command was repeated (or --config RUN/train_config.json given): the run's own config is used."""
    hq = photo_folder(tmp_path / "photos", 2)
    run = tmp_path / "runs" / "sr"
    common = ["train", "--hq", str(hq), "-o", str(run)]
    first = runner.invoke(
        app, [*common, *TINY_TRAIN, "--max-steps", "1", "--save-every", "1", "--validation-images", "0"]
    )
    assert first.exit_code == 0, first.output
    resumed = runner.invoke(app, [*common, "--resume", "latest", "--max-steps", "2"])
    assert resumed.exit_code == 0, resumed.output
    assert f"the run's settings from {run / 'train_config.json'}" in " ".join(resumed.output.split())
    assert (run / "checkpoint-2" / "sanasr.json").is_file()
    config = json.loads((run / "train_config.json").read_text())
    assert config["model"] == "tiny" and config["lora_rank"] == 4 and config["max_steps"] == 2
