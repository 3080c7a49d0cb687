"""Widgets shared by the screens."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

MODES = (("1", "models", "Models"), ("2", "checkpoints", "Checkpoints"), ("3", "training", "Training"),
         ("4", "exports", "Exports"))


def short_run_label(run_id: str, today: str | None = None) -> str:
    """20261128-123006-5fa7 -> 12:30:06 today, 11-28 12:30 before: fits a narrow column; the full
    id is in the run's header."""
    from datetime import date as _date

    try:
        day, clock, _ = run_id.split("-")
    except ValueError:
        return run_id
    if len(day) != 8 or len(clock) != 6:
        return run_id
    if day == (today or _date.today().strftime("%Y%m%d")):
        return f"{clock[0:2]}:{clock[2:4]}:{clock[4:6]}"
    return f"{day[4:6]}-{day[6:8]} {clock[0:2]}:{clock[2:4]}"


class ModeBar(Static):
    """The top line: which of the four screens you are on, the keys to the others, the workspace."""

    DEFAULT_CSS = """
    ModeBar { height: 1; background: $panel; }
    """

    def __init__(self, current: str, workspace: str) -> None:
        super().__init__(id="mode-bar")
        self.current = current
        self.workspace = workspace

    def render(self) -> Text:
        text = Text(" torchdeck  ", style="bold")
        for key, mode, title in MODES:
            if mode == self.current:
                text.append(f" {key} {title} ", style="bold reverse")
            else:
                text.append(f" {key} ", style="bold")
                text.append(f"{title} ", style="dim")
        room = self.size.width - text.cell_len - 1
        if room > 8:
            ws = self.workspace if len(self.workspace) <= room else "…" + self.workspace[-(room - 1):]
            text.append(" " * (room - len(ws)) + ws, style="dim")
        return text


class LossChart(Static):
    """Loss against step on a log scale, the whole history bucketed to the widget's width.

    Redrawn on a timer (a few times a second), never per point."""

    DEFAULT_CSS = """
    LossChart { height: 4; color: $accent; }
    """
    BLOCKS = " ▁▂▃▄▅▆▇█"
    GUTTER = 8

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.values: list[float] = []  # log10(loss), oldest first

    def set_values(self, values: list[float]) -> None:
        self.values = values
        self.refresh()

    def render(self) -> Text:
        rows = max(1, self.size.height)
        cols = max(1, self.size.width - self.GUTTER)
        data = self.values
        if not data:
            return Text("loss chart: waiting for the first losses", style="dim")
        n = len(data)
        if n > cols:  # bucket means, so the whole run fits
            k = n / cols
            data = [sum(data[int(i * k):max(int(i * k) + 1, int((i + 1) * k))]) /
                    max(1, int((i + 1) * k) - int(i * k)) for i in range(cols)]
        lo, hi = min(data), max(data)
        span = hi - lo or 1.0
        levels = [round((v - lo) / span * (rows * 8 - 1)) + 1 for v in data]
        labels = {0: _fmt_axis(10 ** hi), rows - 1: _fmt_axis(10 ** lo)}
        out = Text()
        for r in range(rows):
            out.append(f"{labels.get(r, ''):>{self.GUTTER - 1}} ", style="dim")
            floor = (rows - 1 - r) * 8
            out.append("".join(self.BLOCKS[max(0, min(8, lv - floor))] for lv in levels))
            if r < rows - 1:
                out.append("\n")
        return out


def _fmt_axis(v: float) -> str:
    return f"{v:.3g}" if 1e-3 <= abs(v) < 1e4 else f"{v:.1e}"


def cursor_key(table) -> str | None:
    """The row key under a DataTable's cursor; None when the table is empty."""
    if table.row_count == 0:
        return None
    return table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value
