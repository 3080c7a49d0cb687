"""Checkpoints: every run's complete checkpoints and any checkpoint file or folder the user opens
(remembered across sessions); the selected one's metadata and its tensors as a tree by module
prefix; statistics, verify, diff, convert, delete and export.

Every read of a checkpoint runs in a thread; nothing from a file runs code unless the user
trusted that file in a dialog that names the risk (for this session only).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from rich.markup import escape
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Static
from textual.worker import Worker, WorkerState
from torchdeck.checkpoints import recent
from torchdeck.checkpoints import store as ck
from torchdeck.errors import TorchdeckError
from torchdeck.fmt import fmt_bytes, fmt_count, fmt_number
from torchdeck.models import specs
from torchdeck.runs.store import Run

from ..failures import failure_line
from ..heavy import import_torch
from ..messages import (
    CheckpointConverted,
    CheckpointDescribed,
    CheckpointRemoved,
    CheckpointsListed,
    CheckpointVerified,
    OpenedEntry,
)
from ..paths import in_workspace
from ..widgets import cursor_key, run_label, short_run_id
from ..widgets.tensor_tree import TensorTree, group_tensors
from .base import ModeScreen
from .checkpoint_views import DiffView, StatsView
from .confirm import ConfirmDelete, ConfirmUnpickle
from .convert_form import ConvertForm, ConvertRequest
from .open_path import Opened, OpenPathDialog

log = logging.getLogger("torchdeck.tui")


def checkpoint_loss(metrics: dict) -> str:
    """The loss a checkpoint is known by (validation if it has one, else training), to 4 digits:
    a column of a table; the detail has 6."""
    return fmt_number(metrics.get("val_loss", metrics.get("train_loss", metrics.get("loss"))))  # loss: a script's


class CheckpointsScreen(ModeScreen):
    TITLE_TEXT = "Checkpoints"
    MODE = "checkpoints"
    AUTO_FOCUS = "#ckpt-table"  # never a text field: typed keys would land in it
    BINDINGS = [
        *ModeScreen.BINDINGS,
        Binding("o", "open", "Open", id="checkpoints.open"),
        Binding("s", "stats", "Stats", id="checkpoints.stats"),
        Binding("v", "verify", "Verify", id="checkpoints.verify"),
        Binding("m", "mark", "Mark", id="checkpoints.mark", show=False),  # the footer fits 80 columns
        Binding("D", "diff", "Diff", id="checkpoints.diff"),
        Binding("c", "convert", "Convert", id="checkpoints.convert"),
        Binding("d", "delete", "Delete", id="checkpoints.delete"),
        Binding("e", "export", "Export", id="checkpoints.export", show=False),
        Binding("t", "trust", "Trust file", id="checkpoints.trust", show=False),
        Binding("r", "refresh", "Refresh", id="checkpoints.refresh", show=False),
        Binding("R", "resume_run", "Resume training from here", id="checkpoints.resume", show=False),
    ]
    # What each key does, for the help screen (the footer keeps the short descriptions).
    HELP = {
        "checkpoints.open": "Open a checkpoint file or folder by its path (Tab completes)",
        "checkpoints.stats": "Statistics of the tensors under the tree's cursor (all at its root)",
        "checkpoints.verify": "Verify hashes, loadability and NaN/inf",
        "checkpoints.mark": "Mark for diff (A, then B)",
        "checkpoints.diff": "Diff the two marked checkpoints (or the marked one and the selected)",
        "checkpoints.convert": "Convert to safetensors or a torch file, optionally bf16/fp16",
        "checkpoints.delete": "Delete a run's checkpoint (asks); an opened path leaves the list",
        "checkpoints.export": "Export to ONNX (Exports screen)",
        "checkpoints.trust": "Load a refused file anyway (asks first: it runs code from the file)",
        "checkpoints.refresh": "Refresh the list",
    }

    def compose(self) -> ComposeResult:
        yield from self.compose_frame()
        with Horizontal(id="ckpt-body"):
            with Vertical(id="ckpt-left", classes="panel") as left:
                left.border_title = "Checkpoints"
                yield DataTable(id="ckpt-table", cursor_type="row", zebra_stripes=True)
            with Vertical(id="ckpt-right", classes="panel") as right:
                right.border_title = "Checkpoint"
                with VerticalScroll(id="ckpt-meta"):
                    yield Static("No checkpoint selected.", id="ckpt-detail")
                yield TensorTree(id="ckpt-tree")
                yield Static("", id="ckpt-status")
        yield from self.compose_footer()

    def on_mount(self) -> None:
        super().on_mount()
        table = self.query_one("#ckpt-table", DataTable)
        # The run by its name (its start time when it has none) and the id's suffix, which
        # `RUN` arguments accept; an opened path by its name, "open" in the Id column. A checkpoint
        # marked for diff has A or B before its name.
        for label, key in (("Run", "run"), ("Id", "id"), ("Step", "step"), ("Loss", "loss"), ("Size", "size")):
            table.add_column(label, key=key)
        self.items: dict[str, tuple[str, ck.CheckpointInfo | None]] = {}  # path -> (run id or "", listing)
        self.opened: dict[str, OpenedEntry] = {}
        self.names: dict[str, str] = {}
        self.labels: dict[str, str] = {}  # path -> its name in the Run column
        self.infos: dict[str, ck.CheckpointInfo] = {}  # path -> what inspect said, for the shown one
        self.refusals: dict[str, list[str]] = {}  # path -> the globals it wants (needs full unpickling)
        self.trusted: set[str] = set()  # trusted in a dialog, this session only
        self.marked: list[str] = []
        self.shown: str | None = None  # the path whose detail is shown (or asked for)
        self.want: str | None = None  # select this path once listed (just opened, just converted)
        self.told_recent_problem: str | None = None
        self.open_dialog: OpenPathDialog | None = None
        self.typeahead: list[str] | None = None  # keys typed after `o`, before its dialog is up
        self.open_cancelled = 0  # `o`s whose dialog Escape cancelled before it was up
        self.redraw = True  # draw the next listing even if it is the same (after a failure, a refresh)
        self.list_checkpoints()
        self.poll_while_shown(self.list_checkpoints)
        table.focus()

    def default_focus_target(self):
        return self.query_one("#ckpt-table")

    def on_screen_resume(self) -> None:
        self.list_checkpoints()

    # -- the list ---------------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="list", exit_on_error=False)
    def list_checkpoints(self) -> None:
        items = ck.workspace_checkpoints(self.app.store)
        names = {}
        for run_id in dict.fromkeys(run_id for run_id, _ in items):
            names[run_id] = run_name(self.app.store, run_id)
        remembered = recent.load(self.app.workspace.root)
        run_paths = {str(info.path) for _, info in items}
        opened = [opened_entry(p) for p in remembered.paths if p not in run_paths]
        self.post_message(CheckpointsListed(items, names, opened, remembered.problem))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        # The app tells the user once (and logs the traceback); the panel says it while it lasts.
        if event.state != WorkerState.ERROR:
            return
        if event.worker.name == "list_checkpoints":
            self.items = {}
            self.redraw = True
            self.query_one("#ckpt-table", DataTable).clear()
            self.query_one("#ckpt-detail", Static).update(
                Text(f"Cannot list checkpoints: {failure_line(event.worker.error)}", style="red"))
        elif event.worker.name == "describe":
            self.query_one("#ckpt-detail", Static).update(
                Text(f"Cannot read this checkpoint: {failure_line(event.worker.error)}", style="red"))
            self.query_one("#ckpt-tree", TensorTree).blank()

    @on(CheckpointsListed)
    def _listed(self, message: CheckpointsListed) -> None:
        if message.recent_problem and message.recent_problem != self.told_recent_problem:
            self.told_recent_problem = message.recent_problem
            self.notify(message.recent_problem, title="Opened paths", severity="warning", markup=False)
        keys = [str(info.path) for _, info in message.items] + [e.path for e in message.opened]
        if (not self.redraw and keys == list(self.items) and message.names == self.names
                and message.opened == list(self.opened.values())):
            self._select_wanted(keys)
            return
        self.redraw = False
        table = self.query_one("#ckpt-table", DataTable)
        selected = self.selected_path()
        table.clear()
        self.items = {str(info.path): (run_id, info) for run_id, info in message.items}
        self.items.update({e.path: ("", None) for e in message.opened})
        self.opened = {e.path: e for e in message.opened}
        self.names = message.names
        self.marked = [p for p in self.marked if p in self.items]
        self.labels = {}
        for run_id, info in message.items:
            # Text, not str: a DataTable reads a str as markup, and a name may hold brackets
            self.labels[str(info.path)] = run_label(run_id, message.names.get(run_id))
            table.add_row(self._label(str(info.path)), Text(short_run_id(run_id)), str(info.step),
                          checkpoint_loss(info.metrics), fmt_bytes(info.size), key=str(info.path))
        for e in message.opened:
            size = "missing" if e.kind == "missing" else fmt_bytes(e.size)
            self.labels[e.path] = short_name(Path(e.path).name or e.path)
            table.add_row(self._label(e.path), "open", "-", "-", size, key=e.path)
        if selected in self.items:
            table.move_cursor(row=keys.index(selected))
        self._select_wanted(keys)
        if not keys:
            self.shown = None
            self.query_one("#ckpt-tree", TensorTree).blank()
            self.query_one("#ckpt-detail", Static).update(
                "No checkpoints yet. Train a model (key 3): each epoch and each stop leaves one.\n"
                "Or press o to open a checkpoint file or folder from anywhere.")
        else:
            self._load_detail()

    def _select_wanted(self, keys: list[str]) -> None:
        if self.want in keys:
            self.query_one("#ckpt-table", DataTable).move_cursor(row=keys.index(self.want))
            self.want = None
            self._load_detail()

    def _label(self, path: str) -> Text:
        label = Text(self.labels.get(path, ""))
        if path in self.marked:
            return Text.assemble(("AB"[self.marked.index(path)], "bold reverse"), " ", label)
        return label

    def _redraw_marks(self) -> None:
        table = self.query_one("#ckpt-table", DataTable)
        for path in self.items:
            table.update_cell(path, "run", self._label(path))

    def selected_path(self) -> str | None:
        return cursor_key(self.query_one("#ckpt-table", DataTable))

    def is_run_checkpoint(self, path: str) -> bool:
        return bool(self.items.get(path, ("", None))[0])

    def shown_name(self, path: str) -> str:
        return in_workspace(path, self.app.workspace.root)

    # -- the selected checkpoint: metadata and tensor tree --------------------------------------
    @on(DataTable.RowHighlighted, "#ckpt-table")
    def _row(self, _event) -> None:
        self._load_detail()

    @on(DataTable.RowSelected, "#ckpt-table")
    def _enter(self, _event) -> None:
        self.query_one("#ckpt-tree", TensorTree).focus()  # Enter steps into the tensors

    def _load_detail(self, *, force: bool = False) -> None:
        path = self.selected_path()
        if path is None or (path == self.shown and not force):
            return
        self.shown = path
        self.query_one("#ckpt-detail", Static).update(Text("reading …", style="dim"))
        self.query_one("#ckpt-tree", TensorTree).blank()
        self.describe(path, path in self.trusted)

    @work(thread=True, exclusive=True, group="detail", exit_on_error=False)
    def describe(self, path: str, trust: bool) -> None:
        if not os.path.isfile(os.path.join(path, "meta.json")):
            import_torch()  # other people's files may need it; a run's checkpoint never does
        try:
            info = ck.inspect(path, trust=True) if trust else ck.inspect(path)
        except TorchdeckError as e:
            gone = e.code == "not_found" and not os.path.lexists(path)
            refused = list(getattr(e, "globals", None) or []) if e.code == "untrusted" else None
            self.post_message(CheckpointDescribed(path, error=failure_line(e), refused=refused, gone=gone))
            return
        self.post_message(CheckpointDescribed(path, info, group_tensors(info.tensors)))

    @on(CheckpointDescribed)
    def _described(self, message: CheckpointDescribed) -> None:
        if message.path != self.shown:
            return
        detail = self.query_one("#ckpt-detail", Static)
        tree = self.query_one("#ckpt-tree", TensorTree)
        self.refusals.pop(message.path, None)
        tree.display = message.info is not None
        if message.info is None:
            self.infos.pop(message.path, None)
            tree.blank()
            if message.refused is not None:
                self.refusals[message.path] = message.refused
                wanted = ", ".join(message.refused) or "globals outside the safe list"
                detail.update(Text.assemble(
                    ("Refused: ", "bold red"), f"{self.shown_name(message.path)}\n",
                    "It needs full unpickling: it asks for ", (wanted, "bold"), ".\n"
                    "Loading it would run code from the file with your permissions.\n",
                    ("Press t to load it anyway", "bold"), " (asks first; for this session only)."))
            elif message.gone:
                detail.update(Text(f"{self.shown_name(message.path)} no longer exists "
                                   "(removed, perhaps by retention).", style="yellow"))
            else:
                detail.update(Text(message.error, style="red"))
            return
        info = message.info
        self.infos[message.path] = info
        run_id = self.items.get(message.path, ("", None))[0]
        detail.update(self.metadata_text(info, run_id))
        tree.show_tensors(message.groups, info.name)

    def metadata_text(self, info: ck.CheckpointInfo, run_id: str) -> str:
        """The metadata panel (markup; everything read from the file escaped)."""
        meta = info.meta if isinstance(info.meta, dict) else {}
        trusted = " [yellow](trusted this session)[/yellow]" if str(info.path) in self.trusted else ""
        lines = [f"[b]{escape(info.name)}[/b]  [dim]{escape(info.format)}[/dim]{trusted}"]
        if run_id:
            name = self.names.get(run_id) or run_id
            lines.append(f"run       {escape(name)}" + (f"  [dim]{escape(run_id)}[/dim]" if name != run_id else ""))
        if info.step is not None or info.epoch is not None:
            lines.append(f"step      {fmt_number(info.step)}, epoch {fmt_number(info.epoch)}")
        if info.model_spec:
            try:
                spec = specs.ModelSpec.from_json(info.model_spec)
                ok = specs.is_trusted(spec, self.app.workspace)
                lines.append(f"model     {escape(spec.describe())}" + ("" if ok else "  [yellow](not trusted here)[/yellow]"))
            except (TorchdeckError, TypeError, ValueError):
                lines.append("model     [yellow]damaged spec record[/yellow]")
        lines += [f"{escape(str(k).replace('_', ' ')):<9} {fmt_metric(v)}" for k, v in info.metrics.items()]
        library = meta.get("library") or (f"torch {meta['torch_version']}" if meta.get("torch_version") else None)
        if isinstance(meta.get("config"), dict) and meta["config"].get("transformers_version"):
            library = f"transformers {meta['config']['transformers_version']}"
        if library:
            lines.append(f"library   {escape(str(library))}")
        if meta.get("arch"):
            lines.append(f"arch      {escape(str(meta['arch']))}")
        optims = meta.get("optimizer")
        for o in optims if isinstance(optims, list) else [optims] if optims else []:
            if isinstance(o, dict) and "type" in o:
                lines.append(f"optimizer {escape(str(o['type']))}, {fmt_count(o.get('state_tensors'))} state tensors, "
                             f"{fmt_bytes(o.get('state_bytes'))}")
        for key, label in (("hyper_parameters", "hparams"), ("config", "config"), ("args", "args"),
                           ("run_config", "config")):
            if isinstance(meta.get(key), dict) and meta[key]:
                d = meta[key]
                if key == "run_config" and meta.get("source") == "api":  # a script's (under torchdeck run too): its own
                    d = d.get("params") if isinstance(d.get("params"), dict) else {}
                elif key == "run_config":  # torchdeck's own: what tells runs apart, not every default
                    d = {k: d[k] for k in RUN_CONFIG_KEYS if d.get(k) is not None}
                if d:
                    lines.append(f"{label:<9} {escape(summarize(d))}")
        if meta.get("shards"):
            lines.append(f"shards    {len(meta['shards'])} files")
        lines.append(f"{fmt_count(info.num_params)} parameters, {fmt_bytes(info.num_bytes)} of tensors, "
                     f"{fmt_bytes(info.size)} on disk")
        lines.append(f"[dim]{escape(self.shown_name(str(info.path)))}[/dim]")
        return "\n".join(lines)

    # -- open -------------------------------------------------------------------------------------
    def action_open(self) -> None:
        if self.open_cancelled:  # Escape came before this `o`'s dialog was up
            self.open_cancelled -= 1
            return
        early, self.typeahead = self.typeahead or [], None
        if self.open_dialog is not None:
            return  # one is up already
        self.open_dialog = OpenPathDialog(os.getcwd(), self.trusted, early=early)

        def answered(opened: Opened | None) -> None:
            self.open_dialog = None
            if opened is not None:
                self.opened_path(opened)

        self.app.push_screen(self.open_dialog, answered)

    def on_key(self, event) -> None:
        """Keys typed right after `o` (over a slow link they arrive in one read) reach this screen
        before `o`'s action has put the dialog up: they belong in its field, not to this screen's
        keys (d, c, s ...)."""
        if self.typeahead is not None and event.key == "escape":
            self.typeahead = None
            self.open_cancelled += 1
            event.prevent_default()
            event.stop()
        elif self.typeahead is not None:
            if event.key == "enter" or (event.character and event.character.isprintable()):
                self.typeahead.append("\n" if event.key == "enter" else event.character)
                event.prevent_default()
                event.stop()
        elif event.key == "o" and self.open_dialog is None and isinstance(self.focused, DataTable | TensorTree):
            self.typeahead = []  # `o`'s action takes them

    def opened_path(self, opened: Opened) -> None:
        path = opened.path
        if not self.is_run_checkpoint(path):
            try:
                recent.remember(self.app.workspace.root, path)
            except TorchdeckError as e:
                self.notify(failure_line(e), title="Cannot remember the path", severity="warning", markup=False)
        self.shown = None  # described again, with what the dialog found
        self.want = path
        self.redraw = True
        self.list_checkpoints()

    # -- trust ------------------------------------------------------------------------------------
    def action_trust(self) -> None:
        path = self.selected_path()
        if path is None or path not in self.refusals:
            self.cannot("nothing to trust: the selected checkpoint opens without running code from it")
            return

        def answered(ok: bool | None) -> None:
            if ok:
                self.trusted.add(path)
                self._load_detail(force=True)

        self.app.push_screen(ConfirmUnpickle(self.shown_name(path), self.refusals[path]), answered)

    # -- stats ------------------------------------------------------------------------------------
    def action_stats(self) -> None:
        path = self.selected_path()
        if path is None:
            self.cannot("no checkpoint to compute statistics of: train a model (key 3) or open one (o)")
            return
        if path not in self.infos:
            self.cannot("its tensors cannot be read yet" + (": press t to trust it first" if path in self.refusals
                                                             else ""))
            return
        what, names = self.query_one("#ckpt-tree", TensorTree).selected_names()
        if not names:
            self.cannot("it holds no tensors")
            return
        self.app.push_screen(StatsView(path, self.shown_name(path), what, names, trust=path in self.trusted))

    # -- verify -----------------------------------------------------------------------------------
    def action_verify(self) -> None:
        path = self.selected_path()
        if path is None:
            self.cannot("no checkpoint to verify: train a model first (key 3)")
            return
        self.notify("verifying hashes and reading every tensor …", markup=False)
        self.status(f"verifying {self.shown_name(path)} …", "dim")
        self.verify(path, path in self.trusted)

    @work(thread=True, group="verify", exit_on_error=False)
    def verify(self, path: str, trust: bool) -> None:
        import_torch()
        from torchdeck.checkpoints import ops

        try:
            report = ops.verify(Path(path), trust=trust)
        except TorchdeckError as e:
            if e.code == "not_found":  # removed meanwhile (retention): gone, never "damaged"
                self.post_message(CheckpointVerified(path, [], gone=failure_line(e)))
                return
            raise
        self.post_message(CheckpointVerified(path, report["problems"], report["tensors_checked"]))

    @on(CheckpointVerified)
    def _verified(self, message: CheckpointVerified) -> None:
        where = self.shown_name(message.path)
        if message.gone:
            self.notify(f"{where} no longer exists (removed, perhaps by retention)", title="Checkpoint gone",
                        severity="warning", markup=False)
            self.status(f"{where} no longer exists", "yellow")
            self.action_refresh()
        elif message.problems:
            self.notify("; ".join(message.problems)[:500], title=f"Checkpoint damaged: {where}", severity="error",
                        markup=False)
            self.status(f"damaged: {'; '.join(message.problems)}", "red")
        else:
            self.notify(f"hashes match, {message.tensors} tensors read, all finite", title=f"Checkpoint intact: {where}",
                        markup=False)
            self.status(f"intact: hashes match, {message.tensors} tensors read, all finite", "green")

    def status(self, text: str, style: str = "") -> None:
        self.query_one("#ckpt-status", Static).update(Text(text, style=style))

    # -- diff -------------------------------------------------------------------------------------
    def action_mark(self) -> None:
        path = self.selected_path()
        if path is None:
            self.cannot("no checkpoint to mark: train a model (key 3) or open one (o)")
            return
        if path in self.marked:
            self.marked.remove(path)
        else:
            self.marked = (self.marked + [path])[-2:]
        self._redraw_marks()
        if len(self.marked) == 2:
            self.notify("A and B marked: press D to diff them", markup=False)
        elif self.marked:
            self.notify(f"marked A: {self.shown_name(self.marked[0])}; mark another (m), or select one and press D",
                        markup=False)

    def action_diff(self) -> None:
        selected = self.selected_path()
        if len(self.marked) == 2:
            a, b = self.marked
        elif len(self.marked) == 1 and selected is not None and selected != self.marked[0]:
            a, b = self.marked[0], selected
        else:
            self.cannot("mark two checkpoints with m (or mark one and select another) to diff them")
            return
        self.app.push_screen(DiffView(a, b, self.shown_name(a), self.shown_name(b), a in self.trusted,
                                      b in self.trusted))

    # -- convert ----------------------------------------------------------------------------------
    def action_convert(self) -> None:
        path = self.selected_path()
        if path is None:
            self.cannot("no checkpoint to convert: train a model (key 3) or open one (o)")
            return
        if path in self.refusals:
            self.cannot("this file is refused until you trust it (t)")
            return
        out_dir = str(self.app.workspace.exports_dir) if self.is_run_checkpoint(path) else None

        def answered(request: ConvertRequest | None) -> None:
            if request is not None:
                self.status(f"converting {self.shown_name(path)} …", "dim")
                self.convert(path, request, path in self.trusted)

        self.app.push_screen(ConvertForm(path, self.shown_name(path), os.getcwd(), out_dir), answered)

    @work(thread=True, group="convert", exit_on_error=False)
    def convert(self, path: str, request: ConvertRequest, trust: bool) -> None:
        import_torch()
        from torchdeck.checkpoints import ops

        try:
            report = ops.convert(Path(path), request.to, dtype=request.dtype, out=request.out, trust=trust)
        except TorchdeckError as e:
            self.post_message(CheckpointConverted(path, None, failure_line(e)))
            return
        recent.remember(self.app.workspace.root, report["path"])  # listed, to inspect it
        self.post_message(CheckpointConverted(path, report))

    @on(CheckpointConverted)
    def _converted(self, message: CheckpointConverted) -> None:
        if message.report is None:
            self.notify(message.error, title="Convert failed", severity="error", markup=False)
            self.status(f"convert failed: {message.error}", "red")
            return
        r = message.report
        where = self.shown_name(r["path"])
        text = f"wrote {where} ({fmt_bytes(r['size'])}, {r['tensors']} tensors" + (f", {r['dtype']}" if r["dtype"] else "") + ")"
        self.notify(text, title="Converted", markup=False)
        self.status(text, "green")
        self.redraw = True
        self.list_checkpoints()

    # -- delete -----------------------------------------------------------------------------------
    def action_delete(self) -> None:
        path = self.selected_path()
        if path is None:
            self.cannot("no checkpoint to delete")
            return
        where = self.shown_name(path)
        if not self.is_run_checkpoint(path):
            try:
                recent.forget(self.app.workspace.root, path)
            except TorchdeckError as e:
                self.cannot(failure_line(e), severity="error")
                return
            self.notify(f"{where} left the list; its files were left alone", title="Removed from the list",
                        markup=False)
            self.marked = [p for p in self.marked if p != path]
            self.action_refresh()
            return
        run_id, info = self.items[path]
        if run_id in self.app.active_runs():
            self.cannot(f"run {run_id} is still going: its checkpoints are its own to rotate; stop it first (key 3)")
            return

        def answered(ok: bool | None) -> None:
            if ok:
                self.status(f"deleting {where} …", "dim")
                self.remove(path)

        self.app.push_screen(ConfirmDelete(info.name if info else Path(path).name, where,
                                           fmt_bytes(info.size if info else None)), answered)

    @work(thread=True, group="remove", exit_on_error=False)
    def remove(self, path: str) -> None:
        try:
            ck.remove_checkpoint(Path(path), self.app.workspace.runs_dir)
        except TorchdeckError as e:
            self.post_message(CheckpointRemoved(path, failure_line(e)))
            return
        self.post_message(CheckpointRemoved(path))

    @on(CheckpointRemoved)
    def _removed(self, message: CheckpointRemoved) -> None:
        where = self.shown_name(message.path)
        if message.error:
            self.notify(message.error, title="Delete failed", severity="error", markup=False)
            self.status(f"delete failed: {message.error}", "red")
        else:
            self.notify(f"deleted {where}", title="Checkpoint deleted", markup=False)
            self.status(f"deleted {where}", "green")
        self.marked = [p for p in self.marked if p != message.path]
        self.action_refresh()

    # -- export -----------------------------------------------------------------------------------
    def action_export(self) -> None:
        path = self.selected_path()
        if path is None:
            self.cannot("no checkpoint to export: train a model first (key 3)")
            return
        if not self.is_run_checkpoint(path):
            self.cannot("ONNX export rebuilds the model a run recorded: choose a run's checkpoint "
                        "(convert, c, writes other weight formats)")
            return
        info = self.items[path][1]
        cls = ck.scripts_own_model(info) if info is not None else None
        if cls is not None:  # run.checkpoint() of a script's model: an export job could only fail
            self.cannot(f"this checkpoint's model is the script's own ({cls or 'a model'}), "
                        f"which torchdeck cannot rebuild: from the shell, torchdeck export onnx --checkpoint {path} "
                        "--model module:callable (c converts its weights here)")
            return
        self.app.export_checkpoint(path)

    # -- resume -----------------------------------------------------------------------------------
    def action_resume_run(self) -> None:
        """Resume training from here: the run this checkpoint belongs to continues from it (which
        must be its latest; the dialog says why not otherwise)."""
        path = self.selected_path()
        if path is None:
            self.cannot("no checkpoint to resume from: train a model first (key 3)")
            return
        if not self.is_run_checkpoint(path):
            self.cannot("resuming continues a run from its own checkpoint; to start a new run from these weights: "
                        f"torchdeck train --model SPEC --from {path}")
            return
        self.app.resume_run(path, checkpoint=Path(path).name)

    def action_refresh(self) -> None:
        self.redraw = True
        self.shown = None  # read again: it may have changed or gone
        self.list_checkpoints()


def opened_entry(path: str) -> OpenedEntry:
    """What an opened path is now (stat only; a folder's size is its files', one level deep)."""
    try:
        st = os.stat(path)
    except OSError:
        return OpenedEntry(path, "missing")
    import stat as stat_

    if stat_.S_ISREG(st.st_mode):
        return OpenedEntry(path, "file", st.st_size)
    if stat_.S_ISDIR(st.st_mode):
        size = 0
        try:
            with os.scandir(path) as it:
                for i, entry in enumerate(it):
                    if i > 10000:
                        break
                    try:
                        if entry.is_file():
                            size += entry.stat().st_size
                    except OSError:
                        pass
        except OSError:
            return OpenedEntry(path, "folder")
        return OpenedEntry(path, "folder", size)
    return OpenedEntry(path, "other")


def short_name(name: str, width: int = 24) -> str:
    """A long file name cut in the middle (its start and its extension stay): the list keeps
    room for step, loss and size; the detail shows the whole path."""
    if len(name) <= width:
        return name
    tail = width // 2
    return name[:width - tail - 1] + "…" + name[-tail:]


RUN_CONFIG_KEYS = ("optimizer", "lr", "batch_size", "epochs", "loss", "seed", "data")


def summarize(d: dict, limit: int = 160) -> str:
    """A config as `k=v, k=v, …` on one line, nested values shortened."""
    parts = []
    for k, v in d.items():
        if isinstance(v, (dict, list)):
            v = "{…}" if isinstance(v, dict) else f"[{len(v)} items]"
        parts.append(f"{k}={v}")
        if sum(len(p) + 2 for p in parts) > limit:
            break
    text = ", ".join(parts)
    return text if len(text) <= limit else text[:limit - 1] + "…"


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

