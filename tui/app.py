"""The torchdeck Textual app: four modes (Models, Checkpoints, Training, Exports) over the engine.

The first frame paints before torch is imported; a background thread imports it and the
screens fill in what needs it when TorchReady arrives.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterable

from textual import on, work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from torchdeck.options import ACTIVE_STATES
from torchdeck.runs.config import RunConfig
from torchdeck.runs.store import RunStore
from torchdeck.workspace import Workspace

from .heavy import import_torch
from .screens.checkpoints import CheckpointsScreen
from .screens.dialogs import ConfirmQuit, HelpScreen, LogScreen
from .screens.exports import ExportsScreen
from .screens.models import ModelsScreen
from .screens.training import TrainingScreen

log = logging.getLogger("torchdeck.tui")

from .widgets import MODES as MODE_KEYS


class TorchReady(Message, bubble=False):
    """torch (and what the engine needs of it) is imported: figures that need it can fill in."""

    def __init__(self, version: str, seconds: float) -> None:
        super().__init__()
        self.version = version
        self.seconds = seconds


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
        Binding("q", "quit_app", "Quit", id="quit"),
        Binding("ctrl+p", "command_palette", "Commands", id="palette", show=False),
    ]

    def __init__(self, workspace: Workspace, *, default_config: RunConfig | None = None, log_path: Path | None = None):
        super().__init__()
        self.workspace = workspace
        self.store = RunStore(workspace)
        self.default_config = default_config or RunConfig()
        self.log_path = log_path or workspace.logs_dir / "tui.log"
        self.torch_ready = False
        self.torch_version = ""
        self.started_at = time.monotonic()
        self.sub_title = str(workspace.root)

    def on_mount(self) -> None:
        # Only once the first frame is out: the import holds the GIL for seconds, and would
        # otherwise race the first paint for it.
        self.call_after_refresh(self.import_heavy)

    @work(thread=True, exclusive=True, group="import", exit_on_error=False)
    def import_heavy(self) -> None:
        t = time.monotonic()
        torch = import_torch()  # seconds
        self.post_message(TorchReady(torch.__version__, time.monotonic() - t))

    @on(TorchReady)
    def _torch_ready(self, message: TorchReady) -> None:
        self.torch_ready = True
        self.torch_version = message.version
        log.info("torch %s imported in %.2f s", message.version, message.seconds)
        for stack in self._screen_stacks.values():
            for screen in stack:
                screen.post_message(TorchReady(message.version, message.seconds))

    # -- actions -----------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action == "switch_mode" and parameters and parameters[0] == self.current_mode:
            return None  # shown greyed: you are here
        return True

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.key_table()))

    def action_show_log(self) -> None:
        self.push_screen(LogScreen(self.log_path))

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
        return [s.id for s in self.store.summaries() if s.state in ACTIVE_STATES]

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

    # -- help and the command palette --------------------------------------------------------
    def key_table(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """Every key, grouped by where it works."""
        def rows(bindings) -> list[tuple[str, str]]:
            out = []
            for b in bindings:
                b = b if isinstance(b, Binding) else Binding(*b)
                if b.id == "leave-field":
                    continue  # listed once, under Everywhere
                keys = ", ".join(_key_name(k) for k in b.key.split(","))
                out.append((keys, b.description or b.action))
            return out

        groups = [("Everywhere", rows(self.BINDINGS) + [("Escape", "leave a text field, close a dialog"),
                                                        ("Tab / Shift+Tab", "move between fields and tables"),
                                                        ("Up / Down, PgUp / PgDn", "move in a table or log")])]
        for _, mode, title in MODE_KEYS:
            screen_cls = self.MODES[mode]
            groups.append((title, rows(getattr(screen_cls, "BINDINGS", []))))
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
