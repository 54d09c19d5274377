"""A model folder is untrusted input: its configs and weight headers are checked before any weight is used.

The one validation step every load goes through (`load_model`, and so merge-lora, prune, train, eval and the
Python API; `lora.load_adapter_weights` for adapters, EMA adapters and resumed checkpoints):

- each `config.json` of a diffusers folder (transformer/, encoder/, decoder/): every number finite, every count
  a non-negative integer, positive where a zero builds nothing (`num_layers`, heads, widths), `norm_eps > 0`,
  and capped by what the weights themselves hold (read from the safetensors headers, no tensor data): no integer
  above the largest tensor dimension, no more layers than tensors. So `num_layers: 100000` is refused in
  milliseconds, before anything is built;
- the module is then built on the meta device (no memory) and its state-dict keys and shapes compared with the
  header: a missing, extra or mis-shaped key is one line naming it; integer (or bool) tensors are refused;
- after loading, every weight is checked finite (`check_finite`: one `aminmax` pass, NaN propagates).

Every failure is a ModelDirError (the CLI's exit 2) naming the folder and what is wrong.
"""

from __future__ import annotations

import re
from pathlib import Path

from sanasr_cli.errors import ModelDirError
from sanasr_cli.untrusted import (  # noqa: F401 - the rules every untrusted folder shares, used here and by importers
    MAX_CONFIG_BYTES,
    check_finite_number,
    check_inside,
    describe_file_kind,
    read_json_file,
)

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX = WEIGHTS_NAME + ".index.json"
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
MAX_LIST = 256  # entries of one list in a config.json (stages, block types: a handful)
# memory a config may make the module compute for itself beyond its weights (non-persistent buffers such as a
# sin-cos position table from `sample_size`): at most the weights' own size, or this for small models
MIN_BUFFER_ALLOWANCE = 16 << 20
# config fields where 0 builds an empty (or broken) module: at least 1
_POSITIVE = re.compile(r"(^num_layers$|heads$|head_dim$|^in_channels$|^out_channels$|^patch_size$|_dim$|channels)")
_LAYER_FIELD = re.compile(r"layers")


# ---------------------------------------------------------------- safetensors headers


def read_header(path: Path, where: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """{key: (shape, dtype)} of a safetensors file, read without loading any tensor."""
    from safetensors import safe_open

    kind = describe_file_kind(path)
    if kind is not None:
        raise ModelDirError(f"{where}: {path.name} is {kind}, not a safetensors file")
    try:
        with safe_open(str(path), framework="pt") as f:
            out = {}
            for key in f.keys():
                part = f.get_slice(key)
                out[key] = (tuple(int(n) for n in part.get_shape()), str(part.get_dtype()))
            return out
    except Exception as e:  # noqa: BLE001 - SafetensorError of a damaged or truncated header: one line
        raise ModelDirError(f"{where}: {path.name} is not a readable safetensors file ({_first_line(e)})") from None


def _weights_files(folder: Path, where: str) -> list[Path]:
    """The safetensors files diffusers would load from `folder` (one file, or the shards an index names)."""
    single = folder / WEIGHTS_NAME
    if single.exists() or single.is_symlink():
        return [single]
    index = folder / WEIGHTS_INDEX
    if index.exists():
        data = read_json_file(index, where)
        names = sorted(set((data.get("weight_map") or {}).values())) if isinstance(data, dict) else []
        if not names or not all(isinstance(n, str) and n.endswith(".safetensors") and "/" not in n for n in names):
            raise ModelDirError(f"{where}: {WEIGHTS_INDEX} does not name its .safetensors shards")
        return [folder / n for n in names]
    others = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.safetensors"))
    found = f" (it holds {', '.join(others)}; sanasr loads only {WEIGHTS_NAME})" if others else ""
    raise ModelDirError(f"{where}: no {WEIGHTS_NAME}{found}")


def folder_header(folder: Path, where: str) -> dict[str, tuple[tuple[int, ...], str]]:
    header: dict = {}
    for path in _weights_files(folder, where):
        header.update(read_header(path, where))
    return header


def check_dtypes(header: dict, where: str) -> None:
    for key, (_, dtype) in header.items():
        if dtype not in FLOAT_DTYPES:
            raise ModelDirError(f"{where}: weight '{key}' is {dtype}, not a floating-point tensor (refused)")


def compare_with_header(expected: dict[str, tuple[int, ...]], header: dict, where: str) -> None:
    """The module's state dict (key -> shape) against the file's header: one line naming the first mismatch."""
    missing = [k for k in expected if k not in header]
    extra = [k for k in header if k not in expected]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelDirError(f"{where}: the weights lack '{missing[0]}'{more}, which its config needs")
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise ModelDirError(f"{where}: the weights hold '{extra[0]}'{more}, which its config does not build")
    for key, shape in expected.items():
        if tuple(header[key][0]) != tuple(shape):
            raise ModelDirError(
                f"{where}: weight '{key}' has shape {list(header[key][0])}, its config builds {list(shape)}"
            )


# ---------------------------------------------------------------- config.json of a diffusers folder


def check_config(config: dict, header: dict, where: str) -> None:
    """Types, finiteness and caps of a diffusers config against the weights it comes with (see module doc)."""
    if not isinstance(config, dict):
        raise ModelDirError(f"{where}: config.json is a JSON {type(config).__name__}, not an object")
    largest = max((n for shape, _ in header.values() for n in shape), default=0)
    tensors = len(header)

    def walk(value, name: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{name}.{k}" if name else str(k))
        elif isinstance(value, list):
            if len(value) > min(max(tensors, 1), MAX_LIST):
                raise ModelDirError(
                    f"{where}: config.json '{name}' has {len(value)} entries (at most {MAX_LIST}, and no more than "
                    f"its weights' {tensors} tensors)"
                )
            for v in value:
                walk(v, name)
        elif isinstance(value, bool) or value is None or isinstance(value, str):
            return
        elif isinstance(value, int):
            if value < 0 or value > max(largest, 1):
                raise ModelDirError(
                    f"{where}: config.json '{name}' = {value} is out of range (0 to {largest}, the largest "
                    "dimension of any tensor in its weights)"
                )
        elif isinstance(value, float):
            check_finite_number(value, name, f"{where}: config.json", low=0, low_open=False)

    walk(config, "")
    for key, value in config.items():
        if _POSITIVE.search(key) and isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise ModelDirError(f"{where}: config.json '{key}' must be at least 1, not {value}")
        if key.endswith("eps") and isinstance(value, (int, float)) and value <= 0:
            raise ModelDirError(f"{where}: config.json '{key}' must be > 0, not {value!r}")
    layers = sum(_ints(v) for k, v in config.items() if _LAYER_FIELD.search(k))
    if layers > tensors:
        raise ModelDirError(f"{where}: config.json asks for {layers} layers; its weights hold {tensors} tensors")


def _ints(value) -> int:
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, list):
        return sum(_ints(v) for v in value)
    return 0


def check_diffusers_folder(cls, folder: Path, where: str) -> dict:
    """Everything about a diffusers model folder that can be known without loading a weight: config.json (see
    `check_config`), the weights' header (floating dtypes), and the meta-built module's keys and shapes against
    it. Returns the config."""

    config = read_json_file(folder / "config.json", where)
    header = folder_header(folder, where)
    check_config(config, header, where)
    check_dtypes(header, where)
    check_layer_cost(cls, config, header, where)
    module = _meta_build(cls, config, where)
    compare_with_header({k: tuple(v.shape) for k, v in module.state_dict().items()}, header, where)
    check_buffers(module, header, where)
    return config


def _meta_build(cls, config: dict, where: str):
    import torch

    try:
        with torch.device("meta"):
            return cls.from_config(config)
    except Exception as e:  # noqa: BLE001 - a config the class refuses (a wrong type, an impossible layout)
        raise ModelDirError(f"{where}: config.json does not build a {cls.__name__} ({_first_line(e)})") from None


def _numel(shapes) -> int:
    total = 0
    for shape in shapes:
        n = 1
        for d in shape:
            n *= int(d)
        total += n
    return total


def check_layer_cost(cls, config: dict, header: dict, where: str) -> None:
    """Layer counts that promise far more parameters than the weights hold are refused before the module is built
    whole: padding the weights with thousands of empty tensors lifts `check_config`'s cap on the layer count, and
    building 20 000 blocks takes minutes even on the meta device. Two small builds (every layer count above 2 set
    to 1, then to 2) give the parameters one layer adds; the count asked for must not build more than twice what
    the weights hold (it builds exactly that when they match)."""
    slots = []  # (key, index in a list or None, value) of every layer count above 2
    for key, value in config.items():
        if not _LAYER_FIELD.search(key):
            continue
        values = value if isinstance(value, list) else [value]
        for i, v in enumerate(values):
            if isinstance(v, int) and not isinstance(v, bool) and v > 2:
                slots.append((key, i if isinstance(value, list) else None, v))
    if not slots:
        return

    def with_counts(n: int) -> dict:
        small = {k: (list(v) if isinstance(v, list) else v) for k, v in config.items()}
        for key, i, _ in slots:
            if i is None:
                small[key] = n
            else:
                small[key][i] = n
        return small

    one = _numel(t.shape for t in _meta_build(cls, with_counts(1), where).state_dict().values())
    two = _numel(t.shape for t in _meta_build(cls, with_counts(2), where).state_dict().values())
    asked = sum(v for _, _, v in slots)
    predicted = one + (two - one) * (asked - len(slots))
    held = _numel(shape for shape, _ in header.values())
    if predicted > 2 * held + 1024:
        key, _, value = max(slots, key=lambda s: s[2])
        raise ModelDirError(
            f"{where}: config.json '{key}' = {value} builds about {predicted} parameters; its weights hold {held}"
        )


def check_buffers(module, header: dict, where: str) -> None:
    """What the module computes for itself at build time and does not load (non-persistent buffers: a sin-cos
    position table of `sample_size`^2 x width, e.g.) may not be larger than the weights themselves (or
    MIN_BUFFER_ALLOWANCE): `sample_size` 2048 would otherwise allocate gigabytes when the folder is loaded."""
    saved = set(module.state_dict())
    computed = sum(b.numel() * b.element_size() for name, b in module.named_buffers() if name not in saved)
    weights = sum(_numel([shape]) * _DTYPE_BYTES.get(dtype, 4) for shape, dtype in header.values())
    if computed > max(weights, MIN_BUFFER_ALLOWANCE):
        raise ModelDirError(
            f"{where}: config.json builds {computed / 2**20:.0f} MiB of tables its weights do not hold (e.g. a "
            f"position table from 'sample_size' {module.config.get('sample_size', '?')}), more than the "
            f"{weights / 2**20:.1f} MiB of weights themselves"
        )


_DTYPE_BYTES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}


def load_diffusers_folder(cls, folder: Path, where: str, dtype):
    """`check_diffusers_folder`, then `cls.from_pretrained` (safetensors only), then `check_finite`."""
    check_diffusers_folder(cls, folder, where)
    try:
        module = cls.from_pretrained(str(folder), torch_dtype=dtype, use_safetensors=True)
    except Exception as e:  # noqa: BLE001 - a file changed or damaged past its header: one line
        raise ModelDirError(f"{where}: cannot be loaded ({_first_line(e)})") from None
    check_finite(module.state_dict(), where)
    return module


# ---------------------------------------------------------------- adapters (PEFT)


def check_adapter_config(folder: Path, where: str) -> dict:
    """adapter_config.json's numbers (r, lora_alpha, lora_dropout and their per-module patterns) are finite and
    in range, the rank capped by the largest dimension in adapter_model.safetensors: before PEFT builds layers."""
    config = read_json_file(folder / "adapter_config.json", where)
    if not isinstance(config, dict):
        raise ModelDirError(f"{where}: adapter_config.json is not a JSON object")
    header = read_header(folder / "adapter_model.safetensors", where)
    largest = max((n for shape, _ in header.values() for n in shape), default=0)
    ranks = {"r": config.get("r")} | {f"rank_pattern.{k}": v for k, v in (config.get("rank_pattern") or {}).items()}
    for name, r in ranks.items():
        if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= max(largest, 1):
            raise ModelDirError(
                f"{where}: adapter_config.json '{name}' must be a whole number from 1 to {largest} (the largest "
                f"dimension in its weights), not {r!r}"
            )
    alphas = {"lora_alpha": config.get("lora_alpha", 8)}
    alphas |= {f"alpha_pattern.{k}": v for k, v in (config.get("alpha_pattern") or {}).items()}
    for name, alpha in alphas.items():
        check_finite_number(alpha, name, f"{where}: adapter_config.json", low=0)
    check_finite_number(config.get("lora_dropout", 0.0), "lora_dropout", f"{where}: adapter_config.json", -1e-12)
    if float(config.get("lora_dropout", 0.0)) >= 1:
        raise ModelDirError(f"{where}: adapter_config.json 'lora_dropout' must be below 1")
    check_dtypes(header, where)
    return config


def check_adapter_fit(expected: dict[str, tuple[int, ...]], path: Path, where: str) -> None:
    """An adapter file's header against the LoRA layers already on the transformer (same keys, same shapes)."""
    header = read_header(path, where)
    check_dtypes(header, where)
    compare_with_header(expected, header, where)


# ---------------------------------------------------------------- loaded weights


def check_finite(state: dict, where: str) -> None:
    """Every floating tensor of `state` finite (NaN propagates through aminmax, so one pass decides); measured
    at about 17 GB/s on one CPU thread (docs/model-folders.md)."""
    import torch

    for key, tensor in state.items():
        if not torch.is_floating_point(tensor) or tensor.numel() == 0 or tensor.is_meta:
            continue
        low, high = torch.aminmax(tensor.detach().reshape(-1))
        if not (bool(torch.isfinite(low)) and bool(torch.isfinite(high))):
            raise ModelDirError(f"{where}: weight '{key}' holds NaN or infinite values")


def check_finite_files(folder, where: str) -> None:
    """`check_finite` over the weights in folder's `.safetensors` files, one tensor in memory at a time: each file
    is opened per tensor, so its memory map never holds more than that tensor (for a model whose weights are never
    all loaded at once: `streamed_encoder`)."""
    from pathlib import Path

    from safetensors import safe_open

    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
        for key in keys:
            with safe_open(str(path), framework="pt") as f:
                check_finite({key: f.get_tensor(key)}, where)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
