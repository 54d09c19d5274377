"""nano v1's photos, which the base stages train on (autoencoder.py, prior.py) and base.py makes: the package photos
split as PHOTOS (data.py) says, stored under WORK/v1/photos/{train,heldout}/ with WORK/v1/manifest.json."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from recipes.nano.data import PHOTOS, load_split, package_data_dir


def v1_root(work: Path) -> Path:
    """The folder of nano v1's photos and manifest inside a work folder."""
    return work / "v1"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_json(path: Path, data, indent: int = 2) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=indent) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------- the photos


def v1_photos(work: Path, train_photos: Path | None = None, log=print) -> list[dict]:
    """The package photos, split as PHOTOS says, as PNG under WORK/v1/photos/{train,heldout}/, and
    WORK/v1/manifest.json.

    train_photos: a folder of more training photos (recursively; e.g. DIV2K on a machine that has it), added to the
    train split as local-NNNNN-STEM.png. A file byte-identical to a held-out photo is refused: held-out photos are
    never trained on (a re-encoded copy cannot be caught by its SHA-256: keep such sets apart by hand)."""
    from PIL import Image

    out = v1_root(work) / "photos"
    manifest = []

    def add(src: Path, package: str, rel: str, split: str, name: str, digest: str) -> None:
        dst = out / split / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():  # written whole or not at all: an interrupted stage never leaves half a PNG to reuse
            tmp = dst.with_name(dst.name + ".tmp")
            Image.open(src).convert("RGB").save(tmp, format="PNG")
            os.replace(tmp, dst)
        w, h = Image.open(dst).size
        manifest.append(
            dict(package=package, path=rel, sha256=digest, split=split, file=f"{split}/{name}", size=[w, h])
        )

    for package, rel, split in PHOTOS:
        src = package_data_dir(package) / rel
        add(src, package, rel, split, Path(rel).stem + ".png", sha256(src))
    if train_photos is not None:
        from PIL import UnidentifiedImageError

        from sanasr_cli.data.io import list_images

        heldout = {m["sha256"]: m["path"] for m in manifest if m["split"] == "heldout"}
        files = list_images(train_photos, recursive=True)
        if not files:
            raise SystemExit(f"--train-photos {train_photos}: no image found")
        for i, src in enumerate(files):
            digest = sha256(src)
            if digest in heldout:
                raise SystemExit(f"--train-photos: {src} is the held-out photo {heldout[digest]}")
            try:
                add(src, "local", str(src.relative_to(train_photos)), "train", f"local-{i:05d}-{src.stem}.png", digest)
            except (OSError, UnidentifiedImageError) as e:  # a broken file stops the stage by name, not a traceback
                raise SystemExit(f"--train-photos: {src} cannot be read ({e}); remove it and rerun") from None
    write_json(v1_root(work) / "manifest.json", manifest)
    log(
        f"data: {sum(m['split'] == 'train' for m in manifest)} train, "
        f"{sum(m['split'] == 'heldout' for m in manifest)} held-out photos"
    )
    return manifest


def photo_tensors(work: Path, split: str) -> list:
    """(3, H, W) uint8 tensors of one split of WORK/v1/photos, in file-name order."""
    import torch

    return [torch.from_numpy(a.copy()).permute(2, 0, 1) for a in load_split(v1_root(work), split)]
