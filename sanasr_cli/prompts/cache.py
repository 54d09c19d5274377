"""On-disk cache of tagger output, keyed by tagger identity + the image file's SHA-256.

Train, prune calibration, upscale and eval of the same image file thus run the tagger once: the key depends on
the file's bytes (not its name or path), and on everything that changes the tagger's output (its `identity`).
Raw tags are stored (before `clean_tags`), so a different tag limit or template reuses the entry.

Layout: `<cache dir>/<key[:2]>/<key>.json`, each written atomically. The folder is `--tag-cache DIR`, else
`$SANASR_TAG_CACHE`, else `$XDG_CACHE_HOME/sanasr/tags` (`~/.cache/sanasr/tags`); `off` disables the disk
cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from sanasr_cli.safe_files import atomic_write

CACHE_ENV_VAR = "SANASR_TAG_CACHE"
_OFF = {"off", "none", "0", "false", "no"}


def default_cache_dir(override: str | Path | None = None) -> Path | None:
    """The tag cache folder (None: disabled), from an explicit value, the environment, or the user
    cache."""
    value = str(override) if override is not None else os.environ.get(CACHE_ENV_VAR)
    if value is not None and value.strip():
        return None if value.strip().lower() in _OFF else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sanasr" / "tags"


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, memoised per (path, size, mtime) so a file seen twice in one process (the
    tagging pass, then the restore loop) is read once."""
    st = os.stat(path)
    memo = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if memo in _SHA_MEMO:
        return _SHA_MEMO[memo]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    _SHA_MEMO[memo] = h.hexdigest()
    return _SHA_MEMO[memo]


class CachedTagger:
    """Wraps a tagger: `tags(image, path)` returns cached raw tags for a file already seen by a tagger of
    the same identity, and runs the tagger (then stores the result) otherwise. Taggers without an identity
    (none, file) and images without a file pass straight through. `runs` counts the calls that reached the
    wrapped tagger."""

    def __init__(self, tagger, cache_dir: Path | None):
        self.tagger = tagger
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._memory: dict[str, list[str]] = {}
        self.runs = 0
        self.hits = 0

    @property
    def name(self) -> str:
        return self.tagger.name

    @property
    def identity(self) -> str | None:
        return self.tagger.identity

    def key(self, path: str | Path) -> str | None:
        if self.identity is None:
            return None
        try:
            digest = file_sha256(path)
        except OSError:  # unreadable: not cacheable (the command reports the file when it reads it)
            return None
        return hashlib.sha256(f"{self.identity}\n{digest}".encode()).hexdigest()

    def _entry(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def lookup(self, path: str | Path) -> list[str] | None:
        key = self.key(path)
        if key is None:
            return None
        if key in self._memory:
            return list(self._memory[key])
        if self.cache_dir is None:
            return None
        try:
            data = json.loads(self._entry(key).read_text(encoding="utf-8"))
            tags = data["tags"]
            if not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
                return None
        except (OSError, ValueError, KeyError, TypeError):  # absent or damaged entry: a miss
            return None
        self._memory[key] = tags
        return list(tags)

    def store(self, path: str | Path, tags: list[str]) -> None:
        key = self.key(path)
        if key is None:
            return
        self._memory[key] = list(tags)
        if self.cache_dir is None:
            return
        entry = self._entry(key)
        try:
            atomic_write(entry, json.dumps({"tagger": self.identity, "file": Path(path).name, "tags": list(tags)}))
        except OSError:  # a read-only or full cache folder must not fail the command: tags are still returned
            pass

    def tags(self, image: torch.Tensor | None, path: Path | None) -> list[str]:
        cacheable = path is not None and self.key(path) is not None
        if cacheable:
            found = self.lookup(path)
            if found is not None:
                self.hits += 1
                return found
        self.runs += 1
        tags = list(self.tagger.tags(image, path))
        if cacheable:
            self.store(path, tags)
        return tags

    def release(self) -> None:
        self.tagger.release()
