"""What a run writes for people watching it: a JSONL log (one line per logged step) and TensorBoard scalars.

Only the main process logs. On resume, lines of steps after the resumed step are dropped (they belong to the
abandoned continuation), so `log.jsonl` always reads as one consistent history.
"""

from __future__ import annotations

import json
from pathlib import Path

from sanasr_cli.safe_files import atomic_write

LOG_FILE = "log.jsonl"


def read_log(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunLogger:
    def __init__(self, run_dir: Path, enabled: bool, resume_step: int | None = None, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / LOG_FILE
        self._tb = None
        if not enabled:
            return
        if resume_step is not None and self.path.is_file():
            kept = [r for r in read_log(run_dir) if r.get("step", 0) <= resume_step]
            atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        elif resume_step is None and self.path.is_file():
            self.path.unlink()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"), purge_step=resume_step)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            step = int(record["step"])
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    group = "loss" if key in ("loss", "pixel", "perceptual", "align", "consistency") else "train"
                    self._tb.add_scalar(f"{group}/{key}", value, step)

    def image(self, tag: str, image, step: int) -> None:
        """image: (3, H, W) float in [0, 1]."""
        if self._tb is not None:
            self._tb.add_image(tag, image.clamp(0, 1), step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None
