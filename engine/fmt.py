"""Numbers for people, one way everywhere (TUI, command line, summaries): bytes in IEC units,
figures by magnitude (a loss of 1.4e18 is never printed with 19 digits), durations that stay
readable however long. Plain strings: no Rich, no Textual.
"""

from __future__ import annotations

import math

_BYTE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def fmt_bytes(n: float | None) -> str:
    """1536 -> '1.5 KiB'; None -> '?'."""
    if n is None:
        return "?"
    size = float(n)
    for unit in _BYTE_UNITS:
        if abs(size) < 1024 or unit == _BYTE_UNITS[-1]:
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def fmt_number(v: float | int | None, digits: int = 4) -> str:
    """A figure by its magnitude: `digits` significant digits (whole numbers with separators up to
    1e6), scientific past 1e6 or below 1e-3.

    Non-finite values read as nan, inf, -inf; None as '-'."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}" if abs(v) < 10**9 else f"{v:.{digits - 1}e}"
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0:
        return "0"
    a = abs(v)
    if 10**digits <= a < 1e6:
        return f"{v:,.0f}"  # 123,457: every digit is significant enough at this size
    if 1e-3 <= a < 10**digits:
        return f"{v:.{digits}g}"
    return f"{v:.{digits - 1}e}"


def fmt_loss(v: float | None) -> str:
    """A loss: six significant digits (losses are compared closely), scientific when huge or tiny."""
    return fmt_number(v, 6)


def fmt_count(n: int | None) -> str:
    """A count with thousands separators; '?' when unknown."""
    return "?" if n is None else f"{n:,}"


def fmt_duration(seconds: float | None) -> str:
    """3725 -> '1h 02m'; beyond a year, '> 1 year' (an ETA of 10^15 h says nothing more)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s < 365 * 86400:
        return f"{s // 86400}d {s % 86400 // 3600:02d}h"
    return "> 1 year"


def fmt_dims(shape, empty: str = "scalar") -> str:
    """A tensor's shape as 20x10 (`empty` for a 0-dimensional one)."""
    return "x".join(map(str, shape)) or empty


def fmt_axis(v: float) -> str:
    """A chart tick label: at most 7 characters, whatever the magnitude (1e+100, not 1.0e+100)."""
    if v == 0 or not math.isfinite(v):
        return fmt_number(v)
    if 1e3 <= abs(v) < 1e4:
        return f"{v:.0f}"
    if 1e-3 <= abs(v) < 1e3:
        return f"{v:.3g}"
    text = f"{v:.1e}"
    return text if len(text) <= 7 else f"{v:.0e}"
