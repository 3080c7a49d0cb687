"""The real `torchdeck` TUI in a pseudo-terminal: a dropped SSH connection (SIGHUP) kills the
TUI, never the training run; a new TUI shows the run's whole history."""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import struct
import sys
import termios
import threading
import time

from torchdeck.runs import events as ev
from torchdeck.runs.store import RunStore
from torchdeck.tui.app import TorchdeckApp
from torchdeck.workspace import Workspace
from tui_helpers import log_lines, wait_for


def poll(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


class Terminal:
    """A pty running a command, with everything it draws collected."""

    def __init__(self, argv: list[str], env: dict[str, str], cols: int = 100, rows: int = 30):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the TUI
            # as a login shell starts it: a test run under nohup passes SIGHUP ignored to its
            # children, and an ignored signal stays ignored across exec
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            os.execve(argv[0], argv, env)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.output = bytearray()
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                return
            if not data:
                return
            self.output += data

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def wait_exit(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return status
            time.sleep(0.05)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError("the TUI did not exit")


async def test_sighup_kills_the_tui_not_the_run_and_a_new_tui_shows_its_history(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100", "LINES": "30"}
    term = Terminal([sys.executable, "-m", "torchdeck.tui.cli", "--workspace", str(ws.root)], env)
    store = RunStore(ws)
    run = None
    try:
        poll(lambda: b"Models" in term.output, 30, "the first frame")
        term.type("3")
        poll(lambda: b"New run" in term.output, 10, "the Training screen")
        term.type("s")
        try:
            run = poll(lambda: next(iter(store.runs()), None), 60, "a run")
        except AssertionError:
            import re
            text = re.sub(rb"\x1b\[[0-9;?]*[a-zA-Z]", b" ", bytes(term.output)).decode(errors="replace")
            print(sorted(set(re.findall(r"[A-Za-z][A-Za-z .:']{5,}", text))))
            print((ws.logs_dir / "tui.log").read_text() if (ws.logs_dir / "tui.log").exists() else "no log")
            raise
        poll(lambda: run.observed_state() == "running" and run.status().step > 0, 60, "the run to train")
        worker_pid = run.status().pid

        os.kill(term.pid, signal.SIGHUP)  # the SSH connection drops
        status = term.wait_exit(15)
        assert os.WIFSIGNALED(status) or os.WIFEXITED(status)
        step_then = run.status().step
        poll(lambda: run.status().step > step_then, 30, "the run to go on training")
        assert run.observed_state() in ("running", "saving") and run.status().pid == worker_pid  # saving: an epoch checkpoint

        assert run.stop(grace=20) == "stopped"
        losses = [v for e in ev.read_all(run.events_path) if isinstance(e, ev.Losses) for v in e.values]
        assert len(losses) == run.status().step

        app = TorchdeckApp(ws)
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.press("3")
            screen = app.screen
            await wait_for(pilot, lambda: screen.current_run == run.id and screen.history_done
                           and screen.state == "stopped", 60, "the run's history")
            assert screen.step == len(losses)
            await wait_for(pilot, lambda: len(screen.query_one("#chart-0").curves[0].series) == len(losses), 10,
                           "every batch's loss on the chart")
            assert log_lines(screen)[-1].startswith("run stopped")
    finally:
        if run is not None and run.observed_state() not in ("stopped", "finished", "crashed", "failed"):
            run.stop(grace=5, term_grace=2)
        try:
            os.kill(term.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
