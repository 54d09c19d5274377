"""Calibration batches for `sanasr prune --calib`: a paired folder (lq/ + hq/) or HQ folders degraded online.

The datasets and the Real-ESRGAN degradation are the training ones (sanasr_cli.data); this module only turns
their batches into CalibrationBatch tuples with prompts made by the model's prompt rule (App. A.1: the same
rule for training, calibration and inference).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from sanasr_cli.pruning.calibrate import CalibrationBatch


def is_paired_folder(folder: Path) -> bool:
    return (folder / "lq").is_dir() and (folder / "hq").is_dir()


def calibration_batches(
    folders: list[Path], rule, crop: int, scale: int = 4, seed: int = 0, batch_size: int = 1, tagger=None
) -> tuple[Iterator[CalibrationBatch], int]:
    """An endless iterator of calibration batches and the number of distinct images behind it.

    folders: [one folder with lq/ and hq/] for pairs, or any number of HQ folders (LQ synthesised online from
    a
    generator seeded with `seed`). Each epoch draws new crops (the dataset's epoch is advanced when it wraps).
    tagger: the rule's tagger, already built (default: `tagger_from_rule(rule)`).
    Raises sanasr_cli.data.datasets' DatasetError for folders without usable images.
    """
    from sanasr_cli.data.datasets import (
        HQImageDataset,
        PairedImageDataset,
        build_dataloader,
        make_training_batch,
    )
    from sanasr_cli.data.degradation import RealESRGANDegrader
    from sanasr_cli.prompts.rule import prompt_for_image, tagger_from_rule

    folders = [Path(f) for f in folders]
    if len(folders) == 1 and is_paired_folder(folders[0]):
        dataset = PairedImageDataset(folders[0] / "lq", folders[0] / "hq", crop=crop, scale=scale, seed=seed)
        paths = {stem: lq for lq, _, stem in dataset.items}
        degrader = None
    else:
        dataset = HQImageDataset(folders, crop=crop, seed=seed, scale=scale)
        paths = {key: path for path, key in dataset.items}
        degrader = RealESRGANDegrader(scale=scale)
    generator = torch.Generator().manual_seed(seed)
    tagger = tagger or tagger_from_rule(rule)

    def endless() -> Iterator[CalibrationBatch]:
        epoch = 0
        while True:
            dataset.set_epoch(epoch)
            loader = build_dataloader(dataset, batch_size=batch_size, shuffle=True, seed=seed + epoch)
            for batch in loader:
                lq_up, hq = make_training_batch(batch, degrader, generator, scale=scale)
                lq_small = batch.get("lq")
                prompts = []
                for i, key in enumerate(batch["key"]):
                    # the tagger sees x_L as the user's file is (paired) or as synthesised, never the HQ
                    image = lq_small[i] if lq_small is not None else lq_up[i]
                    prompts.append(prompt_for_image(rule, image, paths.get(key), tagger))
                yield CalibrationBatch(lq_up, hq, prompts)
            epoch += 1

    return endless(), len(dataset)
