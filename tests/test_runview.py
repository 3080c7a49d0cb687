"""RunView, RunWriter and the readers built on them, on hand-written run files: version 1 and 2
events, scalars, resumes, torn and malformed lines, dead workers, histories past 8 MiB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from helpers import cli_cmd, cli_env, dead_pid, wait_until
from torchdeck.fmt import fmt_duration
from torchdeck.runs import events as ev
from torchdeck.runs import view as run_view
from torchdeck.runs.config import RunConfig
from torchdeck.runs.store import Run, RunStore, Status
from torchdeck.runs.view import RunView
from torchdeck.runs.writer import RunWriter, take_lock
from torchdeck.workspace import Workspace


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace.open(tmp_path / "ws")


def line(record: dict) -> str:
    return json.dumps(record, separators=(",", ":")) + "\n"


def started(total: int = 10, epochs: int = 2, version: int = 1) -> dict:
    return {"type": "started", "run_id": "r", "config": {"model": "demo", "epochs": epochs}, "total_steps": total,
            "steps_per_epoch": total // epochs, "num_params": 10, "device": "cpu", "time": 0.0, "version": version}


def make_run(ws: Workspace, text: str, *, state: str = "finished", name: str = "", run_id: str | None = None) -> Run:
    """A run directory as a worker would have left it, with `text` as its events.jsonl."""
    run = RunStore(ws).create(RunConfig(model="demo", epochs=2, name=name), run_id=run_id)
    run.events_path.write_text(text)
    st = Status(state=state, pid=dead_pid(), host=os.uname().nodename, step=0, total_steps=10)
    (run.path / "status.json").write_text(json.dumps(vars(st)))
    return run


# -- the reducer, pure --------------------------------------------------------------------------------
V1_FILE = (line(started()) + line({"type": "losses", "first_step": 1, "epoch": 1, "values": [4.0, 3.0, None, 2.0, 1.0],
                                   "nonfinite": [[2, "inf"]]})
           + line({"type": "epoch", "epoch": 1, "step": 5, "train_loss": 2.5, "val_loss": 1.5, "seconds": 0.5})
           + line({"type": "checkpoint", "name": "step-00000005", "step": 5, "epoch": 1, "reason": "epoch"})
           + line({"type": "losses", "first_step": 6, "epoch": 2, "values": [0.9, 0.8, 0.7, 0.6, 0.5]})
           + line({"type": "epoch", "epoch": 2, "step": 10, "train_loss": 0.7, "val_loss": 0.6, "seconds": 0.5,
                   "val_accuracy": 0.75})
           + line({"type": "ended", "state": "finished", "step": 10, "last_loss": 0.5, "message": ""}))


def test_a_version_1_file_reads_whole(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(V1_FILE)
    view = RunView("r")
    view.feed(ev.read_all(path))
    assert (view.state, view.step, view.total_steps, view.epoch, view.epochs) == ("finished", 10, 10, 2, 2)
    assert view.last_loss == 0.5
    loss = view.metrics_json()["loss"]
    assert loss == {"count": 10, "last": 0.5, "min": 0.5, "max": 4.0, "nonfinite": 1}  # every batch counted
    assert [(v.epoch, v.val_loss, v.val_accuracy) for v in view.validation] == [(1, 1.5, None), (2, 0.6, 0.75)]
    assert view.best_val_loss == 0.6
    assert [(c.name, c.step) for c in view.checkpoints] == [("step-00000005", 5)]
    assert view.steps_per_second == pytest.approx(10.0)  # 10 steps over 1 s of epochs: the average
    assert view.rate_is_average and view.eta_seconds is None


def test_scalars_chunks_consecutive_and_sparse_with_nonfinite_values():
    dense = ev.Scalars.from_points("grad_norm", [1, 2, 3], [0.5, float("nan"), 0.25])
    sparse = ev.Scalars.from_points("lr", [1, 50], [0.1, 0.01])
    d, s = dense.to_json(), sparse.to_json()
    assert d == {"type": "scalars", "name": "grad_norm", "first_step": 1, "values": [0.5, None, 0.25],
                 "nonfinite": [[1, "nan"]]}
    assert s == {"type": "scalars", "name": "lr", "steps": [1, 50], "values": [0.1, 0.01]}
    assert ev.parse(json.loads(ev.dumps(dense))) == dense and ev.parse(json.loads(ev.dumps(sparse))) == sparse
    view = RunView()
    view.feed([dense, sparse, ev.Scalars.from_points("mine", [7], [float("-inf")])])
    m = view.metrics_json()
    assert m["grad_norm"] == {"count": 3, "last": 0.25, "min": 0.25, "max": 0.5, "nonfinite": 1}
    assert m["lr"] == {"count": 2, "last": 0.01, "min": 0.01, "max": 0.1, "nonfinite": 0}
    assert m["mine"] == {"count": 1, "last": None, "min": None, "max": None, "nonfinite": 1}


def test_a_resume_replaces_history_past_its_step(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(
        line(started(total=8))
        + line({"type": "losses", "first_step": 1, "epoch": 1, "values": [5.0, 4.0, 3.0, 2.0], "elapsed": 1.0})
        + line({"type": "epoch", "epoch": 1, "step": 4, "train_loss": 3.5, "val_loss": 3.0, "seconds": 1.0})
        + line({"type": "scalars", "name": "lr", "steps": [1], "values": [0.1]})
        + line({"type": "losses", "first_step": 5, "epoch": 2, "values": [100.0, 0.001, 0.002], "elapsed": 2.0})
        + line({"type": "scalars", "name": "grad_norm", "first_step": 5, "values": [9.0, 9.0, 9.0]})
        + line({"type": "epoch", "epoch": 2, "step": 7, "train_loss": 33.0, "val_loss": 0.0001, "seconds": 1.0})
        + line({"type": "checkpoint", "name": "step-00000007", "step": 7, "epoch": 2, "reason": "stop"})
        + line({"type": "ended", "state": "stopped", "step": 7, "last_loss": 0.002, "message": ""})
        # a second writer picks up from step 4's checkpoint: steps 5..7 are computed again
        + line({"type": "resumed", "step": 4})
        + line(started(total=8))
        + line({"type": "losses", "first_step": 5, "epoch": 2, "values": [1.5, 1.0, 0.5, 0.25], "elapsed": 0.5})
        + line({"type": "scalars", "name": "grad_norm", "first_step": 5, "values": [1.0, 1.0, 1.0, 2.0]}))
    view = RunView("r")
    view.feed(ev.read_all(path))
    loss = view.metrics["loss"]
    assert list(loss.steps) == list(range(1, 9))  # nothing counted twice
    assert view.metrics_json()["loss"] == {"count": 8, "last": 0.25, "min": 0.25, "max": 5.0, "nonfinite": 0}
    assert view.metrics_json()["grad_norm"] == {"count": 4, "last": 2.0, "min": 1.0, "max": 2.0, "nonfinite": 0}
    assert view.metrics_json()["lr"]["count"] == 1  # before the resume step: kept
    assert [v.epoch for v in view.validation] == [1] and view.best_val_loss == 3.0
    assert view.checkpoints == [] and view.ended is None
    assert (view.state, view.step, view.epoch, view.last_loss) == ("running", 8, 2, 0.25)
    assert view.revision == 1


def test_feeding_chunk_by_chunk_equals_reading_at_once(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(V1_FILE + line({"type": "resumed", "step": 6})
                    + line({"type": "losses", "first_step": 7, "epoch": 2, "values": [0.4, 0.3, 0.2, 0.1]}))
    whole = RunView("r")
    whole.feed(ev.read_all(path))
    tail = ev.EventTail(path)
    piecewise = RunView("r")
    reads = 0
    while True:
        piecewise.feed(tail.read_new(max_bytes=40))  # less than one line a read: lines are never split
        reads += 1
        if tail.caught_up:
            break
    assert reads > 5
    assert piecewise.to_json() == whole.to_json()
    assert whole.metrics_json()["loss"]["count"] == 10 and whole.last_loss == 0.1


def test_torn_and_malformed_lines_are_skipped(tmp_path):
    path = tmp_path / "events.jsonl"
    good = line({"type": "losses", "first_step": 1, "epoch": 1, "values": [1.0, 2.0]})
    path.write_text(good + "[1, 2]\n" + '"text"\n' + line({"type": "losses", "first_step": "x", "epoch": 1, "values": [1]})
                    + line({"type": "losses", "first_step": 3, "epoch": 1, "values": "abc"})
                    + line({"type": "scalars", "name": "lr", "steps": [1, 2], "values": [0.1]})
                    + line({"type": "losses", "first_step": 3, "epoch": 1, "values": [True, {"a": 1}]})
                    + '{"type":"losses","first_step":3,"epoch":1,"values":[3.0')  # torn by a dead writer
    tail = ev.EventTail(path)
    view = RunView()
    view.feed(tail.read_new())
    assert tail.caught_up and not tail.at_end()  # the torn line is not whole, and never will be
    assert view.metrics_json() == {"loss": {"count": 2, "last": 2.0, "min": 1.0, "max": 2.0, "nonfinite": 0}}


def test_a_field_of_the_wrong_type_skips_its_record_and_the_reader_goes_on(tmp_path):
    """Every field is checked against its type: a string where a reader does arithmetic ended the
    monitor (elapsed "x": a TypeError on the UI thread)."""
    path = tmp_path / "events.jsonl"
    bad = [{"type": "losses", "first_step": 3, "epoch": 1, "values": [1.0], "elapsed": "x"},
           {"type": "resumed", "step": None}, {"type": "state", "state": ["running"], "step": 3},
           {"type": "epoch", "epoch": 1, "step": 2, "train_loss": "low", "val_loss": None, "seconds": 1.0},
           {"type": "ended", "state": "finished", "step": 2.5, "last_loss": 1.0},
           {"type": "started", "run_id": 7, "config": {}, "total_steps": 2, "steps_per_epoch": 2, "num_params": 1,
            "device": "cpu", "time": 1.0},
           {"type": "checkpoint", "name": "c", "step": 2, "epoch": 1, "reason": "epoch", "bytes": "many"}]
    path.write_text(line({"type": "losses", "first_step": 1, "epoch": 1, "values": [1.0, 2.0], "elapsed": 1})
                    + "".join(line(r) for r in bad))
    tail = ev.EventTail(path)
    view = RunView()
    view.feed(tail.read_new())
    assert tail.corrupt == len(bad)
    assert view.metrics_json()["loss"]["count"] == 2 and view.step == 2 and not view.validation


def test_the_stdlib_reads_every_line_as_orjson_does(tmp_path, monkeypatch):
    """orjson decodes events (10x faster floats); a line it refuses goes to json, and without
    orjson json reads them all: the same events, the same skipped lines either way."""
    path = tmp_path / "events.jsonl"
    lines = [line({"type": "losses", "first_step": 1, "epoch": 1, "values": [0.1, None, 1e-300, 5e-324, -0.0],
                   "nonfinite": [[1, "nan"]], "elapsed": 0.5}),
             '{"type":"scalars","name":"\\ud800 lone surrogate","first_step":6,"values":[1.5]}\n',  # orjson refuses
             line({"type": "scalars", "name": "big", "first_step": 7, "values": [123456789012345678901234567890]}),
             '{"type":"losses","first_step":7,"epoch":1,"values":[1e400]}\n',  # beyond float64: json reads inf
             "not json\n", line({"type": "ended", "state": "finished", "step": 7, "last_loss": 0.1})]
    path.write_text("".join(lines))

    def read():
        tail = ev.EventTail(path)
        return tail.read_new(), tail.corrupt

    def shown(events):
        view = RunView()
        view.feed(events)
        return view.metrics_json(), {k: s.values_array().tolist() for k, s in view.metrics.items()}, view.state

    fast = read()
    monkeypatch.setattr(ev, "_orjson", None)
    slow = read()
    assert fast[1] == slow[1] == 1  # "not json"
    assert [type(e).__name__ for e in fast[0]] == [type(e).__name__ for e in slow[0]] == \
        ["Losses", "Scalars", "Scalars", "Losses", "Ended"]
    # a number past 64 bits is a float to orjson and an int to json: the same float once stored
    assert fast[0][2].values == [1.2345678901234568e+29] and slow[0][2].values == [123456789012345678901234567890]
    assert repr(fast[0][:2] + fast[0][3:]) == repr(slow[0][:2] + slow[0][3:])
    assert repr(shown(fast[0])) == repr(shown(slow[0]))  # (repr: NaN != NaN)


def test_heartbeat_staleness_is_judged_on_the_readers_clock():
    view = RunView("r")
    view.observe(status=Status(state="running", heartbeat=3), observed_state="running", now=100.0)
    view.observe(status=Status(state="running", heartbeat=3), observed_state="running", now=104.0)
    assert not view.heartbeat_stale and view.state == "running"
    view.observe(status=Status(state="running", heartbeat=3), observed_state="running", now=106.0)
    assert view.heartbeat_stale and view.stale_for == pytest.approx(6.0)
    assert view.state == "running"  # an observed condition, not a state
    view.observe(status=Status(state="running", heartbeat=4), observed_state="running", now=107.0)
    assert not view.heartbeat_stale
    view.observe(status=Status(state="crashed", heartbeat=4), observed_state="crashed", now=120.0)
    assert view.state == "crashed" and not view.heartbeat_stale  # a dead run is crashed, not stale


def test_steps_per_second_and_eta_come_from_the_writers_clock():
    view = RunView("r")
    view.feed([ev.Started("r", {"epochs": 10**20}, 10**21, 10, 1, "cpu", 0.0)])
    for i in range(1, 11):
        view.feed([ev.Losses(first_step=(i - 1) * 100 + 1, epoch=1, values=[1.0] * 100, elapsed=i * 0.5)])
    view.observe(observed_state="running")
    assert view.steps_per_second == pytest.approx(200.0)  # 100 steps every 0.5 s
    assert not view.rate_is_average
    assert view.eta_seconds == pytest.approx((10**21 - 1000) / 200.0)
    assert fmt_duration(view.eta_seconds) == "> 1 year"  # never 7752732547184624 h
    view.observe(observed_state="paused")
    assert view.eta_seconds is None


def test_state_from_events_alone_and_ended_wins_over_a_stale_status():
    view = RunView()
    assert view.state == "queued"
    view.feed([ev.Started("r", {}, 4, 4, 1, "cpu", 0.0)])
    assert view.state == "running"
    view.feed([ev.StateChanged("paused", 2)])
    assert view.state == "paused"
    view.observe(status=Status(state="running"), observed_state="running")
    view.feed([ev.Ended("diverged", 3, None, "loss became nan at step 3")])
    assert view.state == "diverged" and view.message == "loss became nan at step 3"


# -- the writer ----------------------------------------------------------------------------------------
def test_run_writer_owns_the_run_and_a_second_writer_resumes(ws):
    run = RunStore(ws).create(RunConfig(model="demo"))
    got = RunWriter.acquire(run)
    assert got is not None
    writer, lock = got
    assert RunWriter.acquire(run) is None and run.writer_alive()  # one writer a run
    writer.emit(ev.Started(run.id, {}, 6, 6, 1, "cpu", time.time()))
    writer.losses(1, 1, [3.0, 2.0, float("nan")])
    writer.scalars("lr", [1], [0.1])
    writer.start_heartbeat()
    wait_until(lambda: run.status().heartbeat >= 2, timeout=10, what="two heartbeats")
    writer.ended("stopped", 3, 2.0, "stop requested")
    lock.close()
    assert run.status().state == "stopped" and run.status().message == "stop requested"
    assert run.summary().state == "stopped"
    records = [json.loads(x) for x in run.events_path.read_text().splitlines()]
    assert [r["type"] for r in records] == ["started", "losses", "scalars", "ended"]
    assert records[1]["nonfinite"] == [[2, "nan"]] and "elapsed" in records[1]

    with open(run.events_path, "a") as f:
        f.write('{"type":"losses","first_st')  # torn by a crash
    writer2, lock2 = RunWriter.acquire(run, resume_step=2)
    writer2.losses(3, 1, [1.0, 0.5])
    writer2.ended("finished", 4, 0.5)
    lock2.close()
    view = run_view.load(run)
    assert [r["type"] for r in map(json.loads, run.events_path.read_text().splitlines())][-4:] == \
        ["ended", "resumed", "losses", "ended"]
    assert view.metrics_json()["loss"] == {"count": 4, "last": 0.5, "min": 0.5, "max": 3.0, "nonfinite": 0}
    assert (view.state, view.step) == ("finished", 4)


# -- readers of run directories ------------------------------------------------------------------------
def test_a_crashed_run_whose_file_ends_mid_line_is_final_for_every_reader(ws):
    """The torn-line hang: `train`'s progress and `runs tail --follow` must end."""
    run = make_run(ws, V1_FILE.rsplit("\n", 2)[0] + "\n" + '{"type":"epoch","epoch":2,"st', state="running")
    follower = run_view.RunFollower(run)
    wait_until(lambda: (follower.poll(), follower.done)[1], timeout=5, what="the follower to end")
    assert follower.view.state == "crashed"  # the lock is free: the worker is dead
    assert follower.view.metrics_json()["loss"]["count"] == 10

    from torchdeck.tui.cli.runs import _follow_progress

    t = threading.Thread(target=_follow_progress, args=(run,), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "train's progress loop never ended on a crashed run with a torn last line"

    out = subprocess.run(cli_cmd("--workspace", str(ws.root), "runs", "tail", run.id, "--follow"), env=cli_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "epoch 2 step 10 loss 0.5" in lines and lines[-2].startswith("epoch: epoch=2 step=10")
    assert lines[-1].startswith("ended: state=crashed step=10 last_loss=0.5") and "observed" in lines[-1]

    js = subprocess.run(cli_cmd("--workspace", str(ws.root), "runs", "tail", run.id, "--json"), env=cli_env(),
                        capture_output=True, text=True, timeout=60)
    last = json.loads(js.stdout.splitlines()[-1])
    assert last["type"] == "ended" and last["state"] == "crashed" and last["observed"] is True


def test_runs_tail_prints_a_history_past_8_mib_then_the_end(ws):
    steps = 500_000
    chunk = 1000
    with open(ws.root / "big.jsonl", "w") as f:
        f.write(line(started(total=steps, epochs=1)))
        for first in range(1, steps + 1, chunk):
            f.write(line({"type": "losses", "first_step": first, "epoch": 1,
                          "values": [1.0 / (s + 1) for s in range(first, first + chunk)]}))
        f.write(line({"type": "ended", "state": "finished", "step": steps, "last_loss": 1.0 / (steps + 1),
                      "message": ""}))
    text = (ws.root / "big.jsonl").read_text()
    assert len(text) > 10 << 20  # past the 8 MiB a single read used to stop at
    run = make_run(ws, text, name="big")
    out = subprocess.run(cli_cmd("--workspace", str(ws.root), "runs", "tail", "big"), env=cli_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == steps + 2
    assert lines[-2].startswith(f"epoch 1 step {steps} loss ")
    assert lines[-1].startswith(f"ended: state=finished step={steps}")
    assert run.id


def test_runs_show_json_keeps_the_contract_and_adds_metrics(ws):
    run = make_run(ws, V1_FILE + line({"type": "scalars", "name": "lr", "steps": [1], "values": [0.1]}), name="nice")
    out = subprocess.run(cli_cmd("--workspace", str(ws.root), "runs", "show", "nice", "--json"), env=cli_env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    for key in ("id", "name", "state", "step", "epoch", "last_loss", "checkpoints", "metrics"):
        assert key in doc
    assert (doc["id"], doc["name"], doc["state"], doc["step"], doc["epoch"], doc["last_loss"]) == \
        (run.id, "nice", "finished", 10, 2, 0.5)
    assert doc["metrics"]["loss"]["count"] == 10 and doc["metrics"]["lr"] == \
        {"count": 1, "last": 0.1, "min": 0.1, "max": 0.1, "nonfinite": 0}
    assert doc["checkpoints"] == []  # the events name step-00000005, the disk holds none: the disk is listed
    text = subprocess.run(cli_cmd("--workspace", str(ws.root), "runs", "show", run.id), env=cli_env(),
                          capture_output=True, text=True, timeout=60).stdout
    assert "loss           count 10  last 0.5  min 0.5  max 4  non-finite 1" in text


def test_runs_show_tells_a_stopped_workers_stale_heartbeat(ws):
    """A SIGSTOPped worker: the lock is held, the heartbeat stands still. The CLI says so, as the TUI does."""
    run = make_run(ws, line(started()), state="running")
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl,sys,time; f=open(sys.argv[1],'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(120)",
                               str(run.path / "lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        out = subprocess.run(cli_cmd("--workspace", str(ws.root), "runs", "show", run.id, "--json"), env=cli_env(),
                             capture_output=True, text=True, timeout=60)
        doc = json.loads(out.stdout)
        assert doc["state"] == "running" and doc["heartbeat_stale"] is True and doc["stale_for"] > 5
    finally:
        holder.kill()
        holder.wait()


def test_take_lock_is_exclusive(ws):
    run = RunStore(ws).create(RunConfig(model="demo"))
    a = take_lock(run)
    assert a is not None and take_lock(run) is None
    a.close()
    b = take_lock(run)
    assert b is not None
    b.close()
