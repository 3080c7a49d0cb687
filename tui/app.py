"""The torchdeck Textual app: four modes (Models, Checkpoints, Training, Exports) over the engine.

The first frame paints before torch is imported; a background thread imports it and the
screens fill in what needs it when TorchReady arrives.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path
from typing import Iterable

from textual import on, work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.worker import Worker, WorkerState
from torchdeck.options import ACTIVE_STATES, FINAL_STATES
from torchdeck.runs.config import RunConfig
from torchdeck.runs.store import RunStore
from torchdeck.workspace import Workspace

from .failures import ReportingWorkerManager, failure_line, job_title
from .heavy import import_torch
from .messages import LogsScanned, TorchReady
from .palette import SafeCommandPalette
from .paths import home_short
from .screens.checkpoints import CheckpointsScreen
from .screens.dialogs import ConfirmQuit, HelpScreen, LogScreen
from .screens.exports import ExportsScreen
from .screens.models import ModelsScreen
from .screens.training import TrainingScreen
from .widgets import MODES as MODE_KEYS

log = logging.getLogger("torchdeck.tui")

class TorchdeckApp(App):
    TITLE = "torchdeck"
    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses elsewhere find it too
    ENABLE_COMMAND_PALETTE = True
    MODES = {"models": ModelsScreen, "checkpoints": CheckpointsScreen, "training": TrainingScreen,
             "exports": ExportsScreen}
    DEFAULT_MODE = "models"
    BINDINGS = [
        # The mode bar at the top shows 1-4, so the footer keeps its room for the screen's own keys.
        *[Binding(key, f"switch_mode('{mode}')", title, id=f"mode.{mode}", show=False) for key, mode, title in MODE_KEYS],
        Binding("f1,question_mark", "help", "Help", id="help", key_display="?"),
        Binding("l", "show_log", "Log", show=False, id="log"),
        Binding("u,f2", "show_system", "System", show=False, id="system"),
        Binding("q", "quit_app", "Quit", id="quit"),
        Binding("ctrl+p", "command_palette", "Commands", id="palette", show=False),
    ]

    def __init__(self, workspace: Workspace, *, default_config: RunConfig | None = None, log_path: Path | None = None,
                 keep_going: bool = False):
        """keep_going: an error in a key's action is reported and the app goes on (the real
        terminal, run_tui); tests leave it off, so that such an error fails them."""
        super().__init__()
        self._workers = ReportingWorkerManager(self)  # every worker's end is heard: worker_ended
        self.keep_going = keep_going
        self.failing: dict[tuple, str] = {}  # (screen class, worker) -> the failure last told
        self.internal_errors: list[BaseException] = []  # reported, and the app went on
        self.fatal_error: BaseException | None = None  # the one that ended the app
        self.workspace = workspace
        self.store = RunStore(workspace)
        self.default_config = default_config or RunConfig()
        self.log_path = log_path or workspace.logs_dir / "tui.log"
        self.torch_ready = False
        self.torch_version = ""
        self.started_at = time.monotonic()
        self.sub_title = home_short(workspace.root)

    def on_mount(self) -> None:
        # Only once the first frame is out: the import holds the GIL for seconds, and would
        # otherwise race the first paint for it.
        self.call_after_refresh(self.import_heavy)
        self.call_after_refresh(self.scan_remembered_logs)

    def on_unmount(self) -> None:
        """The sources this app follows (imported runs being watched) read "finished" at its end."""
        import sys

        mirror = sys.modules.get("torchdeck.sources.mirror")
        if mirror is not None:
            mirror.stop_followers()

    @work(thread=True, exclusive=True, group="logs", exit_on_error=False)
    def scan_remembered_logs(self) -> None:
        """The folders of other tools' logs this workspace remembers (`torchdeck open`), scanned in
        the background at start: runs that appeared since are listed (their histories are read
        when first shown); a folder that is gone or unreadable is told, and the rest goes on."""
        from torchdeck.errors import TorchdeckError
        from torchdeck.sources import mirror

        dirs = self.workspace.source_dirs()
        ids: list[str] = []
        problems: list[str] = []
        for d in dirs:
            try:
                scan, out = mirror.open_path(self.store, d, sync_all=False)
            except TorchdeckError as e:
                problems.append(f"remembered logs: {e}")
                continue
            problems += scan.problems
            ids += [run.id for run, _ in out]
        if dirs:
            log.info("scanned %d remembered folder(s) of logs: %d run(s)", len(dirs), len(ids))
        self.post_message(LogsScanned([str(d) for d in dirs], ids, problems))

    @on(LogsScanned)
    def _remembered_logs_scanned(self, message: LogsScanned) -> None:
        for problem in message.problems[:5]:
            self.notify(problem, severity="warning", markup=False, timeout=8)

    @work(thread=True, exclusive=True, group="import", exit_on_error=False)
    def import_heavy(self) -> None:
        t = time.monotonic()
        torch = import_torch()  # seconds
        self.post_message(TorchReady(torch.__version__, time.monotonic() - t))

    @on(TorchReady)
    def _torch_ready(self, message: TorchReady) -> None:
        self.torch_ready = True
        self.torch_version = message.version
        # What is alive now (torch, Textual, the screens: 300,000 objects) lives as long as the app:
        # out of the cyclic collector's reach, a full collection during a replay took 80-115 ms (a
        # UI stall); now it walks only what came since. Reference counting still frees them all.
        gc.freeze()
        log.info("torch %s imported in %.2f s", message.version, message.seconds)
        for stack in self._screen_stacks.values():
            for screen in stack:
                screen.post_message(TorchReady(message.version, message.seconds))

    # -- no silent failure ------------------------------------------------------------------------
    def worker_ended(self, worker: Worker) -> None:
        """Every worker's end (ReportingWorkerManager): a failure is told once, in one line, with
        the traceback in the log; told again only once the job has worked in between (a job
        that polls every 2 s must not repeat it every 2 s)."""
        if worker.exit_on_error:
            return  # Textual ends the app for those; run_tui says so on the terminal
        key = (type(worker.node).__name__, worker.group, worker.name)
        if worker.state == WorkerState.SUCCESS:
            self.failing.pop(key, None)
            return
        if worker.state != WorkerState.ERROR:
            return
        line = failure_line(worker.error)
        if self.failing.get(key) == line:
            return
        self.failing[key] = line
        log.error("%s (%s): %s", job_title(worker), type(worker.node).__name__, line, exc_info=worker.error)
        self.notify(f"{line}  (l: log)", title=job_title(worker), severity="error", timeout=10, markup=False)

    def _handle_exception(self, error: Exception) -> None:
        """An error Textual cannot go on from (in a handler, it stops that widget's message loop):
        the app ends; the traceback goes to the log and run_tui prints one line and the log's path."""
        log.error("torchdeck ends on an internal error", exc_info=error)
        if self.fatal_error is None:
            self.fatal_error = error
        super()._handle_exception(error)

    def _print_error_renderables(self) -> None:
        """In the real terminal the log already holds the traceback (plain text, readable with
        key l) and run_tui prints the one line: Textual's coloured panel would only add escape
        codes to the log."""
        if self.keep_going:
            self._exit_renderables.clear()
            return
        super()._print_error_renderables()

    async def _dispatch_action(self, namespace, action_name: str, params) -> bool:
        """A key's action that raises is reported like a failed job, and the app goes on (in the
        real terminal, keep_going; tests leave it off so that such an error fails them). Caught
        here, before it reaches the message loop, which would stop for good."""
        try:
            return await super()._dispatch_action(namespace, action_name, params)
        except Exception as error:
            if not self.keep_going:
                raise
            self.internal_errors.append(error)
            log.error("action %s failed (torchdeck goes on)", action_name, exc_info=error)
            self.notify(f"{failure_line(error)}  (l: log)", title=f"{action_name.replace('_', ' ')} failed",
                        severity="error", timeout=10, markup=False)
            return True

    # -- actions -----------------------------------------------------------------------------
    def action_command_palette(self) -> None:
        """Textual's palette, guarded against keys that arrive together with Ctrl+P."""
        if self.use_command_palette and not SafeCommandPalette.is_open(self):
            self.push_screen(SafeCommandPalette(id="--command-palette"))

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action == "switch_mode" and parameters and parameters[0] == self.current_mode:
            return None  # shown greyed: you are here
        return True

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.key_table()))

    def action_show_log(self) -> None:
        self.push_screen(LogScreen(self.log_path))

    def action_show_system(self) -> None:
        from .screens.system import SystemScreen

        if not isinstance(self.screen, SystemScreen):
            self.push_screen(SystemScreen())

    def action_quit_app(self) -> None:
        active = self.active_runs()
        if not active:
            self.exit()
            return

        def answered(quit_: bool | None) -> None:
            if quit_:
                self.exit(result=active)

        self.push_screen(ConfirmQuit(active), answered)

    def active_runs(self) -> list[str]:
        # a run read from other tools' logs is "running" only while this app follows it
        return [s.id for s in self.store.summaries() if s.state in ACTIVE_STATES and not s.source]

    def on_mode(self, mode: str, fn) -> None:
        """Switch to a mode, then call fn(screen) once that screen is the one shown."""
        self.switch_mode(mode)
        screen_cls = self.MODES[mode]
        self.call_after_refresh(lambda: fn(self.screen) if isinstance(self.screen, screen_cls) else None)

    def train_model(self, model: str) -> None:
        """From anywhere: open Training with this model chosen."""
        self.on_mode("training", lambda s: s.choose_model(model))

    def export_checkpoint(self, path: str) -> None:
        self.on_mode("exports", lambda s: s.choose_checkpoint(path, export=True))

    def resume_run(self, ref: str, *, checkpoint: str = "") -> None:
        """From anywhere: ask for the length (and a diverged run's rate), resume the run `ref` (an
        id or one of its checkpoints' paths), then watch it on the Training screen."""
        from torchdeck.errors import TorchdeckError
        from torchdeck.runs.resume import refuse_if_not_torchdecks, run_of

        from .screens.resume import ResumeDialog

        try:
            run, _ = run_of(self.store, ref)
            refuse_if_not_torchdecks(run)  # a script's or a command's: say so, never a dialog of defaults
            cfg = run.config()
            state = run.liveness().state
        except TorchdeckError as e:
            self.notify(str(e), severity="error", markup=False)
            return
        if state not in FINAL_STATES:
            self.notify(f"cannot resume {run.name()}: it is {state}", severity="warning", markup=False)
            return

        def resumed(run_id: str | None) -> None:
            if run_id:
                self.on_mode("training", lambda s: s.show_run(run_id))

        self.push_screen(ResumeDialog(ref, run.name(), state, cfg.epochs, cfg.lr, checkpoint=checkpoint,
                                      max_steps=cfg.max_steps), resumed)

    # -- help and the command palette --------------------------------------------------------
    def key_table(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """Every key, grouped by where it works."""
        def rows(bindings, longer: dict[str, str] | None = None) -> list[tuple[str, str]]:
            """`longer`: a screen's fuller descriptions by binding id (the footer keeps the short ones)."""
            out = []
            for b in bindings:
                b = b if isinstance(b, Binding) else Binding(*b)
                if b.id == "leave-field":
                    continue  # listed once, under Everywhere
                keys = ", ".join(_key_name(k) for k in b.key.split(","))
                out.append((keys, (longer or {}).get(b.id or "") or b.description or b.action))
            return out

        groups = [("Everywhere", rows(self.BINDINGS) + [("Escape", "leave a text field, close a dialog"),
                                                        ("Tab / Shift+Tab", "move between fields and tables"),
                                                        ("Up / Down, PgUp / PgDn", "move in a table or log")])]
        for _, mode, title in MODE_KEYS:
            screen_cls = self.MODES[mode]
            groups.append((title, rows(getattr(screen_cls, "BINDINGS", []), getattr(screen_cls, "HELP", None))))
        return groups

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        for key, mode, title in MODE_KEYS:
            yield SystemCommand(f"Go to {title}", f"Switch to the {title} screen (key {key})",
                                lambda m=mode: self.switch_mode(m))
        yield SystemCommand("Train the demo model", "Open Training with the demo model chosen",
                            lambda: self.train_model("demo"))
        yield SystemCommand("Start training", "Start a run with the Training form's values",
                            lambda: self.on_mode("training", lambda s: s.action_start()))
        yield SystemCommand("Stop the selected run", "Checkpoint, then stop (the run list's selection)",
                            lambda: self.on_mode("training", lambda s: s.action_stop()))
        yield SystemCommand("Export the latest checkpoint to ONNX", "Export and check it against PyTorch",
                            lambda: self.on_mode("exports", lambda s: s.action_export()))
        yield SystemCommand("Show keys", "Every key torchdeck knows", self.action_help)
        yield SystemCommand("Show log", "Warnings and errors from engine work", self.action_show_log)
        yield SystemCommand("Quit", "Leave torchdeck; training runs go on", self.action_quit_app)


def _key_name(key: str) -> str:
    names = {"question_mark": "?", "escape": "Escape", "enter": "Enter", "delete": "Delete", "space": "Space"}
    if key in names:
        return names[key]
    if key.startswith("ctrl+"):
        return "Ctrl+" + key[5:].upper()
    if key.startswith("f") and key[1:].isdigit():
        return key.upper()
    return key
