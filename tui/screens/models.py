"""Models: the registered and built-in models, with their parameter counts."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Static

from engine import models as catalogue_mod, specs

from ..heavy import import_torch
from ..widgets import cursor_key
from .base import ModeScreen


class ModelsScreen(ModeScreen):
    TITLE_TEXT = "Models"
    MODE = "models"
    AUTO_FOCUS = "#models-table"  # never a text field: typed keys would land in it
    BINDINGS = [
        *ModeScreen.BINDINGS,
        Binding("t", "train", "Train", id="models.train"),
        Binding("r", "refresh", "Refresh", id="models.refresh"),
    ]

    def compose(self) -> ComposeResult:
        yield from self.compose_frame()
        with Horizontal(id="models-body"):
            with Vertical(id="models-left", classes="panel") as left:
                left.border_title = "Models"
                yield DataTable(id="models-table", cursor_type="row", zebra_stripes=True)
            with Vertical(id="models-right", classes="panel") as right:
                right.border_title = "Details"
                yield Static("", id="model-detail")
        yield from self.compose_footer()

    def on_mount(self) -> None:
        super().on_mount()
        table = self.query_one("#models-table", DataTable)
        table.add_column("Name", key="name")
        table.add_column("Spec", key="spec")
        table.add_column("Params", key="params")
        self.entries: dict[str, catalogue_mod.ModelEntry] = {}
        self.refresh_models()
        table.focus()

    def default_focus_target(self):
        return self.query_one("#models-table")

    def refresh_models(self) -> None:
        table = self.query_one("#models-table", DataTable)
        table.clear()
        self.entries = {e.name: e for e in catalogue_mod.catalogue(self.app.workspace)}
        for e in self.entries.values():
            table.add_row(e.name, e.spec, "…", key=e.name)
        if self.app.torch_ready:
            self.count_params()
        self._show_selected()

    def on_torch_ready(self, _message) -> None:
        self.count_params()

    @work(thread=True, exclusive=True, group="count", exit_on_error=False)
    def count_params(self) -> None:
        import_torch()
        for e in list(self.entries.values()):
            catalogue_mod.count(self.app.workspace, e)
        self.app.call_from_thread(self._fill_params)

    def _fill_params(self) -> None:
        table = self.query_one("#models-table", DataTable)
        for e in self.entries.values():
            text = f"{e.num_params:,}" if e.num_params is not None else ("error" if e.error else "…")
            try:
                table.update_cell(e.name, "params", text)
            except Exception:
                pass
        self._show_selected()

    @on(DataTable.RowHighlighted, "#models-table")
    def _row(self, _event) -> None:
        self._show_selected()

    def selected(self) -> catalogue_mod.ModelEntry | None:
        key = cursor_key(self.query_one("#models-table", DataTable))
        return self.entries.get(key) if key else None

    def _show_selected(self) -> None:
        e = self.selected()
        detail = self.query_one("#model-detail", Static)
        if e is None:
            detail.update("No models.")
            return
        try:
            b = specs.resolve(e.spec).builtin
        except Exception:
            b = None
        params = f"{e.num_params:,}" if e.num_params is not None else "… (importing torch)"
        lines = [f"[b]{e.name}[/b]", "", f"spec         {e.spec}", f"parameters   {params}"]
        if e.num_params is not None:
            lines.append(f"fp32 weights {e.num_params * 4:,} bytes")
        if b is not None:
            lines += [f"input        batch x {' x '.join(map(str, b.input_shape))}",
                      f"data         {b.default_data}", f"loss         {b.loss}"]
        if e.error:
            lines += ["", f"[red]{e.error}[/red]"]
        if e.description:
            lines += ["", e.description]
        lines += ["", "[dim]Press t to train this model.[/dim]"]
        detail.update("\n".join(lines))

    def action_train(self) -> None:
        e = self.selected()
        if e is not None:
            self.app.train_model(e.name)

    def action_refresh(self) -> None:
        self.refresh_models()
