"""HQ pool (dedup, too small, unreadable, crops), paired folders (mismatches, aligned crops), loader."""

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sanasr_cli.data.datasets import (
    DatasetWarning,
    HQImageDataset,
    PairedImageDataset,
    build_dataloader,
    make_training_batch,
)
from sanasr_cli.data.degradation import RealESRGANDegrader
from sanasr_cli.errors import DatasetError, PairedDataError, SanaSRError
from tests.helpers import make_photo_like, save_photo


@pytest.fixture
def hq_pool(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    save_photo(a / "one.png", 80, 96, 1)
    save_photo(a / "sub" / "two.png", 70, 70, 2)
    save_photo(b / "three.jpg", 64, 100, 3, "JPEG")
    shutil.copy(a / "one.png", b / "one_copy.png")  # same bytes under another name: a duplicate
    save_photo(b / "tiny.png", 40, 200, 4)  # too small for a 64 crop
    (b / "broken.png").write_text("not an image")
    return [a, b]


def test_hq_pool_dedup_small_unreadable(hq_pool):
    with pytest.warns(DatasetWarning) as record:
        ds = HQImageDataset(hq_pool, crop=64, seed=0)
    messages = [str(w.message) for w in record]
    assert sum("tiny.png" in m and "smaller than the 64px crop" in m for m in messages) == 1
    assert sum("broken.png" in m for m in messages) == 1
    s = ds.summary
    assert (s.found, s.used, len(s.duplicates), len(s.too_small), len(s.unreadable)) == (6, 3, 1, 1, 1)
    assert s.duplicates[0][0].endswith("one_copy.png") and s.unreadable[0][0].endswith("broken.png")
    assert "3 images used of 6 found" in str(s)
    assert sorted(k for _, k in ds.items) == ["0:one.png", "0:sub/two.png", "1:three.jpg"]


def test_hq_items_shape_range_and_reproducible_crops(hq_pool):
    with pytest.warns(DatasetWarning):
        ds = HQImageDataset(hq_pool, crop=64, seed=3)
    item = ds[0]
    assert item["hq"].shape == (3, 64, 64) and item["hq"].dtype == torch.float32
    assert 0 <= item["hq"].min() and item["hq"].max() <= 1
    with pytest.warns(DatasetWarning):
        again = HQImageDataset(hq_pool, crop=64, seed=3)
    assert all(torch.equal(ds[i]["hq"], again[i]["hq"]) for i in range(len(ds)))
    # the crop is a real window of the file (possibly flipped)
    full = torch.from_numpy(np.array(Image.open(ds.items[0][0]).convert("RGB"))).permute(2, 0, 1).float() / 255
    crop = ds[0]["hq"]
    windows = full.unfold(1, 64, 1).unfold(2, 64, 1)  # (3, nh, nw, 64, 64)
    hit = any(
        torch.equal(windows[:, i, j], c)
        for c in (crop, crop.flip(-1))
        for i in range(windows.shape[1])
        for j in range(windows.shape[2])
    )
    assert hit
    # other seeds / epochs give other crops
    with pytest.warns(DatasetWarning):
        other = HQImageDataset(hq_pool, crop=64, seed=4)
    assert any(not torch.equal(ds[i]["hq"], other[i]["hq"]) for i in range(len(ds)))
    before = ds[0]["hq"]
    ds.set_epoch(1)
    assert not torch.equal(before, ds[0]["hq"]) or not torch.equal(ds[1]["hq"], again[1]["hq"])


def test_hq_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        HQImageDataset([tmp_path / "missing"], crop=64)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no usable HQ images"):
        HQImageDataset([tmp_path / "empty"], crop=64)
    with pytest.raises(DatasetError, match="multiple of the scale"):
        HQImageDataset([tmp_path / "empty"], crop=66, scale=4)


@pytest.fixture
def paired(tmp_path):
    lq, hq = tmp_path / "lq", tmp_path / "hq"
    for i, (h, w) in enumerate([(20, 24), (16, 16), (30, 18)]):
        big = make_photo_like(h * 4, w * 4, i)
        Image.fromarray(big).save(save_photo(hq / f"p{i}.png", 1, 1, 0))
        Image.fromarray(big).resize((w, h), Image.BICUBIC).save(save_photo(lq / f"p{i}.png", 1, 1, 0))
    return lq, hq


def test_paired_aligned_crops(paired):
    lq_dir, hq_dir = paired
    ds = PairedImageDataset(lq_dir, hq_dir, crop=64, scale=4, seed=0)
    assert len(ds) == 3 and ds.summary.used == 3
    for i in range(3):
        item = ds[i]
        assert item["lq"].shape == (3, 16, 16) and item["hq"].shape == (3, 64, 64)
        # aligned: the LQ crop is the HQ crop's own area-downscale partner (bicubic made it; compare coarsely)
        down = torch.nn.functional.interpolate(item["hq"][None], size=(16, 16), mode="area")[0]
        assert (down - item["lq"]).abs().mean() < 0.03
    whole = PairedImageDataset(lq_dir, hq_dir, crop=None, scale=4)
    item = whole[[k for *_, k in whole.items].index("p2")]
    assert item["lq"].shape == (3, 30, 18) and item["hq"].shape == (3, 120, 72) and item["key"] == "p2"


def test_paired_mismatches_in_one_error(paired):
    lq_dir, hq_dir = paired
    save_photo(lq_dir / "orphan_lq.png", 16, 16, 9)
    save_photo(hq_dir / "orphan_hq.png", 64, 64, 9)
    save_photo(hq_dir / "p1.jpg", 64, 64, 9, "JPEG")  # second HQ file with stem p1
    Image.open(hq_dir / "p0.png").resize((90, 80)).save(hq_dir / "p0.png")  # HQ no longer 4x LQ
    with pytest.raises(PairedDataError) as err:
        PairedImageDataset(lq_dir, hq_dir, crop=64, scale=4)
    msg = str(err.value)
    assert isinstance(err.value, SanaSRError) and "\n" not in msg
    for part in (
        "LQ without HQ: orphan_lq",
        "HQ without LQ: orphan_hq",
        "several files per stem: p1.jpg / p1.png",
        "p0 (LQ 24x20, HQ 90x80)",
    ):
        assert part in msg, msg


def test_paired_too_small_is_skipped_with_warning(paired):
    lq_dir, hq_dir = paired
    with pytest.warns(DatasetWarning, match="p1"):
        ds = PairedImageDataset(lq_dir, hq_dir, crop=72, scale=4)
    assert [k for *_, k in ds.items] == ["p0", "p2"] and len(ds.summary.too_small) == 1


def test_loader_is_deterministic_and_worker_independent(paired):
    lq_dir, hq_dir = paired
    ds = PairedImageDataset(lq_dir, hq_dir, crop=32, scale=4)

    def keys_and_sum(workers):
        dl = build_dataloader(ds, batch_size=2, shuffle=True, seed=5, num_workers=workers)
        return [(tuple(b["key"]), float(b["hq"].sum())) for b in dl]

    a = keys_and_sum(0)
    assert a == keys_and_sum(0) and a == keys_and_sum(2)
    orders = {tuple(k for ks, _ in keys_and_sum(0) for k in ks)}
    dl = build_dataloader(ds, batch_size=2, shuffle=True, seed=6)
    orders.add(tuple(k for b in dl for k in b["key"]))
    assert len(orders) == 2  # the seed sets the order


def test_make_training_batch_paths(paired):
    lq_dir, hq_dir = paired
    ds = PairedImageDataset(lq_dir, hq_dir, crop=32, scale=4)
    batch = next(iter(build_dataloader(ds, batch_size=3, shuffle=False)))
    up, hq = make_training_batch(batch, None, None, scale=4)
    assert up.shape == hq.shape == (3, 3, 32, 32) and 0 <= up.min() and up.max() <= 1
    from sanasr_cli.data.resample import upsample_bicubic

    assert torch.equal(up, upsample_bicubic(batch["lq"], 4))
    # without "lq" the degrader makes it, reproducibly
    hq_only = {"hq": batch["hq"], "key": batch["key"]}
    deg = RealESRGANDegrader(scale=4)
    up1, _ = make_training_batch(hq_only, deg, torch.Generator().manual_seed(1), scale=4)
    up2, _ = make_training_batch(hq_only, deg, torch.Generator().manual_seed(1), scale=4)
    assert up1.shape == (3, 3, 32, 32) and torch.equal(up1, up2)
    with pytest.raises(ValueError, match="needs a degrader"):
        make_training_batch(hq_only, None, None)


def test_index_cache_is_used_and_invalidated(tmp_path):
    root = tmp_path / "pool"
    a, b = save_photo(root / "a.png", 64, 64, 1), save_photo(root / "b.png", 64, 64, 2)
    cache = tmp_path / "index.json"
    assert len(HQImageDataset([root], crop=32, index_cache=cache)) == 2
    index = json.loads(cache.read_text())
    entry = index["files"][str(a.resolve())]
    assert entry[2] == hashlib.sha256(a.read_bytes()).hexdigest() and entry[3:] == [64, 64]
    # the cache, not the bytes, is trusted while size and mtime match: forge b's digest to equal a's
    index["files"][str(b.resolve())][2] = entry[2]
    cache.write_text(json.dumps(index))
    ds = HQImageDataset([root], crop=32, index_cache=cache)
    assert len(ds) == 1 and len(ds.summary.duplicates) == 1
    # a changed file is hashed again
    save_photo(b, 64, 72, 3)
    os.utime(b, ns=(b.stat().st_atime_ns, b.stat().st_mtime_ns + 10**9))
    assert len(HQImageDataset([root], crop=32, index_cache=cache)) == 2
    cache.write_text("{not json")  # a damaged cache is rebuilt, not fatal
    assert len(HQImageDataset([root], crop=32, index_cache=cache)) == 2


def test_a_file_that_fails_to_decode_at_load_time_is_named_and_replaced(tmp_path):
    root = tmp_path / "pool"
    good = save_photo(root / "good.png", 64, 64, 1)
    bad = save_photo(root / "bad.png", 64, 64, 2)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64  # the header parses, the pixel data does not
    bad.write_bytes(bytes(data))
    ds = HQImageDataset([root], crop=32)
    assert len(ds) == 2  # only the header is checked up front
    index = [k for _, k in ds.items].index("bad.png")
    with pytest.warns(DatasetWarning, match="bad.png"):
        item = ds[index]
    assert item["key"] == "good.png" and item["hq"].shape == (3, 32, 32)
    assert good.exists()


def test_paired_unreadable_pair_is_skipped_and_named(paired):
    lq_dir, hq_dir = paired
    (hq_dir / "p1.png").write_text("garbage")
    with pytest.warns(DatasetWarning, match="p1"):
        ds = PairedImageDataset(lq_dir, hq_dir, crop=32, scale=4)
    assert [k for *_, k in ds.items] == ["p0", "p2"] and ds.summary.unreadable[0][0].endswith("p1.png")
