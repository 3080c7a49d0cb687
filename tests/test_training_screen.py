"""The Training screen on hand-made runs (no worker needed): keys that cannot act, Continue
while paused, removing a run, errors focused by their field, resumes and torn lines."""

from __future__ import annotations

import json
import os

import pytest
from helpers import dead_pid
from textual.widgets import Input, Static
from torchdeck.errors import InvalidRequest
from torchdeck.runs import view as run_view
from torchdeck.runs.config import RunConfig
from torchdeck.runs.store import Run, RunStore, Status
from torchdeck.runs.writer import take_lock
from torchdeck.tui.app import TorchdeckApp
from torchdeck.tui.screens.dialogs import Confirm
from torchdeck.workspace import Workspace
from tui_helpers import log_lines, screen_text, wait_for


def line(record: dict) -> str:
    return json.dumps(record, separators=(",", ":")) + "\n"


STARTED = line({"type": "started", "run_id": "r", "config": {"model": "demo", "epochs": 2}, "total_steps": 8,
                "steps_per_epoch": 4, "num_params": 10, "device": "cpu", "time": 0.0, "version": 2})
LOSSES = line({"type": "losses", "first_step": 1, "epoch": 1, "values": [4.0, 3.0, 2.0, 1.0], "elapsed": 1.0})
ENDED = line({"type": "ended", "state": "finished", "step": 8, "last_loss": 0.5, "message": ""})


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    return Workspace.open(tmp_path / "ws")


def make_run(ws: Workspace, events: str, *, state: str, name: str = "", heartbeat: int = 1) -> Run:
    run = RunStore(ws).create(RunConfig(model="demo", epochs=2, name=name))
    run.events_path.write_text(events)
    st = Status(state=state, pid=dead_pid(), host=os.uname().nodename, heartbeat=heartbeat, total_steps=8)
    (run.path / "status.json").write_text(json.dumps(vars(st)))
    summ = run.summary()
    summ.state = state
    (run.path / "summary.json").write_text(json.dumps(vars(summ)))
    return run


def app_for(ws: Workspace) -> TorchdeckApp:
    return TorchdeckApp(ws, default_config=RunConfig(epochs=1, dataset_size=4096))


async def test_pause_and_stop_are_greyed_for_a_finished_run(workspace):
    finished = LOSSES + line({"type": "losses", "first_step": 5, "epoch": 2, "values": [0.9, 0.8, 0.7, 0.5]})
    run = make_run(workspace, STARTED + finished + ENDED, state="finished", name="done-run")
    app = app_for(workspace)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("3")
        screen = app.screen
        await wait_for(pilot, lambda: screen.state == "finished" and screen.history_done, 20, "the run's history")
        bindings = screen.active_bindings
        assert bindings["p"].binding.description == "Pause" and not bindings["p"].enabled
        assert not bindings["x"].enabled and bindings["d"].enabled
        await pilot.press("p", "x")
        await pilot.pause(0.2)
        assert not (run.path / "control.json").exists()  # nothing asked of a finished run
        # A key that cannot act says why when it is reached some other way (the palette).
        screen.action_pause()
        screen.action_stop()
        await pilot.pause(0.1)
        texts = [str(n.message) for n in app._notifications]
        assert "cannot pause: done-run has already finished" in texts
        assert "cannot stop: done-run has already finished" in texts
        assert "done-run" in screen_text(app) and "8/8" in screen_text(app)


async def test_the_footer_says_continue_while_paused_and_p_continues(workspace):
    run = make_run(workspace, STARTED + LOSSES + line({"type": "state", "state": "paused", "step": 4}), state="paused")
    lock = take_lock(run)  # a live worker holds its run's lock
    try:
        app = app_for(workspace)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("3")
            screen = app.screen
            await wait_for(pilot, lambda: screen.state == "paused", 20, "the paused run")
            await pilot.pause(0.1)
            bindings = screen.active_bindings
            assert bindings["p"].binding.description == "Continue" and bindings["p"].enabled
            await pilot.press("p")
            control = json.loads((run.path / "control.json").read_text())
            assert control["request"] == "continue"
            # An active run is not removed: d says why and asks nothing.
            await pilot.press("d")
            await pilot.pause(0.1)
            assert not isinstance(app.screen, Confirm) and run.path.exists()
            assert any("stop it first" in str(n.message) for n in app._notifications)
    finally:
        lock.close()


async def test_a_stale_heartbeat_shows_in_the_header(workspace, monkeypatch):
    monkeypatch.setattr(run_view, "STALE_AFTER", 0.5)
    run = make_run(workspace, STARTED + LOSSES, state="running")
    lock = take_lock(run)
    try:
        app = app_for(workspace)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("3")
            await wait_for(pilot, lambda: "no heartbeat for" in screen_text(app), 20, "the stale heartbeat")
            assert app.screen.state == "running"
    finally:
        lock.close()


async def test_d_removes_a_finished_run_after_confirming(workspace):
    runs = {r.id: r for r in (make_run(workspace, STARTED + LOSSES + ENDED, state="finished", name=name)
                              for name in ("alpha-run", "beta-run"))}
    app = app_for(workspace)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("3")
        screen = app.screen
        await wait_for(pilot, lambda: screen.current_run and screen.state == "finished", 20, "a run to be shown")
        gone = runs.pop(screen.current_run)
        (keep,) = runs.values()
        gone_name = gone.summary().name
        await pilot.press("d")
        assert isinstance(app.screen, Confirm) and gone_name in screen_text(app)
        await pilot.press("n")  # no: nothing happens
        assert gone.path.exists() and not isinstance(app.screen, Confirm)
        await pilot.press("d", "y")
        await wait_for(pilot, lambda: not gone.path.exists(), 20, "the run to be removed")
        await wait_for(pilot, lambda: screen.current_run == keep.id, 20, "the next run to be shown")
        assert keep.path.exists() and gone_name not in screen_text(app)


async def test_a_start_error_focuses_its_field_and_is_shown_whole(workspace, monkeypatch):
    import torchdeck.runs.launch as launch

    text = ("batch size 16 does not fit the model's data: the model says its data loader wants a batch "
            "that divides 1000 samples evenly, which 16 does not; try 8, 20, 25 or 40 (model, data and "
            "epochs are fine, nothing was started) END")

    def refuse(ws, cfg, **_):
        raise InvalidRequest(text, field="batch_size")

    monkeypatch.setattr(launch, "start", refuse)
    monkeypatch.setattr("torchdeck.tui.screens.training.import_torch", lambda: None)
    app = app_for(workspace)
    async with app.run_test(size=(80, 30)) as pilot:
        await pilot.press("3", "s")
        screen = app.screen
        await wait_for(pilot, lambda: "END" in str(screen.query_one("#f-batch-error", Static).render()), 20,
                       "the error")
        # The field comes from the error, not its words (they name the model and the data first).
        assert app.focused is screen.query_one("#f-batch", Input)
        error = screen.query_one("#f-batch-error", Static)
        rendered = str(error.render())
        assert " ".join(rendered.split()) == text  # whole, however it wraps
        assert error.size.height >= len(text) // error.size.width  # room for every wrapped line
        assert list(workspace.runs_dir.iterdir()) == []


async def test_a_resumed_history_and_a_torn_last_line_on_screen(workspace):
    events = (STARTED + LOSSES
              + line({"type": "losses", "first_step": 5, "epoch": 2, "values": [99.0, 98.0], "elapsed": 2.0})
              + line({"type": "resumed", "step": 4}) + STARTED
              + line({"type": "losses", "first_step": 5, "epoch": 2, "values": [0.9, 0.8, 0.7], "elapsed": 0.5})
              + '{"type":"losses","first_step":8,"epo')  # the worker died mid-line
    run = make_run(workspace, events, state="running")
    app = app_for(workspace)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("3")
        screen = app.screen
        await wait_for(pilot, lambda: screen.state == "crashed" and screen.history_done, 20, "the crashed run")
        await wait_for(pilot, lambda: not [w for w in app.screen.workers if w.group == "tail" and w.is_running], 10,
                       "the tail thread to end on a final run")
        assert screen.step == 7 and screen.view.metrics_json()["loss"]["count"] == 7
        await wait_for(pilot, lambda: len(screen.query_one("#chart-0").curves[0].series) == 7, 5,
                       "the chart to follow the view: 99 and 98 are gone")
        assert any(ln.startswith("resumed at step 4") for ln in log_lines(screen))
        assert "crashed" in screen_text(app) and run.id
