"""What every mode screen shares: a title that says where you are, the header and footer."""

from __future__ import annotations

import gc

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static

from ..widgets import ModeBar

# Below this the screens cannot show what matters (a form field with its error, a chart with its
# axes, a log line): a clear message instead of a cut-off layout. 80x24 is the size designed for.
MIN_WIDTH, MIN_HEIGHT = 60, 16


class ModeScreen(Screen):
    TITLE_TEXT = ""
    MODE = ""
    BINDINGS = [Binding("escape", "leave_field", "Leave field", show=False, id="leave-field")]

    def compose_frame(self) -> ComposeResult:
        yield Static("", id="too-small")
        yield ModeBar(self.MODE, str(self.app.workspace.root))

    def on_resize(self, event) -> None:
        self._fit(event.size.width, event.size.height)

    def _fit(self, width: int, height: int) -> None:
        """Below MIN_WIDTH x MIN_HEIGHT every child but the too-small note is hidden (CSS class)."""
        small = width < MIN_WIDTH or height < MIN_HEIGHT
        if small:
            note = self.query_one("#too-small", Static)
            note.update(f"terminal too small: torchdeck needs {MIN_WIDTH}x{MIN_HEIGHT}, this one is {width}x{height}\n"
                        "enlarge the window (or the font smaller); q quits; runs keep running")
        self.set_class(small, "-too-small")

    def compose_footer(self) -> ComposeResult:
        footer = Footer()
        footer.compact = True  # every binding fits at 80 columns
        yield footer

    def on_mount(self) -> None:
        self.title = f"torchdeck · {self.TITLE_TEXT}"
        self._fit(self.app.size.width, self.app.size.height)
        self.call_after_refresh(gc.freeze)  # its widgets live as long as the app (see TorchdeckApp)

    def action_leave_field(self) -> None:
        """Escape leaves a text field, so that 1-4 and the screen's keys work again."""
        focused = self.focused
        from textual.widgets import Input, Select

        if isinstance(focused, (Input, Select)):
            target = self.default_focus_target()
            self.set_focus(target)

    def poll_while_shown(self, refresh, interval: float = 2.0) -> None:
        """Call `refresh` every `interval` seconds while this screen is shown (a hidden mode
        screen stays mounted); on_screen_resume catches up when it is shown again."""
        self.set_interval(interval, lambda: refresh() if self.is_current else None)

    def default_focus_target(self):
        return None

    def cannot(self, why: str, *, severity: str = "warning") -> None:
        """A key that cannot act here says why (never a silent no-op). Plain text: names and
        paths in `why` may hold square brackets."""
        self.notify(why, severity=severity, markup=False)
