"""torchdeck checkpoint directories: save (atomically), list, retention, latest, verify, and
rebuilding the model one was saved from. The formats themselves (this directory, safetensors
files, other people's torch files) are `torchdeck.checkpoints.formats`, independent of runs.

Listing reads meta.json and compares sizes; full hash verification is `verify`.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from torchdeck import trust as gate
from torchdeck.errors import (
    InvalidRequest,
    NotFound,
    OperationFailed,
    from_os_error,
)
from torchdeck.procs import pid_alive

from .formats import (  # noqa: F401  (the public names)
    CheckpointInfo,
    TensorInfo,
    inspect,
    load_weights,
    safetensors_file,
    torchdeck_dir,
)
from .formats.torchdeck_dir import (  # noqa: F401
    FORMAT,
    FORMAT_VERSION,
    META,
    TRAINING_STATE,
    WEIGHTS,
)
from .writer import CheckpointWriter, SaveResult, SaveTicket  # noqa: F401  (the background writer)

TMP_MARK = ".tmp-"
safetensors_header = safetensors_file.header


# -- writing -----------------------------------------------------------------------------------
def host_copy(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Copy weights to host memory at a step boundary: the only pause training sees."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state_dict.items()}


def save(
    root: Path,
    name: str,
    *,
    weights: dict[str, Any],
    training_state: dict[str, Any],
    meta: dict[str, Any],
    keep: int | None = None,
    keep_best: int = 0,
    best_metric: str | None = None,
) -> Path:
    """Write a checkpoint directory atomically, then apply retention (new before old): the
    background writer's code path (torchdeck.checkpoints.writer), run in the calling thread."""

    writer = CheckpointWriter(root, keep_last=keep, keep_best=keep_best, best_metric=best_metric)
    return writer.write_now(name, weights=weights, training_state=training_state, meta=meta).path


def apply_retention(root: Path, keep: int, *, keep_best: int = 0, best_metric: str | None = None) -> list[Path]:
    """Keep the newest `keep` complete checkpoints (and the best `keep_best` by `best_metric`);
    remove the others (after the new one landed)."""
    from .writer import apply_retention as _apply

    return _apply(root, keep, keep_best=keep_best, best_metric=best_metric)


# `.NAME.tmp-PID` (a checkpoint being written) and `.NAME.removing-PID` (one being deleted)
TEMP_RE = re.compile(r"(?:\.tmp-|\.removing-)(\d+)$")


def temporaries(root: Path) -> list[str]:
    """Names of the temporaries under `root` (one scandir; [] when it cannot be read)."""
    try:
        with os.scandir(root) as it:
            return [e.name for e in it if e.name.startswith(".") and TEMP_RE.search(e.name)]
    except OSError:
        return []


def remove_stale_temporaries(root: Path, *, writer_dead: bool = False) -> list[Path]:
    """Remove temporaries whose writer is dead. `writer_dead`: the caller holds the run's lock,
    so the run has no other writer and every `.tmp-` is dead whatever its pid; a `.removing-PID`
    (a reader's too, see Run.remove_dead_temporaries) and, without the lock, any temporary goes
    by the pid in its name. Never by age: a live save can take minutes."""
    removed = []
    for name in temporaries(root):
        pid = int(TEMP_RE.search(name).group(1))
        live = pid_alive(pid, None)  # this process's own too: its writer thread may be saving
        if live and not (writer_dead and TEMP_RE.search(name).group(0).startswith(TMP_MARK)):
            continue
        p = Path(root) / name
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def remove_checkpoint(path: Path, runs_dir: Path) -> None:
    """Remove one complete checkpoint of a run (`runs_dir/RUN/checkpoints/NAME`), as retention
    does: renamed away first (a reader never sees half a directory), then deleted. Anything else
    (a file or folder the user opened from elsewhere) is refused: the workspace does not own it."""
    path = Path(path)
    try:
        inside = path.resolve(strict=False).parent.parent.parent == Path(runs_dir).resolve() \
            and path.parent.name == "checkpoints" and not path.is_symlink()
    except OSError:
        inside = False
    if not inside:
        raise InvalidRequest(f"{path} is not a checkpoint of a run in this workspace; it is not removed",
                             field="path")
    if not os.path.lexists(path):
        raise NotFound(f"checkpoint {path} no longer exists (removed, perhaps by retention)", field="path")
    trash = path.with_name(f".{path.name}.removing-{os.getpid()}")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        raise NotFound(f"checkpoint {path} no longer exists (removed, perhaps by retention)", field="path") from None
    except OSError as e:
        raise from_os_error(e, f"cannot remove {path}", field="path") from None
    shutil.rmtree(trash, ignore_errors=True)


# -- reading -----------------------------------------------------------------------------------
def list_checkpoints(root: Path) -> list[CheckpointInfo]:
    """Complete checkpoints under `root`, oldest first (by step). Needs no torch. A directory
    that cannot be read is Unreadable (permissions), never "no checkpoints"."""
    out = []
    try:
        entries = [p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")]
    except FileNotFoundError:
        return out
    except OSError as e:
        raise from_os_error(e, f"cannot list checkpoints in {root}") from None
    for p in entries:
        meta = torchdeck_dir.complete_meta(p)
        if meta is not None:
            out.append(torchdeck_dir.info_from_meta(p, meta, with_tensors=False))
    out.sort(key=lambda c: (c.step or 0, c.meta.get("created", 0)))
    return out


def latest_complete(root: Path) -> CheckpointInfo | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def scripts_own_model(info) -> str | None:
    """The class name of the model a script's checkpoint (torchdeck.init's run.checkpoint) holds
    ("" when unnamed); None for any other checkpoint. Its model is the script's own: there is no
    spec to rebuild it from."""
    meta = info.meta if isinstance(info.meta, dict) else {}
    if meta.get("source") != "api" or meta.get("model_spec"):
        return None
    cls = meta.get("model_class")
    return cls if isinstance(cls, str) else ""


def load_model(path: Path, workspace=None, *, trust: bool = False):
    """Rebuild the model a torchdeck checkpoint was saved from, with its weights, in eval mode.

    Returns (model, ModelSpec, CheckpointInfo). The spec is built through the trust gate: a
    built-in, or a spec registered in `workspace` from its registered root; anything else is
    refused (UnsafeFile) unless trust is given. The run config's recorded import root is only
    used for an explicitly trusted, unregistered spec.
    """
    from torchdeck.models import specs

    info = inspect(path)
    if info.format != FORMAT:
        raise OperationFailed(f"{path}: a {info.format} file holds weights but no model spec to rebuild from",
                              field="checkpoint")
    cls = scripts_own_model(info)
    if cls is not None:
        what = f"a {cls}" if cls else "its model"
        raise InvalidRequest(f"{path} was saved by a script through torchdeck.init ({what}): it holds weights but "
                             "no model spec to rebuild from; give the model (--model SPEC)", field="model")
    try:
        spec = specs.ModelSpec.from_json(info.model_spec or {})
    except (TypeError, ValueError, InvalidRequest) as e:
        raise OperationFailed(f"{path}: its model spec is damaged: {e}", code="corrupt", field="checkpoint") from None
    recorded = (info.meta.get("run_config") or {}).get("import_root")
    recorded = recorded if isinstance(recorded, str) else None
    if gate.is_trusted(spec, workspace) or trust:  # an untrusted spec is refused by build_from_file below
        from .ops import check_spec_fits

        root = gate.import_root_for(spec, workspace, os.getcwd()) if gate.is_trusted(spec, workspace) \
            else (recorded or os.getcwd())
        check_spec_fits(spec, info, import_root=root)  # before allocating what meta.json claims
    model = gate.build_from_file(spec, workspace, trust=trust, recorded_root=recorded)
    try:
        model.load_state_dict(load_weights(info.path))
    except RuntimeError as e:
        raise OperationFailed(f"{path}: weights do not fit {spec.describe()}: {str(e).splitlines()[0]}",
                              code="corrupt", field="checkpoint") from None
    return model.eval(), spec, info


def verify(path: Path) -> list[str]:
    """Full hash check of a torchdeck checkpoint: the problems found (none: intact). One removed
    meanwhile (retention, `runs rm`) is NotFound ("no longer exists"), never reported as damage."""
    from .ops import hash_problems

    return hash_problems(Path(path))


def workspace_checkpoints(store) -> list[tuple[str, CheckpointInfo]]:
    """(run id, checkpoint) for every complete checkpoint of every run, newest run first."""
    out = []
    for run in store.runs():
        for info in reversed(list_checkpoints(run.checkpoints_dir)):
            out.append((run.id, info))
    return out
