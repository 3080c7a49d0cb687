"""How a run is named in a narrow column: its name, else its start time; and its short id."""

from __future__ import annotations

from datetime import date as _date


def _parts(run_id: str) -> tuple[str, str, str] | None:
    """20261128-123006-5fa7 -> ('20261128', '123006', '5fa7'); None for any other shape."""
    parts = run_id.split("-", 2)
    if len(parts) != 3:
        return None
    day, clock, suffix = parts
    if len(day) != 8 or len(clock) != 6 or not (day + clock).isdigit() or not suffix:
        return None
    return day, clock, suffix


def short_run_label(run_id: str, today: str | None = None) -> str:
    """20261128-123006-5fa7 -> 12:30:06 today, 11-28 12:30 before: fits a narrow column; the full
    id is in the run's header."""
    parts = _parts(run_id)
    if parts is None:
        return run_id
    day, clock, _ = parts
    if day == (today or _date.today().strftime("%Y%m%d")):
        return f"{clock[0:2]}:{clock[2:4]}:{clock[4:6]}"
    return f"{day[4:6]}-{day[6:8]} {clock[0:2]}:{clock[2:4]}"


def short_run_id(run_id: str) -> str:
    """The id's random suffix (20261128-123006-5fa7 -> 5fa7): `RUN` arguments accept it."""
    parts = _parts(run_id)
    return run_id if parts is None else parts[2]


def run_label(run_id: str, name: str | None, today: str | None = None) -> str:
    """The run's name when it was given one, else when it started (a run's default name is its id)."""
    if name and name != run_id:
        return name if len(name) <= 24 else name[:23] + "…"
    return short_run_label(run_id, today)
