"""The Hugging Face hub: reached only for weights that are not on this machine, and never without saying so.

Every loader of hub weights (the SANA base, DC-AE-Lite's decoder, the CLIP tagger) asks `hub_load_mode(what, repo)`
first, and passes what it returns as `local_files_only`:

- a local folder, or a repo already in the Hugging Face cache: True. Nothing is looked up (a cached repo is not
  checked for updates: no request leaves the machine for a model that is here);
- a repo that is not here: one line (a `DownloadNotice` warning, which the CLI prints as `warning: ...`) says what
  is downloaded from where, before the download starts; False;
- offline (HF_HUB_OFFLINE set, or inside `downloads_forbidden()`: the demo, whose page never downloads): True, so
  the load fails with the loader's own one-line "missing weights" error instead of trying the network.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

_DOWNLOADS_FORBIDDEN = False


class DownloadNotice(UserWarning):
    """Weights are about to be downloaded from the Hugging Face hub (the message says which, and from where)."""


@contextlib.contextmanager
def downloads_forbidden() -> Iterator[None]:
    """Inside, nothing is downloaded in this process (all its threads): every hub load is local only (the demo
    server, for as long as it serves)."""
    global _DOWNLOADS_FORBIDDEN
    before, _DOWNLOADS_FORBIDDEN = _DOWNLOADS_FORBIDDEN, True
    try:
        yield
    finally:
        _DOWNLOADS_FORBIDDEN = before


def downloads_allowed() -> bool:
    if _DOWNLOADS_FORBIDDEN:
        return False
    from huggingface_hub import constants

    return not constants.HF_HUB_OFFLINE and os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes")


def is_local_source(source: str) -> bool:
    try:
        return Path(source).expanduser().exists()
    except (OSError, ValueError):
        return False


def in_cache(repo: str) -> bool:
    """True when the Hugging Face cache holds a snapshot of `repo` (read from the disk only)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot_download(repo, local_files_only=True)
        return True
    except (LocalEntryNotFoundError, OSError, ValueError):
        return False
    except Exception:  # noqa: BLE001 - a malformed id (HFValidationError) is not in any cache
        return False


def available_here(source: str | None) -> bool:
    """True when weights from `source` (a local folder or a hub repo) load without the network."""
    return bool(source) and (is_local_source(source) or in_cache(source))


def hub_load_mode(what: str, source: str) -> bool:
    """The `local_files_only` to load `what` from `source` with (see the module doc); says so first when the
    weights are about to be downloaded."""
    if is_local_source(source) or not downloads_allowed():
        return True
    if in_cache(source):
        return True
    from huggingface_hub import constants

    warnings.warn(
        DownloadNotice(
            f"{what}: downloading '{source}' from the Hugging Face hub into {constants.HF_HUB_CACHE} (it is not on "
            "this machine; set HF_HUB_OFFLINE=1 to refuse downloads)"
        ),
        stacklevel=2,
    )
    return False
