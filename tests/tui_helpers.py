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


async def wait_for_screen(pilot, app, cls, *texts: str, timeout: float = 30.0, what: str = "the screen") -> str:
    """Wait until the app shows a `cls` screen drawn with every one of `texts` (a screen pushed
    from a worker's callback is the app's screen before its widgets are mounted: its text can
    still be empty), and return its text."""
    def shown() -> bool:
        if not isinstance(app.screen, cls):
            return False
        text = screen_text(app)
        return bool(text.strip()) and all(t in text for t in texts)

    await wait_for(pilot, shown, timeout, what)
    return screen_text(app)


def log_lines(screen, selector: str = "#loss-log") -> list[str]:
    """Every line of a log as plain text: a Log's, or a VirtualLog's whole source (small runs only)."""
    log = screen.query_one(selector)
    if isinstance(log, Log):
        return list(log.lines)
    source = log.source
    return [str(source.line(i)) for i in range(source.line_count())]


def screen_text(app) -> str:
    """Everything the screen shows now, as plain text (what a person would read)."""
    from textual.widgets import DataTable, Static, Tree

    parts = []
    for w in app.screen.query("*"):
        if isinstance(w, Static):
            parts.append(str(w.render()))
        elif isinstance(w, Tree):  # the lines in view, as drawn
            parts += ["".join(seg.text for seg in w.render_line(y)).rstrip() for y in range(w.size.height)]
        elif isinstance(w, DataTable):
            for row_key in w.rows:
                parts.append(" ".join(str(c) for c in w.get_row(row_key)))
    return "\n".join(parts)


async def press_together(pilot, *keys: str) -> None:
    """Keys as they arrive over a slow SSH link: in one read, with no pause for the app between
    them (Pilot.press waits for the app to be idle after each key)."""
    import asyncio

    from textual import events

    app = pilot.app
    for key in keys:
        if key.startswith("wait:"):  # as in Pilot.press: a gap of so many milliseconds
            await asyncio.sleep(float(key[5:]) / 1000)
            continue
        event = events.Key(key, key if len(key) == 1 else None)
        event.set_sender(app)
        app._driver.send_message(event)
    await pilot.pause()


def record_notifications(app) -> list[tuple[str, str, str]]:
    """From now on, every notification the app shows, as (severity, title, message), oldest first.
    (Textual drops expired ones from its own list; this keeps them.)"""
    shown: list[tuple[str, str, str]] = []
    original = app.notify

    def notify(message, *, title="", severity="information", timeout=None, markup=True):
        shown.append((severity, title, str(message)))
        original(message, title=title, severity=severity, timeout=timeout, markup=markup)

    app.notify = notify
    return shown


def table_lines(table) -> list[str]:
    """A DataTable's lines as drawn (markup applied), header first."""
    return ["".join(seg.text for seg in table.render_line(y)).rstrip() for y in range(table.size.height)]
