"""The TUI's messages, as dataclasses with explicit fields, in one place."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from textual.message import Message


# Training
@dataclass
class RunUpdate(Message):
    """New events of the watched run and what was observed of it, posted by the tail thread;
    the screen feeds both to its RunView (the thread never touches the view or a widget)."""

    run_id: str
    events: list[Any]
    status: Any  # torchdeck.runs.store.Status
    observed_state: str
    observed_at: float  # the reader's monotonic clock at the observation
    reset: bool = False  # the first update of a newly watched run
    caught_up: bool = True  # every whole line of the file has been read
    name: str = ""  # the run's name, from its summary
    watch: int = 0  # the screen's count of watch_run calls when the tail started
    received: float = field(default_factory=time.monotonic)


@dataclass
class RunsListed(Message):
    summaries: list[Any]

    def can_replace(self, message: Message) -> bool:  # only the latest listing matters
        return isinstance(message, RunsListed)


@dataclass
class RunStarted(Message):
    run_id: str


@dataclass
class RunRemoved(Message):
    run_id: str


@dataclass
class FormError(Message):
    """An error to show under the New run form; `field` is the form widget's id to focus."""

    field: str | None
    text: str
