"""Calibration batches for `sanasr prune --calib`: a paired folder (lq/ + hq/) or HQ folders degraded online.

The datasets, the Real-ESRGAN degradation and the batch glue are the training ones (sanasr_cli.data,
sanasr_cli.training.data); this module only turns their batches into CalibrationBatch tuples with prompts
made by the model's prompt rule from the image its training protocol tagged (App. A.1: the same rule and
prompt source for training and calibration; inference tags the LQ input).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from sanasr_cli.pruning.calibrate import CalibrationBatch


def is_paired_folder(folder: Path) -> bool:
    return (folder / "lq").is_dir() and (folder / "hq").is_dir()


def calibration_batches(
    folders: list[Path],
    rule,
    crop: int,
    scale: int = 4,
    seed: int = 0,
    batch_size: int = 1,
    tagger=None,
    source: str = "hq",
) -> tuple[Iterator[CalibrationBatch], int]:
    """An endless iterator of calibration batches and the number of distinct images behind it.

    folders: [one folder with lq/ and hq/] for pairs, or any number of HQ folders (LQ synthesised online from
    a generator seeded with `seed`). Each epoch draws new crops (the dataset's epoch advances when it wraps).
    tagger: the rule's tagger, already built (default: `tagger_from_rule(rule)`).
    source: the image the prompts are made from, as in the model's training protocol (App. A.1): "hq" the HQ
    crop, "lq" the LQ crop (`training.data.batch_prompts`).
    Raises sanasr_cli.data.datasets' DatasetError for folders without usable images.
    """
    from sanasr_cli.data.datasets import HQImageDataset, PairedImageDataset, build_dataloader
    from sanasr_cli.data.degradation import RealESRGANDegrader
    from sanasr_cli.prompts.rule import tagger_from_rule
    from sanasr_cli.training.data import TrainingData, batch_prompts, paths_by_key, to_model_inputs

    folders = [Path(f) for f in folders]
    paired = len(folders) == 1 and is_paired_folder(folders[0])
    if paired:
        dataset = PairedImageDataset(folders[0] / "lq", folders[0] / "hq", crop=crop, scale=scale, seed=seed)
    else:
        dataset = HQImageDataset(folders, crop=crop, seed=seed, scale=scale)
    # the training data glue (LQ from the pair or the Real-ESRGAN degrader, bicubic x scale, file per item),
    # without its sharded stream: calibration is one process, batch 1
    degrader = None if paired else RealESRGANDegrader(scale=scale)
    data = TrainingData(dataset, None, paired, degrader, scale, paths_by_key(dataset))
    generator = torch.Generator().manual_seed(seed)
    tagger = tagger or tagger_from_rule(rule)

    def endless() -> Iterator[CalibrationBatch]:
        epoch = 0
        while True:
            dataset.set_epoch(epoch)
            loader = build_dataloader(dataset, batch_size=batch_size, shuffle=True, seed=seed + epoch)
            for batch in loader:
                lq, lq_up, hq, files = to_model_inputs(data, batch, generator, "cpu")
                yield CalibrationBatch(lq_up, hq, batch_prompts(rule, tagger, source, lq, hq, files))
            epoch += 1

    return endless(), len(dataset)
