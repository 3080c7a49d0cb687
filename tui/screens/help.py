"""The key table: every key, grouped by where it works (F1 or ?)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static


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
