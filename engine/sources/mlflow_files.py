"""MLflow file stores: `mlruns/<experiment>/<run>/` with `meta.yaml`, `metrics/<name>` (one line a
point, "timestamp value step", the timestamp in milliseconds; a name holding "/" is a path),
`params/<name>` and `tags/<name>` (the file's text is the value).

Each metric file's byte offset is kept; a torn last line waits; a file shorter than its offset was
rewritten and the run is read again from the start. The run's name is its `mlflow.runName` tag
(else meta.yaml's run_name, else its id); runs in `.trash` or marked deleted are not listed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torchdeck.sources import Batch

MAX_VALUE_BYTES = 64 << 10


def _files(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            p = Path(dirpath) / f
            out[p.relative_to(folder).as_posix()] = p
    return out


def _texts(folder: Path, batch: Batch) -> dict[str, str]:
    out = {}
    for name, p in sorted(_files(folder).items()):
        try:
            with open(p, "rb") as f:
                out[name] = f.read(MAX_VALUE_BYTES).decode("utf-8", "replace").strip()
        except OSError as e:
            batch.problems.append(f"cannot read {p}: {e.strerror or e} (skipped)")
    return out


def meta(folder: Path) -> dict[str, str]:
    """meta.yaml's top-level `key: value` lines (it is flat; no YAML library needed)."""
    out = {}
    try:
        text = (folder / "meta.yaml").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if line[:1].isspace() or ":" not in line:
            continue
        k, _, v = line.partition(":")
        out[k.strip()] = v.strip().strip("'\"")
    return out


def read(folder: Path, state: dict[str, Any]) -> Batch:
    batch = Batch()
    offsets: dict[str, int] = state.setdefault("files", {})
    files = _files(folder / "metrics")
    for name, p in files.items():
        off = offsets.get(name, 0)
        try:
            if off and p.stat().st_size < off:
                offsets.clear()
                batch.reset = True
                break
        except OSError:
            continue
    bad = 0
    for name, p in sorted(files.items()):
        off = offsets.get(name, 0)
        try:
            with open(p, "rb") as f:
                f.seek(off)
                data = f.read()
        except OSError as e:
            batch.problems.append(f"cannot read {p}: {e.strerror or e} (skipped)")
            continue
        end = data.rfind(b"\n")
        batch.pending += len(data) - (end + 1)
        if end < 0:
            continue
        for line in data[: end + 1].split(b"\n"):
            parts = line.split()
            if not parts:
                continue
            try:
                ts = int(parts[0])
                value = float(parts[1])
                step = int(parts[2]) if len(parts) > 2 else 0
            except (ValueError, IndexError):
                bad += 1
                continue
            batch.add(name, step, value, ts / 1000.0)
        offsets[name] = off + end + 1
    if bad:
        batch.problems.append(f"{folder / 'metrics'}: {bad} line(s) that are not 'timestamp value step' were skipped")
    # params, tags and meta.yaml are read again only when one of their files changed (a follower
    # reads the run four times a second; a run may hold hundreds of params)
    stamp = _stamp(folder)
    if stamp == state.get("stamp") and not batch.reset:
        batch.name = state.get("name")
        return batch
    state["stamp"] = stamp
    m = meta(folder)
    tags = _texts(folder / "tags", batch)
    params = _texts(folder / "params", batch)
    sig = [sorted(params.items()), sorted(tags.items()), sorted(m.items())]
    if sig != state.get("params_sig") or batch.reset:
        state["params_sig"] = sig
        batch.params = {**params}
        batch.params["mlflow"] = {"tags": tags, "run_id": m.get("run_id", folder.name),
                                  "experiment_id": m.get("experiment_id", folder.parent.name),
                                  "status": m.get("status", ""), "lifecycle_stage": m.get("lifecycle_stage", "")}
        exp = meta(folder.parent).get("name")
        if exp:
            batch.params["mlflow"]["experiment"] = exp
    batch.name = state["name"] = tags.get("mlflow.runName") or m.get("run_name") or None
    return batch


def _stamp(folder: Path) -> list:
    """(name, size, mtime) of meta.yaml and every params/ and tags/ file: what says they changed."""
    out = []
    for sub in ("params", "tags"):
        for name, p in sorted(_files(folder / sub).items()):
            try:
                st = p.stat()
            except OSError:
                continue
            out.append([f"{sub}/{name}", st.st_size, st.st_mtime_ns])
    try:
        st = (folder / "meta.yaml").stat()
        out.append(["meta.yaml", st.st_size, st.st_mtime_ns])
    except OSError:
        pass
    return out
