"""The New run form: common fields shown, the rest folded under "more" (m), errors beside their
field, a run started with a schedule, config files opened (o) and written (w), all at 80x24."""

from __future__ import annotations

import json

import pytest
from textual.widgets import Input, Select, Static
from torchdeck.runs import config_file
from torchdeck.runs.config import RunConfig
from torchdeck.tui.app import TorchdeckApp
from torchdeck.tui.screens.training import FORM, MORE_FIELDS
from torchdeck.workspace import Workspace
from tui_helpers import screen_text, wait_for


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    return Workspace.open(tmp_path / "ws")


def app_for(ws: Workspace) -> TorchdeckApp:
    return TorchdeckApp(ws, default_config=RunConfig(epochs=1, dataset_size=512))


def error_text(screen, wid: str) -> str:
    return " ".join(str(screen.query_one(f"#{wid}-error", Static).render()).split())


def visible_in_form(screen, wid: str) -> bool:
    form = screen.query_one("#train-form")
    region = screen.query_one(f"#{wid}").region
    return region.height > 0 and form.content_region.contains_region(region)


async def test_more_is_folded_and_m_opens_it(workspace):
    app = app_for(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        screen = app.screen
        text = screen_text(app)
        for label in ("Model", "Data", "Epochs", "Batch size", "Learning rate", "Optimizer", "more"):
            assert label in text
        assert not screen.query_one("#train-more").display
        await pilot.press("m")
        assert screen.query_one("#train-more").display
        assert app.focused is screen.query_one("#f-schedule")
        # every field of "more" can be reached with Tab and is scrolled into view at 80x24
        order = [f.wid for f in MORE_FIELDS] + ["f-config"]
        for wid in order[1:]:
            await pilot.press("tab")
            await pilot.pause()
            assert app.focused is screen.query_one(f"#{wid}"), (wid, app.focused)
            assert visible_in_form(screen, wid), wid
        assert screen.query_one("#train-runs").region.height >= 5  # the run list keeps some rows
        await pilot.press("escape", "m")
        assert not screen.query_one("#train-more").display
        await pilot.press("l")  # the app's Log key still works here (config files are o and w)
        assert app.screen is not screen


async def test_a_bad_value_in_more_is_told_whole_beside_its_field(workspace):
    app = app_for(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3", "m")
        screen = app.screen
        screen.query_one("#f-schedule", Select).value = "cosine"
        warmup = screen.query_one("#f-warmup", Input)
        warmup.value = ""
        warmup.focus()
        await pilot.press("1", "x")
        await pilot.press("escape", "m")  # fold it again: the error reopens it
        await pilot.press("s")
        await pilot.pause()
        assert error_text(screen, "f-warmup") == "warmup steps must be a whole number, not '1x'"
        assert app.focused is warmup and screen.query_one("#train-more").display
        assert visible_in_form(screen, "f-warmup-error")
        assert list(workspace.runs_dir.iterdir()) == []
        # a value each fine alone but refused with another: beside the field RunConfig names
        warmup.value = "3"
        screen.query_one("#f-momentum", Input).value = "0.9"
        screen.query_one("#f-optimizer", Select).value = "adam"
        await pilot.press("escape", "s")
        await pilot.pause()
        assert "momentum applies to sgd and rmsprop" in error_text(screen, "f-momentum")
        assert error_text(screen, "f-warmup") == ""  # the earlier error is gone
        assert app.focused is screen.query_one("#f-momentum")
        # a long message from the engine is shown whole, wrapped beside the field
        screen.query_one("#f-momentum", Input).value = "0"
        screen.query_one("#f-best-metric", Input).value = "x" * 150
        await pilot.press("escape", "s")
        await pilot.pause()
        shown = error_text(screen, "f-best-metric")
        assert shown.startswith("best metric must be a metric's name") and "characters)" in shown
        screen.query_one("#f-best-metric", Input).value = "val_loss"
        screen.query_one("#f-early-stop", Input).value = "0"
        await pilot.press("escape", "s")
        await pilot.pause()
        assert "early stop patience must be a whole number of at least 1" in error_text(screen, "f-early-stop")
        assert list(workspace.runs_dir.iterdir()) == []


async def test_a_run_started_with_a_schedule_records_it(workspace):
    app = app_for(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3", "m")
        screen = app.screen
        screen.query_one("#f-schedule", Select).value = "cosine"
        screen.query_one("#f-warmup", Input).value = "3"
        screen.query_one("#f-max-steps", Input).value = "12"
        screen.query_one("#f-momentum", Input).value = "0.9"
        screen.query_one("#f-nesterov", Select).value = "yes"
        screen.query_one("#f-clip", Input).value = "2.5"
        await pilot.press("escape", "s")
        await wait_for(pilot, lambda: screen.current_run is not None, 60, "the run to start")
        config = json.loads((workspace.runs_dir / screen.current_run / "config.json").read_text())
        assert (config["schedule"], config["warmup_steps"], config["max_steps"], config["momentum"],
                config["nesterov"], config["grad_clip"], config["loss"]) == ("cosine", 3, 12, 0.9, True, 2.5, None)
        await wait_for(pilot, lambda: screen.state in ("finished", "failed", "crashed"), 120, "the run to end")
        assert screen.state == "finished", screen_text(app)


async def test_more_never_opened_starts_with_the_base_configs_settings(workspace):
    """The "more" fields are mounted on first use: a run started without opening them takes
    their settings from the base config (here the app's defaults), not from nothing."""
    app = TorchdeckApp(workspace, default_config=RunConfig(epochs=1, dataset_size=512, schedule="cosine",
                                                           warmup_steps=2, momentum=0.5, seed=5))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        screen = app.screen
        assert not screen.query("#f-schedule")  # not mounted yet
        await pilot.press("s")
        await wait_for(pilot, lambda: screen.current_run is not None, 60, "the run to start")
        config = json.loads((workspace.runs_dir / screen.current_run / "config.json").read_text())
        assert (config["schedule"], config["warmup_steps"], config["momentum"], config["seed"]) == ("cosine", 2, 0.5, 5)
        await pilot.press("m")  # opened now, they show the same values
        assert screen.query_one("#f-schedule", Select).value == "cosine"
        assert screen.query_one("#f-warmup", Input).value == "2" and screen.query_one("#f-seed", Input).value == "5"
        await wait_for(pilot, lambda: screen.state in ("finished", "failed", "crashed"), 120, "the run to end")


async def test_a_config_file_loads_into_the_form_and_writes_back(workspace, tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('model = "builtin:mlp"\nepochs = 4\nlr = 0.003\noptimizer = "adamw"\nbetas = [0.8, 0.95]\n'
                    'schedule = "onecycle"\nwarmup_steps = 7\nloss = "cross_entropy"\nlabel_smoothing = 0.1\n'
                    'clip_grad_norm = 1.0\nkeep = 5\nseed = 11\nnum_workers = 2\n')
    app = app_for(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3", "m")
        screen = app.screen
        screen.query_one("#f-config", Input).value = str(path)
        await pilot.press("escape", "o")
        await pilot.pause()
        values = {f.wid: screen.query_one(f"#{f.wid}").value for f in FORM}
        assert values["f-model"] == "builtin:mlp" and values["f-epochs"] == "4" and values["f-lr"] == "0.003"
        assert values["f-optimizer"] == "adamw" and values["f-betas"] == "0.8,0.95"
        assert values["f-schedule"] == "onecycle" and values["f-warmup"] == "7"
        assert values["f-loss"] == "cross_entropy" and values["f-label-smoothing"] == "0.1"
        assert values["f-clip"] == "1.0" and values["f-keep"] == "5" and values["f-seed"] == "11"
        status = " ".join(str(screen.query_one("#form-error", Static).render()).split())
        assert "loaded" in status and "num_workers" in status  # set, though not on the form
        # change one thing and write it to a new file: it loads back with the change
        screen.query_one("#f-epochs", Input).value = "6"
        out = tmp_path / "out.toml"
        screen.query_one("#f-config", Input).value = str(out)
        await pilot.press("escape", "w")
        await pilot.pause()
        saved = config_file.load(out).apply(RunConfig())
        assert (saved.model, saved.epochs, saved.optimizer, saved.betas, saved.schedule, saved.num_workers) == \
            ("builtin:mlp", 6, "adamw", [0.8, 0.95], "onecycle", 2)
        # a bad file: the error names the key and the file, beside the path
        bad = tmp_path / "bad.toml"
        bad.write_text('model = "demo"\nwarmup = 3\n')
        screen.query_one("#f-config", Input).value = str(bad)
        await pilot.press("escape", "o")
        await pilot.pause()
        shown = error_text(screen, "f-config")
        assert "unknown key 'warmup'" in shown and "bad.toml" in shown
        assert app.focused is screen.query_one("#f-config")
        # a bad value in a file: beside the field it sets
        bad.write_text('model = "demo"\nmomentum = "high"\n')
        await pilot.press("escape", "o")
        await pilot.pause()
        assert "momentum must be a number" in error_text(screen, "f-momentum")
        # no path: told where to type one
        screen.query_one("#f-config", Input).value = ""
        await pilot.press("escape", "o")
        await pilot.pause()
        assert "path of a TOML config file" in error_text(screen, "f-config")
