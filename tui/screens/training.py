"""Training: start a run, watch every batch's loss stream in, stop or pause it.

The run itself lives in a worker process; this screen only tails its files (torchdeck.runs.events)
from a thread and draws. Quitting the TUI does not stop the run; selecting it again replays
its whole history from events.jsonl.
"""

from __future__ import annotations

import math
import time
from collections import deque

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
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
from torchdeck.models import catalogue as catalogue_mod
from torchdeck.options import ACTIVE_STATES, FINAL_STATES, OPTIMIZERS
from torchdeck.runs import events as ev
from torchdeck.runs.config import RunConfig, parse_number
from torchdeck.runs.store import Status

from ..heavy import import_torch
from ..widgets import LossChart, short_run_label
from .base import ModeScreen

LOG_LINES = 2000
STALE_AFTER = 5.0  # seconds of our own monotonic clock without a heartbeat change


class RunUpdate(Message):
    """New events and the latest status of the run being watched (one message per batch of events)."""

    def __init__(self, run_id: str, events: list, status: Status, state: str, stale_for: float, *,
                 reset: bool = False, history_done: bool = True) -> None:
        super().__init__()
        self.run_id = run_id
        self.events = events
        self.status = status
        self.state = state
        self.stale_for = stale_for  # seconds since the heartbeat last changed, while the run should be alive
        self.reset = reset
        self.history_done = history_done
        self.received = time.monotonic()


class RunsListed(Message):
    def __init__(self, summaries: list) -> None:
        super().__init__()
        self.summaries = summaries

    def can_replace(self, message: Message) -> bool:  # only the latest listing matters
        return isinstance(message, RunsListed)


class RunStarted(Message):
    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id


class FormError(Message):
    def __init__(self, field: str | None, text: str) -> None:
        super().__init__()
        self.field = field
        self.text = text


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
    ]

    def compose(self) -> ComposeResult:
        cfg: RunConfig = self.app.default_config
        yield from self.compose_frame()
        with Horizontal(id="training-body"):
            with Vertical(id="train-left"):
                with Vertical(id="train-form", classes="panel") as form:
                    form.border_title = "New run"
                    with Horizontal(classes="form-row"):
                        yield Label("Model", classes="form-label")
                        yield Select([("demo", "demo")], value="demo", allow_blank=False, compact=True, id="f-model")
                    with Horizontal(classes="form-row"):
                        yield Label("Data", classes="form-label")
                        yield Input(cfg.data or "", placeholder="the model's own", id="f-data", compact=True)
                    for fid, label, value in (("f-epochs", "Epochs", cfg.epochs), ("f-batch", "Batch size", cfg.batch_size),
                                              ("f-lr", "Learning rate", cfg.lr)):
                        with Horizontal(classes="form-row"):
                            yield Label(label, classes="form-label")
                            yield Input(str(value), id=fid, compact=True)
                    with Horizontal(classes="form-row"):
                        yield Label("Optimizer", classes="form-label")
                        yield Select([(label, o) for o, label in OPTIMIZERS.items()],
                                     value=cfg.optimizer, allow_blank=False, compact=True, id="f-optimizer")
                    with Horizontal(classes="form-row"):
                        yield Button("Start", id="start", variant="primary", compact=True)
                        yield Label(" s / Enter", classes="dim")
                    yield Static("", id="form-error")
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

    # -- state -------------------------------------------------------------------------------
    def on_mount(self) -> None:
        super().on_mount()
        self.current_run: str | None = None
        self._reset_view()
        table = self.query_one("#runs-table", DataTable)
        table.add_column("Run", key="run")
        table.add_column("State", key="state")
        table.add_column("Loss", key="loss")
        self._known_rows: dict[str, tuple] = {}
        self.query_one("#run-progress", ProgressBar).display = False  # idle, it would pulse forever
        self._pending_select: str | None = None
        self.fill_models()
        self.list_runs()
        self.poll_while_shown(self.list_runs)
        self.set_interval(1 / 3, self._redraw_chart)
        table.focus()

    def default_focus_target(self):
        return self.query_one("#runs-table")


    def _reset_view(self) -> None:
        self.total_steps = 0
        self.epochs = 0
        self.step = 0
        self.epoch = 0
        self.last_loss: float | None = None
        self.state = ""
        self.stale_for = 0.0
        self.losses_log10: list[float] = []
        self.chart_dirty = False
        self.rate_samples: deque[tuple[float, int]] = deque(maxlen=64)
        self.epoch_seconds = 0.0
        self.epoch_steps = 0
        self.history_done = False
        self.message = ""

    def fill_models(self) -> None:
        names = [e.name for e in catalogue_mod.catalogue(self.app.workspace)]
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
    @on(Input.Submitted)
    def _submit(self, _event) -> None:
        self.action_start()

    def action_start(self) -> None:
        self._clear_errors()
        fields = (("f-epochs", "epochs", int), ("f-batch", "batch size", int), ("f-lr", "learning rate", float))
        values = {}
        for fid, name, kind in fields:
            text = self.query_one(f"#{fid}", Input).value
            try:
                values[fid] = parse_number(text, name, kind)
            except TorchdeckError as e:
                self.post_message(FormError(fid, str(e)))
                return
        base: RunConfig = self.app.default_config
        data_text = self.query_one("#f-data", Input).value.strip() or None
        cfg = RunConfig(**{**base.to_json(), "model": str(self.query_one("#f-model", Select).value), "data": data_text,
                           "epochs": values["f-epochs"], "batch_size": values["f-batch"], "lr": values["f-lr"],
                           "optimizer": str(self.query_one("#f-optimizer", Select).value), "name": ""})
        try:
            cfg.validate()
        except TorchdeckError as e:
            fid = {"epochs": "f-epochs", "batch": "f-batch", "learning": "f-lr"}.get(str(e).split()[0])
            self.post_message(FormError(fid, str(e)))
            return
        self.query_one("#form-error", Static).update("[dim]checking the model and starting…[/dim]")
        self.create_and_launch(cfg)

    @work(thread=True, exclusive=True, group="launch", exit_on_error=False)
    def create_and_launch(self, cfg: RunConfig) -> None:
        from torchdeck.runs.launch import start

        try:
            import_torch()  # one thread at a time imports torch
            run = start(self.app.workspace, cfg)
        except TorchdeckError as e:
            text = str(e)
            about_data = "data" in text.lower() or "does not fit" in text
            self.post_message(FormError("f-data" if about_data else "f-model", text))
            return
        except Exception as e:  # never a crashed TUI: the message goes inline, the traceback to the log
            import logging

            logging.getLogger("torchdeck.tui").exception("starting a run failed")
            self.post_message(FormError(None, f"could not start the run: {type(e).__name__}: {e}"))
            return
        self.post_message(RunStarted(run.id))

    @on(FormError)
    def _form_error(self, message: FormError) -> None:
        self.query_one("#form-error", Static).update(f"[red]{message.text}[/red]")
        if message.field:
            widget = self.query_one(f"#{message.field}")
            widget.add_class("invalid")
            widget.focus()

    def _clear_errors(self) -> None:
        self.query_one("#form-error", Static).update("")
        for w in self.query(".invalid"):
            w.remove_class("invalid")

    @on(RunStarted)
    def _run_started(self, message: RunStarted) -> None:
        self.query_one("#form-error", Static).update(f"[green]started {message.run_id}[/green]")
        self._pending_select = message.run_id
        self.list_runs()
        self.watch_run(message.run_id)
        self.query_one("#runs-table", DataTable).focus()

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

    @staticmethod
    def _row_for(s) -> tuple:
        label = s.name if s.name and s.name != s.id else short_run_label(s.id)
        return (label, s.state, "-" if s.last_loss is None else f"{s.last_loss:.4g}")

    @on(DataTable.RowHighlighted, "#runs-table")
    def _run_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.row_key is not None and event.row_key.value != self.current_run:
            self.watch_run(event.row_key.value)

    # -- watching a run ----------------------------------------------------------------------
    def watch_run(self, run_id: str) -> None:
        self.current_run = run_id
        self._reset_view()
        self.query_one("#loss-log", Log).clear()
        self.query_one("#loss-chart", LossChart).set_values([])
        bar = self.query_one("#run-progress", ProgressBar)
        bar.update(total=1, progress=0)
        bar.display = True
        self.query_one("#run-head", Static).update(f"{run_id}: loading…")
        self.tail_run(run_id)

    @work(thread=True, exclusive=True, group="tail", exit_on_error=False)
    def tail_run(self, run_id: str) -> None:
        worker = get_current_worker()
        try:
            run = self.app.store.get(run_id)
        except TorchdeckError:
            return
        tail = ev.EventTail(run.events_path)
        last_hb, hb_seen_at = None, time.monotonic()
        reset = True
        last_state, last_step = None, None
        while not worker.is_cancelled:
            batch = tail.read_new()
            caught_up = tail.at_end()
            status = run.status()
            state = run.observed_state(status)
            now = time.monotonic()
            if status.heartbeat != last_hb:
                last_hb, hb_seen_at = status.heartbeat, now
            stale = now - hb_seen_at if state in ("running", "paused", "saving") else 0.0
            if batch or reset or state != last_state or status.step != last_step or stale > STALE_AFTER:
                self.post_message(RunUpdate(run_id, batch, status, state, stale, reset=reset, history_done=caught_up))
                reset = False
                last_state, last_step = state, status.step
            if state in FINAL_STATES and caught_up:
                return
            if caught_up:
                time.sleep(0.1)

    @on(RunUpdate)
    def _run_update(self, message: RunUpdate) -> None:
        if message.run_id != self.current_run:
            return  # a late message from a run no longer watched
        log = self.query_one("#loss-log", Log)
        lines: list[str] = []
        for e in message.events:
            if isinstance(e, ev.Losses):
                bad = {i: r for i, r in e.nonfinite}
                for i, v in enumerate(e.values):
                    s = e.first_step + i
                    if v is None:
                        lines.append(f"e{e.epoch:<3} step {s:>8}  loss {bad.get(i, 'nan')}  <- not finite")
                    else:
                        lines.append(f"e{e.epoch:<3} step {s:>8}  loss {v:.6f}")
                        self.losses_log10.append(math.log10(v) if v > 0 else -12.0)
                self.step = e.last_step
                self.epoch = e.epoch
                finite = [v for v in e.values if v is not None]
                if finite:
                    self.last_loss = finite[-1]
                self.chart_dirty = True
            elif isinstance(e, ev.Started):
                self.total_steps = e.total_steps
                self.epochs = e.config.get("epochs", 0)
                cfg = e.config
                lines.append(f"started: {cfg.get('model')}, {e.num_params:,} params, {e.device}")
                lines.append(f"  {cfg.get('epochs')} epochs x {e.steps_per_epoch} steps")
                lines.append(f"  batch {cfg.get('batch_size')}, {cfg.get('optimizer')}, lr {cfg.get('lr')}")
            elif isinstance(e, ev.EpochEnd):
                self.epoch_seconds += e.seconds
                self.epoch_steps = e.step
                val = "-" if e.val_loss is None else f"{e.val_loss:.6f}"
                train = "-" if e.train_loss is None else f"{e.train_loss:.6f}"
                lines.append(f"epoch {e.epoch} ends at step {e.step} ({e.seconds:.1f} s)")
                acc = "" if getattr(e, "val_accuracy", None) is None else f", accuracy {e.val_accuracy:.1%}"
                lines.append(f"  train loss {train}, val {val}{acc}")
            elif isinstance(e, ev.Checkpointed):
                lines.append(f"checkpoint {e.name} saved ({e.reason})")
            elif isinstance(e, ev.StateChanged):
                lines.append(f"{e.state} at step {e.step}")
            elif isinstance(e, ev.Ended):
                lines.append(f"run {e.state} at step {e.step}" + (f": {e.message}" if e.message else ""))
                self.message = e.message
        if lines:
            # Follow the end unless the user has focused the log and scrolled up to read.
            follow = not log.has_focus or log.is_vertical_scroll_end
            log.write_lines(lines, scroll_end=False)
            if follow:  # after the refresh that sizes the new lines, or the end is not the end
                self.call_after_refresh(log.scroll_end, animate=False, x_axis=False)
        self.state = message.state
        self.stale_for = message.stale_for
        self.history_done = message.history_done
        self.total_steps = self.total_steps or message.status.total_steps
        if message.history_done and message.state in ("running", "saving"):
            self.rate_samples.append((message.received, self.step))
        if not self.message and message.state in ("failed", "crashed"):
            self.message = message.status.message
        self._draw_head()

    def steps_per_second(self) -> float | None:
        if self.state in ("running", "saving") and len(self.rate_samples) >= 2:
            t_now, s_now = self.rate_samples[-1]
            for t, s in self.rate_samples:
                if t_now - t <= 3.0:
                    break
            if t_now > t and s_now > s:
                return (s_now - s) / (t_now - t)
            return None
        if self.epoch_seconds > 0:
            return self.epoch_steps / self.epoch_seconds
        return None

    def _draw_head(self) -> None:
        rate = self.steps_per_second()
        parts = [f"[b]{self.current_run}[/b]  {_state_markup(self.state)}"]
        if self.stale_for > STALE_AFTER:
            parts.append(f"[red]no heartbeat for {self.stale_for:.0f} s[/red]")
        line2 = f"step {self.step:,}/{self.total_steps:,}  epoch {self.epoch}/{self.epochs or '?'}"
        line3 = f"loss {self.last_loss:.4g}" if self.last_loss is not None else ""
        if rate:
            line3 += f"  {rate:,.0f} steps/s" + ("" if self.state in ACTIVE_STATES else " avg")
            if self.state in ("running", "saving") and self.total_steps > self.step:
                line3 += f"  ETA {_duration((self.total_steps - self.step) / rate)}"
        text = "  ".join(parts) + "\n" + line2 + ("\n" + line3 if line3 else "")
        if self.message and self.state in FINAL_STATES and self.state != "finished":
            text += f"  [dim]{self.message}[/dim]" if line3 else f"\n[dim]{self.message}[/dim]"
        self.query_one("#run-head", Static).update(text)
        bar = self.query_one("#run-progress", ProgressBar)
        if self.total_steps:
            bar.update(total=self.total_steps, progress=self.step)

    def _redraw_chart(self) -> None:
        if not self.chart_dirty:
            return
        self.chart_dirty = False
        self.query_one("#loss-chart", LossChart).set_values(self.losses_log10)

    # -- control -----------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action in ("stop", "pause"):
            return True if self.state in ("running", "paused", "saving", "queued") else None
        return True

    def action_stop(self) -> None:
        if self.current_run and self.state in ACTIVE_STATES:
            self.notify(f"stopping {self.current_run} (checkpoint first)")
            self.stop_run(self.current_run)

    @work(thread=True, group="control", exit_on_error=False)
    def stop_run(self, run_id: str) -> None:
        state = self.app.store.get(run_id).stop()
        self.app.call_from_thread(self.notify, f"{run_id} {state}")

    def action_pause(self) -> None:
        if not self.current_run:
            return
        run = self.app.store.get(self.current_run)
        if self.state == "paused":
            run.request("continue")
            self.notify("continuing")
        elif self.state in ("running", "saving"):
            run.request("pause")
            self.notify("pausing at the next chunk boundary")

    def on_screen_resume(self) -> None:
        self.fill_models()
        self.list_runs()


def _state_markup(state: str) -> str:
    colour = {"running": "green", "finished": "green", "paused": "yellow", "saving": "yellow", "queued": "yellow",
              "stopped": "yellow", "crashed": "red", "failed": "red", "diverged": "red"}.get(state, "white")
    return f"[{colour}]{state or '…'}[/{colour}]"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
