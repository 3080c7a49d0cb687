"""MetricChart: a braille line chart of one metric (or several runs' curves overlaid).

Built on Textual's Line API: one pass turns the data into a list of `Strip`s (one per row),
cached until a curve's revision, the size or an option changes; `render_line` only indexes it.
The data stays in the `Series` (engine/runs/history): per redraw the chart asks each curve for
its per-column reduction (`Series.columns`), so the cost depends on the chart's width, not on
how many points a run has.

What a column shows (a column is half a cell: braille has 2x4 dots per cell):
- the envelope, a vertical span from the column's min to its max in the curve's colour dimmed,
  so one spike among a million points always shows;
- the line: with smoothing 0 the raw curve bright (each column's last value joined to the
  previous one by a vertical span, so the line is continuous); with smoothing > 0 the debiased
  EMA bright and the raw envelope faint behind it;
- a red mark at the top where the column holds a non-finite point (never dropped silently, and
  never stretching the scale); on the log scale a mark at the bottom where it holds a value <= 0.

A braille cell holds one colour: where layers share a cell, the topmost layer owns it and only
its dots are shown (curves later in the list are on top; a curve's line over its envelope, so
the line reads as a thin bright line through the faint band; non-finite marks over everything).
Marker curves (validation points: few) are drawn as whole cells, `●` for the first such curve,
`◆` for the next, alternating.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

from rich.segment import Segment
from rich.style import Style
from textual.strip import Strip
from textual.widget import Widget
from torchdeck.fmt import fmt_axis, fmt_duration, fmt_number

if TYPE_CHECKING:
    import numpy as np
    from torchdeck.runs.history import Series

Axis = Literal["step", "time"]
_MARKERS = ("●", "◆")
_STYLE_LABEL = Style(dim=True)
_STYLE_AXIS = Style(dim=True)
_STYLE_CURSOR = Style(color="grey62")
_STYLE_BAD = Style(color="red", bold=True)
_NICE_SECONDS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
                 86400, 172800, 432000, 864000, 2592000)
TOO_SMALL = "chart: too small"
WAITING = "waiting for the first points"
MIN_WIDTH, MIN_HEIGHT = 20, 5
GUTTER = 8  # a 7-character y label and the axis


@cache
def _tables():
    """numpy and the braille tables, on the first draw: the first frame does not wait for numpy."""
    import numpy as np

    # Braille dot bits by (dot column, dot row) inside a cell: U+2800 + the OR of the lit dots.
    dots = [[0x01, 0x02, 0x04, 0x40], [0x08, 0x10, 0x20, 0x80]]
    # lut[dx * 25 + first * 5 + last + 1]: the bits of dot rows first..last (inclusive) of dot
    # column dx (nothing when first > last).
    lut = np.zeros(50, dtype=np.uint16)
    for dx in range(2):
        for first in range(5):
            for last in range(-1, 4):
                lut[dx * 25 + first * 5 + last + 1] = sum(dots[dx][r] for r in range(first, last + 1))
    glyphs = np.array([" "] + [chr(0x2800 + m) for m in range(1, 256)], dtype=object)
    return np, lut, glyphs


@dataclass
class Curve:
    series: Series  # raw points
    label: str  # legend text (run name, or "val_loss")
    color: str  # a Rich colour
    markers: bool = False  # each point a marker cell (validation points: few), not a line

    def __post_init__(self) -> None:
        try:
            Style(color=self.color)
        except Exception as exc:  # rich's ColorParseError, or a colour that is not a string
            raise ValueError(f"curve {self.label!r}: {self.color!r} is not a colour") from exc


class MetricChart(Widget):
    """A braille line chart: y axis on the left, x axis (step or time) at the bottom, title and
    legend on the top row, a readout row while the cursor is on.

    The screen calls `poll()` on its timer (a few times a second); the chart redraws only when a
    curve's revision changed or an option was set."""

    DEFAULT_CSS = """
    MetricChart { height: 1fr; }
    """

    def __init__(self, title: str = "", *, id: str | None = None, classes: str | None = None,
                 lock: AbstractContextManager | None = None) -> None:
        """`lock`: the lock that the thread appending to the curves' Series holds (engine/runs/
        history: readers hold it too); a redraw reads the Series under it. None: one thread."""
        super().__init__(id=id, classes=classes)
        self._lock = lock if lock is not None else nullcontext()
        self._title = title
        self._curves: list[Curve] = []
        self._log_y = False
        self._x_axis: Axis = "step"
        self._smoothing = 0.0
        self._last_n: float | None = None
        self._cursor: float | None = None
        self._seen: tuple = ()
        self._key: tuple | None = None
        self._frame_key: tuple | None = None
        self._frame_cache: _Frame | list[Strip] = []
        self._strips: list[Strip] = []
        self._x_window: tuple[float, float] | None = None  # (lo, hi exclusive) of the last draw
        self._plot_width = 0
        self._ema: dict[int, tuple[int, float, Series]] = {}
        self.redraws = 0  # data frames computed (Series asked for columns): for tests and the benchmark

    # -- options: each setter invalidates the cache through the key, then refreshes ----------
    def _set(self, name: str, value: Any) -> None:
        if getattr(self, name) != value:
            setattr(self, name, value)
            self.refresh()

    @property
    def title(self) -> str:
        return self._title

    @title.setter
    def title(self, value: str) -> None:
        self._set("_title", value)

    @property
    def curves(self) -> list[Curve]:
        return list(self._curves)

    def set_curves(self, curves: list[Curve]) -> None:
        curves = list(curves)
        same = len(curves) == len(self._curves) and all(a.series is b.series for a, b in zip(curves, self._curves))
        self._curves = curves
        if not same:  # cache keys hold id(series): a new Series may reuse a freed one's id and revision
            self._ema = {}
            self._key = self._frame_key = None
        self._seen = self._revisions()
        self.refresh()

    @property
    def log_y(self) -> bool:
        return self._log_y

    @log_y.setter
    def log_y(self, value: bool) -> None:
        self._set("_log_y", bool(value))

    @property
    def x_axis(self) -> Axis:
        return self._x_axis

    @x_axis.setter
    def x_axis(self, value: Axis) -> None:
        if value not in ("step", "time"):
            raise ValueError(f"x_axis must be 'step' or 'time', not {value!r}")
        if value != self._x_axis:
            self._cursor = None  # a step is not a time: the cursor would land anywhere
        self._set("_x_axis", value)

    @property
    def smoothing(self) -> float:
        return self._smoothing

    @smoothing.setter
    def smoothing(self, value: float) -> None:
        v = float(value)
        if not math.isfinite(v):
            raise ValueError(f"smoothing must be a number in 0..0.999, not {value!r}")
        self._set("_smoothing", min(0.999, max(0.0, v)))

    @property
    def last_n(self) -> float | None:
        return self._last_n

    @last_n.setter
    def last_n(self, value: float | None) -> None:
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"last_n must be a positive number or None, not {value!r}")
        self._set("_last_n", value)

    @property
    def cursor(self) -> float | None:
        return self._cursor

    @cursor.setter
    def cursor(self, value: float | None) -> None:
        if value is not None and not math.isfinite(value):
            value = None
        self._set("_cursor", value)

    def move_cursor(self, cols: int) -> None:
        """Move the cursor by `cols` cells (negative: left); from off, it starts at the newest x."""
        if self._x_window is None:
            with self._lock:
                self._x_window = self._window()
        window = self._x_window
        if window is None:
            return
        lo, hi = window
        cell = (hi - lo) / max(1, self._plot_width or self.size.width)
        shown = self._shown_cursor(window)
        start = shown if shown is not None else hi - cell / 2
        self.cursor = min(max(start + cols * cell, lo), math.nextafter(hi, lo))

    def poll(self) -> bool:
        """True (and a refresh) when any curve's data changed since the last poll."""
        revs = self._revisions()
        if revs == self._seen:
            return False
        self._seen = revs
        self.refresh()
        return True

    def _revisions(self) -> tuple:
        return tuple((id(c.series), c.series.revision) for c in self._curves)

    # -- Line API -------------------------------------------------------------------------
    def render_line(self, y: int) -> Strip:
        width, height = self.size.width, self.size.height
        strips = self.strips(width, height)
        return strips[y] if 0 <= y < len(strips) else Strip.blank(width)

    def strips(self, width: int, height: int) -> list[Strip]:
        """The chart's rows at this size: the cached ones unless the data, the size or an option changed."""
        key = (self._revisions(), width, height, self._title, self._log_y, self._x_axis, self._smoothing,
               self._last_n, self._cursor, tuple((c.label, c.color, c.markers) for c in self._curves))
        if key != self._key:
            frame_key = key[:8] + (self._cursor is None,) + key[9:]
            with self._lock:
                if frame_key != self._frame_key:
                    self._frame_cache = self._frame(width, height)
                    self._frame_key = frame_key
                self._strips = self._compose_rows(self._frame_cache, width)
            self._key = key
        return self._strips

    # -- drawing --------------------------------------------------------------------------
    def _smoothed(self, series: Series) -> Series:
        hit = self._ema.get(id(series))
        if hit is not None and hit[0] == series.revision and hit[1] == self._smoothing:
            return hit[2]
        ema = series.ema(self._smoothing)
        self._ema[id(series)] = (series.revision, self._smoothing, ema)
        return ema

    def _window(self) -> tuple[float, float] | None:
        """(lo, hi) of the x window, hi exclusive (so the newest point falls in the last column)."""
        lo = hi = None
        for c in self._curves:
            if len(c.series) == 0:
                continue
            r = c.series.x_range(self._x_axis)
            if r is None:
                continue
            lo = r[0] if lo is None else min(lo, r[0])
            hi = r[1] if hi is None else max(hi, r[1])
        if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
            return None
        if self._x_axis == "step":
            hi_ex = float(hi) + 1.0
            if self._last_n is not None:
                lo = max(lo, hi_ex - math.ceil(self._last_n))
        else:
            if self._last_n is not None:
                lo = max(lo, hi - self._last_n)
            hi_ex = hi + max(1e-9, (hi - lo) * 1e-6)
        return float(lo), hi_ex

    def draw(self, width: int, height: int) -> list[Strip]:
        """Every row of the chart at this size, each exactly `width` cells: a full redraw, no cache."""
        return self._compose_rows(self._frame(width, height), width)

    def _frame(self, width: int, height: int) -> _Frame | list[Strip]:
        """What depends on the data, the size and the options, but not on where the cursor is:
        moving the cursor recomposes this (a copy of the raster, the readout) and asks the
        Series for nothing but its nearest points. Fixed rows when there is no plot to show."""
        np = _tables()[0]
        self.redraws += 1
        if width < MIN_WIDTH or height < MIN_HEIGHT:
            return [_line([(TOO_SMALL, _STYLE_LABEL)], width)] + [Strip.blank(width)] * max(0, height - 1)
        window = self._window()
        self._x_window = window
        if window is None:
            rows = [self._top_row(width)] + [Strip.blank(width)] * (height - 1)
            has_points = any(len(c.series) for c in self._curves)
            text = f"no {self._x_axis} values for these points" if has_points else WAITING
            rows[height // 2] = _line([(text.center(width), _STYLE_LABEL)], width)
            return rows
        x_lo, x_hi = window
        readout = self._cursor is not None
        plot_rows = height - 2 - (1 if readout else 0)
        # fmt_axis labels are at most 7 characters: a fixed gutter keeps the plot from shifting
        # sideways as labels change while data streams in, and the columns are asked for once.
        gutter = GUTTER
        pw = width - gutter
        layers, y_lo, y_hi = self._reduce(x_lo, x_hi, pw * 2)  # 2 dot columns a cell
        ticks = _y_ticks(y_lo, y_hi, plot_rows, self._log_y)
        self._plot_width = pw
        grid = _Raster(pw, plot_rows)
        hp = plot_rows * 4

        def to_px(v: np.ndarray) -> np.ndarray:
            with np.errstate(all="ignore"):
                t = (y_hi - v) / (y_hi - y_lo) * (hp - 1)
            return np.clip(np.rint(np.nan_to_num(t, nan=0.0)), 0, hp - 1).astype(np.int32)

        marker_no = 0
        for curve, (env_lo, env_hi, env_ok, line, line_ok, bad, low) in zip(self._curves, layers):
            bright, dim = Style(color=curve.color), Style(color=curve.color, dim=True)
            if curve.markers:
                grid.mark_cells(to_px(line), line_ok, _MARKERS[marker_no % 2], bright)
                marker_no += 1
            else:
                grid.add(to_px(env_hi), to_px(env_lo), env_ok, dim)
                px = to_px(line)
                a, b = _joined(px, line_ok)
                grid.add(a, b, _between(line_ok), bright)
            grid.add(np.full(len(low), hp - 2), np.full(len(low), hp - 1), low, bright)
            grid.add(np.zeros(len(bad), np.int32), np.full(len(bad), min(3, hp - 1), np.int32), bad, _STYLE_BAD)
        tick_rows: dict[int, str] = {}
        for value, label in ticks:
            tick_rows.setdefault(int(to_px(np.array([value]))[0]) // 4, label)
        heads = [f"{tick_rows[r][:gutter - 1]:>{gutter - 1}}┤" if r in tick_rows else " " * (gutter - 1) + "│"
                 for r in range(plot_rows)]
        return _Frame(window, grid, self._top_row(width), heads, self._x_labels(width, gutter, pw, x_lo, x_hi),
                      readout)

    def _compose_rows(self, frame: _Frame | list[Strip], width: int) -> list[Strip]:
        if isinstance(frame, list):
            return frame
        np = _tables()[0]
        grid = frame.raster
        cursor = self._shown_cursor(frame.window)
        if cursor is not None:  # a dotted vertical under the curves: only in cells they left empty
            x_lo, x_hi = frame.window
            n, hp = grid.cols * 2, grid.rows_n * 4
            span = np.zeros(n, dtype=bool)
            span[min(int((cursor - x_lo) / (x_hi - x_lo) * n), n - 1)] = True
            grid = grid.copy()
            grid.add(np.zeros(n, np.int32), np.full(n, hp - 1, np.int32), span, _STYLE_CURSOR, under=True)
        rows = [frame.top]
        for head, body in zip(frame.heads, grid.rows()):
            rows.append(Strip([Segment(head, _STYLE_AXIS), *body]).crop_extend(0, width, None))
        rows.append(frame.x_row)
        if frame.readout:
            rows.append(self._readout(width, cursor))
        return rows

    def _reduce(self, x_lo: float, x_hi: float, n: int):
        """Per curve the arrays to draw, and the y range (in scale units: log10 on the log scale)."""
        np = _tables()[0]
        layers = []
        lows, highs = [], []
        for curve in self._curves:
            s = curve.series
            cols = s.columns(x_lo, x_hi, n, axis=self._x_axis)
            count = np.asarray(cols.count)
            mn, mx = np.asarray(cols.min, dtype=np.float64), np.asarray(cols.max, dtype=np.float64)
            last = np.asarray(cols.last, dtype=np.float64)
            bad = np.asarray(cols.nonfinite, dtype=bool)
            smoothed = self._smoothing > 0 and not curve.markers and len(s) > 0
            if smoothed:
                sc = self._smoothed(s).columns(x_lo, x_hi, n, axis=self._x_axis)
                line = np.asarray(sc.last, dtype=np.float64)
            else:
                line = last
            with np.errstate(all="ignore"):
                if self._log_y:
                    low = (count > 0) & (mn <= 0)
                    env_ok = np.isfinite(mx) & (mx > 0)
                    env_hi = np.log10(np.where(env_ok, mx, 1.0))
                    pos_min = np.where(mn > 0, mn, np.nan)
                    env_lo = np.log10(np.where(np.isfinite(pos_min), pos_min, 1.0))
                    env_lo = np.where(np.isfinite(pos_min), env_lo, -np.inf)  # runs to the bottom
                    line_ok = np.isfinite(line) & (line > 0)
                    line = np.log10(np.where(line_ok, line, 1.0))
                    lows.append(np.where(np.isfinite(pos_min), env_lo, np.where(env_ok, env_hi, np.nan)))
                else:
                    low = np.zeros(len(count), dtype=bool)
                    env_ok = np.isfinite(mn) & np.isfinite(mx)
                    env_lo, env_hi = mn, mx
                    line_ok = np.isfinite(line)
                    lows.append(np.where(env_ok, mn, np.nan))
                highs.append(np.where(env_ok, env_hi, np.nan))
                if smoothed:  # zoomed in after a drop, the EMA still carries the higher values before it
                    lows.append(np.where(line_ok, line, np.nan))
                    highs.append(np.where(line_ok, line, np.nan))
            layers.append((env_lo, env_hi, env_ok, line, line_ok, bad, low))
        y_lo, y_hi = _y_range(lows, highs, self._log_y)
        return layers, y_lo, y_hi

    # -- rows of text -------------------------------------------------------------------
    def _top_row(self, width: int) -> Strip:
        parts: list[tuple[str, Style]] = []
        if self._title:
            parts.append((self._title, Style(bold=True)))
        if len(self._curves) == 1 and len(self._curves[0].series):
            c = self._curves[0]
            s = c.series
            parts.append(("  " + c.label + " ", Style(color=c.color)))
            parts.append((fmt_number(s.point(len(s) - 1)[1]), Style()))
            if self._smoothing > 0 and not c.markers:
                sm = self._smoothed(s)
                parts.append((f" (smoothed {fmt_number(sm.point(len(sm) - 1)[1])})", _STYLE_LABEL))
        else:
            for i, c in enumerate(self._curves):
                glyph = "●" if c.markers else "━"
                parts.append(("  " if i or self._title else "", Style()))
                parts.append((f"{glyph} {c.label}", Style(color=c.color)))
        if self._log_y:
            parts.append(("  log", _STYLE_LABEL))
        return _line(parts, width)

    def _x_labels(self, width: int, gutter: int, pw: int, x_lo: float, x_hi: float) -> Strip:
        cells = [" "] * pw
        label_width = 7 if self._x_axis == "step" else 9
        max_ticks = max(2, min(8, pw // (label_width + 3)))
        if self._x_axis == "step":
            ticks, fmt = _nice_ticks(x_lo, x_hi - 1, max_ticks, min_step=1.0), _fmt_step
        else:
            ticks = _time_ticks(x_lo, x_hi, max_ticks)
            tick_step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0

            def fmt(t: float) -> str:
                return _fmt_time_tick(t, tick_step)
        free = 0
        for t in ticks:
            c = int((t - x_lo) / (x_hi - x_lo) * pw)
            if not 0 <= c < pw:
                continue
            text = fmt(t)
            start = min(max(c - len(text) // 2, 0), pw - len(text))
            if start < free:
                continue
            cells[start:start + len(text)] = list(text)
            free = start + len(text) + 2
        return Strip([Segment(" " * gutter), Segment("".join(cells), _STYLE_AXIS)], width).crop_extend(0, width, None)

    def _shown_cursor(self, window: tuple[float, float]) -> float | None:
        """The cursor kept inside the window (after a zoom it would read out a point off screen)."""
        if self._cursor is None:
            return None
        lo, hi = window
        return min(max(self._cursor, lo), math.nextafter(hi, lo))

    def _readout(self, width: int, x: float | None) -> Strip:
        parts: list[tuple[str, Style]] = []
        for i, c in enumerate(self._curves):
            hit = c.series.nearest(x, self._x_axis) if x is not None and len(c.series) else None
            if i == 0:
                if hit is None:
                    parts.append(("no point here", _STYLE_LABEL))
                    continue
                step, t, value = hit
                if self._x_axis == "time":
                    parts.append((f"time {fmt_duration(t)}  ", Style()))
                parts.append((f"step {step:,}  value {fmt_number(value)}", Style()))
                if self._smoothing > 0 and not c.markers:
                    sm = self._smoothed(c.series).nearest(x, self._x_axis)
                    if sm is not None:
                        parts.append((f" (smoothed {fmt_number(sm[2])})", _STYLE_LABEL))
            elif hit is not None:
                parts.append((f"  {c.label} ", Style(color=c.color)))
                parts.append((fmt_number(hit[2]), Style()))
        return _line(parts, width)


@dataclass
class _Frame:
    window: tuple[float, float]  # x range shown, the upper end exclusive
    raster: _Raster  # the curves, without the cursor
    top: Strip  # title and legend
    heads: list[str]  # the y axis gutter of each plot row
    x_row: Strip  # x tick labels
    readout: bool  # a readout row below (the cursor is on)


class _Raster:
    """Braille cells of the plotting area: per cell the dots and style of the topmost layer that
    lit a dot there, and whole-cell glyphs (markers) over them."""

    def __init__(self, cols: int, rows: int) -> None:
        np = _tables()[0]
        self.cols, self.rows_n = cols, rows
        self.mask = np.zeros((rows, cols), dtype=np.uint16)
        self.style_id = np.zeros((rows, cols), dtype=np.int16)
        self.styles: list[Style | None] = [None]
        self.glyph: dict[tuple[int, int], tuple[str, int]] = {}
        self._base = np.arange(rows, dtype=np.int32)[None, :] * 4
        self._dx = (np.arange(cols * 2, dtype=np.int32) % 2) * 25 + 1  # + 1: last runs from -1

    def _style(self, style: Style) -> int:
        self.styles.append(style)
        return len(self.styles) - 1

    def copy(self) -> _Raster:
        other = _Raster.__new__(_Raster)
        other.__dict__.update(self.__dict__)
        other.mask, other.style_id = self.mask.copy(), self.style_id.copy()
        other.styles, other.glyph = list(self.styles), dict(self.glyph)
        return other

    def add(self, top: np.ndarray, bottom: np.ndarray, ok: np.ndarray, style: Style, under: bool = False) -> None:
        """Light, in each dot column where ok, the dots from pixel row top to bottom (inclusive);
        `under`: only in cells no layer has lit yet."""
        if not ok.any():
            return
        np, lut, _ = _tables()
        far = self.rows_n * 4 + 8  # a span starting below the area lights nothing
        a = np.where(ok, np.minimum(top, bottom), far).astype(np.int32)
        b = np.maximum(top, bottom).astype(np.int32)
        # Per (dot column, cell row): the span's first and last dot row inside that cell (0..3),
        # nothing where first > last; one flat table lookup gives the bits of that run of dots.
        first = a[:, None] - self._base
        np.clip(first, 0, 4, out=first)
        last = b[:, None] - self._base
        np.clip(last, -1, 3, out=last)
        first *= 5
        first += last
        first += self._dx[: len(a), None]
        bits = lut.take(first)
        cells = (bits[0::2] | bits[1::2]).T  # the two dot columns of a cell use different bits
        lit = cells > 0
        if under:
            lit &= self.mask == 0
        np.copyto(self.mask, cells, where=lit)  # the top layer owns the cell: its dots, its colour
        np.copyto(self.style_id, self._style(style), where=lit)

    def mark_cells(self, px: np.ndarray, ok: np.ndarray, glyph: str, style: Style) -> None:
        np = _tables()[0]
        sid = self._style(style)
        for i in np.flatnonzero(ok):
            self.glyph[(int(px[i]) // 4, int(i) // 2)] = (glyph, sid)

    def rows(self) -> list[list[Segment]]:
        np, _, glyphs = _tables()
        text = glyphs.take(self.mask)
        sids = np.where(self.mask > 0, self.style_id, 0)
        for (r, c), (g, sid) in self.glyph.items():
            text[r, c] = g
            sids[r, c] = sid
        change = sids[:, 1:] != sids[:, :-1]
        out = []
        for r, chars in enumerate(text.tolist()):
            line = "".join(chars)
            row_ids = sids[r]
            cuts = [0, *(np.flatnonzero(change[r]) + 1).tolist(), self.cols]
            out.append([Segment(line[s:e], self.styles[row_ids[s]]) for s, e in zip(cuts, cuts[1:])])
        return out


def _between(ok: np.ndarray) -> np.ndarray:
    """Dot columns that lie between two columns holding a line value (gaps to be bridged)."""
    np = _tables()[0]
    idx = np.flatnonzero(ok)
    out = np.zeros(len(ok), dtype=bool)
    if len(idx) >= 2:
        out[idx[0]:idx[-1] + 1] = True
    return out


def _joined(px: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertical spans that join each column's line value to the previous column's: a continuous line.
    Empty columns between two values get the linear interpolation, so sparse data still joins."""
    np = _tables()[0]
    n = len(px)
    idx = np.flatnonzero(ok)
    if len(idx) == 0:
        return np.zeros(n, np.int32), np.full(n, -1, np.int32)
    cur = np.interp(np.arange(n), idx, px[idx].astype(np.float64))
    prev = np.concatenate(([cur[0]], cur[:-1]))
    nxt = np.concatenate((cur[1:], [cur[-1]]))
    # Each column reaches halfway to its neighbours: a jump draws as one vertical split between
    # the two columns, and the line has no holes however steep.
    to_prev, to_next = np.rint((prev + cur) / 2), np.rint((nxt + cur) / 2)
    c = np.rint(cur)
    top = np.minimum(np.minimum(to_prev, to_next), c).astype(np.int32)
    bottom = np.maximum(np.maximum(to_prev, to_next), c).astype(np.int32)
    return top, bottom


def _y_range(lows: list[np.ndarray], highs: list[np.ndarray], log: bool) -> tuple[float, float]:
    """The visible window's finite min/max with a small margin; constant data centred."""
    np = _tables()[0]
    lo = min((float(np.nanmin(a)) for a in lows if np.isfinite(a).any()), default=math.nan)
    hi = max((float(np.nanmax(a)) for a in highs if np.isfinite(a).any()), default=math.nan)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return (-1.0, 1.0) if log else (0.0, 1.0)
    if hi == lo:
        d = 0.5 if log else (abs(lo) * 0.1 or 1.0)
        return lo - d, hi + d
    margin = (hi / 2 - lo / 2) * 0.1  # halves first: 1e308 - -1e308 overflows
    lo2, hi2 = lo - margin, hi + margin
    if not (math.isfinite(lo2) and math.isfinite(hi2)):
        return lo, hi
    return lo2, hi2


def _nice_step(span: float, max_ticks: int) -> float:
    raw = span / max(1, max_ticks)
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if span / (m * mag) <= max_ticks:
            return m * mag
    return 10.0 * mag


def _nice_ticks(lo: float, hi: float, max_ticks: int, min_step: float = 0.0) -> list[float]:
    """Round numbers (1, 2, 2.5, 5 x 10^k) inside [lo, hi], at most max_ticks of them, at least
    `min_step` apart (1 for steps: a run of 2 steps has no step 1.2 to label)."""
    span = hi - lo
    if not (math.isfinite(span) and span > 0):
        return [lo] if math.isfinite(lo) else []
    step = max(_nice_step(span, max_ticks), min_step)
    if min_step and step % min_step:  # 2.5 when only whole numbers are labelled: 5
        step = math.ceil(step / min_step / 5) * 5 * min_step
    first = math.ceil(lo / step)
    ticks = []
    k = first
    while k * step <= hi + step * 1e-9 and len(ticks) <= max_ticks:
        v = k * step
        ticks.append(0.0 if abs(v) < step * 1e-9 else float(f"{v:.12g}"))
        k += 1
    return ticks


def _time_ticks(lo: float, hi: float, max_ticks: int) -> list[float]:
    """Round durations (5 s, 30 s, 2 min, 1 h, ...) inside [lo, hi]; plain round seconds when shorter."""
    span = hi - lo
    if not (math.isfinite(span) and span > 0):
        return [lo] if math.isfinite(lo) else []
    step = next((s for s in _NICE_SECONDS if span / s <= max_ticks), None)
    if step is None or span < 2:
        return _nice_ticks(lo, hi, max_ticks)
    return [k * step for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]


def _y_ticks(lo: float, hi: float, rows: int, log: bool) -> list[tuple[float, str]]:
    """(position in scale units, label) of 3-5 ticks, fewer when there are fewer rows."""
    max_ticks = max(2, min(5, rows))
    if not log:
        if not math.isfinite(hi - lo):  # beyond float range: label the ends
            return [(lo, fmt_axis(lo)), (hi, fmt_axis(hi))]
        return [(t, fmt_axis(t)) for t in _nice_ticks(lo, hi, max_ticks)]
    # Log scale: powers of ten, or 1-2-5 within a decade or two, else round values in between.
    powers = list(range(math.ceil(lo), math.floor(hi) + 1))
    if len(powers) > max_ticks:
        stride = math.ceil(len(powers) / max_ticks)
        powers = powers[::stride]
    if len(powers) >= 2:
        return [(float(e), fmt_axis(10.0 ** e)) for e in powers]
    candidates = [(math.log10(m * 10.0 ** e), m * 10.0 ** e)
                  for e in range(math.floor(lo) - 1, math.ceil(hi) + 1) for m in (1, 2, 5)]
    inside = [(p, v) for p, v in candidates if lo <= p <= hi]
    if 2 <= len(inside) <= max_ticks:
        return [(p, fmt_axis(v)) for p, v in inside]
    vals = _nice_ticks(10.0 ** lo, 10.0 ** hi, max_ticks)
    return [(math.log10(v), fmt_axis(v)) for v in vals if v > 0]


def _fmt_time_tick(t: float, step: float) -> str:
    """An x tick on the time axis, as precise as the tick spacing needs: 45s, 2m 30s, 1h 05m, 1d 03h."""
    if not math.isfinite(t):
        return "?"
    s = int(round(t))
    if s < 60:
        return f"{t:.3g}s" if step < 1 else f"{s}s"
    d, h, m, sec = s // 86400, s % 86400 // 3600, s % 3600 // 60, s % 60
    if step >= 86400:
        return f"{d}d"
    if step >= 3600:
        return f"{d}d {h:02d}h" if d else f"{h}h"
    hours = s // 3600
    if step >= 60:
        return f"{hours}h {m:02d}m" if hours else f"{m}m"
    return f"{hours}:{m:02d}:{sec:02d}" if hours else f"{m}m {sec:02d}s"


def _fmt_step(v: float) -> str:
    """An x tick for steps: 950, 12k, 2.5k, 1.25M."""
    a = abs(v)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.0f}"


def _line(parts: list[tuple[str, Style | None]], width: int) -> Strip:
    return Strip([Segment(_printable(text), style) for text, style in parts if text]).crop_extend(0, width, None)


def _printable(text: str) -> str:
    """Run names and titles come from files: a control character (an escape, a newline) would
    reach the terminal and tear the screen, so each becomes a visible replacement."""
    return text if text.isprintable() else "".join(ch if ch.isprintable() else "\ufffd" for ch in text)
