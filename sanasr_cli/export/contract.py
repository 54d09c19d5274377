"""The contract of an exported ONNX folder (`sanasr-onnx.json`): what the graphs take and give, and how it was made.

An ONNX folder holds:
  model.onnx           the deployable graph: LQ RGB (N, 3, h, w) in [0, 1] -> SR RGB (N, 3, 4h, 4w) in [0, 1]
  encoder.onnx, restorer.onnx, decoder.onnx
                       the same three stages one by one: sanasr's own host path runs them (tiling, padding and
                       the colour fix around them, as for the PyTorch model); model.onnx is their composition
  prompt.npz           the baked prompt's embeddings and mask (what restorer.onnx is fed)
  sanasr-onnx.json     this contract;  README.md  the model card
"""

from __future__ import annotations

from pathlib import Path

from sanasr_cli.errors import ModelDirError, SanaSRError

CONTRACT_NAME = "sanasr-onnx.json"
CONTRACT_FORMAT = "sanasr-onnx"
CONTRACT_VERSION = 1
MODEL_NAME = "model.onnx"
STAGE_FILES = {"encoder": "encoder.onnx", "restorer": "restorer.onnx", "decoder": "decoder.onnx"}
PROMPT_FILE = "prompt.npz"
ORT_MISSING = "onnxruntime is not installed; install the ONNX extra: pip install 'sanasr[onnx]'"


class OnnxRuntimeMissingError(SanaSRError):
    """onnxruntime (or onnx / onnxscript for exporting) is not installed."""


class OnnxInputError(SanaSRError):
    """An input the exported graph cannot take (its size is not a multiple of the contract's `multiple_of`)."""


def is_onnx_dir(path: str | Path) -> bool:
    """True when `path` is a folder that holds a sanasr-onnx.json (of any kind: a link or a FIFO there is then
    refused by `load_contract` with its name, not taken for something else)."""
    import os

    try:
        return os.path.isdir(Path(path).expanduser()) and os.path.lexists(Path(path).expanduser() / CONTRACT_NAME)
    except (OSError, ValueError):
        return False


MAX_PROMPT_TOKENS = 4096  # SANA's Gemma-2 prompt: 300 tokens
MAX_PROMPT_WIDTH = 16384  # its width: 2304
MAX_PROMPT_VALUES = 1 << 24  # tokens x width: at most 64 MiB of float32 in prompt.npz
MAX_FACTOR = 64  # the VAE's spatial factor (SANA's DC-AE: 32; tiny: 8): an image is padded to a multiple of it
MAX_PATCH = 16  # the transformer's patch (SANA: 1; nano: 2)
TAU_G_MAX = 1000.0  # as in sanasr.json (models/description.py)
MAX_TEXT = 100_000  # characters of the baked prompt or the source's name
NPZ_MEMBERS = {"embeds": "float32", "mask": "int64"}


def read_contract_file(folder: str | Path) -> dict:
    """sanasr-onnx.json parsed, as an untrusted file: a regular file inside the folder (not a link out of it), at
    most 1 MiB, valid JSON not nested too deeply, an object; ModelDirError (one line) otherwise."""
    from sanasr_cli.untrusted import check_file_inside, read_json_file

    folder = Path(folder).expanduser()
    path = check_file_inside(folder, CONTRACT_NAME, str(folder))
    contract = read_json_file(path, str(folder))
    if not isinstance(contract, dict) or contract.get("format") != CONTRACT_FORMAT:
        raise ModelDirError(f"{folder}: {CONTRACT_NAME} is not a sanasr ONNX contract")
    return contract


def load_contract(folder: str | Path) -> dict:
    """The contract of an ONNX folder, checked as untrusted input before anything it names is opened
    (docs/model-folders.md, "ONNX folders"): every entry of the folder resolves inside it; the contract is a
    capped JSON file whose every field has its type and range (`check_contract`); the stage files are plain
    names of regular files in the folder; prompt.npz holds exactly the two arrays the contract's sizes say, read
    from their headers (`check_prompt_file`). ModelDirError (one line naming the file and field) otherwise."""
    from sanasr_cli.untrusted import check_file_inside

    folder = Path(folder).expanduser()
    where = str(folder)
    check_entries_inside(folder, where)
    contract = read_contract_file(folder)
    check_contract(contract, where)
    for name in contract["stages"].values():
        check_file_inside(folder, name, where)
    check_prompt_file(check_file_inside(folder, PROMPT_FILE, where), contract, where)
    return contract


def check_entries_inside(folder: Path, where: str) -> None:
    """Every file and folder under `folder` resolves inside it (a link out of it is refused, whatever its name:
    ONNX Runtime itself opens files a graph names, such as external data)."""
    import os

    root = folder.resolve()
    if not root.is_dir():
        raise ModelDirError(f"{where}: not a folder")
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in [*dirnames, *filenames]:
            entry = Path(dirpath) / name
            target = entry.resolve()
            if root not in target.parents:
                rel = entry.relative_to(folder)
                raise ModelDirError(f"{where}: '{rel}' leads outside the ONNX folder (to {target})")


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _field(c: dict, key: str, types: tuple, where: str, what: str):
    value = c.get(key)
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        raise ModelDirError(f"{where}: {CONTRACT_NAME} '{key}' must be {what}, not {_shown(value)}")
    return value


def _whole(c: dict, key: str, low: int, high: int, where: str) -> int:
    value = _field(c, key, (int,), where, f"a whole number from {low} to {high}")
    if not low <= value <= high:
        raise ModelDirError(
            f"{where}: {CONTRACT_NAME} '{key}' must be a whole number from {low} to {high}, not {value}"
        )
    return value


def check_contract(c: dict, where: str) -> None:
    """Every field the backend reads, of its type and in range, and consistent with the others (so a lying contract
    is one line here, not a huge allocation, a division by zero or a raw KeyError later)."""
    import math

    from sanasr_cli.untrusted import check_finite_number

    version = _field(c, "version", (int,), where, "a whole number")
    if version > CONTRACT_VERSION:
        raise ModelDirError(
            f"{where}: {CONTRACT_NAME} version {version} is newer than this sanasr reads ({CONTRACT_VERSION}); "
            "upgrade sanasr"
        )
    if version < 1:
        raise ModelDirError(f"{where}: {CONTRACT_NAME} 'version' must be at least 1, not {version}")
    stages = _field(c, "stages", (dict,), where, "an object naming the stage files")
    if set(stages) != set(STAGE_FILES):
        raise ModelDirError(
            f"{where}: {CONTRACT_NAME} 'stages' must name exactly {', '.join(STAGE_FILES)}, "
            f"not {_shown(sorted(stages))}"
        )
    for stage, name in stages.items():
        if not isinstance(name, str) or not name.endswith(".onnx") or "/" in name or "\\" in name or name == ".onnx":
            raise ModelDirError(
                f"{where}: {CONTRACT_NAME} 'stages.{stage}' must be the name of a .onnx file in the folder, not "
                f"{_shown(name)}"
            )
    if _field(c, "scale", (int,), where, "4") != 4:
        raise ModelDirError(f"{where}: {CONTRACT_NAME} 'scale' must be 4 (SANA-SR is an x4 model), not {c['scale']}")
    factor = _whole(c, "factor", 1, MAX_FACTOR, where)
    if factor & (factor - 1):
        raise ModelDirError(f"{where}: {CONTRACT_NAME} 'factor' must be a power of two, not {factor}")
    if _whole(c, "lq_factor", 1, MAX_FACTOR, where) != max(1, factor // 4):
        raise ModelDirError(
            f"{where}: {CONTRACT_NAME} 'lq_factor' must be factor / 4 = {max(1, factor // 4)}, not {c['lq_factor']}"
        )
    patch = _whole(c, "patch_size", 1, MAX_PATCH, where)
    check_finite_number(c.get("tau_g"), "tau_g", f"{where}: {CONTRACT_NAME}", low=0, high=TAU_G_MAX)
    if c.get("encoder_reads") not in ("lq", "x4"):
        raise ModelDirError(
            f"{where}: {CONTRACT_NAME} 'encoder_reads' must be 'lq' or 'x4', not {_shown(c.get('encoder_reads'))}"
        )
    inp = _field(c, "input", (dict,), where, "an object")
    grid = factor * patch
    expected = grid // math.gcd(4, grid)
    if isinstance(inp.get("multiple_of"), bool) or inp.get("multiple_of") != expected:
        raise ModelDirError(
            f"{where}: {CONTRACT_NAME} 'input.multiple_of' must be {expected} (from factor {factor} and patch "
            f"{patch}), not {_shown(inp.get('multiple_of'))}"
        )
    prompt = _field(c, "prompt", (dict,), where, "an object")
    text = _field(prompt, "text", (str,), where, "a string")
    if len(text) > MAX_TEXT:
        raise ModelDirError(f"{where}: {CONTRACT_NAME} 'prompt.text' is {len(text)} characters (at most {MAX_TEXT})")
    for key in ("input", "complex_human_instruction", "mask_degradation_words"):
        _field(prompt, key, (bool,), where, "true or false")
    tokens = _whole(prompt, "tokens", 1, MAX_PROMPT_TOKENS, where)
    width = _whole(prompt, "width", 1, MAX_PROMPT_WIDTH, where)
    if tokens * width > MAX_PROMPT_VALUES:
        raise ModelDirError(f"{where}: {CONTRACT_NAME} prompt of {tokens} x {width} values is too large")
    source = _field(c, "source_model", (str,), where, "a string")
    if not source or len(source) > 4096 or "\x00" in source:
        raise ModelDirError(f"{where}: {CONTRACT_NAME} 'source_model' must be a preset, hub id or folder name")
    options = c.get("source_options", {})
    if not isinstance(options, dict):
        raise ModelDirError(f"{where}: {CONTRACT_NAME} 'source_options' must be an object, not {_shown(options)}")
    for key, types in (("random_weights", (bool,)), ("seed", (int, type(None))), ("base", (str, type(None)))):
        if key in options and (not isinstance(options[key], types) or key == "seed" and isinstance(options[key], bool)):
            raise ModelDirError(
                f"{where}: {CONTRACT_NAME} 'source_options.{key}' has the wrong type ({_shown(options[key])})"
            )
    if isinstance(options.get("seed"), int) and not 0 <= options["seed"] < 2**63:
        raise ModelDirError(f"{where}: {CONTRACT_NAME} 'source_options.seed' must be from 0 to 2^63 - 1")
    quantization = _field(c, "quantization", (dict,), where, "an object")
    if quantization.get("mode") not in ("none", "int8"):
        raise ModelDirError(f"{where}: {CONTRACT_NAME} 'quantization.mode' must be none or int8")
    _field(c, "source_weights_sha256", (str,), where, "a string")


def check_prompt_file(path: Path, contract: dict, where: str) -> None:
    """prompt.npz, from the headers of its two arrays (no data read): exactly `embeds` (1, tokens, width) float32
    and `mask` (1, tokens) int64 as the contract says; a pickle, an object array, another shape or dtype, or a
    zip member larger than its array is refused before numpy allocates anything."""
    import zipfile

    import numpy as np

    from sanasr_cli.safe_files import note_inputs

    tokens, width = contract["prompt"]["tokens"], contract["prompt"]["width"]
    shapes = {"embeds": (1, tokens, width), "mask": (1, tokens)}
    note_inputs(path)
    try:
        with zipfile.ZipFile(path) as z:
            infos = {i.filename: i for i in z.infolist()}
            if set(infos) != {f"{k}.npy" for k in NPZ_MEMBERS}:
                raise ModelDirError(
                    f"{where}: {PROMPT_FILE} must hold exactly embeds.npy and mask.npy, not {_shown(sorted(infos))}"
                )
            for key, dtype in NPZ_MEMBERS.items():
                info = infos[f"{key}.npy"]
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = {
                        (1, 0): np.lib.format.read_array_header_1_0,
                        (2, 0): np.lib.format.read_array_header_2_0,
                    }.get(version)
                    if read_header is None:
                        raise ValueError(f"npy format version {version} (numpy.save writes 1.0 or 2.0)")
                    shape, fortran, got = read_header(f)  # the header only, no data
                    header = f.tell()
                if got.hasobject or str(got) != dtype or tuple(shape) != shapes[key] or fortran:
                    raise ModelDirError(
                        f"{where}: {PROMPT_FILE} '{key}' is {got} {list(shape)}, the contract says {dtype} "
                        f"{list(shapes[key])}"
                    )
                expected = header + int(np.prod(shape)) * np.dtype(dtype).itemsize
                if info.file_size != expected:
                    raise ModelDirError(f"{where}: {PROMPT_FILE} '{key}' holds {info.file_size} bytes, not {expected}")
    except ModelDirError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, TypeError, NotImplementedError) as e:
        raise ModelDirError(f"{where}: {PROMPT_FILE} is not the prompt arrays sanasr writes ({_first(e)})") from None


def _first(e: BaseException) -> str:
    from sanasr_cli.untrusted import first_line

    return first_line(e)


def require_onnxruntime():
    """The onnxruntime module, or OnnxRuntimeMissingError with how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise OnnxRuntimeMissingError(ORT_MISSING) from None
    return onnxruntime
