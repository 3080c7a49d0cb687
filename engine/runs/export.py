"""Every point of every metric of a run, for `torchdeck runs export` (and anyone's script).

A run's history is its events.jsonl, read through torchdeck.runs.events' reader. What is
exported is what every reader shows (RunView): a `resumed` record replaces the history past its
step, so a recomputed step appears once, with its later value. That needs to know, for each
record, the resume points written after it: a first pass finds only those (it parses just the
lines that mention "resumed"), the second streams the points.

- CSV, long format, streamed a chunk of the file at a time (memory does not grow with the run):
  `metric,step,value,time`, rows in the order they were recorded. A non-finite value is
  written as its reason (`nan`, `inf`, `-inf`; empty when the record gave none). `time` is the
  training seconds since the run first started at the copy-out of the chunk that holds the
  point (the writer's own clock: one chunk's resolution, about 0.1-0.25 s; a resumed run's
  clock continues where its previous writer's stopped); empty where the file has no clock
  (version 1 files). A scalars record that carries its own `elapsed` (one imported from another
  tool's logs) gives that: the wall time of the record's last point, since the run's first.
- JSON: `{"run": id, "metrics": {name: {"steps": [...], "values": [...]}}}`, a non-finite
  value as null with `"nonfinite": [[index, reason], ...]` beside it (as in the events format).
  Points are gathered in compact arrays (16 bytes a point), then written in chunks.

Values are exactly as written (floats round-trip through repr). Lines that are not records
(not JSON, not an object, a known record of the wrong shape) are skipped and counted; a torn
last line (a writer mid-line, or dead) is ignored.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO, TypeVar

from torchdeck.errors import from_os_error
from torchdeck.runs import events as ev

CHUNK_BYTES = 1 << 20  # of events.jsonl read and written at a time
CSV_HEADER = "metric,step,value,time\n"
_EPOCH_METRICS = ("val_loss", "val_accuracy")  # also in version 1 files' epoch records

T = TypeVar("T")


@dataclass
class ExportStats:
    """What an export found: points per metric, lines skipped, resumes applied."""
    points: dict[str, int] = field(default_factory=dict)
    corrupt_lines: int = 0
    resumes: int = 0
    torn_tail: bool = False  # a last line without its newline was left out

    def to_json(self) -> dict[str, Any]:
        return {"points": self.points, "corrupt_lines": self.corrupt_lines, "resumes": self.resumes,
                "torn_tail": self.torn_tail}


@dataclass
class Block:
    """Consecutive points of one metric from one record (after the resume rule)."""
    metric: str
    steps: list[int]
    values: list[float | int | None]
    reasons: dict[int, str]  # index in values -> "nan"|"inf"|"-inf", for the nulls
    time: float | None


def _whole_lines(path: Path, end: int) -> Iterator[bytes]:
    """The file's lines up to byte `end` (a line boundary), split as EventTail splits them."""
    with open(path, "rb") as f:
        rest = b""
        left = end
        while left > 0:
            data = f.read(min(CHUNK_BYTES, left))
            if not data:
                break
            left -= len(data)
            data = rest + data
            cut = data.rfind(b"\n") + 1
            rest = data[cut:]
            yield from data[:cut].splitlines()


def _snapshot_end(path: Path) -> tuple[int, bool]:
    """(the byte just past the last whole line now, whether something follows it)."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        return 0, False  # a run that has not started yet: no history
    with open(path, "rb") as f:
        pos = size
        while pos > 0:
            start = max(0, pos - (64 << 10))
            f.seek(start)
            data = f.read(pos - start)
            i = data.rfind(b"\n")
            if i >= 0:
                end = start + i + 1
                return end, end < size
            pos = start
    return 0, size > 0


def resume_steps(path: Path, end: int) -> list[int]:
    """The steps of the file's `resumed` records up to byte `end`, in order (the first pass:
    only lines that mention them are parsed)."""
    out = []
    for line in _whole_lines(path, end):
        if b"resumed" not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        e = ev.parse(record) if isinstance(record, dict) else None
        if isinstance(e, ev.Resumed):
            out.append(e.step)
    return out


def blocks(path: Path, stats: ExportStats | None = None) -> Iterator[list[Block]]:
    """Every kept point of every metric, one list of Blocks per chunk of the file read."""
    path = Path(path)
    stats = stats if stats is not None else ExportStats()
    end, stats.torn_tail = _snapshot_end(path)
    if end == 0:
        return  # no whole line yet (or no file: a run not started)
    resumes = resume_steps(path, end)
    stats.resumes = len(resumes)
    # limits[k]: a point written after k resume records survives the later ones iff step <= limits[k]
    limits = [math.inf] * (len(resumes) + 1)
    for k in range(len(resumes) - 1, -1, -1):
        limits[k] = min(resumes[k], limits[k + 1])
    seen = 0
    offset = 0.0  # the earlier writers' seconds
    writer_last: float | None = None  # this writer's latest chunk clock
    writers = 0
    scalars_seen: set[str] = set()
    epoch_points: dict[int, tuple[int, float | None, float | None, float | None, int]] = {}
    tail = ev.EventTail(path)
    while tail.offset < end:
        before = tail.offset
        batch = tail.read_new(max(1, min(CHUNK_BYTES, end - tail.offset)))
        if tail.offset == before:
            break  # the file changed under us (truncated): what was read is all there is
        out: list[Block] = []
        for e in batch:
            if isinstance(e, ev.Resumed):
                seen += 1
                continue
            limit = limits[min(seen, len(resumes))]
            if isinstance(e, ev.Started):
                writers += 1
                if writers > 1 and writer_last is not None:
                    offset += writer_last
                writer_last = None
            elif isinstance(e, ev.Losses):
                if e.elapsed is not None:
                    writer_last = float(e.elapsed)
                block = _block("loss", list(range(e.first_step, e.first_step + len(e.values))), e.values,
                               e.nonfinite, limit, _time(offset, writer_last))
                if block is not None:
                    out.append(block)
            elif isinstance(e, ev.Scalars):
                scalars_seen.add(e.name)
                own = e.elapsed is not None and math.isfinite(e.elapsed)  # an imported record keeps its times
                block = _block(e.name, e.step_list(), e.values, e.nonfinite, limit,
                               _time(offset, float(e.elapsed) if own else writer_last))
                if block is not None:
                    out.append(block)
            elif isinstance(e, ev.EpochEnd) and e.step <= limit:
                # a resume into an epoch's end records it again: the later one stands (as RunView)
                epoch_points[e.epoch] = (e.step, e.val_loss, e.val_accuracy, _time(offset, writer_last), seen)
        stats.corrupt_lines = tail.corrupt
        for b in out:
            stats.points[b.metric] = stats.points.get(b.metric, 0) + len(b.steps)
        if out:
            yield out
    # Version 1 files carry validation only in epoch records: those, where no scalars did.
    tail_blocks = []
    for i, name in enumerate(_EPOCH_METRICS):
        if name in scalars_seen:
            continue
        pts = [(step, vals[i], t) for step, *vals, t, k in sorted(epoch_points.values())
               if vals[i] is not None and step <= limits[min(k, len(resumes))]]
        for step, v, t in pts:
            tail_blocks.append(Block(name, [step], [v], {}, t))
            stats.points[name] = stats.points.get(name, 0) + 1
    if tail_blocks:
        yield tail_blocks


def _time(offset: float, last: float | None) -> float | None:
    return None if last is None else round(offset + last, 4)


def _block(name, steps, values, nonfinite, limit, time) -> Block | None:
    reasons = {}
    for item in nonfinite or ():
        if isinstance(item, list) and len(item) == 2 and isinstance(item[0], int):
            reasons[item[0]] = str(item[1])
    if steps and steps[-1] > limit:  # a later resume replaced some of these
        keep = [i for i, s in enumerate(steps) if s <= limit]
        if not keep:
            return None
        reasons = {j: reasons[i] for j, i in enumerate(keep) if i in reasons}
        steps, values = [steps[i] for i in keep], [values[i] for i in keep]
    elif not steps:
        return None
    return Block(name, steps, values, reasons, time)


def _csv_field(text: str) -> str:
    if any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def write_csv(path: Path, out: TextIO) -> ExportStats:
    """The run's points as CSV on `out`, written a chunk at a time."""
    stats = ExportStats()
    out.write(CSV_HEADER)
    for chunk in blocks(path, stats):
        lines = []
        for b in chunk:
            head = _csv_field(b.metric) + ","
            t = "" if b.time is None else repr(b.time)
            tail = "," + t + "\n"
            if b.reasons or None in b.values:
                lines += [f"{head}{s},{b.reasons.get(i, '') if v is None else repr(v)}{tail}"
                          for i, (s, v) in enumerate(zip(b.steps, b.values))]
            else:
                lines += [f"{head}{s},{v!r}{tail}" for s, v in zip(b.steps, b.values)]
        out.write("".join(lines))
    return stats


def write_json(path: Path, out: TextIO, run_id: str) -> ExportStats:
    """`{"run": id, "metrics": {name: {"steps", "values"[, "nonfinite"]}}}` on `out`."""
    stats = ExportStats()
    series: dict[str, tuple[array, array, list[list[Any]]]] = {}
    for chunk in blocks(path, stats):
        for b in chunk:
            steps, values, bad = series.setdefault(b.metric, (array("q"), array("d"), []))
            base = len(values)
            steps.extend(b.steps)
            values.extend(math.nan if v is None else float(v) for v in b.values)
            for i, v in enumerate(b.values):
                if v is None:
                    bad.append([base + i, b.reasons.get(i, "")])
    out.write('{"run": ' + json.dumps(run_id) + ', "metrics": {')
    for n, (name, (steps, values, bad)) in enumerate(series.items()):
        out.write((", " if n else "") + json.dumps(name) + ': {"steps": [')
        _write_numbers(out, steps, str)
        out.write('], "values": [')
        _write_numbers(out, values, lambda v: "null" if v != v else repr(v))
        out.write("]")
        if bad:
            out.write(', "nonfinite": ' + json.dumps(bad, separators=(",", ":")))
        out.write("}")
    out.write("}}\n")
    return stats


def _write_numbers(out: TextIO, arr: array, fmt: Callable[[Any], str], chunk: int = 1 << 16) -> None:
    for i in range(0, len(arr), chunk):
        out.write(("," if i else "") + ",".join(map(fmt, arr[i:i + chunk])))


def write_atomic(path: Path, write: Callable[[TextIO], T]) -> T:
    """Run `write(file)` into a temporary sibling of `path`, fsync it, rename it over `path`
    and fsync the directory: a failure leaves no half-written file under the final name. An
    unwritable place is a TorchdeckError with field "out"."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise from_os_error(e, f"cannot write {path}", field="out") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            result = write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise from_os_error(e, f"cannot write {path}", field="out") from None
        raise
    with contextlib.suppress(OSError):
        from torchdeck.fsutil import fsync_dir

        fsync_dir(path.parent)
    return result
