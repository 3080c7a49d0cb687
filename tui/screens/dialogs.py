"""Modal screens: help, quit confirmation, trust confirmation, the log."""

from __future__ import annotations

from collections import deque
from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Log, Static


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


class ConfirmQuit(ModalScreen[bool]):
    BINDINGS = [
        Binding("y,q,enter", "answer(True)", "Quit", id="quit.yes"),
        Binding("n,escape", "answer(False)", "Stay", id="quit.no"),
    ]

    def __init__(self, active: list[str]):
        super().__init__()
        self.active = active

    def compose(self) -> ComposeResult:
        n = len(self.active)
        with Vertical(classes="dialog", id="quit-box") as box:
            box.border_title = "Quit torchdeck?"
            yield Static(
                f"{n} training run{'s' if n != 1 else ''} go{'es' if n == 1 else ''} on in the background "
                f"after torchdeck quits:\n  " + "\n  ".join(self.active[:5]) +
                "\n\nOpen torchdeck again (or `torchdeck runs list`) to watch.",
            )
            yield Label("[b]y[/b]/Enter quit    [b]n[/b]/Escape stay")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class ConfirmTrust(ModalScreen[bool]):
    BINDINGS = [
        Binding("y", "answer(True)", "Trust and build", id="trust.yes"),
        Binding("n,escape", "answer(False)", "Cancel", id="trust.no"),
    ]

    def __init__(self, what: str, reason: str):
        super().__init__()
        self.what = what
        self.reason = reason

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="trust-box") as box:
            box.border_title = "Run code from this file?"
            yield Static(f"{self.what}\n\n{self.reason}\n\nBuilding it imports that module and runs its code "
                         "with your permissions. Only go on if you trust where the file came from.", markup=False)
            yield Label("[b]y[/b] trust and go on    [b]n[/b]/Escape cancel")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


class LogScreen(ModalScreen[None]):
    """The last lines of the TUI's log: warnings from torch and friends land here, not on screen."""

    BINDINGS = [Binding("escape,q,l", "dismiss", "Close", id="log.close")]

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="log-box") as box:
            box.border_title = f"Log: {self.path}"
            yield Log(id="log-view")

    def on_mount(self) -> None:
        try:
            with open(self.path, errors="replace") as f:
                lines = deque(f, maxlen=500)
        except OSError as e:
            lines = deque([f"(cannot read {self.path}: {e.strerror})"])
        view = self.query_one(Log)
        view.write_lines([line.rstrip("\n") for line in lines] or ["(empty)"])


class ConfirmRemove(ModalScreen[bool]):
    BINDINGS = [
        Binding("y", "answer(True)", "Remove", id="remove.yes"),
        Binding("n,escape", "answer(False)", "Keep", id="remove.no"),
    ]

    def __init__(self, name: str, spec: str):
        super().__init__()
        self.model_name = name
        self.spec = spec

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="remove-box") as box:
            box.border_title = "Remove model?"
            yield Static(f"Unregister {self.model_name} ({self.spec}) from this workspace?\n"
                         "Its runs, checkpoints and exports stay.", markup=False)
            yield Label("[b]y[/b] remove    [b]n[/b]/Escape keep")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)
