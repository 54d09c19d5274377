"""On-disk cache of prompt encodings: the (c, m) of a prompt, keyed by the text encoder's identity and the prompt.

A run whose prompts are all in it never builds its text encoder (SANA's Gemma-2 2B: about 10.5 GB in fp32, 5.2 GB in
bf16), so a second `upscale` of a real-size model with the default prompt needs only the transformer and the VAE
in memory. The key holds everything that changes an encoding: the encoder's identity (`encoder_identity`: where its
weights come from and what those files are, or the preset, seed and library versions of a random one), its dtype,
the layout (`reuse_prefix`), the instruction prefix, the length, and the prompt itself. Only the embeddings are
stored: the mask is the tokenizer's (degradation words masked), computed again at each use.

Layout: `<folder>/<key[:2]>/<key>.safetensors` (the tensor `embeds` (T, D); metadata: the key's text),
each written atomically. The folder is `$SANASR_PROMPT_CACHE`, else `$XDG_CACHE_HOME/sanasr/prompts`
(`~/.cache/sanasr/prompts`); `off` disables it. An entry is read as untrusted: a safetensors file (no pickle) whose
metadata names this very key, holding one tensor of the expected shape and dtype with finite values; anything
else is a miss (and computed again).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

CACHE_ENV_VAR = "SANASR_PROMPT_CACHE"
_OFF = {"off", "none", "0", "false", "no"}
ENCODING_VERSION = "1"  # bumped when PromptEncoder's layout changes: older entries are then never found


def default_cache_dir(override: str | Path | None = None) -> Path | None:
    """The cache folder (None: disabled), from an explicit value, $SANASR_PROMPT_CACHE, or the user cache."""
    value = str(override) if override is not None else os.environ.get(CACHE_ENV_VAR)
    if value is not None and value.strip():
        return None if value.strip().lower() in _OFF else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sanasr" / "prompts"


def files_fingerprint(folder: str | Path) -> str:
    """What identifies the files of a weights folder without reading them: each regular file's name, size, modification
    time and resolved path (in the Hugging Face cache the resolved path is a blob named by its content hash). A file
    rewritten in place changes its size or time, so an encoding made from other weights is never served."""
    folder = Path(folder)
    parts = []
    if folder.is_dir():
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                st = path.stat()
                parts.append(f"{path.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}:{path.resolve()}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class EmbeddingCache:
    """The cache folder of one text encoder (`identity`); `get` / `put` one prompt's encoding."""

    def __init__(self, folder: Path, identity: str):
        self.folder, self.identity = Path(folder), identity
        self.hits = self.writes = 0

    def key_text(self, prompt: str, settings: str) -> str:
        return f"sanasr prompt encoding v{ENCODING_VERSION}\n{self.identity}\n{settings}\n{prompt}"

    def _path(self, key_text: str) -> Path:
        key = hashlib.sha256(key_text.encode()).hexdigest()
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, prompt: str, settings: str, shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor | None:
        """The embeddings (T, D) in `dtype` when a valid entry is there, else None."""
        from safetensors import safe_open

        text = self.key_text(prompt, settings)
        path = self._path(text)
        try:  # at most the tensor, the key and a header's worth: anything larger is not an entry
            if not path.is_file() or path.stat().st_size > (1 << 20) + len(text) + 8 * shape[0] * shape[1]:
                return None
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("key") != text or set(f.keys()) != {"embeds"}:
                    return None
                embeds = f.get_tensor("embeds")
        except Exception:  # noqa: BLE001 - a damaged or foreign file: a miss, computed again
            return None
        if embeds.shape != shape or embeds.dtype != dtype or not bool(torch.isfinite(embeds.float()).all()):
            return None
        self.hits += 1
        return embeds

    def put(self, prompt: str, settings: str, embeds: torch.Tensor) -> None:
        """Store one encoding; a read-only or full cache folder is not the command's failure (nothing is stored)."""
        from safetensors.torch import save

        from sanasr_cli.errors import SanaSRError
        from sanasr_cli.safe_files import atomic_write

        text = self.key_text(prompt, settings)
        tensors = {"embeds": embeds.detach().cpu().clone()}
        try:
            atomic_write(self._path(text), save(tensors, metadata={"key": text}), fsync=False)
            self.writes += 1
        except (OSError, SanaSRError):
            pass
