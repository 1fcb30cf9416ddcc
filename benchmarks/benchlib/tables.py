"""Number formatting and plain-text tables for the printed output."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["MiB", "TIMING_COLUMNS", "fmt_mib", "fmt_ms", "fmt_ratio", "print_table", "timing_cells"]

MiB = float(1 << 20)


def fmt_ms(seconds: float | None, digits: int = 3) -> str:
    """Seconds as milliseconds with about ``digits`` significant digits; ``-`` for None or non-finite."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:.0f}"
    return f"{ms:.{digits}g}" if ms >= 1 else f"{ms:.{digits}f}"


def fmt_mib(nbytes: int | None) -> str:
    return "-" if nbytes is None else f"{nbytes / MiB:.1f}"


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None or not math.isfinite(r) else f"{r:.2f}x"


#: the columns :func:`timing_cells` fills: xpcnn and torch median / min / IQR, and their ratio
TIMING_COLUMNS = [("x", "xpcnn ms"), ("xmin", "min"), ("xiqr", "IQR"), ("t", "torch ms"), ("tmin", "min"),
                  ("tiqr", "IQR"), ("ratio", "xpcnn/torch")]


def timing_cells(rec: dict[str, Any]) -> dict[str, str]:
    """Table cells for a record with ``xpcnn`` / ``torch`` ``Stats.as_dict()`` and a ``median_ratio``."""
    x, t = rec["xpcnn"], rec["torch"]
    return {"x": fmt_ms(x["median"]), "xmin": fmt_ms(x["min"]), "xiqr": fmt_ms(x["iqr"]),
            "t": fmt_ms(t["median"]), "tmin": fmt_ms(t["min"]), "tiqr": fmt_ms(t["iqr"]),
            "ratio": fmt_ratio(rec["median_ratio"])}


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], title: str | None = None) -> str:
    """Print ``rows`` (dicts of already-formatted values) under ``columns`` = [(key, header), ...]."""
    cells = [[str(h) for _, h in columns]] + [[str(r.get(k, "")) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = []
    if title:
        lines.append(title)
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    text = "\n".join(lines)
    print(text, flush=True)
    return text
