"""benchmarks/nano_recipe.py's data stage: the package photos split as PHOTOS says, with SHA-256 in the manifest, and
--train-photos adding a folder of training photos (never a held-out photo)."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from PIL import Image

from tests.helpers import benchmark_module, make_photo_like


@pytest.fixture(scope="module")
def recipe():
    return benchmark_module("nano_recipe")


def test_train_photos_are_added_to_the_train_split(recipe, tmp_path):
    extra = tmp_path / "div2k"
    (extra / "sub").mkdir(parents=True)
    Image.fromarray(make_photo_like(40, 48, 1)).save(extra / "0001.png")
    Image.fromarray(make_photo_like(36, 44, 2)).save(extra / "sub" / "0002.jpg")
    manifest = recipe.stage_data(tmp_path / "work", extra)

    assert json.loads((tmp_path / "work" / "manifest.json").read_text()) == manifest
    package = [m for m in manifest if m["package"] != "local"]
    assert [(m["package"], m["path"], m["split"]) for m in package] == list(map(tuple, recipe.PHOTOS))
    local = [m for m in manifest if m["package"] == "local"]
    assert [(m["path"], m["split"], m["size"]) for m in local] == [
        ("0001.png", "train", [48, 40]),
        ("sub/0002.jpg", "train", [44, 36]),
    ]
    for m in local:
        assert m["sha256"] == hashlib.sha256((extra / m["path"]).read_bytes()).hexdigest()
        assert (tmp_path / "work" / "photos" / m["file"]).is_file()
    trained = {p.name for p in (tmp_path / "work" / "photos" / "train").iterdir()}
    assert {"local-00000-0001.png", "local-00001-0002.png"} <= trained
    assert not [name for name in trained if not name.endswith(".png")]  # written via a temporary name, renamed
    assert len(recipe.load_split(tmp_path / "work", "train")) == len(trained)


def test_a_held_out_photo_among_the_train_photos_is_refused(recipe, tmp_path):
    heldout = next(m for m in recipe.stage_data(tmp_path / "a") if m["split"] == "heldout")
    extra = tmp_path / "extra"
    extra.mkdir()
    package, rel = next((p, r) for p, r, s in recipe.PHOTOS if r == heldout["path"])
    shutil.copyfile(recipe.package_data_dir(package) / rel, extra / "renamed.png")
    with pytest.raises(SystemExit, match="renamed.png is the held-out photo"):
        recipe.stage_data(tmp_path / "b", extra)


def test_a_broken_train_photo_stops_the_stage_naming_it(recipe, tmp_path):
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(SystemExit, match="broken.png cannot be read"):
        recipe.stage_data(tmp_path / "work", extra)
