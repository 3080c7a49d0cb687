"""A log that is a window on a stored history: it formats only the lines in view.

`VirtualLog` asks a `LineSource` for line i when line i is on screen, so a run of a million
losses scrolls as fast as one of a hundred, and nothing is formatted to be thrown away.
`RunLogLines` is that source over a RunView: one line per loss point, computed on demand from
the series, with the run's events (few) interleaved at their step from a small index.
"""

from __future__ import annotations

import math
import re
import threading
from bisect import bisect_right, insort
from contextlib import nullcontext
from typing import Protocol, runtime_checkable

from rich.cells import cell_len
from rich.segment import Segment
from rich.text import Text
from textual.binding import Binding
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip
from torchdeck.fmt import fmt_count, fmt_duration, fmt_loss, fmt_number
from torchdeck.runs import events as ev

_STRIP_CACHE = 512  # strips kept: a few screens' worth, so paging back and forth is free
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # never sent to the terminal as they are


@runtime_checkable
class LineSource(Protocol):
    """What a VirtualLog reads: a count and line i on demand. `revision` changes whenever lines
    were replaced or inserted before the end (appending does not change it)."""

    revision: int

    def line_count(self) -> int: ...

    def line(self, i: int) -> str | Text: ...


class ListLines:
    """A LineSource over a list (tests, benchmarks, short logs)."""

    def __init__(self, lines: list[str | Text] | None = None):
        self.lines: list[str | Text] = list(lines or [])
        self.revision = 0

    def line_count(self) -> int:
        return len(self.lines)

    def line(self, i: int) -> str | Text:
        return self.lines[i]

    def replace(self, lines: list[str | Text]) -> None:
        self.lines = list(lines)
        self.revision += 1


class FileLines:
    """A LineSource over a growing text file (a command run's worker.log): `read_more` (from any
    thread) appends what was written since. The line being written (a progress bar redrawn with
    carriage returns, not yet ended) shows as the last line, as a terminal would show it: the text
    after its last carriage return, colour codes dropped. Only the last `max_lines` are kept, and
    a large file is read from its last `first_bytes`."""

    def __init__(self, path, *, max_lines: int = 100_000, first_bytes: int = 1 << 20):
        self.path = path
        self.max_lines = max_lines
        self.revision = 0
        self._lines: list[str] = []
        self._pending = b""  # the line being written
        self._partial = ""  # it, as shown
        self._offset: int | None = None  # None: not read yet
        self._first_bytes = first_bytes
        self._lock = threading.Lock()

    def read_more(self, max_bytes: int = 1 << 20) -> bool:
        """Read what the file gained (at most max_bytes); True when anything was read."""
        try:
            with open(self.path, "rb") as f:
                skipped = False
                if self._offset is None:
                    size = f.seek(0, 2)
                    self._offset = max(0, size - self._first_bytes)
                    skipped = self._offset > 0
                f.seek(self._offset)
                data = f.read(max_bytes)
        except OSError:
            return False
        if not data:
            return False
        self._offset += len(data)
        data = self._pending + data
        end = data.rfind(b"\n")
        lines = [] if end < 0 else [_terminal_line(raw) for raw in data[:end].split(b"\n")]
        self._pending = data[end + 1:]
        if skipped and lines:
            lines[0] = f"(earlier output is in {self.path})"
        partial = _terminal_line(self._pending)
        with self._lock:
            if self._partial:  # the line being written was shown last: it changes in place
                self.revision += 1
            self._lines.extend(lines)
            self._partial = partial
            if len(self._lines) > self.max_lines:
                del self._lines[: len(self._lines) - self.max_lines // 2]
                self.revision += 1
        return True

    def line_count(self) -> int:
        with self._lock:
            return len(self._lines) + (1 if self._partial else 0)

    def line(self, i: int) -> str | Text:
        with self._lock:
            if i == len(self._lines) and self._partial:
                return self._partial
            return self._lines[i]


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?")  # colours, cursor moves, titles


def _terminal_line(raw: bytes) -> str:
    text = _ANSI.sub("", raw.decode("utf-8", "replace")).rstrip("\r")
    return text[text.rfind("\r") + 1:] if "\r" in text else text


class VirtualLog(ScrollView, can_focus=True):
    """Shows the lines of a LineSource in view, no more. Lines are cropped to the width with "…",
    never wrapped. `following` keeps the newest line in view as lines arrive; it ends when the
    user scrolls up (keys, mouse, scrollbar) and resumes with End or on scrolling to the end."""

    DEFAULT_CSS = """
    VirtualLog {
        overflow-x: hidden;
        overflow-y: auto;
        height: 1fr;
    }
    """

    BINDINGS = [
        Binding("up", "line_up", "Up", show=False),
        Binding("down", "line_down", "Down", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
        Binding("home", "home", "Oldest", show=False),
        Binding("end", "end", "Newest, follow", show=False),
    ]

    def __init__(self, source: LineSource | None = None, *, name: str | None = None, id: str | None = None,
                 classes: str | None = None, disabled: bool = False):
        super().__init__(name=name, id=id, classes=classes, disabled=disabled)
        self.following = True
        self._source: LineSource = source if source is not None else ListLines()
        self._count = 0
        self._revision = self._source.revision
        self._strips: dict[int, Strip] = {}
        self._strips_width = -1

    def on_mount(self) -> None:
        super().on_mount()
        self.poll()

    # -- the source ------------------------------------------------------------------------------
    @property
    def source(self) -> LineSource:
        return self._source

    def set_source(self, source: LineSource) -> None:
        """Show another source from its end, following."""
        self._source = source
        self._revision = source.revision
        self._count = -1  # whatever it holds is news
        self._strips.clear()
        self.following = True
        self.poll()

    def poll(self) -> None:
        """Catch up with the source (the screen calls this on a timer, a few times a second):
        new lines extend the scroll range and, while following, the end stays in view."""
        count = self._source.line_count()
        revision = self._source.revision
        replaced = revision != self._revision
        if replaced:
            self._revision = revision
            self._strips.clear()
        if count == self._count and not replaced:
            return
        grew_in_view = count > self._count and self._count - int(self.scroll_y) < self.scrollable_content_region.height
        self._count = count
        self.virtual_size = Size(0, count)
        if self.following:
            self.scroll_to(y=self.max_scroll_y, animate=False, immediate=True, force=True)
            # Textual tells the scrollbar a new position only while it is shown; a jump from no
            # lines to thousands (a replay's log caught up in one poll) comes before the layout
            # shows it, and its thumb stayed at the top while the end was in view
            self.vertical_scrollbar.position = self.scroll_y
        if replaced or grew_in_view or self.following:
            self.refresh()

    @property
    def line_count(self) -> int:
        """Lines the log knows of (as of the last poll)."""
        return max(0, self._count)

    def lines_in_view(self) -> list[str]:
        """The text of the lines on screen now, as drawn (cropped), top to bottom."""
        return ["".join(seg.text for seg in self.render_line(y)).rstrip() for y in range(self.size.height)]

    # -- scrolling -------------------------------------------------------------------------------
    def _scroll_to_line(self, y: float) -> None:
        self.scroll_to(y=max(0.0, min(y, self.max_scroll_y)), animate=False, immediate=True, force=True)

    def action_line_up(self) -> None:
        self._scroll_to_line(self.scroll_y - 1)

    def action_line_down(self) -> None:
        self._scroll_to_line(self.scroll_y + 1)

    def action_page_up(self) -> None:
        self._scroll_to_line(self.scroll_y - max(1, self.scrollable_content_region.height))

    def action_page_down(self) -> None:
        self._scroll_to_line(self.scroll_y + max(1, self.scrollable_content_region.height))

    def action_home(self) -> None:
        self._scroll_to_line(0)
        self.following = self.max_scroll_y == 0

    def action_end(self) -> None:
        self.following = True
        self._scroll_to_line(self.max_scroll_y)

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        # However the view moved (keys, wheel, scrollbar): up and away from the end stops
        # following; reaching the end resumes it. A clamp to a shorter range stays at the end.
        if new_value >= self.max_scroll_y:
            self.following = True
        elif new_value < old_value:
            self.following = False

    # -- drawing ---------------------------------------------------------------------------------
    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()

    def on_resize(self, event) -> None:
        self._strips.clear()
        self.call_after_refresh(self._keep_end)

    def _keep_end(self) -> None:
        if self.following:  # judged now, with the new size: not when the resize was queued
            self._scroll_to_line(self.max_scroll_y)

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        i = int(self.scroll_y) + y
        style = self.rich_style
        if i < 0 or i >= self._count:
            return Strip.blank(width, style)
        if width != self._strips_width:
            self._strips.clear()
            self._strips_width = width
        strip = self._strips.get(i)
        if strip is None:
            try:
                line = self._source.line(i)
            except IndexError:  # the source shrank since the last poll: the next poll redraws
                return Strip.blank(width, style)
            strip = self._format(line, width, style)
            if len(self._strips) >= _STRIP_CACHE:
                self._strips.clear()
            self._strips[i] = strip
        return strip

    def _format(self, line: str | Text, width: int, style) -> Strip:
        if width <= 0:
            return Strip([], 0)
        if isinstance(line, str):
            if not line.isprintable():
                line = _CONTROL.sub("\N{REPLACEMENT CHARACTER}", line)
            if line.isascii() and len(line) <= width:  # the common case: no Text, no measuring
                return Strip([Segment(line, style), Segment(" " * (width - len(line)), style)], width)
            text = Text(line, no_wrap=True)
        else:
            text = line.copy()
            if not text.plain.isprintable():
                text = Text(_CONTROL.sub("\N{REPLACEMENT CHARACTER}", text.plain), style=text.style, no_wrap=True)
            text.no_wrap = True
        if cell_len(text.plain) > width:
            text.truncate(width, overflow="ellipsis")
        segments = [Segment(s.text, style + s.style if s.style else style) for s in text.render(self.app.console)]
        return Strip(segments).extend_cell_length(width, style).crop(0, width)


# -- the run's lines ---------------------------------------------------------------------------

def loss_line(epoch: int, step: int, value: float, reason: str = "nan") -> str | Text:
    """One loss point's line; a non-finite one says so, in red."""
    head = f"e{epoch:<3} step {step:>9,}  loss " if epoch else f"step {step:>9,}  loss "  # epoch 0: a script's run
    if math.isfinite(value):
        return head + fmt_loss(value)
    return Text(f"{head}{reason}  <- not finite", style="red")


PARAMS_SHOWN = 200  # characters of a script's own config shown under its start line


def started_lines(e: ev.Started) -> list[str]:
    """What a run started with. torchdeck's loop: its model, size and settings. A script's run
    (the logging API), a command or another tool's logs: what torchdeck knows of it, never the
    defaults of a form the run did not come from."""
    cfg = e.config if isinstance(e.config, dict) else {}
    source = cfg.get("source")
    if source == "api":
        lines = [f"started: {cfg.get('script') or cfg.get('model')} (torchdeck.init)"]
        params = cfg.get("params")
        if isinstance(params, dict) and params:
            lines.append("  " + params_text(params, PARAMS_SHOWN))
        return lines
    if source == "command":
        argv = cfg.get("command")
        text = " ".join(str(a) for a in argv) if isinstance(argv, list) else str(e.pipeline_note)
        return [f"started: {text[:PARAMS_SHOWN]}", f"  in {cfg.get('cwd')}"]
    if source is not None:  # another tool's logs, imported, and their hyper-parameters when read at the start
        lines = [f"imported from {source}: {cfg.get('origin')}"]
        params = cfg.get("params")
        if isinstance(params, dict) and params:
            lines.append("  " + params_text(params, PARAMS_SHOWN))
        return lines
    return [f"started: {cfg.get('model')}, {fmt_count(e.num_params)} params, {e.device}",
            f"  {cfg.get('epochs')} epochs x {fmt_count(e.steps_per_epoch)} steps",
            f"  batch {cfg.get('batch_size')}, {cfg.get('optimizer')}, lr {fmt_number(cfg.get('lr'))}"]


def params_text(params: dict, limit: int) -> str:
    """`key value, key value, ...` of a config dict, nested dicts flattened with dots, each item
    cut at 60 characters and the whole at `limit`, saying how many were left out."""
    items: list[str] = []

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict) and v:
                walk(v, f"{prefix}{k}.")
            else:
                item = f"{prefix}{k} {v}"
                items.append(item if len(item) <= 60 else item[:59] + "…")

    walk(params, "")
    out = ""
    for i, item in enumerate(items):
        more = f" … {len(items) - i} more (runs show)"
        if len(out) + len(item) + 2 > limit - len(more):
            return out + more
        out = f"{out}, {item}" if out else item
    return out


def event_lines(e: ev.Event) -> list[str]:
    """The log's lines for one event other than losses (scalars have none: they are in the
    header and `runs show`, not a line per point)."""
    if isinstance(e, ev.Started):
        return started_lines(e)
    if isinstance(e, ev.EpochEnd):
        acc = "" if e.val_accuracy is None else f", accuracy {e.val_accuracy:.1%}"
        return [f"epoch {e.epoch} ends at step {fmt_count(e.step)} ({fmt_duration(e.seconds)})",
                f"  train loss {fmt_loss(e.train_loss)}, val {fmt_loss(e.val_loss)}{acc}"]
    if isinstance(e, ev.Checkpointed):
        if e.path:  # written by something else (Lightning, Hugging Face): where it is
            return [f"checkpoint {e.name} recorded" + (f" ({e.reason})" if e.reason else "") + f": {e.path}"]
        line = f"checkpoint {e.name} saved ({e.reason})"
        if e.wait_s is not None and e.wait_s >= 0.05:  # the one cost of a save training can see
            line += f"; training waited {e.wait_s:.2f} s for the previous save"
        return [line]
    if isinstance(e, ev.StateChanged):
        return [f"{e.state} at step {fmt_count(e.step)}"]
    if isinstance(e, ev.Params):
        return [f"config at step {fmt_count(e.step)}: {params_text(e.values, PARAMS_SHOWN) or '(empty)'}"]
    if isinstance(e, ev.Resumed):
        where = f" from {e.checkpoint}" if e.checkpoint else (" from the start" if not e.step else "")
        lines = [f"resumed at step {fmt_count(e.step)}{where}: what follows replaces the history after it"]
        if e.changes:
            lines.append("  " + ", ".join(f"{k} {v[0]} -> {v[1]}" for k, v in e.changes.items()
                                          if isinstance(v, list) and len(v) == 2))
        if not e.exact:
            lines.append(f"  not exact: {e.note or 'settings changed'}")
        return lines
    if isinstance(e, ev.Ended):
        return [f"run {e.state} at step {fmt_count(e.step)}" + (f": {e.message}" if e.message else "")]
    return []


def nonfinite_kinds(e: ev.Losses) -> dict[int, str]:
    """Index in the chunk -> "nan" / "inf" / "-inf", from the record's `nonfinite` (entries of
    any other shape, from a foreign or hand-edited file, are skipped)."""
    out = {}
    for item in e.nonfinite or ():
        if isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], int) \
                and not isinstance(item[0], bool):
            out[item[0]] = str(item[1])[:8]
    return out


def lines_for(e: ev.Event, limit: int | None = None) -> list[str]:
    """Every line of one event as plain text, a loss chunk's included (its last `limit` losses):
    for readers that print events as they come rather than window a history."""
    if isinstance(e, ev.Losses):
        bad = nonfinite_kinds(e)
        first = 0 if limit is None else max(0, len(e.values) - limit)
        return [str(loss_line(e.epoch, e.first_step + i, math.nan if v is None else v, bad.get(i, "nan")))
                for i, v in enumerate(e.values[first:], start=first)]
    return event_lines(e)


# The one place that knows how a Series (torchdeck.runs.history) is read.
def _series_len(series) -> int:
    return len(series)


def _series_point(series, k: int) -> tuple[int, float]:
    return series.point(k)


def _points_through(series, step: int, hi: int) -> int:
    """How many of the first `hi` points are at or before `step`."""
    return min(series.index_of_step(step + 1), hi)


_MAX_REASONS = 100_000  # non-finite points whose kind ("inf", "-inf") is kept; beyond, "nan"


class RunLogLines:
    """A LineSource over a RunView: in step order, one line per loss point (formatted when asked
    for, never up front) with the run's event lines at their step.

    The events come through `feed_events(events)`, called with each batch after the view was
    fed it (or `feed(events)`, which does both): the source indexes the few non-loss events by
    loss-point position. `lock`, when given, is held while the view is read; `feed` takes it,
    `feed_events` expects the caller to hold it (it is fed together with the view)."""

    def __init__(self, view, lock: threading.Lock | None = None):
        self.view = view
        self._lock = lock if lock is not None else nullcontext()
        self._own_revision = 0
        self._points = 0  # loss points seen through feed_events: where a stepless event goes
        # event groups, sorted by position: (position, sequence) keys, their lines, their step
        self._keys: list[tuple[int, int]] = []
        self._starts: list[int] = []  # line index of each group's first line
        self._lines: list[list[str | Text]] = []
        self._steps: list[int | None] = []
        self._event_line_count = 0
        self._seq = 0
        self._reasons: dict[int, str] = {}  # step -> "inf" / "-inf" / "nan" of non-finite points

    @property
    def revision(self) -> int:
        return self.view.revision + self._own_revision

    # -- feeding ---------------------------------------------------------------------------------
    def feed(self, events: list[ev.Event]) -> None:
        """Feed the view and index the events, under the lock."""
        with self._lock:
            self.view.feed(events)
            self.feed_events(events)

    def feed_events(self, events: list[ev.Event]) -> None:
        """Index a batch of events the view has already been fed (the caller holds the lock)."""
        series = self.view.metrics["loss"]
        for e in events:
            if isinstance(e, ev.Losses):
                for i, kind in nonfinite_kinds(e).items():
                    if len(self._reasons) < _MAX_REASONS:
                        self._reasons[e.first_step + i] = kind
                self._points += len(e.values)
                continue
            if isinstance(e, ev.Resumed):
                self._resume(series, e.step)
            lines = event_lines(e)
            if not lines:
                continue
            step = getattr(e, "step", None)
            if isinstance(step, int) and not isinstance(step, bool):
                hi = min(self._points, _series_len(series))
                pos = _points_through(series, step, hi)
            else:
                step, pos = None, min(self._points, _series_len(series))
            self._insert(pos, step, lines)

    def _insert(self, pos: int, step: int | None, lines: list[str]) -> None:
        key = (pos, self._seq)
        self._seq += 1
        g = bisect_right(self._keys, key)
        if g < len(self._keys) or pos < self._points:
            self._own_revision += 1  # lines already shown move down
        insort(self._keys, key)
        self._lines.insert(g, [Text(line, style="bold") for line in lines])
        self._steps.insert(g, step)
        self._event_line_count += len(lines)
        self._reindex(g)

    def _reindex(self, g: int) -> None:
        del self._starts[g:]
        before = self._starts[g - 1] - self._keys[g - 1][0] + len(self._lines[g - 1]) if g > 0 else 0
        for k in range(g, len(self._keys)):
            self._starts.append(self._keys[k][0] + before)
            before += len(self._lines[k])

    def _resume(self, series, step: int) -> None:
        """History past `step` is replaced: its events and points go."""
        n = _points_through(series, step, min(self._points, _series_len(series)))
        keep = [k for k in range(len(self._keys))
                if (self._steps[k] is not None and self._steps[k] <= step)
                or (self._steps[k] is None and self._keys[k][0] <= n)]
        self._keys = [self._keys[k] for k in keep]
        self._lines = [self._lines[k] for k in keep]
        self._steps = [self._steps[k] for k in keep]
        self._event_line_count = sum(len(lines) for lines in self._lines)
        self._reindex(0)
        self._reasons = {s: r for s, r in self._reasons.items() if s <= step}
        self._points = n
        self._own_revision += 1

    # -- reading ---------------------------------------------------------------------------------
    def line_count(self) -> int:
        with self._lock:
            return _series_len(self.view.metrics["loss"]) + self._event_line_count

    def line(self, i: int) -> str | Text:
        with self._lock:
            g = bisect_right(self._starts, i) - 1
            before = 0
            if g >= 0:
                offset = i - self._starts[g]
                if offset < len(self._lines[g]):
                    return self._lines[g][offset]
                before = self._starts[g] - self._keys[g][0] + len(self._lines[g])
            series = self.view.metrics["loss"]
            k = i - before
            if not 0 <= k < _series_len(series):
                raise IndexError(i)
            step, value = _series_point(series, k)
            epoch = self.view.epoch_at(step)
        return loss_line(epoch, step, value, self._reasons.get(step, "nan"))
