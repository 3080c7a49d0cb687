"""No silent failure: every background job (Textual worker) that fails tells the user.

Textual posts a worker's state change to the node that started it, and the message does not
bubble, so no single handler sees every worker. The one place every worker passes through is
the app's WorkerManager: ReportingWorkerManager hears each worker end and hands failures to
`App.worker_failed` (one notification line, the traceback in the log).
"""

from __future__ import annotations

import re

from textual.worker import Worker
from textual.worker_manager import WorkerManager
from torchdeck.errors import TorchdeckError

# The command line's advice in an engine message ("...; pass --trust to allow"): in the TUI the
# way to trust a file is a dialog, so the advice is dropped wherever an error is shown.
_CLI_TRUST_HINT = re.compile(r"\s*(?:;\s*|\(\s*)pass --trust to allow\)?")


def without_cli_hint(text: str) -> str:
    return _CLI_TRUST_HINT.sub("", text)


def failure_line(error: BaseException | None) -> str:
    """One line for people: an engine error's message, an OS error's reason and path, else
    'internal error: Type: message'."""
    if error is None:
        return "internal error: unknown"
    if isinstance(error, TorchdeckError):
        text = str(error)
    elif isinstance(error, OSError) and error.strerror:
        text = error.strerror + (f": {error.filename}" if error.filename else "")
    else:
        text = f"internal error: {type(error).__name__}: {error}".rstrip(": ")
    line = " ".join(without_cli_hint(text).split())  # one line, whatever the message held
    return line if len(line) <= 300 else line[:299] + "…"


def job_title(worker: Worker) -> str:
    """list_checkpoints -> 'list checkpoints failed'."""
    name = (worker.name or worker.group or "background job").strip("_").replace("_", " ")
    return f"{name} failed"


class ReportingWorkerManager(WorkerManager):
    """The app's worker manager, which also reports each worker's end to the app."""

    def _remove_worker(self, worker: Worker) -> None:
        super()._remove_worker(worker)
        report = getattr(self._app, "worker_ended", None)
        if report is not None:
            report(worker)


__all__ = ["ReportingWorkerManager", "failure_line", "job_title", "without_cli_hint"]
