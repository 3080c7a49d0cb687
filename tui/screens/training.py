"""Training: start a run, watch every metric stream in, compare runs, stop or pause them.

The run itself lives in a worker process; this screen only tails its files (torchdeck.runs.events)
from a thread and draws. Quitting the TUI does not stop the run; selecting it again replays
its whole history from events.jsonl.

The monitor: the run's header; a chart of one metric (or a grid, one chart per metric) with the
validation points, smoothing, log scale, step or time axis, zoom and a cursor; marked runs
overlaid in their colours; a log that formats only the lines in view. The tail thread parses
the events file; the UI thread feeds them to the RunView (compact arrays, whole chunks at a
time) and redraws on a timer a few times a second, only what changed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Horizontal, Vertical, VerticalScroll
from textual.widgets import (
    Button,
    Input,
    Label,
    ProgressBar,
    Select,
    Static,
)
from textual.worker import get_current_worker
from torchdeck.errors import TorchdeckError
from torchdeck.fmt import fmt_count, fmt_duration, fmt_number
from torchdeck.models import catalogue as catalogue_mod
from torchdeck.options import (
    ACTIVE_STATES,
    FINAL_STATES,
    LOSSES,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
)
from torchdeck.runs import command as command_run
from torchdeck.runs import config_file
from torchdeck.runs import events as ev
from torchdeck.runs.config import RunConfig, parse_betas, parse_number
from torchdeck.runs.store import Run
from torchdeck.runs.view import RunView, read_observation
from torchdeck.sources import KINDS as SOURCE_KINDS

from ..heavy import import_torch
from ..messages import (
    FormError,
    LogsScanned,
    LogsScanProgress,
    OverlayUpdate,
    RunRemoved,
    RunsListed,
    RunStarted,
    RunUpdate,
)
from ..widgets import Curve, FileLines, MetricChart, RunLogLines, RunTable, VirtualLog
from ..widgets.run_table import PALETTE
from .base import ModeScreen
from .dialogs import Confirm
from .open_logs import OpenLogsDialog

MAX_CHARTS = 6  # the grid's charts (one per metric); more metrics: [ and ] page through them
SMOOTHING_STEPS = (0.0, 0.6, 0.8, 0.9, 0.95, 0.99, 0.999)  # + and - move along
# TensorBoard's default is 0.6, over at most 1,000 sampled points; every point is kept here, tens
# to a screen column, where 0.6 still shows the noise: 0.9 is the default.
DEFAULT_SMOOTHING = 0.9
ZOOM_MIN = 50  # steps: z halves the window down to this
REDRAW_INTERVAL = 0.25  # seconds between chart redraws while streaming (bytes on an SSH link)
TAIL_POLL = 0.05  # seconds between reads of a caught-up run's files (half the loss-on-screen wait of 0.1)
LOG_POLL_INTERVAL = 0.1  # the log catches up at most this often (the loss latency benchmark's figure)
CURRENT_COLOUR = PALETTE[0]
VAL_COLOUR = "#edc948"
# Metrics first in the chart order; the rest follow alphabetically.
METRIC_ORDER = ("loss", "val_loss", "val_accuracy", "lr", "grad_norm", "samples_per_s", "tokens_per_s", "rss_mb",
                "cuda_allocated_mb", "cuda_reserved_mb", "cuda_peak_mb")
HELD_POINTS = 2000  # a metric with at most this many points, the last before the run's step, is held to it
LINEAR_METRICS = ("val_accuracy", "samples_per_s", "tokens_per_s", "rss_mb", "skipped_steps")
HEARTBEAT_REPOST = 1.0  # seconds: a quiet run is still observed this often (a stale heartbeat shows)
# The tail hands the UI one batch at a time (the next is read once the last is fed), sized so
# that feeding it takes about FEED_BUDGET of the UI thread: queued batches were fed back to back
# without a frame or a key between them (a 1M-step replay was one 13.7 s stall).
FEED_BUDGET = 0.02  # seconds of the UI thread per batch (0.04 left 60-100 ms stalls: a batch, then a frame)
TAIL_READ_MIN, TAIL_READ_MAX = 32 << 10, 4 << 20  # bytes a read


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
    FormField("f-nproc", "nproc", "Processes", "int"),
)
FORM = COMMON_FIELDS + MORE_FIELDS
# An engine error's field (the option's name) -> the form widget where it is fixed; the config
# file's path for an error about the file itself.
FORM_FIELDS = {f.field: f.wid for f in FORM} | {"learning_rate": "f-lr", "config": "f-config"}
MORE_WIDGETS = {f.wid for f in MORE_FIELDS} | {"f-config"}
# How a value is named in a form error ("learning rate must be a number").
_WORDS = {"nproc": "nproc", "lr": "learning rate", "grad_clip": "clip grad norm", "keep_checkpoints": "keep checkpoints"}
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
    AUTO_FOCUS = "#runs-table RunGrid"  # never a text field: typed keys would land in it
    BINDINGS = [
        *ModeScreen.BINDINGS,
        Binding("s", "start", "Start", id="training.start"),
        Binding("n", "new_run", "New run", show=False, id="training.new"),
        Binding("x", "stop", "Stop", id="training.stop"),
        Binding("p", "pause", "Pause", id="training.pause"),
        Binding("p", "resume", "Continue", id="training.continue"),  # shown instead of Pause while paused
        Binding("r", "resume_run", "Resume", id="training.resume"),
        Binding("d", "remove_run", "Remove", show=False, id="training.remove"),
        Binding("m", "toggle_more", "More", show=False, id="training.more"),
        Binding("o", "load_config", "Open config", show=False, id="training.load"),  # l is the app's Log
        Binding("w", "save_config", "Write config", show=False, id="training.save"),
        Binding("f", "toggle_form", "Form", show=False, id="training.form"),
        Binding("i", "open_logs", "Open logs", show=False, id="training.open_logs"),  # TensorBoard, HF, ...
        Binding("right_square_bracket", "next_metric", "Metric", id="training.metric", key_display="]"),
        Binding("left_square_bracket", "previous_metric", "Previous metric", show=False, id="training.metric_prev"),
        Binding("g", "toggle_grid", "Grid", id="training.grid"),
        # After the chart keys: a narrow footer drops it before them (the help screen lists it).
        Binding("e", "run_command", "Command", id="training.command"),
        Binding("L", "toggle_log_scale", "Log scale", show=False, id="training.log_scale"),
        Binding("t", "toggle_time_axis", "Step/time axis", show=False, id="training.time_axis"),
        Binding("plus,equals_sign", "smooth(1)", "Smooth more", show=False, id="training.smooth_more"),
        Binding("minus", "smooth(-1)", "Smooth less", show=False, id="training.smooth_less"),
        Binding("z", "zoom_in", "Zoom", show=False, id="training.zoom"),
        Binding("Z", "zoom_all", "Zoom out", show=False, id="training.zoom_all"),
        Binding("comma", "cursor(-1)", "Cursor left", show=False, id="training.cursor_left"),
        Binding("full_stop", "cursor(1)", "Cursor right", show=False, id="training.cursor_right"),
        Binding("less_than_sign", "cursor(-10)", "Cursor left 10", show=False, id="training.cursor_left10"),
        Binding("greater_than_sign", "cursor(10)", "Cursor right 10", show=False, id="training.cursor_right10"),
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
                    # Filled on first use (m, an error in it): its ~110 widgets were half of
                    # the screen's first mount, paid on every start for a fold most runs never open.
                    yield Vertical(id="train-more")
                with Vertical(id="train-runs", classes="panel") as runs:
                    runs.border_title = "Runs"
                    yield RunTable(id="runs-table")
            with Vertical(id="train-right", classes="panel") as right:
                right.border_title = "Run"
                yield Static("No run selected. Fill in the form and press s to start one.", id="run-head")
                yield ProgressBar(id="run-progress", show_eta=False)
                with Container(id="charts"):
                    for i in range(MAX_CHARTS):
                        yield MetricChart(id=f"chart-{i}", classes="metric-chart")
                yield VirtualLog(id="loss-log")
        yield from self.compose_footer()

    def _compose_more(self, cfg: RunConfig) -> ComposeResult:
        yield from self._compose_fields(MORE_FIELDS, cfg)
        yield Static("", id="f-device-list", classes="dim")
        with Horizontal(classes="form-row"):
            yield Label("Config file", classes="form-label")
            yield Input(placeholder="run.toml", id="f-config", compact=True)
        yield Static("", id="f-config-error", classes="form-field-error")
        with Horizontal(classes="form-row"):
            yield Button("Load", id="load-config", compact=True)
            yield Label(" o  ", classes="dim")
            yield Button("Save", id="save-config", compact=True)
            yield Label(" w", classes="dim")

    async def _fill_more(self) -> None:
        """Mount the "more" fields (once), showing the base config's values: until then the form's
        values for them are the base config's own."""
        if self._more_filled:
            return
        self._more_filled = True
        more = self.query_one("#train-more")
        await more.mount_compose(self._compose_more(self._base_config))
        for error in more.query(".form-field-error"):
            error.display = False
        self._list_devices()

    @work(thread=True, exclusive=True, exit_on_error=False, group="form-devices")
    def _list_devices(self) -> None:
        """Under the device field: each GPU (nvidia-smi's numbering) with its free memory."""
        from torchdeck.system import SystemReader, gpu_choices

        reader = SystemReader()
        try:
            sample = reader.sample()
        finally:
            reader.close()
        choices = gpu_choices(sample)
        text = ("GPUs: " + "; ".join(label for _, label in choices)) if choices else \
            "no GPU here: runs train on the cpu (Processes N: N Gloo CPU processes)"
        self.app.call_from_thread(self._show_devices, text)

    def _show_devices(self, text: str) -> None:
        for w in self.query("#f-device-list"):
            w.update(_escape(text))

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
        for f in FORM if self._more_filled else COMMON_FIELDS:
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
    async def action_toggle_more(self, show: bool | None = None) -> None:
        await self._fill_more()
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

    async def action_load_config(self) -> None:
        await self._fill_more()
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

    async def action_save_config(self) -> None:
        await self._fill_more()
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
    async def _load_pressed(self) -> None:
        await self.action_load_config()

    @on(Button.Pressed, "#save-config")
    async def _save_pressed(self) -> None:
        await self.action_save_config()

    # -- state -------------------------------------------------------------------------------
    def on_mount(self) -> None:
        super().on_mount()
        self.current_run: str | None = None
        self.command: dict | None = None  # the watched run's command (torchdeck.runs.command), if it is one
        self.log_files: FileLines | None = None
        self._watch = 0  # which watch_run the tail's updates belong to
        self.view = RunView()
        # chart settings (kept across runs)
        self.chart_metric = "loss"  # the first chart's metric; the grid follows it in METRIC_ORDER
        self.grid = False
        self.smoothing = DEFAULT_SMOOTHING
        self.log_scale: bool | None = None  # None: each metric's own (log for losses, lr, norms)
        self.time_axis = False
        self.zoom: float | None = None  # the last N steps (or seconds) shown; None: all
        self.overlays: dict[str, RunView] = {}  # marked runs' views, by id
        self.mark_colours: dict[str, str] = {}
        self._overlay_token = 0  # a count: each overlay's thread has its own token
        self._overlay_tokens: dict[str, int] = {}  # marked run -> the token its thread carries
        self._reset_view()
        self._known_ids: list[str] = []
        self._head_text = ""
        self._head_drawn_width = 0
        self._log_polled = 0.0
        self._log_poll_pending = False
        self._head_drawn = 0.0
        self.query_one("#run-progress", ProgressBar).display = False  # idle, it would pulse forever
        for error in self.query(".form-field-error"):
            error.display = False
        self.query_one("#run-head", Static).styles.max_height = 5  # figures, then a final run's message
        self._pending_select: str | None = None
        self._base_config: RunConfig = self.app.default_config
        self._more_filled = False
        self._extra_models: set[str] = set()  # models named by a loaded config, not in the catalogue
        self.query_one("#train-more").display = False
        self._status("")
        self.fill_models()
        self.list_runs()
        self.poll_while_shown(self.list_runs)
        self.set_interval(REDRAW_INTERVAL, self._tick)
        self._arrange_charts()
        self.query_one("#runs-table", RunTable).focus()

    def default_focus_target(self):
        return self.query_one("#runs-table", RunTable).table

    def _reset_view(self, run_id: str = "") -> None:
        self.view = RunView(run_id)
        self.log_source = RunLogLines(self.view)
        self.query_one("#loss-log", VirtualLog).set_source(self.log_source)
        self.history_done = False
        self._bindings_state = ""
        self._metrics_seen: tuple[str, ...] = ()
        self._curves_key: tuple = ()
        self._held_cache: dict[str, tuple] = {}
        self.chart_dirty = True

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
    async def _form_error(self, message: FormError) -> None:
        """Shown whole beside its field (opening "more" when the field is there), or under the
        Start button when it is about no one field."""
        if not message.field:
            self._status(f"[red]{_escape(message.text)}[/red]")
            return
        self._status("")
        if message.field in MORE_WIDGETS and not self.query_one("#train-more").display:
            await self.action_toggle_more(show=True)
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
        table = self.query_one("#runs-table", RunTable)
        table.set_summaries(message.summaries)
        self._set_runs_title(table.title)
        by_id = {s.id: s for s in message.summaries}
        ids = list(by_id)
        new_ids = ids != self._known_ids
        self._known_ids = ids
        if self._pending_select in by_id:
            table.select(self._pending_select)
            self._pending_select = None
        if self.current_run is None and message.summaries:
            # The one running (the newest of them), else the newest run.
            active = [s for s in message.summaries if s.state in ACTIVE_STATES]
            first = max(active or message.summaries, key=lambda s: (s.created or 0, s.id))
            if not table.select(first.id):
                self.watch_run(first.id)
        elif self.current_run in by_id and self.view.final and self.history_done and \
                by_id[self.current_run].state in ACTIVE_STATES:
            self.watch_run(self.current_run)  # a final run written again (resumed): its tail had ended
        elif self.current_run is not None and self.current_run not in by_id:
            self._unwatch()  # removed by someone else (`runs rm`)
            if message.summaries:
                cursor = table.cursor_run_id
                self.watch_run(cursor or ids[0])
        if new_ids:
            for run_id in [r for r in self.overlays if r not in by_id]:
                self.overlays.pop(run_id, None)
                self._overlay_tokens.pop(run_id, None)

    @on(RunTable.Selected)
    def _run_selected(self, message: RunTable.Selected) -> None:
        if message.run_id is not None and message.run_id != self.current_run:
            self.watch_run(message.run_id)

    @on(RunTable.TitleChanged)
    def _runs_title(self, message: RunTable.TitleChanged) -> None:
        self._set_runs_title(message.title)

    def _set_runs_title(self, title: str | None) -> None:
        """Set only when it changed: setting a border title repaints the whole panel, and the
        run list is re-read every 2 s (an idle screen wrote 1.6-4.8 KB/s to the terminal)."""
        box = self.query_one("#train-runs")
        if box.border_title != (title or "Runs"):
            box.border_title = title or "Runs"

    @on(RunTable.MarksChanged)
    def _marks_changed(self, message: RunTable.MarksChanged) -> None:
        """Marked runs are overlaid on the charts: each one's history is tailed by a thread of
        its own (the watched run's own tail feeds its view)."""
        self.mark_colours = dict(message.colors)
        for run_id in list(self.overlays):
            if run_id not in message.colors:  # unmarked: its thread sees its token gone and ends
                del self.overlays[run_id]
                self._overlay_tokens.pop(run_id, None)
        for run_id in message.run_ids:
            if run_id not in self.overlays:  # newly marked: read its history (the others keep theirs)
                self._overlay_token += 1
                self._overlay_tokens[run_id] = self._overlay_token
                self.overlays[run_id] = RunView(run_id)
                self.tail_overlay(run_id, self._overlay_token)
        self.chart_dirty = True

    def _open_tail(self, run_id: str):
        """(run, its name, a tail of its events) for a tail thread; None when the run is gone."""
        try:
            run = self.app.store.get(run_id)
        except TorchdeckError:
            return None
        summary = run.summary()
        return run, summary.name if summary is not None else "", ev.EventTail(run.events_path)

    @work(thread=True, group="overlay", exit_on_error=False)
    def tail_overlay(self, run_id: str, token: int) -> None:
        """A marked run's events, read to the end and followed while it runs."""
        worker = get_current_worker()
        opened = self._open_tail(run_id)
        if opened is None:
            return
        run, name, tail = opened
        if run.imported() is not None:
            from torchdeck.sources import mirror

            mirror.sync(run, wait=0.5)  # its history is read from its source when first shown
        while not worker.is_cancelled and self._overlay_tokens.get(run_id) == token:
            status, state = read_observation(run)
            batch = tail.read_new(1 << 20)
            if batch:
                self.post_message(OverlayUpdate(run_id, batch, token, name))
            if state in FINAL_STATES and tail.caught_up:
                return
            if tail.caught_up:
                time.sleep(0.5)

    @on(OverlayUpdate)
    def _overlay_update(self, message: OverlayUpdate) -> None:
        view = self.overlays.get(message.run_id)
        if view is None or message.token != self._overlay_tokens.get(message.run_id):
            return
        if message.name:
            view.name = message.name
        view.feed(message.events)
        self.chart_dirty = True

    # -- watching a run ----------------------------------------------------------------------
    def watch_run(self, run_id: str) -> None:
        self.current_run = run_id
        self._watch += 1  # updates still queued from an earlier watch (even of this run) are dropped
        self._reset_view(run_id)
        # A command run's log is its output (worker.log), read by the tail thread as it grows.
        run = Run(self.app.store.root / run_id)
        self.command = command_run.command_info(run)
        self.log_files = FileLines(run.log_path) if self.command is not None else None
        if self.log_files is not None:
            self.query_one("#loss-log", VirtualLog).set_source(self.log_files)
        bar = self.query_one("#run-progress", ProgressBar)
        bar.update(total=1, progress=0)
        bar.display = True
        self.query_one("#run-head", Static).update(f"{_escape(run_id)}: loading…")
        self.refresh_bindings()
        watch = self._watch  # after the next frame: a fresh screen's first paint is not shared with parsing
        self.call_after_refresh(lambda: self.tail_run(run_id, watch) if watch == self._watch else None)

    def _unwatch(self) -> None:
        self.workers.cancel_group(self, "tail")
        self._watch += 1
        self.current_run = None
        self.command = self.log_files = None
        self._reset_view()
        self.query_one("#run-progress", ProgressBar).display = False
        self.query_one("#run-head", Static).update("No run selected. Fill in the form and press s to start one.")
        self.refresh_bindings()

    @work(thread=True, exclusive=True, group="tail", exit_on_error=False)
    def tail_run(self, run_id: str, watch: int) -> None:
        """Tail the run's events and observe it; post what was read. Ends once the run is final
        and every whole line is read (a dead worker's torn last line never keeps it going)."""
        worker = get_current_worker()
        opened = self._open_tail(run_id)
        if opened is None:
            return
        run, name, tail = opened
        follower = None
        if run.imported() is not None:
            from torchdeck.sources import mirror

            # Read from another tool's logs: its history is converted now (in this thread), and its
            # source followed while watched, so a training writing it shows each point within a second.
            follower = mirror.Follower(run)
            try:
                follower.start()
            except TorchdeckError:
                follower = None  # followed by another process (or its lock unavailable): tail only
        try:
            self._tail(worker, run, run_id, name, tail, watch)
        finally:
            if follower is not None:
                follower.stop()

    def _tail(self, worker, run, run_id: str, name: str, tail, watch: int) -> None:
        files = self.log_files if watch == self._watch else None  # a command run's output
        reset = True
        last_posted = (None, None, None)
        posted_at = 0.0
        read_size = TAIL_READ_MIN
        fed = threading.Event()
        fed.set()
        in_flight = 0  # bytes of the batch the UI has not fed yet
        self._tail_fed = (watch, fed, [0.0])  # the UI sets fed (and the seconds it took) per batch
        while not worker.is_cancelled:
            if in_flight:
                # One batch in flight: the next is read once the UI has fed it. Parsing it meanwhile
                # would make the two threads take turns on the GIL: the UI's feed ran 6x slower
                # (a 1M-step replay took 4 s where parsing and feeding take 0.9 s of CPU).
                waited = time.monotonic()
                while not fed.wait(0.1) and not worker.is_cancelled and time.monotonic() - waited < 5.0:
                    pass
                cost = self._tail_fed[2][0]
                read_size = int(min(TAIL_READ_MAX, max(TAIL_READ_MIN, in_flight * FEED_BUDGET / max(cost, 1e-4))))
                in_flight = 0
            # Observe before reading: once a final state is seen, what is read after it is everything.
            status, state = read_observation(run)
            now = time.monotonic()
            if files is not None:
                while files.read_more() and state in FINAL_STATES:
                    pass  # the end: all of it (the supervisor's last line is written before its state)
            offset = tail.offset
            batch = tail.read_new(read_size)
            key = (state, status.step, status.heartbeat)
            if batch or reset or key[:2] != last_posted[:2] or now - posted_at >= HEARTBEAT_REPOST:
                fed.clear()
                in_flight = tail.offset - offset if batch else 0
                if not batch:
                    fed.set()
                self.post_message(RunUpdate(run_id, batch, status, state, now, reset=reset, caught_up=tail.caught_up,
                                            name=name, watch=watch))
                reset = False
                last_posted, posted_at = key, now
            if state in FINAL_STATES and tail.caught_up:
                return
            if tail.caught_up:
                time.sleep(TAIL_POLL)

    @on(RunUpdate)
    def _run_update(self, message: RunUpdate) -> None:
        if message.run_id != self.current_run or message.watch != self._watch:
            return  # a late message from a run no longer watched, or from an earlier watch of this one
        view = self.view
        view.observe(status=message.status, observed_state=message.observed_state, now=message.observed_at,
                     name=message.name)
        if message.events:
            t = time.perf_counter()
            self.log_source.feed(message.events)  # the view, then the log's index of event lines
            if self.smoothing:
                # the smoothed copies keep up batch by batch (a 1M-step replay's one pass at the
                # end was a 170-300 ms stall); shown once the history is caught up
                for name in {"loss", *self.shown_metrics()} - {"val_loss", "val_accuracy"}:
                    series = view.metrics.get(name)
                    if series is not None and len(series):
                        series.ema(self.smoothing)
            fed = getattr(self, "_tail_fed", None)
            if fed is not None and fed[0] == message.watch:
                fed[2][0] = time.perf_counter() - t
                fed[1].set()
            self.chart_dirty = True
            if self.history_done:  # a replay's log follows on the redraw tick (4 a second), not 10
                self._poll_log_soon()
        if message.caught_up != self.history_done:
            self.chart_dirty = True  # caught up: smoothing starts
        self.history_done = message.caught_up
        if view.state != self._bindings_state:
            self._bindings_state = view.state
            self.refresh_bindings()
        now = time.monotonic()
        if message.caught_up or now - self._head_drawn >= REDRAW_INTERVAL:  # a replay's batches: a few a second
            self._head_drawn = now
            self._draw_head()

    def _poll_log_soon(self) -> None:
        """The log catches up now, or when LOG_POLL_INTERVAL has passed since it last did (a timer,
        never the 0.25 s redraw tick: a loss read just after a poll waited for the tick)."""
        wait = self._log_polled + LOG_POLL_INTERVAL - time.monotonic()
        if wait <= 0:
            self._poll_log()
        elif not self._log_poll_pending:
            self._log_poll_pending = True
            self.set_timer(wait, self._poll_log)

    def _poll_log(self) -> None:
        self._log_poll_pending = False
        self._log_polled = time.monotonic()
        self.query_one("#loss-log", VirtualLog).poll()

    # -- drawing -----------------------------------------------------------------------------
    def _tick(self) -> None:
        """The redraw timer: charts and log catch up with what was fed since (only what changed
        is redrawn; nothing at all while the screen is hidden or nothing moved)."""
        if not self.is_current:
            return
        if self._head_width() != self._head_drawn_width and self.current_run:
            self._draw_head()  # the panel was resized (the form folded, the terminal): pack again
        if self.chart_dirty:
            self.chart_dirty = False
            self._update_charts()
            for chart in self.query(MetricChart):
                if chart.display:
                    chart.poll()
        self.query_one("#loss-log", VirtualLog).poll()

    def metric_names(self) -> list[str]:
        """The watched run's metrics with points, in chart order (loss first)."""
        have = [name for name, series in self.view.metrics.items() if len(series) or name == "loss"]
        ordered = [m for m in METRIC_ORDER if m in have]
        return ordered + sorted(m for m in have if m not in ordered)

    def shown_metrics(self) -> list[str]:
        names = self.metric_names()
        if self.chart_metric not in names:
            self.chart_metric = "loss"
        i = names.index(self.chart_metric)
        if not self.grid:
            return [self.chart_metric]
        return (names[i:] + names[:i])[:self._grid_room()]

    def _grid_room(self) -> int:
        """How many charts fit: each keeps at least 8 rows and 40 columns."""
        box = self.query_one("#charts").size
        cols = max(1, box.width // 40)
        rows = max(1, box.height // 8)
        return max(1, min(MAX_CHARTS, cols * rows))

    def _update_charts(self) -> None:
        shown = self.shown_metrics()
        charts = list(self.query(MetricChart))
        key = (tuple(shown), len(self.overlays), tuple(self.overlays), self.smoothing, self.log_scale,
               self.time_axis, self.zoom, tuple((n, len(self.view.metrics[n])) for n in ("val_loss",)
                                                if n in self.view.metrics))
        for i, chart in enumerate(charts):
            if i >= len(shown):
                chart.display = False
                continue
            chart.display = True
            name = shown[i]
            chart.title = name
            chart.set_curves(self._curves_for(name))
            # While a long history is replayed the raw curve is drawn; smoothing starts once it
            # is caught up (one pass over the whole series then, not one a redraw on the way).
            chart.smoothing = self.smoothing if name not in ("val_loss", "val_accuracy") and self.history_done else 0.0
            chart.log_y = self.log_scale if self.log_scale is not None else name not in LINEAR_METRICS
            chart.x_axis = "time" if self.time_axis else "step"
            chart.last_n = self.zoom
        if key != self._curves_key:
            self._curves_key = key
            self._arrange_charts(len(shown))

    def _curves_for(self, name: str) -> list[Curve]:
        from torchdeck.runs.view import Series

        view = self.view
        label = view.name if view.name and view.name != view.run_id else (view.run_id or "run")
        curves = []
        for run_id, other in self.overlays.items():
            if run_id == view.run_id:
                continue
            series = other.metrics.get(name)
            if series is not None:
                other_label = other.name if other.name and other.name != run_id else run_id
                curves.append(Curve(series, other_label, self.mark_colours.get(run_id, PALETTE[1])))
        own = Curve(self._held(name, view.metrics.get(name) or Series()), label,
                    self.mark_colours.get(view.run_id, CURRENT_COLOUR))
        curves.insert(0, own)  # the watched run first: its readout and legend lead
        if name == "loss" and len(view.metrics.get("val_loss") or ()):
            curves.append(Curve(view.metrics["val_loss"], "val_loss", VAL_COLOUR, markers=True))
        return curves

    def _held(self, name: str, series):
        """A metric recorded only when it changes (lr without a per-step schedule) drawn as the
        step function it is: its last value held to the run's current step (a copy with one more
        point, made only for short series on the step axis), not one dot at the chart's left."""
        from torchdeck.runs.view import Series

        step, last = self.view.step, series.last_step
        if self.time_axis or not 0 < len(series) <= HELD_POINTS or last is None or step <= last:
            return series
        key = (series.revision, step)
        cached = self._held_cache.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        held = Series()
        values = [None if v != v else v for v in series.values_array().tolist()]  # NaN stays a null point
        held.add_points(series.steps_array().tolist() + [step], values + [values[-1]])
        self._held_cache[name] = (key, held)
        return held

    def _arrange_charts(self, n: int | None = None) -> None:
        """One chart, or a grid: as many columns as 40-cell charts fit, rows to hold the rest."""
        box = self.query_one("#charts")
        n = n or 1
        cols = 1 if n == 1 else max(1, min(n, box.size.width // 40 or 1))
        rows = -(-n // cols)
        box.styles.grid_size_columns = cols
        box.styles.grid_size_rows = rows

    def _draw_head(self) -> None:
        """State, step of total, epoch, loss (and smoothed), rate, ETA, elapsed, lr: what a glance needs."""
        view = self.view
        state = view.state
        title = view.name if view.name and view.name != view.run_id else view.run_id
        parts = [f"[b]{_escape(title)}[/b]  {_state_markup(state)}"]
        if view.heartbeat_stale:
            parts.append(f"[red]no heartbeat for {fmt_duration(view.stale_for)}[/red]")
        # Figures in order of importance, packed into at most three lines at piece boundaries: a
        # narrow panel (80x24) wraps between figures, never inside one, and drops the least needed.
        total = view.total_steps
        pieces = [f"step {fmt_count(view.step)}" + (f"/{fmt_count(total)}" if total else "")]
        if view.epoch or view.epochs:  # a script's run (the logging API) has no epochs of torchdeck's
            pieces.append(f"epoch {fmt_count(view.epoch)}/{fmt_count(view.epochs) if view.epochs else '?'}")
        loss = view.metrics["loss"]
        if view.last_loss is not None:
            pieces.append(f"loss {fmt_number(view.last_loss)}")
        rate = view.steps_per_second
        if rate:
            pieces.append(f"{_rate_text(rate)} steps/s" + (" avg" if view.rate_is_average else ""))
        if view.eta_seconds is not None:
            pieces.append(f"ETA {fmt_duration(view.eta_seconds)}")
        elapsed = _elapsed(view)
        if elapsed is not None:
            pieces.append(f"elapsed {fmt_duration(elapsed)}")
        if self.smoothing and len(loss) and self.history_done:
            smoothed = loss.ema(self.smoothing).last
            if smoothed is not None:
                pieces.append(f"smoothed {fmt_number(smoothed)}")
        if view.validation and view.validation[-1].val_loss is not None:
            pieces.append(f"val {fmt_number(view.validation[-1].val_loss)}")
        for name in ("lr", "grad_norm"):
            series = view.metrics.get(name)
            if series is not None and series.last is not None:
                pieces.append(f"{name.replace('_', ' ')} {fmt_number(series.last, 3)}")
        pieces += _memory_pieces(view)
        if self.command is not None and isinstance(self.command.get("command"), list):
            pieces.append("$ " + command_run.command_label([str(a) for a in self.command["command"]], 50))
        self._head_drawn_width = self._head_width()
        lines = _pack(pieces, self._head_drawn_width)
        text = "  ".join(parts) + "\n" + "\n".join(_escape(line) for line in lines[:3])
        if view.message and state in FINAL_STATES and state != "finished":
            text += f"\n[dim]{_escape(view.message)}[/dim]"
        if text != self._head_text:  # an unchanged header costs no redraw (bytes on the wire)
            self._head_text = text
            self.query_one("#run-head", Static).update(text)
        bar = self.query_one("#run-progress", ProgressBar)
        bar.display = bool(view.total_steps)  # no total (a script's run): no bar stuck at 0 %
        if view.total_steps and (bar.total != view.total_steps or bar.progress != min(view.step, view.total_steps)):
            bar.update(total=view.total_steps, progress=min(view.step, view.total_steps))

    def _head_width(self) -> int:
        width = self.query_one("#run-head", Static).content_region.width
        return width if width > 10 else 200

    # -- chart keys --------------------------------------------------------------------------
    def _chart_changed(self, note: str | None = None) -> None:
        self.chart_dirty = True
        self._tick()
        if note:
            self.notify(note, timeout=2)

    def action_next_metric(self, step: int = 1) -> None:
        names = self.metric_names()
        if len(names) < 2:
            self.cannot("this run has only its loss to chart so far")
            return
        i = names.index(self.chart_metric) if self.chart_metric in names else 0
        self.chart_metric = names[(i + step) % len(names)]
        self._chart_changed()

    def action_previous_metric(self) -> None:
        self.action_next_metric(-1)

    def action_toggle_grid(self) -> None:
        self.grid = not self.grid
        if self.grid:
            room, have = self._grid_room(), len(self.metric_names())
            note = (f"grid: {min(room, have)} of {have} metrics ([ ] to page)" if room > 1 else
                    "grid: no room for a second chart at this size (a larger terminal shows up to 6)")
        else:
            note = "one chart ([ ] chooses its metric)"
        self._chart_changed(note)

    def action_toggle_log_scale(self) -> None:
        shown = self.shown_metrics()
        current = self.log_scale if self.log_scale is not None else shown[0] not in LINEAR_METRICS
        self.log_scale = not current
        self._chart_changed("log scale" if self.log_scale else "linear scale")

    def action_toggle_time_axis(self) -> None:
        self.time_axis = not self.time_axis
        self.zoom = None
        self._chart_changed("x axis: time since start" if self.time_axis else "x axis: steps")

    def action_smooth(self, direction: int) -> None:
        at = min(range(len(SMOOTHING_STEPS)), key=lambda i: abs(SMOOTHING_STEPS[i] - self.smoothing))
        self.smoothing = SMOOTHING_STEPS[max(0, min(len(SMOOTHING_STEPS) - 1, at + direction))]
        self._draw_head()
        self._chart_changed(f"smoothing {self.smoothing:g}" if self.smoothing else "smoothing off")

    def action_zoom_in(self) -> None:
        loss = self.view.metrics["loss"]
        span = loss.x_range("time" if self.time_axis else "step")
        if span is None:
            self.cannot("nothing to zoom into yet")
            return
        whole = span[1] - span[0]
        current = self.zoom if self.zoom is not None else whole
        if current / 2 < (1.0 if self.time_axis else ZOOM_MIN):
            self.cannot("zoomed in as far as it goes (Z shows all)")
            return
        self.zoom = current / 2
        unit = "seconds" if self.time_axis else "steps"
        self._chart_changed(f"the last {fmt_count(round(self.zoom))} {unit} (Z: all)")

    def action_zoom_all(self) -> None:
        self.zoom = None
        self._chart_changed("the whole run")

    def action_cursor(self, cols: int) -> None:
        chart = self.query_one("#chart-0", MetricChart)
        chart.move_cursor(cols)
        for other in self.query(MetricChart):
            if other is not chart and other.display:
                other.cursor = chart.cursor

    def action_leave_field(self) -> None:
        """Escape: out of a text field; else the chart's cursor goes away."""
        chart = self.query_one("#chart-0", MetricChart)
        if self.focused is not None and isinstance(self.focused, (Input, Select)):
            super().action_leave_field()
        elif chart.cursor is not None:
            for c in self.query(MetricChart):
                c.cursor = None

    def on_resize(self, event) -> None:
        super().on_resize(event)
        self.chart_dirty = True  # the grid's room changed

    def action_toggle_form(self) -> None:
        """Fold the New run form away (the run list takes the column), or bring it back."""
        form = self.query_one("#train-form")
        form.display = not form.display
        self.query_one("#train-left").set_class(not form.display, "-folded")
        self.call_after_refresh(self._chart_changed)
        if form.display:
            self.query_one("#f-epochs", Input).focus()
        else:
            self.query_one("#runs-table", RunTable).focus()

    # -- control -----------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """Greyed in the footer (None) when the selected run cannot take it; Pause and Continue
        share p, and only the one that fits is shown (False hides the other)."""
        state = self.state
        if action in ("stop", "pause", "resume", "resume_run") and self.read_only:
            return False if action == "resume" else None  # a run read from other tools' logs
        if action == "stop":
            return True if self.current_run and state in ACTIVE_STATES else None
        if action == "pause":
            if state == "paused":
                return False
            return True if state in ("running", "saving") and self.command is None else None
        if action == "resume":
            return True if state == "paused" else False
        if action == "remove_run":
            return True if self.current_run else None
        if action == "resume_run":
            return True if self.current_run and state in FINAL_STATES and self.command is None else None
        return True

    def action_stop(self) -> None:
        if not self.current_run or self.state not in ACTIVE_STATES or self.read_only:
            self.notify(self._why_not("stop"), severity="warning")
            return
        if self.command is not None:
            self.notify(f"stopping {self._label()}: its command gets "
                        f"{command_run.timeouts_text(self.command['int_timeout'], self.command['term_timeout'])}",
                        markup=False)
        else:
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
        if self.command is not None:
            self.notify(command_run.PAUSE_REFUSED, severity="warning", markup=False)
            return
        if not self.current_run or self.state not in ("running", "saving") or self.read_only:
            self.notify(self._why_not("pause"), severity="warning")
            return
        self._request("pause", "pausing at the next chunk boundary")

    def action_resume(self) -> None:
        if not self.current_run or self.state != "paused":
            self.notify(self._why_not("continue"), severity="warning")
            return
        self._request("continue", "continuing")

    def action_run_command(self) -> None:
        from .command_form import CommandDialog

        def started(run_id: str | None) -> None:
            if run_id:
                self._status(f"[green]started {_escape(run_id)}[/green]")
                self.show_run(run_id)

        self.app.push_screen(CommandDialog(), started)

    def action_resume_run(self) -> None:
        if self.command is not None:
            self.notify(f"cannot resume {self._label()}: torchdeck cannot resume a command; run it again (e)",
                        severity="warning", markup=False)
            return
        if self.read_only:
            self.notify(self._why_not("resume"), severity="warning", markup=False)
            return
        if not self.current_run or self.state not in FINAL_STATES:
            why = "no run selected to resume" if not self.current_run else \
                f"cannot resume {self._label()}: it is {self.state} (only a run that has ended can be resumed)"
            self.notify(why, severity="warning", markup=False)
            return
        self.app.resume_run(self.current_run)

    # -- other tools' logs ------------------------------------------------------------------------
    def action_open_logs(self) -> None:
        def answered(path: str | None) -> None:
            if path:
                self.scan_logs([path], remember=True)

        remembered = [str(d) for d in self.app.workspace.source_dirs()]
        self.app.push_screen(OpenLogsDialog(os.getcwd(), remembered=remembered), answered)

    @work(thread=True, exclusive=True, group="scan", exit_on_error=False)
    def scan_logs(self, paths: list[str], remember: bool) -> None:
        """Scan folders of logs in the background (a huge tree takes a while: its progress is on the
        run list's border); each run found is listed at once, its history read when first shown."""
        from torchdeck.sources import mirror

        worker = get_current_worker()
        ws = self.app.workspace
        found_ids: list[str] = []
        problems: list[str] = []
        last = [0.0]
        for path in paths:
            def progress(dirs: int, runs: int, path=path) -> None:
                now = time.monotonic()
                if now - last[0] >= 0.2:
                    last[0] = now
                    self.post_message(LogsScanProgress(path, dirs, runs))

            try:
                scan, out = mirror.open_path(self.app.store, path, progress=progress,
                                             cancelled=lambda: worker.is_cancelled, sync_all=False)
            except TorchdeckError as e:
                problems.append(str(e))
                continue
            problems += scan.problems
            if not scan.found:
                problems.append(f"no logs under {scan.root} (TensorBoard event files, trainer_state.json, "
                                f"metrics.csv, MLflow runs)" + ("; nothing remembered" if remember else ""))
                continue
            if remember:
                try:
                    ws.add_source_dir(scan.root)
                except TorchdeckError as e:
                    problems.append(str(e))
            found_ids += [run.id for run, _ in out]
        self.post_message(LogsScanned(paths, found_ids, problems))

    @on(LogsScanProgress)
    def _scan_progress(self, message: LogsScanProgress) -> None:
        self.query_one("#train-runs").border_subtitle = (
            f"scanning {message.path}: {fmt_count(message.dirs)} folders, {message.runs} runs")

    @on(LogsScanned)
    def _scanned(self, message: LogsScanned) -> None:
        self.query_one("#train-runs").border_subtitle = ""
        for problem in message.problems[:5]:
            self.notify(problem, severity="warning", markup=False, timeout=8)
        if message.run_ids:
            where = message.paths[0] if len(message.paths) == 1 else f"{len(message.paths)} folders"
            self.notify(f"{len(message.run_ids)} read-only run(s) from {where}", markup=False)
            self._pending_select = message.run_ids[0]
        self.list_runs()

    def show_run(self, run_id: str) -> None:
        """Select and watch a run (one just resumed)."""
        self._pending_select = run_id
        self.list_runs()
        self.watch_run(run_id)
        self.query_one("#runs-table", RunTable).focus()

    def _request(self, action: str, note: str) -> None:
        try:
            self.app.store.get(self.current_run).request(action)
        except (TorchdeckError, OSError) as e:
            self.notify(f"cannot {action} {self._label()}: {e}", severity="error")
            return
        self.notify(note)

    @property
    def read_only(self) -> bool:
        """The watched run is read from other tools' logs (followed, never controlled)."""
        started = self.view.started
        return bool(self.current_run and started is not None and isinstance(started.config, dict)
                    and started.config.get("source") in SOURCE_KINDS)

    def _why_not(self, verb: str) -> str:
        if not self.current_run:
            return f"no run selected to {verb}"
        if self.read_only:
            return f"cannot {verb} {self._label()}: it is read-only, read from {self.view.started.config['source']} logs"
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
        if self.state in ACTIVE_STATES and not self.read_only:
            self.notify(f"cannot remove {self._label()}: it is {self.state}; stop it first (x)", severity="warning")
            return
        label = self._label()

        def answered(yes: bool | None) -> None:
            if yes:
                self.remove_run(run_id)

        if self.read_only:  # only torchdeck's copy goes: the other tool's files are never touched
            origin = (self.view.started.config or {}).get("origin", "its source")
            text = (f"Remove {label} ({run_id}) from the list? Only torchdeck's copy is deleted: {origin} stays, and "
                    "the run comes back if a folder scanned at start holds it.")
        else:
            text = f"Delete run {label} ({run_id}) with its history and checkpoints?\nExports made from it stay."
        self.app.push_screen(Confirm("Remove run?", text, "remove", "keep"), answered)

    @work(thread=True, group="control", exit_on_error=False)
    def remove_run(self, run_id: str) -> None:
        try:
            import sys

            mirror = sys.modules.get("torchdeck.sources.mirror")
            if mirror is not None:
                mirror.stop_following(run_id)  # an imported run this app follows: let go of it first
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


def _pack(pieces: list[str], width: int) -> list[str]:
    """Pieces joined by two spaces into lines of at most `width` cells, breaking between pieces."""
    lines: list[str] = []
    for piece in pieces:
        if lines and len(lines[-1]) + 2 + len(piece) <= width:
            lines[-1] += "  " + piece
        else:
            lines.append(piece)
    return lines


def _elapsed(view: RunView) -> float | None:
    """Seconds of training so far: the time of the newest loss point since the run first started."""
    span = view.metrics["loss"].x_range("time")
    return span[1] if span is not None else None


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


def _memory_pieces(view) -> list[str]:
    """Each device's CUDA memory, allocated/reserved (peak) in GiB: rank 0's device under the
    plain metric names, other ranks' under rankN_ (a run of several processes on GPUs)."""
    out = []
    prefixes = [""] + sorted({name.split("_", 1)[0] + "_" for name in view.metrics
                              if name.startswith("rank") and name.endswith("_cuda_allocated_mb")},
                             key=lambda p: int(p[4:-1]) if p[4:-1].isdigit() else 0)
    for prefix in prefixes:
        figures = [view.metrics.get(f"{prefix}cuda_{k}_mb") for k in ("allocated", "reserved", "peak")]
        if figures[0] is None or figures[0].last is None:
            continue
        a, r, p = (f.last / 1024 if f is not None and f.last is not None else None for f in figures)
        who = f"rank {prefix[4:-1]} " if prefix else ("rank 0 " if len(prefixes) > 1 else "")
        out.append(f"{who}cuda mem {a:.2f}/{r:.2f} GiB" + (f" (peak {p:.2f})" if p is not None else "")
                   if r is not None else f"{who}cuda mem {a:.2f} GiB")
    return out
