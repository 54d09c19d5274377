"""nano's base stages (recipes/nano/base.py, v1_photos.py, autoencoder.py, text.py, prior.py): nano v1's photos
split as PHOTOS says, with SHA-256 in the manifest, and train_photos adding a folder of training photos (never a
held-out photo); the autoencoder, text and prior stages through the entry command build a base that `sanasr` loads
and runs, a rerun skips them, and ship-base replaces each part of a package's base whole, keeping the other
reports."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from PIL import Image

from recipes.nano import base as recipe
from recipes.nano import v1_photos as photos
from tests.helpers import make_photo_like

TORCH_THREADS = 1


def test_train_photos_are_added_to_the_train_split(tmp_path):
    extra = tmp_path / "div2k"
    (extra / "sub").mkdir(parents=True)
    Image.fromarray(make_photo_like(40, 48, 1)).save(extra / "0001.png")
    Image.fromarray(make_photo_like(36, 44, 2)).save(extra / "sub" / "0002.jpg")
    manifest = photos.v1_photos(tmp_path / "work", extra)

    assert json.loads((tmp_path / "work" / "v1" / "manifest.json").read_text()) == manifest
    package = [m for m in manifest if m["package"] != "local"]
    assert [(m["package"], m["path"], m["split"]) for m in package] == list(map(tuple, photos.PHOTOS))
    local = [m for m in manifest if m["package"] == "local"]
    assert [(m["path"], m["split"], m["size"]) for m in local] == [
        ("0001.png", "train", [48, 40]),
        ("sub/0002.jpg", "train", [44, 36]),
    ]
    for m in local:
        assert m["sha256"] == hashlib.sha256((extra / m["path"]).read_bytes()).hexdigest()
        assert (tmp_path / "work" / "v1" / "photos" / m["file"]).is_file()
    trained = {p.name for p in (tmp_path / "work" / "v1" / "photos" / "train").iterdir()}
    assert {"local-00000-0001.png", "local-00001-0002.png"} <= trained
    assert not [name for name in trained if not name.endswith(".png")]  # written via a temporary name, renamed
    assert len(photos.photo_tensors(tmp_path / "work", "train")) == len(trained)


def test_a_held_out_photo_among_the_train_photos_is_refused(tmp_path):
    heldout = next(m for m in photos.v1_photos(tmp_path / "a") if m["split"] == "heldout")
    extra = tmp_path / "extra"
    extra.mkdir()
    package, rel = next((p, r) for p, r, s in photos.PHOTOS if r == heldout["path"])
    shutil.copyfile(photos.package_data_dir(package) / rel, extra / "renamed.png")
    with pytest.raises(SystemExit, match="renamed.png is the held-out photo"):
        photos.v1_photos(tmp_path / "b", extra)


def test_a_broken_train_photo_stops_the_stage_naming_it(tmp_path):
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(SystemExit, match="broken.png cannot be read"):
        photos.v1_photos(tmp_path / "work", extra)


def run_recipe(work, *args):
    from recipes.nano.__main__ import main

    main(["--work", str(work), "--threads", "1", *args])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A base built by the entry command with 2 steps per trained stage."""
    work = tmp_path_factory.mktemp("nano_base")
    for stage in ("autoencoder", "text", "prior"):
        run_recipe(work, "--stage", stage, "--ae-steps", "2", "--prior-steps", "2")
    return work


def test_the_base_stages_build_a_base_sanasr_runs_and_a_rerun_skips(built, capsys):
    import torch

    from sanasr_cli.models.presets import NANO_DIR
    from sanasr_cli.models.sanasr import load_model
    from sanasr_cli.pipeline.upscale import upscale_tensor

    reports = json.loads((built / "base_report.json").read_text())
    assert set(reports) == {"data", "autoencoder", "text", "prior"} and reports["data"] == {"photos": 16}
    assert reports["autoencoder"]["steps"] == reports["prior"]["steps"] == 2
    assert set(reports["autoencoder"]["heldout_reconstruction_psnr"]) == {"chelsea", "coffee", "flower",
                                                                           "grace_hopper"}  # fmt: skip
    for part in recipe.BASE_PARTS:  # the shipped base's architecture, part by part
        for config in ("config.json", "scheduler_config.json", "tokenizer_config.json"):
            shipped = NANO_DIR / "base" / part / config
            if shipped.exists():
                ours = json.loads((built / "base" / part / config).read_text())
                theirs = json.loads(shipped.read_text())
                drop = {"_name_or_path", "_diffusers_version", "transformers_version", "scaling_factor"}
                assert {k: v for k, v in ours.items() if k not in drop} == {
                    k: v for k, v in theirs.items() if k not in drop
                }, part
    vae_config = json.loads((built / "base" / "vae" / "config.json").read_text())
    assert vae_config["scaling_factor"] == reports["autoencoder"]["scaling_factor"]

    model = load_model("nano", base=str(built / "base"))
    lq = torch.rand(3, 16, 20, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = upscale_tensor(model, lq, "clean")
    assert out.shape == (3, 64, 80) and torch.isfinite(out).all()

    weights = built / "base" / "transformer" / "diffusion_pytorch_model.safetensors"
    stamp = weights.stat().st_mtime_ns
    capsys.readouterr()
    run_recipe(built, "--stage", "prior", "--prior-steps", "2")
    assert "prior: done already" in capsys.readouterr().out and weights.stat().st_mtime_ns == stamp


def test_ship_base_replaces_each_part_and_keeps_the_other_reports(built, tmp_path):
    package = tmp_path / "nano"
    (package / "base" / "vae").mkdir(parents=True)
    (package / "base" / "vae" / "old.safetensors").write_text("the base it replaces")
    (package / "recipe_report.json").write_text(json.dumps({"v2": {"sr": {"step": 4500}}, "prior": {"steps": 400}}))
    recipe.ship_base(built, dest=package)

    for part in recipe.BASE_PARTS:
        ours = sorted(p.relative_to(built / "base" / part) for p in (built / "base" / part).rglob("*"))
        assert sorted(p.relative_to(package / "base" / part) for p in (package / "base" / part).rglob("*")) == ours
    assert sorted(p.name for p in (package / "base").iterdir()) == sorted(recipe.BASE_PARTS)  # no staging left
    report = json.loads((package / "recipe_report.json").read_text())
    assert report["v2"] == {"sr": {"step": 4500}} and report["prior"]["steps"] == 2
    assert report["autoencoder"] == json.loads((built / "base_report.json").read_text())["autoencoder"]

    with pytest.raises(SystemExit, match="has no vae, text_encoder, tokenizer, scheduler, transformer"):
        recipe.ship_base(tmp_path / "empty", dest=package)
