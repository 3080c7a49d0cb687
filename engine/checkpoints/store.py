"""torchdeck checkpoint directories: save (atomically), list, retention, latest, verify, and
rebuilding the model one was saved from. The formats themselves (this directory, safetensors
files, other people's torch files) are `torchdeck.checkpoints.formats`, independent of runs.

Listing reads meta.json and compares sizes; full hash verification is `verify`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from torchdeck import trust as gate
from torchdeck.errors import (
    InvalidRequest,
    NoSpace,
    NotFound,
    OperationFailed,
    from_os_error,
)
from torchdeck.fsutil import fsync_dir, fsync_path
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
) -> Path:
    """Write a checkpoint directory atomically, then apply retention (new before old)."""
    import torch
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    if final.exists():
        raise OperationFailed(f"checkpoint {final} already exists", code="exists")
    need = sum(t.numel() * t.element_size() for t in weights.values()) * 2 + (1 << 20)
    free = shutil.disk_usage(root).free
    if free < need:
        from torchdeck.fmt import fmt_bytes

        raise NoSpace(f"not enough free space for checkpoint {name}: {fmt_bytes(free)} free, "
                      f"about {fmt_bytes(need)} needed")
    tmp = root / f".{name}{TMP_MARK}{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        # Tied or shared tensors arrive as separate host copies (host_copy), so safetensors accepts them.
        save_file(weights, str(tmp / WEIGHTS), metadata={"format": "pt"})
        torch.save(training_state, tmp / TRAINING_STATE)
        files = {}
        for fname in (WEIGHTS, TRAINING_STATE):
            fsync_path(tmp / fname)
            files[fname] = {"size": (tmp / fname).stat().st_size, "sha256": torchdeck_dir.sha256(tmp / fname)}
        full_meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "torch_version": torch.__version__,
            "created": time.time(),
            **meta,
            "files": files,
        }
        with open(tmp / META, "w") as f:
            json.dump(full_meta, f, indent=1, sort_keys=True, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        os.rename(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep is not None:
        apply_retention(root, keep)
    return final


def apply_retention(root: Path, keep: int) -> list[Path]:
    """Keep the newest `keep` complete checkpoints; remove older ones (after the new one landed)."""
    complete = list_checkpoints(root)
    removed = []
    for info in complete[:-keep] if keep > 0 else complete:
        trash = info.path.with_name(f".{info.path.name}.removing-{os.getpid()}")
        os.rename(info.path, trash)
        shutil.rmtree(trash, ignore_errors=True)
        removed.append(info.path)
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


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Remove temporaries whose writer is dead (its pid is in the name)."""
    removed = []
    try:
        entries = list(Path(root).iterdir())
    except FileNotFoundError:
        return removed
    for p in entries:
        m = re.search(r"(?:\.tmp-|\.removing-)(\d+)$", p.name)
        if p.name.startswith(".") and m and not pid_alive(int(m.group(1)), None):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


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
