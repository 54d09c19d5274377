"""The rules that keep a user's files safe, in one place (every command uses these helpers, never copies).

- `check_name_part`: a piece of a file name built from user input (`--suffix`) holds no path separator or `..`.
- `check_confined`: an output path, once resolved (links included), lies under its output folder.
- `check_output_file`: a report path (`--json`, `--csv`, `--report`, `--plot`) can be written: checked before
  any work starts, not after it.
- `atomic_write`: a regular file (or a new one) is replaced atomically (temp file + fsync + rename); a
  symlink is written through (its target is replaced, the link stays); a special file (`/dev/stdout`, a FIFO,
  `/dev/full`) is written in place, never replaced by a regular file; a folder is refused. New files get the
  usual permissions (0666 less the umask, e.g. 0644), not the 0600 of a temp file. Every file sanasr writes goes
  through it (images, reports, model directories, checkpoints, logs, caches, indexes).
- `make_temp_dir`: a staging folder that is renamed into place when complete, with the usual permissions (0777
  less the umask), not the 0700 of `tempfile.mkdtemp`; `usual_file_modes` for what a library wrote into one.
- `check_replaceable_dir`: what `--overwrite` may delete: only a model directory sanasr wrote (its `sanasr.json`
  and the entries sanasr puts there, nothing else), never an input nor a folder holding an input.
- `OutputLedger`: the record of the files `upscale` wrote into an output folder, so a rerun replaces only
  those (anything else there is the user's and is never replaced without `--overwrite`).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from sanasr_cli.errors import UnsafeOutputError

LEDGER_FILE = ".sanasr-outputs.jsonl"


# ---------------------------------------------------------------- names and places


def check_name_part(value: str, flag: str) -> str:
    """`value` (e.g. --suffix) as a safe part of a file name: no separator, no `..`, no NUL."""
    if any(c in value for c in ("/", "\\", "\x00")) or ".." in value:
        raise UnsafeOutputError(
            f"{flag} {value!r} may not contain '/', '\\' or '..' (it is part of a file name, not a path)"
        )
    return value


def check_confined(path: Path, root: Path, what: str = "output") -> Path:
    """`path` resolved (symlinks followed); UnsafeOutputError unless it lies under `root` (resolved)."""
    resolved, base = Path(path).resolve(), Path(root).resolve()
    if resolved != base and base not in resolved.parents:
        raise UnsafeOutputError(f"{what} {path} resolves to {resolved}, outside the output folder {root}")
    return resolved


def check_output_file(path: str | Path | None, flag: str) -> None:
    """Fail now (UnsafeOutputError, one line) when a report file cannot be written at `path`: it is a folder,
    a parent is a file, or the nearest existing folder is not writable. '-' (stdout) and None pass."""
    if path is None or str(path) == "-":
        return
    p = Path(path)
    if p.is_dir():
        raise UnsafeOutputError(f"{flag} {p} is a folder, not a file")
    if p.exists() and not os.access(p, os.W_OK):
        raise UnsafeOutputError(f"{flag} {p} is not writable")
    target = p.resolve() if p.is_symlink() else p.absolute()
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UnsafeOutputError(f"{flag} {p}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UnsafeOutputError(f"{flag} {p}: folder {parent} is not writable")
            if not (p.exists() and not p.is_file()):  # a device or FIFO is written in place, not through a temp
                _try_writing_in(parent, f"{flag} {p}")
            return


def _try_writing_in(folder: Path, where: str) -> None:
    """Create and remove a temp file in `folder`, as atomic_write will: permission bits do not tell everything
    (root, read-only or pseudo file systems such as /sys), so the write is tried before the work starts."""
    try:
        fd, name = tempfile.mkstemp(prefix=".sanasr-check-", dir=folder)
    except OSError as e:
        raise UnsafeOutputError(f"{where}: cannot write in {folder} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(name)


# ---------------------------------------------------------------- writing


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(
    path: str | Path,
    data: bytes | str,
    temp_mark: str = "",
    before_replace: Callable[[os.stat_result], None] | None = None,
    fsync: bool = True,
) -> None:
    """Write `data` (bytes, or text as UTF-8) to `path` without ever turning what is there into something else
    (see the module doc): a temp file in the target's folder, flushed to the disk, given the usual mode (0666
    less the umask), renamed over the target.

    temp_mark: put in the temp file's name (so a later run can tell its own leftovers). before_replace: called
    with the finished temp file's stat just before the rename (the rename keeps size, mtime and inode).
    fsync: False skips the flush to the disk (never needed for correctness of the rename, only durability).
    Raises OSError (callers turn it into their one-line error).
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()  # write through the link: the user's link stays a link
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        raise IsADirectoryError(21, "is a folder", str(path))
    if mode is not None and not stat.S_ISREG(mode):  # a device or FIFO: in place, never replaced
        with open(path, "wb") as f:
            f.write(data)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{temp_mark}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
        if before_replace is not None:
            before_replace(os.stat(tmp))
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.filename is None:  # a failed write() names no file: name the one being written
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_temp_dir(parent: str | Path, prefix: str) -> Path:
    """A new hidden staging folder in `parent` with the permissions `mkdir` would give it (0777 less the umask;
    `tempfile.mkdtemp` makes 0700 folders, which would stay so once renamed into place)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(folder, 0o777 & ~_umask())
    return folder


def replace_dir(tmp: Path, out: Path) -> None:
    """Move a finished temp folder to `out`; an existing `out` is set aside first and removed only once the new one
    is in place (a failed rename leaves the old one where it was)."""
    import shutil
    import tempfile

    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def usual_file_modes(folder: str | Path) -> None:
    """Give the files a library just wrote into a new staging `folder` the usual permissions (0666 less the
    umask): for writers that cannot go through atomic_write (e.g. diffusers' save_pretrained, whose
    safetensors files are 0600). Links are not followed."""
    mode = 0o666 & ~_umask()
    for p in Path(folder).rglob("*"):
        if p.is_file() and not p.is_symlink():
            os.chmod(p, mode)


# ---------------------------------------------------------------- replacing folders (--overwrite)

# What sanasr itself puts in a model directory (see models/description.py): anything else in a folder means
# it is not (only) ours, and --overwrite must not delete it.
MODEL_DIR_ENTRIES = {"sanasr.json", "transformer", "adapter", "adapter_ema", "prune_report.json", "encoder", "decoder"}


def check_replaceable_dir(out: str | Path, inputs: Iterable[str | Path] = ()) -> None:
    """UnsafeOutputError unless deleting `out` (for --overwrite) can only lose what sanasr wrote there."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UnsafeOutputError(f"{out} exists and is not a folder (a file or link): it is never replaced")
    if not out.exists():
        return
    real = out.resolve()
    for inp in inputs:
        i = Path(inp).resolve()
        if i == real or real in i.parents:
            raise UnsafeOutputError(f"{out} is (or holds) the input {inp}: it is never replaced")
    if not (out / "sanasr.json").is_file():
        raise UnsafeOutputError(
            f"{out} exists and is not a model directory written by sanasr (no sanasr.json): not replaced"
        )
    other = sorted(p.name for p in out.iterdir() if p.name not in MODEL_DIR_ENTRIES)
    if other:
        shown = ", ".join(other[:5]) + (" ..." if len(other) > 5 else "")
        raise UnsafeOutputError(f"{out} holds files sanasr did not write there ({shown}): not replaced")


# ---------------------------------------------------------------- the record of written outputs


class OutputLedger:
    """OUTDIR/.sanasr-outputs.jsonl: one line per file sanasr wrote there ({"path", "size", "mtime_ns",
    "ino"}), appended (O_APPEND, one short line: safe across the processes of one run).

    A file is "ours" when its latest record matches its current size, mtime and inode: a file the user put or
    changed at that path since then is not.
    """

    def __init__(self, outdir: str | Path):
        self.outdir = Path(outdir)
        self.path = self.outdir / LEDGER_FILE
        self._records: dict[str, tuple[int, int, int]] | None = None

    def _key(self, file: Path) -> str:
        return Path(os.path.relpath(Path(file).absolute(), self.outdir.absolute())).as_posix()

    def _load(self) -> dict[str, tuple[int, int, int]]:
        if self._records is None:
            self._records = {}
            with contextlib.suppress(OSError):
                for line in self.path.read_text(encoding="utf-8").splitlines():
                    try:
                        r = json.loads(line)
                        self._records[str(r["path"])] = (int(r["size"]), int(r["mtime_ns"]), int(r["ino"]))
                    except (ValueError, KeyError, TypeError):
                        continue  # a torn or foreign line: it vouches for nothing
        return self._records

    def owns(self, file: str | Path) -> bool:
        try:
            st = os.stat(file, follow_symlinks=False)
        except OSError:
            return False
        return self._load().get(self._key(Path(file))) == (st.st_size, st.st_mtime_ns, st.st_ino)

    def recorder(self, file: str | Path) -> Callable[[os.stat_result], None]:
        """A `before_replace` hook for atomic_write that records `file` as written by sanasr."""

        def record(st: os.stat_result) -> None:
            key = self._key(Path(file))
            line = json.dumps({"path": key, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino})
            self.outdir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
            try:
                os.write(fd, (line + "\n").encode("utf-8"))
            finally:
                os.close(fd)
            self._load()[key] = (st.st_size, st.st_mtime_ns, st.st_ino)

        return record
