"""The events.jsonl format (version 2): one JSON object a line, each with a `type`.

Losses travel in chunks: every batch's loss is kept without spending a line per batch.
Version 2 adds `scalars` chunks: any named metric (lr, grad_norm, val_loss, the user's own) at
the steps it was recorded. A non-finite value is written as null and named in `nonfinite`
(bare NaN is not JSON). A reader ignores a torn last line; a resumed writer truncates it first.
Version 1 files (no scalars, no `elapsed`) read the same way.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

try:  # a million losses decode in 0.05 s instead of 0.45 s (float parsing is most of a replay)
    import orjson as _orjson
except ImportError:  # pragma: no cover - a dependency; the stdlib reads the same files, slower
    _orjson = None

FORMAT_VERSION = 2


def loads(line: bytes | str) -> Any:
    """One decoded line. orjson where it takes the line; what it refuses that the stdlib takes (a
    lone surrogate in a string, an out-of-range number in a hand-edited file) goes to json, so a
    line reads the same with either (orjson reads a huge integer as a float: a step that is not
    an int is malformed either way). Raises ValueError for a line that is not JSON."""
    if _orjson is not None:
        try:
            return _orjson.loads(line)
        except _orjson.JSONDecodeError:
            pass
    return json.loads(line)


@dataclass(frozen=True)
class MetricInfo:
    """What a reader shows for a metric name: a label for people and the unit of its values."""
    label: str
    unit: str = ""


# The metric names torchdeck itself writes (losses records are "loss"; the rest are scalars
# records), defined once: the monitor and the README list these. A user's step may add any other.
METRICS: dict[str, MetricInfo] = {
    "loss": MetricInfo("Loss"),
    "val_loss": MetricInfo("Validation loss"),
    "val_accuracy": MetricInfo("Validation accuracy", "fraction"),
    "lr": MetricInfo("Learning rate"),
    "grad_norm": MetricInfo("Gradient norm"),
    "skipped_steps": MetricInfo("Steps skipped by the fp16 GradScaler", "steps"),
    "samples_per_s": MetricInfo("Samples per second", "samples/s"),
    "tokens_per_s": MetricInfo("Tokens per second", "tokens/s"),
    "rss_mb": MetricInfo("Worker resident memory (host)", "MiB"),
    "cuda_allocated_mb": MetricInfo("CUDA memory allocated", "MiB"),
    "cuda_reserved_mb": MetricInfo("CUDA memory reserved", "MiB"),
    "cuda_peak_mb": MetricInfo("CUDA peak memory allocated", "MiB"),
}
# Written once per chunk by the built-in loop, at the chunk's last step.
SYSTEM_METRICS = ("samples_per_s", "tokens_per_s", "rss_mb", "cuda_allocated_mb", "cuda_reserved_mb", "cuda_peak_mb")


def _finite_or_null(floats: list[float]) -> tuple[list[float | None], list[list[Any]]]:
    """JSON-safe values and the [[index, "nan"|"inf"|"-inf"], ...] of those written as null."""
    values: list[float | None] = list(map(float, floats))
    if math.isfinite(sum(values)):  # all finite (the usual chunk), checked in C; else one by one
        return values, []
    values = []
    bad: list[list[Any]] = []
    for i, v in enumerate(floats):
        v = float(v)
        if math.isfinite(v):
            values.append(v)
        else:
            values.append(None)
            bad.append([i, "nan" if v != v else ("inf" if v > 0 else "-inf")])
    return values, bad


_NUMBER_OR_NULL = {int, float, type(None)}  # what json.loads gives for a value or null


@dataclass
class Event:
    type: ClassVar[str] = ""

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, **asdict(self)}

    def well_formed(self) -> bool:
        """Whether a decoded record has the shapes a reader relies on (a hand-edited or foreign
        file can hold anything); a malformed record is skipped like an unknown type."""
        for name, check, optional in _field_info(type(self))[1]:
            v = getattr(self, name)
            if not (check(v) or (optional and v is None)):
                return False
        values = getattr(self, "values", None)
        # by exact type, in C (a million losses are checked in milliseconds): bool is not a number
        if isinstance(values, list) and not set(map(type, values)) <= _NUMBER_OR_NULL:
            return False
        steps = getattr(self, "steps", None)
        if isinstance(steps, list) and (len(steps) != len(values or []) or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in steps)):
            return False
        return True


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
    pipeline: str = "in-memory"  # where batches come from: "in-memory" (tensors) or "dataloader"
    pipeline_note: str = ""  # the DataLoader's settings, no validation and why, ...: for people


@dataclass
class Losses(Event):
    type: ClassVar[str] = "losses"
    first_step: int  # 1-based step of values[0]
    epoch: int
    values: list[float | None]
    nonfinite: list[list[Any]] = field(default_factory=list)  # [[index, "nan"|"inf"|"-inf"], ...]
    elapsed: float | None = None  # v2: the writer's monotonic seconds since it started, at the copy-out

    @classmethod
    def from_floats(cls, first_step: int, epoch: int, floats: list[float], elapsed: float | None = None) -> "Losses":
        values, bad = _finite_or_null(floats)
        return cls(first_step, epoch, values, bad, elapsed)

    @property
    def last_step(self) -> int:
        return self.first_step + len(self.values) - 1

    def to_json(self) -> dict[str, Any]:
        # Built by hand: asdict deep-copies the values list float by float (1 us a value: most
        # of the logging API's cost a step in a small loop). Same keys, same order.
        d = {"type": self.type, "first_step": self.first_step, "epoch": self.epoch, "values": self.values,
             "nonfinite": self.nonfinite}
        if self.elapsed is not None:
            d["elapsed"] = self.elapsed
        return d


@dataclass
class Scalars(Event):
    """One named metric at some steps (v2). Consecutive steps are written as `first_step` alone,
    others as `steps`; `nonfinite` as in losses."""

    type: ClassVar[str] = "scalars"
    name: str
    values: list[float | None]
    first_step: int | None = None  # values[i] is at first_step + i
    steps: list[int] | None = None  # or values[i] is at steps[i]
    nonfinite: list[list[Any]] = field(default_factory=list)
    # Optional (records imported from other tools' logs, which keep each point's wall time): the
    # seconds since the run's first `started` record at the last point and at the first; the
    # points between are spread evenly. Without them a reader times a scalar by the loss.
    elapsed: float | None = None
    first_elapsed: float | None = None

    @classmethod
    def from_points(cls, name: str, steps: list[int], floats: list[float]) -> "Scalars":
        values, bad = _finite_or_null(floats)
        if steps and all(b == a + 1 for a, b in zip(steps, steps[1:])):
            return cls(name, values, first_step=steps[0], nonfinite=bad)
        return cls(name, values, steps=list(steps), nonfinite=bad)

    def step_list(self) -> list[int]:
        if self.steps is not None:
            return list(self.steps)
        first = self.first_step or 0
        return list(range(first, first + len(self.values)))

    def to_json(self) -> dict[str, Any]:
        d = {"type": self.type, "name": self.name}
        if self.steps is not None:
            d["steps"] = self.steps
        else:
            d["first_step"] = self.first_step
        d["values"] = self.values
        if self.nonfinite:
            d["nonfinite"] = self.nonfinite
        if self.elapsed is not None:
            d["elapsed"] = self.elapsed
            if self.first_elapsed is not None and len(self.values) > 1:
                d["first_elapsed"] = self.first_elapsed
        return d


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
    reason: str  # "epoch" or "stop"; a recorded checkpoint's: what it is to its writer ("best", "last", "")
    # Written once the checkpoint is complete (in the background): what it cost. Optional, so
    # records from before background saving still parse. pause_s is the loop's whole pause (the
    # wait for the previous save plus the copy to host memory).
    pause_s: float | None = None
    wait_s: float | None = None
    write_s: float | None = None
    hash_s: float | None = None
    fsync_s: float | None = None
    bytes: int | None = None
    # A checkpoint written by something else (Lightning, Hugging Face; Run.record_checkpoint),
    # by its absolute path; absent for the run's own (in its checkpoints/). Older readers skip
    # a field they do not know, so the record stays version 2.
    path: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = super().to_json()
        if d["path"] is None:
            del d["path"]  # the run's own checkpoints' records stay as they were
        else:  # a recorded one: torchdeck did not save it, so no costs
            for k in ("pause_s", "wait_s", "write_s", "hash_s", "fsync_s", "bytes"):
                if d[k] is None:
                    del d[k]
        return d


@dataclass
class StateChanged(Event):
    type: ClassVar[str] = "state"
    state: str
    step: int


@dataclass
class Resumed(Event):
    """History past `step` is replaced by what follows (a resume, or a relaunched writer)."""
    type: ClassVar[str] = "resumed"
    step: int
    checkpoint: str = ""  # the checkpoint resumed from ("" for none: from the start)
    exact: bool = True  # False when something besides the length changed (a diverged run's rate)
    changes: dict[str, Any] | None = None  # field -> [before, after]
    note: str = ""


def finite_json(obj: Any) -> Any:
    """A JSON value with NaN and infinities as their names ("nan", "inf", "-inf"): records are
    strict JSON, settings (a config, hyper-parameters) may hold them."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return repr(obj)
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite_json(v) for v in obj]
    return obj


@dataclass
class Params(Event):
    """Settings recorded after the start (`Run.update_config`: a framework's hyper-parameters,
    known once training begins), merged into the run's params at `step`. A reader that predates
    it skips it (a type it does not know), so the file stays version 2."""
    type: ClassVar[str] = "params"
    step: int
    values: dict[str, Any]


@dataclass
class Ended(Event):
    type: ClassVar[str] = "ended"
    state: str
    step: int
    last_loss: float | None
    message: str = ""
    # A command run's (`torchdeck run -- CMD`) command: its exit status, or the signal that
    # killed it (e.g. "SIGKILL"). Absent from other runs' records.
    exit_status: int | None = None
    exit_signal: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = {"type": self.type, "state": self.state, "step": self.step, "last_loss": self.last_loss,
             "message": self.message}
        if self.exit_status is not None:
            d["exit_status"] = self.exit_status
        if self.exit_signal is not None:
            d["exit_signal"] = self.exit_signal
        return d


EVENT_TYPES: dict[str, type[Event]] = {
    c.type: c for c in (Started, Losses, Scalars, EpochEnd, Checkpointed, StateChanged, Resumed, Params, Ended)
}


# A field's annotation -> the check its decoded value must pass (a number is never a bool). A
# hand-edited or foreign file can hold a string where a reader does arithmetic: "elapsed": "x"
# ended the monitor with a TypeError.
_CHECKS: dict[str, Callable[[Any], bool]] = {
    "int": lambda v: type(v) is int,
    "float": lambda v: type(v) in (int, float),
    "str": lambda v: type(v) is str,
    "bool": lambda v: type(v) is bool,
    "dict": lambda v: type(v) is dict,
    "list": lambda v: type(v) is list,
}
_FIELDS: dict[type, tuple[frozenset[str], tuple[tuple[str, Callable[[Any], bool], bool], ...]]] = {}


def _field_info(cls: type) -> tuple[frozenset[str], tuple[tuple[str, Callable[[Any], bool], bool], ...]]:
    """(field names, (name, check, None allowed) per field) of an event class, worked out once
    from its annotations."""
    info = _FIELDS.get(cls)
    if info is None:
        checks = []
        for f in fields(cls):
            kind = str(f.type)
            optional = kind.endswith("| None")
            checks.append((f.name, _CHECKS[kind.split("[")[0].split("|")[0].strip()], optional))
        info = _FIELDS[cls] = (frozenset(f.name for f in fields(cls)), tuple(checks))
    return info


def parse(record: dict[str, Any]) -> Event | None:
    """An Event from one decoded line; None for a type this version does not know."""
    cls = EVENT_TYPES.get(record.get("type", ""))
    if cls is None:
        return None
    names = _field_info(cls)[0]
    try:
        ev = cls(**{k: v for k, v in record.items() if k in names})
    except TypeError:
        return None
    return ev if ev.well_formed() else None


def dumps(event: Event) -> str:
    """One record's line. orjson where it can: the stdlib writes a float through its shortest-
    repr search (about 1 us a value, 6,600 instructions: half of what `run.log` cost a step in a
    small loop, and a step's share of the worker's chunk), orjson in 0.04 us, the same digits. It
    writes NaN and inf as null, where a record must never hold a bare one (writers turn them into
    null with a `nonfinite` entry): a line with a null goes through the stdlib, which refuses
    them; so does what orjson refuses (integers past 64 bits, lone surrogates, non-str keys)."""
    d = event.to_json()
    if _orjson is not None:
        try:
            line = _orjson.dumps(d)
        except TypeError:  # orjson.JSONEncodeError is one
            pass
        else:
            if b"null" not in line:
                return line.decode()
    return json.dumps(d, separators=(",", ":"), allow_nan=False)


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
    """Reads whole new lines from an events file; remembers where it stopped.

    `read_new` reads at most about `max_bytes` a call (so a tailer hands out history in
    batches); `caught_up` says whether the last call reached the end of the file. What follows
    the last newline is a line being written, or a torn line a dead writer left: it is never
    parsed, and it never keeps a reader from being caught up.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset = 0
        self.caught_up = False
        self.pending_bytes = 0  # bytes after the last whole line at the last read
        self.corrupt = 0  # whole lines skipped: not JSON, not an object, or a known type of the wrong shape

    def read_new(self, max_bytes: int = 8 << 20) -> list[Event]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(max_bytes)
                at_eof = len(data) < max_bytes
                while not at_eof and b"\n" not in data:  # one line longer than max_bytes
                    more = f.read(max_bytes)
                    at_eof = len(more) < max_bytes
                    data += more
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            self.caught_up, self.pending_bytes = True, 0
            return []
        end = data.rfind(b"\n")
        self.caught_up = at_eof
        self.pending_bytes = len(data) - (end + 1) if at_eof else 0
        if end < 0:
            return []  # nothing whole yet, or a torn last line: wait for the rest
        self.offset += end + 1
        out = []
        for line in data[: end + 1].splitlines():
            if not line.strip():
                continue
            try:
                record = loads(line)
            except ValueError:
                self.corrupt += 1
                continue
            if not isinstance(record, dict):
                self.corrupt += 1
                continue
            ev = parse(record)
            if ev is not None:
                out.append(ev)
            elif record.get("type") in EVENT_TYPES:
                self.corrupt += 1  # (an unknown type is a newer writer's record, not damage)
        return out

    def read_batches(self, max_bytes: int = 8 << 20) -> Iterator[list[Event]]:
        """Every whole line there is now, in batches, until caught up (whatever the size)."""
        while True:
            batch = self.read_new(max_bytes)
            if batch:
                yield batch
            if self.caught_up:
                return

    def at_end(self) -> bool:
        """Nothing at all is left unread, not even part of a line. A loop that waits for the
        end of a run must not wait on this (a dead writer's torn line never completes): it
        stops when the run is final and `caught_up` is true."""
        try:
            return os.path.getsize(self.path) <= self.offset
        except OSError:
            return True


def read_all(path: Path, max_bytes: int = 8 << 20) -> Iterator[Event]:
    for batch in EventTail(path).read_batches(max_bytes):
        yield from batch
