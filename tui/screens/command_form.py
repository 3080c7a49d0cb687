"""Run any command as a run (`torchdeck run -- CMD` from the Training screen, key e)."""

from __future__ import annotations

import logging
import os

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static
from torchdeck.errors import TorchdeckError
from torchdeck.runs import command as command_run

logger = logging.getLogger("torchdeck.tui")

# An error's field -> the input that shows it (anything else goes under the form).
FIELD_INPUTS = {"command": "c-command", "name": "c-name", "cwd": "c-cwd"}


class CommandDialog(ModalScreen[str | None]):
    """A command line (split as a shell would, no expansion), a name and a working directory;
    Enter starts it as a run (an error stays beside its field); dismissed with the run's id once
    its supervisor is launched, None on Escape."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="command.cancel")]

    def __init__(self, cwd: str | None = None):
        super().__init__()
        self.cwd = cwd or os.getcwd()

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="command-dialog") as box:
            box.border_title = "Run a command"
            yield Static("Runs the command as a run, detached (it survives the TUI): its output in the run's "
                         "log, torchdeck.init() in it attaches to the run. Stop (x) sends "
                         f"{command_run.timeouts_text(command_run.DEFAULT_INT_TIMEOUT, command_run.DEFAULT_TERM_TIMEOUT)}"
                         ".", markup=False, classes="dim")
            for wid, label, value, placeholder in (
                    ("c-command", "Command", "", "python train.py --lr 0.1"),
                    ("c-name", "Name", "", "(optional)"),
                    ("c-cwd", "Directory", self.cwd, "where it runs")):
                with Horizontal(classes="form-row"):
                    yield Label(label, classes="form-label")
                    yield Input(value, placeholder=placeholder, id=wid, compact=True)
                yield Static("", id=f"{wid}-error", classes="form-field-error")
            yield Static("", id="command-error")
            yield Label("[b]Enter[/b] start    [b]Escape[/b] cancel")

    def on_mount(self) -> None:
        for error in self.query(".form-field-error"):
            error.display = False
        self.query_one("#c-command", Input).focus()

    def action_cancel(self) -> None:
        self.dismiss(None)

    def _clear(self) -> None:
        for error in self.query(".form-field-error"):
            error.update("")
            error.display = False
        self.query_one("#command-error", Static).update("")

    def _show(self, field: str | None, text: str) -> None:
        wid = FIELD_INPUTS.get(field or "")
        if wid is None:
            self.query_one("#command-error", Static).update(f"[red]{escape(text)}[/red]")
            return
        error = self.query_one(f"#{wid}-error", Static)
        error.update(f"[red]{escape(text)}[/red]")
        error.display = True
        self.query_one(f"#{wid}", Input).focus()

    @on(Input.Submitted)
    def _submit(self, _event) -> None:
        self._clear()
        try:
            argv = command_run.parse_command_line(self.query_one("#c-command", Input).value)
        except TorchdeckError as e:
            self._show(e.field, str(e))
            return
        self.query_one("#command-error", Static).update("[dim]starting…[/dim]")
        self.start(argv, self.query_one("#c-name", Input).value.strip(), self.query_one("#c-cwd", Input).value.strip())

    @work(thread=True, exclusive=True, group="command", exit_on_error=False)
    def start(self, argv: list[str], name: str, cwd: str) -> None:
        try:
            run = command_run.start(self.app.workspace, argv, name=name, cwd=cwd or None)
        except TorchdeckError as e:
            self.app.call_from_thread(self._failed, e.field, str(e))
            return
        except Exception as e:  # never a crashed TUI: the message here, the traceback to the log
            logger.exception("starting a command run failed")
            self.app.call_from_thread(self._failed, None, f"could not start the command: {type(e).__name__}: {e}")
            return
        self.app.call_from_thread(self.dismiss, run.id)

    def _failed(self, field: str | None, text: str) -> None:
        self.query_one("#command-error", Static).update("")
        self._show(field, text)
