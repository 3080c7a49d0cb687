"""Helpers for driving the real app with a Pilot: wait on conditions, never sleep and hope."""

from __future__ import annotations

import time

from textual.widgets import Log


async def wait_for(pilot, condition, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await pilot.pause(0.05)


def log_lines(screen, selector: str = "#loss-log") -> list[str]:
    return list(screen.query_one(selector, Log).lines)


def screen_text(app) -> str:
    """Everything the screen shows now, as plain text (what a person would read)."""
    from textual.widgets import DataTable, Static

    parts = []
    for w in app.screen.query("*"):
        if isinstance(w, Static):
            parts.append(str(w.render()))
        elif isinstance(w, DataTable):
            for row_key in w.rows:
                parts.append(" ".join(str(c) for c in w.get_row(row_key)))
    return "\n".join(parts)
