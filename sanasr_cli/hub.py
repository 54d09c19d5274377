"""Downloads from the Hugging Face hub: said before they are tried, and quick to fail where there is no network.

A component that is not on this machine (the SANA base, a CLIP tagger, a metric's backbone) is announced in one
line before sanasr asks the hub for it (`note_download`). Before the first request the hub is asked once whether
it answers at all (`offline_unless_reachable`: a TCP connection, 3 s at most); where it does not, the process
switches to huggingface_hub's own offline mode (HF_HUB_OFFLINE), so a missing file is an error at once instead of
after a minute of huggingface_hub's retries, and a file already in the Hugging Face cache is read from there.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger("sanasr")

PROBE_TIMEOUT_S = 3.0
# what runs with nothing downloaded, named in every download notice (models: presets.OFFLINE_MODELS)
OFFLINE_MODELS_HINT = "--model nano, nano-fast or tiny run offline"


def is_local_path(source: str) -> bool:
    """Whether a source (`--base`, `--tagger-model`) names a folder rather than a hub id (`org/name`): it exists,
    or it is written as a path (absolute, `~`, `./`, `../`, or more than one `/`)."""
    text = str(source)
    if Path(text).expanduser().exists():
        return True
    return text.startswith(("/", "~", "./", "../", ".\\")) or text.count("/") > 1 or "\\" in text


def offline_mode() -> bool:
    """huggingface_hub's offline mode (HF_HUB_OFFLINE=1, or switched on here): the cache only, no request."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


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
    offline mode (cached files are used, a missing one fails at once). Returns whether the process is offline."""
    if offline_mode():
        return True
    if hub_reachable():
        return False
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"  # libraries (and processes) that read it later
    constants.HF_HUB_OFFLINE = True  # huggingface_hub reads this at every request (is_offline_mode)
    log.warning("note: the Hugging Face hub cannot be reached: only files already in its cache are used")
    return True


def in_hub_cache(repo_id: str, filename: str) -> bool:
    """Whether `filename` of the hub repo `repo_id` is in the Hugging Face cache (no request)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # noqa: BLE001 - an id the hub would refuse: not cached
        return False
    return isinstance(found, str)


def note_download(what: str, source: str, instead: str = OFFLINE_MODELS_HINT) -> None:
    """One line before a download is tried: what needs it, from where, and what runs offline instead."""
    log.warning("note: %s needs a download from the Hugging Face hub (%s); %s", what, source, instead)
