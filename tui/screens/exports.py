"""Exports: export a checkpoint to ONNX and show how closely ONNX Runtime matches PyTorch.

The export runs in a child process (`torchdeck export onnx --json`): the exporter prints from
C++ and Python, and holds the GIL for seconds; neither may reach this screen.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

from rich.markup import escape
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import DataTable, LoadingIndicator, Static
from torchdeck.checkpoints import store as ck
from torchdeck.exports import onnx as exports
from torchdeck.fmt import fmt_bytes as fmt_size

from ..failures import without_cli_hint
from ..messages import CheckpointsListed
from ..paths import home_short, in_workspace
from ..widgets import cursor_key, short_run_label
from .base import ModeScreen
from .checkpoints import checkpoint_loss as fmt_loss
from .dialogs import ConfirmTrust

log = logging.getLogger("torchdeck.tui")


class ExportDone(Message):
    def __init__(self, checkpoint: str, report: dict | None, error: str = "", needs_trust: bool = False) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self.report = report
        self.error = error
        self.needs_trust = needs_trust


class ExportsListed(Message):
    def __init__(self, reports: list[dict]) -> None:
        super().__init__()
        self.reports = reports


def describe_report(r: dict, root: str | Path | None = None) -> str:
    """The report's text (markup); names and paths escaped, the path relative to the workspace.
    An export's report (validation against PyTorch, the latency pair) or a variant's (against its
    source, with its verdict); reports written before issue 13 (a `parity` list) still show."""
    name = f"[b]{escape(Path(r['path']).name)}[/b]"
    if r.get("variant"):
        return describe_variant(r, name, root)
    if r.get("format", "onnx") != "onnx":
        return describe_other(r, name, root)
    v = r.get("validation") or {}
    verdict = "[green]matches PyTorch[/green]" if r.get("ok") else "[red]does NOT match PyTorch[/red]"
    lines = [name, f"ONNX Runtime {verdict}" + (f" ({escape(', '.join(v['providers']))})" if v.get("providers") else ""),
             f"max abs diff {r['max_abs_diff']:.3g}  (atol {r['atol']:g})",
             f"max rel diff {r['max_rel_diff']:.3g}  (rtol {r['rtol']:g})",
             f"onnx.checker {'ok' if r.get('checker_ok') else 'FAILED'} (full check), opset {r['opset']}, "
             f"{escape(str(r['exporter']))}"]
    if r.get("dynamo_error"):
        lines.append(f"[yellow]dynamo exporter failed:[/yellow] {escape(r['dynamo_error'])}")
    if v.get("rows"):
        lines.append("case                 output        max abs    max rel")
        for row in v["rows"]:
            diff = "-" if row["max_abs_diff"] is None else f"{row['max_abs_diff']:.3g}"
            rel = "-" if row["max_rel_diff"] is None else f"{row['max_rel_diff']:.3g}"
            lines.append(f"{escape(row['case']):<20} {escape(row['name'])[:12]:<12} {diff:>9} {rel:>9}"
                         + ("" if row["passed"] else f"  [red]FAIL[/red] {escape(row['note'])}"))
    else:
        lines += ["batch  max abs diff", *[f"{c['batch_size']:>5}  {c['max_abs_diff']:.3g}{'' if c['ok'] else '  FAIL'}"
                                           for c in r.get("parity", [])]]
    acc = v.get("accuracy")
    if acc:
        lines.append(f"{acc['metric']} on validation: PyTorch {acc['pytorch']:.4g}, ONNX {acc['onnx']:.4g} "
                     f"({acc['samples']} samples)")
    bench = (r.get("benchmark") or {}).get("rows")
    if bench:
        lines.append(f"latency p50 (threads {r['benchmark']['threads']})   torch      ORT   eager/ORT")
        for b in bench:
            lines.append(f"  batch {b['batch_size']:<3} {b['pytorch']['p50_ms']:>18.3f} {b['onnxruntime']['p50_ms']:>8.3f}"
                         f" {b['ratio']:>9.2f}x")
    elif r.get("ort_latency_ms") is not None:
        lines.append(f"latency, batch 32: ORT {r['ort_latency_ms']:.3f} ms, torch {r['torch_latency_ms']:.3f} ms")
    axes = ", ".join((r.get("dynamic_axes") or {}).get("input", ["batch"]))
    lines.append(f"{fmt_size(r.get('size', 0))}, {axes} axis dynamic, {r.get('seconds', 0):.1f} s to export"
                 + (", external data" if r.get("external_data") else ""))
    shown = in_workspace(r["path"], root) if root is not None else home_short(r["path"])
    lines.append(f"[dim]{escape(shown)}[/dim]")
    return "\n".join(lines)


def describe_other(r: dict, name: str, root) -> str:
    """A .pt2 (its round trip against PyTorch) or a weights-only .safetensors (read back)."""
    ok = r.get("ok")
    lines = [f"{name}  {escape(str(r.get('format')))}",
             ("[green]round trip matches PyTorch[/green]" if ok else "[red]round trip FAILED[/red]")
             + (f", max abs diff {r['max_abs_diff']:.3g}" if r.get("max_abs_diff") is not None else ""),
             f"{fmt_size(r.get('size', 0))}, {r.get('seconds', 0):.1f} s"]
    shown = in_workspace(r["path"], root) if root is not None else home_short(r["path"])
    lines.append(f"[dim]{escape(shown)}[/dim]")
    return "\n".join(lines)


def describe_variant(r: dict, name: str, root) -> str:
    lines = [f"{name}  {escape(r['variant'])} of {escape(Path(r['source']).name)}",
             f"{fmt_size(r['size'])} ({r['size_ratio'] * 100:.0f}% of its source), onnx.checker "
             f"{'ok' if r.get('checker_ok') else 'FAILED'}",
             f"max abs diff against its source {r['max_abs_diff']:.3g} ({r['dtype']} tolerance "
             f"{'met' if r.get('within_tolerance') else '[yellow]not met[/yellow]'})"]
    for b in r.get("benchmark", []):
        lines.append(f"  batch {b['batch_size']:<3} source {b['source']['p50_ms']:.3f} ms, variant "
                     f"{b['variant']['p50_ms']:.3f} ms, {b['ratio']:.2f}x")
    for v in r.get("verdict", []):
        style = "red" if v.isupper() or v.startswith(("SLOWER", "LESS")) else "green"
        lines.append(f"[{style}]{escape(v)}[/{style}]")
    if r.get("recommendation"):
        lines.append(f"[b]{escape(r['recommendation'])}[/b]")
    shown = in_workspace(r["path"], root) if root is not None else home_short(r["path"])
    lines.append(f"[dim]{escape(shown)}[/dim]")
    return "\n".join(lines)


class ExportsScreen(ModeScreen):
    TITLE_TEXT = "Exports"
    MODE = "exports"
    AUTO_FOCUS = "#export-source"  # never a text field: typed keys would land in it
    BINDINGS = [
        *ModeScreen.BINDINGS,
        Binding("e", "export", "Export to ONNX", id="exports.export"),
        Binding("r", "refresh", "Refresh", id="exports.refresh"),
    ]

    def compose(self) -> ComposeResult:
        yield from self.compose_frame()
        with Horizontal(id="exports-body"):
            with Vertical(id="exports-left", classes="panel") as left:
                left.border_title = "Checkpoint to export"
                yield DataTable(id="export-source", cursor_type="row", zebra_stripes=True)
            with Vertical(id="exports-right"):
                with Vertical(id="export-result-box", classes="panel") as box:
                    box.border_title = "ONNX export"
                    yield LoadingIndicator(id="export-busy")
                    yield Static("Choose a checkpoint and press e to export it to ONNX.\n"
                                 "The result is checked with onnx.checker and against PyTorch with ONNX Runtime.",
                                 id="export-result")
                with Vertical(id="exports-past", classes="panel") as past:
                    past.border_title = "Exported"
                    yield DataTable(id="exports-table", cursor_type="row")
        yield from self.compose_footer()

    def on_mount(self) -> None:
        super().on_mount()
        self.busy = False
        self.query_one("#export-busy").display = False
        src = self.query_one("#export-source", DataTable)
        for label, key in (("Run", "run"), ("Step", "step"), ("Loss", "loss")):
            src.add_column(label, key=key)
        past = self.query_one("#exports-table", DataTable)
        for label, key in (("Format", "format"), ("Max abs diff", "diff"), ("Speed", "speed"), ("Size", "size"),
                           ("File", "file")):
            past.add_column(label, key=key)
        self.sources: list[str] = []
        self.reports: dict[str, dict] = {}
        self._want: str | None = None
        self._export_wanted = False
        self.list_sources()
        self.list_exports()
        self.poll_while_shown(self.list_sources)
        src.focus()

    def default_focus_target(self):
        return self.query_one("#export-source")


    def on_screen_resume(self) -> None:
        self.list_sources()

    # -- sources: every complete checkpoint ----------------------------------------------------
    @work(thread=True, exclusive=True, group="list", exit_on_error=False)
    def list_sources(self) -> None:
        self.post_message(CheckpointsListed(ck.workspace_checkpoints(self.app.store)))

    @on(CheckpointsListed)
    def _sources(self, message: CheckpointsListed) -> None:
        keys = [str(info.path) for _, info in message.items]
        table = self.query_one("#export-source", DataTable)
        if keys != self.sources:
            selected = self._want or self.selected_source()
            table.clear()
            for run_id, info in message.items:
                table.add_row(short_run_label(run_id), str(info.step), fmt_loss(info.metrics), key=str(info.path))
            self.sources = keys
            if selected in keys:
                table.move_cursor(row=keys.index(selected))
        if self._want in keys:
            table.move_cursor(row=keys.index(self._want))
            self._want = None
            if self._export_wanted:
                self._export_wanted = False
                self.action_export()

    def selected_source(self) -> str | None:
        return cursor_key(self.query_one("#export-source", DataTable))

    def choose_checkpoint(self, path: str, *, export: bool = False) -> None:
        """Select a checkpoint (once listed) and, when asked, export it."""
        self._want = path
        self._export_wanted = export
        self.list_sources()

    # -- past exports --------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="past", exit_on_error=False)
    def list_exports(self) -> None:
        self.post_message(ExportsListed(exports.list_exports(self.app.workspace.exports_dir)))

    @on(ExportsListed)
    def _past(self, message: ExportsListed) -> None:
        table = self.query_one("#exports-table", DataTable)
        table.clear()
        self.reports = {}
        for r in message.reports:
            self.reports[r["path"]] = r
            table.add_row(r.get("variant") or r.get("format", "onnx"), f"{r.get('max_abs_diff', 0.0):.3g}",
                          "-" if r.get("speed_ratio") is None else f"{r['speed_ratio']:.2f}x",
                          fmt_size(r.get("size", 0)), Path(r["path"]).name, key=r["path"])

    @on(DataTable.RowSelected, "#exports-table")
    def _show_past(self, event: DataTable.RowSelected) -> None:
        r = self.reports.get(event.row_key.value)
        if r:
            self.query_one("#export-result", Static).update(describe_report(r, self.app.workspace.root))

    # -- exporting -------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action == "export":
            return None if getattr(self, "busy", False) else True
        return True

    @on(DataTable.RowSelected, "#export-source")
    def _selected(self, _event) -> None:
        self.action_export()

    def action_export(self) -> None:
        path = self.selected_source()
        if path is None:
            self.query_one("#export-result", Static).update(
                "[yellow]No checkpoint to export yet.[/yellow] Train a model first (key 3).")
            return
        self.export_path(path)

    def export_path(self, path: str, *, trust: bool = False) -> None:
        if self.busy:
            return
        self.busy = True
        self.refresh_bindings()
        self.query_one("#export-busy").display = True
        self.query_one("#export-result", Static).update(f"Exporting {Path(path).parent.parent.name}/{Path(path).name} …")
        self.export(path, trust)

    @work(thread=True, exclusive=True, group="export", exit_on_error=False)
    def export(self, path: str, trust: bool) -> None:
        ws = self.app.workspace
        cmd = [sys.executable, "-m", "torchdeck.tui.cli", "export", "onnx", "--checkpoint", path, "--json",
               "--workspace", str(ws.root)] + (["--trust"] if trust else [])
        t = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=ws.root, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.SubprocessError) as e:
            self.post_message(ExportDone(path, None, f"could not run the exporter: {e}"))
            return
        if proc.stderr:
            log.info("export of %s (%.1f s), exporter said:\n%s", path, time.monotonic() - t, proc.stderr.rstrip())
        try:
            doc = json.loads(proc.stdout) if proc.stdout.strip() else None
        except ValueError:
            doc = None
        if proc.returncode == 0 and isinstance(doc, dict) and "error" not in doc:
            self.post_message(ExportDone(path, doc))
            return
        # A failed child prints {"error": {code, message, field}}: read by its code, never its wording.
        error = doc.get("error") if isinstance(doc, dict) else None
        if not isinstance(error, dict):
            tail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
            self.post_message(ExportDone(path, None, f"the exporter failed without a report: {tail[0]} (see the log, key l)"))
            return
        self.post_message(ExportDone(path, None, str(error.get("message") or f"exit status {proc.returncode}"),
                                     needs_trust=error.get("code") == "untrusted" and not trust))

    @on(ExportDone)
    def _done(self, message: ExportDone) -> None:
        self.busy = False
        self.refresh_bindings()
        self.query_one("#export-busy").display = False
        result = self.query_one("#export-result", Static)
        if message.report is not None:
            result.update(describe_report(message.report, self.app.workspace.root))
            self.list_exports()
            return
        result.update(Text.assemble(("Export failed: ", "red"), without_cli_hint(message.error)))
        if message.needs_trust:
            def answered(ok: bool | None) -> None:
                if ok:
                    self.export_path(message.checkpoint, trust=True)

            self.app.push_screen(ConfirmTrust(f"Checkpoint {message.checkpoint}", without_cli_hint(message.error)),
                                 answered)

    def action_refresh(self) -> None:
        self.sources = []
        self.list_sources()
        self.list_exports()
