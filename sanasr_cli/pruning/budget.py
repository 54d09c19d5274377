"""Parameter budgets as users type them: `0.35B`, `344M`, `350000000`, `1.5e8`, `500K`."""

from __future__ import annotations

import math
import re

_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMBG]?)\s*$", re.IGNORECASE)


def parse_budget(text: str | int) -> int:
    """A positive parameter count; decimal suffixes K=1e3, M=1e6, B (or G)=1e9. ValueError on bad input."""
    if isinstance(text, int):
        value = text
    else:
        m = _PATTERN.match(str(text))
        if not m:
            raise ValueError(f"cannot read budget '{text}': use a parameter count such as 0.35B, 344M or 350000000")
        number = float(m.group(1)) * _SUFFIX[m.group(2).upper()]
        if not math.isfinite(number):  # 1e400 reads as inf
            raise ValueError(f"budget must be a finite parameter count, got '{text}'")
        value = round(number)
    if value <= 0:
        raise ValueError(f"budget must be a positive parameter count, got '{text}'")
    return int(value)


def format_params(n: int | float) -> str:
    """344123456 -> '344.12M', 1.2e9 -> '1.200B' (for tables and messages)."""
    if abs(n) >= 1e9:
        return f"{n / 1e9:.3f}B"
    if abs(n) >= 1e6:
        return f"{n / 1e6:.2f}M"
    if abs(n) >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(int(n))
