"""The top line of every mode screen."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from ..paths import home_short

MODES = (("1", "models", "Models"), ("2", "checkpoints", "Checkpoints"), ("3", "training", "Training"),
         ("4", "exports", "Exports"))


class ModeBar(Static):
    """Which of the four screens you are on, the keys to the others, the workspace (~-shortened)."""

    DEFAULT_CSS = """
    ModeBar { height: 1; background: $panel; }
    """

    def __init__(self, current: str, workspace: str) -> None:
        super().__init__(id="mode-bar")
        self.current = current
        self.workspace = home_short(workspace)

    def render(self) -> Text:
        # The other screens' names give way to the workspace path before the path is cut: at 80
        # columns a path of up to ~50 characters shows whole; longer ones keep their end.
        text = self._modes(names=True)
        room = self.size.width - text.cell_len - 1
        if room < len(self.workspace) + 2:
            text = self._modes(names=False)
            room = self.size.width - text.cell_len - 1
        if room > 8:
            ws = self.workspace if len(self.workspace) <= room - 2 else "…" + self.workspace[-(room - 3):]
            text.append(" " * (room - len(ws)) + ws, style="dim")
        return text

    def _modes(self, *, names: bool) -> Text:
        text = Text(" torchdeck  ", style="bold")
        for key, mode, title in MODES:
            if mode == self.current:
                text.append(f" {key} {title} ", style="bold reverse")
            elif names:
                text.append(f" {key} ", style="bold")
                text.append(f"{title} ", style="dim")
            else:
                text.append(f" {key}", style="bold")
        return text
