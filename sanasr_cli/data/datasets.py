"""Training data: an HQ image pool (LQ synthesised online) or LQ/HQ pairs, and the loader around them.

Item contracts (float32 in [0, 1]):
    HQImageDataset[i]      -> {"hq": (3, crop, crop), "key": str}
    PairedImageDataset[i]  -> {"lq": (3, crop/scale, crop/scale), "hq": (3, crop, crop), "key": str}
                              (+ "teacher": (3, crop, crop), the same crop of a teacher's output, when given one;
                              LQ only: "hq" is the teacher's output)
    make_training_batch    -> (lq_upsampled, hq), both (B, 3, H, W) on hq's device: the model input x_L is
                              the LQ upsampled bicubically to the HQ size.
Crops and flips are a function of (seed, epoch, index) only: a run is reproducible whatever the worker count.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sanasr_cli.data.io import (
    DEFAULT_MAX_PIXELS,
    list_images,
    open_image,
    read_image_uint8,
    uint8_to_tensor,
)
from sanasr_cli.data.resample import upsample_bicubic
from sanasr_cli.errors import DatasetError, ImageReadError, PairedDataError

INDEX_FORMAT = "sanasr-hq-index-1"  # {absolute path: [bytes, mtime_ns, sha256, width, height]}


class DatasetWarning(UserWarning):
    """An input image was skipped (too small for the crop, unreadable, or failed to decode at load time)."""


@dataclass
class DatasetSummary:
    """What a data set found and kept. `str()` is a one-line report for logs."""

    found: int = 0
    used: int = 0
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (dropped, identical to kept)
    too_small: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def __str__(self) -> str:
        return (
            f"{self.used} images used of {self.found} found: {len(self.duplicates)} duplicates (SHA256), "
            f"{len(self.too_small)} too small, {len(self.unreadable)} unreadable"
        )


def _sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def _header(data: bytes, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the file header (EXIF rotation applied); raises on anything unusable."""
    with open_image(io.BytesIO(data)) as im:
        w, h = im.size
        if w * h > max_pixels:
            raise ValueError(f"{w}x{h} exceeds the {max_pixels / 1e6:.0f} MP limit")
        # EXIF sits in the header of JPEG/WebP/TIFF; Pillow's PNG getexif() decodes the whole image, so PNGs
        # (whose rare eXIf chunk may come after the pixels) keep their stored size
        orientation = im.getexif().get(0x0112, 1) if im.format in ("JPEG", "MPO", "WEBP", "TIFF") else 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _scan(path: Path, max_pixels: int) -> tuple[Path, str | None, tuple[int, int] | None, str | None]:
    """(path, sha256, (width, height), error) for one file; reads it once."""
    try:
        data = path.read_bytes()
        if not data:
            return path, None, None, "empty file (0 bytes)"
        digest = hashlib.sha256(data).hexdigest()
        return path, digest, _header(data, max_pixels), None
    except Exception as e:  # any failure to parse a header means the file is unusable; name it, go on
        return path, None, None, f"{type(e).__name__}: {e}"


def _scan_all(paths: list[Path], max_pixels: int, index_cache: Path | None = None) -> list[tuple]:
    """_scan for every path. With `index_cache`, files whose size and mtime match their cached entry are not
    read again (hashing a 90K-image pool reads every byte once), and the cache is rewritten afterwards."""
    cache = _load_index(index_cache)
    results: list[tuple | None] = [None] * len(paths)
    todo = []
    for i, p in enumerate(paths):
        try:
            st = p.stat()
            entry = cache.get(str(p.resolve()))
        except OSError:
            entry, st = None, None
        if entry and st and entry[:2] == [st.st_size, st.st_mtime_ns] and entry[3] * entry[4] <= max_pixels:
            results[i] = (p, entry[2], (entry[3], entry[4]), None)
        else:
            todo.append(i)
    # threads overlap the file reads (hashlib and PIL release the GIL on large buffers)
    with ThreadPoolExecutor(max_workers=8) as pool:
        for i, res in zip(todo, pool.map(lambda i: _scan(paths[i], max_pixels), todo), strict=True):
            results[i] = res
    if index_cache is not None:
        fresh = {}
        for p, digest, size, error in results:
            if error is None:
                st = p.stat()
                fresh[str(p.resolve())] = [st.st_size, st.st_mtime_ns, digest, size[0], size[1]]
        _save_index(index_cache, {**cache, **fresh})
    return results


def _load_index(path: Path | None) -> dict:
    if path is None or not Path(path).is_file():
        return {}
    try:
        data = json.loads(Path(path).read_text())
        return data.get("files", {}) if data.get("format") == INDEX_FORMAT else {}
    except (OSError, ValueError, AttributeError):
        return {}  # a damaged cache is only a cache: rebuild it


def _save_index(path: Path, files: dict) -> None:
    from sanasr_cli.safe_files import atomic_write

    atomic_write(path, json.dumps({"format": INDEX_FORMAT, "files": files}))


def _crop_flip(array: np.ndarray, top: int, left: int, size_h: int, size_w: int, flip: bool) -> torch.Tensor:
    patch = array[top : top + size_h, left : left + size_w]
    if flip:
        patch = patch[:, ::-1]
    return uint8_to_tensor(patch)


class HQImageDataset(Dataset):
    """HQ images from several folders (recursive, links not followed), deduplicated by SHA256 of the bytes.

    Items: {"hq": float32 (3, crop, crop) in [0, 1], "key": str}: a random crop and a random horizontal flip
    (Real-ESRGAN's use_hflip) drawn from (seed, epoch, index). Images smaller than the crop are skipped with
    one DatasetWarning each; unreadable ones are skipped and named; both are counted in `.summary`. `crop`
    must be a multiple of `scale`, so the degrader can produce an LQ of exactly crop/scale.
    `index_cache` (a JSON file) keeps each file's SHA256 and size keyed by path, size and mtime, so a restart
    does not re-read the whole pool.
    """

    def __init__(
        self,
        roots: list[Path],
        crop: int = 512,
        seed: int = 0,
        scale: int = 4,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        index_cache: Path | None = None,
    ):
        if crop < scale or crop % scale:
            raise DatasetError(f"crop {crop} must be a positive multiple of the scale {scale}")
        self.roots = [Path(r) for r in ([roots] if isinstance(roots, (str, Path)) else roots)]
        self.crop, self.seed, self.scale, self.epoch = int(crop), int(seed), int(scale), 0
        self.max_pixels = max_pixels
        missing = [str(r) for r in self.roots if not r.exists()]
        if missing:
            raise DatasetError(f"HQ folder(s) not found: {', '.join(missing)}")
        candidates: list[tuple[Path, str]] = []
        for i, root in enumerate(self.roots):
            prefix = f"{i}:" if len(self.roots) > 1 else ""
            for p in list_images(root, recursive=True):
                rel = p.relative_to(root).as_posix() if root.is_dir() else p.name
                candidates.append((p, prefix + rel))
        self.summary = DatasetSummary(found=len(candidates))
        seen: dict[str, str] = {}
        self.items: list[tuple[Path, str]] = []
        for (path, key), (_, digest, size, error) in zip(
            candidates, _scan_all([p for p, _ in candidates], max_pixels, index_cache), strict=True
        ):
            if error is not None:
                self.summary.unreadable.append((str(path), error))
                warnings.warn(DatasetWarning(f"skipped unreadable image {path}: {error}"), stacklevel=2)
                continue
            if digest in seen:
                self.summary.duplicates.append((str(path), seen[digest]))
                continue
            seen[digest] = str(path)
            w, h = size
            if min(w, h) < self.crop:
                self.summary.too_small.append(str(path))
                warnings.warn(
                    DatasetWarning(f"skipped {path}: {w}x{h} is smaller than the {self.crop}px crop"),
                    stacklevel=2,
                )
                continue
            self.items.append((path, key))
        self.summary.used = len(self.items)
        if not self.items:
            raise DatasetError(f"no usable HQ images in {', '.join(map(str, self.roots))} ({self.summary})")

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """New crops and flips for a new epoch (workers pick this up when they are re-created each epoch)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict:
        for attempt in range(len(self.items)):
            path, key = self.items[(index + attempt) % len(self.items)]
            try:
                array, _ = read_image_uint8(path, self.max_pixels)
            except ImageReadError as e:  # the header was fine but the data is not: name it, use the next image
                warnings.warn(DatasetWarning(f"skipped at load time: {e}"), stacklevel=2)
                continue
            h, w = array.shape[:2]
            rng = _sample_rng(self.seed, self.epoch, index)
            top, left = int(rng.integers(0, h - self.crop + 1)), int(rng.integers(0, w - self.crop + 1))
            flip = bool(rng.random() < 0.5)
            return {"hq": _crop_flip(array, top, left, self.crop, self.crop, flip), "key": key}
        raise DatasetError("no HQ image could be decoded")


class PairedImageDataset(Dataset):
    """LQ/HQ pairs from two folders, matched by file stem (relative path without the suffix, recursive).

    Every HQ must be exactly `scale` x its LQ. Any LQ without an HQ, HQ without an LQ, duplicate stem, or size
    mismatch is listed in one PairedDataError. Items: {"lq": (3, crop/scale, crop/scale),
    "hq": (3, crop, crop), "key": stem}, aligned crops (the LQ at its own resolution) and the same horizontal
    flip for both; crop=None gives whole images. Pairs smaller than the crop are skipped with a warning,
    unreadable ones named.

    `teacher_for(lq_file) -> file` names a teacher's x`scale` output of each LQ (`sanasr train --teacher`: the
    peers' TeacherCache): items then also hold "teacher", the same crop of it. With `hq_dir=None` the LQ images
    stand alone (photos without a reference) and the teacher's output takes the HQ's place: "hq" is its crop.
    """

    def __init__(
        self,
        lq_dir: Path,
        hq_dir: Path | None,
        crop: int | None = 512,
        scale: int = 4,
        seed: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        teacher_for=None,
    ):
        if crop is not None and (crop < scale or crop % scale):
            raise DatasetError(f"crop {crop} must be a positive multiple of the scale {scale}")
        if hq_dir is None and teacher_for is None:
            raise DatasetError("LQ images without HQ references need a teacher's outputs as targets")
        self.lq_dir, self.hq_dir = Path(lq_dir), (Path(hq_dir) if hq_dir is not None else None)
        self.teacher_for = teacher_for
        self.crop, self.scale, self.seed, self.epoch, self.max_pixels = (
            crop,
            int(scale),
            int(seed),
            0,
            max_pixels,
        )
        for name, d in (("LQ", self.lq_dir), ("HQ", self.hq_dir)):
            if d is not None and not d.is_dir():
                raise DatasetError(f"{name} folder {d} not found")
        problems: list[str] = []
        lq = self._by_stem(self.lq_dir, "LQ", problems)
        if self.hq_dir is None:
            self._lq_only(lq, problems)
            return
        hq = self._by_stem(self.hq_dir, "HQ", problems)
        only_lq, only_hq = sorted(set(lq) - set(hq)), sorted(set(hq) - set(lq))
        if only_lq:
            problems.append(f"{len(only_lq)} LQ without HQ: {_listing(only_lq)}")
        if only_hq:
            problems.append(f"{len(only_hq)} HQ without LQ: {_listing(only_hq)}")
        stems = sorted(set(lq) & set(hq))
        scans = _scan_all([lq[s] for s in stems] + [hq[s] for s in stems], max_pixels)
        lq_scans, hq_scans = scans[: len(stems)], scans[len(stems) :]
        self.summary = DatasetSummary(found=len(stems))
        self.items: list[tuple[Path, Path, str]] = []
        bad_sizes = []
        for stem, (lp, _, lsize, lerr), (hp, _, hsize, herr) in zip(stems, lq_scans, hq_scans, strict=True):
            if lerr or herr:
                for p, err in ((lp, lerr), (hp, herr)):
                    if err:
                        self.summary.unreadable.append((str(p), err))
                        warnings.warn(DatasetWarning(f"skipped pair '{stem}': unreadable {p}: {err}"), stacklevel=2)
                continue
            if (hsize[0], hsize[1]) != (lsize[0] * self.scale, lsize[1] * self.scale):
                bad_sizes.append(f"{stem} (LQ {lsize[0]}x{lsize[1]}, HQ {hsize[0]}x{hsize[1]})")
                continue
            if crop is not None and min(hsize) < crop:
                self.summary.too_small.append(str(hp))
                warnings.warn(
                    DatasetWarning(
                        f"skipped pair '{stem}': HQ {hsize[0]}x{hsize[1]} is smaller than the {crop}px crop"
                    ),
                    stacklevel=2,
                )
                continue
            self.items.append((lp, hp, stem))
        if bad_sizes:
            problems.append(f"{len(bad_sizes)} pair(s) where HQ is not {self.scale}x LQ: {_listing(bad_sizes)}")
        if problems:
            raise PairedDataError(f"LQ {self.lq_dir} and HQ {self.hq_dir} do not match: " + "; ".join(problems))
        self.summary.used = len(self.items)
        if not self.items:
            raise DatasetError(f"no usable pairs in {self.lq_dir} + {self.hq_dir} ({self.summary})")

    def _lq_only(self, lq: dict[str, Path], problems: list[str]) -> None:
        """Items (lq file, None, stem) of LQ images whose x`scale` size holds the crop."""
        if problems:
            raise PairedDataError(f"LQ {self.lq_dir}: " + "; ".join(problems))
        stems = sorted(lq)
        self.summary = DatasetSummary(found=len(stems))
        self.items = []
        for stem, (lp, _, size, err) in zip(stems, _scan_all([lq[s] for s in stems], self.max_pixels), strict=True):
            if err:
                self.summary.unreadable.append((str(lp), err))
                warnings.warn(DatasetWarning(f"skipped '{stem}': unreadable {lp}: {err}"), stacklevel=3)
            elif self.crop is not None and min(size) * self.scale < self.crop:
                self.summary.too_small.append(str(lp))
                warnings.warn(
                    DatasetWarning(f"skipped '{stem}': x{self.scale} of {size[0]}x{size[1]} is smaller than the "
                                   f"{self.crop}px crop"),
                    stacklevel=3,
                )  # fmt: skip
            else:
                self.items.append((lp, None, stem))
        self.summary.used = len(self.items)
        if not self.items:
            raise DatasetError(f"no usable LQ images in {self.lq_dir} ({self.summary})")

    @staticmethod
    def _by_stem(root: Path, name: str, problems: list[str]) -> dict[str, Path]:
        found: dict[str, Path] = {}
        dupes = []
        for p in list_images(root, recursive=True):
            stem = p.relative_to(root).with_suffix("").as_posix()
            if stem in found:
                dupes.append(f"{found[stem].name} / {p.name}")
            found[stem] = p
        if dupes:
            problems.append(f"{name} has several files per stem: {_listing(dupes)}")
        return found

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict:
        lp, hp, stem = self.items[index]
        lq, _ = read_image_uint8(lp, self.max_pixels)
        teacher = None
        if self.teacher_for is not None:
            teacher, _ = read_image_uint8(self.teacher_for(lp), self.max_pixels)
            if teacher.shape[:2] != (lq.shape[0] * self.scale, lq.shape[1] * self.scale):
                raise DatasetError(
                    f"the teacher's output of {lp} is {teacher.shape[1]}x{teacher.shape[0]}, not x{self.scale}"
                )
        hq = read_image_uint8(hp, self.max_pixels)[0] if hp is not None else teacher
        rng = _sample_rng(self.seed, self.epoch, index)
        lh, lw = lq.shape[:2]
        if self.crop is None:
            lc_h, lc_w, top, left = lh, lw, 0, 0
        else:
            lc_h = lc_w = self.crop // self.scale
            top, left = int(rng.integers(0, lh - lc_h + 1)), int(rng.integers(0, lw - lc_w + 1))
        flip = bool(rng.random() < 0.5) if self.crop is not None else False
        s = self.scale
        item = {
            "lq": _crop_flip(lq, top, left, lc_h, lc_w, flip),
            "hq": _crop_flip(hq, top * s, left * s, lc_h * s, lc_w * s, flip),
            "key": stem,
        }
        if teacher is not None and hp is not None:
            item["teacher"] = _crop_flip(teacher, top * s, left * s, lc_h * s, lc_w * s, flip)
        return item


def _listing(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def make_training_batch(
    batch: dict, degrader=None, generator: torch.Generator | None = None, scale: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """A loader batch -> (lq_upsampled, hq), both float32 (B, 3, H, W) in [0, 1] on hq's device.

    With "lq" in the batch (paired data) it is used as it is; otherwise `degrader(hq, generator)` makes it.
    The LQ is then upsampled bicubically to the HQ size: the model input x_L of the paper.
    """
    hq = batch["hq"]
    if "lq" in batch:
        lq = batch["lq"].to(hq.device, non_blocking=True)
    else:
        if degrader is None or generator is None:
            raise ValueError("a batch without 'lq' needs a degrader and a generator")
        lq = degrader(hq, generator)
    up = upsample_bicubic(lq.float(), scale)
    if up.shape[-2:] != hq.shape[-2:]:
        raise ValueError(f"LQ {tuple(lq.shape[-2:])} x {scale} does not give the HQ size {tuple(hq.shape[-2:])}")
    return up, hq.float()


def _seed_worker(worker_id: int) -> None:
    # torch gives each worker a seed derived from the loader's generator; make numpy / random follow it, and
    # keep each worker to one thread so N workers do not oversubscribe the CPU
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    torch.set_num_threads(1)


def build_dataloader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
    persistent_workers: bool = False,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """A DataLoader whose order and items depend only on `seed` (and the epoch set on the dataset).

    The shuffle order comes from a generator seeded with `seed`; items are deterministic functions of their
    index, so any `num_workers` gives the same batches. Workers decode and crop in parallel; pin_memory=True
    speeds up host-to-GPU copies. Call `dataset.set_epoch(e)` before each epoch (with persistent_workers the
    workers keep the epoch they started with, hence the default False).
    """
    g = torch.Generator()
    g.manual_seed(int(seed))
    kwargs = {}
    if num_workers > 0:
        kwargs.update(persistent_workers=persistent_workers, worker_init_fn=_seed_worker)
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=g,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=drop_last,
        **kwargs,
    )
