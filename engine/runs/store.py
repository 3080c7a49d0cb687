"""The run store: one directory a run, written by its worker process, watched by everyone else.

runs/<id>/config.json    what was asked (written once, before the worker starts)
runs/<id>/status.json    replaced by the worker: state, pid, start time, host, heartbeat, step
runs/<id>/summary.json   what the run list needs, so listing does not parse histories
runs/<id>/events.jsonl   appended by the worker (see torchdeck.runs.events)
runs/<id>/control.json   written by the TUI or CLI: pause, continue, stop
runs/<id>/worker.log     the worker's stdout and stderr
runs/<id>/checkpoints/   one directory a checkpoint (see torchdeck.checkpoints.store)
"""

from __future__ import annotations

import fcntl
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from torchdeck.errors import InvalidRequest, OperationFailed
from torchdeck.fsutil import atomic_write_json, read_json
from torchdeck.options import FINAL_STATES
from torchdeck.procs import pid_alive, process_start_time, signal_group
from torchdeck.runs.config import RunConfig
from torchdeck.workspace import Workspace

LOCK_NAME = "lock"


@dataclass
class Status:
    state: str = "queued"
    pid: int | None = None
    pid_start: int | None = None  # /proc/<pid>/stat start time: a pid is trusted only with it
    host: str = ""
    heartbeat: int = 0
    step: int = 0
    epoch: int = 0
    total_steps: int = 0
    last_loss: float | None = None
    message: str = ""

    @classmethod
    def from_json(cls, d: Any) -> "Status | None":
        if not isinstance(d, dict):
            return None
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class Summary:
    id: str
    name: str
    model: str
    state: str
    created: float
    step: int = 0
    epoch: int = 0
    total_steps: int = 0
    epochs: int = 0
    last_loss: float | None = None
    best_val_loss: float | None = None
    checkpoints: int = 0
    ended: float | None = None

    @classmethod
    def from_json(cls, d: Any) -> "Summary | None":
        if not isinstance(d, dict) or "id" not in d:
            return None
        try:
            return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
        except TypeError:
            return None



class Run:
    """A view of one run directory."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.id = self.path.name

    # files
    @property
    def events_path(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def log_path(self) -> Path:
        return self.path / "worker.log"

    def config(self) -> RunConfig:
        d = read_json(self.path / "config.json")
        if not isinstance(d, dict):
            raise OperationFailed(f"run {self.id}: config.json is missing or corrupt")
        return RunConfig.from_json(d)

    def status(self) -> Status:
        return Status.from_json(read_json(self.path / "status.json")) or Status(state="queued")

    def summary(self) -> Summary | None:
        return Summary.from_json(read_json(self.path / "summary.json"))

    # liveness
    def writer_alive(self) -> bool:
        """True while some process holds the run's lock (only its worker ever does)."""
        lock = self.path / LOCK_NAME
        if not lock.exists():
            return False
        with open(lock, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False

    def observed_state(self, status: Status | None = None) -> str:
        """The state as the files say, corrected for a worker that died without saying so.

        On this host the lock tells: a worker holds it until it exits, and the kernel drops it
        when the worker dies, however it dies. A queued run whose launcher-recorded pid is gone
        never started. `status`: one the caller has just read, to spare a second read.
        """
        st = status or self.status()
        if st.state in FINAL_STATES:
            return st.state
        if st.host and st.host != socket.gethostname():
            return st.state  # another machine's worker: only the heartbeat can tell (see Liveness)
        if self.writer_alive():
            return st.state
        if st.state == "queued":
            launch = read_json(self.path / "launch.json")
            if launch is None or pid_alive(launch.get("pid"), launch.get("pid_start")):
                return "queued"  # not launched yet, or launched and not yet holding the lock
        # Nothing holds the lock now; look again in case the worker exited cleanly meanwhile.
        st = self.status()
        if st.state in FINAL_STATES:
            return st.state
        self._mark_crashed(st)
        return "crashed"

    def _mark_crashed(self, st: Status) -> None:
        """Record a crash so that every later reader agrees, under the lock so no worker races us."""
        lock = self.path / LOCK_NAME
        try:
            with open(lock, "a") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return
                cur = self.status()
                if cur.state in FINAL_STATES:
                    return
                cur.state = "crashed"
                cur.message = "the worker process ended without recording a final state"
                atomic_write_json(self.path / "status.json", asdict(cur), durable=False)
                summ = self.summary()
                if summ is not None:
                    summ.state = "crashed"
                    atomic_write_json(self.path / "summary.json", asdict(summ), durable=False)
        except OSError:
            pass

    # control
    def request(self, action: str) -> None:
        if action not in ("pause", "continue", "stop"):
            raise InvalidRequest(f"unknown control request {action!r}")
        prev = read_json(self.path / "control.json") or {}
        seq = int(prev.get("seq", 0)) + 1 if isinstance(prev, dict) else 1
        atomic_write_json(self.path / "control.json", {"request": action, "seq": seq, "time": time.time()})

    def stop(self, *, grace: float = 30.0, term_grace: float = 5.0) -> str:
        """Stop request, then SIGTERM, then SIGKILL of the worker's process group. Returns the final state."""
        state = self.observed_state()
        if state in FINAL_STATES:
            return state
        # A worker ignores requests older than itself (they are history on resume), so a request
        # written while the run is still queued would be lost: wait until its worker is up.
        started = time.monotonic()
        while self.observed_state() == "queued" and time.monotonic() - started < grace:
            time.sleep(0.05)
        self.request("stop")
        if self._wait_final(max(0.0, grace - (time.monotonic() - started))):
            return self.observed_state()
        st = self.status()
        if pid_alive(st.pid, st.pid_start):
            signal_group(st.pid, signal.SIGTERM)
            if self._wait_final(term_grace):
                return self.observed_state()
            if pid_alive(st.pid, st.pid_start):
                signal_group(st.pid, signal.SIGKILL)
                self._wait_final(2.0)
        return self.observed_state()

    def _wait_final(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.observed_state() in FINAL_STATES:
                return True
            time.sleep(0.05)
        return False


class RunStore:
    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        self.root = workspace.runs_dir

    def runs(self) -> list[Run]:
        """Every run, newest first (ids sort by creation time)."""
        try:
            entries = [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        except FileNotFoundError:
            return []
        return [Run(p) for p in sorted(entries, key=lambda p: p.name, reverse=True)]

    def summaries(self) -> list[Summary]:
        out = []
        for run in self.runs():
            s = run.summary()
            if s is None:
                continue
            if s.state not in FINAL_STATES:
                s.state = run.observed_state()
            out.append(s)
        return out

    def get(self, ref: str) -> Run:
        """A run by id, unique id prefix, or name (the newest run of that name)."""
        ref = (ref or "").strip()
        if not ref:
            raise InvalidRequest("no run given")
        runs = self.runs()
        exact = [r for r in runs if r.id == ref]
        if exact:
            return exact[0]
        prefixed = [r for r in runs if r.id.startswith(ref)]
        if len(prefixed) == 1:
            return prefixed[0]
        if len(prefixed) > 1:
            raise InvalidRequest(f"run {ref!r} is ambiguous: {', '.join(r.id for r in prefixed[:5])}")
        for r in runs:
            s = r.summary()
            if s is not None and s.name == ref:
                return r
        raise InvalidRequest(f"no run {ref!r} in {self.root}")

    def remove(self, ref: str) -> None:
        """Delete a run that is not active. (A minimal version for the Training screen; the
        `live` branch's RunStore.remove, with its Busy error, replaces it.)"""
        import shutil

        from torchdeck.errors import Busy

        run = self.get(ref)
        state = run.observed_state()
        if state not in FINAL_STATES:
            raise Busy(f"run {run.id} is {state}: stop it before removing it")
        shutil.rmtree(run.path)

    def create(self, config: RunConfig, *, run_id: str | None = None) -> Run:
        config.validate()
        if run_id is None:
            run_id = f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        path = self.root / run_id
        path.mkdir(parents=True)
        (path / "checkpoints").mkdir()
        (path / LOCK_NAME).touch()
        atomic_write_json(path / "config.json", config.to_json())
        now = time.time()
        atomic_write_json(path / "status.json", asdict(Status(state="queued", host=socket.gethostname())))
        atomic_write_json(
            path / "summary.json",
            asdict(Summary(id=run_id, name=config.name or run_id, model=config.model, state="queued",
                           created=now, epochs=config.epochs)),
        )
        return Run(path)

    def launch(self, run: Run) -> int:
        """Start the run's worker in a new session, so a closed terminal or TUI does not stop it."""
        log = open(run.log_path, "ab")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "torchdeck.runs.worker", str(run.path)],
                cwd=run.path,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            log.close()
        # Its own file, not status.json: the worker may already be replacing that one.
        atomic_write_json(
            run.path / "launch.json",
            {"pid": proc.pid, "pid_start": process_start_time(proc.pid), "host": socket.gethostname()},
            durable=False,
        )
        # Reap the child in the background if it ends while we live, so it is never a zombie.
        _reaper(proc)
        return proc.pid


def _reaper(proc: subprocess.Popen) -> None:
    import threading

    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()
