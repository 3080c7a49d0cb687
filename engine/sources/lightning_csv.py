"""Lightning `CSVLogger` folders (`lightning_logs/version_N/`): `metrics.csv` and `hparams.yaml`.

`metrics.csv` is appended row by row, and rewritten whole, with a wider header, when a metric
name first appears: the byte offset read so far and the header line are kept; a different header
(or a file shorter than the offset) means the file was rewritten, and it is read again from the
start. A torn last line waits for the rest. Each non-empty cell is a point at the row's `step`
(its row number when there is no step column); `epoch` is kept as a metric too. There is no wall
time. `hparams.yaml` is read with yaml.safe_load (never a Python object tag) as the run's config.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from torchdeck.sources import Batch, _read_bytes


def read(folder: Path, state: dict[str, Any]) -> Batch:
    batch = Batch()
    path = folder / "metrics.csv"
    offset = int(state.get("offset", 0))
    header = state.get("header")
    data = None
    if offset and header is not None:
        data = _read_after_header(path, offset, header)
        if data is None:  # rewritten (a new metric widened the header) or truncated: from the start
            offset, header = 0, None
            state["rows"] = 0
            batch.reset = True
    if data is None:
        offset, header = 0, None
        state["rows"] = 0
        data = _read_bytes(path, 0, "Lightning metrics file")
    end = data.rfind(b"\n")
    batch.pending = len(data) - (end + 1)
    if end < 0:
        state["offset"], state["header"] = offset, header
        _hparams(folder, state, batch)
        return batch
    text = data[: end + 1].decode("utf-8", "replace")
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error:
        rows = None
    # Lightning writes numbers and names, never a cell across lines: a row per line. Junk (a NUL,
    # a carriage return, a stray quote that would make a cell of every line after it): line by
    # line, the bad ones skipped, so the rows after the junk are still read.
    if rows is None or len(rows) != text.count("\n"):
        rows = []
        for line in text.split("\n")[:-1]:
            try:
                rows.extend(csv.reader([line.rstrip("\r")]))
            except csv.Error:
                rows.append(["\0"])  # counted below as a row of cells that are not numbers
    if header is None:
        if not rows:
            return batch
        header = text.split("\n", 1)[0].rstrip("\r")  # as written: compared byte for byte later
        rows = rows[1:]
    columns = next(csv.reader([header]))
    step_col = columns.index("step") if "step" in columns else None
    n = int(state.get("rows", 0))
    bad = 0
    for row in rows:
        if not row:
            continue
        n += 1
        step = n
        if step_col is not None and step_col < len(row) and row[step_col]:
            try:
                step = int(float(row[step_col]))
            except ValueError:
                bad += 1
                continue
        for name, cell in zip(columns, row):
            if not cell or name == "step":
                continue
            try:
                batch.add(name, step, float(cell))
            except ValueError:
                bad += 1
    if bad:
        batch.problems.append(f"{path}: {bad} cell(s) that are not numbers were skipped")
    state["offset"] = offset + end + 1
    state["header"] = header
    state["rows"] = n
    _hparams(folder, state, batch)
    return batch


def _read_after_header(path: Path, offset: int, header: str) -> bytes | None:
    """The bytes past `offset` when the file still starts with `header` and is that long; else None."""
    from torchdeck.sources import _read_bytes

    head = header.encode("utf-8")
    try:
        with open(path, "rb") as f:
            start = f.read(len(head) + 2)
            size = os.fstat(f.fileno()).st_size
            if size < offset or not (start.startswith(head + b"\n") or start.startswith(head + b"\r\n")):
                return None
            f.seek(offset)
            return f.read()
    except OSError:
        return _read_bytes(path, offset, "Lightning metrics file")  # raises the clear error


def _hparams(folder: Path, state: dict[str, Any], batch: Batch) -> None:
    path = folder / "hparams.yaml"
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        return
    if state.get("hparams_mtime") == mtime and not batch.reset:
        return
    state["hparams_mtime"] = mtime
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        batch.problems.append(f"cannot read {path}: {e.strerror or e}")
        return
    try:
        import yaml
    except ImportError:
        batch.params = {"hparams.yaml": text[:10000]}
        return
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        why = str(e).splitlines()[0]
        batch.problems.append(f"{path} is not plain YAML ({why}): shown as text")
        batch.params = {"hparams.yaml": text[:10000]}
        return
    batch.params = doc if isinstance(doc, dict) else {"hparams": doc}
