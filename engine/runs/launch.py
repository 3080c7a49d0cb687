"""Starting a run, the one way the command line and the TUI both use: resolve the model spec,
record where the user's code comes from, check everything a worker would check first (so a
bad request is told where it was made), then create the run and start its worker."""

from __future__ import annotations

import os
import subprocess

from torchdeck import trust
from torchdeck.models import specs
from torchdeck.runs.config import RunConfig
from torchdeck.runs.store import Run, RunStore
from torchdeck.workspace import Workspace


def import_root(directory: str | None = None) -> tuple[str, str | None]:
    """The directory a user's modules are imported from, and its git commit when it is a checkout."""
    root = directory or os.getcwd()
    try:
        out = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return root, commit


def prepare(ws: Workspace, cfg: RunConfig, *, directory: str | None = None, standby=None) -> RunConfig:
    """Fill in the resolved spec and import root; raise InvalidRequest naming the first problem.
    `standby`: a standby worker (RunStore.start_standby) that runs the preflight, where torch is
    imported anyway (this process then never imports it); without one, or when it cannot tell,
    the preflight runs here."""

    cfg.validate()
    spec = specs.resolve(cfg.model, ws)
    cfg.model_spec = spec.to_json()
    cfg.import_root, cfg.import_root_commit = import_root(directory)
    cfg.model_import_root = str(trust.import_root_for(spec, ws, default=cfg.import_root))
    if cfg.init_from:
        from pathlib import Path

        cfg.init_from = str(Path(os.path.expanduser(cfg.init_from)).resolve())
    if cfg.data:
        from torchdeck.data import sources as data

        cfg.data = data.check_spec(cfg.data, import_root=cfg.import_root)  # a file's path made absolute
    if standby is None or not RunStore.check_with_standby(standby, cfg.to_json()):
        from torchdeck.training.loop import preflight

        preflight(cfg)
    return cfg


def start(ws: Workspace, cfg: RunConfig, *, directory: str | None = None) -> Run:
    prepare(ws, cfg, directory=directory)
    store = RunStore(ws)
    run = store.create(cfg)
    store.launch(run)
    return run
