"""Worker processes, spawned for real through RunStore.create + launch.

Runs are shared between tests through module-scoped fixtures: one small run that finishes, one
long run that is paused, continued and stopped, and one long run that is killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from helpers import StubHooks, pid_gone, read_json, stop_leftover_runs, wait_until
from torchdeck.checkpoints import store as checkpoints
from torchdeck.models import specs
from torchdeck.options import FINAL_STATES
from torchdeck.runs import events as ev
from torchdeck.runs.config import RunConfig
from torchdeck.runs.store import RunStore
from torchdeck.workspace import Workspace

torch = pytest.importorskip("torch")

EPOCHS = 5  # 5 checkpoints written, 3 kept
ACTIVE = ("running", "saving")  # a long run saves a checkpoint every second or so
LONG = dict(epochs=50, dataset_size=49152)  # far longer than any test lets it run


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return Workspace.open(tmp_path_factory.mktemp("worker-ws"))


@pytest.fixture(scope="module")
def store(ws):
    yield RunStore(ws)
    stop_leftover_runs([ws.runs_dir])


def make_config(ws, **kw) -> RunConfig:
    base = dict(model="demo", epochs=2, dataset_size=2048, batch_size=16, seed=3, device="cpu")
    base.update(kw)
    cfg = RunConfig(**base)
    cfg.model_spec = specs.resolve(cfg.model, ws).to_json()
    return cfg


def start(store, cfg):
    run = store.create(cfg)
    store.launch(run)
    return run


def wait_running(run, timeout=60.0):
    def running():
        st = run.status()
        return st if st.state == "running" and st.pid and st.step > 0 else None

    return wait_until(running, timeout=timeout, what=f"run {run.id} to be running ({run.log_path})")


def wait_final(run, timeout=60.0) -> str:
    return wait_until(lambda: run.observed_state() if run.observed_state() in FINAL_STATES else None,
                      timeout=timeout, what=f"run {run.id} to end ({run.log_path})")


# -- a run that finishes ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished(ws, store):
    cfg = make_config(ws, epochs=EPOCHS, name="small")
    run = start(store, cfg)
    state = wait_final(run)
    assert state == "finished", run.log_path.read_text()
    wait_until(lambda: not run.writer_alive() and pid_gone(run.status().pid), timeout=30,
               what="the worker to exit")
    return run, cfg


def test_run_finishes(finished):
    run, cfg = finished
    assert run.observed_state() == "finished"
    assert not run.writer_alive()  # the lock went with the worker
    assert pid_gone(run.status().pid)
    assert f"run {run.id} finished" in run.log_path.read_text()


def test_one_loss_per_batch(finished):
    run, cfg = finished
    events = list(ev.read_all(run.events_path))
    started = events[0]
    assert isinstance(started, ev.Started) and started.run_id == run.id
    steps_per_epoch = -(-(cfg.dataset_size - cfg.dataset_size // 10) // cfg.batch_size)
    assert started.steps_per_epoch == steps_per_epoch
    assert started.total_steps == steps_per_epoch * EPOCHS
    losses = [e for e in events if isinstance(e, ev.Losses)]
    assert sum(len(e.values) for e in losses) == started.total_steps
    expected_first = 1
    for rec in losses:
        assert rec.first_step == expected_first
        assert rec.nonfinite == [] and all(isinstance(v, float) for v in rec.values)
        assert rec.epoch == (rec.first_step - 1) // steps_per_epoch + 1
        assert rec.epoch == (rec.last_step - 1) // steps_per_epoch + 1  # a chunk never spans epochs
        expected_first = rec.last_step + 1
    assert expected_first == started.total_steps + 1
    assert [e.epoch for e in events if isinstance(e, ev.EpochEnd)] == list(range(1, EPOCHS + 1))
    assert isinstance(events[-1], ev.Ended) and events[-1].state == "finished"
    assert events[-1].step == started.total_steps
    # Every line on disk is strict JSON.
    for line in run.events_path.read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in events.jsonl"))


def test_final_status_and_summary(finished):
    run, cfg = finished
    status = read_json(run.path / "status.json")
    total = status["total_steps"]
    assert total == next(ev.read_all(run.events_path)).total_steps
    assert status["state"] == "finished" and status["step"] == total and status["epoch"] == EPOCHS
    assert isinstance(status["last_loss"], float) and status["message"] == ""
    assert status["pid"] and status["host"]
    summary = read_json(run.path / "summary.json")
    assert summary["id"] == run.id and summary["name"] == "small" and summary["model"] == "demo"
    assert summary["state"] == "finished" and summary["step"] == total and summary["epoch"] == EPOCHS
    assert summary["epochs"] == EPOCHS and summary["total_steps"] == total
    assert summary["last_loss"] == status["last_loss"]
    assert isinstance(summary["best_val_loss"], float)
    assert summary["checkpoints"] == 3 and summary["ended"] >= summary["created"]


def test_retention_keeps_three(finished):
    run, cfg = finished
    found = checkpoints.list_checkpoints(run.checkpoints_dir)
    spe = found[-1].step // EPOCHS
    assert [c.step for c in found] == [3 * spe, 4 * spe, 5 * spe]
    assert [c.epoch for c in found] == [3, 4, 5]
    assert sorted(p.name for p in run.checkpoints_dir.iterdir()) == [c.name for c in found]  # no leftovers
    assert all(checkpoints.verify(c.path) == [] for c in found)
    assert {c.meta["reason"] for c in found} == {"epoch"}
    saved = [e for e in ev.read_all(run.events_path) if isinstance(e, ev.Checkpointed)]
    assert [e.epoch for e in saved] == list(range(1, EPOCHS + 1))


def test_latest_checkpoint_rebuilds_the_model(finished, ws):
    run, cfg = finished
    latest = checkpoints.latest_complete(run.checkpoints_dir)
    model, spec, info = checkpoints.load_model(latest.path, ws)
    assert spec.spec == "builtin:linear" and info.step == latest.step
    assert info.meta["run_config"]["seed"] == cfg.seed

    fresh = specs.build(specs.ModelSpec.from_json(latest.model_spec))
    fresh.load_state_dict(checkpoints.load_weights(latest.path))
    x = torch.randn(7, 10, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), fresh.eval()(x))

    # The same config trained in this process ends with the same weights.
    from torchdeck.training.loop import Trainer

    trainer = Trainer(RunConfig.from_json(cfg.to_json()), StubHooks(), checkpoints_dir=None)
    assert trainer.run().state == "finished"
    for k, v in trainer.model.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k  # same config and seed, same bits (CPU)

    state = torch.load(latest.path / "training_state.pt", weights_only=True)
    assert state["loop"]["step"] == latest.step and state["loop"]["epoch"] == EPOCHS


# -- pause, continue and stop ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def controlled(ws, store):
    run = start(store, make_config(ws, name="controlled", **LONG))
    wait_running(run)
    yield run
    if run.observed_state() not in FINAL_STATES:
        run.stop(grace=5, term_grace=2)


def test_second_worker_is_refused(controlled):
    out = subprocess.run([sys.executable, "-m", "torchdeck.runs.worker", str(controlled.path)], cwd=controlled.path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "already has a worker" in out.stderr
    assert controlled.observed_state() in ACTIVE


def test_pause_and_continue(controlled):
    run = controlled
    run.request("pause")
    wait_until(lambda: run.observed_state() == "paused", timeout=30, what="paused")
    st = run.status()
    # The heartbeat goes on while paused; the step does not.
    wait_until(lambda: run.status().heartbeat >= st.heartbeat + 2, timeout=10, what="two heartbeats")
    assert run.status().state == "paused" and run.status().step == st.step
    run.request("continue")
    wait_until(lambda: run.observed_state() in ACTIVE and run.status().step > st.step, timeout=30,
               what="running again")
    states = [e.state for e in ev.read_all(run.events_path) if isinstance(e, ev.StateChanged)]
    assert states[-2:] == ["paused", "running"]


def test_stop_request_stops_with_checkpoint(controlled):
    run = controlled
    assert run.observed_state() in ACTIVE
    assert run.stop(grace=30) == "stopped", run.log_path.read_text()
    st = run.status()
    assert st.state == "stopped" and st.message == "stop requested"
    events = list(ev.read_all(run.events_path))
    latest = checkpoints.latest_complete(run.checkpoints_dir)
    assert latest is not None and latest.step == st.step
    # A stop that lands right after an epoch's checkpoint keeps that one (same step, same weights).
    at_epoch_end = st.step % events[0].steps_per_epoch == 0
    assert latest.meta["reason"] == ("epoch" if at_epoch_end else "stop")
    assert isinstance(events[-1], ev.Ended) and events[-1].state == "stopped"
    assert any(isinstance(e, ev.Checkpointed) and e.reason == latest.meta["reason"] and e.step == st.step
               for e in events)
    # Every batch run so far is in the events, once.
    losses = [e for e in events if isinstance(e, ev.Losses)]
    assert sum(len(e.values) for e in losses) == st.step == losses[-1].last_step
    assert read_json(run.path / "summary.json")["state"] == "stopped"
    assert run.stop() == "stopped"  # stopping a stopped run is a no-op


# -- a worker that is killed -------------------------------------------------------------------------
def test_killed_worker_shows_as_crashed(ws, store):
    run = start(store, make_config(ws, name="killed", **LONG))
    pid = wait_running(run).pid
    os.killpg(pid, signal.SIGKILL)
    # A killed multi-threaded process is a zombie a moment before its last thread lets go of its
    # files: wait for the kernel to drop the lock, which is what readers go by.
    wait_until(lambda: pid_gone(pid) and not run.writer_alive(), timeout=30, what=f"worker {pid} to die")
    assert read_json(run.path / "status.json")["state"] == "running"  # it could not say otherwise

    listed = {s.id: s.state for s in store.summaries()}
    assert listed[run.id] == "crashed"
    assert run.observed_state() == "crashed"
    # Recorded, so every later reader agrees without asking the kernel.
    assert read_json(run.path / "status.json")["state"] == "crashed"
    assert read_json(run.path / "summary.json")["state"] == "crashed"
    assert run.stop() == "crashed"


def test_stop_right_after_launch(ws, store, monkeypatch):
    """A stop request made while the run is still queued is obeyed, not lost until SIGTERM."""
    import torchdeck.runs.store

    monkeypatch.setattr(torchdeck.runs.store, "signal_group", lambda pid, sig: pytest.fail(f"signal {sig} sent"))
    run = start(store, make_config(ws, name="early-stop", **LONG))
    assert run.stop(grace=60) == "stopped"
    assert run.status().message == "stop requested"
    latest = checkpoints.latest_complete(run.checkpoints_dir)
    assert latest is not None and latest.meta["reason"] == "stop"
