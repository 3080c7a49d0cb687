"""Views opened from the Checkpoints screen that compute in a thread: per-tensor statistics of
a subtree, and the diff of two checkpoints. The work belongs to the view: leaving it (Escape)
cancels it, and a thread checks that between tensors."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static
from textual.worker import Worker, WorkerState, get_current_worker
from torchdeck.fmt import fmt_count, fmt_dims, fmt_number

from ..failures import failure_line
from ..heavy import import_torch

BATCH_SECONDS = 0.2  # rows reach the table at most this often: one message, not one per tensor


@dataclass
class StatsRows(Message):
    rows: list[tuple]
    done: int
    finished: bool = False
    seconds: float = 0.0
    run: int = 0  # which computation (one stopped by leaving may still post)


@dataclass
class DiffReady(Message):
    report: dict = field(default_factory=dict)


class StatsView(ModalScreen[None]):
    """min, max, mean, std, NaN and inf counts of each tensor under a tree node."""

    BINDINGS = [Binding("escape,q", "close", "Close", id="stats.close")]

    def __init__(self, path: str, shown: str, what: str, names: list[str], trust: bool = False):
        super().__init__()
        self.path, self.shown, self.what, self.names, self.trust = path, shown, what, names, trust
        self.done = 0
        self.nonfinite = 0
        self.finished = False
        self.suspended = False
        self.run = 0

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide", id="stats-box") as box:
            box.border_title = "Tensor statistics"
            yield Static(Text.assemble((self.shown, "bold"), "  ", (self.what, "dim")), id="stats-title")
            yield Static("", id="stats-status")
            yield DataTable(id="stats-table", cursor_type="row", zebra_stripes=True)
            yield Static("Escape closes (and stops the computation).", classes="dim")

    def on_mount(self) -> None:
        table = self.query_one("#stats-table", DataTable)
        for label in ("Tensor", "Min", "Max", "Mean", "Std", "NaN", "Inf"):
            table.add_column(label, key=label.lower())
        table.focus()
        self._status()
        self.compute()

    def action_close(self) -> None:
        self.dismiss(None)  # the worker belongs to this screen: cancelled with it

    def on_screen_suspend(self) -> None:
        """Left for another screen (1-4, help): the computation stops; it starts again on return."""
        if not self.finished:
            self.suspended = True
            self.workers.cancel_group(self, "stats")

    def on_screen_resume(self) -> None:
        if self.suspended and not self.finished:
            self.suspended = False
            self.query_one("#stats-table", DataTable).clear()
            self.done = self.nonfinite = 0
            self._status()
            self.compute()

    def _status(self, seconds: float | None = None) -> None:
        n = len(self.names)
        if self.finished:
            bad = f"; {fmt_count(self.nonfinite)} with NaN or inf" if self.nonfinite else "; all finite"
            text = Text(f"{fmt_count(self.done)} tensor{'s' if self.done != 1 else ''}{bad}"
                        + (f" ({seconds:.1f} s)" if seconds is not None else ""),
                        style="red" if self.nonfinite else "green")
        else:
            text = Text(f"computing: {fmt_count(self.done)} of {fmt_count(n)} tensors …", style="dim")
        self.query_one("#stats-status", Static).update(text)

    @work(thread=True, exclusive=True, group="stats", exit_on_error=False)
    def compute(self) -> None:
        run = self.run = self.run + 1
        import_torch()
        from torchdeck.checkpoints import ops
        from torchdeck.checkpoints.formats.base import tensor_stats

        worker = get_current_worker()
        t0 = last = time.monotonic()
        rows: list[tuple] = []
        done = 0
        for name, t in ops.tensors_named(self.path, self.names, trust=self.trust):
            if worker.is_cancelled:
                return
            st = tensor_stats(t)
            rows.append((name, st))
            done += 1
            if time.monotonic() - last > BATCH_SECONDS:
                self.post_message(StatsRows(rows, done, run=run))
                rows, last = [], time.monotonic()
        if not worker.is_cancelled:
            self.post_message(StatsRows(rows, done, True, time.monotonic() - t0, run))

    @on(StatsRows)
    def _rows(self, message: StatsRows) -> None:
        if message.run != self.run:
            return
        table = self.query_one("#stats-table", DataTable)
        out = []
        for name, st in message.rows:
            bad = st["nan"] or st["inf"]
            self.nonfinite += bool(bad)
            out.append((Text(name, style="red" if bad else ""), fmt_number(st["min"]), fmt_number(st["max"]),
                        fmt_number(st["mean"]), fmt_number(st["std"]), fmt_count(st["nan"]), fmt_count(st["inf"])))
        table.add_rows(out)
        self.done = message.done
        self.finished = message.finished
        self._status(message.seconds if message.finished else None)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            self.query_one("#stats-status", Static).update(
                Text(f"cannot compute statistics: {failure_line(event.worker.error)}", style="red"))


class DiffView(ModalScreen[None]):
    """Keys only in A or B, shape and dtype changes, and the max abs difference of each common
    tensor, largest first (ops.diff)."""

    BINDINGS = [Binding("escape,q", "close", "Close", id="diff.close")]

    def __init__(self, a: str, b: str, shown_a: str, shown_b: str, trust_a: bool = False, trust_b: bool = False):
        super().__init__()
        self.a, self.b, self.shown_a, self.shown_b = a, b, shown_a, shown_b
        self.trust_a, self.trust_b = trust_a, trust_b
        self.report: dict | None = None

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide", id="diff-box") as box:
            box.border_title = "Diff"
            yield Static(Text.assemble(("A ", "bold"), self.shown_a, "\n", ("B ", "bold"), self.shown_b))
            yield Static(Text("comparing every tensor …", style="dim"), id="diff-status")
            yield DataTable(id="diff-table", cursor_type="row", zebra_stripes=True)
            yield Static("Escape closes.", classes="dim")

    def on_mount(self) -> None:
        table = self.query_one("#diff-table", DataTable)
        for label in ("Tensor", "Difference"):
            table.add_column(label, key=label.lower())
        table.focus()
        self.compare()

    def action_close(self) -> None:
        self.dismiss(None)

    @work(thread=True, exclusive=True, group="diff", exit_on_error=False)
    def compare(self) -> None:
        import_torch()
        from torchdeck.checkpoints import ops

        report = ops.diff(self.a, self.b, trust_a=self.trust_a, trust_b=self.trust_b)
        if not get_current_worker().is_cancelled:
            self.post_message(DiffReady(report))

    @on(DiffReady)
    def _ready(self, message: DiffReady) -> None:
        r = self.report = message.report
        rows: list[tuple] = []
        rows += [(Text(k), Text("only in A", style="yellow")) for k in r["only_in_a"]]
        rows += [(Text(k), Text("only in B", style="yellow")) for k in r["only_in_b"]]
        for c in r["changed"]:
            a, b = c["a"], c["b"]
            rows.append((Text(c["name"]), Text(f"{fmt_dims(a['shape'], '')} {a['dtype']} -> "
                                               f"{fmt_dims(b['shape'], '')} {b['dtype']}", style="yellow")))
        differing = 0
        for t in r["tensors"]:
            d = t["max_abs_diff"]
            differing += d != 0
            rows.append((Text(t["name"]), Text("NaN/inf" if d is None else f"max abs {d:.3g}",
                                               style="red" if d is None else "" if d else "dim")))
        self.query_one("#diff-table", DataTable).add_rows(rows)
        if r["identical"]:
            status = Text(f"identical: {fmt_count(len(r['tensors']))} tensors, every value equal", style="green")
        else:
            parts = [f"{fmt_count(len(r['only_in_a']))} only in A", f"{fmt_count(len(r['only_in_b']))} only in B",
                     f"{fmt_count(len(r['changed']))} shape/dtype changes",
                     f"{fmt_count(differing)} of {fmt_count(len(r['tensors']))} common tensors differ"]
            status = Text("differ: " + ", ".join(parts), style="yellow")
        self.query_one("#diff-status", Static).update(status)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state == WorkerState.ERROR:
            self.query_one("#diff-status", Static).update(
                Text(f"cannot compare: {failure_line(event.worker.error)}", style="red"))
