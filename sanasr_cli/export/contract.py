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

import json
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
    """True when `path` is a folder written by `sanasr export` (it holds sanasr-onnx.json)."""
    try:
        return (Path(path).expanduser() / CONTRACT_NAME).is_file()
    except (OSError, ValueError):
        return False


def load_contract(folder: str | Path) -> dict:
    """The contract of an ONNX folder; ModelDirError (one line) when it is unreadable or incomplete."""
    folder = Path(folder).expanduser()
    try:
        contract = json.loads((folder / CONTRACT_NAME).read_text())
    except (OSError, ValueError) as e:
        raise ModelDirError(f"{folder}: {CONTRACT_NAME} cannot be read ({e})") from None
    if not isinstance(contract, dict) or contract.get("format") != CONTRACT_FORMAT:
        raise ModelDirError(f"{folder}: {CONTRACT_NAME} is not a sanasr ONNX contract")
    if int(contract.get("version", 0)) > CONTRACT_VERSION:
        raise ModelDirError(
            f"{folder}: {CONTRACT_NAME} version {contract.get('version')} is newer than this sanasr reads "
            f"({CONTRACT_VERSION}); upgrade sanasr"
        )
    for name in [*contract.get("stages", {}).values(), PROMPT_FILE]:
        if not (folder / name).is_file():
            raise ModelDirError(f"{folder}: {name} is missing (export the model again)")
    return contract


def require_onnxruntime():
    """The onnxruntime module, or OnnxRuntimeMissingError with how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise OnnxRuntimeMissingError(ORT_MISSING) from None
    return onnxruntime
