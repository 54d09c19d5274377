"""The Hugging Face hub: reached only for weights that are not on this machine, never without saying so, and quick
to fail where there is no network.

Every loader of hub weights (the SANA base, DC-AE-Lite's decoder, the CLIP tagger) asks `hub_load_mode(what, repo)`
first, and passes what it returns as `local_files_only`:

- a local folder (one that exists, or a source written as a path: `is_local_path`), or a repo already in the Hugging
  Face cache: True. Nothing is looked up (a cached repo is not checked for updates: no request leaves the machine
  for a model that is here);
- a repo that is not here: one line (a `DownloadNotice` warning, which the CLI prints as `warning: ...`) says what
  is downloaded from where, and what runs offline instead, before anything is tried. Then the hub is asked once
  whether it answers at all (`offline_unless_reachable`: a TCP connection, 3 s at most); where it does not, the
  process switches to huggingface_hub's own offline mode and the answer is True, so a missing file is an error at
  once instead of after a minute of huggingface_hub's retries; else False (the download follows);
- offline (HF_HUB_OFFLINE set, or inside `downloads_forbidden()`: the demo, whose page never downloads): True, so
  the load fails with the loader's own one-line "missing weights" error instead of trying the network.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger("sanasr")

PROBE_TIMEOUT_S = 3.0
# what runs with nothing downloaded, named in every download notice (models: presets.OFFLINE_MODELS)
OFFLINE_MODELS_HINT = "--model nano, nano-fast or tiny run offline"

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


def offline_mode() -> bool:
    """huggingface_hub's offline mode (HF_HUB_OFFLINE=1, or switched on here): the cache only, no request."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def downloads_allowed() -> bool:
    if _DOWNLOADS_FORBIDDEN:
        return False
    return not offline_mode() and os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes")


def is_local_source(source: str) -> bool:
    try:
        return Path(source).expanduser().exists()
    except (OSError, ValueError):
        return False


def is_local_path(source: str) -> bool:
    """Whether a source (`--base`, `--tagger-model`) names a folder rather than a hub id (`org/name`): it exists,
    or it is written as a path (absolute, `~`, `./`, `../`, or more than one `/`)."""
    text = str(source)
    if is_local_source(text):
        return True
    return text.startswith(("/", "~", "./", "../", ".\\")) or text.count("/") > 1 or "\\" in text


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


@functools.cache
def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the hub (HF_ENDPOINT, or the HTTPS proxy in between) accepts a TCP connection within `timeout`.
    Asked once per process, and only before a request that is needed."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlsplit(proxy or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return True  # nothing to ask: let the request itself say
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def offline_unless_reachable() -> bool:
    """Before the first hub request: where the hub cannot be reached, switch this process to huggingface_hub's
    offline mode (cached files are used, a missing one fails at once). Returns whether the process is offline
    (downloads turned off count as offline: then nothing is asked)."""
    if not downloads_allowed():
        return True
    if hub_reachable():
        return False
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"  # libraries (and processes) that read it later
    constants.HF_HUB_OFFLINE = True  # huggingface_hub reads this at every request (is_offline_mode)
    log.warning("note: the Hugging Face hub cannot be reached: only files already in its cache are used")
    return True


def hub_load_mode(what: str, source: str, instead: str = OFFLINE_MODELS_HINT) -> bool:
    """The `local_files_only` to load `what` from `source` with (see the module doc); says so first when the
    weights are about to be downloaded, naming what runs offline `instead`."""
    if is_local_path(source) or not downloads_allowed():
        return True
    if in_cache(source):
        return True
    from huggingface_hub import constants

    warnings.warn(
        DownloadNotice(
            f"{what}: downloading '{source}' from the Hugging Face hub into {constants.HF_HUB_CACHE} (it is not on "
            f"this machine; set HF_HUB_OFFLINE=1 to refuse downloads; {instead})"
        ),
        stacklevel=2,
    )
    return offline_unless_reachable()
