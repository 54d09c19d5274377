"""Pairing restored images with their references by file stem (never by sort order).

The pairing key of a file is its stem, lower-cased, with at most one known trailing suffix removed
(`_sr`, `_out`, `_x4`, ... on the SR/LQ side; `_hr`, `_gt` on the reference side). So `0801_SR.png` pairs with
`0801.png` and `Canon_001_LR4.png` with `Canon_001_HR.png`. Two files of one folder with the same key, or
a file without a partner, are errors listed in one message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sanasr_cli.data.io import list_images
from sanasr_cli.errors import SanaSRError

# Suffixes stripped from restored / low-quality stems (one of them, once, at the end of the stem).
SR_SUFFIXES = (
    "_sr",
    "-sr",
    "_out",
    "-out",
    "_output",
    "_result",
    "_restored",
    "_x4",
    "-x4",
    "x4",
    "_lr4",
    "_lr",
    "-lr",
    "_lq",
    "-lq",
)
# Suffixes stripped from reference stems.
HR_SUFFIXES = ("_hr", "-hr", "_gt", "-gt")


class PairingError(SanaSRError):
    """Folders whose files cannot be paired one to one (missing partners, duplicate keys, empty folders)."""


@dataclass(frozen=True)
class ImagePair:
    key: str
    sr: Path
    hr: Path | None = None  # None for no-reference (NR-only) evaluation


def pairing_key(stem: str, suffixes: tuple[str, ...]) -> str:
    """Lower-cased stem with the longest matching suffix in `suffixes` removed (never the whole stem)."""
    s = stem.lower()
    for suf in sorted(suffixes, key=len, reverse=True):
        if s.endswith(suf) and len(s) > len(suf):
            return s[: -len(suf)]
    return s


def _keyed(files: list[Path], suffixes: tuple[str, ...], folder: Path) -> dict[str, Path]:
    keyed: dict[str, list[Path]] = {}
    for f in files:
        keyed.setdefault(pairing_key(f.stem, suffixes), []).append(f)
    dupes = {k: v for k, v in keyed.items() if len(v) > 1}
    if dupes:
        listed = "; ".join(" and ".join(p.name for p in v) + f" (key '{k}')" for k, v in sorted(dupes.items()))
        raise PairingError(f"{folder}: several files share a pairing key: {listed}")
    return {k: v[0] for k, v in keyed.items()}


def _names(paths: list[Path], limit: int = 10) -> str:
    shown = ", ".join(p.name for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def images_in(folder: Path, what: str) -> list[Path]:
    """The images of a folder (not recursive), or PairingError naming the folder when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PairingError(f"{what} folder {folder} does not exist or is not a folder")
    files = list_images(folder)
    if not files:
        raise PairingError(f"{what} folder {folder} holds no images (png, jpg, webp, tif, bmp)")
    return files


def pair_folders(
    sr_dir: Path,
    hr_dir: Path | None,
    sr_suffixes: tuple[str, ...] = SR_SUFFIXES,
    hr_suffixes: tuple[str, ...] = HR_SUFFIXES,
    sr_what: str = "--sr",
) -> list[ImagePair]:
    """Pairs of (restored, reference) files matched by key, sorted; all unmatched files in one error."""
    sr = _keyed(images_in(sr_dir, sr_what), sr_suffixes, sr_dir)
    if hr_dir is None:
        return [ImagePair(k, sr[k]) for k in sorted(sr)]
    hr = _keyed(images_in(hr_dir, "--hr"), hr_suffixes, hr_dir)
    only_sr = sorted((sr[k] for k in sr.keys() - hr.keys()), key=lambda p: p.name)
    only_hr = sorted((hr[k] for k in hr.keys() - sr.keys()), key=lambda p: p.name)
    if only_sr or only_hr:
        parts = []
        if only_sr:
            parts.append(f"{len(only_sr)} in {sr_dir} without a reference: {_names(only_sr)}")
        if only_hr:
            parts.append(f"{len(only_hr)} in {hr_dir} without a {sr_what.strip('-')} partner: {_names(only_hr)}")
        raise PairingError("unmatched files (paired by file stem): " + "; ".join(parts))
    return [ImagePair(k, sr[k], hr[k]) for k in sorted(sr)]
