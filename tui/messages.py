"""Every Textual message the TUI posts, as dataclasses with explicit fields, in one place.

Background workers never touch widgets: they post one of these, and a handler on the screen
owns the state. Messages that carry "the latest state" replace a queued one of their kind
(`can_replace`), so a slow screen never works through stale lists.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from textual.message import Message

# App


@dataclass
class TorchReady(Message, bubble=False):
    """torch (and what the engine needs of it) is imported: figures that need it can fill in."""

    version: str
    seconds: float


# Checkpoints


@dataclass
class CheckpointsListed(Message):
    """Every complete checkpoint of the workspace: (run id, CheckpointInfo), newest run first.
    `names` maps a run id to the run's name where it has one. `opened`: the paths the user opened
    (newest first) as OpenedEntry; `recent_problem`: why the remembered list could not be read."""

    items: list
    names: dict[str, str] = field(default_factory=dict)
    opened: list = field(default_factory=list)
    recent_problem: str | None = None

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, CheckpointsListed)


@dataclass
class OpenedEntry:
    """A path the user opened, as the list shows it: what it is on disk now and its size."""

    path: str
    kind: str  # "file", "folder", "missing", "other"
    size: int | None = None


@dataclass
class CheckpointDescribed(Message):
    """What one checkpoint holds (`info` and its tensors grouped by prefix), or why not:
    `error` (one line), `refused` (the globals a file wants that would run code) when it
    needs full unpickling, `gone` when it no longer exists."""

    path: str
    info: Any = None
    groups: Any = None  # torchdeck.tui.widgets.tensor_tree.Group
    error: str = ""
    refused: list[str] | None = None
    gone: bool = False


@dataclass
class CheckpointVerified(Message):
    """The outcome of `ops.verify`: the problems found (none: intact), or `gone` when the
    checkpoint no longer exists (removed meanwhile, never "damaged")."""

    path: str
    problems: list[str]
    tensors: int = 0
    gone: str = ""


@dataclass
class CheckpointConverted(Message):
    source: str
    report: dict | None = None
    error: str = ""


@dataclass
class CheckpointRemoved(Message):
    path: str
    error: str = ""


# Models


@dataclass
class Summarized(Message):
    """A model's summary at a batch size and optimizer, or why it could not be made."""

    name: str
    batch: int
    optimizer: str
    summary: Any = None
    error: str = ""


@dataclass
class DataDescribed(Message):
    """The Data view's text for a model (its default dataset)."""

    name: str
    text: str


@dataclass
class ParamsCounted(Message):
    """The catalogue's parameter counts are filled in (the entries carry them)."""


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
class OverlayUpdate(Message):
    """New events of a marked run whose curves are overlaid on the charts."""

    run_id: str
    events: list[Any]
    token: int  # the screen's count of mark changes when the tail started
    name: str = ""  # the run's name, from its summary


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


@dataclass
class LogsScanProgress(Message):
    """A scan of a folder of other tools' logs is under way (posted a few times a second)."""

    path: str
    dirs: int
    runs: int

    def can_replace(self, message: Message) -> bool:  # only the latest count matters
        return isinstance(message, LogsScanProgress)


@dataclass
class LogsScanned(Message):
    """Folders of logs scanned: the read-only runs found (ids) and what could not be read."""

    paths: list[str]
    run_ids: list[str]
    problems: list[str]
