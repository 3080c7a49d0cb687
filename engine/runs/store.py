"""The run store: one directory a run, written by its worker process, watched by everyone else.

runs/<id>/config.json    what was asked (written once, before the worker starts)
runs/<id>/status.json    replaced by the worker: state, pid, start time, host, heartbeat, step
runs/<id>/summary.json   what the run list needs, so listing does not parse histories
runs/<id>/events.jsonl   appended by the worker (see torchdeck.runs.events)
runs/<id>/launch.json    who launches it: the launcher's pid at creation, the worker's pid once started
runs/<id>/control.json   written by the TUI or CLI: pause, continue, stop
runs/<id>/worker.log     the worker's stdout and stderr
runs/<id>/checkpoints/   one directory a checkpoint (see torchdeck.checkpoints.store)
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from torchdeck.errors import (
    Busy,
    InvalidRequest,
    NoSpace,
    NotFound,
    OperationFailed,
    TorchdeckError,
)
from torchdeck.fmt import fmt_duration
from torchdeck.fsutil import atomic_write_json, disk_full_note, read_json
from torchdeck.options import ACTIVE_STATES, FINAL_STATES, STATES
from torchdeck.procs import is_suspended, pid_alive, process_start_time, signal_group
from torchdeck.runs import standby as standby_mod
from torchdeck.runs.config import RunConfig
from torchdeck.runs.standby import CUDA_ORDER
from torchdeck.workspace import Workspace

LOCK_NAME = "lock"

# A worker retries its lock this long: a reader's probe holds it for microseconds, another worker forever.
LOCK_WAIT_SECONDS = 3.0
# A heartbeat unchanged this long on the reader's own monotonic clock is stale (the worker beats every 0.5 s).
HEARTBEAT_STALE_SECONDS = 5.0
# A run created and not launched: "failed: never started" once its launcher is gone and this much
# time has passed (a worker takes its lock within a second or two of being launched) ...
NEVER_STARTED_LAUNCHER_GONE = 10.0
# ... or this much, whatever its launcher (a TUI that lives on after a failed launch).
NEVER_STARTED_AFTER = 120.0
NEVER_STARTED = "never started"


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
        """None for anything that is not a status: not an object, an unknown state, wrong types."""
        if not isinstance(d, dict) or d.get("state") not in STATES:
            return None
        try:
            st = cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
        except TypeError:
            return None
        ints = (st.heartbeat, st.step, st.epoch, st.total_steps)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints):
            return None
        if not all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in (st.pid, st.pid_start)):
            return None
        return st


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
    # The run table's figures (issue 10), kept current wherever summary.json is written; None in
    # files from before them. started: wall time of the first start. duration: seconds of
    # training (from each start, pauses left out) as of the last write, the total once ended.
    # steps_per_second: steps computed (a resume's recomputed steps too) over that duration.
    started: float | None = None
    duration: float | None = None
    steps_per_second: float | None = None
    # Where the run comes from: "" for torchdeck's own, else the tool whose logs it was imported
    # from ("tensorboard", "huggingface", "lightning", "mlflow"; see torchdeck.sources): read-only.
    source: str = ""

    @classmethod
    def from_json(cls, d: Any) -> "Summary | None":
        if not isinstance(d, dict) or "id" not in d:
            return None
        try:
            summ = cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
        except TypeError:
            return None
        if not isinstance(summ.source, str):
            summ.source = ""
        for name in ("started", "duration", "steps_per_second"):  # a hand-edited file: not a number, not one
            v = getattr(summ, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                setattr(summ, name, None)
        return summ




@dataclass(frozen=True)
class Liveness:
    """What a reader can tell about a run right now.

    `state` is one of STATES ("crashed" for a worker that died without saying so, "failed" with
    reason "never started: ..." for a run that was created and never launched). `heartbeat_stale`
    is an observed condition, not a state: the worker lives (it holds the run's lock) but its
    heartbeat has not moved for HEARTBEAT_STALE_SECONDS of this reader's clock, or it is
    suspended (SIGSTOP). `reason` says why, in one line ("" when there is nothing to say).
    """

    state: str
    heartbeat_stale: bool = False
    reason: str = ""


def acquire_run_lock(run_dir: Path, *, wait: float = LOCK_WAIT_SECONDS):
    """The run's exclusive lock for its one writer, as an open file to keep for the process's
    life (the kernel drops the lock when the process ends); None when another writer holds it.
    Retries for `wait` seconds: readers probe the lock for an instant, and a probe that lands on
    a starting worker's first try must not turn it away."""
    lock_file = open(Path(run_dir) / LOCK_NAME, "a")
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock_file
        except BlockingIOError:
            if time.monotonic() >= deadline:
                lock_file.close()
                return None
            time.sleep(0.01)


class Run:
    """A view of one run directory."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.id = self.path.name
        self._beat: tuple[Any, int, float] | None = None  # (pid, heartbeat, when it last moved, our clock)

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

    def _read_status(self) -> tuple[Status | None, bool]:
        """(status, missing): status None with missing False means status.json is unparsable."""
        try:
            with open(self.path / "status.json", "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None, True
        except OSError:
            return None, False
        try:
            return Status.from_json(json.loads(data)), False
        except ValueError:
            return None, False

    def status(self) -> Status:
        """The worker's last status. When status.json is missing the run is being created
        (queued); when it is unparsable, what the summary says, with a message that says so."""
        st, missing = self._read_status()
        if st is not None:
            return st
        if missing:
            return Status(state="queued")
        summ = self.summary()
        fallback = Status(state="queued", message="status.json is unreadable")
        if summ is not None:
            fallback.step, fallback.epoch, fallback.total_steps = summ.step, summ.epoch, summ.total_steps
            fallback.last_loss = summ.last_loss
            if summ.state in STATES:
                fallback.state = summ.state
        return fallback

    def summary(self) -> Summary | None:
        return Summary.from_json(read_json(self.path / "summary.json"))

    def name(self) -> str:
        summ = self.summary()
        return summ.name if summ is not None and isinstance(summ.name, str) else self.id

    # liveness
    def writer_alive(self) -> bool | None:
        """True while some process holds the run's lock (only its worker ever does); None when
        the lock cannot be opened (a workspace this user may only read): unknown.

        The probe takes a shared lock for an instant; a worker taking its exclusive lock at that
        very moment retries (acquire_run_lock), so a reader never turns a worker away."""
        try:
            f = open(self.path / LOCK_NAME, "rb")
        except FileNotFoundError:
            return False
        except OSError:
            return None
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            except OSError:
                return None
            fcntl.flock(f, fcntl.LOCK_UN)
            return False

    def remove_dead_temporaries(self) -> list[Path]:
        """Remove checkpoint temporaries (`.NAME.tmp-PID`, `.NAME.removing-PID`) that no live
        writer owns; called when runs are listed. Decided under the run's lock, never by age:
        while a worker holds it (one writing a large checkpoint, one just starting) nothing is
        touched. Under the lock they are only renamed to this process's `.removing-PID`, and
        deleted after it is released, so a starting worker never waits on a deletion."""
        from torchdeck.checkpoints.store import TEMP_RE, temporaries

        names = temporaries(self.checkpoints_dir)
        if not names:
            return []
        mine = f".removing-{os.getpid()}"
        moved: list[Path] = []
        try:
            with open(self.path / LOCK_NAME, "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    return []  # a worker lives (or the lock cannot be taken): its temporaries may be live
                for name in names:
                    m = TEMP_RE.search(name)
                    pid = int(m.group(1))
                    # Another reader deleting its own rename right now: leave it to that reader.
                    if m.group(0).startswith(".removing-") and pid != os.getpid() and pid_alive(pid, None):
                        continue
                    src = self.checkpoints_dir / name
                    dst = src if name.endswith(mine) else src.with_name(name + mine)
                    try:
                        os.rename(src, dst)
                    except OSError:
                        continue
                    moved.append(dst)
        except OSError:
            return []
        for p in moved:
            shutil.rmtree(p, ignore_errors=True)
        return moved

    def observed_state(self, status: Status | None = None) -> str:
        """The state as the files say, corrected for a worker that died without saying so
        ("crashed") and for a run that was never launched ("failed", message "never started").
        `status`: one the caller has just read, to spare a second read."""
        return self.liveness(status).state

    def liveness(self, status: Status | None = None) -> Liveness:
        """State, heartbeat staleness and why, as this reader observes them now (see Liveness).

        On this host the lock tells whether the worker lives: it holds the lock until it exits,
        and the kernel drops it however it dies. Another host's worker is judged by its heartbeat
        alone. Keep the Run object to judge staleness over time: it is measured from the first
        time this object saw the current heartbeat."""
        if status is not None:
            st, missing = status, False
        else:
            st, missing = self._read_status()
        if st is None and not missing:
            return self._liveness_unreadable_status()
        st = st or Status(state="queued")
        if st.state in FINAL_STATES:
            return Liveness(st.state, False, st.message)
        if st.host and st.host != socket.gethostname():
            stale, reason = self._heartbeat_stale(st)
            return Liveness(st.state, stale, reason)
        alive = self.writer_alive()
        if alive is None:  # the lock cannot be opened: go by the pid alone
            alive = pid_alive(st.pid, st.pid_start)
        if alive:
            if st.state == "queued":
                return Liveness("queued", False, "its worker is starting")
            if is_suspended(st.pid, st.pid_start):
                return Liveness(st.state, True, f"its worker (pid {st.pid}) is suspended (SIGSTOP)")
            stale, reason = self._heartbeat_stale(st)
            return Liveness(st.state, stale, reason)
        if st.state == "queued":
            verdict, why = self._queued_verdict()
            if verdict == "queued":
                return Liveness("queued", False, why)
            if verdict == "never_started":
                message = f"{NEVER_STARTED}: {why}"
                recorded = self._mark_final("failed", message, status_may_be_missing=True)
                if recorded is None or recorded == "failed":
                    return Liveness("failed", False, message)
                return self.liveness()
        # Nothing holds the lock now; look again in case the worker exited cleanly meanwhile.
        st, missing = self._read_status()
        if st is None and not missing:
            return self._liveness_unreadable_status()
        if st is not None and st.state in FINAL_STATES:
            return Liveness(st.state, False, st.message)
        if self.imported() is not None:  # a read-only run whose follower (a TUI) died: nothing was lost
            recorded = self._mark_final("finished", "read-only: the process following its source ended")
            if recorded is not None:
                return self.liveness()
        ended = self._last_ended_record()
        if ended is not None and ended["state"] != "crashed":
            # Its end reached the events file but not status.json (a full disk): the run's own word.
            message = ended.get("message") if isinstance(ended.get("message"), str) else ""
            recorded = self._mark_final(ended["state"], message)
            if recorded not in (None, ended["state"]):
                return self.liveness()
            return Liveness(ended["state"], False, message)
        message = "the worker process ended without recording a final state"
        from torchdeck.runs.command import command_info, kill_leftovers

        if command_info(self) is not None:  # its supervisor died: what it ran must not run on unowned
            message = "its supervisor ended without recording a final state"
            killed = kill_leftovers(self.path)
            if killed:
                message += f"; the {len(killed)} process(es) left of its command were killed (pid " \
                           f"{', '.join(map(str, killed))})"
        full = disk_full_note(self.path)  # its end most likely did not fit
        if full:
            message += f"; {full}"
        recorded = self._mark_final("crashed", message)
        if recorded not in (None, "crashed"):
            return self.liveness()  # a worker took the lock and wrote meanwhile
        self.remove_dead_temporaries()  # a save the dead worker had in flight
        return Liveness("crashed", False, message)

    def _heartbeat_stale(self, st: Status) -> tuple[bool, str]:
        if st.state not in ("running", "paused", "saving"):
            return False, ""
        now = time.monotonic()
        key = (st.pid, st.heartbeat)
        if self._beat is None or self._beat[:2] != key:
            self._beat = (*key, now)
            return False, ""
        quiet = now - self._beat[2]
        if quiet < HEARTBEAT_STALE_SECONDS:
            return False, ""
        return True, f"no heartbeat for {fmt_duration(quiet)}"

    def _queued_verdict(self) -> tuple[str, str]:
        """For a queued run nobody holds: "queued" (still launching), "never_started", or
        "worker_gone" (a worker was started and died before taking the lock), with a reason."""
        launch = read_json(self.path / "launch.json")
        launch = launch if isinstance(launch, dict) else {}
        if launch.get("pid"):
            if pid_alive(_int(launch.get("pid")), _int(launch.get("pid_start"))):
                return "queued", "its worker is starting"
            return "worker_gone", ""
        created = launch.get("created")
        if not isinstance(created, (int, float)):
            summ = self.summary()
            created = summ.created if summ is not None and isinstance(summ.created, (int, float)) else None
        if created is None:
            try:
                created = (self.path / "config.json").stat().st_mtime
            except OSError:
                created = 0.0
        age = time.time() - created
        launcher = launch.get("launcher") if isinstance(launch.get("launcher"), dict) else {}
        launcher_alive = pid_alive(_int(launcher.get("pid")), _int(launcher.get("pid_start")))
        if launcher_alive and age < NEVER_STARTED_AFTER:
            return "queued", "waiting for its launcher to start a worker"
        if not launcher_alive and age < NEVER_STARTED_LAUNCHER_GONE:
            return "queued", "waiting for its worker to start"
        if launcher_alive:
            return "never_started", f"no worker was launched in {fmt_duration(age)}"
        return "never_started", "its launcher ended before starting a worker"

    def _liveness_unreadable_status(self) -> Liveness:
        """status.json exists but cannot be parsed: judge from the other files, write nothing
        (a reader never records over a file it could not read)."""
        note = "status.json is unreadable"
        ended = self._last_ended()
        if ended is not None:
            return Liveness(ended, False, f"{note}; state from the run's ended record")
        summ = self.summary()
        if summ is not None and summ.state in FINAL_STATES:
            return Liveness(summ.state, False, f"{note}; state from summary.json")
        alive = self.writer_alive()
        if alive:
            state = summ.state if summ is not None and summ.state in ACTIVE_STATES else "running"
            return Liveness(state, False, note)
        return Liveness("crashed", False, f"{note} and no worker holds the run")

    def _last_ended(self) -> str | None:
        """The state of the events file's `ended` record, when its last whole line is one."""
        rec = self._last_ended_record()
        return None if rec is None else rec["state"]

    def _last_ended_record(self) -> dict | None:
        """The events file's `ended` record, when its last whole line is one."""
        try:
            with open(self.events_path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - 65536))
                tail = f.read()
        except OSError:
            return None
        for line in reversed(tail.split(b"\n")):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a torn last line
            if isinstance(rec, dict) and rec.get("type") == "ended" and rec.get("state") in FINAL_STATES:
                return rec
            return None
        return None

    def _mark_final(self, state: str, message: str, *, status_may_be_missing: bool = False) -> str | None:
        """Record a final state the worker could not (it died, was killed, or never started), under
        the lock so that no worker races us, so every later reader agrees. Returns the state the
        files hold afterwards, or None when nothing could be recorded (the lock is busy or cannot
        be taken, status.json unreadable)."""
        try:
            with open(self.path / LOCK_NAME, "a") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return None
                cur, missing = self._read_status()
                if cur is None:
                    if not (missing and status_may_be_missing):
                        return None  # never write over a status that could not be read
                    cur = Status(state="queued", host=socket.gethostname())
                if cur.state in FINAL_STATES:
                    return cur.state
                cur.state, cur.message = state, message
                self._truncate_torn_events()
                atomic_write_json(self.path / "status.json", asdict(cur), durable=False)
                summ = self.summary()
                if summ is not None:
                    summ.state = state
                    if summ.ended is None:
                        summ.ended = time.time()
                    atomic_write_json(self.path / "summary.json", asdict(summ), durable=False)
                return state
        except OSError:
            return None

    def _truncate_torn_events(self) -> None:
        """Drop a torn last line the dead worker left (a resumed writer would drop it first), so
        readers that follow the file to its end find the end. Called under the lock only."""
        try:
            with open(self.events_path, "rb+") as f:
                size = f.seek(0, os.SEEK_END)
                pos = size
                while pos > 0:
                    start = max(0, pos - 65536)
                    f.seek(start)
                    block = f.read(pos - start)
                    if pos == size and block.endswith(b"\n"):
                        return
                    nl = block.rfind(b"\n")
                    if nl >= 0:
                        f.truncate(start + nl + 1)
                        return
                    pos = start
                f.truncate(0)
        except OSError:
            pass

    # control
    def read_control(self) -> tuple[str | None, int]:
        """The last control request and its sequence number ((None, 0) when none, or unreadable):
        a writer acts on a request whose number is past the one it saw when it started."""
        d = read_json(self.path / "control.json")
        if not isinstance(d, dict):
            return None, 0
        try:
            return d.get("request"), int(d.get("seq", 0))
        except (TypeError, ValueError):
            return None, 0

    def control_since(self, seen: int) -> tuple[str | None, int]:
        """(the control request made after the one numbered `seen`, or None when there is no newer
        one; the number to remember): how every writer and supervisor reads control.json."""
        request, seq = self.read_control()
        return (request, seq) if seq > seen else (None, seen)

    def imported(self) -> dict[str, Any] | None:
        """config.json of a run read from another tool's logs (read-only: torchdeck.sources.mirror);
        None for torchdeck's own runs."""
        cfg = read_json(self.path / "config.json")
        if isinstance(cfg, dict) and cfg.get("read_only") is True and isinstance(cfg.get("source"), str):
            return cfg
        return None

    def refuse_if_imported(self, verb: str, field: str = "run") -> None:
        """InvalidRequest for an action that would change a read-only run (stop, pause, resume):
        its "worker" is whoever follows its source (a TUI), never a process to signal."""
        cfg = self.imported()
        if cfg is not None:
            raise InvalidRequest(f"run {self.id} is read-only: it is imported from {cfg['source']} logs at "
                                 f"{cfg.get('origin')}; torchdeck cannot {verb} it", field=field)

    def request(self, action: str) -> None:
        if action not in ("pause", "continue", "stop"):
            raise InvalidRequest(f"unknown control request {action!r}")
        self.refuse_if_imported(action)
        prev = read_json(self.path / "control.json") or {}
        seq = _int(prev.get("seq")) or 0 if isinstance(prev, dict) else 0
        try:
            atomic_write_json(self.path / "control.json", {"request": action, "seq": seq + 1, "time": time.time()})
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise NoSpace(f"run {self.id}: no space left to write the {action} request") from None
            raise OperationFailed(f"run {self.id}: cannot write the {action} request: {e.strerror or e}") from None

    def stop(self, *, grace: float = 30.0, term_grace: float = 5.0, kill_grace: float = 5.0,
             say: Callable[[str], None] | None = None) -> str:
        """Stop the run and return its final state: a stop request (the worker saves a checkpoint
        at its next step and ends "stopped"), then after `grace` s SIGTERM (the worker stops the
        same way) and SIGCONT (a suspended worker handles neither until continued), then after
        `term_grace` s SIGKILL of the worker's process group, recorded as "stopped" by a kill.
        A suspended (SIGSTOP) worker goes to SIGTERM and SIGCONT at once. `say` gets a line for
        the user at each escalation and how long it may take."""
        say = say or (lambda line: None)
        self.refuse_if_imported("stop")
        live = self.liveness()
        if live.state in FINAL_STATES:
            return live.state
        from torchdeck.runs.command import command_info, timeouts_text

        command = command_info(self)
        if command is not None:  # its supervisor runs the escalation: wait for it, and a little more
            grace = max(grace, command["int_timeout"] + command["term_timeout"] + 3.0)
        started = time.monotonic()

        def left() -> float:
            return max(0.0, grace - (time.monotonic() - started))

        # A worker ignores requests older than itself (they are history on resume), so a request
        # written while the run is still queued would be lost: wait until its worker is up.
        if live.state == "queued":
            say(f"run {self.id} is queued: waiting up to {fmt_duration(grace)} for its worker to start")
        while live.state == "queued" and left() > 0:
            time.sleep(0.05)
            live = self.liveness()
        if live.state in FINAL_STATES:
            return live.state
        if live.state == "queued":
            say(f"run {self.id}'s worker did not start within {fmt_duration(grace)}; it is still queued")
            return live.state
        st = self.status()
        self.request("stop")
        if st.host and st.host != socket.gethostname():  # its pid means nothing here: never signal it
            say(f"run {self.id} runs on {st.host}: asking its worker to stop, waiting up to {fmt_duration(grace)}")
            self._wait_final(left())
            return self.observed_state()
        if is_suspended(st.pid, st.pid_start):
            say(f"run {self.id}'s worker (pid {st.pid}) is suspended (SIGSTOP): sending SIGTERM and SIGCONT; "
                f"it saves a checkpoint and ends, or is killed after {fmt_duration(grace + term_grace)}")
            self._terminate(st)
        else:
            if command is not None:
                say(f"stopping run {self.id}: its command gets "
                    f"{timeouts_text(command['int_timeout'], command['term_timeout'])}")
            else:
                say(f"stopping run {self.id}: its worker saves a checkpoint and ends; after {fmt_duration(grace)} "
                    f"it gets SIGTERM, after {fmt_duration(grace + term_grace)} SIGKILL")
            if self._wait_final(left()):
                return self.observed_state()
            st = self.status()
            if pid_alive(st.pid, st.pid_start):
                say(f"no answer in {fmt_duration(grace)}: sending SIGTERM to worker {st.pid}")
                self._terminate(st)
                grace = 0.0
        if self._wait_final(left() + term_grace):
            return self.observed_state()
        st = self.status()
        if pid_alive(st.pid, st.pid_start):
            say(f"worker {st.pid} ignored the stop request and SIGTERM: sending SIGKILL to its process group")
            signal_group(st.pid, signal.SIGKILL)
            deadline = time.monotonic() + kill_grace
            while time.monotonic() < deadline and (pid_alive(st.pid, st.pid_start) or self.writer_alive()):
                time.sleep(0.02)
            if not pid_alive(st.pid, st.pid_start) and not self.writer_alive():
                self._mark_final("stopped", "killed: the worker ignored the stop request and SIGTERM")
        return self.observed_state()

    @staticmethod
    def _terminate(st: Status) -> None:
        if pid_alive(st.pid, st.pid_start):
            signal_group(st.pid, signal.SIGTERM)
            signal_group(st.pid, signal.SIGCONT)

    def _wait_final(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self.observed_state() in FINAL_STATES:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None




class RunStore:
    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        self.root = workspace.runs_dir
        self._swept: set[tuple[str, Any]] = set()  # (run id, ended) already cleared of dead temporaries

    def runs(self) -> list[Run]:
        """Every run, newest first (ids sort by creation time)."""
        try:
            entries = [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        except FileNotFoundError:
            return []
        return [Run(p) for p in sorted(entries, key=lambda p: p.name, reverse=True)]

    def summaries(self) -> list[Summary]:
        """What the run list shows. Listing also removes checkpoint temporaries a dead worker
        left (a crashed run's is removed when the crash is observed; runs that ended otherwise
        are looked at once per process and end, so a listing stays one scandir-free pass)."""
        out = []
        for run in self.runs():
            s = run.summary()
            if s is None:
                continue
            if s.state not in FINAL_STATES:
                s.state = run.observed_state()
            elif s.state != "finished" and (run.id, s.ended) not in self._swept:
                self._swept.add((run.id, s.ended))
                run.remove_dead_temporaries()
            out.append(s)
        return out

    def get(self, ref: str) -> Run:
        """A run by, in this order: exact id; exact name (the newest run of that name); a unique
        prefix or suffix of its id (ids start with the date, so the random suffix is the handy
        part). Ambiguous: InvalidRequest listing the candidates; none: NotFound. Field "run"."""
        ref = (ref or "").strip()
        if not ref:
            raise InvalidRequest("no run given: give a run id, a unique part of its start or end, or a name",
                                 field="run")
        runs = self.runs()
        for r in runs:
            if r.id == ref:
                return r
        for r in runs:  # newest first
            if r.name() == ref:
                return r
        matches = [r for r in runs if r.id.startswith(ref) or r.id.endswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            shown = ", ".join(f"{r.id} ({r.name()})" if r.name() != r.id else r.id for r in matches[:8])
            more = f" and {len(matches) - 8} more" if len(matches) > 8 else ""
            raise InvalidRequest(f"run {ref!r} is ambiguous: it matches {shown}{more}", field="run")
        raise NotFound(f"no run {ref!r} in {self.root} (give an id, a unique part of its start or end, or a name)",
                       field="run")

    def remove(self, ref: str) -> Run:
        """Delete a run that is not active (a queued one counts once it reads "failed: never
        started"); Busy for an active one. The directory is first renamed out of sight, so a
        removal that fails half-way never leaves half a run in the list. Returns the removed Run."""
        run = self.get(ref)
        live = run.liveness()
        if live.state in ACTIVE_STATES and run.imported() is not None:
            st = run.status()
            raise Busy(f"run {run.id} is being read from its source by another process (pid {st.pid} on {st.host}, "
                       "a torchdeck TUI showing it): select another run there, or close it, first", field="run")
        if live.state in ACTIVE_STATES:
            raise Busy(f"run {run.id} is {live.state}: stop it first (torchdeck runs stop {run.id})", field="run")
        hidden = self.root / f".removing-{run.id}-{secrets.token_hex(3)}"
        try:
            with open(run.path / LOCK_NAME, "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise Busy(f"run {run.id} has a worker now: stop it first", field="run") from None
                # Under the lock no worker can start now; one that started since we looked wrote so.
                cur, _ = run._read_status()
                if cur is not None and cur.state in ("running", "paused", "saving"):
                    raise Busy(f"run {run.id} became {cur.state}: stop it first", field="run")
                os.rename(run.path, hidden)
        except FileNotFoundError:
            raise NotFound(f"run {run.id} is gone (removed meanwhile?)", field="run") from None
        except OSError as e:
            raise OperationFailed(f"cannot remove run {run.id}: {e.strerror or e}") from None
        errors: list[str] = []
        shutil.rmtree(hidden, onerror=lambda fn, path, exc: errors.append(f"{path}: {exc[1]}"))
        if errors:
            raise OperationFailed(f"run {run.id} is no longer listed, but {len(errors)} file(s) could not be "
                                  f"deleted from {hidden}: {errors[0]}")
        return run

    def create(self, config: RunConfig, *, run_id: str | None = None, extra: dict[str, Any] | None = None) -> Run:
        """A new queued run directory. launch.json records the launcher, so a run whose launcher
        dies before launching reads "failed: never started" instead of queued forever. A creation
        that fails half-way (a full disk) leaves nothing behind. `extra`: more keys for
        config.json, written with it (a command run's source, command and cwd)."""
        config.validate()
        if run_id is None:
            run_id = f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
        path = self.root / run_id
        path.mkdir(parents=True)
        try:
            (path / "checkpoints").mkdir()
            (path / LOCK_NAME).touch()
            now = time.time()
            host = socket.gethostname()
            atomic_write_json(path / "launch.json", {
                "created": now, "host": host,
                "launcher": {"pid": os.getpid(), "pid_start": process_start_time(os.getpid())},
            }, durable=False)
            atomic_write_json(path / "config.json", {**config.to_json(), **(extra or {})})
            atomic_write_json(path / "status.json", asdict(Status(state="queued", host=host)))
            atomic_write_json(
                path / "summary.json",
                asdict(Summary(id=run_id, name=config.name or run_id, model=config.model, state="queued",
                               created=now, epochs=0 if config.max_steps else config.epochs)),
            )
        except BaseException as e:
            shutil.rmtree(path, ignore_errors=True)
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                raise NoSpace(f"no space left to create a run in {self.root}") from None
            if isinstance(e, OSError):
                raise OperationFailed(f"cannot create a run in {self.root}: {e.strerror or e}") from None
            raise
        return Run(path)

    @staticmethod
    def start_standby() -> subprocess.Popen | None:
        """A worker started before its run exists, importing torch while the caller checks the
        request (a CPU core the check leaves idle does it): `launch(run, standby=...)` hands it the
        run; closing its stdin (or dropping it) ends it having done nothing. The one the command
        line started first thing (standby.start_early) when there is one. None when none can be
        started: `launch` then starts a fresh worker."""
        return standby_mod.take() or standby_mod.start()

    @staticmethod
    def check_with_standby(proc: subprocess.Popen | None, config_json: dict) -> bool:
        """The run's preflight done by the standby worker, which imports torch anyway: the
        launcher need not import it too, and the check waits only for the first import. True
        when it passed; raises the refusal's TorchdeckError; False when the standby cannot tell
        (gone, or an unexpected failure): the caller then checks in process."""
        import json

        from torchdeck import errors
        from torchdeck.runs.worker import CHECK

        if proc is None or proc.stdin is None or proc.stdout is None or proc.poll() is not None:
            return False
        try:
            proc.stdin.write((CHECK + json.dumps(config_json) + "\n").encode())
            proc.stdin.flush()
            reply = json.loads(proc.stdout.readline() or b"null")
        except (OSError, ValueError):
            return False
        if not isinstance(reply, dict):
            return False
        if reply.get("ok") is True:
            return True
        error = reply.get("error")
        if not isinstance(error, dict) or not isinstance(error.get("message"), str):
            return False
        cls = getattr(errors, str(error.get("class")), None)
        if not (isinstance(cls, type) and issubclass(cls, errors.TorchdeckError)):
            cls = errors.InvalidRequest
        code = error.get("code") if error.get("code") in errors.CODES else None
        field = error.get("field") if isinstance(error.get("field"), str) else None
        raise cls(error["message"], code=code, field=field)

    @staticmethod
    def drop_standby(proc: subprocess.Popen | None) -> None:
        """The request was refused: the standby worker reads EOF and ends."""
        standby_mod.drop(proc)

    def _hand_over(self, run: Run, proc: subprocess.Popen | None) -> subprocess.Popen | None:
        if proc is None or proc.poll() is not None or proc.stdin is None:
            return None
        try:
            proc.stdin.write((str(run.path) + "\n").encode())
            proc.stdin.close()
        except OSError:  # it died (e.g. its torch import failed): a fresh worker instead
            return None
        return proc

    def launch(self, run: Run, *, standby: subprocess.Popen | None = None) -> int:
        """Start the run's worker in a new session, so a closed terminal or TUI does not stop it
        (or hand the run to a standby worker, already in its own session). A launch that fails
        records the run as "failed: never started" and raises."""
        try:
            several = run.config().processes > 1  # torchdeck's supervisor and torchrun instead of one worker
        except TorchdeckError:
            several = False  # the worker fails the run naming what is wrong with its config
        handed = None if several else self._hand_over(run, standby)
        if several:
            self.drop_standby(standby)
        if handed is not None:
            self._record_launch(run, handed)
            return handed.pid
        module = "torchdeck.runs.ddp" if several else "torchdeck.runs.worker"
        return spawn_detached(run, module, role="worker", cwd=run.path, env={"CUDA_DEVICE_ORDER": CUDA_ORDER})

    @staticmethod
    def _record_launch(run: Run, proc: subprocess.Popen) -> None:
        # Its own file, not status.json: the worker may already be replacing that one.
        prev = read_json(run.path / "launch.json")
        record = prev if isinstance(prev, dict) else {}
        record.update({"pid": proc.pid, "pid_start": process_start_time(proc.pid), "host": socket.gethostname()})
        try:
            atomic_write_json(run.path / "launch.json", record, durable=False)
        except OSError:
            pass  # the worker runs; readers go by its lock and status


def spawn_detached(run: Run, module: str, *, role: str, cwd: Path | str, env: dict[str, str] | None = None) -> int:
    """Start `python -m module RUN_DIR` in a new session (a closed terminal or TUI does not stop
    it), output appended to the run's log, recorded in launch.json and reaped in the background;
    its pid. A launch that fails records the run "failed: never started" (naming the `role`) and
    raises."""
    try:
        log = open(run.log_path, "ab")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", module, str(run.path)], cwd=cwd,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        finally:
            log.close()
    except OSError as e:
        why = e.strerror or str(e)
        run._mark_final("failed", f"{NEVER_STARTED}: its {role} could not be started: {why}",
                        status_may_be_missing=True)
        if e.errno == errno.ENOSPC:
            raise NoSpace(f"run {run.id} not started: no space left for its log") from None
        raise OperationFailed(f"run {run.id} not started: {why}") from None
    RunStore._record_launch(run, proc)
    standby_mod.reap(proc)  # never a zombie while we live
    return proc.pid
