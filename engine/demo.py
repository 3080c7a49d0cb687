"""A demo workspace made by really training and exporting the demo model, in this process.

Used for the README's screenshots and the TUI's snapshot tests: with a fixed run id and a
step-counting clock, every figure on screen is the same from one build to the next.
"""

from __future__ import annotations

from pathlib import Path

from torchdeck.checkpoints import store as checkpoints
from torchdeck.errors import OperationFailed
from torchdeck.exports import onnx as exports
from torchdeck.models import specs
from torchdeck.runs.config import RunConfig
from torchdeck.runs.store import Run, RunStore
from torchdeck.runs.worker import execute
from torchdeck.runs.writer import take_lock
from torchdeck.workspace import Workspace


class StepClock:
    """A clock that advances a fixed tick per reading: run timings that repeat exactly."""

    def __init__(self, tick: float = 0.0002):
        self.t = 0.0
        self.tick = tick

    def __call__(self) -> float:
        self.t += self.tick
        return self.t


def make_demo_run(ws: Workspace, *, run_id: str = "20260101-120000-demo", epochs: int = 3,
                  dataset_size: int = 8192, export: bool = True) -> Run:
    cfg = RunConfig(model="demo", epochs=epochs, dataset_size=dataset_size, threads=1)
    cfg.model_spec = specs.resolve(cfg.model, ws).to_json()
    run = RunStore(ws).create(cfg, run_id=run_id)
    lock = take_lock(run)
    try:
        state = execute(run, clock=StepClock(), heartbeat=False)
    finally:
        lock.close()
    if state != "finished":
        raise OperationFailed(f"demo run {run.id} {state}")
    if export:
        latest = checkpoints.latest_complete(run.checkpoints_dir)
        exports.export_onnx(latest.path, exports.default_out(ws.exports_dir, latest), workspace=ws)
    return run


def make_demo_workspace(root: Path, **kwargs) -> Workspace:
    ws = Workspace(Path(root))
    ws.ensure()
    make_demo_run(ws, **kwargs)
    return ws
