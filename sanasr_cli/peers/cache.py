"""A teacher's outputs, computed once per LQ image and kept on disk (`sanasr train --teacher`).

A teacher (a `Peer`) is 5-10x slower than a training step of a small SANA-SR on a CPU: rerunning it every step
would cost more than the training. Each LQ image's x4 output is written once, as an 8-bit PNG (what a user of the
teacher would save), under `FOLDER/<peer identity>/<sha256 of the LQ file's bytes, 24 hex>.png`: keyed by the
weights and the input's content, so a renamed file, another run or another data folder with the same images
reuses it, and a different teacher never reads another's outputs. Writes are atomic: an interrupted fill
resumes where it stopped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from sanasr_cli.peers.peer import Peer

KEY_HEX = 24


def content_key(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:KEY_HEX]


class TeacherCache:
    """The cached outputs of one teacher under `folder`."""

    def __init__(self, peer: Peer, folder: Path):
        self.peer = peer
        self.root = Path(folder) / peer.identity
        self._keys: dict[Path, str] = {}

    def path_for(self, lq_file: Path) -> Path:
        lq_file = Path(lq_file)
        if lq_file not in self._keys:
            self._keys[lq_file] = content_key(lq_file)
        return self.root / f"{self._keys[lq_file]}.png"

    def missing(self, lq_files: Iterable[Path]) -> list[Path]:
        return [p for p in lq_files if not self.path_for(p).is_file()]

    def fill(
        self,
        lq_files: Iterable[Path],
        max_pixels: int | None = None,
        on_done: Callable[[Path], None] | None = None,
    ) -> int:
        """Compute the teacher's output of every file not cached yet; returns how many were computed."""
        from PIL import Image

        from sanasr_cli.data.io import DEFAULT_MAX_PIXELS, read_image, to_uint8
        from sanasr_cli.safe_files import atomic_write

        self.root.mkdir(parents=True, exist_ok=True)
        computed = 0
        for lq_file in lq_files:
            target = self.path_for(lq_file)
            if not target.is_file():
                lq, _ = read_image(lq_file, max_pixels or DEFAULT_MAX_PIXELS)
                out = self.peer(lq[None])[0].cpu()
                import io

                buffer = io.BytesIO()
                Image.fromarray(to_uint8(out)).save(buffer, format="PNG")
                atomic_write(target, buffer.getvalue())
                computed += 1
            if on_done:
                on_done(lq_file)
        return computed

    def read(self, lq_file: Path) -> np.ndarray:
        """The cached output of `lq_file`: uint8 (H, W, 3). FileNotFoundError if it was never computed."""
        from sanasr_cli.data.io import read_image_uint8

        array, _ = read_image_uint8(self.path_for(lq_file))
        return array
