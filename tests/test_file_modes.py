"""Issue 15 (and the issue 14 review): files sanasr writes get the usual permissions, 0666 less the umask, and
folders 0777 less the umask, whatever writes them (safe_files' write, a staging folder renamed into place, a
library's save_pretrained). Temp files (mkstemp) and staging folders (mkdtemp) are 0600 / 0700: before this,
`--report`, `--save-prompts` texts, `train_config.json`, the safetensors files of checkpoints and the checkpoint
folders themselves kept those modes.

The runs use umask 027, so a file that ignored the umask (0644) fails the test as well as a 0600 one.
"""

import os
import stat

import pytest
import torch

from tests.helpers import TINY_TRAIN, photo_folder, run

UMASK = 0o027


@pytest.fixture(autouse=True)
def _umask_and_one_thread():
    old_mask = os.umask(UMASK)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    os.umask(old_mask)


def wrong_modes(*roots) -> list[str]:
    """Every file under roots that is not 0666 & ~UMASK, every folder not 0777 & ~UMASK (links are not
    followed)."""
    bad = []
    for root in roots:
        assert root.is_dir(), root
        for dirpath, dirnames, filenames in os.walk(root):
            for name, want in [(d, 0o777) for d in dirnames] + [(f, 0o666) for f in filenames]:
                path = os.path.join(dirpath, name)
                mode = stat.S_IMODE(os.lstat(path).st_mode)
                if not os.path.islink(path) and mode != want & ~UMASK:
                    bad.append(f"{os.path.relpath(path, root.parent)} {oct(mode)}")
        mode = stat.S_IMODE(root.stat().st_mode)
        if mode != 0o777 & ~UMASK:
            bad.append(f"{root.name} {oct(mode)}")
    return bad


def test_upscale_files_have_the_usual_modes(tmp_path, tiny_clip):
    inputs = photo_folder(tmp_path / "in", 2, (8, 8))
    result = run(
        "upscale", inputs, "-o", tmp_path / "out", "--model", "tiny", "--report", tmp_path / "out" / "report.json",
        "--save-prompts", "--tagger", "clip", "--tagger-model", tiny_clip, "--tag-cache", tmp_path / "tags",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "report.json").is_file() and (tmp_path / "out" / "img0.txt").is_file()
    assert list((tmp_path / "tags").rglob("*.json"))  # the tag cache was written
    assert wrong_modes(tmp_path / "out", tmp_path / "tags") == []


def test_train_and_merge_files_have_the_usual_modes(tmp_path, tiny_clip):
    hq = photo_folder(tmp_path / "hq", 2)
    result = run(
        "train", "--hq", hq, "-o", tmp_path / "run", *TINY_TRAIN, "--max-steps", "1", "--save-every", "1",
        "--validate-every", "1", "--validation-images", "1", "--log-every", "1", "--tagger", "clip",
        "--tagger-model", tiny_clip,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "run"
    for name in ("train_config.json", "log.jsonl", "checkpoint-1/train/optimizer.pt",
                 "checkpoint-1/train/rng.safetensors", "checkpoint-1/adapter/adapter_model.safetensors"):  # fmt: skip
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "validation").iterdir()) and list((run_dir / "tensorboard").iterdir())
    # merge-lora writes a full transformer with diffusers' save_pretrained into its staging folder
    result = run("merge-lora", run_dir / "checkpoint-1", "-o", tmp_path / "merged")
    assert result.exit_code == 0, result.output
    assert list((tmp_path / "merged" / "transformer").glob("*.safetensors"))
    assert wrong_modes(run_dir, tmp_path / "merged") == []


def test_the_dataset_index_has_the_usual_modes(tmp_path):
    from sanasr_cli.data.datasets import _scan_all

    hq = photo_folder(tmp_path / "hq", 1)
    (tmp_path / "index").mkdir()
    _scan_all(sorted(hq.iterdir()), 10**8, tmp_path / "index" / "files.json")
    assert (tmp_path / "index" / "files.json").is_file()
    assert wrong_modes(tmp_path / "index") == []


def test_prune_eval_degrade_and_bench_files_have_the_usual_modes(tmp_path):
    """The other commands' files: prune's model directory, eval's --json / --csv and --save-dir images, degrade's
    pairs and manifest, bench's --json and --plot."""
    hq = photo_folder(tmp_path / "hq", 2, (32, 32))
    result = run("prune", "tiny", "-o", tmp_path / "pruned", "--budget", "75K", "--strategy", "tail")
    assert result.exit_code == 0, result.output
    result = run("degrade", hq, "-o", tmp_path / "pairs", "--crop", "16")
    assert result.exit_code == 0, result.output
    reports = tmp_path / "reports"
    result = run(
        "eval", "--model", "tiny", "--lq", tmp_path / "pairs" / "lq", "--hr", tmp_path / "pairs" / "hq",
        "--metrics", "psnr", "--save-dir", tmp_path / "restored", "--json", reports / "eval.json",
        "--csv", reports / "eval.csv", "--tag-cache", "off",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    result = run(
        "bench", "--model", "tiny", "--size", "64", "--latency", "off", "--json", reports / "bench.json",
        "--plot", reports / "bench.png",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in ("eval.json", "eval.csv", "bench.json", "bench.png"):
        assert (reports / name).is_file(), name
    assert (tmp_path / "pruned" / "prune_report.json").is_file() and list((tmp_path / "restored").glob("*.png"))
    assert (tmp_path / "pairs" / "degradation.json").is_file()
    folders = [tmp_path / d for d in ("pruned", "pairs", "restored", "reports")]
    assert wrong_modes(*folders) == []
