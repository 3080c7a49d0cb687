"""Shared helpers for the engine, worker and command-line tests (no fixtures with side effects)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent

# Small runs: 2048 samples, batch 16 -> 116 steps an epoch, a couple of seconds a run.
SMALL = dict(dataset_size=2048, batch_size=16)


def wait_until(predicate: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.05,
               what: str = "condition") -> Any:
    """Poll until predicate() is truthy and return its value; fail with `what` after the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TORCHDECK_HOME"}
    env.update(extra)
    return env


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "torchdeck.tui.entry", *args]  # the installed command's entry point


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run the real `torchdeck` command line and capture both streams."""
    return subprocess.run(cli_cmd(*args), cwd=cwd or REPO, env=cli_env(), capture_output=True, text=True,
                          timeout=timeout)


def pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


class StubHooks:
    """torchdeck.training.loop.Hooks for a Trainer run in the test process: records events, obeys nothing."""

    def __init__(self):
        self.events = []
        self.states = []

    def emit(self, event):
        self.events.append(event)

    def progress(self, *, state=None, step=None, epoch=None, last_loss=None):
        if state is not None:
            self.states.append(state)

    def control(self):
        return None

    def stop_requested(self):
        return False


def stop_leftover_runs(runs_dirs) -> None:
    """Teardown: stop any run a failed test left going (runs live in their own sessions)."""
    from torchdeck.options import FINAL_STATES
    from torchdeck.runs.store import Run

    for runs_dir in runs_dirs:
        for path in sorted(Path(runs_dir).glob("*")):
            if path.is_dir():
                run = Run(path)
                if run.observed_state() not in FINAL_STATES:
                    run.stop(grace=3, term_grace=2)
