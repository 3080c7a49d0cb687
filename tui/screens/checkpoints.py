"""Checkpoints: every run's complete checkpoints (step, epoch, loss, size) and their tensors."""

from __future__ import annotations

from rich.markup import escape
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Static
from textual.worker import Worker, WorkerState
from torchdeck.checkpoints import store as ck
from torchdeck.errors import TorchdeckError
from torchdeck.fmt import fmt_bytes, fmt_dims, fmt_number
from torchdeck.models import specs
from torchdeck.runs.store import Run

from ..failures import failure_line
from ..messages import CheckpointDetail, CheckpointsListed, CheckpointVerified
from ..paths import in_workspace
from ..widgets import cursor_key, run_label, short_run_id
from .base import ModeScreen


def checkpoint_loss(metrics: dict) -> str:
    """The loss a checkpoint is known by (validation if it has one, else training), to 4 digits:
    a column of a table; the detail has 6."""
    return fmt_number(metrics.get("val_loss", metrics.get("train_loss")))



class CheckpointsScreen(ModeScreen):
    TITLE_TEXT = "Checkpoints"
    MODE = "checkpoints"
    AUTO_FOCUS = "#ckpt-table"  # never a text field: typed keys would land in it
    BINDINGS = [
        *ModeScreen.BINDINGS,
        Binding("e", "export", "Export to ONNX", id="checkpoints.export"),
        Binding("v", "verify", "Verify hashes", id="checkpoints.verify"),
        Binding("r", "refresh", "Refresh", id="checkpoints.refresh"),
    ]

    def compose(self) -> ComposeResult:
        yield from self.compose_frame()
        with Horizontal(id="ckpt-body"):
            with Vertical(id="ckpt-left", classes="panel") as left:
                left.border_title = "Checkpoints"
                yield DataTable(id="ckpt-table", cursor_type="row", zebra_stripes=True)
            with Vertical(id="ckpt-right", classes="panel") as right:
                right.border_title = "Tensors"
                yield Static("No checkpoint selected.", id="ckpt-detail")
        yield from self.compose_footer()

    def on_mount(self) -> None:
        super().on_mount()
        table = self.query_one("#ckpt-table", DataTable)
        # The run by its name (its start time when it has none) and the id's suffix, which
        # `RUN` arguments accept; the epoch is in the detail.
        for label, key in (("Run", "run"), ("Id", "id"), ("Step", "step"), ("Loss", "loss"), ("Size", "size")):
            table.add_column(label, key=key)
        self.items: dict[str, tuple[str, ck.CheckpointInfo]] = {}
        self.names: dict[str, str] = {}
        self.redraw = True  # draw the next listing even if it is the same (after a failure, a refresh)
        self.list_checkpoints()
        self.poll_while_shown(self.list_checkpoints)
        table.focus()

    def default_focus_target(self):
        return self.query_one("#ckpt-table")

    def on_screen_resume(self) -> None:
        self.list_checkpoints()

    @work(thread=True, exclusive=True, group="list", exit_on_error=False)
    def list_checkpoints(self) -> None:
        items = ck.workspace_checkpoints(self.app.store)
        names = {}
        for run_id in dict.fromkeys(run_id for run_id, _ in items):
            names[run_id] = run_name(self.app.store, run_id)
        self.post_message(CheckpointsListed(items, names))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        # The app tells the user once (and logs the traceback); the panel says it while it lasts.
        if event.worker.name == "list_checkpoints" and event.state == WorkerState.ERROR:
            self.items = {}
            self.redraw = True
            self.query_one("#ckpt-table", DataTable).clear()
            self.query_one("#ckpt-detail", Static).update(
                Text(f"Cannot list checkpoints: {failure_line(event.worker.error)}", style="red"))

    @on(CheckpointsListed)
    def _listed(self, message: CheckpointsListed) -> None:
        keys = [str(info.path) for _, info in message.items]
        if not self.redraw and keys == list(self.items) and message.names == self.names:
            return
        self.redraw = False
        table = self.query_one("#ckpt-table", DataTable)
        selected = self.selected_path()
        table.clear()
        self.items = {str(info.path): (run_id, info) for run_id, info in message.items}
        self.names = message.names
        for run_id, info in message.items:
            # Text, not str: a DataTable reads a str as markup, and a name may hold brackets
            table.add_row(Text(run_label(run_id, message.names.get(run_id))), Text(short_run_id(run_id)), str(info.step),
                          checkpoint_loss(info.metrics), fmt_bytes(info.size), key=str(info.path))
        if selected in self.items:
            table.move_cursor(row=keys.index(selected))
        if not message.items:
            self.query_one("#ckpt-detail", Static).update(
                "No checkpoints yet. Train a model (key 3): each epoch and each stop leaves one.")
        else:
            self._load_detail()

    def selected_path(self) -> str | None:
        return cursor_key(self.query_one("#ckpt-table", DataTable))

    @on(DataTable.RowHighlighted, "#ckpt-table")
    def _row(self, _event) -> None:
        self._load_detail()

    def _load_detail(self) -> None:
        path = self.selected_path()
        if path:
            self.describe(path)

    @work(thread=True, exclusive=True, group="detail", exit_on_error=False)
    def describe(self, path: str) -> None:
        try:
            info = ck.inspect(path)
        except TorchdeckError as e:
            self.post_message(CheckpointDetail(path, f"[red]{escape(str(e))}[/red]"))
            return
        spec = specs.ModelSpec.from_json(info.model_spec) if info.model_spec else None
        trusted = spec is not None and specs.is_trusted(spec, self.app.workspace)
        run_id = self.items.get(path, ("", None))[0]
        lines = [f"[b]{escape(info.name)}[/b]  step {fmt_number(info.step)}, epoch {fmt_number(info.epoch)}"]
        if run_id:
            lines.append(f"run     {escape(self.names.get(run_id) or run_id)}" +
                         (f"  [dim]{escape(run_id)}[/dim]" if self.names.get(run_id, run_id) != run_id else ""))
        lines.append(f"model   {escape(spec.describe()) if spec else '?'}" +
                     ("" if trusted else "  [yellow](not trusted here)[/yellow]"))
        lines += [f"{escape(k.replace('_loss', ' loss')):<7} {fmt_metric(v)}" for k, v in info.metrics.items()]
        lines += [f"{fmt_number(info.num_params)} parameters, {fmt_bytes(info.size)}", ""]
        rows = [(t.name, fmt_dims(t.shape), t.dtype) for t in info.tensors]
        w0 = max([len(r[0]) for r in rows] + [6])
        w1 = max([len(r[1]) for r in rows] + [5])
        lines.append(f"[b]{'tensor':<{w0}}  {'shape':<{w1}}  dtype[/b]")
        lines += [escape(f"{a:<{w0}}  {b:<{w1}}  {c}") for a, b, c in rows]
        lines += ["", f"[dim]{escape(in_workspace(info.path, self.app.workspace.root))}[/dim]"]
        self.post_message(CheckpointDetail(path, "\n".join(lines)))

    @on(CheckpointDetail)
    def _detail(self, message: CheckpointDetail) -> None:
        if message.path == self.selected_path():
            self.query_one("#ckpt-detail", Static).update(message.text)

    def action_export(self) -> None:
        path = self.selected_path()
        if path is None:
            self.cannot("no checkpoint to export: train a model first (key 3)")
            return
        self.app.export_checkpoint(path)

    def action_refresh(self) -> None:
        self.redraw = True
        self.list_checkpoints()

    def action_verify(self) -> None:
        path = self.selected_path()
        if path is None:
            self.cannot("no checkpoint to verify: train a model first (key 3)")
            return
        self.notify("verifying every file's sha256 …", markup=False)
        self.verify(path)

    @work(thread=True, group="verify", exit_on_error=False)
    def verify(self, path: str) -> None:
        problems = ck.verify(path)
        self.post_message(CheckpointVerified(path, problems))

    @on(CheckpointVerified)
    def _verified(self, message: CheckpointVerified) -> None:
        where = in_workspace(message.path, self.app.workspace.root)
        if message.problems:
            self.notify("; ".join(message.problems), title=f"Checkpoint damaged: {where}", severity="error",
                        markup=False)
        else:
            self.notify("every file matches its sha256", title=f"Checkpoint intact: {where}", markup=False)


def run_name(store, run_id: str) -> str:
    """The run's name: summary.json's, else config.json's; '' when it has none (or they are unreadable)."""
    run = Run(store.root / run_id)
    summary = run.summary()
    if summary is not None and summary.name:
        return summary.name
    try:
        return run.config().name
    except (TorchdeckError, OSError, ValueError, TypeError):
        return ""


def fmt_metric(v) -> str:
    """A metric as meta.json holds it: a figure by magnitude, anything else as it is."""
    return fmt_number(v, 6) if v is None or isinstance(v, (int, float)) else escape(str(v))
