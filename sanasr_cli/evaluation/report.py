"""Evaluation reports: the JSON document (means, per-image values, variants, protocol, versions) and the
CSV."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from sanasr_cli.evaluation.metrics import CONVERSION_RULE, PATCH_SIZE, EvalResult, finite


def versions() -> dict[str, str]:
    import torch

    from sanasr_cli import __version__

    out = {"sanasr": __version__, "torch": torch.__version__}
    try:
        from importlib.metadata import version

        out["pyiqa"] = version("pyiqa")
    except Exception:  # pragma: no cover - pyiqa is a dependency
        out["pyiqa"] = "unknown"
    return out


def protocol_text(protocol: str) -> str:
    if protocol == "patch":
        return (
            f"patch: {PATCH_SIZE}x{PATCH_SIZE} centre crop of both images "
            f"(top = (H - {PATCH_SIZE}) // 2, left = (W - {PATCH_SIZE}) // 2)"
        )
    return "full: whole images, sizes must agree"


def eval_report(result: EvalResult, model: dict | None = None, extra: dict | None = None) -> dict:
    """The --json document. Numbers are raw floats; a metric that could not run has a message, no values."""
    return {
        "protocol": result.protocol,
        "protocol_description": protocol_text(result.protocol),
        "conversion": CONVERSION_RULE,
        "metrics": {m.name: m.to_dict() for m in result.metrics},
        "means": {k: finite(v) for k, v in result.means.items()},
        "num_images": len(result.images) - len(result.failed_images),
        "unavailable_metrics": dict(result.unavailable),
        "notes": result.notes,
        "images": [
            {
                "key": s.key,
                "sr": s.sr,
                "hr": s.hr,
                "sr_size": list(s.sr_size) if s.sr_size else None,
                "hr_size": list(s.hr_size) if s.hr_size else None,
                "converted": dict(s.converted),
                "values": {k: finite(v) for k, v in s.values.items()},
                "error": s.error,
            }
            for s in result.images
        ],
        "versions": versions(),
        "model": model,
        **(extra or {}),
    }


def eval_csv(result: EvalResult) -> str:
    """One row per image: key, sr, hr, then one column per computed metric, then error."""
    buf = io.StringIO()
    names = [m.name for m in result.computed]
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["key", "sr", "hr", *names, "error"])
    for s in result.images:
        writer.writerow([s.key, s.sr, s.hr or "", *[_fmt(s.values.get(n)) for n in names], s.error or ""])
    return buf.getvalue()


def _fmt(x: float | None) -> str:
    return "" if x is None else repr(float(x))


def write_json(path: str | Path, data) -> None:
    from sanasr_cli.safe_files import atomic_write

    atomic_write(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
