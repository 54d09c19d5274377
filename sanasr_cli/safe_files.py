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
  those (anything else there is the user's and is never replaced without `--overwrite`). `atomic_write`'s
  `may_replace` asks it again at the moment of writing, so a file that appears during a run is not replaced.
- `run_inputs` / `note_inputs`: the inputs of a run (every image listed or read, every model file read), by
  resolved path and inode; `atomic_write` and `check_output_file` refuse to write onto any of them, whatever
  the flag (`--report img.png`, `--json HR/a.png`): a file a run reads is never a file it writes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from sanasr_cli.errors import UnsafeOutputError

LEDGER_FILE = ".sanasr-outputs.jsonl"


# ---------------------------------------------------------------- the inputs of a run


class RunInputs:
    """The files a run reads: resolved paths and (device, inode) pairs, so that a link or a hard link to an input
    is recognised too. Filled as the run lists and reads its inputs (`note_inputs`), consulted at every write."""

    def __init__(self) -> None:
        self._paths: set[str] = set()
        self._inodes: set[tuple[int, int]] = set()
        self._lock = threading.Lock()

    def add(self, path: str | Path) -> None:
        try:
            real = os.path.realpath(path)
            st = os.stat(real)
        except (OSError, ValueError):
            return  # nothing there to protect (an input that vanished is not read either)
        if not stat.S_ISREG(st.st_mode):
            return  # a folder, a device (/dev/stdin): never a file a write could replace
        with self._lock:
            self._paths.add(real)
            self._inodes.add((st.st_dev, st.st_ino))

    def holds(self, path: str | Path) -> bool:
        """True when `path` (links followed) is one of the inputs."""
        try:
            real = os.path.realpath(path)
        except (OSError, ValueError):
            return False
        with self._lock:
            if real in self._paths:
                return True
            try:
                st = os.stat(real)
            except OSError:
                return False
            return (st.st_dev, st.st_ino) in self._inodes

    def __len__(self) -> int:
        return len(self._paths)


_RUN_INPUTS: RunInputs | None = None  # the run in progress (every command opens one: cli.common.one_line_errors)


@contextlib.contextmanager
def run_inputs() -> Iterator[RunInputs]:
    """The scope of one run: inputs noted inside it are never written over until it ends. Process-wide (the
    threads of a run share it); outside any run (the Python API) nothing is recorded."""
    global _RUN_INPUTS
    outer, _RUN_INPUTS = _RUN_INPUTS, RunInputs()
    try:
        yield _RUN_INPUTS
    finally:
        _RUN_INPUTS = outer


def note_inputs(*paths: str | Path) -> None:
    """Record files the run reads (an image, a model file); nothing happens outside a run."""
    inputs = _RUN_INPUTS
    if inputs is not None:
        for p in paths:
            inputs.add(p)


def check_not_input(path: str | Path, what: str = "output") -> None:
    """UnsafeOutputError when `path` (links followed) is a file the run in progress reads."""
    inputs = _RUN_INPUTS
    if inputs is not None and inputs.holds(path):
        raise UnsafeOutputError(
            f"{what} {path} is an input of this run (a file it reads): it is never overwritten; choose another path"
        )


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
    check_not_input(p, flag)
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


def check_can_create(path: str | Path, what: str) -> None:
    """Fail now (UnsafeOutputError, one line) when a file or folder could not be made at `path`: the nearest
    existing folder above it is a file or a device (`-o notes.txt/sub`, `-o /dev/full/x`) or cannot be written
    in. For outputs made after minutes of work (a model folder, an export): checked before the work."""
    target = Path(path).absolute()
    for parent in target.parents:
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise UnsafeOutputError(f"{what} {path}: {parent} is not a folder")
            _try_writing_in(parent, f"{what} {path}")
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


NAME_MAX = 255  # bytes in one file name (Linux, macOS, Windows)
_TEMP_RANDOM = 8  # the random part mkstemp adds


def temp_prefix(name: str, temp_mark: str = "") -> str:
    """The prefix of a temp file written beside `name`: `.<name><temp_mark>.`, the name cut (at a character
    boundary) so that the temp file's name fits in NAME_MAX bytes even when `name` itself is near it."""
    room = NAME_MAX - _TEMP_RANDOM - len(f".{temp_mark}.".encode())
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) > room:
        name = encoded[:room].decode("utf-8", "ignore")
    return f".{name}{temp_mark}."


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
    may_replace: Callable[[Path], bool] | None = None,
) -> None:
    """Write `data` (bytes, or text as UTF-8) to `path` without ever turning what is there into something else
    (see the module doc): a temp file in the target's folder, flushed to the disk, given the usual mode (0666
    less the umask), renamed over the target.

    temp_mark: put in the temp file's name (so a later run can tell its own leftovers). before_replace: called
    with the finished temp file's stat just before the rename (the rename keeps size, mtime and inode).
    fsync: False skips the flush to the disk (never needed for correctness of the rename, only durability).
    may_replace: asked at the moment of writing whether a file already at `path` may be replaced (e.g. the
    output ledger's `owns`); a file there that it refuses raises UnsafeOutputError, and where nothing was there
    the file is created without replacing one that appears meanwhile (a hard link, which fails on an existing
    name). None: whatever is there is replaced (a report path the user named).
    Whatever may_replace says, a file the run in progress reads (`note_inputs`) is never written: UnsafeOutputError.
    Raises OSError (callers turn it into their one-line error).
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    path = Path(path)
    named = path
    check_not_input(path)
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
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name, temp_mark), dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
        check_not_input(path)  # again: the work took time, and an input may have been noted meanwhile
        if may_replace is None:
            if before_replace is not None:
                before_replace(os.stat(tmp))
            os.replace(tmp, path)
        else:
            _replace_if_allowed(tmp, path, named, may_replace, before_replace)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.filename is None:  # a failed write() names no file: name the one being written
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _refuse_foreign(named: Path) -> UnsafeOutputError:
    return UnsafeOutputError(
        f"{named} already exists and was not written by sanasr: it is left as it is (it appeared or changed during "
        "the run; move it, or pass --overwrite to replace it)"
    )


def _replace_if_allowed(tmp: str, path: Path, named: Path, may_replace: Callable[[Path], bool], before_replace) -> None:
    """Rename `tmp` to `path` when nothing is there (never over a file that appears meanwhile) or when
    may_replace(named) allows replacing what is there; UnsafeOutputError otherwise. before_replace runs once
    the write is allowed, right before the rename."""
    exists = os.path.lexists(named) or os.path.lexists(path)
    if exists and not may_replace(named):
        raise _refuse_foreign(named)
    if before_replace is not None:
        before_replace(os.stat(tmp))
    if exists:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails with EEXIST when a file appeared since the check above: never replaced
    except FileExistsError:
        raise _refuse_foreign(named) from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS, errno.EACCES):
            raise
        if os.path.lexists(path):  # a file system without hard links: the check, then the rename
            raise _refuse_foreign(named) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def make_temp_dir(parent: str | Path, prefix: str) -> Path:
    """A new hidden staging folder in `parent` with the permissions `mkdir` would give it (0777 less the umask;
    `tempfile.mkdtemp` makes 0700 folders, which would stay so once renamed into place). A prefix too long for a
    file name is cut (`temp_prefix`)."""
    if len(prefix.encode("utf-8", "surrogateescape")) > NAME_MAX - _TEMP_RANDOM:
        prefix = temp_prefix(prefix.strip("."))
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(folder, 0o777 & ~_umask())
    return folder


def replace_dir(tmp: Path, out: Path, check: Callable[[Path], None] | None = None) -> None:
    """Move a finished temp folder to `out`; an existing `out` is set aside first and removed only once the new one
    is in place (a failed rename leaves the old one where it was).

    check: called with `out` right before anything is moved (it raises UnsafeOutputError to refuse): the checks
    a command made before minutes of work are made again at the moment of writing, so a folder that appeared or
    changed at `out` meanwhile is never replaced. Where nothing is at `out`, the rename cannot replace a folder
    with files in it that appears meanwhile (the rename fails instead)."""
    import shutil

    if check is not None:
        check(out)
    if os.path.lexists(out):
        old = Path(tempfile.mkdtemp(prefix=temp_prefix(out.name, ".old"), dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


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
