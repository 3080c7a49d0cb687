"""Exports: export a checkpoint to ONNX and show how closely ONNX Runtime matches PyTorch.

The export runs in a child process (`torchdeck export onnx --json`): the exporter prints from
C++ and Python, and holds the GIL for seconds; neither may reach this screen.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
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
from .dialogs import Confirm, ConfirmTrust

log = logging.getLogger("torchdeck.tui")


@dataclass
class JobProgress(Message):
    kind: str
    label: str
    step: str
    index: int
    total: int
    started: float


@dataclass
class JobDone(Message):
    kind: str  # export, validate, bench, variant, inspect
    label: str
    docs: list[dict]
    error: str = ""
    code: str = ""
    checkpoint: str = ""
    step: str = ""
    field: str = ""
    steps: list = None  # the job's commands, to run again with another exporter


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
        Binding("n", "new_export", "New export…", id="exports.new"),
        Binding("v", "validate", "Validate", id="exports.validate"),
        Binding("b", "bench", "Benchmark", id="exports.bench"),
        Binding("i", "quantize", "Int8", id="exports.quantize"),
        Binding("O", "optimize", "Optimize", id="exports.optimize", show=False),
        Binding("o", "open_onnx", "Open .onnx", id="exports.open"),
        Binding("g", "export_log", "Export log", id="exports.log", show=False),
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
        for label, key in (("Format", "format"), ("Opset", "opset"), ("Check", "check"), ("Max abs diff", "diff"),
                           ("Speed", "speed"), ("Size", "size"), ("File", "file")):
            past.add_column(label, key=key)
        self.sources: list[str] = []
        self.reports: dict[str, dict] = {}
        self._want: str | None = None
        self._export_wanted = False
        self.opened: dict | None = None  # an .onnx opened with o: its inspection
        self.job: JobProgress | None = None
        from ..export_child import ExportChild

        self.child = ExportChild(self.app.workspace.logs_dir / "export-child.log")
        self.warm_child()
        self.set_interval(1.0, self._show_progress)
        self.list_sources()
        self.list_exports()
        self.poll_while_shown(self.list_sources)
        src.focus()

    @work(thread=True, exclusive=True, group="warm", exit_on_error=False)
    def warm_child(self) -> None:
        self.child.warm()  # torch, ONNX and the exporter's registry load while the user chooses

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
            table.add_row(r.get("variant") or r.get("format", "onnx"), str(r.get("opset") or "-"), check_of(r),
                          f"{r.get('max_abs_diff', 0.0):.3g}",
                          "-" if r.get("speed_ratio") is None else f"{r['speed_ratio']:.2f}x",
                          fmt_size(r.get("size", 0)), Path(r["path"]).name, key=r["path"])

    @on(DataTable.RowHighlighted, "#exports-table")
    def _moved(self, event: DataTable.RowHighlighted) -> None:
        if self.opened is not None and event.row_key.value != self.opened.get("table_key"):
            self.opened["active"] = False  # the user is choosing among the exports again

    @on(DataTable.RowSelected, "#exports-table")
    def _show_past(self, event: DataTable.RowSelected) -> None:
        if self.opened is not None:
            self.opened["active"] = False
        r = self.reports.get(event.row_key.value)
        if r:
            self.query_one("#export-result", Static).update(describe_report(r, self.app.workspace.root))

    # -- jobs: exports, variants, validation, benchmarks, inspection, in the warm child ----------
    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action in ("export", "new_export", "validate", "bench", "quantize", "optimize", "open_onnx"):
            return None if getattr(self, "busy", False) else True
        return True

    @on(DataTable.RowSelected, "#export-source")
    def _selected(self, _event) -> None:
        self.action_export()

    def _result(self, text) -> None:
        self.query_one("#export-result", Static).update(text)

    def action_export(self) -> None:
        path = self.selected_source()
        if path is None:
            self._result("[yellow]No checkpoint to export yet.[/yellow] Train a model first (key 3).")
            return
        self.export_path(path)

    def export_path(self, path: str, *, trust: bool = False) -> None:
        self.start_job("export", f"{Path(path).parent.parent.name}/{Path(path).name}",
                       [("export onnx", ["export", "onnx", "--checkpoint", path] + (["--trust"] if trust else []))],
                       checkpoint=path)

    def action_new_export(self) -> None:
        path = self.selected_source()
        if path is None:
            self._result("[yellow]No checkpoint to export yet.[/yellow] Train a model first (key 3).")
            return
        from .export_form import ExportForm

        def answered(req) -> None:
            if req is not None:
                self.start_job("export", f"{Path(path).parent.parent.name}/{Path(path).name}", req.steps(path),
                               checkpoint=path)

        self.app.push_screen(ExportForm(f"{Path(path).parent.parent.name}/{Path(path).name}"), answered)

    def selected_export(self) -> dict | None:
        """The export under the cursor of the Exported table, or the .onnx opened with o."""
        if self.opened is not None and self.opened.get("active"):
            return self.opened
        key = cursor_key(self.query_one("#exports-table", DataTable))
        return self.reports.get(key) if key in self.reports else self.opened

    def _need_onnx(self) -> dict | None:
        r = self.selected_export()
        if r is None or not str(r.get("path", "")).endswith(".onnx"):
            self._result("[yellow]Choose an ONNX export in the Exported table, or open an .onnx file (o).[/yellow]")
            return None
        return r

    def action_validate(self) -> None:
        r = self._need_onnx()
        if r is None:
            return
        root = r
        while root.get("source") and self.reports.get(root["source"]):
            root = self.reports[root["source"]]
        if not root.get("checkpoint"):
            self._result("[yellow]Validation compares against a checkpoint: this file has none on record.[/yellow] "
                         "Use `torchdeck onnx validate PATH --checkpoint CKPT`.")
            return
        argv = ["onnx", "validate", r["path"], "--checkpoint", root["checkpoint"]]
        if root.get("model_arg"):
            argv += ["--model", root["model_arg"], "--input-shape", "1," + ",".join(map(str, root.get("sample_shape", [])))]
        self.start_job("validate", Path(r["path"]).name, [("validate", argv)])

    def action_bench(self) -> None:
        r = self._need_onnx()
        if r is not None:
            self.start_job("bench", Path(r["path"]).name, [("benchmark", ["onnx", "bench", r["path"]] + self._dims(r))])

    def action_quantize(self) -> None:
        r = self._need_onnx()
        if r is not None:
            self.start_job("variant", Path(r["path"]).name,
                           [("int8 dynamic", ["onnx", "quantize", r["path"], "--mode", "dynamic"] + self._dims(r))])

    def action_optimize(self) -> None:
        r = self._need_onnx()
        if r is not None:
            self.start_job("variant", Path(r["path"]).name,
                           [("optimize", ["onnx", "optimize", r["path"]] + self._dims(r))])

    def _dims(self, r: dict) -> list[str]:
        """Sizes for symbolic axes past the batch of an opened file (torchdeck's own know theirs)."""
        dims = r.get("dims_arg")
        return ["--dims", dims] if dims else []

    def action_open_onnx(self) -> None:
        from .export_form import OpenOnnxDialog

        def answered(opened) -> None:
            if opened is not None:
                self.opening_dims = opened.dims
                self.start_job("inspect", Path(opened.path).name, [("inspect", ["onnx", "inspect", opened.path])])

        self.app.push_screen(OpenOnnxDialog(str(self.app.workspace.root)), answered)

    def action_export_log(self) -> None:
        from .log_view import LogScreen

        r = self.selected_export()
        path = Path(r["log"]) if r and r.get("log") else self.child.log_path
        if not path.exists():
            self._result(f"[yellow]No log yet:[/yellow] {escape(home_short(path))}")
            return
        self.app.push_screen(LogScreen(path))

    def start_job(self, kind: str, label: str, steps: list[tuple[str, list[str]]], *, checkpoint: str = "") -> None:
        if self.busy:
            return
        self.busy = True
        self.refresh_bindings()
        self.query_one("#export-busy").display = True
        self.job = JobProgress(kind, label, steps[0][0], 1, len(steps), time.monotonic())
        self._show_progress()
        self.run_job(kind, label, steps, checkpoint)

    def _show_progress(self) -> None:
        j = getattr(self, "job", None)
        if not self.busy or j is None:
            return
        step = f", step {j.index} of {j.total}" if j.total > 1 else ""
        warm = "" if self.child.ready else " (starting the export process: torch, ONNX, ONNX Runtime)"
        self._result(Text(f"{VERBS.get(j.kind, 'Working on')} {j.label}{step}: {j.step} … "
                          f"{time.monotonic() - j.started:.0f} s{warm}"))

    @on(JobProgress)
    def _progress(self, message: JobProgress) -> None:
        self.job = message
        self._show_progress()

    @work(thread=True, exclusive=True, group="export", exit_on_error=False)
    def run_job(self, kind: str, label: str, steps: list[tuple[str, list[str]]], checkpoint: str) -> None:
        ws = self.app.workspace
        docs: list[dict] = []
        started = time.monotonic()
        for i, (step, argv) in enumerate(steps, 1):
            self.post_message(JobProgress(kind, label, step, i, len(steps), started))
            t = time.monotonic()
            argv = [docs[0]["path"] if a == "{export}" and docs else a for a in argv]  # variants of this export
            code, out, err = self.child.run(argv + ["--json", "--workspace", str(ws.root)], cwd=str(ws.root))
            if err.strip():
                log.info("%s (%.1f s) said:\n%s", " ".join(argv), time.monotonic() - t, err.rstrip())
            try:
                doc = json.loads(out) if out.strip() else None
            except ValueError:
                doc = None
            error = doc.get("error") if isinstance(doc, dict) else None
            if isinstance(doc, dict) and error is None and (code == 0 or kind == "validate"):
                docs.append(doc)
                continue
            # A failed command prints {"error": {code, message, field}}: read by its code, never its wording.
            if not isinstance(error, dict):
                tail = err.strip().splitlines()[-1:] or [f"exit status {code}"]
                error = {"code": "failed", "message": f"{step} failed without a report: {tail[0]} (see the log, key l)"}
            self.post_message(JobDone(kind, label, docs, str(error.get("message") or f"exit status {code}"),
                                      str(error.get("code") or ""), checkpoint, step, str(error.get("field") or ""),
                                      steps))
            return
        self.post_message(JobDone(kind, label, docs, checkpoint=checkpoint))

    @on(JobDone)
    def _done(self, message: JobDone) -> None:
        self.busy = False
        self.refresh_bindings()
        self.query_one("#export-busy").display = False
        root = self.app.workspace.root
        if message.docs and message.kind in ("export", "variant"):
            self.list_exports()
        if not message.error:
            doc = message.docs[-1]
            if message.kind == "inspect":
                self.opened = {"path": doc["path"], "inspect": doc, "dims_arg": getattr(self, "opening_dims", ""),
                               "active": True,  # b, i, O and v act on it until the Exported table is moved in
                               "table_key": cursor_key(self.query_one("#exports-table", DataTable))}
                self._result(describe_inspect(doc, root))
            elif message.kind == "bench":
                self._result(describe_bench(doc, root))
            elif message.kind == "validate":
                self._result(describe_validation(doc, root))
            else:
                self._result(describe_report(message.docs[0], root) + "".join(
                    "\n\n" + describe_report(d, root) for d in message.docs[1:]))
            return
        shown = Text.assemble((f"{FAILED.get(message.kind, 'Failed')}: ", "red"), without_cli_hint(message.error))
        if message.docs:  # an export made, a variant of it failed: both are said
            shown = Text.assemble(Text.from_markup(describe_report(message.docs[0], root)), "\n\n", shown)
        self._result(shown)
        first = (message.steps or [("", [])])[0][1]
        if message.kind == "export" and message.field == "exporter" and not message.docs and "--exporter" not in first:
            def legacy(ok: bool | None) -> None:
                if ok:
                    steps = [(message.steps[0][0] + " (legacy exporter)", [*first, "--exporter", "legacy"]),
                             *message.steps[1:]]
                    self.start_job("export", message.label, steps, checkpoint=message.checkpoint)

            self.app.push_screen(Confirm("The dynamo exporter failed", without_cli_hint(message.error) +
                                         "\n\nThe legacy TorchScript exporter traces the model instead; the export is "
                                         "validated the same way and its report says which exporter made it.",
                                         "export with the legacy exporter", "keep nothing"), legacy)
        if message.code == "untrusted" and message.kind == "export" and message.checkpoint:
            def answered(ok: bool | None) -> None:
                if ok:
                    self.export_path(message.checkpoint, trust=True)

            self.app.push_screen(ConfirmTrust(f"Checkpoint {message.checkpoint}", without_cli_hint(message.error)),
                                 answered)

    def on_unmount(self) -> None:
        self.child.close()

    def action_refresh(self) -> None:
        self.sources = []
        self.list_sources()
        self.list_exports()


def check_of(r: dict) -> str:
    """The validation in a word: ok, FAIL, or for a variant `off` (outside its dtype's tolerance
    of its source; its verdict says whether accuracy moved)."""
    if not r.get("ok", False) or r.get("checker_ok") is False:
        return "FAIL"
    if r.get("variant") and not r.get("within_tolerance", True):
        return "off"
    return "ok"


VERBS = {"export": "Exporting", "validate": "Validating", "bench": "Benchmarking", "variant": "Making a variant of",
         "inspect": "Reading"}
FAILED = {"export": "Export failed", "validate": "Validation failed", "bench": "Benchmark failed",
          "variant": "Variant failed", "inspect": "Cannot open"}


def describe_inspect(d: dict, root) -> str:
    def shape(v):
        return "?" if v["shape"] is None else "[" + ", ".join(map(str, v["shape"])) + "]"

    lines = [f"[b]{escape(Path(d['path']).name)}[/b]  {fmt_size(d['size'])}, {escape(d['producer'] or 'unknown producer')}",
             f"opset {d['opset']}, IR version {d['ir_version']}, {d['num_nodes']} nodes, "
             f"{d['num_params']:,} parameters ({fmt_size(d['initializer_bytes'])})"]
    lines += [f"input  {escape(v['name'])}  {v['dtype']}  {escape(shape(v))}" for v in d["inputs"]]
    lines += [f"output {escape(v['name'])}  {v['dtype']}  {escape(shape(v))}" for v in d["outputs"]]
    lines += [f"external data {escape(k)} ({fmt_size(n)})" for k, n in d["external_data"].items()]
    lines += [f"[yellow]warning: {escape(w)}[/yellow]" for w in d["warnings"]]
    lines.append("operators: " + ", ".join(f"{escape(op)} {n}" for op, n in list(d["ops"].items())[:12])
                 + (" …" if len(d["ops"]) > 12 else ""))
    lines += [f"[dim]{escape(k)} = {escape(v[:60])}[/dim]" for k, v in list(d["metadata"].items())[:6]]
    lines.append("b benchmarks it, i quantizes it (int8 dynamic), O optimizes it")
    return "\n".join(lines)


def describe_bench(d: dict, root) -> str:
    lines = [f"[b]{escape(Path(d['path']).name)}[/b]  ONNX Runtime, {d['threads']} thread(s), random inputs",
             "batch     p50 ms     p95 ms   throughput"]
    lines += [f"{r['batch_size']:>5} {r['p50_ms']:>10.3f} {r['p95_ms']:>10.3f} {r['throughput']:>10,.0f}/s" for r in d["rows"]]
    return "\n".join(lines)


def describe_validation(d: dict, root) -> str:
    verdict = "[green]passed[/green]" if d.get("passed") else "[red]FAILED[/red]"
    lines = [f"[b]{escape(Path(d['path']).name)}[/b] against {escape(Path(d['checkpoint']).name)}: {verdict}",
             f"onnx.checker {'ok' if d['checker_ok'] else 'FAILED: ' + escape(d['checker_error'])}, "
             f"{escape(', '.join(d['providers']))}"]
    for row in d["rows"]:
        diff = "-" if row["max_abs_diff"] is None else f"{row['max_abs_diff']:.3g}"
        lines.append(f"{escape(row['case']):<20} {escape(row['name'])[:12]:<12} {diff:>9}  "
                     f"atol {row['atol']:g}  " + ("ok" if row["passed"] else f"[red]FAIL[/red] {escape(row['note'])}"))
    acc = d.get("accuracy")
    if acc:
        lines.append(f"{acc['metric']}: PyTorch {acc['pytorch']:.4g}, ONNX {acc['onnx']:.4g}")
    return "\n".join(lines)
