"""Open a checkpoint file or folder from anywhere: a path field with completion; Enter opens
(the path is inspected first, in a thread), Escape cancels. A path that cannot be opened gets one
line under the field, and the field keeps what was typed."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Input, Static
from torchdeck.checkpoints import recent
from torchdeck.errors import TorchdeckError

from ..failures import failure_line
from ..heavy import import_torch
from ..widgets.path_input import PathInput, path_matches

log = logging.getLogger("torchdeck.tui")


@dataclass
class Opened:
    """What the dialog answers: the absolute path, its description (None when refused), and
    for a file that needs full unpickling, the globals it asks for."""

    path: str
    info: Any = None
    refused: list[str] | None = None
    refusal: str = ""


@dataclass
class OpenChecked(Message):
    value: str  # what was typed when Enter was pressed
    opened: Opened | None
    error: str = ""


@dataclass
class MatchesFound(Message):
    value: str
    matches: list[str]


class OpenPathDialog(ModalScreen[Opened | None]):
    AUTO_FOCUS = "#open-path"  # keys typed right after `o` land in the field
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="open.cancel")]

    def __init__(self, base: str, trusted: set[str], value: str = "", early: list[str] | None = None):
        """early: keys typed before the dialog was up ("\n" for Enter), replayed into the field."""
        super().__init__()
        self.base = base
        self.trusted = trusted
        self.initial = value
        self.early: list[str] | None = list(early or [])  # until mounted
        self.checking = False

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="open-box") as box:
            box.border_title = "Open a checkpoint"
            yield Static("A file or folder: .safetensors, .pt/.pth/.bin/.ckpt, a Hugging Face, Lightning, "
                         "torch.distributed or torchdeck checkpoint. Tab completes, Enter opens, Escape cancels.",
                         classes="dim")
            yield PathInput(self.base, value=self.initial, placeholder="~/models/model.safetensors", id="open-path")
            yield Static("", id="open-error")
            yield Static("", id="open-matches", classes="dim")

    def on_mount(self) -> None:
        field = self.query_one("#open-path", PathInput)
        field.cursor_position = len(field.value)
        field.focus()
        early, self.early = self.early or [], None
        for key in early:
            self.type_ahead(key)

    def type_ahead(self, key: str) -> None:
        """A key typed before this dialog had the focus ("\n": Enter), as if typed into the field."""
        if self.early is not None:
            self.early.append(key)
            return
        field = self.query_one("#open-path", PathInput)
        if key == "\n":
            self.post_message(Input.Submitted(field, field.value))
        else:
            field.insert_text_at_cursor(key)

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Input.Changed, "#open-path")
    def _changed(self, event: Input.Changed) -> None:
        self.query_one("#open-error", Static).update("")
        self.find_matches(event.value)

    @work(thread=True, exclusive=True, group="matches", exit_on_error=False)
    def find_matches(self, value: str) -> None:
        self.post_message(MatchesFound(value, path_matches(value, self.base, limit=9)))

    @on(MatchesFound)
    def _matches(self, message: MatchesFound) -> None:
        if message.value != self.query_one("#open-path", PathInput).value:
            return
        shown = message.matches[:8]
        text = "\n".join(shown) + ("\n… and more" if len(message.matches) > 8 else "")
        self.query_one("#open-matches", Static).update(Text(text))

    @on(Input.Submitted, "#open-path")
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        value = event.value.strip()
        if self.checking:
            return
        if not value:
            self._error("type the path of a checkpoint file or folder")
            return
        self.checking = True
        self.query_one("#open-error", Static).update(Text("opening …", style="dim"))
        self.check(value)

    @work(thread=True, exclusive=True, group="check", exit_on_error=False)
    def check(self, value: str) -> None:
        from torchdeck.checkpoints import formats

        path = recent.absolute(value, self.base)
        try:
            if not os.path.isfile(os.path.join(path, "meta.json")):
                import_torch()  # other people's files may need it; one thread at a time imports it
            info = formats.inspect(path, trust=path in self.trusted)
        except TorchdeckError as e:
            if e.code == "untrusted":  # a real checkpoint that needs trust: it opens, refused
                self.post_message(OpenChecked(value, Opened(path, None, list(getattr(e, "globals", None) or []),
                                                            failure_line(e))))
            else:
                self.post_message(OpenChecked(value, None, failure_line(e)))
            return
        except Exception as e:  # a reader's bug: said in one line, the traceback in the log
            log.error("opening %s failed", path, exc_info=e)
            self.post_message(OpenChecked(value, None, failure_line(e) + "  (l: log)"))
            return
        self.post_message(OpenChecked(value, Opened(path, info)))

    @on(OpenChecked)
    def _checked(self, message: OpenChecked) -> None:
        self.checking = False
        if message.opened is not None:
            self.dismiss(message.opened)
            return
        self._error(message.error)

    def _error(self, text: str) -> None:
        self.query_one("#open-error", Static).update(Text(text, style="red"))
        self.query_one("#open-path", PathInput).focus()
