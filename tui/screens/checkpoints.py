"""Checkpoints: every run's complete checkpoints (step, epoch, loss, size) and their tensors."""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import DataTable, Static
from torchdeck.checkpoints import store as ck
from torchdeck.errors import TorchdeckError
from torchdeck.models import specs

from ..widgets import cursor_key, short_run_label
from .base import ModeScreen


def fmt_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def fmt_loss(metrics: dict) -> str:
    v = metrics.get("val_loss", metrics.get("train_loss"))
    return "-" if v is None else f"{v:.4g}"


class CheckpointsListed(Message):
    def __init__(self, items: list) -> None:
        super().__init__()
        self.items = items

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, CheckpointsListed)


class CheckpointDetail(Message):
    def __init__(self, path: str, text: str) -> None:
        super().__init__()
        self.path = path
        self.text = text


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
        for label, key in (("Run", "run"), ("Step", "step"), ("Epoch", "epoch"), ("Loss", "loss"), ("Size", "size")):
            table.add_column(label, key=key)
        self.items: dict[str, tuple[str, ck.CheckpointInfo]] = {}
        self.list_checkpoints()
        self.poll_while_shown(self.list_checkpoints)
        table.focus()

    def default_focus_target(self):
        return self.query_one("#ckpt-table")


    def on_screen_resume(self) -> None:
        self.list_checkpoints()

    @work(thread=True, exclusive=True, group="list", exit_on_error=False)
    def list_checkpoints(self) -> None:
        self.post_message(CheckpointsListed(ck.workspace_checkpoints(self.app.store)))

    @on(CheckpointsListed)
    def _listed(self, message: CheckpointsListed) -> None:
        keys = [str(info.path) for _, info in message.items]
        if keys == list(self.items):
            return
        table = self.query_one("#ckpt-table", DataTable)
        selected = self.selected_path()
        table.clear()
        self.items = {str(info.path): (run_id, info) for run_id, info in message.items}
        for run_id, info in message.items:
            table.add_row(short_run_label(run_id), str(info.step), str(info.epoch), fmt_loss(info.metrics), fmt_size(info.size),
                          key=str(info.path))
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
            self.post_message(CheckpointDetail(path, f"[red]{e}[/red]"))
            return
        spec = specs.ModelSpec.from_json(info.model_spec) if info.model_spec else None
        trusted = spec is not None and specs.is_trusted(spec, self.app.workspace)
        lines = [f"[b]{info.name}[/b]  step {info.step}, epoch {info.epoch}",
                 f"model   {spec.describe() if spec else '?'}" + ("" if trusted else "  [yellow](not trusted here)[/yellow]")]
        lines += [f"{k.replace('_loss', ' loss'):<7} {v:.6g}" for k, v in info.metrics.items()]
        lines += [f"{info.num_params:,} parameters, {fmt_size(info.size)}", ""]
        rows = [(t.name, "x".join(map(str, t.shape)) or "scalar", t.dtype) for t in info.tensors]
        w0 = max([len(r[0]) for r in rows] + [6])
        w1 = max([len(r[1]) for r in rows] + [5])
        lines.append(f"[b]{'tensor':<{w0}}  {'shape':<{w1}}  dtype[/b]")
        lines += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
        lines += ["", f"[dim]{info.path}[/dim]"]
        self.post_message(CheckpointDetail(path, "\n".join(lines)))

    @on(CheckpointDetail)
    def _detail(self, message: CheckpointDetail) -> None:
        if message.path == self.selected_path():
            self.query_one("#ckpt-detail", Static).update(message.text)

    def action_export(self) -> None:
        path = self.selected_path()
        if path:
            self.app.export_checkpoint(path)

    def action_refresh(self) -> None:
        self.items = {}
        self.list_checkpoints()

    def action_verify(self) -> None:
        path = self.selected_path()
        if path:
            self.verify(path)

    @work(thread=True, group="verify", exit_on_error=False)
    def verify(self, path: str) -> None:
        problems = ck.verify(path)
        if problems:
            self.app.call_from_thread(self.notify, "; ".join(problems), title="Checkpoint damaged", severity="error")
        else:
            self.app.call_from_thread(self.notify, "every file matches its sha256", title="Checkpoint intact")
