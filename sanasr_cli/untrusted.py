"""Reading a folder someone else wrote (a model folder, an ONNX export): what a file is before it is opened,
JSON capped in size and depth, numbers that must be finite, and paths that must stay inside the folder.

The rules every loader shares (models/folder_check.py for model folders, export/contract.py for ONNX folders),
each failure one line naming the file, raised as the caller's error class (ModelDirError by default).
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

from sanasr_cli.errors import ModelDirError

MAX_CONFIG_BYTES = 1 << 20  # a config.json, sanasr.json or sanasr-onnx.json is a few KB; anything near this is not one


def describe_file_kind(path: Path) -> str | None:
    """What `path` is when it is not a regular file ('a folder', 'a FIFO', 'a device'...), None when it is one.
    Links are followed (a link to /dev/zero is a device)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing" if not os.path.islink(path) else "a broken link"
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def read_json_file(path: Path, where: str, error: type[Exception] = ModelDirError, limit: int = MAX_CONFIG_BYTES):
    """A small JSON file, parsed: a regular file of at most `limit` bytes (checked before reading), valid UTF-8
    JSON, not nested past Python's recursion limit; else `error` naming what it is."""
    from sanasr_cli.safe_files import note_inputs

    kind = describe_file_kind(path)
    if kind is not None:
        raise error(f"{where}: {path.name} is {kind}, not a JSON file")
    size = path.stat().st_size
    if size > limit:
        raise error(f"{where}: {path.name} is {size} bytes, too large for a config (at most {limit})")
    note_inputs(path)
    try:
        with open(path, "rb") as f:
            text = f.read(limit + 1).decode("utf-8")  # at most the limit, even if the file grew since the stat
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{where}: {path.name} is not valid JSON ({e})") from None
    except RecursionError:
        raise error(f"{where}: {path.name} is nested too deeply to be a config") from None
    except OSError as e:
        raise error(f"{where}: {path.name} cannot be read ({e.strerror or e})") from None


def check_finite_number(value, name: str, where: str, low=None, high=None, low_open=True, error=ModelDirError) -> float:
    """`value` as a float: a finite number (not a bool) within (low, high]; else `error` naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{where}: '{name}' must be a number, not {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise error(f"{where}: '{name}' must be a finite number, not {value!r}")
    if low is not None and (number <= low if low_open else number < low):
        raise error(f"{where}: '{name}' must be {'>' if low_open else '>='} {low:g}, not {value!r}")
    if high is not None and number > high:
        raise error(f"{where}: '{name}' must be at most {high:g}, not {value!r}")
    return number


def check_inside(folder: Path, sub: Path, where: str, error: type[Exception] = ModelDirError) -> None:
    """`sub` and every entry in it (files as well as folders, links resolved) lie inside `folder`."""
    root = Path(folder).resolve()
    target = Path(sub).resolve()
    if target != root and root not in target.parents:
        raise error(f"{where}: '{sub.name}' leads outside the model directory (to {target})")
    if target.is_dir():
        for entry in Path(sub).iterdir():
            resolved = entry.resolve()
            if root not in resolved.parents:
                raise error(f"{where}: '{sub.name}/{entry.name}' leads outside the model directory (to {resolved})")


def check_file_inside(folder: Path, name: str, where: str, error: type[Exception] = ModelDirError) -> Path:
    """`folder/name`, where `name` is a plain relative path (no absolute path, no `..`, no backslash) of a regular
    file that resolves inside `folder` (a link out of it is refused); the path, else `error` naming it."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        raise error(f"{where}: {name!r} is not a file name inside the folder")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise error(f"{where}: {name!r} is not a file name inside the folder (an absolute path or '..')")
    path = Path(folder) / rel
    root = Path(folder).resolve()
    target = path.resolve()
    if root not in target.parents:
        raise error(f"{where}: '{name}' leads outside the folder (to {target})")
    kind = describe_file_kind(path)
    if kind is not None:
        raise error(
            f"{where}: '{name}' is missing" if kind == "missing" else f"{where}: '{name}' is {kind}, not a file"
        )
    return path


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
