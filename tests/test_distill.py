"""`sanasr distill` and the student encoder / decoder on the tiny preset (real classes, random teacher).

The students (models/students.py) are diffusers DC-AE Encoder / Decoder stacks with a pixel (un)shuffle; a model
directory records them in sanasr.json, load_model plugs them into the codec, and every inference path (upscale,
tiling, the Python API, bench) runs them; --full-vae runs the teacher.
"""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import make_photo_like

TORCH_THREADS = 1


def write_photo_like(path, height, width, seed=0):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_photo_like(height, width, seed)).save(path)


def _cli(*args):
    from sanasr_cli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def hq_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hq")
    for i in range(2):
        write_photo_like(root / f"p{i}.png", 40, 48, seed=i)
    return root


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, hq_dir):
    """tiny + a student encoder (2 steps, then resumed to 4) + a student decoder (2 steps): (enc_dir, both_dir)."""
    root = tmp_path_factory.mktemp("distill")
    common = ["--hq", hq_dir, "--batch-size", "2", "--crop", "32", "--save-every", "2"]
    r = _cli("distill", "encoder", "tiny", "-o", root / "enc", "--steps", "2", *common)
    assert r.exit_code == 0, r.output
    r = _cli("distill", "encoder", "tiny", "-o", root / "enc", "--steps", "4", "--overwrite", *common)
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "resumed from" in out and "(step 2)" in out
    r = _cli("distill", "decoder", root / "enc", "-o", root / "both", "--steps", "2", *common)
    assert r.exit_code == 0, r.output
    return root / "enc", root / "both"


def test_students_shapes_and_diffusers_folder_round_trip(tmp_path, tiny_model):
    from sanasr_cli.models.students import LightDecoder, LQEncoder, build_student, student_config

    codec = tiny_model.codec
    enc = build_student("encoder", student_config("encoder", codec.vae.config, "tiny"))
    dec = build_student("decoder", student_config("decoder", codec.vae.config, "tiny"))
    lq = torch.rand(1, 3, 6, 10)  # LQ factor 2 for the f8 tiny VAE: latent 3x5, as E(bicubic_x4) of 24x40
    z = enc(lq)
    assert z.shape == codec.encode(torch.rand(1, 3, 24, 40)).shape == (1, 8, 3, 5)
    assert dec(z).shape == (1, 3, 24, 40)
    enc.save_pretrained(tmp_path / "e")
    dec.save_pretrained(tmp_path / "d")
    assert (tmp_path / "e" / "config.json").is_file() and list((tmp_path / "e").glob("*.safetensors"))
    enc2, dec2 = LQEncoder.from_pretrained(tmp_path / "e"), LightDecoder.from_pretrained(tmp_path / "d")
    assert torch.equal(enc2(lq), z) and torch.equal(dec2(z), dec(z))


def test_a_student_whose_stages_miss_the_teacher_factor_is_refused():
    from sanasr_cli.models.students import LightDecoder, LQEncoder

    with pytest.raises(ValueError, match="teacher factor"):
        LQEncoder(teacher_factor=8, block_out_channels=(8,), layers_per_block=(1,), block_types=("ResBlock",),
                  qkv_multiscales=((),))  # fmt: skip
    with pytest.raises(ValueError, match="teacher factor"):
        LightDecoder(teacher_factor=8, out_shuffle=2, block_out_channels=(8,), layers_per_block=(1,),
                     block_types=("ResBlock",), qkv_multiscales=((),))  # fmt: skip


def test_distill_writes_a_model_dir_that_records_and_loads_its_students(distilled):
    from sanasr_cli.models.sanasr import load_model
    from sanasr_cli.models.students import LightDecoder, LQEncoder

    enc_dir, both = distilled
    desc = json.loads((both / "sanasr.json").read_text())
    assert desc["encoder"] == "encoder" and desc["decoder"] == "decoder"
    assert desc["distill"]["encoder"]["steps"] == 4 and desc["distill"]["decoder"]["steps"] == 2
    assert "latent MSE" in desc["distill"]["encoder"]["loss"] and "z_hat" in desc["distill"]["decoder"]["loss"]
    run = enc_dir.parent / "enc.run"
    assert (run / "checkpoint-4" / "student" / "config.json").is_file() and (run / "validation-4.png").is_file()
    model = load_model(both)
    assert isinstance(model.codec.lq_encoder, LQEncoder) and isinstance(model.codec.light_decoder, LightDecoder)
    teacher = load_model(both, full_vae=True)
    assert teacher.codec.lq_encoder is None and teacher.codec.light_decoder is None
    # the encoder student's run resumed: its weights are those of its last checkpoint
    from sanasr_cli.models.students import load_student

    last = load_student("encoder", run / "checkpoint-4" / "student")
    lq = torch.rand(1, 3, 8, 8)
    assert torch.equal(last(lq), model.codec.lq_encoder(lq))


@pytest.mark.numerics
def test_upscale_runs_the_students_on_the_lq_and_tiles_in_lq_pixels(distilled):
    from sanasr_cli.models.sanasr import load_model
    from sanasr_cli.pipeline.upscale import upscale_tensor

    model = load_model(distilled[1])
    lq = torch.rand(3, 13, 17)  # odd: padded to the LQ grid (factor 2), cropped back
    with torch.no_grad():
        whole = upscale_tensor(model, lq, "clean", tile="none", color_fix="none")
        codec = model.codec
        embeds, mask = model.prompts.encode_for_transformer(["clean"])
        z = codec.encode_lq(codec.pad_lq(lq[None]))  # the student reads the LQ, not the x4 image
        by_hand = codec.crop(codec.decode(model.restorer(z, embeds, mask)), 52, 68)[0]
        tiled = upscale_tensor(model, lq, "clean", tile=32, color_fix="none")
    assert whole.shape == tiled.shape == (3, 52, 68)
    assert torch.allclose(whole, by_hand, atol=1e-5)
    from sanasr_cli.data.resample import upsample_bicubic

    restored = model.restore(upsample_bicubic(lq[None], 4), ["clean"], lq=lq[None])  # SanaSR.restore reads the LQ
    assert torch.allclose(restored[0], by_hand, atol=1e-5)
    # untrained random students: only a loose agreement here (measured 18.4 dB; the teacher path 25.9 dB); the
    # trained nano-fast is held to nano's own tiling agreement in tests/test_nano_fast.py
    assert float(10 * torch.log10(1 / torch.mean((tiled - whole) ** 2))) > 15
    teacher = load_model(distilled[1], full_vae=True)
    with torch.no_grad():
        full = upscale_tensor(teacher, lq, "clean", tile="none", color_fix="none")
    assert not torch.allclose(full, whole, atol=1e-3)  # --full-vae really runs the teacher


@pytest.mark.numerics
def test_cli_upscale_and_python_api_use_the_students_full_vae_does_not(distilled, tmp_path):
    from sanasr_cli import SanaSRPipeline
    from sanasr_cli.data.io import read_image

    both = distilled[1]
    src = tmp_path / "in"
    write_photo_like(src / "a.png", 12, 10, seed=3)
    assert _cli("upscale", src, "-o", tmp_path / "s", "--model", both, "--color-fix", "none").exit_code == 0
    r = _cli("upscale", src, "-o", tmp_path / "t", "--model", both, "--color-fix", "none", "--full-vae")
    assert r.exit_code == 0, r.output
    students, teacher = read_image(tmp_path / "s" / "a.png")[0], read_image(tmp_path / "t" / "a.png")[0]
    assert students.shape == teacher.shape == (3, 48, 40) and not torch.equal(students, teacher)
    api = SanaSRPipeline.from_pretrained(both)(read_image(src / "a.png")[0], color_fix="none", output_type="pt")
    assert torch.allclose((api.images[0] * 255).round() / 255, students, atol=1.5 / 255)
    full = SanaSRPipeline.from_pretrained(both, full_vae=True)(read_image(src / "a.png")[0], color_fix="none",
                                                               output_type="pt")  # fmt: skip
    assert torch.allclose((full.images[0] * 255).round() / 255, teacher, atol=1.5 / 255)


def test_bench_counts_the_students_and_compares_the_full_vae(distilled):
    from sanasr_cli.evaluation.bench import BenchOptions, count_macs, run_bench
    from sanasr_cli.models.students import LQEncoder

    both = distilled[1]
    (report,) = run_bench(str(both), BenchOptions(sizes=(64,), latency="off", compare=("full-vae",)))
    with torch.device("meta"):
        enc = LQEncoder.from_config(LQEncoder.load_config(both / "encoder"))
        enc_macs = count_macs(lambda: enc(torch.empty(1, 3, 16, 16)))
    assert report["parts"]["vae_encode"]["macs"] == enc_macs
    full = report["compare"]["full-vae"]
    assert full["parts"]["vae_encode"]["macs"] > 4 * enc_macs  # the teacher reads the 16x larger x4 image
    assert full["parts"]["transformer"]["macs"] == report["parts"]["transformer"]["macs"]
    assert "distilled" in report["pipeline"]
    (teacher,) = run_bench(str(both), BenchOptions(sizes=(64,), latency="off", full_vae=True))
    assert teacher["end_to_end"]["macs"] == full["end_to_end"]["macs"]
    # timed side by side with its teacher-VAE variant and another model by name (the latency path builds them all)
    opts = BenchOptions(sizes=(32,), latency="on", warmup=0, repeats=1, compare=("full-vae", "tiny"))
    (timed,) = run_bench(str(both), opts)
    assert timed["end_to_end"]["latency_ms"] > 0
    assert all(timed["compare"][n]["end_to_end"]["latency_ms"] > 0 for n in ("full-vae", "tiny"))


def test_students_travel_with_a_saved_model_dir(distilled, tmp_path):
    from sanasr_cli.models.sanasr import load_model, save_model_dir

    out = save_model_dir(load_model(distilled[1]), tmp_path / "copy")
    desc = json.loads((out / "sanasr.json").read_text())
    assert desc["encoder"] == "encoder" and (out / "decoder" / "config.json").is_file()
    dropped = save_model_dir(load_model(distilled[1], full_vae=True), tmp_path / "teacher_only")
    assert json.loads((dropped / "sanasr.json").read_text())["encoder"] is None


@pytest.mark.parametrize(
    "case, args, needle",
    [
        ("no hq folder", ["tiny", "--hq", "{tmp}/missing"], "not a folder"),
        ("unknown model", ["no-such-model", "--hq", "{hq}"], "neither a preset"),
        ("crop off the VAE grid", ["tiny", "--hq", "{hq}", "--crop", "20"], "multiple of the VAE factor"),
        ("zero steps", ["tiny", "--hq", "{hq}", "--steps", "0"], "--steps must be at least 1"),
        ("decoder batch of one", ["tiny", "--hq", "{hq}", "--batch-size", "1"], "at least 2"),
        ("images smaller than the crop", ["tiny", "--hq", "{hq}", "--crop", "64"], "smaller than --crop"),
    ],
)
def test_bad_distill_inputs_exit_2_with_one_line(case, args, needle, tmp_path, hq_dir):
    args = [a.format(tmp=tmp_path, hq=hq_dir) for a in args]
    kind = "decoder" if case == "decoder batch of one" else "encoder"
    r = _cli("distill", kind, args[0], "-o", tmp_path / "out", *args[1:])
    assert r.exit_code == 2, (case, r.output)
    assert needle in " ".join(r.output.split()), (case, r.output)
    assert "Traceback" not in r.output


def test_existing_output_is_refused_without_overwrite(distilled, hq_dir):
    r = _cli("distill", "encoder", "tiny", "-o", distilled[0], "--hq", hq_dir)
    assert r.exit_code == 2 and "already exists" in r.output


def test_a_damaged_or_mismatched_student_is_one_line_exit_2(distilled, tmp_path):
    import shutil

    from sanasr_cli.models.presets import NANO_FAST_DIR

    broken = tmp_path / "broken"
    shutil.copytree(distilled[1], broken)
    for f in (broken / "decoder").glob("*.safetensors"):
        f.unlink()
    src = tmp_path / "in"
    write_photo_like(src / "a.png", 8, 8)
    r = _cli("upscale", src, "-o", tmp_path / "o", "--model", broken)
    assert r.exit_code == 2 and "decoder student folder" in " ".join(r.output.split()), r.output
    if (NANO_FAST_DIR / "encoder").is_dir():  # a student of nano's f4c32 VAE in a tiny (f8c8) model directory
        wrong = tmp_path / "wrong"
        shutil.copytree(distilled[1], wrong)
        shutil.rmtree(wrong / "encoder")
        shutil.copytree(NANO_FAST_DIR / "encoder", wrong / "encoder")
        r = _cli("upscale", src, "-o", tmp_path / "o2", "--model", wrong)
        assert r.exit_code == 2 and "distilled for a VAE of factor 4" in " ".join(r.output.split()), r.output


def test_a_student_entry_must_name_a_sub_folder(distilled, tmp_path):
    import shutil

    from sanasr_cli.errors import ModelDirError
    from sanasr_cli.models.description import ModelDescription

    bad = tmp_path / "bad"
    shutil.copytree(distilled[1], bad)
    desc = json.loads((bad / "sanasr.json").read_text())
    desc["encoder"] = "../enc/encoder"
    (bad / "sanasr.json").write_text(json.dumps(desc))
    with pytest.raises(ModelDirError, match="'encoder' must name a sub-folder"):
        ModelDescription.load(bad)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_with_accelerate_launch_and_resume(tmp_path):
    """A real 2-process DDP run (gloo on CPU) of `distill encoder` through `accelerate launch`: one writer (one
    student folder, one message per checkpoint), every process's RNG state in the checkpoint; a second launch
    resumes from checkpoint-1, repeats step 2 exactly (per-process RNG states, image shards) and continues."""
    import subprocess
    import sys

    from tests.helpers import child_env, photo_folder

    hq = photo_folder(tmp_path / "hq", 2, size=(40, 48))
    out, run = tmp_path / "enc", tmp_path / "enc.run"
    env = child_env(HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", COLUMNS="400")

    def launch(*extra):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "-m", "sanasr_cli", "distill", "encoder", "tiny",
               "-o", str(out), "--hq", str(hq), "--batch-size", "2", "--crop", "32", "--save-every", "1",
               *map(str, extra)]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return " ".join(proc.stderr.split())

    said = launch("--steps", "2")
    state = json.loads((run / "checkpoint-2" / "train" / "state.json").read_text())
    assert state["num_processes"] == 2 and sorted(state["rng"]) == ["0", "1"]
    first = state["history"]
    assert len(first) == 2
    assert said.count("checkpoint saved") == 2 and said.count("student written into") == 1  # one writer
    assert "1 on each of 2 process(es)" in said  # each process its own image
    assert sorted(p.name for p in tmp_path.iterdir()) == ["enc", "enc.run", "hq"]
    assert (out / "encoder" / "config.json").is_file()
    assert json.loads((out / "sanasr.json").read_text())["distill"]["encoder"]["num_processes"] == 2
    said = launch("--steps", "3", "--resume", run / "checkpoint-1", "--overwrite")
    assert "resumed from" in said and "(step 1)" in said
    history = json.loads((run / "checkpoint-3" / "train" / "state.json").read_text())["history"]
    assert len(history) == 3 and history[:2] == first
    assert json.loads((out / "sanasr.json").read_text())["distill"]["encoder"]["steps"] == 3


def test_older_single_process_checkpoints_resume_and_every_process_needs_an_image():
    """Checkpoints written before distill ran under accelerate hold one unprefixed RNG state: process 0's.
    Each process takes every N-th HQ image from its rank; fewer images than processes is one line."""
    from sanasr_cli.errors import DatasetError
    from sanasr_cli.training.checkpoint import CheckpointError, capture_rng
    from sanasr_cli.training.distill import _rng_of_rank, _shard

    g = torch.Generator().manual_seed(3)
    old = capture_rng({"data": g})
    assert torch.equal(_rng_of_rank(old["tensors"], old["meta"], 0)["tensors"]["gen_data"], g.get_state())
    with pytest.raises(CheckpointError, match="process 1"):
        _rng_of_rank(old["tensors"], old["meta"], 1)

    class Second:
        num_processes, process_index = 2, 1

    assert _shard(["a", "b", "c"], Second) == ["b"]
    with pytest.raises(DatasetError, match="1 image file"):
        _shard(["a"], Second)


class Process:
    """Process `index` of len(counts) as distill's data stage sees it: the usable-image counts every process would
    gather (a real multi-process run is tests/test_distill.py's accelerate launch test)."""

    device = "cpu"

    def __init__(self, index, counts):
        self.num_processes, self.process_index, self.counts = len(counts), index, counts

    def gather(self, local):
        assert int(local) == self.counts[self.process_index]
        return torch.tensor(self.counts)


def test_an_unreadable_hq_file_is_skipped_and_named_as_train_does(tmp_path):
    """One broken file in --hq does not stop a distillation: it is left out with a DatasetWarning naming it (like
    `train`'s dataset); a folder of only broken files is still one line, exit 2."""
    from sanasr_cli.data.datasets import DatasetWarning
    from sanasr_cli.errors import DatasetError
    from sanasr_cli.training.distill import DistillConfig, _load_shard

    def config(hq):
        return DistillConfig(kind="encoder", model="tiny", hq=[str(hq)], output=str(tmp_path / "o"), crop=32)

    write_photo_like(tmp_path / "hq" / "good.png", 40, 48)
    (tmp_path / "hq" / "broken.png").write_bytes(b"not a png")
    with pytest.warns(DatasetWarning, match="broken.png"):
        images, total = _load_shard(config(tmp_path / "hq"), Process(0, [1]))
    assert [tuple(x.shape) for x in images] == [(3, 40, 48)] and total == 1
    r = _cli("distill", "encoder", "tiny", "-o", tmp_path / "out", "--hq", tmp_path / "hq", "--steps", "1",
             "--batch-size", "2", "--crop", "32")  # fmt: skip
    assert r.exit_code == 0, r.output
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"not a png")
    with pytest.warns(DatasetWarning), pytest.raises(DatasetError, match="no usable image.*1 unreadable image"):
        _load_shard(config(tmp_path / "bad"), Process(0, [0]))


def test_each_process_decodes_only_its_share_and_all_stop_together(tmp_path):
    """A folder of large photos is not held whole by every process: process r decodes only every N-th file from r
    (a broken file of process 0 is never opened by process 1). When one process's share has nothing usable, every
    process raises the same line (the counts are gathered first), rather than the others waiting for it."""
    import warnings

    from sanasr_cli.data.datasets import DatasetWarning
    from sanasr_cli.errors import DatasetError
    from sanasr_cli.training.distill import DistillConfig, _load_shard

    hq = tmp_path / "hq"
    hq.mkdir()
    (hq / "a.png").write_bytes(b"not a png")  # process 0's
    write_photo_like(hq / "b.png", 40, 48)  # process 1's
    write_photo_like(hq / "c.png", 40, 40)  # process 0's

    config = DistillConfig(kind="encoder", model="tiny", hq=[str(hq)], output=str(tmp_path / "out"), crop=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DatasetWarning)  # process 1 never touches a.png
        shard, total = _load_shard(config, Process(1, [1, 1]))
    assert [tuple(x.shape) for x in shard] == [(3, 40, 48)] and total == 2
    with pytest.warns(DatasetWarning, match="a.png"):
        shard, total = _load_shard(config, Process(0, [1, 1]))
    assert [tuple(x.shape) for x in shard] == [(3, 40, 40)]
    (hq / "c.png").unlink()  # now process 0 has nothing usable: both processes stop with one line
    for rank in (0, 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(DatasetError, match="1 usable image.*2 processes"):
                _load_shard(config, Process(rank, [0, 1]))
