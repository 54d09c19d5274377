"""A real two-process `accelerate launch` run on CPU splits the folder: no file twice, one merged report."""

import json
import subprocess
import sys

from PIL import Image

from tests.helpers import REPO_ROOT, child_env


def test_two_processes_split_the_work_and_merge_one_report(image_folder, tmp_path):
    (image_folder / "broken.png").write_text("not an image")  # 4 inputs, one failing
    out, report = tmp_path / "out", tmp_path / "run.json"
    # accelerate 1.15: `--cpu` starts a single process unless MPI is set up; `--multi_gpu` starts torchrun
    # workers, which fall back to gloo on CPU when no GPU is visible (sanasr passes cpu=True to PartialState).
    env = child_env(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "sanasr_cli",
        "upscale",
        str(image_folder),
        "-o",
        str(out),
        "--model",
        "tiny",
        "--report",
        str(report),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode != 0, proc.stderr  # one input failed -> exit 1 (after all others ran)
    doc = json.loads(report.read_text())
    inputs = [r["input"] for r in doc["records"]]
    assert sorted(inputs) == sorted(str(p) for p in image_folder.iterdir()) and len(inputs) == len(set(inputs))
    assert {r["process"] for r in doc["records"]} == {0, 1}
    assert doc["meta"]["processes"] == 2 and doc["summary"] == {"inputs": 4, "ok": 3, "failed": 1}
    assert {p.name: Image.open(p).size for p in out.glob("*.png")} == {
        "a.png": (64, 64),
        "b.png": (84, 52),
        "c.png": (48, 80),
    }
    # torchrun prints its own ChildFailedError traceback for any worker exiting 1; none may come from sanasr
    own_frames = f'File "{REPO_ROOT / "sanasr_cli"}'
    assert own_frames not in proc.stderr and "failed:" in proc.stderr and "broken.png" in proc.stderr
