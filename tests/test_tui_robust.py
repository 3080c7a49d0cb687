"""The TUI under abuse: failed background jobs, keys sent together, keys where they cannot act,
damaged and unreadable files, numbers of any size. Nothing of it ends the app or fails silently."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import sys
import textwrap
from pathlib import Path

import pytest
from textual.command import CommandList
from textual.widgets import DataTable
from torchdeck.errors import InvalidRequest, Unreadable
from torchdeck.runs.config import RunConfig
from torchdeck.runs.store import RunStore
from torchdeck.tui.app import TorchdeckApp
from torchdeck.tui.failures import failure_line
from torchdeck.tui.launch import crash_line
from torchdeck.tui.palette import SafeCommandPalette
from torchdeck.tui.paths import home_short, in_workspace
from torchdeck.tui.widgets import LossChart, run_label, short_run_id
from torchdeck.tui.widgets.loss_chart import axis_label
from torchdeck.workspace import Workspace
from tui_helpers import (
    press_together,
    record_notifications,
    screen_text,
    table_lines,
    wait_for,
)


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    return Workspace.open(tmp_path / "ws")


def make_run(ws: Workspace, name: str = "", run_id: str = "20260102-030405-ab12"):
    cfg = RunConfig(model="demo", epochs=1, dataset_size=256, name=name)
    run = RunStore(ws).create(cfg, run_id=run_id)
    run.checkpoints_dir.mkdir(exist_ok=True)
    return run


@pytest.fixture
def unreadable(monkeypatch):
    """chmod 000 a directory. As root (this test machine's containers), mode bits do not stop
    reads, so the listing calls then fail for it as they would for anyone else."""
    made = []

    def make(path: Path) -> None:
        path.chmod(0)
        made.append(path)
        if os.geteuid() == 0:
            def denied(p) -> bool:
                try:
                    return stat.S_IMODE(os.stat(p).st_mode) == 0 and Path(p).resolve() in made
                except OSError:
                    return False

            for name in ("listdir", "scandir"):
                real = getattr(os, name)

                def guarded(p=".", _real=real):
                    if denied(p):
                        raise PermissionError(13, "Permission denied", str(p))
                    return _real(p)

                monkeypatch.setattr(os, name, guarded)

    yield make
    for path in made:
        path.chmod(0o755)


# -- no silent failure -----------------------------------------------------------------------------
async def test_unreadable_checkpoints_dir_is_told_once_logged_and_the_app_lives(workspace, unreadable, caplog):
    run = make_run(workspace)
    unreadable(run.checkpoints_dir)
    caplog.set_level(logging.ERROR, logger="torchdeck.tui")
    app = TorchdeckApp(workspace)
    async with app.run_test(size=(100, 30)) as pilot:
        shown = record_notifications(app)
        await pilot.press("2")
        await wait_for(pilot, lambda: any("Permission denied" in m for _, _, m in shown), 20, "the notification")
        severity, title, message = next(n for n in shown if "Permission denied" in n[2])
        assert severity == "error" and title == "list checkpoints failed"
        assert str(run.checkpoints_dir) in message and "\n" not in message
        assert "Cannot list checkpoints" in screen_text(app) and "Permission denied" in screen_text(app)
        # the traceback is in the log, once, however often the screen polls
        records = [r for r in caplog.records if r.exc_info and "list checkpoints failed" in r.getMessage()]
        assert len(records) == 1 and isinstance(records[0].exc_info[1], (PermissionError, Unreadable))
        await pilot.press("r", "r")
        await pilot.pause(0.5)
        assert sum("Permission denied" in m for _, _, m in shown) == 1  # told once, not per poll
        assert app.is_running and app.current_mode == "checkpoints"

        await pilot.press("e", "v")  # nothing listed: each key says why
        assert any("no checkpoint to export" in m for _, _, m in shown)
        assert any("no checkpoint to verify" in m for _, _, m in shown)

        run.checkpoints_dir.chmod(0o755)  # fixed: the list comes back, and a new failure is told again
        await pilot.press("r")
        await wait_for(pilot, lambda: "No checkpoints yet" in screen_text(app), 20, "the list to recover")
        run.checkpoints_dir.chmod(0)
        await pilot.press("r")
        await wait_for(pilot, lambda: sum("Permission denied" in m for _, _, m in shown) == 2, 20, "the second notice")
        assert app.is_running


async def test_an_unexpected_error_in_a_job_says_internal_error_and_logs_the_traceback(workspace, monkeypatch, caplog):
    from torchdeck.demo import make_demo_run
    from torchdeck.tui.screens import checkpoints as screen_mod

    make_demo_run(workspace, epochs=1, dataset_size=256, export=False)

    def broken(path):
        raise KeyError("tensor table")

    monkeypatch.setattr(screen_mod.ck, "inspect", broken)
    caplog.set_level(logging.ERROR, logger="torchdeck.tui")
    app = TorchdeckApp(workspace)
    async with app.run_test(size=(100, 30)) as pilot:
        shown = record_notifications(app)
        await pilot.press("2")
        await wait_for(pilot, lambda: any("internal error" in m for _, _, m in shown), 20, "the notification")
        message = next(m for _, _, m in shown if "internal error" in m)
        assert message.startswith("internal error: KeyError: 'tensor table'") and "(l: log)" in message
        assert any(r.exc_info and isinstance(r.exc_info[1], KeyError) for r in caplog.records)
        assert app.is_running


async def test_an_error_in_a_key_action_is_reported_and_the_real_app_goes_on(workspace, caplog):
    """keep_going (what run_tui sets): a bug behind a key is told, logged, and the app lives."""
    caplog.set_level(logging.ERROR, logger="torchdeck.tui")
    app = TorchdeckApp(workspace, keep_going=True)
    async with app.run_test(size=(80, 24)) as pilot:
        shown = record_notifications(app)

        def broken() -> None:
            raise ValueError("a bug behind a key")

        app.screen.action_refresh = broken
        await pilot.press("r")
        await wait_for(pilot, lambda: app.internal_errors, 5, "the error")
        assert ("error", "refresh failed", "internal error: ValueError: a bug behind a key  (l: log)") in shown
        assert any(r.exc_info and isinstance(r.exc_info[1], ValueError) for r in caplog.records)
        await pilot.press("r", "2")  # the app still takes keys
        assert len(app.internal_errors) == 2 and app.current_mode == "checkpoints"


def test_failure_line_is_one_line_and_says_what_kind():
    assert failure_line(InvalidRequest("epochs must be at most 10")) == "epochs must be at most 10"
    assert failure_line(PermissionError(13, "Permission denied", "/x/y")) == "Permission denied: /x/y"
    assert failure_line(KeyError(0)) == "internal error: KeyError: 0"
    assert failure_line(RuntimeError("two\nlines")) == "internal error: RuntimeError: two lines"
    assert len(failure_line(RuntimeError("x" * 5000))) <= 300


def test_a_crash_leaves_one_line_and_the_log_path_on_the_terminal(tmp_path):
    """In a real pseudo-terminal: an error while the first screen is built ends the app; the
    terminal gets one line naming it and the log, the log gets the traceback, the exit is 1."""
    ws = Workspace.open(tmp_path / "ws")
    script = tmp_path / "crash.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from torchdeck.tui.screens.models import ModelsScreen
        def broken(self, select=None):
            raise KeyError("catalogue")
        ModelsScreen.refresh_models = broken
        from torchdeck.tui.launch import run_tui
        sys.exit(run_tui({str(ws.root)!r}))
    """))
    import pty

    pid, fd = pty.fork()
    if pid == 0:
        os.execve(sys.executable, [sys.executable, str(script)], {**os.environ, "TERM": "xterm-256color"})
    output = bytearray()
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        output += data
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    text = output.decode(errors="replace")
    log_path = ws.logs_dir / "tui.log"
    assert os.waitstatus_to_exitcode(status) == 1
    assert f"torchdeck: crashed: KeyError: 'catalogue' — the traceback is in {log_path}" in text
    assert "Traceback" not in text  # the traceback went to the log, not over the screen
    log_text = log_path.read_text()
    assert "Traceback" in log_text and "KeyError: 'catalogue'" in log_text


def test_crash_line_is_one_line():
    line = crash_line(RuntimeError("a\nb"), Path("/w/logs/tui.log"))
    assert line == "torchdeck: crashed: RuntimeError: a b — the traceback is in /w/logs/tui.log"


# -- keys sent together ------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["pagedown", "pageup", "down", "up", "end", "home"])
async def test_ctrl_p_and_a_key_sent_together_do_not_crash(workspace, key):
    """Textual 8.2.8 raised KeyError in OptionList when PageDown/PageUp reached the palette's
    list before its layout (keys in one SSH read). keep_going is off here, so any error in an
    action would fail the test."""
    app = TorchdeckApp(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        for delay in (0, 0.01, 0.03, 0.06):  # the window is a few milliseconds wide: walk across it
            await press_together(pilot, "ctrl+p", f"wait:{delay * 1000:.0f}", key)
            await pilot.pause(0.2)
            assert isinstance(app.screen, SafeCommandPalette)
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, SafeCommandPalette), 5, "the palette to close")
        assert app.is_running and app._exception is None


@pytest.mark.parametrize("key, moved", [("pagedown", True), ("pageup", False)])
async def test_a_page_key_before_the_palette_list_is_laid_out_waits_for_it(workspace, key, moved):
    """The race made deterministic: the list has its commands and a highlight but no line map
    yet. Textual's own palette raises KeyError there; ours waits for the layout, then acts."""
    from textual.command import CommandPalette

    app = TorchdeckApp(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("ctrl+p")
        palette = app.screen
        assert isinstance(palette, SafeCommandPalette)
        commands = palette.query_one(CommandList)
        await wait_for(pilot, lambda: commands.option_count > 3 and commands.highlighted == 0, 5, "the commands")
        commands._line_cache.clear()
        commands._update_lines = lambda: None  # as before its first layout
        action = key.replace("page", "page_")
        with pytest.raises(KeyError):
            CommandPalette._action_command_list(palette, action)  # Textual's own
        palette._action_command_list(action)  # ours: no error, the move waits for the layout
        assert commands.highlighted == 0
        del commands._update_lines  # the layout arrives
        commands.refresh()
        if moved:
            await wait_for(pilot, lambda: (commands.highlighted or 0) > 0, 5, "the page move")
        else:
            await pilot.pause(0.2)
            assert commands.highlighted == 0
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, CommandPalette), 5, "the palette to close")
        assert app.is_running


async def test_keys_typed_fast_everywhere_do_not_crash(workspace):
    app = TorchdeckApp(workspace)
    async with app.run_test(size=(80, 24)) as pilot:
        await press_together(pilot, "2", "e", "v", "r", "1", "v", "b", "o", "4", "e", "r", "ctrl+p", "pagedown",
                             "pageup", "escape", "2", "question_mark", "escape", "l", "escape", "1")
        await pilot.pause(0.5)
        assert app.is_running and app._exception is None


# -- keys that cannot act say why ---------------------------------------------------------------------
async def test_models_keys_without_a_model_say_why(workspace):
    app = TorchdeckApp(workspace)
    async with app.run_test(size=(100, 30)) as pilot:
        shown = record_notifications(app)
        await pilot.press("e")  # the workspace's demo model: never trained here
        assert any("no checkpoint of demo yet: train it first (t)" in m for _, _, m in shown)
        await pilot.press("down", "d")  # linear is built in
        assert any(m == "builtin:linear is built in: it cannot be removed" for _, _, m in shown)
        app.screen.query_one("#models-table", DataTable).clear()  # nothing selected
        for key, why in (("e", "no model to export"), ("d", "no model to remove"), ("t", "no model to train")):
            await pilot.press(key)
            assert any(why in m for _, _, m in shown), key
        assert app.current_mode == "models" and app.is_running


# -- damaged and odd files ---------------------------------------------------------------------------
async def test_a_damaged_run_and_markup_in_names_neither_crash_nor_hide_the_rest(workspace):
    good = make_run(workspace, name="[bold]sweep[/x] lr=1e-3", run_id="20260102-030405-ab12")
    from torchdeck.demo import make_demo_run

    demo = make_demo_run(workspace, epochs=1, dataset_size=256, export=False)
    (demo.path / "summary.json").write_text("{not json")
    (good.path / "config.json").write_text("[]")
    ck_dir = demo.checkpoints_dir / next(p.name for p in demo.checkpoints_dir.iterdir())
    meta = json.loads((ck_dir / "meta.json").read_text())
    meta["metrics"] = {"val_loss": 1383982498794438656.0, "train_loss": None}
    (ck_dir / "meta.json").write_text(json.dumps(meta))
    app = TorchdeckApp(workspace)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("2")
        await wait_for(pilot, lambda: "step-" in screen_text(app) and "parameters" in screen_text(app), 30, "the detail")
        text = screen_text(app)
        assert "1.384e+18" in text and "1.38398e+18" in text  # the table's 4 digits, the detail's 6
        assert "1383982498794438656" not in text
        assert app.is_running


async def test_checkpoints_show_the_run_name_and_short_id(workspace):
    from torchdeck.demo import make_demo_run

    run = make_demo_run(workspace, epochs=1, dataset_size=256, export=False)
    summary = json.loads((run.path / "summary.json").read_text())
    summary["name"] = "[red]baseline-lr3"
    (run.path / "summary.json").write_text(json.dumps(summary))
    app = TorchdeckApp(workspace)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("2")
        await wait_for(pilot, lambda: "baseline-lr3" in screen_text(app), 20, "the run's name")
        table = app.screen.query_one("#ckpt-table", DataTable)
        await pilot.pause()
        row = table_lines(table)[1].split()
        assert row[:2] == ["[red]baseline-lr3", "demo"]  # the name as given, brackets and all
        await wait_for(pilot, lambda: "runs/20260101-120000-demo/checkpoints/" in screen_text(app), 20, "the detail")
        assert str(workspace.root) + "/" not in screen_text(app)  # paths inside it are relative (the mode bar names the root)


# -- numbers and labels -------------------------------------------------------------------------------
@pytest.mark.parametrize("losses", [
    [1e-300, 1e300], [1e-12, 1e-11], [1.4e18, 2.0e18], [5e-324, 1.7e308], [0.5], [3.0, 3.0, 3.0],
    [1e-3, 1e4, 12345.678], [float("nan"), 1.0, float("inf"), 2.0],
])
async def test_loss_chart_labels_fit_their_margin_whatever_the_values(losses):
    import math

    from textual.app import App

    class ChartApp(App):
        def compose(self):
            yield LossChart(id="chart")

    app = ChartApp()
    async with app.run_test(size=(40, 6)) as pilot:
        chart = app.query_one(LossChart)
        chart.styles.height = 4
        values = [math.log10(v) if v > 0 else v for v in losses]
        chart.set_values(values)
        await pilot.pause()
        lines = chart.render().plain.split("\n")
        finite = [v for v in losses if math.isfinite(v)]
        assert len(lines) == 4
        for line in lines:
            assert len(line) <= chart.size.width, line  # no line runs past the widget
            assert re.fullmatch(r" *(\S+)? [ ▁▂▃▄▅▆▇█]+", line), line  # a label, a space, then bars only
        top, bottom = lines[0].split()[0], lines[-1].split()[0]
        assert top == axis_label(math.log10(max(finite))) and bottom == axis_label(math.log10(min(finite)))
        assert len(top) <= 8 and len(bottom) <= 8  # 8 only for 3-digit exponents (fmt_axis: 7 otherwise)


def test_run_labels():
    assert run_label("20261128-123006-5fa7", "", today="20261128") == "12:30:06"
    assert run_label("20261128-123006-5fa7", "20261128-123006-5fa7", today="20261201") == "11-28 12:30"
    assert run_label("20261128-123006-5fa7", "baseline") == "baseline"
    assert run_label("x", "a" * 40) == "a" * 23 + "…"
    assert short_run_id("20261128-123006-5fa7") == "5fa7" and short_run_id("imported") == "imported"


def test_paths_on_screen(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert home_short(tmp_path / "proj" / ".torchdeck") == "~/proj/.torchdeck"
    assert home_short("/elsewhere/ws") == "/elsewhere/ws"
    assert home_short(str(tmp_path) + "x/ws") == str(tmp_path) + "x/ws"  # a sibling, not inside
    assert in_workspace(tmp_path / "ws" / "runs" / "r1", tmp_path / "ws") == "runs/r1"
    assert in_workspace("/other/ckpt", tmp_path / "ws") == "/other/ckpt"


async def test_a_damaged_models_toml_is_told_and_the_models_screen_recovers(workspace):
    good = workspace.models_file.read_text()
    workspace.models_file.write_text("this is [not toml\n")
    app = TorchdeckApp(workspace)
    async with app.run_test(size=(100, 30)) as pilot:
        shown = record_notifications(app)
        await pilot.press("r")
        await pilot.pause(0.3)
        told = screen_text(app) + "\n".join(m for _, _, m in shown)
        assert "models.toml" in told  # named, wherever it is told
        await pilot.press("down", "d", "e")  # the built-ins are still listed; no key ends the app
        assert app.is_running and app.current_mode == "models"
        workspace.models_file.write_text(good)
        await pilot.press("r")
        await wait_for(pilot, lambda: "demo" in screen_text(app) and "Cannot list" not in screen_text(app), 10,
                       "the list to come back")


async def test_the_log_view_opens_a_huge_log_at_its_end(workspace):
    from textual.widgets import Log

    log_path = workspace.logs_dir / "tui.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as f:
        for i in range(200_000):  # about 9 MB
            f.write(f"2026-01-01 00:00:00 INFO torchdeck: line {i:06d} \xe9\n")
        f.write("the very last line\n")
    app = TorchdeckApp(workspace, log_path=log_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("l")
        view = app.screen.query_one(Log)
        lines = list(view.lines)
        assert lines[-1] == "the very last line" and len(lines) == 500
        assert all(line.startswith("2026-") for line in lines[:-1])  # no half line at the top
        await pilot.press("escape")
        log_path.chmod(0)
        if os.geteuid() != 0:  # root reads it anyway
            await pilot.press("l")
            assert "cannot read" in list(app.screen.query_one(Log).lines)[0]
        log_path.chmod(0o644)
        assert app.is_running


def test_an_export_report_shows_its_path_in_the_workspace_and_escapes_markup(tmp_path):
    from rich.text import Text
    from torchdeck.tui.screens.exports import describe_report

    r = {"path": str(tmp_path / "exports" / "[red]x[/red].onnx"), "ok": True, "max_abs_diff": 0.0, "atol": 1e-4,
         "max_rel_diff": 0.0, "rtol": 1e-3, "checker_ok": True, "opset": 18, "exporter": "dynamo", "parity": []}
    text = Text.from_markup(describe_report(r, tmp_path)).plain
    assert "exports/[red]x[/red].onnx" in text and str(tmp_path) not in text
