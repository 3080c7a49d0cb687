"""The TUI side of issue 12: `i` on the Training screen opens a folder of other tools' logs (a path
field with completion), the scan runs in the background, the runs found are listed read-only, and
the watched one follows its source live (a training writing its event file right now)."""

from __future__ import annotations

import importlib
import os

import pytest
from torchdeck.runs.config import RunConfig
from torchdeck.tui.app import TorchdeckApp
from torchdeck.tui.screens.open_logs import OpenLogsDialog
from torchdeck.workspace import Workspace
from tui_helpers import record_notifications, screen_text, wait_for, wait_for_screen

REQUIRED = os.environ.get("TORCHDECK_REAL_REQUIRED") == "1"


def _need(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        if REQUIRED:
            pytest.fail(f"{module} is missing: pip install -c .ci/constraints.txt -e '.[test,real]'")
        pytest.skip(f"{module} is missing: pip install -c .ci/constraints.txt -e '.[test,real]'")


def app_for(ws: Workspace) -> TorchdeckApp:
    return TorchdeckApp(ws, default_config=RunConfig(epochs=1, dataset_size=4096))


async def test_open_logs_key_path_field_and_live_follow(tmp_path):
    _need("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    ws = Workspace.open(tmp_path / "ws")
    w = SummaryWriter(str(tmp_path / "logs" / "exp"), flush_secs=3600)
    for i in range(20):
        w.add_scalar("train/loss", 1.0 / (i + 1), i)
    w.flush()
    app = app_for(ws)
    async with app.run_test(size=(120, 36)) as pilot:
        shown = record_notifications(app)
        await pilot.press("3")
        screen = app.screen
        await pilot.press("i")
        await wait_for(pilot, lambda: isinstance(app.screen, OpenLogsDialog), 10, "the Open logs dialog")
        dialog = app.screen
        await pilot.press(*str(tmp_path / "nope"), "enter")
        await wait_for(pilot, lambda: "no such file or directory" in screen_text(app), 10, "the path's error")
        assert isinstance(app.screen, OpenLogsDialog)  # the field keeps what was typed
        field = dialog.query_one("#logs-path")
        field.value = ""
        await pilot.press(*str(tmp_path / "lo"))
        await wait_for(pilot, lambda: str(tmp_path / "logs") + "/" in screen_text(app), 10, "the completion")
        await pilot.press("tab", "enter")
        await wait_for(pilot, lambda: app.screen is screen, 10, "the dialog to close")
        await wait_for(pilot, lambda: screen.current_run is not None and screen.current_run.startswith("tb-")
                       and screen.view.metrics["loss"].count == 20, 30, "the imported run's history")
        assert "logs/exp" in screen_text(app)
        assert ws.source_dirs() == [tmp_path / "logs"]
        assert any("1 read-only run(s)" in m for _, _, m in shown)
        await wait_for(pilot, lambda: screen.view.state == "running", 10, "the source followed")
        assert screen.read_only
        bindings = screen.active_bindings
        assert not bindings["x"].enabled and not bindings["r"].enabled  # nothing to stop or resume
        for i in range(20, 25):  # the training goes on writing
            w.add_scalar("train/loss", 1.0 / (i + 1), i)
        w.flush()
        await wait_for(pilot, lambda: screen.view.metrics["loss"].count == 25, 3, "the new points")
        screen.action_stop()
        await pilot.pause(0.1)
        assert any("read-only" in m for _, _, m in shown)
        run = app.store.get(screen.current_run)
    w.close()
    assert run.observed_state() == "finished"  # not following any more: the app ended


async def test_removing_the_watched_imported_run_lets_go_of_it_first(tmp_path):
    _need("tensorboard")
    from torch.utils.tensorboard import SummaryWriter
    from torchdeck.runs.store import RunStore
    from torchdeck.sources import mirror

    ws = Workspace.open(tmp_path / "ws")
    w = SummaryWriter(str(tmp_path / "logs" / "exp"))
    w.add_scalar("loss", 1.0, 1)
    w.close()
    _, [(run, _)] = mirror.open_path(RunStore(ws), tmp_path / "logs", sync_all=False)
    app = app_for(ws)
    async with app.run_test(size=(120, 36)) as pilot:
        shown = record_notifications(app)
        await pilot.press("3")
        screen = app.screen
        await wait_for(pilot, lambda: screen.current_run == run.id and screen.view.state == "running", 20,
                       "the imported run followed")
        await pilot.press("d")
        await wait_for(pilot, lambda: app.screen is not screen, 10, "the confirmation")
        await pilot.press("y")
        await wait_for(pilot, lambda: not run.path.exists(), 10, "the mirror removed")
        assert not any(sev == "error" for sev, _, _ in shown), shown
    assert (tmp_path / "logs" / "exp").is_dir() and any((tmp_path / "logs" / "exp").iterdir())  # the source stays


async def test_open_logs_folder_without_logs_is_told(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    app = app_for(ws)
    async with app.run_test(size=(120, 36)) as pilot:
        shown = record_notifications(app)
        await pilot.press("3", "i")
        await wait_for(pilot, lambda: isinstance(app.screen, OpenLogsDialog), 10, "the Open logs dialog")
        await pilot.press(*str(tmp_path / "empty"), "enter")
        await wait_for(pilot, lambda: any("no logs under" in m for _, _, m in shown), 10, "the warning")
        assert ws.source_dirs() == []


async def test_remembered_folders_are_scanned_at_start_and_listed_in_the_dialog(tmp_path):
    _need("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    ws = Workspace.open(tmp_path / "ws")
    ws.add_source_dir(tmp_path / "logs")
    ws.add_source_dir(tmp_path / "gone")  # remembered, then deleted: told, the rest goes on
    w = SummaryWriter(str(tmp_path / "logs" / "later"))
    w.add_scalar("loss", 0.5, 1)
    w.close()
    app = app_for(ws)
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.press("3")
        screen = app.screen
        await wait_for(pilot, lambda: "logs/later" in screen_text(app), 20, "the run found at start")
        # (Textual's own list: the scan may have told it before a recorder could be installed)
        await wait_for(pilot, lambda: any("gone" in str(n.message) and "no such file" in str(n.message)
                                          for n in app._notifications), 10, "the missing folder told")
        await pilot.press("i")
        await wait_for_screen(pilot, app, OpenLogsDialog, "Scanned at each start:", str(tmp_path / "logs"), timeout=10,
                              what="the Open logs dialog")
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen, 10, "the dialog closed")


async def test_an_imported_run_overlays_a_torchdeck_run(tmp_path):
    """Compared with torchdeck's own: marking an imported run (history not read yet) overlays its
    curve on the watched run's chart."""
    import json

    _need("tensorboard")
    from torch.utils.tensorboard import SummaryWriter
    from torchdeck.runs.store import RunStore, Status
    from torchdeck.sources import mirror

    ws = Workspace.open(tmp_path / "ws")
    store = RunStore(ws)
    own = store.create(RunConfig(model="demo", epochs=1, name="mine"))
    own.events_path.write_text(
        json.dumps({"type": "started", "run_id": own.id, "config": {"epochs": 1}, "total_steps": 4,
                    "steps_per_epoch": 4, "num_params": 1, "device": "cpu", "time": 0.0}) + "\n"
        + json.dumps({"type": "losses", "first_step": 1, "epoch": 1, "values": [4.0, 3.0, 2.0, 1.0]}) + "\n"
        + json.dumps({"type": "ended", "state": "finished", "step": 4, "last_loss": 1.0}) + "\n")
    (own.path / "status.json").write_text(json.dumps(vars(Status(state="finished", total_steps=4))))
    w = SummaryWriter(str(tmp_path / "logs" / "theirs"))
    for i in range(1, 9):
        w.add_scalar("loss", 5.0 - i * 0.5, i)
    w.close()
    _, [(theirs, _)] = mirror.open_path(store, tmp_path / "logs", sync_all=False)
    assert not theirs.events_path.exists()
    app = app_for(ws)
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.press("3")
        screen = app.screen
        table = screen.query_one("#runs-table")
        await wait_for(pilot, lambda: theirs.id in screen._known_ids and own.id in screen._known_ids, 20, "both runs")
        table.select(theirs.id)
        await pilot.press("space")
        table.select(own.id)
        await wait_for(pilot, lambda: screen.current_run == own.id and screen.view.metrics["loss"].count == 4,
                       20, "the own run watched")
        await wait_for(pilot, lambda: theirs.id in screen.overlays
                       and screen.overlays[theirs.id].metrics["loss"].count == 8, 20, "the imported overlay")
        assert screen.overlays[theirs.id].name == "logs/theirs"
