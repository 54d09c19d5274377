"""Training checkpoints: a model directory plus what it takes to continue exactly.

    RUN/checkpoint-<step>/
      sanasr.json            model description (adapter over the base): upscale, eval, merge-lora load it
      adapter/               PEFT adapter folder: the trained LoRA weights (what the model directory uses)
      adapter_ema/           PEFT adapter folder: their EMA (`merge-lora --ema` merges it), when EMA is on
      train/
        optimizer.pt         AdamW state (torch.save of tensors and numbers; read back with weights_only=True)
        rng.safetensors      torch CPU/CUDA and named-generator states of every rank
        state.json           step, data position, LR scheduler, loss scaler, numpy/python RNG, rank count
        train_config.json    the resolved configuration

A checkpoint is assembled in a hidden staging folder next to it and renamed into place only when complete, so
an interrupted save (a full disk, a kill) never leaves a half-written `checkpoint-<step>`; `state.json` is
written last and marks a checkpoint as complete.
"""

from __future__ import annotations

import copy
import io
import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from sanasr_cli.errors import SanaSRError
from sanasr_cli.models.description import CHECKPOINT_RE
from sanasr_cli.safe_files import atomic_write, make_temp_dir

STATE_FILE = "state.json"


class CheckpointError(SanaSRError):
    """A checkpoint could not be written, found or read."""


class CheckpointReadError(CheckpointError):
    """A checkpoint's files are damaged, truncated, altered or of the wrong shape (bad input: exit 2)."""


# ---------------------------------------------------------------- RNG states


def capture_rng(generators: dict[str, torch.Generator]) -> dict:
    """Every RNG that influences a step on this rank: torch (CPU, CUDA), numpy, python, and named generators.

    Returns {"tensors": {name: uint8 tensor}, "meta": JSON-able dict}.
    """
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    for name, g in generators.items():
        tensors[f"gen_{name}"] = g.get_state()
    np_state = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
    py_version, py_state, py_gauss = random.getstate()
    meta = {
        "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_version, list(py_state), py_gauss],
    }
    return {"tensors": {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, "meta": meta}


def restore_rng(state: dict, generators: dict[str, torch.Generator]) -> None:
    t, meta = state["tensors"], state["meta"]
    torch.set_rng_state(t["torch_cpu"])
    cuda = sorted(k for k in t if k.startswith("torch_cuda_"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t[k] for k in cuda][: torch.cuda.device_count()])
    for name, g in generators.items():
        if f"gen_{name}" in t:
            g.set_state(t[f"gen_{name}"])
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, t["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, py_state, gauss = meta["python"]
    random.setstate((version, tuple(py_state), gauss))


def _rng_files(per_rank: list[dict]) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = {}, {}
    for r, state in enumerate(per_rank):
        tensors.update({f"rank{r}.{k}": v for k, v in state["tensors"].items()})
        meta[str(r)] = state["meta"]
    return tensors, meta


def _rng_for_rank(tensors: dict[str, torch.Tensor], meta: dict, rank: int) -> dict:
    prefix = f"rank{rank}."
    mine = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not mine or str(rank) not in meta:
        raise CheckpointError(f"the checkpoint has no RNG state for process {rank}")
    return {"tensors": mine, "meta": meta[str(rank)]}


# ---------------------------------------------------------------- finding checkpoints


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, sorted by step."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for p in run_dir.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and (p / "train" / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1][1] if ckpts else None


def resolve_resume(resume: str, run_dir: Path) -> Path | None:
    """'latest' -> newest complete checkpoint of run_dir (error when none); 'auto' -> the same, or None;
    anything else: a checkpoint folder."""
    if resume in ("latest", "auto"):
        found = latest_checkpoint(run_dir)
        if found is None and resume == "latest":
            raise CheckpointError(f"--resume latest: no complete checkpoint-<step> folder in {run_dir}")
        return found
    path = Path(resume).expanduser()
    if not (path / "train" / STATE_FILE).is_file():
        raise CheckpointError(f"--resume {resume}: not a training checkpoint (no train/{STATE_FILE} in it)")
    return path


def prune_checkpoints(run_dir: Path, limit: int | None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond `limit` (the newest is always kept); return them."""
    if limit is None:
        return []
    ckpts = list_checkpoints(run_dir)
    doomed = [p for _, p in ckpts[: max(0, len(ckpts) - max(limit, 1))]]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def clean_staging(run_dir: Path) -> None:
    """Remove leftovers of saves that were interrupted (hidden staging folders)."""
    for p in Path(run_dir).glob(".checkpoint-*"):
        shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------- save / load


def save_checkpoint(
    run_dir: Path,
    step: int,
    model,
    ema,
    optimizer: torch.optim.Optimizer,
    state: dict,
    rng_per_rank: list[dict],
    config_dict: dict,
    description,
) -> Path:
    """Write RUN/checkpoint-<step> atomically (call on the main process only). Returns its path.

    model: the SanaSR whose transformer carries the training adapter; ema: a LoraEMA or None; state: JSON-able
    training state (step, data position, scheduler, scaler, ...); description: the ModelDescription to record.
    """
    from safetensors.torch import save as safetensors_bytes

    from sanasr_cli.models.lora import EMA_ADAPTER_DIR, save_adapter
    from sanasr_cli.models.sanasr import save_model_dir

    run_dir = Path(run_dir)
    final = run_dir / f"checkpoint-{step}"
    staging = make_temp_dir(run_dir, f".checkpoint-{step}.")
    shutil.rmtree(staging)  # save_model_dir creates it (itself atomically)
    try:
        # a model with its own transformer (nano, a merged or pruned folder) takes it along: the checkpoint is a
        # model directory that loads on its own (its description names `transformer/`), and may not point at the
        # folder it was trained from
        own_transformer = description.transformer not in (None, "base")
        save_model_dir(model, staging, description=copy.deepcopy(description), save_transformer=own_transformer)
        if ema is not None:
            with ema.swapped_in():
                save_adapter(model.transformer, staging / EMA_ADAPTER_DIR)
        train = staging / "train"
        train.mkdir()
        # serialised in memory, written by safe_files: a full disk is an OSError here (torch.save and
        # safetensors.save_file would raise their own errors), and the files get the usual permissions
        buffer = io.BytesIO()
        torch.save(_to_cpu(optimizer.state_dict()), buffer)
        atomic_write(train / "optimizer.pt", buffer.getvalue())
        del buffer
        tensors, rng_meta = _rng_files(rng_per_rank)
        atomic_write(train / "rng.safetensors", safetensors_bytes(tensors))
        atomic_write(train / "train_config.json", json.dumps(config_dict, indent=2) + "\n")
        full_state = {**state, "rng": rng_meta, "ema": ema is not None}
        atomic_write(train / STATE_FILE, json.dumps(full_state, indent=2) + "\n")  # last: complete
        if final.exists():  # re-reaching a step after resuming from an earlier checkpoint
            old = final.with_name(f".checkpoint-{step}.old")
            os.replace(final, old)
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, final)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        where = f"{Path(e.filename).name}: " if e.filename else ""
        raise CheckpointError(
            f"could not write checkpoint-{step} in {run_dir} ({where}{e.strerror or e}); "
            f"earlier checkpoints are untouched"
        ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def read_checkpoint_config(ckpt: Path) -> dict:
    path = Path(ckpt) / "train" / "train_config.json"
    if not path.is_file():
        raise CheckpointError(f"{ckpt} has no train/train_config.json")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CheckpointReadError(f"cannot resume from {ckpt}: train/train_config.json: {first_line(e)}") from None
    if not isinstance(config, dict):
        raise CheckpointReadError(
            f"cannot resume from {ckpt}: train/train_config.json is not a JSON object of training options"
        )
    return config


def first_line(e: BaseException) -> str:
    text = f"missing {e}" if isinstance(e, KeyError) else str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


# (field, kind, minimum) of state.json; kind "int" excludes booleans
_STATE_FIELDS = (
    ("step", "int", 0),
    ("epoch", "int", 0),
    ("batch_in_epoch", "int", 0),
    ("num_processes", "int", 1),
    ("scheduler", "object", None),
    ("scaler", "object or null", None),
    ("rng", "object", None),
)


def check_state(state, where: str) -> dict:
    """state.json as save_checkpoint writes it, field by field; CheckpointReadError naming the field."""
    if not isinstance(state, dict):
        raise CheckpointReadError(f"{where} is not a JSON object")
    for name, kind, minimum in _STATE_FIELDS:
        if name not in state:
            raise CheckpointReadError(f"{where} has no '{name}'")
        value = state[name]
        if kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
            kind = f"a whole number >= {minimum}"
        else:
            ok = isinstance(value, dict) or (value is None and "null" in kind)
            kind = f"an {kind}"
        if not ok:
            raise CheckpointReadError(f"{where}: '{name}' must be {kind}, not {json.dumps(value)[:60]}")
        if kind.startswith("a whole number") and value >= MAX_STATE_COUNT:
            raise CheckpointReadError(f"{where}: '{name}' is {value}, more than any run reaches")
    _check_scheduler(state["scheduler"], where)
    return state


# a step / epoch count no run reaches (2^40 steps at 1 ms each is 35 years): larger is an altered file
MAX_STATE_COUNT = 2**40


def _check_scheduler(sched: dict, where: str) -> None:
    """The LR scheduler state (LambdaLR's): learning rates finite and >= 0, step counts in range; a NaN
    base_lrs would train every weight to NaN."""
    import math

    for key in ("base_lrs", "_last_lr"):
        values = sched.get(key, [])
        if not isinstance(values, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in values
        ):
            raise CheckpointReadError(f"{where}: 'scheduler.{key}' must be a list of finite learning rates >= 0")
    for key in ("last_epoch", "_step_count"):
        value = sched.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value < MAX_STATE_COUNT:
            raise CheckpointReadError(f"{where}: 'scheduler.{key}' must be a whole number in range, not {value!r}")


def _check_rng_meta(meta, where: str) -> None:
    """One rank's numpy / python RNG states as capture_rng records them."""

    def number(v, kinds=(int,)) -> bool:
        return isinstance(v, kinds) and not isinstance(v, bool)

    np_state, py_state = (meta.get("numpy"), meta.get("python")) if isinstance(meta, dict) else (None, None)
    ok_np = (
        isinstance(np_state, list)
        and len(np_state) == 4
        and isinstance(np_state[0], str)
        and number(np_state[1])
        and number(np_state[2])
        and number(np_state[3], (int, float))
    )
    ok_py = (
        isinstance(py_state, list)
        and len(py_state) == 3
        and number(py_state[0])
        and isinstance(py_state[1], list)
        and all(number(v) and 0 <= v < 2**32 for v in py_state[1])
        and (py_state[2] is None or number(py_state[2], (int, float)))
    )
    if not (ok_np and ok_py):
        raise CheckpointReadError(f"{where}: the numpy / python random states are not the ones sanasr writes")


def _read_part(ckpt: Path, rel: str, read: Callable):
    """`read()` of one checkpoint file; any failure of a damaged, truncated or altered file is one line naming
    it. A pickle that is not weights-only is refused by torch before anything in it runs; the message says so
    and nothing else (torch's own text suggests weights_only=False, which would run the file's code)."""
    import pickle

    try:
        return read()
    except CheckpointReadError:
        raise
    except pickle.UnpicklingError:
        raise CheckpointReadError(
            f"cannot resume from {ckpt}: {rel} holds Python objects that are not tensors or numbers; it was not "
            "written by sanasr or was altered, and is refused unread (nothing in it ran)"
        ) from None
    except FileNotFoundError:
        raise CheckpointReadError(f"cannot resume from {ckpt}: {rel} is missing") from None
    except Exception as e:  # noqa: BLE001 - SafetensorError, torch's zip reader, shapes that do not fit
        raise CheckpointReadError(
            f"cannot resume from {ckpt}: {rel} is damaged, truncated or not of this run ({first_line(e)})"
        ) from None


def load_checkpoint(ckpt: Path, transformer, ema, optimizer: torch.optim.Optimizer, rank: int) -> dict:
    """Load a checkpoint into live objects (every process). Returns the state dict (with 'rng' for this rank).

    Order matters: the EMA adapter is loaded into the live LoRA weights and copied into the EMA shadow, then
    the trained adapter overwrites the live weights. Every file is checked as it is read: a damaged one is a
    CheckpointReadError naming it.
    """
    from safetensors.torch import load_file

    from sanasr_cli.models.lora import ADAPTER_DIR, EMA_ADAPTER_DIR, load_adapter_weights

    ckpt = Path(ckpt)
    train = ckpt / "train"
    state_rel = f"train/{STATE_FILE}"
    state = _read_part(ckpt, state_rel, lambda: json.loads((train / STATE_FILE).read_text(encoding="utf-8")))
    check_state(state, f"cannot resume from {ckpt}: {state_rel}")
    if ema is not None:
        _read_part(
            ckpt,
            f"{EMA_ADAPTER_DIR}/adapter_model.safetensors",
            lambda: load_adapter_weights(transformer, ckpt / EMA_ADAPTER_DIR),
        )
        ema.shadow = [p.detach().float().clone() for p in ema.params]
    _read_part(
        ckpt, f"{ADAPTER_DIR}/adapter_model.safetensors", lambda: load_adapter_weights(transformer, ckpt / ADAPTER_DIR)
    )
    opt_state = _read_part(
        ckpt, "train/optimizer.pt", lambda: torch.load(train / "optimizer.pt", map_location="cpu", weights_only=True)
    )
    _read_part(ckpt, "train/optimizer.pt", lambda: optimizer.load_state_dict(opt_state))
    tensors = _read_part(ckpt, "train/rng.safetensors", lambda: load_file(str(train / "rng.safetensors")))
    try:
        state["rng"] = _rng_for_rank(tensors, state["rng"], rank)
    except CheckpointError as e:
        raise CheckpointReadError(f"cannot resume from {ckpt}: {e}") from None
    _check_rng_meta(state["rng"]["meta"], f"cannot resume from {ckpt}: {state_rel}")
    return state
