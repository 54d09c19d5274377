"""Issue 35: offline by default where it can be. A shipped model trains offline with its own defaults (said in one
line); a model, tagger or metric that needs a download says so in one line before trying, naming what runs
offline; where the hub cannot be reached that is an error at once, not a minute of huggingface_hub's retries;
`--base` naming a folder that is not there is "not found", not a hub lookup."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sanasr_cli.cli import app
from sanasr_cli.cli import train as train_cli
from sanasr_cli.models.presets import SANA_600M_512_HUB_ID
from tests.helpers import child_env, photo_folder, runner

TORCH_THREADS = 1


@pytest.fixture
def captured(monkeypatch, tmp_path):
    """Stop before training: keep the TrainConfig the command built. No VGG16 weights on this "machine"."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    seen = []
    monkeypatch.setattr(train_cli, "_run", seen.append)
    return seen


def test_nano_trains_offline_with_its_own_crop_and_no_lpips_when_vgg_is_absent(tmp_path, captured):
    hq = photo_folder(tmp_path / "photos", 2)
    result = runner.invoke(app, ["train", "--hq", str(hq), "-o", str(tmp_path / "run"), "--model", "nano"])
    assert result.exit_code == 0, result.output
    assert (captured[-1].crop, captured[-1].batch_size, captured[-1].lambda_perceptual) == (128, 2, 0.0)
    line = " ".join(result.output.split())
    assert "--model nano trains offline with --crop 128, --batch-size 2, --lambda-perceptual 0 (LPIPS needs" in line
    # flags given win, and the paper's model keeps the paper's defaults (its weights are a download anyway)
    given = ["--crop", "256", "--batch-size", "4", "--lambda-perceptual", "2"]
    result = runner.invoke(app, ["train", "--hq", str(hq), "-o", str(tmp_path / "r2"), "--model", "nano", *given])
    assert result.exit_code == 0 and "trains offline" not in result.output, result.output
    assert (captured[-1].crop, captured[-1].batch_size, captured[-1].lambda_perceptual) == (256, 4, 2.0)
    runner.invoke(app, ["train", "--hq", str(hq), "-o", str(tmp_path / "r3"), "--model", "sana-600m-512"])
    assert (captured[-1].crop, captured[-1].lambda_perceptual) == (512, 2.0)
    # with the weights on the machine, LPIPS stays on
    vgg = tmp_path / "torch_home" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    vgg.parent.mkdir(parents=True)
    vgg.write_bytes(b"weights")
    result = runner.invoke(app, ["train", "--hq", str(hq), "-o", str(tmp_path / "r4"), "--model", "nano"])
    assert (captured[-1].crop, captured[-1].lambda_perceptual) == (128, 2.0), result.output


def test_what_needs_the_hub_says_so_and_fails_at_once_where_it_cannot_be_reached(tmp_path):
    """One process with no network (every connection through a proxy at a closed local port, so nothing can be
    downloaded even on a machine with network) and no HF_HUB_OFFLINE: the default model, the CLIP tagger and
    eval's default metrics each say what needs a download before trying, the first hub request finds the hub
    unreachable and switches to the cache, and nothing is retried. Each command starts as a process of its own
    would (online, the hub not yet probed): one process saves the start-ups."""
    from PIL import Image

    from tests.helpers import make_photo_like

    Image.fromarray(make_photo_like(8, 8)).save(tmp_path / "one.png")
    (tmp_path / "gt").mkdir()
    Image.fromarray(make_photo_like(192, 192)).save(tmp_path / "gt" / "one.png")  # niqe (a default) scores >= 192
    closed = "http://127.0.0.1:9"  # the discard port: refused at once
    # the test suite's network guard stays on in the child (child_env): anything but the proxy fails the test
    env = child_env(HTTPS_PROXY=closed, HTTP_PROXY=closed, https_proxy=closed, http_proxy=closed, NO_PROXY="")
    env.update(HF_HOME=str(tmp_path / "hf"), TORCH_HOME=str(tmp_path / "torch"))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(name, None)
    code = (
        "import os, sys\n"
        "from huggingface_hub import constants\n"
        "from typer.testing import CliRunner\n"
        "from sanasr_cli import hub\n"
        "from sanasr_cli.cli import app\n"
        "for args in sys.argv[1:]:\n"
        "    os.environ.pop('HF_HUB_OFFLINE', None)  # each command as in a process of its own: not yet probed\n"
        "    constants.HF_HUB_OFFLINE = False\n"
        "    hub.hub_reachable.cache_clear()\n"
        "    r = CliRunner().invoke(app, args.split('|'))\n"
        "    print(f'=== {args} -> {r.exit_code}')\n"
        "    print(r.output)\n"
    )
    t = str(tmp_path)
    commands = [
        f"upscale|{t}/one.png|-o|{t}/a",
        f"upscale|{t}/one.png|-o|{t}/b|--model|nano|--tagger|clip",
        f"upscale|{t}/one.png|-o|{t}/c|--base|{t}/no/such/folder",
        f"eval|--sr|{t}/gt|--hr|{t}/gt",
    ]
    proc = subprocess.run([sys.executable, "-c", code, *commands], env=env, capture_output=True, text=True, timeout=600)
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 0, out[-3000:]
    assert "Retrying" not in out and "Retry " not in out, out[-3000:]
    default, clip, base, scores = out.split("=== ")[1:]
    notice = f"warning: the weights of 'sana-600m-512': downloading '{SANA_600M_512_HUB_ID}' from the Hugging Face hub"
    assert "-> 1" in default and notice in default, default
    assert "note: the Hugging Face hub cannot be reached" in default, default
    assert "--model nano, nano-fast or tiny run offline" in default and "error: missing weights" in default, default
    notice = "warning: the CLIP tagger: downloading 'openai/clip-vit-base-patch32' from the Hugging Face hub"
    assert "-> 1" in clip and notice in clip and "--tagger none or file run offline" in clip, clip
    assert "-> 2" in base and f"base folder {t}/no/such/folder not found" in base and "Hugging Face" not in base
    assert "-> 1" in scores and "psnr, ssim, niqe run offline" in scores and "need downloaded weights" in scores
    assert "│ psnr" in proc.stdout + proc.stderr and "│ niqe" in proc.stdout + proc.stderr  # still computed
