"""Logs people already have, read as read-only runs: TensorBoard event files, Hugging Face
`trainer_state.json`, Lightning `CSVLogger` `metrics.csv`, MLflow file stores.

Each reader is incremental: `read(path, state)` returns the points written since the state it is
given (a JSON-able dict it updates: per-file byte offsets, entries consumed, a CSV header) and
never consumes a torn last record (a file being written): the next read takes it whole. A source
that shrank or was replaced is read again from the start (`Batch.reset`). Source files are only
ever opened for reading.

`scan(root)` finds the runs under a directory (one per folder of event files, per Trainer output
folder, per `metrics.csv`, per MLflow run). torchdeck.sources.mirror turns each into a run
directory of the workspace, so every reader of runs (the run list, `runs show/export/tail`, the
monitor and its overlays) shows it like any other.

Nothing here imports tensorboard until an event file is read; without it, a clear message
names the extra to install.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torchdeck.errors import InvalidRequest, NotFound, Unreadable

# kind -> what it is, for people
KINDS: dict[str, str] = {
    "tensorboard": "TensorBoard event files",
    "huggingface": "Hugging Face trainer_state.json",
    "lightning": "Lightning CSVLogger metrics.csv",
    "mlflow": "MLflow file store",
}
EXTRA_HINT = "pip install 'torchdeck[logs]' (tensorboard and google-crc32c)"

# The source's name of the main training loss, first present wins (kept once chosen): its points
# become the run's "loss" (the monitor's main chart); every other name is kept as written.
MAIN_LOSS_KEYS = ("loss", "train_loss", "train/loss", "train_loss_step", "loss/train", "Loss/train", "training_loss",
                  "train/loss_step", "loss_step")

CHECKPOINT_DIR = re.compile(r"checkpoint-(\d+)$")


@dataclass
class Batch:
    """What one read found. points: name -> (steps, values, wall times or None each), in the
    order written. reset: the source was replaced or shrank, so these points start over from its
    beginning (the mirror is rebuilt). params: the run's settings when (re)read, else None.
    pending: bytes of a torn last record left for the next read."""

    points: dict[str, tuple[list[int], list[float], list[float | None]]] = field(default_factory=dict)
    params: dict[str, Any] | None = None
    name: str | None = None  # the source's own run name when it has one (MLflow)
    problems: list[str] = field(default_factory=list)
    reset: bool = False
    pending: int = 0
    # A training started again over the same folder (a new TensorBoard event file whose steps go
    # back): what the run recorded from this step on is replaced by these points, as TensorBoard
    # purges it (events.jsonl's `resumed` record).
    replaces_from: int | None = None
    more: bool = False  # the read stopped before such a file: read again for the rest

    def add(self, name: str, step: int, value: float, wall: float | None = None) -> None:
        cols = self.points.get(name)
        if cols is None:
            cols = self.points[name] = ([], [], [])
        cols[0].append(step)
        cols[1].append(value)
        cols[2].append(wall)

    @property
    def count(self) -> int:
        return sum(len(c[0]) for c in self.points.values())


@dataclass(frozen=True)
class Found:
    """One run found by a scan: its kind, the directory it lives in (its identity), a name."""

    kind: str
    path: Path
    name: str


@dataclass
class ScanResult:
    root: Path
    found: list[Found] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    dirs: int = 0  # directories looked at
    cancelled: bool = False


def _number(v: Any) -> float | None:
    """A JSON/CSV number as a float (bools are not numbers); None for anything else."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    return None


def _read_bytes(path: Path, offset: int, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read()
    except PermissionError as e:
        raise Unreadable(f"cannot read {what} {path}: {e.strerror}", field="path") from None
    except FileNotFoundError:
        raise NotFound(f"{what} {path} is gone", field="path") from None
    except IsADirectoryError:
        raise Unreadable(f"{what} {path} is a directory, not a file", field="path") from None
    except OSError as e:
        raise Unreadable(f"cannot read {what} {path}: {e.strerror or e}", field="path") from None


def kind_of_dir(names: set[str], subdirs: set[str]) -> list[str]:
    """The kinds of run a directory holds, from its entries' names alone (no file is opened)."""
    kinds = []
    if any("tfevents" in n for n in names):
        kinds.append("tensorboard")
    if "trainer_state.json" in names or any(CHECKPOINT_DIR.match(d) for d in subdirs):
        kinds.append("huggingface")
    if "metrics.csv" in names:
        kinds.append("lightning")
    if "meta.yaml" in names and "metrics" in subdirs:
        kinds.append("mlflow")
    return kinds


# An MLflow run's own folders, a Trainer's checkpoints: no further runs inside them.
_MLFLOW_SKIP = {"metrics", "params", "tags", "artifacts", "inputs", "outputs"}


def scan(root: str | os.PathLike, *, progress: Callable[[int, int], None] | None = None,
         cancelled: Callable[[], bool] | None = None, max_dirs: int = 1_000_000) -> ScanResult:
    """Every run under `root` (itself included), found by file names alone (os.scandir, symbolic
    links to folders not followed, hidden folders skipped). A folder that cannot be read is named
    in `problems` and skipped; the scan goes on. `progress(dirs, found)` is called every 200
    folders; `cancelled()` is asked as often and ends the scan early (`cancelled` set).

    A file given as root stands for its folder (an event file, a trainer_state.json, ...)."""
    root_path = Path(root).expanduser()
    try:
        root_path = root_path.resolve()
    except OSError:
        pass
    if not root_path.exists():
        raise NotFound(f"no such file or directory: {root_path}", field="path")
    if root_path.is_file():
        root_path = root_path.parent
    if not os.access(root_path, os.R_OK | os.X_OK):
        raise Unreadable(f"cannot read directory {root_path}: permission denied", field="path")
    result = ScanResult(root_path)
    hf_claimed: set[str] = set()
    stack = [root_path]
    while stack:
        d = stack.pop()
        result.dirs += 1
        if result.dirs % 200 == 0:
            if progress is not None:
                progress(result.dirs, len(result.found))
            if cancelled is not None and cancelled():
                result.cancelled = True
                break
        if result.dirs > max_dirs:
            result.problems.append(f"stopped after {max_dirs:,} folders under {root_path}")
            break
        names: set[str] = set()
        subdirs: set[str] = set()
        try:
            with os.scandir(d) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            subdirs.add(entry.name)
                        elif entry.is_file():
                            names.add(entry.name)
                    except OSError:
                        continue
        except PermissionError:
            result.problems.append(f"cannot read {d}: permission denied (skipped)")
            continue
        except OSError as e:
            result.problems.append(f"cannot read {d}: {e.strerror or e} (skipped)")
            continue
        kinds = kind_of_dir(names, subdirs)
        if str(d) in hf_claimed:
            kinds = [k for k in kinds if k != "huggingface"]
        for kind in kinds:
            if kind == "huggingface" and "trainer_state.json" not in names and not any(
                    (d / c / "trainer_state.json").is_file() for c in subdirs if CHECKPOINT_DIR.match(c)):
                continue  # checkpoint-N folders without a trainer state: not a Trainer's output
            if kind == "mlflow" and _mlflow_deleted(d):
                continue  # deleted in MLflow (kept on disk until garbage-collected): not listed
            result.found.append(Found(kind, d, _name(root_path, d)))
        skip: set[str] = set()
        if "huggingface" in kinds:
            for c in subdirs:
                if CHECKPOINT_DIR.match(c):
                    hf_claimed.add(str(d / c))  # its state is one copy of the folder's run
        if "mlflow" in kinds:
            skip |= _MLFLOW_SKIP
        for s in sorted(subdirs - skip, reverse=True):
            if s.startswith("."):
                continue  # .git, .trash (MLflow's deleted runs), .ipynb_checkpoints, ...
            stack.append(d / s)
    if progress is not None:
        progress(result.dirs, len(result.found))
    result.found.sort(key=lambda f: (str(f.path), f.kind))
    return result


def _mlflow_deleted(d: Path) -> bool:
    try:
        with open(d / "meta.yaml", "rb") as f:
            return b"lifecycle_stage: deleted" in f.read(1 << 16)
    except OSError:
        return False


def _name(root: Path, d: Path) -> str:
    """A run's name: its folder relative to the scanned one, prefixed by that one's name."""
    try:
        rel = d.relative_to(root)
    except ValueError:
        return d.name
    return root.name if str(rel) == "." else f"{root.name}/{rel}"


def read(kind: str, path: Path, state: dict[str, Any]) -> Batch:
    """The points of the run at `path` written since `state` (updated in place)."""
    if kind == "tensorboard":
        from torchdeck.sources import tensorboard_files as mod
    elif kind == "huggingface":
        from torchdeck.sources import trainer_state as mod
    elif kind == "lightning":
        from torchdeck.sources import lightning_csv as mod
    elif kind == "mlflow":
        from torchdeck.sources import mlflow_files as mod
    else:
        raise InvalidRequest(f"unknown source kind {kind!r} (known: {', '.join(KINDS)})", field="path")
    if not Path(path).is_dir():
        raise NotFound(f"{KINDS[kind]} folder {path} is gone (moved or deleted); the imported copy is kept",
                       field="path")
    return mod.read(Path(path), state)
