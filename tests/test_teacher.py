"""A peer as a teacher (`sanasr train --teacher`) and as a column of `sanasr eval --peer`, end to end on the tiny
preset with small random peers built from spandrel's own classes (and the real x4plus where it is installed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from sanasr_cli.peers.peer import available_named_peers, load_peer
from tests.helpers import NANO_HELDOUT_PAIRS, TINY_TRAIN, one_error_line, run
from tests.test_peers import compact_state

TORCH_THREADS = 1


@pytest.fixture(scope="module")
def peer_file(tmp_path_factory) -> Path:
    file = tmp_path_factory.mktemp("peer") / "compact.safetensors"
    save_file(compact_state(seed=3), str(file))
    return file


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> tuple[Path, Path]:
    """5 LQ/HQ pairs (12 / 48 px) of photo-like images."""
    from tests.helpers import make_photo_like

    root = tmp_path_factory.mktemp("pairs")
    for sub in ("lq", "hq"):
        (root / sub).mkdir()
    for i in range(5):
        hq = make_photo_like(48, 48, seed=i)
        Image.fromarray(hq).save(root / "hq" / f"p{i}.png")
        Image.fromarray(hq).resize((12, 12), Image.Resampling.BICUBIC).save(root / "lq" / f"p{i}.png")
    return root / "lq", root / "hq"


def train(*args):
    return run("train", *TINY_TRAIN, "--log-every", "1", "--lambda-perceptual", "0", *args)


def test_train_with_a_teacher_caches_its_outputs_once_and_adds_its_term(pairs, peer_file, tmp_path):
    lq, hq = pairs
    out = tmp_path / "run"
    result = train("--pairs", lq, hq, "-o", out, "--max-steps", "2", "--save-every", "1", "--teacher", peer_file)
    assert result.exit_code == 0, result.output
    cached = sorted((out / "teacher_cache").rglob("*.png"))
    assert len(cached) == 5  # one per LQ image, computed before step 1
    peer = load_peer(peer_file)
    for lq_file in sorted(lq.glob("*.png")):  # each cached file is the peer's output of its LQ, 8-bit
        from sanasr_cli.data.io import read_image
        from sanasr_cli.peers.cache import TeacherCache

        want = (peer(read_image(lq_file)[0][None])[0] * 255).round()
        got = torch.from_numpy(np.array(Image.open(TeacherCache(peer, out / "teacher_cache").path_for(lq_file))))
        assert (got.permute(2, 0, 1).float() - want).abs().max() <= 1
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(rec["teacher"] > 0 for rec in log)
    history = json.loads((out / "checkpoint-2" / "sanasr.json").read_text())["history"][-1]
    assert history["teacher"]["identity"] == peer.identity and history["teacher"]["role"] == "target beside HQ"
    # a resumed run reuses the cache: nothing is recomputed
    mtimes = {p: p.stat().st_mtime_ns for p in cached}
    result = train("--pairs", lq, hq, "-o", out, "--max-steps", "3", "--teacher", peer_file, "--resume", "latest")
    assert result.exit_code == 0, result.output
    assert {p: p.stat().st_mtime_ns for p in cached} == mtimes


def test_lq_images_alone_train_on_the_teachers_outputs(pairs, peer_file, tmp_path):
    lq, _ = pairs
    out = tmp_path / "run"
    cache = tmp_path / "shared_cache"
    result = train("--lq", lq, "-o", out, "--max-steps", "1", "--teacher", peer_file, "--teacher-cache", cache)
    assert result.exit_code == 0, result.output
    assert len(list(cache.rglob("*.png"))) == 5 and not (out / "teacher_cache").exists()
    history = json.loads((out / "checkpoint-1" / "sanasr.json").read_text())["history"][-1]
    assert history["teacher"]["role"] == "the only target"


def test_paired_items_carry_the_same_crop_of_the_teacher(pairs):
    from sanasr_cli.data.datasets import PairedImageDataset

    lq, hq = pairs
    # the HQ files stand in for a teacher's outputs: then both crops must be the very same pixels
    dataset = PairedImageDataset(lq, hq, crop=16, teacher_for=lambda p: hq / p.name)
    for i in range(len(dataset)):
        item = dataset[i]
        assert torch.equal(item["teacher"], item["hq"])
    alone = PairedImageDataset(lq, None, crop=16, teacher_for=lambda p: hq / p.name)
    assert torch.equal(alone[2]["hq"], dataset[2]["hq"]) and "teacher" not in alone[2]


def test_the_teacher_term_is_the_weighted_mse_to_its_output(tiny_model):
    from sanasr_cli.training.losses import LossWeights, PromptProtocol, compute_task_losses

    model = tiny_model
    lq_up, hq = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    teacher = torch.rand(2, 3, 32, 32)
    embeds, mask = model.prompts.encode(["a photo", "a photo"])
    protocol = PromptProtocol.named("hq")
    terms = {}
    for w in (0.0, 0.7):
        g = torch.Generator().manual_seed(0)
        weights = LossWeights(1.0, 0.0, 0.0, 0.0, teacher=w)
        terms[w] = compute_task_losses(
            model.restorer, model.codec, lq_up, hq, embeds, mask, weights, protocol, None, g, teacher=teacher
        )
    x_hat = terms[0.7].x_hat.float()
    expected = 0.7 * torch.mean((x_hat - teacher) ** 2)
    torch.testing.assert_close(terms[0.7].total - terms[0.0].total, expected, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--hq", "{lq}", "--teacher", "{peer}"], "--teacher: a teacher's outputs are computed once per LQ image"),
        (["--lq", "{lq}"], "--lq: LQ images without references train on a teacher's outputs"),
        (["--pairs", "{lq}", "{hq}", "--teacher", "{tmp}/model.pth"], "pickle"),
        (["--pairs", "{lq}", "{hq}", "--lq", "{lq}", "--teacher", "{peer}"], "give one source of training images"),
    ],
)
def test_teacher_flags_that_cannot_work_are_one_line_and_exit_2(pairs, peer_file, tmp_path, args, message):
    lq, hq = pairs
    (tmp_path / "model.pth").write_bytes(b"\x80\x04K\x01.")
    filled = [a.format(lq=lq, hq=hq, peer=peer_file, tmp=tmp_path) for a in args]
    result = train(*filled, "-o", tmp_path / "run", "--max-steps", "1")
    assert result.exit_code == 2, result.output
    assert message in one_error_line(result)
    assert not (tmp_path / "run").exists()


def by_hand_psnr(peer, lq_dir: Path, hq_dir: Path) -> dict[str, float]:
    """What `eval --peer` must report: the peer's output, 8-bit, against the HQ with pyiqa's Y-PSNR."""
    from sanasr_cli.data.io import read_image
    from sanasr_cli.evaluation.metrics import METRICS, build_metric

    psnr = build_metric(METRICS["psnr"])
    out = {}
    for lq_file in sorted(lq_dir.glob("*.png")):
        sr = (peer(read_image(lq_file)[0][None]) * 255).round() / 255
        out[lq_file.stem] = float(psnr(sr, read_image(hq_dir / lq_file.name)[0][None]))
    return out


def per_image(doc: dict, metric: str) -> dict[str, float]:
    return {Path(img["sr"]).stem: img["values"][metric] for img in doc["images"]}


def test_eval_peer_scores_exactly_what_running_the_peer_by_hand_gives(peer_file, tmp_path):
    lq, hq = NANO_HELDOUT_PAIRS / "lq", NANO_HELDOUT_PAIRS / "hq"
    report = tmp_path / "scores.json"
    result = run("eval", "--peer", peer_file, "--lq", lq, "--hr", hq, "--metrics", "psnr", "--json", report)
    assert result.exit_code == 0, result.output
    doc = json.loads(report.read_text())
    assert doc["model"]["architecture"] == "RealESRGAN Compact" and doc["model"]["identity"]
    want = by_hand_psnr(load_peer(peer_file), lq, hq)
    got = per_image(doc, "psnr")
    assert got.keys() == want.keys()
    for key in want:
        assert abs(got[key] - want[key]) < 1e-3, key


def test_eval_model_and_peers_side_by_side_give_one_table_and_a_folder_each(peer_file, tmp_path):
    lq, hq = NANO_HELDOUT_PAIRS / "lq", NANO_HELDOUT_PAIRS / "hq"
    report, save = tmp_path / "scores.json", tmp_path / "outputs"
    result = run(
        "eval", "--model", "tiny", "--peer", peer_file, "--peer", peer_file, "--lq", lq, "--hr", hq,
        "--metrics", "psnr,ssim", "--json", report, "--save-dir", save,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(report.read_text())
    assert [m["label"] for m in doc["methods"]] == ["tiny", "compact", "compact+"]
    for label in ("tiny", "compact", "compact+"):
        assert len(list((save / label).glob("*.png"))) == len(list(lq.glob("*.png")))
    a, b = (per_image(m, "psnr") for m in doc["methods"][1:])
    assert a == b  # the same peer twice: the same numbers
    assert "tiny" in result.output and "compact+" in result.output


@pytest.mark.skipif(available_named_peers()["realesrgan-x4plus"] is None, reason="optional teacher files absent")
def test_eval_peer_x4plus_equals_running_it_by_hand(tmp_path):
    pairs = tmp_path / "pairs"
    for sub in ("lq", "hq"):  # two of the CI pairs: x4plus takes seconds per image on a CPU
        (pairs / sub).mkdir(parents=True)
        for f in sorted((NANO_HELDOUT_PAIRS / sub).glob("*.png"))[:2]:
            (pairs / sub / f.name).write_bytes(f.read_bytes())
    report = tmp_path / "scores.json"
    result = run(
        "eval", "--peer", "realesrgan-x4plus", "--lq", pairs / "lq", "--hr", pairs / "hq", "--metrics", "psnr",
        "--json", report,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    got = per_image(json.loads(report.read_text()), "psnr")
    want = by_hand_psnr(load_peer("realesrgan-x4plus"), pairs / "lq", pairs / "hq")
    assert got.keys() == want.keys() and all(abs(got[k] - want[k]) < 1e-3 for k in want)
