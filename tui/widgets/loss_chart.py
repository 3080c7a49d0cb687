"""The loss chart of the Training screen."""

from __future__ import annotations

import math

from rich.text import Text
from textual.widgets import Static
from torchdeck.fmt import fmt_axis


class LossChart(Static):
    """Loss against step on a log scale, the whole history bucketed to the widget's width.

    Redrawn on a timer (a few times a second), never per point. Values are log10(loss);
    non-finite ones (a diverged step) are left out of the scale rather than flattening it."""

    DEFAULT_CSS = """
    LossChart { height: 4; color: $accent; }
    """
    BLOCKS = " ▁▂▃▄▅▆▇█"
    GUTTER = 8  # room for a 7-character label and a space; wider only if a label needs it

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.values: list[float] = []  # log10(loss), oldest first

    def set_values(self, values: list[float]) -> None:
        self.values = values
        self.refresh()

    def render(self) -> Text:
        data = [v for v in self.values if math.isfinite(v)]
        if not data:
            return Text("loss chart: waiting for the first losses", style="dim")
        rows = max(1, self.size.height)
        # A bucket mean lies between the extremes, so its label is never longer than theirs.
        gutter = max(self.GUTTER, len(axis_label(max(data))) + 1, len(axis_label(min(data))) + 1)
        cols = max(1, self.size.width - gutter)
        n = len(data)
        if n > cols:  # bucket means, so the whole run fits
            k = n / cols
            data = [sum(data[int(i * k):max(int(i * k) + 1, int((i + 1) * k))]) /
                    max(1, int((i + 1) * k) - int(i * k)) for i in range(cols)]
        lo, hi = min(data), max(data)
        labels = {0: axis_label(hi), rows - 1: axis_label(lo)}
        span = hi - lo or 1.0
        levels = [round((v - lo) / span * (rows * 8 - 1)) + 1 for v in data]
        out = Text()
        for r in range(rows):
            out.append(f"{labels.get(r, ''):>{gutter - 1}} ", style="dim")
            floor = (rows - 1 - r) * 8
            out.append("".join(self.BLOCKS[max(0, min(8, lv - floor))] for lv in levels))
            if r < rows - 1:
                out.append("\n")
        return out


def axis_label(log10_value: float) -> str:
    """The loss at a log10 value, as a tick label (torchdeck.fmt.fmt_axis); past float range, a bound."""
    try:
        return fmt_axis(10 ** log10_value)
    except OverflowError:
        return "> 1e308"
