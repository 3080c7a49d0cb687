"""The events.jsonl format (version 1): one JSON object a line, each with a `type`.

Losses travel in chunks: every batch's loss is kept without spending a line per batch.
A non-finite loss is written as null and named in `nonfinite` (bare NaN is not JSON).
A reader ignores a torn last line; a resumed writer truncates it first.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Iterator

FORMAT_VERSION = 1


@dataclass
class Event:
    type: ClassVar[str] = ""

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, **asdict(self)}


@dataclass
class Started(Event):
    type: ClassVar[str] = "started"
    run_id: str
    config: dict[str, Any]
    total_steps: int
    steps_per_epoch: int
    num_params: int
    device: str
    time: float  # wall clock, for people; never compared across machines
    threads: int = 0  # torch CPU threads
    version: int = FORMAT_VERSION


@dataclass
class Losses(Event):
    type: ClassVar[str] = "losses"
    first_step: int  # 1-based step of values[0]
    epoch: int
    values: list[float | None]
    nonfinite: list[list[Any]] = field(default_factory=list)  # [[index, "nan"|"inf"|"-inf"], ...]

    @classmethod
    def from_floats(cls, first_step: int, epoch: int, floats: list[float]) -> "Losses":
        values: list[float | None] = []
        bad: list[list[Any]] = []
        for i, v in enumerate(floats):
            if math.isfinite(v):
                values.append(v)
            else:
                values.append(None)
                bad.append([i, "nan" if v != v else ("inf" if v > 0 else "-inf")])
        return cls(first_step, epoch, values, bad)

    @property
    def last_step(self) -> int:
        return self.first_step + len(self.values) - 1


@dataclass
class EpochEnd(Event):
    type: ClassVar[str] = "epoch"
    epoch: int
    step: int
    train_loss: float | None
    val_loss: float | None
    seconds: float
    val_accuracy: float | None = None  # class targets: share of validation samples classified right


@dataclass
class Checkpointed(Event):
    type: ClassVar[str] = "checkpoint"
    name: str
    step: int
    epoch: int
    reason: str  # "epoch" or "stop"


@dataclass
class StateChanged(Event):
    type: ClassVar[str] = "state"
    state: str
    step: int


@dataclass
class Resumed(Event):
    type: ClassVar[str] = "resumed"
    step: int


@dataclass
class Ended(Event):
    type: ClassVar[str] = "ended"
    state: str
    step: int
    last_loss: float | None
    message: str = ""


EVENT_TYPES: dict[str, type[Event]] = {
    c.type: c for c in (Started, Losses, EpochEnd, Checkpointed, StateChanged, Resumed, Ended)
}


def parse(record: dict[str, Any]) -> Event | None:
    """An Event from one decoded line; None for a type this version does not know."""
    cls = EVENT_TYPES.get(record.get("type", ""))
    if cls is None:
        return None
    names = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in record.items() if k in names})
    except TypeError:
        return None


def dumps(event: Event) -> str:
    return json.dumps(event.to_json(), separators=(",", ":"), allow_nan=False)


class EventWriter:
    """Appends events; one write per event, so a crash tears at most the last line."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._truncate_torn_tail()
        self._f = open(self.path, "a", encoding="utf-8")

    def _truncate_torn_tail(self) -> None:
        try:
            with open(self.path, "rb+") as f:
                data = f.read()
                if data and not data.endswith(b"\n"):
                    f.truncate(data.rfind(b"\n") + 1)
        except FileNotFoundError:
            pass

    def write(self, event: Event) -> None:
        self._f.write(dumps(event) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class EventTail:
    """Reads whole new lines from an events file; remembers where it stopped."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset = 0

    def read_new(self, max_bytes: int = 8 << 20) -> list[Event]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(max_bytes)
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []  # nothing whole yet, or a torn last line: wait for the rest
        self.offset += end + 1
        out = []
        for line in data[: end + 1].splitlines():
            if not line.strip():
                continue
            try:
                ev = parse(json.loads(line))
            except ValueError:
                continue
            if ev is not None:
                out.append(ev)
        return out

    def at_end(self) -> bool:
        try:
            return os.path.getsize(self.path) <= self.offset
        except OSError:
            return True


def read_all(path: Path) -> Iterator[Event]:
    tail = EventTail(path)
    while True:
        batch = tail.read_new()
        if not batch:
            return
        yield from batch
