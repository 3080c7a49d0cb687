"""The Training screen as a monitor, on hand-made runs: it opens on the run that is running, the
chart keys (metric, grid, log scale, time axis, smoothing, zoom, cursor), marked runs overlaid in
their colours, and the header's exact figures."""

from __future__ import annotations

import json
import os

import pytest
from helpers import dead_pid
from torchdeck.runs.config import RunConfig
from torchdeck.runs.store import Run, RunStore, Status
from torchdeck.runs.writer import take_lock
from torchdeck.tui.app import TorchdeckApp
from torchdeck.tui.widgets import MetricChart
from torchdeck.tui.widgets.run_table import PALETTE
from torchdeck.workspace import Workspace
from tui_helpers import screen_text, wait_for


def line(record: dict) -> str:
    return json.dumps(record, separators=(",", ":")) + "\n"


def history(steps: int, *, scale: float = 1.0, start_time: float = 1000.0) -> str:
    """A finished run of `steps` steps: losses in chunks of 250 with times, lr and val_loss scalars."""
    out = [line({"type": "started", "run_id": "r", "config": {"model": "demo", "epochs": 2}, "total_steps": steps,
                 "steps_per_epoch": steps // 2, "num_params": 10, "device": "cpu", "time": start_time,
                 "version": 2})]
    for first in range(1, steps + 1, 250):
        n = min(250, steps - first + 1)
        out.append(line({"type": "losses", "first_step": first, "epoch": 1 + (first - 1) // (steps // 2),
                         "values": [scale / (1 + (first + i) / 100) for i in range(n)],
                         "elapsed": round((first + n - 1) / 500, 3)}))
    out.append(line({"type": "scalars", "name": "lr", "first_step": 1, "values": [0.01]}))
    out.append(line({"type": "scalars", "name": "val_loss", "steps": [steps // 2, steps],
                     "values": [scale / 50, scale / 90]}))
    out.append(line({"type": "ended", "state": "finished", "step": steps, "last_loss": 0.1, "message": ""}))
    return "".join(out)


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    return Workspace.open(tmp_path / "ws")


def make_run(ws: Workspace, events: str, *, state: str = "finished", name: str = "", created: float | None = None,
             total: int = 0) -> Run:
    run = RunStore(ws).create(RunConfig(model="demo", epochs=2, name=name))
    run.events_path.write_text(events)
    st = Status(state=state, pid=dead_pid() if state != "running" else os.getpid(), host=os.uname().nodename,
                heartbeat=1, total_steps=total)
    (run.path / "status.json").write_text(json.dumps(vars(st)))
    summ = run.summary()
    summ.state = state
    if created is not None:
        summ.created = created
    (run.path / "summary.json").write_text(json.dumps(vars(summ)))
    return run


def app_for(ws: Workspace) -> TorchdeckApp:
    return TorchdeckApp(ws, default_config=RunConfig(epochs=1, dataset_size=4096))


def chart(app, i: int = 0) -> MetricChart:
    return app.screen.query_one(f"#chart-{i}", MetricChart)


async def test_it_opens_on_the_running_run_not_the_newest(workspace):
    running = make_run(workspace, history(500)[: -len(line({"type": "ended", "state": "finished", "step": 500,
                                                             "last_loss": 0.1, "message": ""}))],
                       state="running", name="the-running-one", created=1000.0, total=500)
    make_run(workspace, history(500), name="newer-finished", created=2000.0)
    lock = take_lock(running)  # a live worker holds its run's lock
    try:
        app = app_for(workspace)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("3")
            screen = app.screen
            await wait_for(pilot, lambda: screen.current_run == running.id and screen.history_done, 20,
                           "the running run to be watched")
            assert "the-running-one" in screen_text(app) and "step 500/500" in screen_text(app)
    finally:
        lock.close()


async def test_chart_keys_metric_grid_scale_axis_smoothing_zoom_cursor(workspace):
    make_run(workspace, history(20_000), name="long")
    app = app_for(workspace)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.press("3")
        screen = app.screen
        await wait_for(pilot, lambda: screen.history_done and len(chart(app).curves[0].series) == 20_000
                       and chart(app).smoothing > 0, 20, "the whole history on the chart, smoothed once caught up")
        c = chart(app)
        assert c.title == "loss" and c.log_y and c.x_axis == "step" and c.smoothing == pytest.approx(0.9)
        # the validation points ride on the loss chart
        assert [cv.label for cv in c.curves] == ["long", "val_loss"] and c.curves[1].markers
        assert "step 20,000/20,000" in screen_text(app)  # exact, with thousands separators

        await pilot.press("right_square_bracket")
        assert chart(app).title == "val_loss"
        await pilot.press("right_square_bracket")
        assert chart(app).title == "lr"
        # recorded once (it never changed): drawn held to the run's last step, not one dot at the left
        lr = chart(app).curves[0].series
        assert [lr.point(i) for i in range(len(lr))] == [(1, pytest.approx(0.01)), (20_000, pytest.approx(0.01))]
        assert len(screen.view.metrics["lr"]) == 1  # the run's own series is untouched
        await pilot.press("left_square_bracket", "left_square_bracket")
        assert chart(app).title == "loss"

        await pilot.press("g")  # a grid: one chart per metric, as many as fit
        shown = [ch.title for ch in app.screen.query(MetricChart) if ch.display]
        assert shown == ["loss", "val_loss", "lr"]
        await pilot.press("g")
        assert [ch.title for ch in app.screen.query(MetricChart) if ch.display] == ["loss"]

        await pilot.press("L")
        assert not chart(app).log_y
        await pilot.press("L")
        assert chart(app).log_y
        await pilot.press("t")
        assert chart(app).x_axis == "time"
        await pilot.press("t")
        await pilot.press("plus")
        assert chart(app).smoothing == pytest.approx(0.95)
        await pilot.press("minus", "minus", "minus", "minus", "minus")
        assert chart(app).smoothing == 0.0
        await pilot.press("z")
        assert chart(app).last_n == pytest.approx(19_999 / 2)
        await pilot.press("z")
        assert chart(app).last_n == pytest.approx(19_999 / 4)
        await pilot.press("Z")
        assert chart(app).last_n is None

        await pilot.press("full_stop")  # the cursor appears and reads out a point
        assert chart(app).cursor is not None
        await pilot.pause()
        lines = ["".join(seg.text for seg in strip) for strip in chart(app).strips(chart(app).size.width,
                                                                                  chart(app).size.height)]
        assert any("step" in ln and "value" in ln for ln in lines), lines
        await pilot.press("escape")
        assert chart(app).cursor is None


async def test_marked_runs_are_overlaid_in_their_colours(workspace):
    make_run(workspace, history(1000), name="first", created=1000.0)
    make_run(workspace, history(1000, scale=3.0), name="second", created=2000.0)
    app = app_for(workspace)
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.press("3")
        screen = app.screen
        await wait_for(pilot, lambda: screen.history_done and screen.view.name == "second", 20, "the newest run")
        await pilot.press("space")  # mark "second" (the cursor's run)
        await wait_for(pilot, lambda: len(screen.overlays) == 1, 5, "the first mark")
        second_view = next(iter(screen.overlays.values()))
        await pilot.press("down", "space")  # and "first": now watched, "second" overlaid
        await wait_for(pilot, lambda: screen.view.name == "first" and screen.history_done, 20, "the first run")
        await wait_for(pilot, lambda: [cv.label for cv in chart(app).curves] == ["first", "second", "val_loss"]
                       and len(chart(app).curves[1].series) == 1000 and chart(app).curves[0].color == PALETTE[1], 20,
                       "the overlay")
        curves = chart(app).curves
        assert curves[0].color == PALETTE[1] and curves[1].color == PALETTE[0]  # each run its mark's colour
        assert second_view in screen.overlays.values()  # marking another run did not read this one again
        await pilot.press("space")  # unmark "first": its own curve stays, in the default colour
        await wait_for(pilot, lambda: [cv.label for cv in chart(app).curves] == ["first", "second", "val_loss"], 5)
        await pilot.press("up", "space")  # unmark "second": no overlay left
        await wait_for(pilot, lambda: [cv.label for cv in chart(app).curves] == ["second", "val_loss"], 5)


async def test_the_grid_follows_the_terminals_size_and_the_form_folds(workspace):
    make_run(workspace, history(2000), name="run")
    app = app_for(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        screen = app.screen
        await wait_for(pilot, lambda: screen.history_done and len(chart(app).curves[0].series) == 2000, 20)
        await pilot.press("g")  # 80x24: no room for a second chart, and it says so
        assert [ch.title for ch in screen.query(MetricChart) if ch.display] == ["loss"]
        assert any("no room for a second chart" in str(n.message) for n in app._notifications)
        await pilot.resize_terminal(200, 60)
        await wait_for(pilot, lambda: [ch.title for ch in screen.query(MetricChart) if ch.display]
                       == ["loss", "val_loss", "lr"], 5, "the grid to use the room")
        await pilot.press("f")  # the form folds away: the run table takes the column
        await pilot.pause()
        assert not screen.query_one("#train-form").display and screen.focused is screen.query_one("#runs-table").table
        await pilot.press("f")
        assert screen.query_one("#train-form").display and screen.focused.id == "f-epochs"
        await pilot.press("escape")  # out of the field: the screen's keys work again
        await pilot.resize_terminal(50, 14)
        await pilot.pause()
        assert screen.query_one("#too-small").display
