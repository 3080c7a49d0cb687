"""Run the TUI in a real terminal: Textual gets its own copy of the terminal, and descriptors
1 and 2 point at the workspace's log, so C++ warnings from torch or onnxruntime cannot tear
the screen. Python logging and warnings go to the same log, viewable in the app (key l)."""

from __future__ import annotations

import io
import logging
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from torchdeck.workspace import Workspace


@contextmanager
def terminal_for_textual(log_path: Path) -> Iterator[None]:
    if not (sys.stdout.isatty() or sys.stderr.isatty()):
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    old = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    tty_out = io.TextIOWrapper(io.FileIO(os.dup(saved_out), "w"), line_buffering=True)
    tty_err = io.TextIOWrapper(io.FileIO(os.dup(saved_err), "w"), write_through=True)
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        logfile = io.TextIOWrapper(io.FileIO(os.dup(log_fd), "w"), line_buffering=True)
        # Textual's Linux driver writes to sys.__stderr__ and sizes itself from sys.__stdout__.
        sys.__stdout__, sys.__stderr__ = tty_out, tty_err
        sys.stdout = sys.stderr = logfile
        yield
    finally:
        sys.stdout.flush() if sys.stdout else None
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for fd in (saved_out, saved_err, log_fd):
            os.close(fd)
        sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__ = old
        tty_out.close()
        tty_err.close()


def run_tui(workspace_dir: str | None) -> int:
    ws = Workspace.open(workspace_dir)
    from .app import TorchdeckApp

    log_path = ws.logs_dir / "tui.log"
    logging.basicConfig(
        level=logging.INFO, filename=log_path, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.captureWarnings(True)
    warnings.simplefilter("default")
    app = TorchdeckApp(ws, log_path=log_path, keep_going=True)
    try:
        with terminal_for_textual(log_path):
            still_running = app.run()
    except Exception as e:  # Textual itself failed (the driver, the terminal): say so, in one line
        logging.getLogger("torchdeck.tui").error("torchdeck crashed", exc_info=e)
        print(crash_line(e, log_path), file=sys.stderr)
        return 1
    if app.fatal_error is not None or app.return_code not in (0, None):
        print(crash_line(app.fatal_error, log_path), file=sys.stderr)
        return app.return_code or 1
    if still_running:
        n = len(still_running)
        print(f"torchdeck: {n} training run{'s' if n != 1 else ''} go{'es' if n == 1 else ''} on in the background: "
              f"{', '.join(still_running)}. `torchdeck runs list` shows {'it' if n == 1 else 'them'}; "
              "`torchdeck` re-opens the view.", file=sys.stderr)
    return 0


def crash_line(error: BaseException | None, log_path: Path) -> str:
    """What the terminal shows after a crash: one line, and where the traceback is."""
    what = "unknown error" if error is None else f"{type(error).__name__}: {error}"
    what = " ".join(what.split())
    if len(what) > 200:
        what = what[:199] + "…"
    return f"torchdeck: crashed: {what} — the traceback is in {log_path}"
