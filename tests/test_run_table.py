"""RunTable driven through a Pilot: sorting, live filter, marks and their colours, a cursor
that stays on its run across re-listing, and summaries that lack fields or hold hostile ones."""

from __future__ import annotations

import math
from types import SimpleNamespace

from textual.app import App, ComposeResult
from torchdeck.runs.store import Summary
from torchdeck.tui.widgets import RunTable
from torchdeck.tui.widgets.run_table import PALETTE, SORT_KEYS, cells_for
from tui_helpers import wait_for


def summary(run_id, name, model, state, created, *, step=0, total=0, best=None, ended=None, duration=None,
            rate=None) -> Summary:
    s = Summary(id=run_id, name=name, model=model, state=state, created=created, step=step, total_steps=total,
                best_val_loss=best, ended=ended)
    # fields the store's Summary gains on another branch: set when given, absent (old files) otherwise
    if duration is not None:
        s.duration = duration
    if rate is not None:
        s.steps_per_second = rate
    return s


def five() -> list[Summary]:
    """Five runs, newest first as the store lists them; each column orders them differently."""
    return [
        summary("20261129-120500-eeee", "echo", "mlp", "running", 500.0, step=50, total=1000, best=0.5,
                duration=30.0, rate=12.0),
        summary("20261129-120400-dddd", "delta", "cnn", "finished", 400.0, step=1000, total=1000, best=0.1,
                duration=300.0, rate=3.5),
        summary("20261129-120300-cccc", "charlie", "resnet", "crashed", 300.0, step=10, total=5000, best=None,
                ended=310.0),
        summary("20261129-120200-bbbb", "bravo", "mlp-big", "paused", 200.0, step=700, total=2000, best=0.3,
                duration=100.0, rate=40.0),
        summary("20261129-120100-aaaa", "alpha", "bert", "stopped", 100.0, step=2000, total=2000, best=0.9,
                duration=5000.0, rate=1.25),
    ]


class TableApp(App):
    def __init__(self, summaries):
        super().__init__()
        self.initial = summaries
        self.selected: list[str | None] = []
        self.marks: list[RunTable.MarksChanged] = []
        self.titles: list[str] = []

    def compose(self) -> ComposeResult:
        yield RunTable(id="runs")

    def on_mount(self) -> None:
        table = self.query_one(RunTable)
        table.set_summaries(self.initial)
        table.focus()

    def on_run_table_selected(self, message: RunTable.Selected) -> None:
        self.selected.append(message.run_id)

    def on_run_table_marks_changed(self, message: RunTable.MarksChanged) -> None:
        self.marks.append(message)

    def on_run_table_title_changed(self, message: RunTable.TitleChanged) -> None:
        self.titles.append(message.title)


def order(table: RunTable) -> list[str]:
    """The runs as the table shows them, top to bottom (their names)."""
    grid = table.table
    return [str(grid.get_row(r.key)[1]) for r in grid.ordered_rows]


def header(table: RunTable) -> str:
    return "".join(seg.text for seg in table.table.render_line(0))


def row_text(table: RunTable, run_id: str) -> list[str]:
    return [str(c.__rich__() if hasattr(c, "__rich__") else c) for c in table.table.get_row(run_id)]


async def test_newest_first_then_each_column_sorts_and_reverses():
    app = TableApp(five())
    async with app.run_test(size=(120, 20)) as pilot:
        table = app.query_one(RunTable)
        await pilot.pause()
        assert order(table) == ["echo", "delta", "charlie", "bravo", "alpha"]
        assert "▲" not in header(table) and "▼" not in header(table)
        expected = {
            "name": (["alpha", "bravo", "charlie", "delta", "echo"], "Name ▲"),
            "state": (["charlie", "delta", "bravo", "echo", "alpha"], "State ▲"),
            "model": (["alpha", "delta", "echo", "bravo", "charlie"], "Model ▲"),
            "best": (["delta", "bravo", "echo", "alpha", "charlie"], "Best val ▲"),  # no value: last
            "steps": (["charlie", "echo", "bravo", "delta", "alpha"], "Steps ▲"),
            "duration": (["charlie", "echo", "bravo", "delta", "alpha"], "Duration ▲"),
            "rate": (["alpha", "delta", "echo", "bravo", "charlie"], "Steps/s ▲"),
        }
        for key, (rows, label) in expected.items():
            await pilot.press("c")
            assert table.sort == (key, False)
            assert order(table) == rows, key
            assert label in header(table)
            await pilot.press("v")
            assert label.replace("▲", "▼") in header(table)
            missing_last = [r for r in rows if r != "charlie"][::-1] + ["charlie"]
            assert order(table) == (missing_last if key in ("best", "rate") else rows[::-1]), key
        await pilot.press("c")  # round again: newest first, no arrow
        assert table.sort == ("created", True) and order(table)[0] == "echo"
        assert "▲" not in header(table) and "▼" not in header(table)


async def test_cells_and_a_summary_missing_fields_show_a_dash():
    old = Summary(id="20261129-110000-old0", name="", model="mlp", state="finished", created=10.0, step=5,
                  total_steps=10, ended=70.0)  # a file from before duration and steps/s
    bare = SimpleNamespace(id="20261129-100000-bare")  # nothing else at all
    app = TableApp(five() + [old, bare])
    async with app.run_test(size=(120, 20)) as pilot:
        table = app.query_one(RunTable)
        await pilot.pause()
        assert row_text(table, "20261129-120500-eeee") == [" ", "echo", "running", "mlp", "0.5", "50/1,000",
                                                            "30s", "12"]
        assert row_text(table, "20261129-120400-dddd")[-3:] == ["1,000/1,000", "5m 00s", "3.5"]
        assert row_text(table, "20261129-110000-old0")[3:] == ["mlp", "-", "5/10", "1m 00s", "-"]
        assert row_text(table, "20261129-100000-bare")[2:] == ["-", "-", "-", "-", "-", "-"]
        assert str(table.table.get_row("20261129-120300-cccc")[2].style) == "red"  # crashed, coloured


async def test_hostile_summaries_show_as_text_and_sort_without_error():
    runs = five() + [
        summary("20261129-090000-mark", "[red]not markup[/red]\x1b[2J", "m" * 500, "running", "yesterday",
                step=-3, total=math.nan, best=math.nan, duration=math.inf, rate=-5.0),
        SimpleNamespace(id="20261129-080000-odd1", name=None, model=7, state=None, created=None,
                        step="12", steps_per_second=math.nan),
        SimpleNamespace(name="no id"), "not a summary", None,
    ]
    app = TableApp(runs)
    async with app.run_test(size=(120, 20)) as pilot:
        table = app.query_one(RunTable)
        await pilot.pause()
        assert table.title == "Runs 7"
        cells = row_text(table, "20261129-090000-mark")
        assert cells[1].startswith("[red]not markup[/red]")  # shown as written, never as markup
        assert "\x1b" not in cells[1] and len(cells[1]) <= 24 and len(cells[3]) <= 32
        assert cells[4:] == ["nan", "-3", "-", "-"]
        assert row_text(table, "20261129-080000-odd1")[2:] == ["-", "-", "-", "-", "-", "-"]
        for _ in SORT_KEYS:  # every sort key, both ways, on hostile values
            await pilot.press("c")
            assert len(order(table)) == 7
            await pilot.press("v")
            assert len(order(table)) == 7


async def test_filter_narrows_live_enter_keeps_escape_clears():
    app = TableApp(five())
    async with app.run_test(size=(120, 20)) as pilot:
        table = app.query_one(RunTable)
        await pilot.pause()
        assert table.title == "Runs 5"
        await pilot.press("slash")
        assert table.filter_input.has_focus and table.filter_input.display
        await pilot.press("M", "l", "p")
        assert order(table) == ["echo", "bravo"]  # model mlp, mlp-big
        assert table.title == "Runs 2/5" and app.titles[-1] == "Runs 2/5"
        await pilot.press("backspace", "backspace", "backspace", *"RUNNING")
        assert order(table) == ["echo"]  # by state, whatever the case
        await pilot.press("enter")
        assert table.table.has_focus and table.filter_text == "RUNNING" and order(table) == ["echo"]
        await pilot.press("slash")  # the kept filter is there to edit
        assert table.filter_input.value == "RUNNING"
        await pilot.press("escape")
        assert table.filter_text == "" and not table.filter_input.display and table.table.has_focus
        assert order(table) == ["echo", "delta", "charlie", "bravo", "alpha"] and table.title == "Runs 5"
        await pilot.press("slash", *"cccc", "enter")
        assert order(table) == ["charlie"] and table.title == "Runs 1/5"
        await pilot.press("escape")  # from the table: clears too
        assert table.title == "Runs 5"
        await pilot.press("slash", *"nothing matches")
        assert order(table) == [] and table.title == "Runs 0/5" and table.cursor_run_id is None
        assert table.select("20261129-120300-cccc")  # a run shown on purpose: the filter hiding it goes
        assert table.title == "Runs 5" and table.cursor_run_id == "20261129-120300-cccc"
        assert not table.select("20261129-999999-none")


async def test_marks_colours_messages_and_survival():
    app = TableApp(five())
    async with app.run_test(size=(120, 20)) as pilot:
        table = app.query_one(RunTable)
        await pilot.pause()
        await pilot.press("space", "down", "space", "down", "space")
        e, d, c = "20261129-120500-eeee", "20261129-120400-dddd", "20261129-120300-cccc"
        await wait_for(pilot, lambda: len(app.marks) == 3, what="three MarksChanged")
        assert app.marks[-1].run_ids == [e, d, c]
        assert app.marks[-1].colors == {e: PALETTE[0], d: PALETTE[1], c: PALETTE[2]}
        mark = table.table.get_row(d)[0].__rich__()
        assert mark.plain == "●" and str(mark.style) == PALETTE[1]
        await pilot.press("up", "up", "space")  # unmark echo: the others keep their colours
        await wait_for(pilot, lambda: len(app.marks) == 4, what="a fourth MarksChanged")
        assert app.marks[-1].colors == {d: PALETTE[1], c: PALETTE[2]}
        assert table.table.get_row(e)[0].__rich__().plain == " "
        await pilot.press("down", "down", "down", "space")  # bravo takes the first free colour
        await wait_for(pilot, lambda: len(app.marks) == 5, what="a fifth MarksChanged")
        assert app.marks[-1].colors["20261129-120200-bbbb"] == PALETTE[0]
        # marks survive sorting and re-listing; a removed run loses its mark
        await pilot.press("c", "v")
        table.set_summaries(five())
        assert set(table.marks) == {d, c, "20261129-120200-bbbb"}
        table.set_summaries([s for s in five() if s.id != c])
        await wait_for(pilot, lambda: len(app.marks) == 6, what="MarksChanged on removal")
        assert c not in app.marks[-1].run_ids and table.marks == {d: PALETTE[1], "20261129-120200-bbbb": PALETTE[0]}
        # nine marks: the palette is reused, none is left without a colour
        many = [summary(f"20261129-13{i:04d}-x{i:03d}", f"r{i}", "mlp", "running", 1000.0 + i) for i in range(12)]
        table.set_summaries(many)
        for _ in range(9):
            await pilot.press("space", "down")
        assert len(table.marks) == 9 and all(c in PALETTE for c in table.marks.values())


async def test_cursor_stays_on_its_run_when_a_newer_run_arrives():
    app = TableApp(five())
    async with app.run_test(size=(120, 20)) as pilot:
        table = app.query_one(RunTable)
        await pilot.pause()
        await pilot.press("down")
        d = "20261129-120400-dddd"
        await wait_for(pilot, lambda: app.selected[-1:] == [d], what="delta selected")
        posted = len(app.selected)
        newer = summary("20261129-121000-ffff", "foxtrot", "mlp", "queued", 600.0)
        table.set_summaries([newer] + five())
        await pilot.pause()
        assert order(table)[:3] == ["foxtrot", "echo", "delta"]
        assert table.cursor_run_id == d and table.table.cursor_row == 2
        assert app.selected[posted:] == []  # the same run: the screen is not told to watch it again
        table.set_summaries([newer] + [s for s in five() if s.id != d])  # its run removed: the next one
        await pilot.pause()
        assert table.cursor_run_id is not None and app.selected[-1] == table.cursor_run_id != d


async def test_relisting_unchanged_runs_writes_no_cell_and_a_change_writes_only_its_cell():
    runs = [summary(f"20261129-{i:06d}-r{i:03d}", f"run{i}", "mlp", "running", float(i), step=i, total=10_000)
            for i in range(1000)]
    app = TableApp(runs)
    async with app.run_test(size=(120, 30)) as pilot:
        table = app.query_one(RunTable)
        await pilot.pause()
        grid = table.table
        writes: list[tuple] = []
        original_update, original_add, original_sort = grid.update_cell, grid.add_row, grid.sort
        grid.update_cell = lambda *a, **k: (writes.append(("cell", a[:2])), original_update(*a, **k))
        grid.add_row = lambda *a, **k: (writes.append(("row",)), original_add(*a, **k))
        grid.sort = lambda *a, **k: (writes.append(("sort",)), original_sort(*a, **k))
        table.set_summaries([summary(s.id, s.name, s.model, s.state, s.created, step=s.step, total=10_000)
                             for s in runs])
        assert writes == []
        changed = [summary(s.id, s.name, s.model, s.state, s.created, step=s.step, total=10_000) for s in runs]
        changed[10].state = "finished"
        table.set_summaries(changed)
        assert writes == [("cell", (runs[10].id, "state"))]
        assert str(grid.get_row(runs[10].id)[2]) == "finished"


async def test_summaries_given_before_mounting_are_shown():
    table = RunTable()
    table.set_summaries(five())
    table.set_sort("steps", reverse=True)
    app = App()
    async with app.run_test(size=(120, 20)) as pilot:
        await app.mount(table)
        await pilot.pause()
        assert order(table) == ["alpha", "delta", "bravo", "echo", "charlie"] and "Steps ▼" in header(table)
        assert table.title == "Runs 5" and table.cursor_run_id == "20261129-120100-aaaa"


def test_cells_for_plain_rows():
    assert cells_for(summary("20261129-120000-abcd", "x", "mlp", "running", 1.0, step=1234567, total=2_000_000,
                             rate=1234.4)) == ("x", "running", "mlp", "-", "1,234,567/2,000,000", "-", "1,234")
