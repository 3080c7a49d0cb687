"""VirtualLog and RunLogLines: a window on a run's stored history, driven through a Pilot."""

from __future__ import annotations

import math
import threading

import pytest
from textual.app import App, ComposeResult
from torchdeck.fmt import fmt_loss
from torchdeck.runs import events as ev
from torchdeck.runs.view import RunView
from torchdeck.tui.widgets import RunLogLines, VirtualLog
from torchdeck.tui.widgets.virtual_log import ListLines, lines_for
from tui_helpers import wait_for

STEPS = 1_000_000
HALF = STEPS // 2
CHUNK = 50_000


def _started(total: int = STEPS) -> ev.Started:
    cfg = {"model": "mlp", "epochs": 2, "batch_size": 32, "optimizer": "adamw", "lr": 0.001}
    return ev.Started("r1", cfg, total, total // 2, 1234, "cpu", 0.0)


def _loss(step: int) -> float:
    return 1.0 / step


def _history(steps: int = STEPS) -> list[ev.Event]:
    """Started, losses in chunks over two epochs, each epoch's end, a checkpoint, the end."""
    out: list[ev.Event] = [_started(steps)]
    half = steps // 2
    for first in range(1, steps + 1, CHUNK):
        epoch = 1 if first <= half else 2
        out.append(ev.Losses(first, epoch, [_loss(s) for s in range(first, min(first + CHUNK, steps + 1))]))
        last = min(first + CHUNK - 1, steps)
        if last == half:
            out += [ev.EpochEnd(1, half, 0.5, 0.25, 60.0, 0.9), ev.Checkpointed("step-500000", half, 1, "epoch")]
    out += [ev.EpochEnd(2, steps, 0.4, 0.2, 61.0), ev.Ended("finished", steps, _loss(steps))]
    return out


@pytest.fixture(scope="module")
def million() -> list[ev.Event]:
    return _history()


def _source(events: list[ev.Event], lock=None) -> RunLogLines:
    source = RunLogLines(RunView("r1"), lock)
    source.feed(events)
    return source


class LogApp(App):
    def __init__(self, source):
        super().__init__()
        self.source = source

    def compose(self) -> ComposeResult:
        yield VirtualLog(self.source, id="log")

    def on_mount(self) -> None:
        log = self.query_one(VirtualLog)
        log.focus()
        log.poll()


def shown(log: VirtualLog) -> list[str]:
    """The lines the widget draws now, as text."""
    return log.lines_in_view()


def test_source_lines_in_step_order_with_events(million):
    source = _source(million)
    events = 3 + 2 + 1 + 2 + 1  # started, epoch 1 end, checkpoint, epoch 2 end, ended
    assert source.line_count() == STEPS + events
    assert [str(source.line(i)) for i in range(5)] == [
        "started: mlp, 1,234 params, cpu", "  2 epochs x 500,000 steps", "  batch 32, adamw, lr 0.001",
        "e1   step         1  loss 1", "e1   step         2  loss 0.5"]
    # epoch 1 ends after its last step, then the checkpoint, then epoch 2's first step
    at = 3 + HALF - 1
    assert source.line(at) == f"e1   step   500,000  loss {fmt_loss(1 / HALF)}"
    assert str(source.line(at + 1)) == "epoch 1 ends at step 500,000 (1m 00s)"
    assert str(source.line(at + 2)) == "  train loss 0.5, val 0.25, accuracy 90.0%"
    assert str(source.line(at + 3)) == "checkpoint step-500000 saved (epoch)"
    assert str(source.line(at + 4)).startswith("e2   step   500,001  loss ")
    assert str(source.line(source.line_count() - 1)) == "run finished at step 1,000,000"
    with pytest.raises(IndexError):
        source.line(source.line_count())


def test_non_finite_points_say_so_with_their_kind():
    source = _source([_started(10), ev.Losses(1, 1, [0.5, None, None, 2.0], nonfinite=[[1, "inf"], [2, "nan"]])])
    assert str(source.line(4)) == "e1   step         2  loss inf  <- not finite"
    assert str(source.line(5)) == "e1   step         3  loss nan  <- not finite"
    assert str(source.line(6)) == "e1   step         4  loss 2"
    assert "red" in str(source.line(4).style)


def test_a_runs_start_says_where_it_came_from_never_the_forms_defaults():
    """A script's run (torchdeck.init), a command and imported logs have no model, batch size or
    optimizer of torchdeck's: their start lines say what torchdeck knows (the script and its own
    config, the command, the logs' origin); hostile configs read as lines too."""
    from torchdeck.tui.widgets.virtual_log import started_lines

    defaults = {"model": "x.py", "batch_size": 16, "optimizer": "sgd", "lr": 0.01, "epochs": 0}
    api = ev.Started("r", {**defaults, "source": "api", "script": "train.py",
                           "params": {"lr": 3e-4, "opt": {"name": "adamw", "betas": [0.9, 0.99]}, "note": "n" * 500}},
                     0, 0, 0, "", 0.0, pipeline="script")
    assert started_lines(api) == ["started: train.py (torchdeck.init)",
                                  "  lr 0.0003, opt.name adamw, opt.betas [0.9, 0.99], note " + "n" * 54 + "…"]
    many = ev.Started("r", {"source": "api", "script": "t.py", "params": {f"k{i}": i for i in range(100)}}, 0, 0, 0, "", 0.0)
    assert started_lines(many)[1].endswith("… 75 more (runs show)") and len(started_lines(many)[1]) <= 202
    assert started_lines(ev.Started("r", {"source": "api", "script": "t.py", "params": {}}, 0, 0, 0, "", 0.0)) == [
        "started: t.py (torchdeck.init)"]
    cmd = ev.Started("r", {**defaults, "source": "command", "command": ["python", "train.py", "--lr", "0.1"],
                           "cwd": "/home/me"}, 0, 0, 0, "", 0.0, pipeline="command")
    assert started_lines(cmd) == ["started: python train.py --lr 0.1", "  in /home/me"]
    tb = ev.Started("r", {"source": "tensorboard", "origin": "/logs/a", "epochs": 0}, 0, 0, 0, "", 0.0)
    assert started_lines(tb) == ["imported from tensorboard: /logs/a"]
    for hostile in ({"source": "api", "params": ["not", "a", "dict"]}, {"source": "command", "command": "rm -rf"},
                    {"source": 3}, {"source": "api", "params": {"a": {}}}):
        lines = started_lines(ev.Started("r", hostile, 0, 0, 0, "", 0.0))
        assert lines and all(isinstance(x, str) and "batch" not in x for x in lines), (hostile, lines)


def test_hostile_events_read_as_lines_without_breaking():
    source = _source([
        ev.Started("r1", "not a dict", 10, 10, 0, "cpu", 0.0),
        ev.Losses(1, 1, [None, None, 1.0], nonfinite=[[0], ["x", "inf"], 5, [True, "inf"], [1, "inf" * 1000]]),
        ev.StateChanged("paused", True),  # a step that is not a step: placed where it arrived
        ev.Ended("crashed", 3, None, message="boom\x1b[2J" + "x" * 100_000),
    ])
    text = [str(source.line(i)) for i in range(source.line_count())]
    assert text[:3] == ["started: None, 0 params, cpu", "  None epochs x 10 steps", "  batch None, None, lr -"]
    assert text[3:6] == ["e1   step         1  loss nan  <- not finite", "e1   step         2  loss infinfin  <- not finite",
                         "e1   step         3  loss 1"]
    assert text[6] == "paused at step 1"
    assert text[-1].startswith("run crashed at step 3: boom")


def test_late_checkpoint_record_goes_to_its_step_and_bumps_revision():
    source = _source([ev.Losses(1, 1, [1.0] * 100)])
    revision = source.revision
    source.feed([ev.Checkpointed("step-50", 50, 1, "epoch")])  # written once the save completed
    assert str(source.line(50)) == "checkpoint step-50 saved (epoch)"
    assert str(source.line(51)).startswith("e1   step        51")
    assert source.revision != revision


def test_resumed_history_is_replaced():
    source = _source(_history(1000))
    before = source.revision
    source.feed([ev.Resumed(400, "step-400"), ev.Losses(401, 1, [7.0] * 10)])
    assert source.revision != before
    text = [str(source.line(i)) for i in range(source.line_count())]
    assert len(text) == 3 + 400 + 1 + 10
    assert text[3 + 399].startswith("e1   step       400")
    assert text[3 + 400] == "resumed at step 400 from step-400: what follows replaces the history after it"
    assert text[-1] == "e1   step       410  loss 7"
    assert not any("epoch 1 ends" in t or "finished" in t for t in text)


def test_lines_for_keeps_the_old_readers_wording():
    losses = ev.Losses(5, 2, [0.25, None], nonfinite=[[1, "-inf"]])
    assert lines_for(losses) == ["e2   step         5  loss 0.25",
                                                    "e2   step         6  loss -inf  <- not finite"]
    assert lines_for(losses, limit=1) == ["e2   step         6  loss -inf  <- not finite"]
    assert lines_for(ev.StateChanged("paused", 1200)) == ["paused at step 1,200"]
    assert lines_for(ev.Scalars("lr", [0.1], first_step=1)) == []


async def test_million_lines_end_home_pageup(million):
    source = _source(million)
    app = LogApp(source)
    async with app.run_test(size=(60, 12)) as pilot:
        log = app.query_one(VirtualLog)
        await pilot.pause()
        h = log.size.height
        assert shown(log)[-1] == "run finished at step 1,000,000"  # following: the end in view
        await pilot.press("home")
        assert shown(log)[:4] == ["started: mlp, 1,234 params, cpu", "  2 epochs x 500,000 steps",
                                  "  batch 32, adamw, lr 0.001", "e1   step         1  loss 1"]
        assert not log.following
        await pilot.press("end")
        assert log.following
        await pilot.press("pageup")
        lines = shown(log)
        assert not log.following
        first = source.line_count() - 2 * h
        assert lines == [str(source.line(i)) for i in range(first, first + h)]
        assert lines[-1].startswith("e2   step   999,")
        await pilot.press("down")
        assert shown(log)[0] == str(source.line(first + 1))


async def test_following_keeps_the_newest_line_in_view_until_the_user_scrolls_up():
    view, lock = RunView("r1"), threading.Lock()
    source = RunLogLines(view, lock)
    source.feed([_started(100_000), ev.Losses(1, 1, [1.0] * 1000)])
    app = LogApp(source)
    async with app.run_test(size=(60, 12)) as pilot:
        log = app.query_one(VirtualLog)
        await pilot.pause()
        step = 1000

        def arrive(n: int) -> None:
            nonlocal step
            source.feed([ev.Losses(step + 1, 1, [2.0] * n)])
            step += n
            log.poll()

        arrive(250)
        await pilot.pause()
        assert shown(log)[-1] == "e1   step     1,250  loss 2"
        await pilot.press("up")
        assert not log.following
        held = shown(log)
        arrive(500)
        await pilot.pause()
        assert shown(log) == held  # reading: the view stays where the user put it
        await pilot.press("end")
        assert log.following and shown(log)[-1] == "e1   step     1,750  loss 2"
        # lines fed from a thread under the lock while the UI polls
        feeder = threading.Thread(target=lambda: [source.feed([ev.Losses(1751 + 100 * k, 1, [3.0] * 100)])
                                                  for k in range(20)])
        feeder.start()
        while feeder.is_alive():
            log.poll()
            await pilot.pause(0.01)
        feeder.join()
        log.poll()
        await wait_for(pilot, lambda: shown(log)[-1] == "e1   step     3,750  loss 3", what="the newest line")


async def test_a_resumed_history_redraws():
    source = _source(_history(1000))
    app = LogApp(source)
    async with app.run_test(size=(90, 10)) as pilot:
        log = app.query_one(VirtualLog)
        await pilot.pause()
        assert shown(log)[-1] == "run finished at step 1,000"
        source.feed([ev.Resumed(990, "step-990"), ev.Losses(991, 2, [0.125] * 3)])
        log.poll()
        await pilot.pause()
        lines = shown(log)
        assert lines[-1] == "e2   step       993  loss 0.125"
        assert lines[-4].startswith("resumed at step 990 from step-990")
        assert not any("finished" in line for line in lines)


async def test_long_and_hostile_lines_are_cropped_never_wrapped():
    hostile = ["x" * 5000, "ünïcødé 全角文字 " * 50, "bell\x07 esc\x1b[2J here", "", Text_red("styled " * 40)]
    source = ListLines(hostile)
    app = LogApp(source)
    async with app.run_test(size=(40, 8)) as pilot:
        log = app.query_one(VirtualLog)
        await pilot.press("home")
        lines = shown(log)
        width = log.scrollable_content_region.width
        assert lines[0] == "x" * (width - 1) + "…"
        assert lines[1].endswith("…") and len(lines[1]) < width
        assert "\x1b" not in lines[2] and "\x07" not in lines[2] and lines[2].startswith("bell")
        assert lines[3] == "" and lines[4].endswith("…")
        assert all(sum(seg.cell_length for seg in log.render_line(y)) == width for y in range(log.size.height))


async def test_empty_source_and_a_shrinking_one_do_not_break():
    source = ListLines([])
    app = LogApp(source)
    async with app.run_test(size=(40, 8)) as pilot:
        log = app.query_one(VirtualLog)
        for key in ("up", "pageup", "home", "end", "down", "pagedown"):
            await pilot.press(key)
        assert shown(log) == [""] * log.size.height
        source.replace([f"line {i}" for i in range(100)])
        log.poll()
        await pilot.pause()
        assert shown(log)[-1] == "line 99"
        source.replace(["only"])  # fewer lines than before: the log shows what there is
        log.poll()
        await pilot.pause()
        assert shown(log)[0] == "only" and log.line_count == 1
        log.set_source(ListLines([str(math.nan)]))
        await pilot.pause()
        assert shown(log)[0] == "nan"


async def test_any_scroll_away_from_the_end_stops_following_and_a_resize_recrops():
    source = ListLines([f"{i:>6} " + "word " * 30 for i in range(500)])
    app = LogApp(source)
    async with app.run_test(size=(60, 10)) as pilot:
        log = app.query_one(VirtualLog)
        await pilot.pause()
        assert log.following and shown(log)[-1].startswith("   499")
        log.scroll_relative(y=-3, animate=False)  # as the wheel or the scrollbar moves it
        await wait_for(pilot, lambda: not log.following, what="following to stop")
        log.scroll_to(y=log.max_scroll_y, animate=False)  # dragged back to the end: follows again
        await wait_for(pilot, lambda: log.following, what="following to resume")
        await pilot.resize_terminal(30, 8)
        await wait_for(pilot, lambda: log.size.width <= 30, what="the resize")
        await pilot.pause()
        lines = shown(log)
        assert lines[-1].startswith("   499") and all(len(line) <= 30 for line in lines)
        assert lines[-1].endswith("…")


def Text_red(s: str):
    from rich.text import Text

    return Text(s, style="red")
