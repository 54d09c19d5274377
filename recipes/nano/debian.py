"""Real photos from Debian's packages: fetch (`apt-get download`), unpack (`dpkg-deb -x`), read Qt `.rcc` bundles,
and find each file's licence in the package's machine-readable `copyright` file.

Nothing is installed: a package is downloaded as a .deb into the work folder and unpacked there.
"""

from __future__ import annotations

import fnmatch
import re
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path


class PackageError(RuntimeError):
    """A package that cannot be fetched or unpacked (named in the message)."""


def fetch_package(name: str, debs: Path, apt_updated: list[bool]) -> Path:
    """The .deb of `name` in `debs` (downloaded once; `apt-get update` runs at most once per process, the first
    time a download is needed)."""
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{name}_*.deb"))
    if found:
        return found[-1]
    if not apt_updated[0]:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, check=False)
        apt_updated[0] = True
    done = subprocess.run(["apt-get", "download", name], cwd=debs, capture_output=True, text=True)
    found = sorted(debs.glob(f"{name}_*.deb"))
    if done.returncode != 0 or not found:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise PackageError(f"package {name} could not be downloaded with apt-get ({last})")
    return found[-1]


def unpack_package(deb: Path, root: Path) -> Path:
    """`dpkg-deb -x deb root/` (once: a `.unpacked` marker says it finished)."""
    marker = root / ".unpacked"
    if not marker.exists():
        root.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], capture_output=True, text=True)
        if done.returncode != 0:
            raise PackageError(f"{deb.name} could not be unpacked ({done.stderr.strip()})")
        marker.write_text(deb.name + "\n")
    return root


def package_version(deb: Path) -> str:
    """The version in a .deb's file name (NAME_VERSION_ARCH.deb, ':' spelled %3a)."""
    return deb.name.split("_")[1].replace("%3a", ":")


# ---------------------------------------------------------------- Qt resource bundles (.rcc)


def read_rcc(data: bytes) -> dict[str, bytes]:
    """Every file of a Qt resource bundle, by its path inside the bundle.

    Layout (qtbase src/corelib/io/qresource.cpp): "qres", version, then offsets of the tree, data and name tables
    (big endian). A tree node is name offset (4), flags (2), then for a directory child count (4) and first child
    index (4), for a file locale (4) and data offset (4); version >= 2 adds an 8-byte mtime. A data entry is its
    size (4) and bytes; flag 1 means zlib (qCompress: a 4-byte length, then a zlib stream); flag 4 zstd.
    """
    if data[:4] != b"qres":
        raise ValueError("not a Qt resource bundle (no 'qres' header)")
    version, tree, payload, names = struct.unpack(">IIII", data[4:20])
    node_size = 14 if version < 2 else 22

    def name_at(offset: int) -> str:
        (length,) = struct.unpack(">H", data[names + offset : names + offset + 2])
        return data[names + offset + 6 : names + offset + 6 + 2 * length].decode("utf-16-be")

    files: dict[str, bytes] = {}

    def walk(index: int, prefix: str) -> None:
        at = tree + index * node_size
        name_offset, flags = struct.unpack(">IH", data[at : at + 6])
        name = name_at(name_offset) if index else ""
        path = f"{prefix}/{name}" if prefix else name
        if flags & 2:  # directory
            count, first = struct.unpack(">II", data[at + 6 : at + 14])
            for child in range(first, first + count):
                walk(child, path)
            return
        (offset,) = struct.unpack(">I", data[at + 10 : at + 14])
        (size,) = struct.unpack(">I", data[payload + offset : payload + offset + 4])
        blob = data[payload + offset + 4 : payload + offset + 4 + size]
        if flags & 1:
            blob = zlib.decompress(blob[4:])
        elif flags & 4:
            raise ValueError(f"{path}: zstd-compressed resources are not supported")
        files[path] = blob

    walk(0, "")
    return files


# ---------------------------------------------------------------- licences (DEP-5 copyright files)


@dataclass(frozen=True)
class Licence:
    name: str  # the License: field's first line, e.g. CC-BY-SA-4.0
    matched: str  # the Files: pattern of the stanza that applies


def copyright_stanzas(text: str) -> list[tuple[list[str], str]]:
    """(Files patterns, License) of each stanza of a machine-readable copyright file, in file order."""
    stanzas = []
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                fields[key.strip()] = value.strip()
        if "Files" in fields and "License" in fields:
            stanzas.append((fields["Files"].split(), fields["License"].split(" ")[0] or fields["License"]))
    return stanzas


def licence_of(path: str, stanzas: list[tuple[list[str], str]]) -> Licence:
    """The licence of `path` (install path, or path inside an rcc bundle): as in DEP-5, the last stanza that
    matches wins. Copyright files name source paths, not install paths, so a pattern matches when it matches
    a tail of the path, or when its file-name part is a plain name (no wildcard) with the file's stem (packages
    convert pictures, e.g. .jpg to .webp, and keep the source's name)."""
    parts = path.split("/")
    tails = ["/".join(parts[i:]) for i in range(len(parts))]
    found = Licence("unknown", "")
    for patterns, name in stanzas:
        for pattern in patterns:
            base = pattern.rsplit("/", 1)[-1]
            if any(fnmatch.fnmatchcase(t, pattern) for t in tails) or (
                not any(c in base for c in "*?[") and base.rsplit(".", 1)[0] == parts[-1].rsplit(".", 1)[0]
            ):
                found = Licence(name, pattern)
    return found
