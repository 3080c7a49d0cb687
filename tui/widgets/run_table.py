"""The run list: a table of the store's summaries that keeps its place.

Re-listing (every second) updates only the cells that changed; the cursor stays on the same run
(by id), sorting and a live filter (`/`) narrow and order the rows, and marked runs (space) get
the colour their curve gets when overlaid on the chart.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Iterable

from rich.text import Text
from textual import on
from textual.actions import SkipAction
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Input
from torchdeck.fmt import fmt_count, fmt_duration, fmt_number

from .run_label import run_label

# Curve colours for marked runs: eight that stay apart from each other on a dark terminal
# (Tableau 10, its blue lightened), handed out in marking order.
PALETTE = ("#5fa8ff", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7")

STATE_COLOURS = {"running": "green", "finished": "green", "paused": "yellow", "saving": "yellow",
                 "queued": "yellow", "stopped": "yellow", "crashed": "red", "failed": "red", "diverged": "red"}

# (key, header) of the columns after the mark; "created" sorts by age and has no column.
COLUMNS = (("name", "Name"), ("state", "State"), ("model", "Model"), ("best", "Best val"), ("steps", "Steps"),
           ("duration", "Duration"), ("rate", "Steps/s"))
SORT_KEYS = ("created",) + tuple(key for key, _ in COLUMNS)
_HEADERS = dict(COLUMNS)
_FIGURES = ("best", "steps", "duration", "rate")  # right-aligned
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MODEL_WIDTH = 32
# What a row is made of: a summary whose fields are all unchanged is not formatted again.
_RAW_FIELDS = ("name", "model", "state", "created", "step", "total_steps", "best_val_loss", "ended", "duration",
               "steps_per_second")


def _num(v: Any) -> float | None:
    """A finite number from a summary field, else None (old files, hand-edited ones)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _text(v: Any, width: int) -> str:
    s = _CONTROL.sub(" ", v if isinstance(v, str) else "")
    return s if len(s) <= width else s[: width - 1] + "…"


def duration_of(s: Any) -> float | None:
    """The run's duration: its summary's, else ended - created for files from before it."""
    d = _num(getattr(s, "duration", None))
    if d is not None:
        return d if d >= 0 else None
    ended, created = _num(getattr(s, "ended", None)), _num(getattr(s, "created", None))
    if ended is not None and created is not None and ended >= created:
        return ended - created
    return None


def rate_text(rate: Any) -> str:
    r = _num(rate)
    if r is None or r < 0:
        return "-"
    return fmt_count(round(r)) if r >= 10 else fmt_number(r, 3)


def cells_for(s: Any) -> tuple[str, ...]:
    """The row of one summary as plain text, in COLUMNS order ("-" for what it lacks)."""
    run_id = _text(getattr(s, "id", ""), 64)
    name = run_label(run_id, _text(getattr(s, "name", ""), 64))
    step, total = _int(getattr(s, "step", None)), _int(getattr(s, "total_steps", None))
    steps = "-" if step is None else (f"{step:,}/{total:,}" if total else f"{step:,}")
    best = getattr(s, "best_val_loss", None)
    best_text = fmt_number(best) if isinstance(best, (int, float)) and not isinstance(best, bool) else "-"
    return (name, _text(getattr(s, "state", ""), 16) or "-", _text(getattr(s, "model", ""), _MODEL_WIDTH) or "-",
            best_text, steps, fmt_duration(duration_of(s)), rate_text(getattr(s, "steps_per_second", None)))


def _sort_value(s: Any, key: str, label: str) -> Any:
    """What a column sorts by (None: missing, listed last whichever the direction)."""
    if key == "created":
        return _num(getattr(s, "created", None))
    if key == "name":
        return label.casefold()
    if key in ("state", "model"):
        v = getattr(s, key, None)
        return v.casefold() if isinstance(v, str) and v else None
    if key == "best":
        return _num(getattr(s, "best_val_loss", None))
    if key == "steps":
        return _int(getattr(s, "step", None))
    if key == "duration":
        return duration_of(s)
    return _num(getattr(s, "steps_per_second", None))


class _Mark:
    """The mark column's cell: a ● in the run's curve colour, or nothing."""

    __slots__ = ("run_id", "colour")

    def __init__(self, run_id: str, colour: str | None):
        self.run_id, self.colour = run_id, colour

    def __rich__(self) -> Text:
        return Text("●", style=self.colour) if self.colour else Text(" ")


class RunGrid(DataTable):
    """The table inside a RunTable (its keys act on the RunTable)."""

    BINDINGS = [
        Binding("space", "mark", "Mark", id="runs.mark", tooltip="Mark the run: its curve is overlaid on the chart"),
        Binding("slash", "filter", "Filter", id="runs.filter"),
        Binding("c", "sort_next", "Sort", show=False, id="runs.sort", tooltip="Sort by the next column"),
        Binding("v", "sort_reverse", "Reverse", id="runs.reverse", show=False),
    ]

    def _owner(self) -> "RunTable":
        parent = self.parent
        assert isinstance(parent, RunTable)
        return parent

    def action_mark(self) -> None:
        self._owner().toggle_mark()

    def action_filter(self) -> None:
        self._owner().open_filter()

    def action_sort_next(self) -> None:
        self._owner().cycle_sort()

    def action_sort_reverse(self) -> None:
        self._owner().reverse_sort()


class RunTable(Vertical):
    """The store's runs, one row each: name, state (coloured), model, best validation, steps,
    duration, steps/s. Keys (on the table): c sorts by the next column, v reverses, / filters,
    space marks the run. Posts Selected, MarksChanged and TitleChanged."""

    DEFAULT_CSS = """
    RunTable { height: 1fr; }
    RunTable > Input.run-filter { display: none; height: 1; border: none; padding: 0 1; }
    RunTable > Input.run-filter.-open { display: block; }
    RunTable > RunGrid { height: 1fr; }
    """

    BINDINGS = [Binding("escape", "clear_filter", "Clear filter", id="runs.clear_filter", show=False)]

    @dataclass
    class Selected(Message):
        """The highlighted run changed (None: the table shows no run)."""

        run_id: str | None
        run_table: "RunTable | None" = field(default=None, repr=False)

        @property
        def control(self) -> "RunTable | None":
            return self.run_table

    @dataclass
    class MarksChanged(Message):
        """The marked runs, in marking order, and each one's curve colour."""

        run_ids: list[str]
        colors: dict[str, str]
        run_table: "RunTable | None" = field(default=None, repr=False)

        @property
        def control(self) -> "RunTable | None":
            return self.run_table

    @dataclass
    class TitleChanged(Message):
        """The table's title ("Runs 120", "Runs 3/120" while filtered) changed."""

        title: str
        run_table: "RunTable | None" = field(default=None, repr=False)

        @property
        def control(self) -> "RunTable | None":
            return self.run_table

    def __init__(self, *, name: str | None = None, id: str | None = None, classes: str | None = None):
        super().__init__(name=name, id=id, classes=classes)
        self._summaries: dict[str, Any] = {}  # every listed run by id, in the store's order
        self._cells: dict[str, tuple[str, ...]] = {}  # the row each shown run has in the table
        self._order: list[str] = []  # shown runs in display order
        self._marks: dict[str, str] = {}  # run id -> colour, in marking order
        self._filter = ""
        self._sort_key = "created"
        self._sort_reverse = True  # newest first
        self._selected: str | None = None
        self._title = ""
        self._formatted: dict[str, tuple[tuple, tuple[str, ...]]] = {}  # run id -> (its raw fields, its row)
        self._rows_changed = False
        self._today: date | None = None
        self._ready = False

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter: name, id, model or state (Enter keeps, Escape clears)",
                    classes="run-filter", compact=True)
        yield RunGrid(cursor_type="row", zebra_stripes=True)

    def on_mount(self) -> None:
        grid = self.table
        grid.add_column(Text(" "), key="mark", width=1)
        for key, header in COLUMNS:
            grid.add_column(self._header(key), key=key)
        self._ready = True
        self._refresh_rows()  # summaries given before mounting
        self._update_title()

    # -- what the screen reads -------------------------------------------------------------------
    @property
    def table(self) -> RunGrid:
        return self.query_one(RunGrid)

    @property
    def filter_input(self) -> Input:
        return self.query_one("Input.run-filter", Input)

    @property
    def title(self) -> str:
        return self._title

    @property
    def cursor_run_id(self) -> str | None:
        grid = self.table
        if grid.row_count == 0:
            return None
        return grid.coordinate_to_cell_key((grid.cursor_row, 0)).row_key.value

    @property
    def shown_ids(self) -> list[str]:
        """The runs in view, top to bottom."""
        return list(self._order)

    @property
    def marks(self) -> dict[str, str]:
        return dict(self._marks)

    @property
    def sort(self) -> tuple[str, bool]:
        """(sort key, reversed)."""
        return self._sort_key, self._sort_reverse

    @property
    def filter_text(self) -> str:
        return self._filter

    def focus(self, scroll_visible: bool = True):
        self.table.focus(scroll_visible)
        return self

    # -- listing ---------------------------------------------------------------------------------
    def set_summaries(self, summaries: Iterable[Any]) -> None:
        """The store's runs now: rows are added, removed and changed in place (only cells whose
        text changed are written), the cursor stays on its run, marks of removed runs go."""
        listed: dict[str, Any] = {}
        for s in summaries:
            run_id = getattr(s, "id", None)
            if isinstance(run_id, str) and run_id and run_id not in listed:
                listed[run_id] = s
        self._summaries = listed
        gone = [r for r in self._marks if r not in listed]
        for run_id in gone:
            del self._marks[run_id]
        self._refresh_rows()
        if gone:
            self._post_marks()

    def set_sort(self, key: str, reverse: bool | None = None) -> None:
        """Sort by `key` (one of SORT_KEYS); `reverse` None: the key's natural direction
        (newest first for "created", ascending for the columns)."""
        if key not in SORT_KEYS:
            raise ValueError(f"unknown sort key {key!r}: one of {', '.join(SORT_KEYS)}")
        old = self._sort_key
        self._sort_key = key
        self._sort_reverse = (key == "created") if reverse is None else reverse
        self._relabel(old)
        self._relabel(key)
        self._refresh_rows(force_sort=True)

    def cycle_sort(self) -> None:
        keys = SORT_KEYS
        self.set_sort(keys[(keys.index(self._sort_key) + 1) % len(keys)])

    def reverse_sort(self) -> None:
        self.set_sort(self._sort_key, not self._sort_reverse)

    def _header(self, key: str) -> Text:
        arrow = " "
        if key == self._sort_key:
            arrow = "▼" if self._sort_reverse else "▲"
        return Text(f"{_HEADERS[key]} {arrow}", justify="right" if key in _FIGURES else "left")

    def _relabel(self, key: str) -> None:
        if key in _HEADERS and self._ready:
            self.table.columns[key].label = self._header(key)  # type: ignore[index]

    def _matches(self, run_id: str, s: Any) -> bool:
        if not self._filter:
            return True
        needle = self._filter.casefold()
        hay = (run_id, getattr(s, "name", ""), getattr(s, "model", ""), getattr(s, "state", ""))
        return any(isinstance(h, str) and needle in h.casefold() for h in hay)

    def _row_of(self, run_id: str, s: Any) -> tuple[str, ...]:
        """The row's text; formatted again only when the summary's fields changed."""
        raw = (self._marks.get(run_id, ""),) + tuple(getattr(s, f, None) for f in _RAW_FIELDS)
        known = self._formatted.get(run_id)
        if known is not None and known[0] == raw:
            return known[1]
        row = (raw[0],) + cells_for(s)
        self._formatted[run_id] = (raw, row)
        self._rows_changed = True
        return row

    def _refresh_rows(self, force_sort: bool = False) -> None:
        if not self._ready:  # the columns are made on mounting; rows follow then
            return
        grid = self.table
        keep = self.cursor_run_id
        today = date.today()
        if today != self._today:  # unnamed runs are labelled by their start, relative to today
            self._today = today
            self._formatted.clear()
        self._rows_changed = force_sort
        shown = {r: s for r, s in self._summaries.items() if self._matches(r, s)}
        for run_id in [r for r in self._cells if r not in shown]:
            grid.remove_row(run_id)
            del self._cells[run_id]
            self._rows_changed = True
        for run_id in [r for r in self._formatted if r not in self._summaries]:
            del self._formatted[run_id]
        for run_id, s in shown.items():
            row = self._row_of(run_id, s)
            old = self._cells.get(run_id)
            if old is None:
                grid.add_row(*self._renderables(run_id, row), key=run_id)
                self._rows_changed = True
            elif old != row:
                for i, (a, b) in enumerate(zip(old, row)):
                    if a != b:
                        column = "mark" if i == 0 else COLUMNS[i - 1][0]
                        grid.update_cell(run_id, column, self._renderable(run_id, i, b), update_width=i > 0)
            self._cells[run_id] = row
        if self._rows_changed:  # nothing a sort looks at changed: the order stands
            order = self._sorted(shown)
            if force_sort or order != self._order or len(order) != grid.row_count:
                rank = {r: i for i, r in enumerate(order)}
                grid.sort(key=lambda row: rank[row[0].run_id])
                self._order = order
        if keep in shown:
            index = grid.get_row_index(keep)
            if index != grid.cursor_row:
                grid.move_cursor(row=index, animate=False)
        self._update_title()
        self._post_selection()

    def _sorted(self, shown: dict[str, Any]) -> list[str]:
        by_age = sorted(shown, key=lambda r: _num(getattr(shown[r], "created", None)) or 0.0, reverse=True)
        if self._sort_key == "created":
            present = [r for r in by_age if _num(getattr(shown[r], "created", None)) is not None]
            has = set(present)
            missing = [r for r in by_age if r not in has]
            return (present if self._sort_reverse else present[::-1]) + missing
        values = {r: _sort_value(shown[r], self._sort_key, self._cells[r][1]) for r in by_age}
        present = [r for r in by_age if values[r] is not None]
        present.sort(key=values.__getitem__, reverse=self._sort_reverse)  # stable: ties stay newest first
        return present + [r for r in by_age if values[r] is None]

    def _renderables(self, run_id: str, row: tuple[str, ...]) -> list[Any]:
        return [self._renderable(run_id, i, v) for i, v in enumerate(row)]

    @staticmethod
    def _renderable(run_id: str, i: int, value: str) -> Any:
        if i == 0:
            return _Mark(run_id, value or None)
        if i == 2:  # state
            return Text(value, style=STATE_COLOURS.get(value, ""))
        if i >= 4:  # figures: right-aligned, so their magnitudes line up
            return Text(value, justify="right")
        return Text(value)  # never markup: a name may hold [brackets]

    def _update_title(self) -> None:
        total = len(self._summaries)
        title = f"Runs {len(self._cells)}/{total}" if self._filter else f"Runs {total}"
        if title != self._title:
            self._title = title
            self.post_message(self.TitleChanged(title, self))

    # -- selection -------------------------------------------------------------------------------
    @on(DataTable.RowHighlighted)
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._post_selection()

    @on(DataTable.HeaderSelected)
    def _header_clicked(self, event: DataTable.HeaderSelected) -> None:
        key = event.column_key.value
        if key in _HEADERS:
            if key == self._sort_key:
                self.reverse_sort()
            else:
                self.set_sort(key)

    def _post_selection(self) -> None:
        run_id = self.cursor_run_id
        if run_id != self._selected:
            self._selected = run_id
            self.post_message(self.Selected(run_id, self))

    def select(self, run_id: str) -> bool:
        """Put the cursor on a run, clearing a filter that hides it; False when it is not listed
        (yet: a run just created shows on the next listing)."""
        if not self._ready or run_id not in self._summaries:
            return False
        if run_id not in self._cells:
            self.action_clear_filter()
        self.table.move_cursor(row=self.table.get_row_index(run_id), animate=False)
        self._post_selection()
        return True

    # -- marks -----------------------------------------------------------------------------------
    def toggle_mark(self, run_id: str | None = None) -> None:
        run_id = run_id or self.cursor_run_id
        if run_id is None or run_id not in self._summaries:
            return
        if run_id in self._marks:
            del self._marks[run_id]
        else:
            used = set(self._marks.values())
            free = [c for c in PALETTE if c not in used]
            self._marks[run_id] = free[0] if free else PALETTE[len(self._marks) % len(PALETTE)]
        self._refresh_rows()
        self._post_marks()

    def _post_marks(self) -> None:
        self.post_message(self.MarksChanged(list(self._marks), dict(self._marks), self))

    # -- filter ----------------------------------------------------------------------------------
    def open_filter(self) -> None:
        box = self.filter_input
        box.add_class("-open")
        box.focus()

    def set_filter(self, text: str) -> None:
        self._filter = _CONTROL.sub("", text).strip()
        self._refresh_rows()

    @on(Input.Changed, ".run-filter")
    def _filter_typed(self, event: Input.Changed) -> None:
        event.stop()
        self.set_filter(event.value)

    @on(Input.Submitted, ".run-filter")
    def _filter_kept(self, event: Input.Submitted) -> None:
        event.stop()
        if not self._filter:
            self.filter_input.remove_class("-open")
        self.table.focus()

    def action_clear_filter(self) -> None:
        box = self.filter_input
        if not self._filter and not box.has_class("-open"):
            raise SkipAction()  # nothing to clear: Escape means what it means around the table
        box.remove_class("-open")
        if box.value:
            with box.prevent(Input.Changed):
                box.value = ""
        self.set_filter("")
        self.table.focus()
