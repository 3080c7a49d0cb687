"""Liveness, stop, races and leftovers of runs (issue 6, "Hangs", "Races and leftovers", SIGSTOP,
item 9): what a reader observes of a run's worker, and what `stop` does to one that does not
listen. Hand-made run directories and stand-in workers where a real one would only be slower;
real workers where the worker's own behaviour is the point (SIGSTOP, divergence, the lock race)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from helpers import (
    StubHooks,
    cli_cmd,
    cli_env,
    dead_pid,
    pid_gone,
    read_json,
    wait_until,
)
from torchdeck.errors import NoSpace
from torchdeck.fsutil import atomic_write_json
from torchdeck.models import specs
from torchdeck.options import FINAL_STATES
from torchdeck.procs import process_start_time, signal_group
from torchdeck.runs import store as store_mod
from torchdeck.runs.config import RunConfig
from torchdeck.runs.store import LOCK_NAME, Run, RunStore, Status, acquire_run_lock
from torchdeck.workspace import Workspace

HOST = socket.gethostname()


@pytest.fixture
def ws(tmp_path):
    w = Workspace.open(tmp_path / "ws")
    yield w
    # Stop what a failed test left running: launched workers only (hand-made runs have none).
    launched = [d for d in w.runs_dir.glob("*") if (read_json(d / "launch.json") or {}).get("pid")]
    for d in launched:
        if Run(d).observed_state() not in FINAL_STATES:
            Run(d).stop(grace=3, term_grace=2)


@pytest.fixture
def store(ws):
    return RunStore(ws)


def cli(ws, *args, timeout=60):
    return subprocess.run(cli_cmd("--workspace", str(ws.root), *args), env=cli_env(), capture_output=True,
                          text=True, timeout=timeout)


def set_state(run, state, **status):
    """Give a hand-made run the files its worker would have written in `state`."""
    st = Status(state=state, host=HOST, **status)
    atomic_write_json(run.path / "status.json", asdict(st))
    summ = run.summary()
    summ.state = state
    atomic_write_json(run.path / "summary.json", asdict(summ))


def write_events(run, lines, torn=b""):
    with open(run.events_path, "wb") as f:
        for rec in lines:
            f.write(json.dumps(rec).encode() + b"\n")
        f.write(torn)


EVENTS = [
    {"type": "started", "run_id": "x", "config": {}, "total_steps": 100, "steps_per_epoch": 10, "num_params": 1,
     "device": "cpu", "time": 0.0},
    {"type": "losses", "first_step": 1, "epoch": 1, "values": [0.5, 0.25, 0.125]},
]
ENDED = {"type": "ended", "state": "finished", "step": 3, "last_loss": 0.125, "message": ""}


def created_by_dead_launcher(ws, *, age: float = 0.0) -> Run:
    """A run made by a launcher process that ended before launching it (Ctrl-C, a full disk)."""
    code = ("import sys; from torchdeck.runs.store import RunStore; from torchdeck.runs.config import RunConfig;"
            "from torchdeck.workspace import Workspace;"
            "print(RunStore(Workspace.open(sys.argv[1])).create(RunConfig(model='builtin:linear')).id)")
    out = subprocess.run([sys.executable, "-c", code, str(ws.root)], capture_output=True, text=True, timeout=60,
                         env=cli_env())
    assert out.returncode == 0, out.stderr
    run = Run(ws.runs_dir / out.stdout.strip())
    if age:
        backdate(run, age)
    return run


def backdate(run, age):
    launch = read_json(run.path / "launch.json")
    launch["created"] -= age
    atomic_write_json(run.path / "launch.json", launch)


# -- runs created and never launched -------------------------------------------------------------
def test_never_launched_run_reads_failed_and_stop_returns_at_once(ws):
    run = created_by_dead_launcher(ws, age=60)
    t0 = time.monotonic()
    out = cli(ws, "runs", "stop", run.id[-4:], "--json")
    elapsed = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"id": run.id, "state": "failed"}
    assert "already failed: never started" in out.stderr and elapsed < 15, (out.stderr, elapsed)
    # Recorded, so every reader agrees without judging again.
    st = read_json(run.path / "status.json")
    assert st["state"] == "failed" and st["message"].startswith("never started")
    assert read_json(run.path / "summary.json")["state"] == "failed"
    listed = json.loads(cli(ws, "runs", "list", "--json").stdout)["runs"]
    assert [r["state"] for r in listed] == ["failed"]


def test_fresh_run_of_a_dead_launcher_waits_before_failing(ws, monkeypatch):
    run = created_by_dead_launcher(ws)
    assert run.liveness().state == "queued"  # a worker may be starting: give it time
    monkeypatch.setattr(store_mod, "NEVER_STARTED_LAUNCHER_GONE", 0.5)
    live = wait_until(lambda: (lv := run.liveness()).state != "queued" and lv, timeout=10, what="failed")
    assert live.state == "failed" and live.reason == "never started: its launcher ended before starting a worker"


def test_live_launcher_gets_longer_then_fails(store):
    run = store.create(RunConfig(model="builtin:linear"))  # the launcher is this process
    assert run.liveness().state == "queued"
    backdate(run, store_mod.NEVER_STARTED_AFTER + 5)
    live = run.liveness()
    assert live.state == "failed" and live.reason.startswith("never started: no worker was launched in 2m")


def test_run_without_launch_record_is_judged_by_its_age(store):
    run = store.create(RunConfig(model="builtin:linear"))
    (run.path / "launch.json").unlink()  # a run from before launch.json, or a damaged one
    summ = run.summary()
    summ.created -= 3600
    atomic_write_json(run.path / "summary.json", asdict(summ))
    assert run.observed_state() == "failed"


def test_launched_worker_that_died_before_its_lock_is_crashed(store):
    run = store.create(RunConfig(model="builtin:linear"))
    launch = read_json(run.path / "launch.json")
    launch.update(pid=dead_pid(), pid_start=None)
    atomic_write_json(run.path / "launch.json", launch)
    assert run.observed_state() == "crashed"


def test_launch_that_cannot_start_a_worker_fails_the_run(store, monkeypatch):
    run = store.create(RunConfig(model="builtin:linear"))

    def no_space(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod.subprocess, "Popen", no_space)
    with pytest.raises(NoSpace):
        store.launch(run)
    st = run.status()
    assert st.state == "failed" and st.message == "never started: its worker could not be started: No space left on device"
    assert run.summary().state == "failed"


def test_create_that_runs_out_of_space_leaves_nothing(store, monkeypatch):
    real = store_mod.atomic_write_json

    def full(path, obj, **kw):
        if Path(path).name == "summary.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, obj, **kw)

    monkeypatch.setattr(store_mod, "atomic_write_json", full)
    with pytest.raises(NoSpace):
        store.create(RunConfig(model="builtin:linear"), run_id="20260101-000000-full")
    assert store.runs() == [] and not (store.root / "20260101-000000-full").exists()


def test_stop_of_a_run_that_stays_queued_returns(store):
    run = store.create(RunConfig(model="builtin:linear"))  # our launcher lives and never launches
    said = []
    t0 = time.monotonic()
    assert run.stop(grace=0.5, say=said.append) == "queued"
    assert time.monotonic() - t0 < 5
    assert "still queued" in said[-1]


# -- status.json unreadable ----------------------------------------------------------------------
BAD_STATUS = [b"{", b"", b"[]", b'{"state": "exploded"}', b'{"state": "running", "step": "x"}', b"\xff\xfe"]


@pytest.mark.parametrize("bad", BAD_STATUS)
def test_unreadable_status_never_turns_a_finished_run_crashed(store, bad):
    run = store.create(RunConfig(model="builtin:linear"))
    set_state(run, "finished", step=3)
    write_events(run, EVENTS + [ENDED])
    (run.path / "status.json").write_bytes(bad)
    summary_before = (run.path / "summary.json").read_bytes()
    for _ in range(2):
        live = run.liveness()
        assert live.state == "finished" and "status.json is unreadable" in live.reason
    assert [s.state for s in store.summaries()] == ["finished"]
    assert run.stop() == "finished"
    assert (run.path / "status.json").read_bytes() == bad  # nothing written over it
    assert (run.path / "summary.json").read_bytes() == summary_before


def test_unreadable_status_and_torn_events_go_by_the_summary(store):
    run = store.create(RunConfig(model="builtin:linear"))
    set_state(run, "stopped")
    write_events(run, EVENTS, torn=b'{"type": "ended", "sta')
    (run.path / "status.json").write_text("{")
    assert run.observed_state() == "stopped"


def test_unreadable_status_with_no_final_word_is_crashed_but_not_recorded(store):
    run = store.create(RunConfig(model="builtin:linear"))
    set_state(run, "running", pid=dead_pid())
    write_events(run, EVENTS)
    (run.path / "status.json").write_text("{")
    live = run.liveness()
    assert live.state == "crashed" and "unreadable" in live.reason
    assert (run.path / "status.json").read_text() == "{"
    assert read_json(run.path / "summary.json")["state"] == "running"


def test_unreadable_status_of_a_live_worker_is_not_crashed(store):
    run = store.create(RunConfig(model="builtin:linear"))
    set_state(run, "running")
    (run.path / "status.json").write_text("{")
    with open(run.path / LOCK_NAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert run.observed_state() == "running"
    assert (run.path / "status.json").read_text() == "{"


# -- heartbeat and suspended workers -------------------------------------------------------------
def test_heartbeat_of_another_host_goes_stale_on_our_clock(store, monkeypatch):
    monkeypatch.setattr(store_mod, "HEARTBEAT_STALE_SECONDS", 0.3)
    run = store.create(RunConfig(model="builtin:linear"))
    atomic_write_json(run.path / "status.json", asdict(Status(state="running", host="elsewhere", heartbeat=7)))
    assert run.liveness() == store_mod.Liveness("running", False, "")  # first sight: no judgement yet
    live = wait_until(lambda: (lv := run.liveness()).heartbeat_stale and lv, timeout=5, what="stale")
    assert live.state == "running" and live.reason.startswith("no heartbeat for")
    atomic_write_json(run.path / "status.json", asdict(Status(state="running", host="elsewhere", heartbeat=8)))
    assert not run.liveness().heartbeat_stale  # it beat again


def test_stop_never_signals_a_pid_from_another_host(store, monkeypatch):
    monkeypatch.setattr(store_mod, "signal_group", lambda pid, sig: pytest.fail(f"signal {sig} sent to {pid}"))
    run = store.create(RunConfig(model="builtin:linear"))
    atomic_write_json(run.path / "status.json", asdict(Status(state="running", host="elsewhere", pid=os.getpid(),
                                                              pid_start=process_start_time(os.getpid()))))
    said = []
    assert run.stop(grace=0.3, say=said.append) == "running"
    assert read_json(run.path / "control.json")["request"] == "stop" and "runs on elsewhere" in said[0]


def test_a_hung_worker_on_this_host_is_running_with_a_stale_heartbeat(store, monkeypatch):
    monkeypatch.setattr(store_mod, "HEARTBEAT_STALE_SECONDS", 0.3)
    run = store.create(RunConfig(model="builtin:linear"))
    set_state(run, "running", pid=os.getpid(), pid_start=process_start_time(os.getpid()), heartbeat=3)
    with open(run.path / LOCK_NAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        live = wait_until(lambda: (lv := run.liveness()).heartbeat_stale and lv, timeout=5, what="stale")
        assert live.state == "running"


# -- the lock race -------------------------------------------------------------------------------
class Prober:
    """Probes runs' locks as fast as it can, as many readers at once would."""

    def __init__(self, dirs):
        self.dirs, self.probes, self._stop = dirs, 0, threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            for d in self.dirs():
                Run(d).writer_alive()
                self.probes += 1

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()


def test_a_probe_never_turns_the_lock_taker_away(store):
    run = store.create(RunConfig(model="builtin:linear"))
    takes = 0
    with Prober(lambda: [run.path]) as prober:
        while takes < 300 or prober.probes < 3000:
            lock = acquire_run_lock(run.path)
            assert lock is not None, f"turned away after {takes} takes, {prober.probes} probes"
            lock.close()
            takes += 1


def test_the_lock_waits_out_a_probe_but_not_a_writer(store):
    run = store.create(RunConfig(model="builtin:linear"))
    probe = open(run.path / LOCK_NAME, "rb")
    fcntl.flock(probe, fcntl.LOCK_SH)  # a reader that probes slowly
    threading.Timer(0.3, probe.close).start()
    lock = acquire_run_lock(run.path)
    assert lock is not None
    t0 = time.monotonic()
    assert acquire_run_lock(run.path, wait=0.3) is None  # a second writer is refused
    assert 0.25 < time.monotonic() - t0 < 5
    lock.close()


def test_real_workers_start_under_a_tight_prober(ws, store):
    cfg = dict(model="demo", epochs=1, dataset_size=256, batch_size=32, device="cpu",
               checkpoint_every_epoch=False, checkpoint_on_stop=False)
    with Prober(lambda: [r.path for r in store.runs()]) as prober:
        runs = []
        for i in range(3):
            c = RunConfig(**cfg, name=f"probed-{i}")
            c.model_spec = specs.resolve(c.model, ws).to_json()
            run = store.create(c)
            store.launch(run)
            runs.append(run)
            wait_until(lambda: run.status().state in FINAL_STATES, timeout=120, what=f"run {run.id} to end")
    assert prober.probes > 1000
    for run in runs:
        log = run.log_path.read_text()
        assert run.status().state == "finished" and "already has a worker" not in log, log


# -- stop: escalation, suspended workers ---------------------------------------------------------
STANDIN = textwrap.dedent("""
    import fcntl, os, signal, subprocess, sys, time
    run_dir, mark = sys.argv[1], sys.argv[2]
    def on_term(*_):
        with open(mark, "a") as f:
            f.write("TERM\\n")
    signal.signal(signal.SIGTERM, on_term)  # noted and ignored
    lock = open(os.path.join(run_dir, "lock"), "a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    child = subprocess.Popen([sys.executable, "-c",
                              "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    print(child.pid, flush=True)
    while True:
        time.sleep(0.05)
""")


def test_stop_escalates_to_sigkill_of_the_group_for_a_worker_that_ignores_sigterm(store, tmp_path):
    run = store.create(RunConfig(model="builtin:linear"))
    mark = tmp_path / "signals"
    standin = subprocess.Popen([sys.executable, "-c", STANDIN, str(run.path), str(mark)], stdout=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        child = int(standin.stdout.readline())
        set_state(run, "running", pid=standin.pid, pid_start=process_start_time(standin.pid), step=5)
        assert run.liveness() == store_mod.Liveness("running", False, "")
        said = []
        t0 = time.monotonic()
        state = run.stop(grace=1.0, term_grace=1.0, say=said.append)
        elapsed = time.monotonic() - t0
    finally:
        if standin.poll() is None:
            os.killpg(standin.pid, signal.SIGKILL)
        standin.wait()
    assert state == "stopped", said
    assert 2.0 <= elapsed < 15, elapsed
    assert read_json(run.path / "control.json")["request"] == "stop"  # asked first,
    assert mark.read_text() == "TERM\n"                                # then SIGTERM,
    assert standin.returncode == -signal.SIGKILL                        # then SIGKILL,
    wait_until(lambda: pid_gone(child), timeout=10, what="the worker's child to die")  # of the whole group
    st = run.status()
    assert st.state == "stopped" and st.message == "killed: the worker ignored the stop request and SIGTERM"
    assert run.summary().state == "stopped"
    assert any("SIGTERM" in s for s in said) and any("SIGKILL" in s for s in said)
    assert run.stop() == "stopped"


def test_signal_group_spares_a_group_the_pid_only_belongs_to():
    # A process in our own group (not its leader): signalling "its group" must not hit us.
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert os.getpgid(p.pid) == os.getpgid(0)
        signal_group(p.pid, signal.SIGTERM)
        assert p.wait(timeout=10) == -signal.SIGTERM
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def long_run(ws, store, name):
    cfg = RunConfig(model="demo", epochs=50, dataset_size=49152, device="cpu", name=name)
    cfg.model_spec = specs.resolve(cfg.model, ws).to_json()
    run = store.create(cfg)
    store.launch(run)

    def running():
        st = run.status()
        return st if st.state == "running" and st.pid and st.step > 0 else None

    return run, wait_until(running, timeout=120, what=f"run {run.id} to run ({run.log_path})")


def test_stop_of_a_suspended_worker(ws, store):
    run, st = long_run(ws, store, "suspended")
    os.killpg(st.pid, signal.SIGSTOP)
    try:
        # Every reader, a long-lived one or a one-shot command, says: running, heartbeat stale.
        live = wait_until(lambda: (lv := Run(run.path).liveness()).heartbeat_stale and lv, timeout=10,
                          what="the suspended worker to be seen")
        assert live.state in ("running", "saving") and "suspended (SIGSTOP)" in live.reason
        t0 = time.monotonic()
        out = cli(ws, "runs", "stop", "suspended", "--json", timeout=120)
        elapsed = time.monotonic() - t0
    finally:
        signal_group(st.pid, signal.SIGCONT)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"id": run.id, "state": "stopped"}
    assert "suspended" in out.stderr and "SIGCONT" in out.stderr and "killed after" in out.stderr
    assert elapsed < 25, (elapsed, out.stderr)
    final = run.status()
    assert final.state == "stopped" and final.message == "stop requested"
    from torchdeck.checkpoints import store as checkpoints

    latest = checkpoints.latest_complete(run.checkpoints_dir)
    assert latest is not None and latest.step == final.step


# -- hangs on a torn last line -------------------------------------------------------------------
def test_follow_ends_once_a_dead_worker_left_a_torn_line(ws, store):
    run = store.create(RunConfig(model="builtin:linear"))
    set_state(run, "running", pid=dead_pid(), step=3)
    write_events(run, EVENTS, torn=b'{"type":"losses","first_step":4,"epo')
    out = cli(ws, "runs", "tail", run.id, "--follow", timeout=60)
    assert out.returncode == 0, out.stderr
    assert "step 3 loss" in out.stdout
    # Recording the crash dropped the torn line, as a resumed writer would have.
    assert run.events_path.read_bytes().endswith(b"0.125]}\n")
    assert run.status().state == "crashed"


def test_follow_ends_on_a_recorded_crash_with_a_torn_line(ws, store):
    run = store.create(RunConfig(model="builtin:linear"))
    set_state(run, "crashed", step=3)  # recorded by an older version, torn line kept
    write_events(run, EVENTS, torn=b'{"type":"losses","first_step":4,"epo')
    try:
        out = cli(ws, "runs", "tail", run.id, "--follow", timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("runs tail --follow did not end")
    assert out.returncode == 0 and "step 3 loss" in out.stdout


def test_foreground_train_ends_when_its_worker_dies_mid_line(ws):
    proc = subprocess.Popen(cli_cmd("--workspace", str(ws.root), "train", "--model", "demo", "--epochs", "50",
                                    "--dataset-size", "49152", "--json"),
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def running():
            for d in ws.runs_dir.glob("*"):
                st = read_json(d / "status.json") or {}
                if st.get("state") == "running" and st.get("step", 0) > 0:
                    return Run(d), st
            return None

        run, st = wait_until(running, timeout=120, what="the run to be running")
        os.killpg(st["pid"], signal.SIGSTOP)  # so that nothing is appended after the torn line
        with open(run.events_path, "ab") as f:
            f.write(b'{"type":"losses","first_step":99999,"val')
        os.killpg(st["pid"], signal.SIGKILL)
        out, errs = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, errs
    assert json.loads(out)["state"] == "crashed"


# -- divergence (item 9) -------------------------------------------------------------------------
NAN_MODEL = textwrap.dedent("""
    import torch

    class BadAt(torch.nn.Module):
        \"\"\"A linear model whose output turns non-finite at training step `at` (1-based).\"\"\"

        def __init__(self, at=7, kind="nan"):
            super().__init__()
            self.lin = torch.nn.Linear(10, 20)
            self.at, self.kind, self.steps = at, kind, 0

        def forward(self, x):
            out = self.lin(x)
            if self.training and torch.is_grad_enabled():  # a training step, not a check or validation
                self.steps += 1
                if self.steps == self.at:
                    out = out + float(self.kind)
            return out
""")


def nan_config(tmp_path, at, kind, **kw) -> RunConfig:
    (tmp_path / "badat_model.py").write_text(NAN_MODEL)
    cfg = RunConfig(model="badat_model:BadAt", data="synthetic:regression", epochs=3, dataset_size=512,
                    batch_size=16, device="cpu", import_root=str(tmp_path), **kw)
    cfg.model_spec = specs.resolve(cfg.model, kwargs={"at": at, "kind": kind}).to_json()
    return cfg


@pytest.mark.parametrize("at,kind", [(7, "nan"), (40, "inf")])
def test_a_nonfinite_loss_at_a_known_step_ends_the_run_diverged(tmp_path, at, kind):
    pytest.importorskip("torch")
    from torchdeck.runs import events as ev
    from torchdeck.training.loop import Trainer

    hooks = StubHooks()
    outcome = Trainer(nan_config(tmp_path, at, kind, checkpoint_every_epoch=False), hooks).run()
    assert outcome.state == "diverged"
    assert outcome.message == f"loss became {kind} at step {at} (try a lower learning rate)"
    losses = [e for e in hooks.events if isinstance(e, ev.Losses)]
    values = [v for e in losses for v in e.values]
    assert all(v is not None for v in values[: at - 1])  # finite up to the step before
    assert values[at - 1] is None
    first_bad = next(e for e in losses if e.nonfinite)
    assert first_bad.first_step + first_bad.nonfinite[0][0] == at and first_bad.nonfinite[0][1] == kind


def test_a_worker_records_divergence(ws, store, tmp_path):
    pytest.importorskip("torch")
    from torchdeck.runs import events as ev

    run = store.create(nan_config(tmp_path, 45, "nan", name="diverging"))  # epoch 2 of 32-step epochs
    store.launch(run)
    state = wait_until(lambda: (s := run.observed_state()) in FINAL_STATES and s, timeout=120,
                       what=f"run {run.id} to end ({run.log_path})")
    assert state == "diverged", run.log_path.read_text()
    st = run.status()
    assert st.message == "loss became nan at step 45 (try a lower learning rate)"
    assert run.summary().state == "diverged"
    ended = list(ev.read_all(run.events_path))[-1]
    assert isinstance(ended, ev.Ended) and ended.state == "diverged" and "step 45" in ended.message
    out = cli(ws, "runs", "show", "diverging", "--json")
    assert json.loads(out.stdout)["state"] == "diverged"
