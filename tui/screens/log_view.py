"""The end of the TUI's log (key l): warnings from torch and friends, failed jobs' tracebacks."""

from __future__ import annotations

from collections import deque
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Log

from ..paths import home_short


class LogScreen(ModalScreen[None]):
    """The last lines of the TUI's log: warnings from torch and friends land here, not on screen."""

    BINDINGS = [Binding("escape,q,l", "dismiss", "Close", id="log.close")]

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="log-box") as box:
            box.border_title = f"Log: {home_short(self.path)}"
            yield Log(id="log-view")

    TAIL_BYTES = 256 * 1024  # the end of a log of any size, read at once

    def on_mount(self) -> None:
        try:
            lines = read_tail(self.path, self.TAIL_BYTES, 500)
        except OSError as e:
            lines = [f"(cannot read {self.path}: {e.strerror})"]
        view = self.query_one(Log)
        view.write_lines([line.rstrip("\n") for line in lines] or ["(empty)"])


def read_tail(path: Path, max_bytes: int, max_lines: int) -> list[str]:
    """The last lines of a text file, reading at most its last `max_bytes` (a log may be huge)."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(max(0, size - max_bytes))
        data = f.read(max_bytes)
    lines = data.decode("utf-8", errors="replace").splitlines(keepends=True)
    if size > max_bytes and lines:
        lines = lines[1:]  # the first one is cut
    return list(deque(lines, maxlen=max_lines))
