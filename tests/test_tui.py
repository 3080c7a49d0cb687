"""The TUI driven by keys, as a person would: real worker processes, real exports."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest
from textual.widgets import Input, Select
from torchdeck.runs.config import RunConfig
from torchdeck.runs.store import RunStore
from torchdeck.tui.app import TorchdeckApp
from torchdeck.tui.screens.dialogs import ConfirmQuit, HelpScreen
from torchdeck.tui.screens.training import TrainingScreen
from torchdeck.workspace import Workspace
from tui_helpers import log_lines, screen_text, wait_for

SMALL = RunConfig(epochs=1, dataset_size=4096)  # 231 steps: about a second of training


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    return Workspace.open(tmp_path / "ws")


def make_app(ws: Workspace) -> TorchdeckApp:
    return TorchdeckApp(ws, default_config=RunConfig(**SMALL.to_json()))


async def test_first_screen_is_models_with_the_demo_and_its_parameter_count(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.current_mode == "models"
        await wait_for(pilot, lambda: app.torch_ready, 60, "torch import")
        await wait_for(pilot, lambda: "220" in screen_text(app), 30, "parameter count")
        text = screen_text(app)
        assert "demo" in text and "builtin:linear" in text


def test_first_frame_paints_before_torch_is_imported(tmp_path):
    """In a fresh interpreter: the app's first frame is up while torch is not yet imported."""
    script = textwrap.dedent(f"""
        import asyncio, sys, time
        t0 = time.monotonic()
        from torchdeck.workspace import Workspace
        from torchdeck.tui.app import TorchdeckApp
        print("torch" in sys.modules)  # the app and engine modules it needs import no torch
        class Probe(TorchdeckApp):
            first_frame = None
            def on_mount(self):
                super().on_mount()
                self.call_after_refresh(self.probe)  # runs once the first frame is drawn
            def probe(self):
                detail = str(self.screen.query_one('#model-detail').render())
                bar = str(self.screen.query_one('#mode-bar').render())
                self.first_frame = (self.torch_ready, "importing torch" in detail, "Models" in bar)
        async def main():
            app = Probe(Workspace.open({str(tmp_path / 'ws')!r}))
            async with app.run_test(size=(80, 24)) as pilot:
                while app.first_frame is None:
                    await pilot.pause(0.01)
                print(*app.first_frame)
                app.exit()
        asyncio.run(main())
    """)
    (tmp_path / "probe.py").write_text(script)
    out = subprocess.run([sys.executable, str(tmp_path / "probe.py")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", "True", "True"], out.stdout


async def test_keys_1_to_4_switch_screens_except_while_typing(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        for key, mode in (("2", "checkpoints"), ("3", "training"), ("4", "exports"), ("1", "models")):
            await pilot.press(key)
            assert app.current_mode == mode
            assert mode.capitalize() in str(app.screen.query_one("#mode-bar").render())
        await pilot.press("3", "n")  # n: focus the form
        field = app.screen.query_one("#f-epochs", Input)
        assert app.focused is field
        field.value = ""
        await pilot.press("2", "5")
        assert field.value == "25" and app.current_mode == "training"
        await pilot.press("escape")
        assert not isinstance(app.focused, Input)
        await pilot.press("2")
        assert app.current_mode == "checkpoints"


async def test_help_lists_every_key_of_every_screen(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        for key in ("f1", "question_mark"):
            await pilot.press(key)
            assert isinstance(app.screen, HelpScreen)
            text = screen_text(app)
            for title in ("Everywhere", "Models", "Checkpoints", "Training", "Exports"):
                assert title in text
            for description in ("Start", "Stop", "Pause", "Export to ONNX", "Verify hashes", "Train", "Quit"):
                assert description in text
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)


async def test_command_palette_switches_screens(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+p")
        await pilot.pause()
        for ch in "Go to Exports":
            await pilot.press("space" if ch == " " else ch)
        await wait_for(pilot, lambda: "Go to Exports" in screen_text(app) or True, 2)
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.current_mode == "exports", 5, "the Exports screen")


@pytest.mark.parametrize(
    "field, value, message",
    [("f-lr", "abc", "learning rate must be a number"), ("f-lr", "-1", "learning rate must be a positive number"),
     ("f-epochs", "0", "epochs must be a whole number of at least 1"), ("f-batch", "1.5", "batch size must be a whole number")],
)
async def test_bad_form_input_is_told_inline_and_starts_nothing(workspace, field, value, message):
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        app.screen.query_one(f"#{field}", Input).value = value
        await pilot.press("escape", "s")
        await pilot.pause()
        assert message in screen_text(app)
        assert app.focused is app.screen.query_one(f"#{field}", Input)  # where the user fixes it
        assert list(workspace.runs_dir.iterdir()) == []
        assert app.is_running


async def test_unknown_model_spec_is_told_inline(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        screen = app.screen
        screen.app.default_config.model = "nope"
        select = screen.query_one("#f-model", Select)
        select.set_options([("nope", "nope")])
        select.value = "nope"
        await pilot.press("s")
        await wait_for(pilot, lambda: "unknown model 'nope'" in screen_text(app), 30, "the inline error")
        assert list(workspace.runs_dir.iterdir()) == []


async def test_the_whole_story_train_watch_checkpoint_export(workspace):
    """By keys alone: train the demo, watch its losses stream in, find the checkpoint, export it."""
    app = make_app(workspace)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("1")
        await wait_for(pilot, lambda: app.torch_ready, 60, "torch import")
        await pilot.press("t")  # train the selected model (demo)
        assert app.current_mode == "training"
        screen: TrainingScreen = app.screen
        await pilot.press("escape", "s")
        await wait_for(pilot, lambda: screen.current_run is not None, 60, "the run to start")
        await wait_for(pilot, lambda: any("loss" in line and "step" in line for line in log_lines(screen)), 60,
                       "loss lines")
        await wait_for(pilot, lambda: screen.state == "finished", 120, "the run to finish")
        await wait_for(pilot, lambda: screen.history_done, 10)
        lines = log_lines(screen)
        loss_lines = [ln for ln in lines if re.match(r"^e\d+\s+step\s+[\d,]+\s+loss ", ln)]
        assert len(loss_lines) == screen.total_steps == 231  # one line per batch
        assert "finished" in screen_text(app) and "231/231" in screen_text(app)
        assert any("checkpoint step-00000231 saved" in ln for ln in lines)

        await pilot.press("2")
        await wait_for(pilot, lambda: "step-00000231" in screen_text(app), 30, "the checkpoint")
        text = screen_text(app)
        assert "231" in text and "weight" in text and "20x10" in text and "220 parameters" in text

        await pilot.press("e")  # export the selected checkpoint
        assert app.current_mode == "exports"
        await wait_for(pilot, lambda: "max abs diff" in screen_text(app), 180, "the export report")
        text = screen_text(app)
        assert "matches PyTorch" in text
        onnx_files = list(workspace.exports_dir.glob("*.onnx"))
        assert len(onnx_files) == 1 and onnx_files[0].name in text


async def test_quit_with_a_running_run_says_it_goes_on(workspace):
    store = RunStore(workspace)
    from torchdeck.models import specs

    cfg = RunConfig(epochs=50, dataset_size=4096)
    cfg.model_spec = specs.resolve("demo", workspace).to_json()
    run = store.create(cfg)
    store.launch(run)
    try:
        app = make_app(workspace)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: run.observed_state() == "running", 60, "the run to start")
            await pilot.press("q")
            assert isinstance(app.screen, ConfirmQuit)
            assert "goes on in the background" in screen_text(app) and run.id in screen_text(app)
            await pilot.press("n")
            assert app.is_running and not isinstance(app.screen, ConfirmQuit)
            await pilot.press("q", "enter")  # Enter (or q, or y) confirms
        assert app.return_value == [run.id]
        assert run.observed_state() == "running"
    finally:
        run.stop(grace=10)


async def test_a_terminal_too_small_says_so_and_recovers_when_enlarged(workspace):
    app = make_app(workspace)
    async with app.run_test(size=(50, 12)) as pilot:
        await pilot.pause()
        note = app.screen.query_one("#too-small")
        assert note.display and "terminal too small" in str(note.render()) and "50x12" in str(note.render())
        assert not app.screen.query_one("#mode-bar").display
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        assert not app.screen.query_one("#too-small").display
        assert app.screen.query_one("#mode-bar").display
        await pilot.press("3")  # another screen, resized below the minimum there
        await pilot.resize_terminal(59, 30)
        await pilot.pause()
        assert app.screen.query_one("#too-small").display and "59x30" in str(app.screen.query_one("#too-small").render())
