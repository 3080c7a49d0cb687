"""The form for a new export (format, opset, dynamic axes, variants) and the dialog that opens any
`.onnx` file. Forms only ask; the Exports screen runs the commands in its export process."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import (
    Button,
    Checkbox,
    Input,
    Label,
    RadioButton,
    RadioSet,
    Static,
)
from torchdeck.checkpoints import recent
from torchdeck.errors import TorchdeckError

from ..failures import failure_line
from ..widgets.path_input import PathInput

FORMATS = (("onnx", "ONNX (validated with ONNX Runtime)"), ("pt2", "torch.export .pt2"),
           ("safetensors", "weights only, .safetensors"))
AXES = (("batch", "batch"), ("batch,sequence", "batch and sequence"))
VARIANTS = (("optimized", "ORT graph optimization"), ("int8-dynamic", "int8, dynamic (transformers, RNNs)"),
            ("int8-static", "int8, static QDQ calibrated on the run's data (CNNs)"),
            ("fp16", "fp16 (for GPUs; often slower on a CPU)"))


@dataclass
class ExportRequest:
    format: str = "onnx"
    opset: int = 18
    axes: str = "batch"
    variants: list[str] = field(default_factory=list)

    def steps(self, checkpoint: str) -> list[tuple[str, list[str]]]:
        """The commands, in order: the export, then each variant of it."""
        first = ["export", self.format, "--checkpoint", checkpoint]
        if self.format != "safetensors":
            first += ["--dynamic", self.axes]
        if self.format == "onnx":
            first += ["--opset", str(self.opset)]
        steps = [(f"export {self.format}", first)]
        command = {"optimized": ["optimize"], "int8-dynamic": ["quantize", "--mode", "dynamic"],
                   "int8-static": ["quantize", "--mode", "static"], "fp16": ["fp16"]}
        return steps + [(v, ["onnx", command[v][0], "{export}", *command[v][1:]]) for v in self.variants]


class ExportForm(ModalScreen[ExportRequest | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="export_form.cancel")]

    def __init__(self, shown: str):
        super().__init__()
        self.shown = shown
        self.request = ExportRequest()

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="export-form") as box:
            box.border_title = "New export"
            yield Static(Text(self.shown, style="bold"))
            yield Label("Format")
            with RadioSet(id="export-format"):
                for i, (_, label) in enumerate(FORMATS):
                    yield RadioButton(label, value=i == 0)
            yield Label("Opset (ONNX, 7-23)")
            yield Input("18", id="export-opset")
            yield Label("Dynamic axes")
            with RadioSet(id="export-axes"):
                for i, (_, label) in enumerate(AXES):
                    yield RadioButton(label, value=i == 0)
            yield Label("Variants (ONNX), each with its own report")
            for key, label in VARIANTS:
                yield Checkbox(label, id=f"variant-{key}")
            yield Static("", id="export-form-error")
            yield Button("Export", id="export-go", variant="primary")
            yield Static("Tab moves, arrows and Space choose; Enter on Export (or in the opset field) starts; "
                         "Escape cancels.", classes="dim")

    def on_mount(self) -> None:
        self.query_one("#export-format", RadioSet).focus()

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(RadioSet.Changed)
    def _changed(self, event: RadioSet.Changed) -> None:
        if event.radio_set.id == "export-format":
            self.request.format = FORMATS[event.index][0]
        else:
            self.request.axes = AXES[event.index][0]

    @on(Input.Submitted, "#export-opset")
    @on(Button.Pressed, "#export-go")
    def _submit(self, event) -> None:
        event.stop()
        from torchdeck.exports.onnx import check_opset

        text = self.query_one("#export-opset", Input).value.strip()
        try:
            self.request.opset = check_opset(int(text) if text.lstrip("-").isdigit() else text)
        except TorchdeckError as e:
            return self._error(failure_line(e))
        self.request.variants = [k for k, _ in VARIANTS if self.query_one(f"#variant-{k}", Checkbox).value]
        if self.request.variants and self.request.format != "onnx":
            return self._error("variants are made from an ONNX export: choose ONNX, or no variant")
        self.dismiss(self.request)

    def _error(self, text: str) -> None:
        self.query_one("#export-form-error", Static).update(Text(text, style="red"))
        self.query_one("#export-opset", Input).focus()


@dataclass
class OpenOnnx:
    path: str
    dims: str = ""  # sizes of symbolic axes past the batch, NAME=N,... (for bench and variants)


class OpenOnnxDialog(ModalScreen[OpenOnnx | None]):
    """A path field with completion and an optional field for the sizes of symbolic axes;
    Enter in either opens the file when it exists."""

    AUTO_FOCUS = "#onnx-path"
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="open_onnx.cancel")]

    def __init__(self, base: str):
        super().__init__()
        self.base = base

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="open-onnx") as box:
            box.border_title = "Open an ONNX file"
            yield PathInput(self.base, id="onnx-path", placeholder="path/to/model.onnx")
            yield Label("Sizes of symbolic axes past the batch, if it has some (e.g. sequence=128)")
            yield Input("", id="onnx-dims", placeholder="NAME=N,...")
            yield Static("", id="onnx-path-error")
            yield Static("Tab completes; Enter opens; Escape cancels. Any .onnx file: the model zoo's, other "
                         "frameworks' exporters'.", classes="dim")

    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Input.Submitted, "#onnx-path")
    @on(Input.Submitted, "#onnx-dims")
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        from torchdeck.exports.inspect import parse_dims

        value = self.query_one("#onnx-path", Input).value.strip()
        dims = self.query_one("#onnx-dims", Input).value.strip()
        path = recent.absolute(value, self.base) if value else ""
        why = ("give the path of an .onnx file" if not value else
               f"no such file: {value}" if not os.path.exists(path) else
               f"not a file: {value}" if not os.path.isfile(path) else "")
        if not why:
            try:
                parse_dims(dims)
            except TorchdeckError as e:
                why = failure_line(e)
        if why:
            self.query_one("#onnx-path-error", Static).update(Text(why, style="red"))
            return
        self.dismiss(OpenOnnx(path, dims))
