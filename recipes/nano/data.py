"""Stage 1 (data, v2): nano's photos, split by file into train and held-out before anything trains.

Sources:
- Debian packages listed in recipes/nano/photos.tsv (real camera photos, short side >= 384 px; a survey of Debian 12
  judged by eye: see ../shared/data/debian-photos.tsv), fetched with `apt-get download` and unpacked with
  `dpkg-deb -x` into WORK/debs and WORK/packages (nothing is installed); gcompris-qt-data's photos are read from
  its Qt `.rcc` bundles;
- the photos that ship inside scikit-image, scikit-learn and matplotlib (PHOTOS; nano v1's data).
The packages read are only those photos.tsv lists (the one kept out for independent evaluation is never among them:
see docs/models/nano.md).

Each photo is stored once as WORK/photos/{train,heldout}/NAME.png, scaled down (area filter) so that its short side
is at most MAX_SHORT_SIDE (camera noise and JPEG blocks of the source shrink with it: the HQ targets get cleaner,
and the crops see a scene at a scale a 256 px test crop shows); a transparent sky (stellarium's landscapes) is cut
away: only the widest band of fully opaque rows is kept. WORK/manifest.json lists every photo: package, version,
path in the package (in the bundle for .rcc), licence from the package's copyright file (and the stanza that gave
it), source size, stored size, SHA-256 of the source file, kind, split.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from recipes.nano.debian import PackageError, copyright_stanzas, fetch_package, licence_of, package_version, read_rcc

HERE = Path(__file__).resolve().parent
PHOTO_LIST = HERE / "photos.tsv"
MAX_SHORT_SIDE = 768
MIN_SHORT_SIDE = 384  # a whole 384 px HQ region must fit (see recipes/nano/pairs.py)
# nano v1's held-out photos are kept whatever their size (chelsea is 451x300): their regions are the photo's short
# side (>= 296 px: still a 20 px HQ border around the kept 256 px crop)
MIN_SHORT_SIDE_V1_HELDOUT = 296

# (package, path inside the package's data folder, split): nano v1's photos. Its held-out four stay held out, its
# train photos stay in train; the two motorcycle views (one scene) are on the same side.
PHOTOS = [
    ("skimage", "astronaut.png", "train"),
    ("skimage", "rocket.jpg", "train"),
    ("skimage", "motorcycle_left.png", "train"),
    ("skimage", "motorcycle_right.png", "train"),
    ("skimage", "ihc.png", "train"),
    ("skimage", "brick.png", "train"),
    ("skimage", "grass.png", "train"),
    ("skimage", "gravel.png", "train"),
    ("skimage", "camera.png", "train"),
    ("skimage", "coins.png", "train"),
    ("skimage", "moon.png", "train"),
    ("sklearn", "china.jpg", "train"),
    ("skimage", "chelsea.png", "heldout"),
    ("skimage", "coffee.png", "heldout"),
    ("sklearn", "flower.jpg", "heldout"),
    ("matplotlib", "grace_hopper.jpg", "heldout"),
]


def package_data_dir(package: str) -> Path:
    """Where a Python package keeps its sample photos."""
    if package == "skimage":
        import skimage

        return Path(skimage.__file__).parent / "data"
    if package == "sklearn":
        import sklearn.datasets

        return Path(sklearn.datasets.__file__).parent / "images"
    if package == "matplotlib":
        import matplotlib

        return Path(matplotlib.get_data_path()) / "sample_data"
    raise ValueError(package)


def photo_list(path: Path = PHOTO_LIST) -> list[dict]:
    """The rows of photos.tsv (package, version, path_inside_package, width, height, sha256, kind, split)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return rows


def photo_name(package: str, path: str) -> str:
    """A file name that tells the photo apart (gcompris' bundles and plasma's folders reuse file names)."""
    parts = Path(path).parts
    stem = Path(path).stem
    if package == "gcompris-qt-data":  # rccx/<bundle>/.../<stem>.webp
        return f"gcompris-{parts[1]}-{stem}"
    if package == "plasma-workspace-wallpapers":  # usr/share/wallpapers/<Name>/contents/images/WxH.jpg
        return f"plasma-{parts[3]}"
    return f"{package.split('-')[0]}-{stem}"


def opaque_band(rgba: np.ndarray) -> tuple[int, int]:
    """Rows [top, bottom) of the tallest run of fully opaque rows."""
    opaque = (rgba[..., 3] == 255).all(axis=1)
    best, start = (0, 0), None
    for y, ok in enumerate(list(opaque) + [False]):
        if ok and start is None:
            start = y
        elif not ok and start is not None:
            if y - start > best[1] - best[0]:
                best = (start, y)
            start = None
    return best


def stored_rgb(data: bytes, min_short: int = MIN_SHORT_SIDE):
    """The photo as PIL RGB, transparent rows cut away, scaled down to a short side <= MAX_SHORT_SIDE (or None when
    what is left is under `min_short`)."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"))
        top, bottom = opaque_band(rgba)
        img = Image.fromarray(rgba[top:bottom, :, :3])
    img = img.convert("RGB")
    short = min(img.size)
    if short < min_short:
        return None
    if short > MAX_SHORT_SIDE:
        f = MAX_SHORT_SIDE / short
        img = img.resize((round(img.width * f), round(img.height * f)), Image.Resampling.BOX)
    return img


def save_png(img, dst: Path) -> None:
    """Written whole or not at all: an interrupted stage never leaves half a PNG for a rerun to reuse."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, dst)


class PackageFiles:
    """Reads files of Debian packages, fetching and unpacking each package once."""

    def __init__(self, work: Path):
        self.work = work
        self.apt_updated = [False]
        self.roots: dict[str, Path] = {}
        self.versions: dict[str, str] = {}
        self.bundles: dict[tuple[str, str], dict[str, bytes]] = {}

    def root(self, package: str) -> Path:
        if package not in self.roots:
            from recipes.nano.debian import unpack_package

            deb = fetch_package(package, self.work / "debs", self.apt_updated)
            self.versions[package] = package_version(deb)
            self.roots[package] = unpack_package(deb, self.work / "packages" / package)
        return self.roots[package]

    def read(self, package: str, path: str) -> bytes:
        root = self.root(package)
        if path.startswith("rccx/"):  # rccx/<bundle>/<path inside the bundle>
            _, bundle, inner = path.split("/", 2)
            key = (package, bundle)
            if key not in self.bundles:
                found = list(root.rglob(f"{bundle}.rcc"))
                if not found:
                    raise PackageError(f"{package}: no bundle {bundle}.rcc")
                self.bundles[key] = read_rcc(found[0].read_bytes())
            if inner not in self.bundles[key]:
                raise PackageError(f"{package}: {bundle}.rcc holds no {inner}")
            return self.bundles[key][inner]
        file = root / path
        if not file.is_file():
            raise PackageError(f"{package} {self.versions.get(package, '')} has no {path}")
        return file.read_bytes()

    def licence(self, package: str, path: str) -> dict:
        copyright_file = self.root(package) / "usr/share/doc" / package / "copyright"
        if not copyright_file.exists():
            return dict(licence="unknown", licence_stanza="")
        inner = path.split("/", 2)[2] if path.startswith("rccx/") else path
        found = licence_of(inner, copyright_stanzas(copyright_file.read_text(errors="replace")))
        return dict(licence=found.name, licence_stanza=found.matched)


def stage_data(work: Path, photos: list[dict] | None = None, log=print) -> list[dict]:
    """Fetch, split and store every photo; write WORK/manifest.json. Rerunning reuses what is there."""
    from PIL import Image

    photos = photo_list() if photos is None else photos
    out = work / "photos"
    files = PackageFiles(work)
    manifest: list[dict] = []

    def add(data: bytes, record: dict, name: str, min_short: int = MIN_SHORT_SIDE) -> None:
        dst = out / record["split"] / f"{name}.png"
        if not dst.exists():
            img = stored_rgb(data, min_short)
            if img is None:
                manifest.append(dict(record, stored=None, note=f"short side under {min_short} px: skipped"))
                return
            save_png(img, dst)
        w, h = Image.open(dst).size
        manifest.append(dict(record, file=f"{record['split']}/{name}.png", stored=[w, h]))

    for row in photos:
        package, path = row["package"], row["path_inside_package"]
        data = files.read(package, path)
        digest = hashlib.sha256(data).hexdigest()
        record = dict(
            package=package,
            version=files.versions[package],
            path=path,
            **files.licence(package, path),
            size=[int(row["width"]), int(row["height"])],
            sha256=digest,
            kind=row["kind"],
            split=row["split"],
        )
        if digest != row["sha256"]:
            record["note"] = f"SHA-256 differs from the survey's ({row['sha256'][:12]}...): another package version"
        add(data, record, photo_name(package, path))
    for package, rel, split in PHOTOS:
        src = package_data_dir(package) / rel
        data = src.read_bytes()
        size = list(Image.open(src).size)
        record = dict(
            package=package, version=_python_package_version(package), path=rel, licence="see the package",
            licence_stanza="", size=size, sha256=hashlib.sha256(data).hexdigest(), kind="photo", split=split,
        )  # fmt: skip
        add(
            data,
            record,
            f"{package}-{Path(rel).stem}",
            MIN_SHORT_SIDE_V1_HELDOUT if split == "heldout" else MIN_SHORT_SIDE,
        )
    _refuse_shared_photos(manifest)
    tmp = work / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, work / "manifest.json")
    kept = [m for m in manifest if m.get("stored")]
    log(
        f"data: {sum(m['split'] == 'train' for m in kept)} train, {sum(m['split'] == 'heldout' for m in kept)} "
        f"held-out photos ({len(manifest) - len(kept)} skipped) from {len({m['package'] for m in kept})} packages"
    )
    return manifest


def _python_package_version(package: str) -> str:
    from importlib.metadata import version

    return version({"skimage": "scikit-image", "sklearn": "scikit-learn"}.get(package, package))


def _refuse_shared_photos(manifest: list[dict]) -> None:
    """The same file on both sides of the split would leak the held-out set into training."""
    sides: dict[str, set[str]] = {}
    for m in manifest:
        sides.setdefault(m["sha256"], set()).add(m["split"])
    leaked = [d for d, s in sides.items() if len(s) > 1]
    if leaked:
        raise ValueError(f"{len(leaked)} photo(s) are in both train and held-out (SHA-256 {leaked[0][:12]}...)")


def load_split(work: Path, split: str) -> list[np.ndarray]:
    """(H, W, 3) uint8 arrays of one split, in file-name order."""
    from PIL import Image

    return [np.asarray(Image.open(p).convert("RGB")) for p in sorted((work / "photos" / split).glob("*.png"))]
