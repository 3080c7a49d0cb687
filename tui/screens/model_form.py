"""The form that registers a user's own model: name, import path, keyword arguments, example
input shape. The model is built (and fed its example input) in the background before anything
is written; a failure is told under the field it comes from."""

from __future__ import annotations

import os

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static
from torchdeck.errors import TorchdeckError

from ..heavy import import_torch

FIELDS = (
    ("m-name", "Name", "e.g. mynet"),
    ("m-spec", "Import path", "package.module:callable"),
    ("m-kwargs", "Arguments", 'JSON, e.g. {"hidden": 64}'),
    ("m-shape", "Input shape", "batch first, e.g. 1,10"),
)


class Checked(Message):
    def __init__(self, ok: bool, text: str, field: str | None = None, name: str = "") -> None:
        super().__init__()
        self.ok = ok
        self.text = text
        self.field = field
        self.name = name


# An engine error's field (the `models add` option it is about) -> the form's input.
FIELD_INPUTS = {"name": "m-name", "spec": "m-spec", "model": "m-spec", "args": "m-kwargs", "input_shape": "m-shape"}


def input_for(error: TorchdeckError) -> str:
    """Which input an engine error is about: from its field, never from its wording; an error
    about no one input (or the description, not on this form) is shown at the import path."""
    return FIELD_INPUTS.get(error.field or "", "m-spec")


class AddModelScreen(ModalScreen[str | None]):
    """Dismissed with the registered model's name, or None when cancelled."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="add-model.cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="add-model-box") as box:
            box.border_title = "Register a model"
            for fid, label, placeholder in FIELDS:
                with Horizontal(classes="form-row"):
                    yield Label(label, classes="form-label")
                    yield Input(placeholder=placeholder, id=fid, compact=True)
                yield Static("", id=f"{fid}-error", classes="field-error")
            yield Static("Enter moves on; in the last field it checks the model (it is built and fed its example "
                         "input) and registers it. Importing runs that module's code. Escape cancels.",
                         id="add-model-status", classes="dim")

    def on_mount(self) -> None:
        self.busy = False
        self.query_one("#m-name", Input).focus()

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        # Enter moves to the next field; in the last one, or in a field just marked wrong, it registers.
        last = self.query_one(f"#{FIELDS[-1][0]}", Input)
        if event.input is last or event.input.has_class("invalid"):
            self.action_register()
        else:
            self.focus_next()

    def action_register(self) -> None:
        if self.busy:
            return
        self.busy = True
        for fid, _, _ in FIELDS:
            self.query_one(f"#{fid}-error", Static).update("")
            self.query_one(f"#{fid}", Input).remove_class("invalid")
        self.query_one("#add-model-status", Static).update("checking: building the model…")
        values = {fid: self.query_one(f"#{fid}", Input).value for fid, _, _ in FIELDS}
        self.check_and_register(values)

    @work(thread=True, exclusive=True, group="register", exit_on_error=False)
    def check_and_register(self, values: dict[str, str]) -> None:
        from torchdeck.models import catalogue as models

        try:
            kwargs = models.parse_kwargs(values["m-kwargs"])
            shape = models.parse_input_shape(values["m-shape"])
            import_torch()
            entry, result = models.register(self.app.workspace, values["m-name"], values["m-spec"], kwargs=kwargs,
                                            input_shape=shape, import_root=os.getcwd())
        except TorchdeckError as e:
            self.post_message(Checked(False, str(e), input_for(e)))
            return
        except Exception as e:  # the user's module may raise anything while importing
            import logging

            logging.getLogger("torchdeck.tui").exception("registering a model failed")
            self.post_message(Checked(False, f"{type(e).__name__}: {e}", "m-spec"))
            return
        self.post_message(Checked(True, f"registered {entry.name}: {result.describe()}", name=entry.name))

    @on(Checked)
    def _checked(self, message: Checked) -> None:
        self.busy = False
        status = self.query_one("#add-model-status", Static)
        if message.ok:
            self.dismiss(message.name)
            return
        status.update("[red]not registered[/red]: fix the field marked and press Enter")
        if message.field:
            # The whole message, as text (never markup: a spec like [x] or a path must show as typed).
            self.query_one(f"#{message.field}-error", Static).update(Text(message.text, style="red"))
            field = self.query_one(f"#{message.field}", Input)
            field.add_class("invalid")
            field.focus()

    def action_cancel(self) -> None:
        self.dismiss(None)
