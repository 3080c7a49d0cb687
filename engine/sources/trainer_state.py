"""Hugging Face Trainer output folders: `trainer_state.json` and its copies in `checkpoint-N/`.

The Trainer rewrites a whole JSON file at each save (never appends), and every copy's
`log_history` is the one before it plus what was logged since. Rule: the copy with the longest
`log_history` wins; on a tie the folder's own `trainer_state.json` (written by `save_state()` at the
end), then the highest checkpoint-N. The entries past those already imported are appended; when
the winner's history no longer starts with what was imported (the folder was reused for another
training), the run is read again from the start.

Each entry's numbers become points at its `step`: loss, learning_rate, grad_norm, epoch, eval_*
and the end-of-training summary (train_loss, train_runtime, ...). There is no wall time. A copy
that is not valid JSON (being written right now, or damaged) is passed over, and named.
`training_args.bin` is a pickle and is never opened.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torchdeck.sources import CHECKPOINT_DIR, Batch, _number


def candidates(folder: Path) -> list[tuple[Path, tuple[int, int]]]:
    """(file, tie-break rank) of every copy: the folder's own ranks above any checkpoint's."""
    out = []
    top = folder / "trainer_state.json"
    if top.is_file():
        out.append((top, (1, 0)))
    try:
        subdirs = [e.name for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)]
    except OSError:
        subdirs = []
    for name in subdirs:
        m = CHECKPOINT_DIR.match(name)
        if m and (folder / name / "trainer_state.json").is_file():
            out.append((folder / name / "trainer_state.json", (0, int(m.group(1)))))
    return out


def _signature(entry: Any) -> str:
    return json.dumps(entry, sort_keys=True, default=str)[:2000]


def _load(path: Path) -> tuple[dict | None, str | None]:
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except PermissionError as e:
        return None, f"cannot read {path}: {e.strerror} (skipped)"
    except OSError as e:
        return None, f"cannot read {path}: {e.strerror or e} (skipped)"
    except ValueError:
        return None, f"{path} is not valid JSON (being written, or damaged): passed over"
    if not isinstance(doc, dict) or not isinstance(doc.get("log_history"), list):
        return None, f"{path} holds no log_history list: not a Trainer state (passed over)"
    return doc, None


def read(folder: Path, state: dict[str, Any]) -> Batch:
    batch = Batch()
    seen: dict[str, list] = state.setdefault("files", {})  # name -> [size, mtime_ns, entries]
    docs: dict[Path, dict] = {}
    ranked = []
    for path, rank in candidates(folder):
        rel = str(path.relative_to(folder))
        try:
            stt = path.stat()
        except OSError:
            continue
        key = [stt.st_size, stt.st_mtime_ns]
        known = seen.get(rel)
        if known is None or known[:2] != key:
            doc, problem = _load(path)
            if doc is None:
                batch.problems.append(problem)
                seen.pop(rel, None)
                continue
            docs[path] = doc
            known = seen[rel] = [*key, len(doc["log_history"])]
        ranked.append((known[2], rank, path, rel))
    if not ranked:
        return batch
    entries, _, best, rel = max(ranked)
    doc = docs.get(best)
    if doc is None:
        doc, problem = _load(best)
        if doc is None:
            batch.problems.append(problem)
            return batch
    history = doc["log_history"]
    consumed = int(state.get("consumed", 0))
    if consumed and (len(history) < consumed or _signature(history[consumed - 1]) != state.get("last")):
        consumed = 0
        batch.reset = True
    for entry in history[consumed:]:
        if not isinstance(entry, dict):
            continue
        step = entry.get("step")
        if isinstance(step, bool) or not isinstance(step, int):
            continue
        for key, value in entry.items():
            if key == "step":
                continue
            v = _number(value)
            if v is not None:
                batch.add(key, step, v)
    state["consumed"] = len(history)
    state["last"] = _signature(history[-1]) if history else None
    state["file"] = rel
    if batch.reset or consumed == 0 or docs:
        batch.params = {k: v for k, v in doc.items() if k != "log_history"}
        batch.params["state_file"] = rel
    return batch
