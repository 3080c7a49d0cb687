"""Models: registered and built-in models; the selected one's summary (sizes, training memory),
its layer tree with output shapes, its default dataset and its repr. Register a model of your
own (a), remove one (d), train it (t), export its latest checkpoint (e)."""

from __future__ import annotations

import logging
import os
from typing import Any

from rich.markup import escape
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import ContentSwitcher, DataTable, Static, Tree
from textual.widgets.data_table import CellDoesNotExist
from torchdeck.errors import TorchdeckError
from torchdeck.fmt import fmt_bytes, fmt_count
from torchdeck.models import catalogue as catalogue_mod
from torchdeck.models import specs
from torchdeck.options import OPTIMIZERS

from ..heavy import import_torch
from ..messages import DataDescribed, ParamsCounted, Summarized
from ..summary_view import fmt_value
from ..widgets import cursor_key
from .base import ModeScreen
from .dialogs import ConfirmRemove
from .model_form import AddModelScreen

log = logging.getLogger("torchdeck.tui")

VIEWS = (("summary", "Summary"), ("layers", "Layers"), ("data", "Data"), ("repr", "Repr"))
BATCH_SIZES = (1, 8, 32, 128, 512)


def params_cell(n: int | None) -> str:
    """A parameter count in the table's 7 columns: 5,829 as is, 124,439,808 as 124M (the summary
    has the exact figure)."""
    if n is None:
        return "?"
    if n < 10_000_000:
        return fmt_count(n)
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M")):
        if n >= div:
            return f"{n / div:.0f}{unit}" if n / div >= 100 else f"{n / div:.1f}{unit}"
    return fmt_count(n)  # pragma: no cover


def shown_name(e: catalogue_mod.ModelEntry) -> str:
    """The model's one name, as the command line and the Training form say it (`builtin:mlp` for a
    built-in, the registered name otherwise); used in the table and in messages."""
    return e.name


class ModelsScreen(ModeScreen):
    TITLE_TEXT = "Models"
    MODE = "models"
    AUTO_FOCUS = "#models-table"  # never a text field: typed keys would land in it
    BINDINGS = [
        *ModeScreen.BINDINGS,
        Binding("a", "add", "Add", id="models.add"),
        Binding("d,delete", "remove", "Remove", id="models.remove"),
        Binding("t", "train", "Train", id="models.train"),
        Binding("e", "export", "Export", id="models.export"),
        Binding("v", "next_view", "View", id="models.view"),
        Binding("b", "next_batch", "Batch", id="models.batch"),
        Binding("o", "next_optimizer", "Optimizer", id="models.optimizer", show=False),
        Binding("r", "refresh", "Refresh", id="models.refresh", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield from self.compose_frame()
        with Horizontal(id="models-body"):
            with Vertical(id="models-left", classes="panel") as left:
                left.border_title = "Models"
                yield DataTable(id="models-table", cursor_type="row", zebra_stripes=True)
            with Vertical(id="models-right", classes="panel") as right:
                right.border_title = "Summary"
                yield Static("", id="view-tabs")
                with ContentSwitcher(initial="summary", id="model-views"):
                    with VerticalScroll(id="summary"):
                        yield Static("", id="model-detail")
                    yield Tree("model", id="layers")
                    with VerticalScroll(id="data"):
                        yield Static("", id="data-detail")
                    with VerticalScroll(id="repr"):
                        yield Static("", id="repr-detail", markup=False)
        yield from self.compose_footer()

    def on_mount(self) -> None:
        super().on_mount()
        table = self.query_one("#models-table", DataTable)
        table.add_column("Name", key="name")
        # Fixed widths: the figures arrive after the rows, and the columns must not jump then.
        table.add_column("Params", key="params", width=7)
        table.add_column("Size", key="size", width=8)
        table.add_column("Spec", key="spec")  # last: off to the right on a narrow terminal
        self.entries: dict[str, catalogue_mod.ModelEntry] = {}
        self.list_error = ""  # why the list could not be read, while it cannot
        self.summaries: dict[tuple[str, int, str], Any] = {}
        self.errors: dict[str, str] = {}
        self.data_text: dict[str, str] = {}
        self.view = "summary"
        self.batch = 32
        self.optimizer = "adam"
        self.query_one("#layers", Tree).show_root = True
        self._draw_tabs()
        self.refresh_models()

    def default_focus_target(self):
        return self.query_one("#models-table")

    # -- the list ----------------------------------------------------------------------------
    def refresh_models(self, select: str | None = None) -> None:
        table = self.query_one("#models-table", DataTable)
        keep = select or cursor_key(table)
        try:
            entries = catalogue_mod.catalogue(self.app.workspace)
        except TorchdeckError as e:  # a damaged models.toml: say so, keep what is listed
            self.list_error = f"Cannot list models: {e}\nFix or move the file, then press r."
            self.cannot(f"cannot list models: {e}", severity="error")
            self._show_selected()
            return
        self.list_error = ""
        problem = self.app.workspace.registry_problem
        if problem:  # a damaged models.toml: built-ins still listed, the problem told once per change
            self.list_error = f"{problem}\nBuilt-in models are listed; fix or move the file, then press r."
            if problem != getattr(self, "_told_registry", None):
                self._told_registry = problem
                self.cannot(problem, severity="error")
        table.clear()
        self.entries = {e.name: e for e in entries}
        for e in self.entries.values():
            # Text, not str: a DataTable reads a str as markup, and a name or spec may hold brackets
            table.add_row(Text(shown_name(e)), "…", "…", Text(e.spec if e.registered else "builtin"), key=e.name)
        if keep in self.entries:
            table.move_cursor(row=list(self.entries).index(keep))
        if self.app.torch_ready:
            self.count_params()
        self._show_selected()

    def on_torch_ready(self, _message) -> None:
        self.count_params()
        self._show_selected()

    @work(thread=True, exclusive=True, group="count", exit_on_error=False)
    def count_params(self) -> None:
        import_torch()
        for e in list(self.entries.values()):
            catalogue_mod.count(self.app.workspace, e)
        self.post_message(ParamsCounted())

    @on(ParamsCounted)
    def _fill_params(self) -> None:
        table = self.query_one("#models-table", DataTable)
        for e in self.entries.values():
            try:
                table.update_cell(e.name, "params", "error" if e.error else params_cell(e.num_params))
                table.update_cell(e.name, "size", fmt_bytes(e.fp32_bytes) if e.num_params is not None else "-")
            except CellDoesNotExist:
                pass  # the list changed meanwhile
        self._show_selected()

    @on(DataTable.RowHighlighted, "#models-table")
    def _row(self, _event) -> None:
        self._show_selected()

    def selected(self) -> catalogue_mod.ModelEntry | None:
        key = cursor_key(self.query_one("#models-table", DataTable))
        return self.entries.get(key) if key else None

    # -- the selected model ------------------------------------------------------------------
    def _show_selected(self) -> None:
        e = self.selected()
        detail = self.query_one("#model-detail", Static)
        if e is None:
            detail.update(Text(self.list_error, style="red") if self.list_error else "No models. Press a to register one.")
            return
        key = (e.name, self.batch, self.optimizer)
        if key in self.summaries:
            self._draw_summary(e, self.summaries[key])
        elif e.name in self.errors and e.error:
            detail.update(self._head(e) + f"\n\n[red]{escape(e.error)}[/red]")
        else:
            detail.update(self._head(e) + ("\n\n… summarizing" if self.app.torch_ready else "\n\n… (importing torch)"))
            if self.app.torch_ready:
                self.summarize(e.name, self.batch, self.optimizer)
        if e.name in self.data_text:
            self.query_one("#data-detail", Static).update(self.data_text[e.name])
        elif self.app.torch_ready:
            self.query_one("#data-detail", Static).update("… loading the dataset")
            self.describe_data(e.name)

    def _head(self, e: catalogue_mod.ModelEntry) -> str:
        lines = [f"[b]{escape(e.name)}[/b]" + (f"  {escape(e.spec)}" if e.spec != e.name else "")]
        if e.kwargs:
            lines.append("arguments  " + escape(", ".join(f"{k}={v!r}" for k, v in e.kwargs.items())))
        if e.input_shape:
            lines.append(f"input      batch x {' x '.join(map(str, e.input_shape))}")
        if e.description:
            lines.append(f"[dim]{escape(e.description)}[/dim]")
        return "\n".join(lines)

    @work(thread=True, exclusive=True, group="summary", exit_on_error=False)
    def summarize(self, name: str, batch: int, optimizer: str) -> None:
        from torchdeck.models import summary

        try:
            import_torch()
            spec = specs.resolve(name, self.app.workspace)
            result = summary.summarize(spec, batch_size=batch, optimizer=optimizer, import_root=os.getcwd())
        except TorchdeckError as e:
            self.post_message(Summarized(name, batch, optimizer, error=str(e)))
            return
        except Exception as e:  # a user's model may raise anything
            log.exception("summarizing %s failed", name)
            self.post_message(Summarized(name, batch, optimizer, error=f"{type(e).__name__}: {e}"))
            return
        self.post_message(Summarized(name, batch, optimizer, summary=result))

    @on(Summarized)
    def _summarized(self, message: Summarized) -> None:
        e = self.entries.get(message.name)
        if e is None:
            return
        if message.error:
            e.error = message.error
            self.errors[message.name] = message.error
        else:
            self.summaries[(message.name, message.batch, message.optimizer)] = message.summary
        sel = self.selected()
        if sel is not None and sel.name == message.name:
            self._show_selected()

    def _draw_summary(self, e: catalogue_mod.ModelEntry, s: Any) -> None:
        from ..summary_view import render_overview

        self.query_one("#model-detail", Static).update(
            self._head(e) + "\n\n" + render_overview(s, markup=True) +
            f"\n\n[dim]b batch size ({self.batch}), o optimizer ({self.optimizer}), v next view[/dim]")
        self.query_one("#repr-detail", Static).update(s.repr)
        self._fill_tree(s)

    def _fill_tree(self, s: Any) -> None:
        from ..summary_view import layer_label

        tree = self.query_one("#layers", Tree)
        tree.clear()
        layers = list(s.layers)
        if not layers:
            return
        root = layers[0]
        tree.root.set_label(layer_label(root, s.forward_ok))
        nodes = {root.path: tree.root}
        for layer in layers[1:]:
            parent = nodes.get(layer.parent, tree.root)
            has_children = any(other.parent == layer.path for other in layers)
            node = parent.add(layer_label(layer, s.forward_ok), expand=layer.depth < 2, allow_expand=has_children)
            nodes[layer.path] = node
        tree.root.expand()

    @work(thread=True, exclusive=True, group="data", exit_on_error=False)
    def describe_data(self, name: str) -> None:
        from torchdeck.data import sources as data

        try:
            import_torch()
            spec = specs.resolve(name, self.app.workspace)
            b = spec.builtin
            if b is None:
                self.post_message(DataDescribed(name, "This model has no built-in dataset: give one when training "
                                                "(a data spec: synthetic:NAME, file:PATH or package.module:callable)."))
                return
            info = data.describe(b.default_data, import_root=os.getcwd())
            text = f"[b]{escape(b.default_data)}[/b] (this model's default)\n\n" + escape("\n".join(
                f"{k.replace('_', ' '):<14} {fmt_value(v)}" for k, v in info.to_json().items() if k != "spec"))
        except TorchdeckError as e:
            text = f"[red]{escape(str(e))}[/red]"
        except Exception as e:  # a user's data callable may raise anything
            log.exception("describing the data of %s failed", name)
            text = f"[red]{escape(f'{type(e).__name__}: {e}')}[/red]"
        self.post_message(DataDescribed(name, text))

    @on(DataDescribed)
    def _described(self, message: DataDescribed) -> None:
        self.data_text[message.name] = message.text
        sel = self.selected()
        if sel is not None and sel.name == message.name:
            self.query_one("#data-detail", Static).update(message.text)

    # -- views and estimate settings -------------------------------------------------------------
    def _draw_tabs(self) -> None:
        parts = []
        for key, title in VIEWS:
            parts.append(f"[reverse] {title} [/reverse]" if key == self.view else f" [dim]{title}[/dim] ")
        self.query_one("#view-tabs", Static).update("".join(parts) + "  [dim](v)[/dim]")
        self.query_one("#models-right").border_title = dict(VIEWS)[self.view]

    def action_next_view(self) -> None:
        keys = [k for k, _ in VIEWS]
        self.view = keys[(keys.index(self.view) + 1) % len(keys)]
        self.query_one("#model-views", ContentSwitcher).current = self.view
        self._draw_tabs()

    def action_next_batch(self) -> None:
        self.batch = BATCH_SIZES[(BATCH_SIZES.index(self.batch) + 1) % len(BATCH_SIZES)] if self.batch in BATCH_SIZES else 32
        self._show_selected()

    def action_next_optimizer(self) -> None:
        names = list(OPTIMIZERS)
        self.optimizer = names[(names.index(self.optimizer) + 1) % len(names)]
        self._show_selected()

    # -- actions -----------------------------------------------------------------------------
    def action_add(self) -> None:
        def added(name: str | None) -> None:
            if name:
                self.notify(f"registered {name}", markup=False)
                self.refresh_models(select=name)

        self.app.push_screen(AddModelScreen(), added)

    def action_remove(self) -> None:
        e = self.selected()
        if e is None:
            self.cannot("no model to remove: the list is empty")
            return
        if not e.registered:
            self.cannot(f"{shown_name(e)} is built in: it cannot be removed")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                try:
                    self.app.workspace.remove_model(e.name)
                except TorchdeckError as err:
                    self.notify(str(err), severity="error", markup=False)
                    return
                self.notify(f"removed {e.name}; its runs and checkpoints stay", markup=False)
                self.refresh_models()

        self.app.push_screen(ConfirmRemove(e.name, e.spec), answered)

    def action_train(self) -> None:
        e = self.selected()
        if e is None:
            self.cannot("no model to train: register one first (a)")
            return
        self.app.train_model(e.name)

    def action_export(self) -> None:
        from torchdeck.checkpoints import store as ck

        e = self.selected()
        if e is None:
            self.cannot("no model to export: register one first (a)")
            return
        try:
            found = ck.workspace_checkpoints(self.app.store)
        except (TorchdeckError, OSError) as err:
            self.cannot(f"cannot list checkpoints: {err}", severity="error")
            return
        for _, info in found:
            spec = info.model_spec or {}
            if spec.get("registered_as") == e.name or (not e.registered and spec.get("spec") == e.spec
                                                        and not spec.get("registered_as")):
                self.app.export_checkpoint(str(info.path))
                return
        self.cannot(f"no checkpoint of {shown_name(e)} yet: train it first (t)")

    def action_refresh(self) -> None:
        self._told_registry = None  # asked for: a damaged registry is told again
        self.summaries.clear()
        self.errors.clear()
        self.data_text.clear()
        self.refresh_models()
