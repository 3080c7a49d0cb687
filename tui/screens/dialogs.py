"""Modal screens: help, yes/no questions (quit, trust, remove), the log."""

from __future__ import annotations

from collections import deque
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Log, Static

from ..paths import home_short


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,f1,question_mark", "dismiss", "Close", id="help.close")]

    def __init__(self, groups: list[tuple[str, list[tuple[str, str]]]]):
        super().__init__()
        self.groups = groups

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box", classes="dialog") as box:
            box.border_title = "Keys"
            yield Static("torchdeck is driven by the keyboard. Escape closes this.", classes="dim")
            for title, rows in self.groups:
                yield Label(f"[b]{title}[/b]", classes="help-group")
                width = max((len(k) for k, _ in rows), default=4)
                text = "\n".join(f"  {k:<{width}}  {d}" for k, d in rows) or "  (no keys of its own)"
                yield Static(text, markup=False)


class Confirm(ModalScreen[bool]):
    """A yes/no question: y (or the extra yes keys) answers True; n or Escape, False."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="confirm.yes"),
        Binding("n,escape", "answer(False)", "No", id="confirm.no"),
    ]
    YES_KEYS: tuple[str, ...] = ()

    def __init__(self, title: str, body: str, yes: str, no: str):
        super().__init__()
        self.title_text, self.body, self.yes, self.no = title, body, yes, no

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog") as box:
            box.border_title = self.title_text
            yield Static(self.body, markup=False)
            keys = "/".join(["y", *self.YES_KEYS])
            yield Label(f"[b]{keys}[/b] {self.yes}    [b]n[/b]/Escape {self.no}")

    def on_key(self, event) -> None:
        if event.key in self.YES_KEYS:
            event.stop()
            self.dismiss(True)

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class ConfirmQuit(Confirm):
    YES_KEYS = ("q", "enter")

    def __init__(self, active: list[str]):
        n = len(active)
        super().__init__(
            "Quit torchdeck?",
            f"{n} training run{'s' if n != 1 else ''} go{'es' if n == 1 else ''} on in the background after "
            "torchdeck quits:\n  " + "\n  ".join(active[:5]) + "\n\nOpen torchdeck again (or `torchdeck runs list`) to watch.",
            "quit", "stay")
        self.active = active


class ConfirmTrust(Confirm):
    def __init__(self, what: str, reason: str):
        super().__init__(
            "Run code from this file?",
            f"{what}\n\n{reason}\n\nBuilding it imports that module and runs its code with your permissions. "
            "Only go on if you trust where the file came from.",
            "trust and go on", "cancel")


class ConfirmRemove(Confirm):
    def __init__(self, name: str, spec: str):
        super().__init__("Remove model?", f"Unregister {name} ({spec}) from this workspace?\n"
                         "Its runs, checkpoints and exports stay.", "remove", "keep")


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
