"""Open a folder of other tools' logs (TensorBoard, Hugging Face, Lightning, MLflow): a path field
with completion; Enter answers the folder (the scan itself runs in the background on the Training
screen, with its progress shown), Escape cancels. A path that does not exist gets one line under
the field, and the field keeps what was typed."""

from __future__ import annotations

import os
from dataclasses import dataclass

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Input, Static
from torchdeck.checkpoints import recent

from ..widgets.path_input import PathInput, path_matches


@dataclass
class LogMatches(Message):
    value: str
    matches: list[str]


class OpenLogsDialog(ModalScreen[str | None]):
    AUTO_FOCUS = "#logs-path"
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="open_logs.cancel")]

    def __init__(self, base: str, value: str = "", remembered: list[str] | None = None):
        super().__init__()
        self.base = base
        self.initial = value
        self.remembered = list(remembered or [])

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="logs-box") as box:
            box.border_title = "Open logs"
            yield Static("A folder of TensorBoard event files, Hugging Face trainer_state.json, Lightning "
                         "metrics.csv or an MLflow mlruns/ store; its subfolders are scanned, each run found is "
                         "listed read-only, and the folder is scanned again at each start. Tab completes, "
                         "Enter opens, Escape cancels.", classes="dim")
            yield PathInput(self.base, value=self.initial, placeholder="~/lightning_logs", id="logs-path")
            yield Static("", id="logs-error")
            yield Static("", id="logs-matches", classes="dim")
            if self.remembered:
                shown = self.remembered[:6] + ([f"… and {len(self.remembered) - 6} more"] if len(self.remembered) > 6 else [])
                yield Static(Text("Scanned at each start:\n" + "\n".join(shown)), id="logs-remembered", classes="dim")

    def on_mount(self) -> None:
        field = self.query_one("#logs-path", PathInput)
        field.cursor_position = len(field.value)
        field.focus()

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Input.Changed, "#logs-path")
    def _changed(self, event: Input.Changed) -> None:
        self.query_one("#logs-error", Static).update("")
        self.find_matches(event.value)

    @work(thread=True, exclusive=True, group="matches", exit_on_error=False)
    def find_matches(self, value: str) -> None:
        self.post_message(LogMatches(value, path_matches(value, self.base, limit=9)))

    @on(LogMatches)
    def _matches(self, message: LogMatches) -> None:
        if message.value != self.query_one("#logs-path", PathInput).value:
            return
        shown = message.matches[:8]
        text = "\n".join(shown) + ("\n… and more" if len(message.matches) > 8 else "")
        self.query_one("#logs-matches", Static).update(Text(text))

    @on(Input.Submitted, "#logs-path")
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        value = event.value.strip()
        if not value:
            self._error("type the path of a folder of logs")
            return
        path = recent.absolute(value, self.base)
        if not os.path.exists(path):
            self._error(f"no such file or directory: {path}")
            return
        if os.path.isdir(path) and not os.access(path, os.R_OK | os.X_OK):
            self._error(f"cannot read {path}: permission denied")
            return
        self.dismiss(path)

    def _error(self, text: str) -> None:
        self.query_one("#logs-error", Static).update(Text(text, style="red"))
        self.query_one("#logs-path", PathInput).focus()
