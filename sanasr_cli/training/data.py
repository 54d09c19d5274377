"""Training data for `train`: the data sets of `sanasr_cli.data.datasets`, sharded across processes, with a
position that a checkpoint records and a resume seeks to.

Sharding is done here, not by `accelerator.prepare(dataloader)`: each epoch's order is a permutation drawn
from (seed, epoch) alone, cut into `world_size` interleaved shards of whole batches (the tail that does not
fill a batch on every process is dropped). The data position is then just (epoch, batches consumed), and a
resume restarts the epoch's sampler at that batch without reading the skipped images, independent of loader
internals.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Sampler, Subset

from sanasr_cli.errors import SanaSRError
from sanasr_cli.training.config import ConfigError, TrainConfig

_EPOCH_SEED_STRIDE = 1_000_003


class ShardedBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices for one process: epoch `epoch`, starting at batch `start` of its shard."""

    def __init__(self, num_items: int, batch_size: int, rank: int, world_size: int, seed: int, shuffle: bool = True):
        self.num_items, self.batch_size = num_items, batch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.start = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.num_items // (self.batch_size * self.world_size)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_items)
        g = torch.Generator().manual_seed(self.seed * _EPOCH_SEED_STRIDE + epoch)
        return torch.randperm(self.num_items, generator=g)

    def __iter__(self):
        order = self.epoch_order(self.epoch)
        bs, world = self.batch_size, self.world_size
        for b in range(self.start, self.batches_per_epoch):
            first = (b * world + self.rank) * bs
            yield order[first : first + bs].tolist()

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start)


class BatchStream:
    """An endless stream of this process's batches over epochs; `epoch` and `batch_index` (batches consumed in
    the epoch) are the data position.

    Each (re)start builds a loader with `build_dataloader` over this process's remaining indices of the epoch,
    in order (a `Subset`, shuffle off): items depend only on (seed, epoch, index), so a loader that starts
    mid-epoch yields the very batches an uninterrupted one would.
    """

    def __init__(self, dataset, sampler: ShardedBatchSampler, loader_factory):
        self.dataset, self.sampler, self._make_loader = dataset, sampler, loader_factory
        self.epoch, self.batch_index = 0, 0
        self._it = None

    def seek(self, epoch: int, batch_index: int) -> None:
        self.epoch, self.batch_index = int(epoch), int(batch_index)
        self._it = None

    def next(self):
        while True:
            if self._it is None:
                self.sampler.epoch, self.sampler.start = self.epoch, self.batch_index
                if hasattr(self.dataset, "set_epoch"):
                    self.dataset.set_epoch(self.epoch)  # before the loader starts its workers
                indices = [i for batch in self.sampler for i in batch]
                self._it = iter(self._make_loader(indices)) if indices else iter(())
            try:
                batch = next(self._it)
            except StopIteration:
                self.epoch, self.batch_index, self._it = self.epoch + 1, 0, None
                continue
            self.batch_index += 1
            return batch


@dataclass
class TrainingData:
    dataset: object
    stream: BatchStream
    paired: bool
    degrader: object | None
    scale: int
    paths: dict
    teacher: dict | None = None  # the teacher's description (`attach_teacher`), when training with one


def _dataset_flag(config: TrainConfig) -> str:
    return "--pairs" if config.pairs is not None else ("--lq" if config.lq is not None else "--hq")


def build_dataset(config: TrainConfig):
    """HQ folders (synthetic LQ on the fly), an LQ/HQ pair of folders, or LQ images alone (a teacher's outputs
    as their targets: the teacher is attached by `attach_teacher`); errors name the flag."""
    from sanasr_cli.data import datasets

    try:
        if config.pairs is not None or config.lq is not None:
            lq_dir, hq_dir = config.pairs if config.pairs is not None else (config.lq, None)
            # a placeholder teacher until attach_teacher: the LQ-only data set needs to know one will come
            teacher_for = _no_teacher_yet if config.teacher is not None else None
            return datasets.PairedImageDataset(
                lq_dir, hq_dir, crop=config.crop, scale=config.scale, seed=config.seed, teacher_for=teacher_for
            )
        return datasets.HQImageDataset(list(config.hq), crop=config.crop, seed=config.seed, scale=config.scale)
    except (SanaSRError, ValueError, OSError) as e:
        raise ConfigError(_dataset_flag(config), str(e)) from None


def _no_teacher_yet(lq_file: Path) -> Path:
    raise RuntimeError(f"the teacher's output of {lq_file} was read before the teacher cache was filled")


def teacher_cache_folder(config: TrainConfig) -> Path:
    return Path(config.teacher_cache) if config.teacher_cache else Path(config.output) / "teacher_cache"


def attach_teacher(config: TrainConfig, dataset, accelerator, on_progress=None) -> dict:
    """`--teacher`: compute the teacher's output of every LQ image of `dataset` not cached yet (each process its
    share, then all wait), free the teacher, and point the data set at the cached files. Returns the teacher's
    description (for the run's records). on_progress(done, total) is called on the main process."""
    from sanasr_cli.peers.cache import TeacherCache
    from sanasr_cli.peers.peer import PeerError, load_peer

    try:
        peer = load_peer(config.teacher, device=accelerator.device)
    except PeerError as e:
        raise ConfigError("--teacher", str(e)) from None
    cache = TeacherCache(peer, teacher_cache_folder(config))
    lq_files = sorted({Path(item[0]) for item in dataset.items})
    missing = cache.missing(lq_files)
    mine = missing[accelerator.process_index :: accelerator.num_processes]
    done = 0

    def step(_path):
        nonlocal done
        done += 1
        if on_progress is not None and accelerator.is_main_process:
            on_progress(done * accelerator.num_processes, len(missing))

    if on_progress is not None and accelerator.is_main_process:
        on_progress(0, len(missing))
    cache.fill(mine, on_done=step)
    accelerator.wait_for_everyone()
    described = dict(peer.describe(), cached=len(lq_files), computed_now=len(missing), cache=str(cache.root))
    dataset.teacher_for = {p: cache.path_for(p) for p in lq_files}.__getitem__
    del cache, peer  # the teacher's weights are not needed by any step
    return described


def build_training_data(config: TrainConfig, accelerator, on_teacher=None) -> TrainingData:
    """This process's shard of the data set, as a BatchStream; a data set too small for one batch per process
    is an error naming the flag. With a teacher, its outputs are cached first (`attach_teacher`)."""
    from sanasr_cli.data import datasets

    dataset = build_dataset(config)
    n = len(dataset)
    need = config.batch_size * accelerator.num_processes
    if n < need:
        raise ConfigError(
            _dataset_flag(config),
            f"{n} usable image(s) at crop {config.crop}, need at least --batch-size x processes = {need}",
        )
    sampler = ShardedBatchSampler(
        n, config.batch_size, accelerator.process_index, accelerator.num_processes, config.seed
    )
    pin = accelerator.device.type == "cuda"

    def make_loader(indices: list[int]):
        return datasets.build_dataloader(
            Subset(dataset, indices),
            batch_size=config.batch_size,
            shuffle=False,
            seed=config.seed,
            num_workers=config.num_workers,
            pin_memory=pin,
            drop_last=True,
        )

    degrader = None
    paired = config.pairs is not None or config.lq is not None
    if not paired:
        from sanasr_cli.data.degradation import RealESRGANDegrader

        degrader = RealESRGANDegrader(scale=config.scale)
    teacher = attach_teacher(config, dataset, accelerator, on_teacher) if config.teacher is not None else None
    return TrainingData(
        dataset,
        BatchStream(dataset, sampler, make_loader),
        paired,
        degrader,
        config.scale,
        paths_by_key(dataset),
        teacher,
    )


PROMPT_SOURCES = ("hq", "lq")


@dataclass(frozen=True)
class ItemFiles:
    """The files behind one training item: `lq` only for a pair (a synthesised LQ has no file)."""

    lq: Path | None
    hq: Path | None


def paths_by_key(dataset) -> dict[str, ItemFiles]:
    """key -> the item's files (a pair: lq/ and hq/ images; an HQ folder: the HQ image only)."""
    items = getattr(dataset, "items", [])
    return {
        str(it[-1]): ItemFiles(Path(it[0]), Path(it[1]) if it[1] is not None else None)
        if len(it) == 3
        else ItemFiles(None, Path(it[0]))
        for it in items
    }


def to_model_inputs(data: TrainingData, batch: dict, generator: torch.Generator, device):
    """A collated batch -> (lq, lq_upsampled, hq, files): lq (B, 3, H/4, W/4), lq_upsampled and hq
    (B, 3, H, W), float in [0, 1] on `device`; files: one ItemFiles per item (None when unknown)."""
    from sanasr_cli.data.datasets import make_training_batch

    hq = batch["hq"].to(device, non_blocking=True).float()
    if data.paired:
        lq = batch["lq"].to(device, non_blocking=True).float()
    else:
        lq = data.degrader(hq, generator)
    lq_up, hq = make_training_batch({"hq": hq, "lq": lq}, scale=data.scale)
    keys = batch.get("key") or [None] * hq.shape[0]
    files = [data.paths.get(str(k)) for k in keys]
    return lq, lq_up, hq, files


def batch_prompts(
    rule, tagger, source: str, lq: torch.Tensor, hq: torch.Tensor, files: list[ItemFiles | None]
) -> list[str]:
    """Eq. 12 for a training or calibration batch, tagging the image the prompt protocol names.

    source "hq" (the paper's default, App. A.1 / Sec. 4.3): the HQ crop and, for the `file` tagger, the
    sidecar of the HQ file; "lq": the LQ crop and the LQ file's sidecar (for a synthesised LQ, which has no
    file, the HQ file's sidecar: it describes the same content). Inference always tags the LQ input.
    lq: (B, 3, h, w), hq: (B, 3, H, W) in [0, 1].
    """
    from sanasr_cli.prompts.rule import prompt_for_image

    if source not in PROMPT_SOURCES:
        raise ValueError(f"unknown prompt source '{source}' (use hq or lq)")
    images = hq if source == "hq" else lq
    # Only the `file` tagger gets a path (it reads <image>.txt). Model taggers see a crop, which is not the
    # file's content: with a path, the tag cache (keyed by file hash) would store crop tags under the whole
    # file's key and hand them to upscale / eval of that file.
    paths: list[Path | None] = [None] * images.shape[0]
    if rule.tagger == "file":
        paths = [None if f is None else (f.hq if source == "hq" or f.lq is None else f.lq) for f in files]
    return [prompt_for_image(rule, images[i].detach().cpu(), paths[i], tagger) for i in range(images.shape[0])]


def next_training_batch(data: TrainingData, generator: torch.Generator, device):
    """(lq, lq_upsampled, hq, files, teacher): `to_model_inputs`, and the teacher's output crops (B, 3, H, W)
    on `device` when training with a teacher on pairs (else None)."""
    batch = data.stream.next()
    teacher = batch["teacher"].to(device, non_blocking=True).float() if "teacher" in batch else None
    return (*to_model_inputs(data, batch, generator, device), teacher)


def make_validation_batch(data: TrainingData, config: TrainConfig, device) -> dict | None:
    """The first `--validation-images` items, degraded with their own fixed generator (same in every run)."""
    count = min(config.validation_images, len(data.dataset))
    if count == 0:
        return None
    items = [data.dataset[i] for i in range(count)]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0] if isinstance(items[0][k], torch.Tensor)}
    batch["key"] = [it.get("key") for it in items]
    g = torch.Generator().manual_seed(config.seed + 424242)  # CPU draws, as in training
    lq, lq_up, hq, files = to_model_inputs(data, batch, g, device)
    return {"lq": lq, "lq_up": lq_up, "hq": hq, "files": files}
