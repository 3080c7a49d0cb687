"""Training: start a run, watch every batch's loss stream in, stop or pause it.

The run itself lives in a worker process; this screen only tails its files (torchdeck.runs.events)
from a thread and draws. Quitting the TUI does not stop the run; selecting it again replays
its whole history from events.jsonl.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import (
    Button,
    DataTable,
    Input,
    Label,
    Log,
    ProgressBar,
    Select,
    Static,
)
from textual.worker import get_current_worker
from torchdeck.errors import TorchdeckError
from torchdeck.fmt import fmt_count, fmt_duration, fmt_loss, fmt_number
from torchdeck.models import catalogue as catalogue_mod
from torchdeck.options import (
    ACTIVE_STATES,
    FINAL_STATES,
    LOSSES,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
)
from torchdeck.runs import config_file
from torchdeck.runs import events as ev
from torchdeck.runs.config import RunConfig, parse_betas, parse_number
from torchdeck.runs.view import RunView, read_observation

from ..heavy import import_torch
from ..messages import FormError, RunRemoved, RunsListed, RunStarted, RunUpdate
from ..widgets import LossChart, short_run_label
from .base import ModeScreen
from .dialogs import Confirm

LOG_LINES = 2000
HEARTBEAT_REPOST = 1.0  # seconds: a quiet run is still observed this often (a stale heartbeat shows)


@dataclass(frozen=True)
class FormField:
    """One setting on the New run form: its widget, the RunConfig field it sets, how its text is
    read ("int", "float", "optint"/"optfloat"/"optstr": blank is None, "str", "betas", "select",
    "yesno"), and the placeholder saying what blank means."""

    wid: str
    field: str
    label: str
    kind: str
    placeholder: str = ""


# Shown always: what most runs change.
COMMON_FIELDS = (
    FormField("f-model", "model", "Model", "select"),
    FormField("f-data", "data", "Data", "optstr", "the model's own"),
    FormField("f-epochs", "epochs", "Epochs", "int"),
    FormField("f-batch", "batch_size", "Batch size", "int"),
    FormField("f-lr", "lr", "Learning rate", "float"),
    FormField("f-optimizer", "optimizer", "Optimizer", "select"),
)
# Folded under "more" (m).
MORE_FIELDS = (
    FormField("f-schedule", "schedule", "Schedule", "select"),
    FormField("f-warmup", "warmup_steps", "Warmup steps", "int"),
    FormField("f-max-steps", "max_steps", "Max steps", "optint", "epochs decide"),
    FormField("f-momentum", "momentum", "Momentum", "float"),
    FormField("f-nesterov", "nesterov", "Nesterov", "yesno"),
    FormField("f-weight-decay", "weight_decay", "Weight decay", "optfloat", "the optimizer's own"),
    FormField("f-betas", "betas", "Betas", "betas", "0.9,0.999"),
    FormField("f-loss", "loss", "Loss", "select"),
    FormField("f-label-smoothing", "label_smoothing", "Label smooth", "float"),
    FormField("f-precision", "precision", "Precision", "select"),
    FormField("f-accumulate", "accumulate", "Accumulate", "int"),
    FormField("f-clip", "grad_clip", "Clip grad norm", "optfloat", "off"),
    FormField("f-val-every", "val_every", "Val every", "optint", "each epoch"),
    FormField("f-val-fraction", "val_fraction", "Val fraction", "optfloat", "the data's own"),
    FormField("f-early-stop", "early_stop_patience", "Early stop", "optint", "off"),
    FormField("f-ckpt-every", "checkpoint_every", "Ckpt every", "optint", "each epoch"),
    FormField("f-keep", "keep_checkpoints", "Keep ckpts", "int"),
    FormField("f-keep-best", "keep_best", "Keep best", "int"),
    FormField("f-best-metric", "best_metric", "Best metric", "str"),
    FormField("f-seed", "seed", "Seed", "int"),
    FormField("f-device", "device", "Device", "str"),
)
FORM = COMMON_FIELDS + MORE_FIELDS
# An engine error's field (the option's name) -> the form widget where it is fixed; the config
# file's path for an error about the file itself.
FORM_FIELDS = {f.field: f.wid for f in FORM} | {"learning_rate": "f-lr", "config": "f-config"}
MORE_WIDGETS = {f.wid for f in MORE_FIELDS} | {"f-config"}
# How a value is named in a form error ("learning rate must be a number").
_WORDS = {"lr": "learning rate", "grad_clip": "clip grad norm", "keep_checkpoints": "keep checkpoints"}
MORE_CLOSED = "[b]▸ more[/b] [dim](m): schedule, loss, file…[/dim]"
AUTO_LOSS = "auto"  # the loss Select's "follows the targets" (a Select's value cannot be None)


class FormProblem(Exception):
    """A form value that does not make a valid RunConfig: the FormError to show."""

    def __init__(self, error: FormError):
        super().__init__(error.text)
        self.error = error


def _select_options(field: str) -> list[tuple[str, str]]:
    if field == "optimizer":
        return [(label, o) for o, label in OPTIMIZERS.items()]
    if field == "schedule":
        return [(label, o) for o, label in SCHEDULES.items()]
    if field == "loss":
        return [("follows the targets", AUTO_LOSS)] + [(label, o) for o, label in LOSSES.items()]
    if field == "precision":
        return [(label, o) for o, label in PRECISIONS.items()]
    return []


logger = logging.getLogger("torchdeck.tui")


class TrainingScreen(ModeScreen):
    TITLE_TEXT = "Training"
    MODE = "training"
    AUTO_FOCUS = "#runs-table"  # never a text field: typed keys would land in it
    BINDINGS = [
        *ModeScreen.BINDINGS,
        Binding("s", "start", "Start", id="training.start"),
        Binding("n", "new_run", "New run", id="training.new"),
        Binding("x", "stop", "Stop", id="training.stop"),
        Binding("p", "pause", "Pause", id="training.pause"),
        Binding("p", "resume", "Continue", id="training.continue"),  # shown instead of Pause while paused
        Binding("r", "resume_run", "Resume", id="training.resume"),
        Binding("d", "remove_run", "Remove", id="training.remove"),
        Binding("m", "toggle_more", "More", id="training.more"),
        Binding("o", "load_config", "Open config", show=False, id="training.load"),  # l is the app's Log
        Binding("w", "save_config", "Write config", show=False, id="training.save"),
    ]

    def compose(self) -> ComposeResult:
        cfg: RunConfig = self.app.default_config
        yield from self.compose_frame()
        with Horizontal(id="training-body"):
            with Vertical(id="train-left"):
                with VerticalScroll(id="train-form", classes="panel") as form:
                    form.border_title = "New run"
                    form.can_focus = False  # Tab goes from field to field, not to the scroll box
                    yield from self._compose_fields(COMMON_FIELDS, cfg)
                    with Horizontal(classes="form-row"):
                        yield Button("Start", id="start", variant="primary", compact=True)
                        yield Label(" s / Enter", classes="dim")
                    yield Static("", id="form-error")
                    yield Static(MORE_CLOSED,
                                 id="more-toggle")
                    with Vertical(id="train-more"):
                        yield from self._compose_fields(MORE_FIELDS, cfg)
                        with Horizontal(classes="form-row"):
                            yield Label("Config file", classes="form-label")
                            yield Input(placeholder="run.toml", id="f-config", compact=True)
                        yield Static("", id="f-config-error", classes="form-field-error")
                        with Horizontal(classes="form-row"):
                            yield Button("Load", id="load-config", compact=True)
                            yield Label(" o  ", classes="dim")
                            yield Button("Save", id="save-config", compact=True)
                            yield Label(" w", classes="dim")
                with Vertical(id="train-runs", classes="panel") as runs:
                    runs.border_title = "Runs"
                    yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
            with Vertical(id="train-right", classes="panel") as right:
                right.border_title = "Run"
                yield Static("No run selected. Fill in the form and press s to start one.", id="run-head")
                yield ProgressBar(id="run-progress", show_eta=False)
                yield LossChart(id="loss-chart")
                yield Log(id="loss-log", max_lines=LOG_LINES)
        yield from self.compose_footer()

    def _compose_fields(self, fields, cfg: RunConfig) -> ComposeResult:
        for f in fields:
            with Horizontal(classes="form-row"):
                yield Label(f.label, classes="form-label")
                if f.field == "model":
                    yield Select([("demo", "demo")], value="demo", allow_blank=False, compact=True, id=f.wid)
                elif f.kind == "select":
                    yield Select(_select_options(f.field), value=self._widget_value(f, cfg), allow_blank=False,
                                 compact=True, id=f.wid)
                elif f.kind == "yesno":
                    yield Select([("no", "no"), ("yes", "yes")], value=self._widget_value(f, cfg), allow_blank=False,
                                 compact=True, id=f.wid)
                else:
                    yield Input(self._widget_value(f, cfg), placeholder=f.placeholder, id=f.wid, compact=True)
            yield Static("", id=f"{f.wid}-error", classes="form-field-error")

    @staticmethod
    def _widget_value(f: FormField, cfg: RunConfig) -> str:
        value = getattr(cfg, f.field)
        if f.kind == "yesno":
            return "yes" if value else "no"
        if f.field == "loss":
            return value or AUTO_LOSS
        if value is None:
            return ""
        if f.kind == "betas":
            return ",".join(f"{b:g}" for b in value)
        return str(value)

    def fill_form(self, cfg: RunConfig) -> None:
        """Show cfg's settings in the form (a loaded config file's)."""
        for f in FORM:
            widget = self.query_one(f"#{f.wid}")
            value = self._widget_value(f, cfg)
            if isinstance(widget, Select):
                if f.field == "model":
                    self._extra_models.add(value)
                    self.fill_models()
                widget.value = value
            else:
                widget.value = value

    def form_config(self) -> RunConfig:
        """The form's settings over the base config (the app's defaults, or a loaded file's);
        FormError for the first bad value, naming its widget (or None when no widget shows it)."""
        values = {}
        for f in FORM:
            widget = self.query_one(f"#{f.wid}")
            try:
                values[f.field] = self._read(f, widget.value)
            except TorchdeckError as e:
                raise FormProblem(FormError(f.wid, str(e))) from None
        cfg = RunConfig(**{**self._base_config.to_json(), **values, "name": self._base_config.name})
        try:
            cfg.validate()
        except TorchdeckError as e:
            raise FormProblem(FormError(FORM_FIELDS.get(e.field or ""), str(e))) from None
        return cfg

    @staticmethod
    def _read(f: FormField, raw):
        words = _WORDS.get(f.field, f.field.replace("_", " "))
        if f.kind == "select":
            value = str(raw)
            return None if f.field == "loss" and value == AUTO_LOSS else value
        if f.kind == "yesno":
            return raw == "yes"
        text = str(raw).strip()
        if f.kind.startswith("opt") and not text:
            return None
        if f.kind in ("int", "optint"):
            return parse_number(text, words, int)
        if f.kind in ("float", "optfloat"):
            return parse_number(text, words, float)
        if f.kind == "betas":
            return parse_betas(text) if text else None
        return text

    # -- more, and config files --------------------------------------------------------------
    def action_toggle_more(self, show: bool | None = None) -> None:
        more = self.query_one("#train-more")
        more.display = (not more.display) if show is None else show
        self.query_one("#more-toggle", Static).update(
            "[b]▾ less[/b] [dim](m)[/dim]" if more.display else
            MORE_CLOSED)
        if more.display and show is None:
            self.query_one("#f-schedule").focus()
        elif not more.display and self.focused is not None and self.focused.id in MORE_WIDGETS:
            self.query_one("#runs-table").focus()

    def _config_path(self) -> str | None:
        path = self.query_one("#f-config", Input).value.strip()
        if not path:
            self.post_message(FormError("f-config", "type the path of a TOML config file here, then o (open) or "
                                                    "w (write)"))
            return None
        return path

    def action_load_config(self) -> None:
        self._clear_errors()
        path = self._config_path()
        if path is None:
            return
        try:
            loaded = config_file.load(path)
            cfg = loaded.apply(RunConfig(**self.app.default_config.to_json()))
        except TorchdeckError as e:
            self._show_error(e)
            return
        self._base_config = cfg
        self.fill_form(cfg)
        on_form = {f.field for f in FORM}
        hidden = [loaded.keys[f] for f in loaded.values if f not in on_form]
        note = f" (also set, not on this form: {', '.join(hidden)})" if hidden else ""
        self._status(f"[green]loaded {_escape(path)}[/green]{_escape(note)}")

    def action_save_config(self) -> None:
        self._clear_errors()
        path = self._config_path()
        if path is None:
            return
        try:
            cfg = self.form_config()
        except FormProblem as problem:
            self.post_message(problem.error)
            return
        try:
            written = config_file.save(cfg, path)
        except TorchdeckError as e:
            self._show_error(e)
            return
        self._status(f"[green]saved {_escape(str(written))}[/green]")

    def _status(self, text: str) -> None:
        """The line under Start: progress, a success, or an error about no one field (none: no line)."""
        status = self.query_one("#form-error", Static)
        status.update(text)
        status.display = bool(text)

    def _show_error(self, e: TorchdeckError) -> None:
        """An engine error beside the form field it names (the config file's path when none is on the form)."""
        self.post_message(FormError(FORM_FIELDS.get(e.field or ""), str(e)))

    @on(Button.Pressed, "#load-config")
    def _load_pressed(self) -> None:
        self.action_load_config()

    @on(Button.Pressed, "#save-config")
    def _save_pressed(self) -> None:
        self.action_save_config()

    # -- state -------------------------------------------------------------------------------
    def on_mount(self) -> None:
        super().on_mount()
        self.current_run: str | None = None
        self._watch = 0  # which watch_run the tail's updates belong to
        self.view = RunView()
        self._reset_view()
        table = self.query_one("#runs-table", DataTable)
        table.add_column("Run", key="run")
        table.add_column("State", key="state")
        table.add_column("Loss", key="loss")
        self._known_rows: dict[str, tuple] = {}
        self.query_one("#run-progress", ProgressBar).display = False  # idle, it would pulse forever
        for error in self.query(".form-field-error"):
            error.display = False
        self.query_one("#run-head", Static).styles.max_height = 5  # figures, then a final run's message
        self._pending_select: str | None = None
        self._base_config: RunConfig = self.app.default_config
        self._extra_models: set[str] = set()  # models named by a loaded config, not in the catalogue
        self.query_one("#train-more").display = False
        self._status("")
        self.fill_models()
        self.list_runs()
        self.poll_while_shown(self.list_runs)
        self.set_interval(1 / 3, self._redraw_chart)
        table.focus()

    def default_focus_target(self):
        return self.query_one("#runs-table")

    def _reset_view(self, run_id: str = "") -> None:
        self.view = RunView(run_id)
        self.losses_log10: list[float] = []
        self._chart_revision = 0
        self.chart_dirty = False
        self.history_done = False
        self._bindings_state = ""

    # What the tests and benchmarks read: the view's figures.
    @property
    def state(self) -> str:
        return self.view.state if self.current_run else ""

    @property
    def total_steps(self) -> int:
        return self.view.total_steps

    @property
    def step(self) -> int:
        return self.view.step

    def fill_models(self) -> None:
        names = [e.name for e in catalogue_mod.catalogue(self.app.workspace)]
        names += sorted(self._extra_models - set(names))
        select = self.query_one("#f-model", Select)
        current = select.value
        select.set_options([(n, n) for n in names])
        select.value = current if current in names else (names[0] if names else Select.BLANK)

    def choose_model(self, name: str) -> None:
        self.fill_models()
        select = self.query_one("#f-model", Select)
        try:
            select.value = name
        except Exception:
            pass
        self.query_one("#f-epochs", Input).focus()

    # -- starting a run ----------------------------------------------------------------------
    def action_new_run(self) -> None:
        self.query_one("#f-epochs", Input).focus()

    @on(Button.Pressed, "#start")
    def _start_pressed(self) -> None:
        self.action_start()

    @on(Input.Submitted)
    def _submit(self, event: Input.Submitted) -> None:
        if event.input.id == "f-config":
            self.action_load_config()  # Enter on the path opens it; s starts
        else:
            self.action_start()

    def action_start(self) -> None:
        self._clear_errors()
        try:
            cfg = self.form_config()
        except FormProblem as problem:
            self.post_message(problem.error)  # the field being parsed or named, whatever the wording
            return
        self._status("[dim]checking the model and starting…[/dim]")
        self.create_and_launch(cfg)

    @work(thread=True, exclusive=True, group="launch", exit_on_error=False)
    def create_and_launch(self, cfg: RunConfig) -> None:
        from torchdeck.runs.launch import start

        try:
            import_torch()  # one thread at a time imports torch
            run = start(self.app.workspace, cfg)
        except TorchdeckError as e:
            self.post_message(FormError(FORM_FIELDS.get(e.field or ""), str(e)))  # the error's field, never its wording
            return
        except Exception as e:  # never a crashed TUI: the message goes inline, the traceback to the log
            logger.exception("starting a run failed")
            self.post_message(FormError(None, f"could not start the run: {type(e).__name__}: {e}"))
            return
        self.post_message(RunStarted(run.id))

    @on(FormError)
    def _form_error(self, message: FormError) -> None:
        """Shown whole beside its field (opening "more" when the field is there), or under the
        Start button when it is about no one field."""
        if not message.field:
            self._status(f"[red]{_escape(message.text)}[/red]")
            return
        self._status("")
        if message.field in MORE_WIDGETS and not self.query_one("#train-more").display:
            self.action_toggle_more(show=True)
        error = self.query_one(f"#{message.field}-error", Static)
        error.update(f"[red]{_escape(message.text)}[/red]")
        error.display = True
        widget = self.query_one(f"#{message.field}")
        widget.add_class("invalid")
        widget.focus()
        self.call_after_refresh(error.scroll_visible, animate=False)

    def _clear_errors(self) -> None:
        self._status("")
        for w in self.query(".form-field-error"):
            w.update("")
            w.display = False
        for w in self.query(".invalid"):
            w.remove_class("invalid")

    @on(RunStarted)
    def _run_started(self, message: RunStarted) -> None:
        self._status(f"[green]started {message.run_id}[/green]")
        self.show_run(message.run_id)

    # -- the run list ------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="list", exit_on_error=False)
    def list_runs(self) -> None:
        self.post_message(RunsListed(self.app.store.summaries()))

    @on(RunsListed)
    def _runs_listed(self, message: RunsListed) -> None:
        table = self.query_one("#runs-table", DataTable)
        wanted = [s.id for s in message.summaries]
        if wanted != list(self._known_rows):
            selected = self._pending_select or self.current_run
            table.clear()
            self._known_rows = {}
            for s in message.summaries:
                row = self._row_for(s)
                table.add_row(*row, key=s.id)
                self._known_rows[s.id] = row
            if selected in self._known_rows:
                table.move_cursor(row=wanted.index(selected))
            self._pending_select = None
        else:
            for s in message.summaries:
                row = self._row_for(s)
                if self._known_rows.get(s.id) != row:
                    for col, value in zip(("run", "state", "loss"), row):
                        table.update_cell(s.id, col, value, update_width=True)
                    self._known_rows[s.id] = row
        if self.current_run is None and message.summaries:
            self.watch_run(wanted[table.cursor_row] if table.row_count else wanted[0])
        elif self.current_run in self._known_rows and self.view.final and self.history_done and \
                self._known_rows[self.current_run][1] in ACTIVE_STATES:
            self.watch_run(self.current_run)  # a final run written again (resumed): its tail had ended
        elif self.current_run is not None and self.current_run not in self._known_rows:
            self._unwatch()  # removed by someone else (`runs rm`)
            if message.summaries:
                self.watch_run(wanted[table.cursor_row] if table.row_count else wanted[0])

    @staticmethod
    def _row_for(s) -> tuple:
        label = s.name if s.name and s.name != s.id else short_run_label(s.id)
        return (label, s.state, fmt_number(s.last_loss))

    @on(DataTable.RowHighlighted, "#runs-table")
    def _run_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None and event.row_key.value != self.current_run:
            self.watch_run(event.row_key.value)

    # -- watching a run ----------------------------------------------------------------------
    def watch_run(self, run_id: str) -> None:
        self.current_run = run_id
        self._watch += 1  # updates still queued from an earlier watch (even of this run) are dropped
        self._reset_view(run_id)
        self.query_one("#loss-log", Log).clear()
        self.query_one("#loss-chart", LossChart).set_values([])
        bar = self.query_one("#run-progress", ProgressBar)
        bar.update(total=1, progress=0)
        bar.display = True
        self.query_one("#run-head", Static).update(f"{_escape(run_id)}: loading…")
        self.refresh_bindings()
        self.tail_run(run_id, self._watch)

    def _unwatch(self) -> None:
        self.workers.cancel_group(self, "tail")
        self._watch += 1
        self.current_run = None
        self._reset_view()
        self.query_one("#loss-log", Log).clear()
        self.query_one("#loss-chart", LossChart).set_values([])
        self.query_one("#run-progress", ProgressBar).display = False
        self.query_one("#run-head", Static).update("No run selected. Fill in the form and press s to start one.")
        self.refresh_bindings()

    @work(thread=True, exclusive=True, group="tail", exit_on_error=False)
    def tail_run(self, run_id: str, watch: int) -> None:
        """Tail the run's events and observe it; post what was read. Ends once the run is final
        and every whole line is read (a dead worker's torn last line never keeps it going)."""
        worker = get_current_worker()
        try:
            run = self.app.store.get(run_id)
        except TorchdeckError:
            return
        summary = run.summary()
        name = summary.name if summary is not None else ""
        tail = ev.EventTail(run.events_path)
        reset = True
        last_posted = (None, None, None)
        posted_at = 0.0
        while not worker.is_cancelled:
            # Observe before reading: once a final state is seen, what is read after it is everything.
            status, state = read_observation(run)
            now = time.monotonic()
            batch = tail.read_new(1 << 20)
            key = (state, status.step, status.heartbeat)
            if batch or reset or key[:2] != last_posted[:2] or now - posted_at >= HEARTBEAT_REPOST:
                self.post_message(RunUpdate(run_id, batch, status, state, now, reset=reset, caught_up=tail.caught_up,
                                            name=name, watch=watch))
                reset = False
                last_posted, posted_at = key, now
            if state in FINAL_STATES and tail.caught_up:
                return
            if tail.caught_up:
                time.sleep(0.1)

    @on(RunUpdate)
    def _run_update(self, message: RunUpdate) -> None:
        if message.run_id != self.current_run or message.watch != self._watch:
            return  # a late message from a run no longer watched, or from an earlier watch of this one
        view = self.view
        revision = view.revision
        view.observe(status=message.status, observed_state=message.observed_state, now=message.observed_at,
                     name=message.name)
        for e in message.events:
            view.feed([e])
            if isinstance(e, ev.Losses):
                self.losses_log10.extend(math.log10(v) if v > 0 else -12.0 for v in e.values if v is not None)
                self.chart_dirty = True
        # The log keeps its last LOG_LINES lines: a long history is not formatted only to be dropped.
        lines: list[str] = []
        for e in reversed(message.events):
            room = LOG_LINES - len(lines)
            if room <= 0:
                break
            lines[:0] = self._lines_for(e, room)
        if view.revision != revision:  # a resume replaced history: the chart follows the view's
            loss = view.metrics["loss"].values
            self.losses_log10 = [math.log10(v) if v > 0 else -12.0 for v in loss if v == v]
            self.chart_dirty = True
        if lines:
            log = self.query_one("#loss-log", Log)
            # Follow the end unless the user has focused the log and scrolled up to read.
            follow = not log.has_focus or log.is_vertical_scroll_end
            log.write_lines(lines, scroll_end=False)
            if follow:  # after the refresh that sizes the new lines, or the end is not the end
                self.call_after_refresh(log.scroll_end, animate=False, x_axis=False)
        self.history_done = message.caught_up
        if view.state != self._bindings_state:
            self._bindings_state = view.state
            self.refresh_bindings()
        self._draw_head()

    @staticmethod
    def _lines_for(e, limit: int = LOG_LINES) -> list[str]:
        """The log's lines for one event (a loss chunk: its last `limit` losses)."""
        if isinstance(e, ev.Losses):
            bad = {i: r for i, r in e.nonfinite}
            first = max(0, len(e.values) - limit)
            return [f"e{e.epoch:<3} step {e.first_step + i:>8}  loss "
                    + (f"{bad.get(i, 'nan')}  <- not finite" if v is None else fmt_loss(v))
                    for i, v in enumerate(e.values[first:], start=first)]
        if isinstance(e, ev.Started):
            cfg = e.config if isinstance(e.config, dict) else {}
            return [f"started: {cfg.get('model')}, {fmt_count(e.num_params)} params, {e.device}",
                    f"  {cfg.get('epochs')} epochs x {fmt_count(e.steps_per_epoch)} steps",
                    f"  batch {cfg.get('batch_size')}, {cfg.get('optimizer')}, lr {fmt_number(cfg.get('lr'))}"]
        if isinstance(e, ev.EpochEnd):
            acc = "" if e.val_accuracy is None else f", accuracy {e.val_accuracy:.1%}"
            return [f"epoch {e.epoch} ends at step {fmt_count(e.step)} ({fmt_duration(e.seconds)})",
                    f"  train loss {fmt_loss(e.train_loss)}, val {fmt_loss(e.val_loss)}{acc}"]
        if isinstance(e, ev.Checkpointed):
            line = f"checkpoint {e.name} saved ({e.reason})"
            if e.wait_s is not None and e.wait_s >= 0.05:  # the one cost of a save training can see
                line += f"; training waited {e.wait_s:.2f} s for the previous save"
            return [line]
        if isinstance(e, ev.StateChanged):
            return [f"{e.state} at step {fmt_count(e.step)}"]
        if isinstance(e, ev.Resumed):
            where = f" from {e.checkpoint}" if e.checkpoint else (" from the start" if not e.step else "")
            lines = [f"resumed at step {fmt_count(e.step)}{where}: what follows replaces the history after it"]
            if e.changes:
                lines.append("  " + ", ".join(f"{k} {v[0]} -> {v[1]}" for k, v in e.changes.items()
                                              if isinstance(v, list) and len(v) == 2))
            if not e.exact:
                lines.append(f"  not exact: {e.note or 'settings changed'}")
            return lines
        if isinstance(e, ev.Ended):
            return [f"run {e.state} at step {fmt_count(e.step)}" + (f": {e.message}" if e.message else "")]
        return []  # scalars: in the header and `runs show`, not a line per point

    def _draw_head(self) -> None:
        view = self.view
        state = view.state
        title = view.name if view.name and view.name != view.run_id else view.run_id
        parts = [f"[b]{_escape(title)}[/b]  {_state_markup(state)}"]
        if view.heartbeat_stale:
            parts.append(f"[red]no heartbeat for {fmt_duration(view.stale_for)}[/red]")
        line2 = (f"step {fmt_number(view.step)}/{fmt_number(view.total_steps)}  "
                 f"epoch {fmt_number(view.epoch)}/{fmt_number(view.epochs) if view.epochs else '?'}")
        line3 = f"loss {fmt_number(view.last_loss)}" if view.last_loss is not None else ""
        rate = view.steps_per_second
        if rate:
            line3 += f"  {_rate_text(rate)} steps/s" + (" avg" if view.rate_is_average else "")
        if view.eta_seconds is not None:
            line3 += f"  ETA {fmt_duration(view.eta_seconds)}"
        extras = []
        if view.validation and view.validation[-1].val_loss is not None:
            extras.append(f"val {fmt_number(view.validation[-1].val_loss)}")
        for name in ("lr", "grad_norm"):
            series = view.metrics.get(name)
            if series is not None and series.last is not None:
                extras.append(f"{name.replace('_', ' ')} {fmt_number(series.last, 3)}")
        text = "  ".join(parts) + "\n" + line2 + ("\n" + line3 if line3 else "")
        if view.message and state in FINAL_STATES and state != "finished":
            text += f"\n[dim]{_escape(view.message)}[/dim]"
        if extras:
            text += "\n[dim]" + "  ".join(extras) + "[/dim]"
        self.query_one("#run-head", Static).update(text)
        bar = self.query_one("#run-progress", ProgressBar)
        if view.total_steps:
            bar.update(total=view.total_steps, progress=min(view.step, view.total_steps))

    def _redraw_chart(self) -> None:
        if not self.chart_dirty:
            return
        self.chart_dirty = False
        self.query_one("#loss-chart", LossChart).set_values(self.losses_log10)

    # -- control -----------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """Greyed in the footer (None) when the selected run cannot take it; Pause and Continue
        share p, and only the one that fits is shown (False hides the other)."""
        state = self.state
        if action == "stop":
            return True if self.current_run and state in ACTIVE_STATES else None
        if action == "pause":
            if state == "paused":
                return False
            return True if state in ("running", "saving") else None
        if action == "resume":
            return True if state == "paused" else False
        if action == "remove_run":
            return True if self.current_run else None
        if action == "resume_run":
            return True if self.current_run and state in FINAL_STATES else None
        return True

    def action_stop(self) -> None:
        if not self.current_run or self.state not in ACTIVE_STATES:
            self.notify(self._why_not("stop"), severity="warning")
            return
        self.notify(f"stopping {self._label()} (checkpoint first)")
        self.stop_run(self.current_run)

    @work(thread=True, group="control", exit_on_error=False)
    def stop_run(self, run_id: str) -> None:
        try:
            state = self.app.store.get(run_id).stop()
        except TorchdeckError as e:
            self.app.call_from_thread(self.notify, str(e), severity="error")
            return
        self.app.call_from_thread(self.notify, f"{run_id} {state}")

    def action_pause(self) -> None:
        if not self.current_run or self.state not in ("running", "saving"):
            self.notify(self._why_not("pause"), severity="warning")
            return
        self._request("pause", "pausing at the next chunk boundary")

    def action_resume(self) -> None:
        if not self.current_run or self.state != "paused":
            self.notify(self._why_not("continue"), severity="warning")
            return
        self._request("continue", "continuing")

    def action_resume_run(self) -> None:
        if not self.current_run or self.state not in FINAL_STATES:
            why = "no run selected to resume" if not self.current_run else \
                f"cannot resume {self._label()}: it is {self.state} (only a run that has ended can be resumed)"
            self.notify(why, severity="warning", markup=False)
            return
        self.app.resume_run(self.current_run)

    def show_run(self, run_id: str) -> None:
        """Select and watch a run (one just resumed)."""
        self._pending_select = run_id
        self.list_runs()
        self.watch_run(run_id)
        self.query_one("#runs-table", DataTable).focus()

    def _request(self, action: str, note: str) -> None:
        try:
            self.app.store.get(self.current_run).request(action)
        except (TorchdeckError, OSError) as e:
            self.notify(f"cannot {action} {self._label()}: {e}", severity="error")
            return
        self.notify(note)

    def _why_not(self, verb: str) -> str:
        if not self.current_run:
            return f"no run selected to {verb}"
        if self.state in FINAL_STATES:
            return f"cannot {verb}: {self._label()} has already {self.state}" if self.state != "failed" \
                else f"cannot {verb}: {self._label()} failed"
        return f"cannot {verb}: {self._label()} is {self.state}"

    def _label(self) -> str:
        v = self.view
        return v.name if v.name and v.name != v.run_id else (v.run_id or "the run")

    def action_remove_run(self) -> None:
        run_id = self.current_run
        if not run_id:
            self.notify("no run selected to remove", severity="warning")
            return
        if self.state in ACTIVE_STATES:
            self.notify(f"cannot remove {self._label()}: it is {self.state}; stop it first (x)", severity="warning")
            return
        label = self._label()

        def answered(yes: bool | None) -> None:
            if yes:
                self.remove_run(run_id)

        self.app.push_screen(
            Confirm("Remove run?", f"Delete run {label} ({run_id}) with its history and checkpoints?\n"
                    "Exports made from it stay.", "remove", "keep"), answered)

    @work(thread=True, group="control", exit_on_error=False)
    def remove_run(self, run_id: str) -> None:
        try:
            self.app.store.remove(run_id)
        except TorchdeckError as e:
            self.app.call_from_thread(self.notify, str(e), severity="error")
            return
        except OSError as e:
            logger.exception("removing run %s failed", run_id)
            self.app.call_from_thread(self.notify, f"could not remove {run_id}: {e}", severity="error")
            return
        self.post_message(RunRemoved(run_id))

    @on(RunRemoved)
    def _run_removed(self, message: RunRemoved) -> None:
        self.notify(f"removed {message.run_id}")
        if self.current_run == message.run_id:
            self._unwatch()
        self.list_runs()

    def on_screen_resume(self) -> None:
        self.fill_models()
        self.list_runs()


def _rate_text(rate: float) -> str:
    """Steps a second: whole, with separators, once there are tens of them."""
    return fmt_count(round(rate)) if rate >= 10 else fmt_number(rate, 3)


def _escape(text: str) -> str:
    """Text from files and errors shown as it is (a [bracket] is not markup)."""
    from rich.markup import escape

    return escape(str(text))


def _state_markup(state: str) -> str:
    colour = {"running": "green", "finished": "green", "paused": "yellow", "saving": "yellow", "queued": "yellow",
              "stopped": "yellow", "crashed": "red", "failed": "red", "diverged": "red"}.get(state, "white")
    return f"[{colour}]{state or '…'}[/{colour}]"
