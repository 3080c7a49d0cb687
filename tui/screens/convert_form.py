"""Convert a checkpoint's weights: to safetensors or a torch file, optionally cast to bf16 or
fp16, written to an output path (a default is offered; an existing file is never overwritten).
The form only asks; the screen runs `ops.convert` in a worker."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, RadioButton, RadioSet, Static
from torchdeck.checkpoints import recent
from torchdeck.errors import TorchdeckError

from ..failures import failure_line

TARGETS = (("safetensors", "safetensors (no pickle)"), ("pt", "torch file (.pt, a plain state dict)"))
DTYPES = ((None, "keep each tensor's dtype"), ("bf16", "bf16"), ("fp16", "fp16"))


@dataclass
class ConvertRequest:
    to: str
    dtype: str | None
    out: str


def default_out(source: str, to: str, dtype: str | None, out_dir: str | None) -> str:
    """Beside the source (ops.default_convert_out), or in `out_dir` for a run's checkpoint (its
    run's checkpoints folder holds checkpoint directories only)."""
    from torchdeck.checkpoints.ops import default_convert_out

    p = default_convert_out(Path(source), to, dtype)
    if out_dir is not None:
        run = Path(source).parent.parent.name
        p = Path(out_dir) / f"{run}-{p.name}"
    n = 1
    free = p
    while os.path.lexists(free) and n < 1000:  # the source itself, an earlier conversion
        free = p.with_name(f"{p.stem}-{n}{p.suffix}")
        n += 1
    return str(free)


class ConvertForm(ModalScreen[ConvertRequest | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="convert.cancel")]

    def __init__(self, source: str, shown: str, base: str, out_dir: str | None = None):
        super().__init__()
        self.source, self.shown, self.base, self.out_dir = source, shown, base, out_dir
        self.to, self.dtype = "safetensors", None
        self.default = default_out(source, self.to, self.dtype, out_dir)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="convert-box") as box:
            box.border_title = "Convert checkpoint"
            yield Static(Text(self.shown, style="bold"))
            yield Label("Write as")
            with RadioSet(id="convert-to"):
                for i, (_, label) in enumerate(TARGETS):
                    yield RadioButton(label, value=i == 0)
            yield Label("Floating-point tensors")
            with RadioSet(id="convert-dtype"):
                for i, (_, label) in enumerate(DTYPES):
                    yield RadioButton(label, value=i == 0)
            yield Label("Output file (never overwritten)")
            yield Input(self.default, id="convert-out")
            yield Static("", id="convert-error")
            yield Static("Tab moves, arrows and Space choose; Enter in the output field converts; Escape cancels.",
                         classes="dim")

    def on_mount(self) -> None:
        self.query_one("#convert-to", RadioSet).focus()

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(RadioSet.Changed)
    def _changed(self, event: RadioSet.Changed) -> None:
        if event.radio_set.id == "convert-to":
            self.to = TARGETS[event.index][0]
        else:
            self.dtype = DTYPES[event.index][0]
        field = self.query_one("#convert-out", Input)
        new_default = default_out(self.source, self.to, self.dtype, self.out_dir)
        if field.value == self.default:  # not edited by hand: follow the choices
            field.value = new_default
        self.default = new_default

    @on(Input.Submitted, "#convert-out")
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        from torchdeck.checkpoints import ops

        value = event.value.strip()
        if not value:
            self._error("give the output file's path")
            return
        out = recent.absolute(value, self.base)
        try:
            ops.check_convert_out(out, self.to)
        except TorchdeckError as e:
            self._error(failure_line(e))
            return
        self.dismiss(ConvertRequest(self.to, self.dtype, out))

    def _error(self, text: str) -> None:
        self.query_one("#convert-error", Static).update(Text(text, style="red"))
        self.query_one("#convert-out", Input).focus()
