"""The writing side of a run, in one place: the run's lock, the heartbeat, status.json and
summary.json, and the event records. The worker writes through it; so will the logging API
and importers. Readers never use it (they use torchdeck.runs.view).

One writer a run: `RunWriter.acquire` takes the run directory's exclusive flock, held until
the process ends or `release` (the kernel drops it however the process dies).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from dataclasses import asdict
from typing import Any, Callable

from torchdeck.checkpoints import store as checkpoints
from torchdeck.errors import NoSpace, TorchdeckError, from_os_error
from torchdeck.fsutil import atomic_write_json
from torchdeck.options import FINAL_STATES
from torchdeck.procs import process_start_time
from torchdeck.runs import events as ev
from torchdeck.runs.store import Run, Status, acquire_run_lock

HEARTBEAT_SECONDS = 0.5


def take_lock(run: Run):
    """The run's exclusive lock, held for the life of the process (the kernel drops it at exit);
    None when another writer holds it. Retried briefly (store.acquire_run_lock): a reader's probe
    landing on a starting worker's first try must not turn it away."""
    return acquire_run_lock(run.path)


def hold_for_life(run: Run, holder: str = "writer"):
    """A worker's or supervisor's start: the run's lock for the life of the process, and SIGHUP
    ignored (the terminal that started it is not its master). None, said on stderr as "run ID
    already has a `holder`", when another process holds the lock."""
    import signal

    lock = take_lock(run)
    if lock is None:
        print(f"run {run.id} already has a {holder}", file=sys.stderr)
        return None
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return lock


def _had_events(path) -> bool:
    try:
        with open(path, "rb") as f:
            return b"\n" in f.read(1 << 16)
    except OSError:
        return False


class RunWriter:
    """Writes one run's files. The caller holds the run's lock (see `acquire`).

    Thread-safe: the heartbeat thread and the training loop both write status.json, and a
    snapshot is always written whole and in order (a stale one never lands last).
    """

    def __init__(self, run: Run, *, clock: Callable[[], float] = time.monotonic, resume_step: int | None = None,
                 resumed: ev.Resumed | None = None, continues: bool = False):
        self.run = run
        self.clock = clock
        self._t0 = clock()
        self._lock = threading.Lock()  # guards self.status and the counters
        self._write_lock = threading.Lock()  # a snapshot and its write go together
        self._events_lock = threading.Lock()
        self._summary_lock = threading.Lock()
        self.status = Status(state="running", pid=os.getpid(), pid_start=process_start_time(os.getpid()),
                             host=socket.gethostname())
        self.checkpoints = 0
        self._recorded: set[str] = set()  # paths of checkpoints written by something else (a framework's)
        self.best_val: float | None = None
        self._heartbeat: threading.Thread | None = None
        self._closed = False
        # The run table's figures (Summary.started/duration/steps_per_second): this writer's
        # training time on its own clock, added to what earlier writers of the run recorded.
        prev = run.summary()
        self._duration_before = (prev.duration or 0.0) if prev is not None else 0.0
        self._steps_before = (prev.steps_per_second or 0.0) * self._duration_before if prev is not None else 0.0
        self._started_wall: float | None = None
        self._train_t0: float | None = None  # this writer's clock at its `started` record
        self._paused_total = 0.0
        self._paused_at: float | None = None
        self._first_step: int | None = None  # the first step this writer recorded a loss for
        self._last_step = 0
        self._epochs = 0  # the epochs the run spans, once its `started` record tells
        existing = _had_events(run.events_path)
        self._events = ev.EventWriter(run.events_path)  # truncates a torn last line first
        # continues: an importer appending what its source gained since (nothing is replaced).
        if (existing and not continues) or resumed is not None:
            # A second writer on the same run (a relaunch, a resume): what it writes from this step
            # on replaces what the file holds past it, so nothing is counted twice.
            self._events.write(resumed or ev.Resumed(resume_step or 0))

    @classmethod
    def acquire(cls, run: Run, **kwargs) -> tuple["RunWriter", Any] | None:
        """A writer and the lock it writes under; None when another writer holds the run."""
        lock = take_lock(run)
        if lock is None:
            return None
        return cls(run, **kwargs), lock

    # -- events ---------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return round(self.clock() - self._t0, 4)

    def emit(self, event: ev.Event) -> None:
        with self._events_lock:
            try:
                self._events.write(event)
            except OSError as e:
                raise self._write_error(e, self.run.events_path) from None
        self.observe(event)

    def observe(self, event: ev.Event) -> None:
        """What a record means for the status and summary, without writing it: emit's second
        half, and all of it for a record another process wrote (a run of several processes, whose
        rank 0 writes the events while its supervisor owns the status)."""
        if isinstance(event, ev.Losses):
            with self._lock:
                if self._first_step is None:
                    self._first_step = event.first_step
                self._last_step = event.last_step
        elif isinstance(event, ev.Started):
            from torchdeck.runs.view import epochs_spanned

            with self._lock:
                self.status.total_steps = event.total_steps
                self._train_t0 = self.clock()
                self._started_wall = event.time if isinstance(event.time, (int, float)) else time.time()
                self._epochs = epochs_spanned(event.config, event.steps_per_epoch)
        elif isinstance(event, ev.Checkpointed):
            if event.path:
                self._recorded.add(event.path)
            self._count_checkpoints()
            self.write_summary()
        elif isinstance(event, ev.EpochEnd):
            if event.val_loss is not None and (self.best_val is None or event.val_loss < self.best_val):
                self.best_val = event.val_loss
            self.write_summary()

    def _count_checkpoints(self) -> None:
        """The run list's count: the run's own complete ones, and the recorded ones still there."""
        self.checkpoints = len(checkpoints.list_checkpoints(self.run.checkpoints_dir)) + sum(
            map(os.path.exists, self._recorded))

    def losses(self, first_step: int, epoch: int, floats: list[float]) -> ev.Losses:
        rec = ev.Losses.from_floats(first_step, epoch, floats, elapsed=self.elapsed())
        self.emit(rec)
        return rec

    def scalars(self, name: str, steps: list[int], floats: list[float]) -> ev.Scalars | None:
        if not steps:
            return None
        rec = ev.Scalars.from_points(name, steps, floats)
        self.emit(rec)
        return rec

    def _write_error(self, e: OSError, path) -> Exception:
        """An error that ends the run "failed" with its cause in the status: a full disk named."""
        import errno

        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            from torchdeck.checkpoints.writer import describe_disk

            return NoSpace(f"no space left on {describe_disk(path)} writing {path.name} of run {self.run.id}")
        return from_os_error(e, f"writing {path}")

    # -- status and summary ---------------------------------------------------------------------
    def progress(self, *, state: str | None = None, step: int | None = None, epoch: int | None = None,
                 last_loss: float | None = None) -> None:
        with self._lock:
            changed = state is not None and state != self.status.state
            if changed and state == "paused":
                self._paused_at = self.clock()
            elif changed and self._paused_at is not None:
                self._paused_total += self.clock() - self._paused_at
                self._paused_at = None
            if state is not None:
                self.status.state = state
            if step is not None:
                self.status.step = step
            if epoch is not None:
                self.status.epoch = epoch
            if last_loss is not None:
                self.status.last_loss = last_loss
        if changed:
            self.write_status()
            self.write_summary()

    def write_status(self) -> None:
        with self._write_lock:
            with self._lock:
                snapshot = asdict(self.status)
            try:
                atomic_write_json(self.run.path / "status.json", snapshot, durable=snapshot["state"] in FINAL_STATES)
            except OSError as e:
                raise self._write_error(e, self.run.path / "status.json") from None

    def write_summary(self) -> None:
        with self._summary_lock:  # the checkpoint writer's thread reports here too
            self._write_summary()

    def _write_summary(self) -> None:
        prev = self.run.summary()
        if prev is None:
            return
        with self._lock:
            st = self.status
            prev.state, prev.step, prev.epoch, prev.total_steps = st.state, st.step, st.epoch, st.total_steps
            prev.last_loss = st.last_loss
            self._timing(prev)
        prev.best_val_loss = self.best_val
        prev.checkpoints = self.checkpoints
        if prev.state in FINAL_STATES:
            prev.ended = time.time()
        try:
            atomic_write_json(self.run.path / "summary.json", asdict(prev), durable=prev.state in FINAL_STATES)
        except OSError as e:
            raise self._write_error(e, self.run.path / "summary.json") from None

    def _timing(self, summ) -> None:
        """started, duration and steps/s into `summ` (under self._lock), and the epochs a
        max_steps-bounded run spans (its config's epochs say nothing about its length)."""
        if self._epochs:
            summ.epochs = self._epochs
        if summ.started is None and self._started_wall is not None:
            summ.started = self._started_wall
        if self._train_t0 is None:
            return  # not started training yet: what earlier writers recorded stands
        now = self.clock() if self._stopped_at is None else self._stopped_at
        paused = self._paused_total + (now - self._paused_at if self._paused_at is not None else 0.0)
        duration = self._duration_before + max(0.0, now - self._train_t0 - paused)
        steps = self._steps_before + (self._last_step - self._first_step + 1 if self._first_step is not None else 0)
        summ.duration = round(duration, 3)
        summ.steps_per_second = steps / duration if duration > 0 and steps > 0 else None

    _stopped_at: float | None = None

    def training_ended(self) -> None:
        """Training is over (another process said so); the time until `ended` (a launcher's
        teardown) does not count in the run's duration and steps/s."""
        with self._lock:
            if self._stopped_at is None:
                self._stopped_at = self.clock()

    # -- heartbeat ------------------------------------------------------------------------------
    def start_heartbeat(self) -> None:
        self._heartbeat = threading.Thread(target=self._beat_forever, name="heartbeat", daemon=True)
        self._heartbeat.start()

    def _beat_forever(self) -> None:
        while True:
            time.sleep(HEARTBEAT_SECONDS)
            with self._lock:
                if self.status.state in FINAL_STATES or self._closed:
                    return
                self.status.heartbeat += 1
            try:
                self.write_status()
            except TorchdeckError:
                pass  # a full disk: the loop meets it too and ends the run with the cause

    # -- the end --------------------------------------------------------------------------------
    def reopen_events(self) -> None:
        """Another process appended to the events file (a command run's attached script): drop a
        torn last line it left (killed mid-write) before our next record, which it would swallow."""
        with self._events_lock:
            try:
                self._events.close()
            except OSError:
                pass
            self._events = ev.EventWriter(self.run.events_path)

    def ended(self, state: str, step: int, last_loss: float | None, message: str = "", *,
              exit_status: int | None = None, exit_signal: str | None = None) -> None:
        """The `ended` record, then the final summary and status (durable): in that order, so
        a reader that sees a final status finds the whole history (and a final summary) already written.

        On a full disk the record may not fit: the status still gets the final state and its
        cause, in place over the old status.json if a new file cannot be written (the old one's
        blocks are already allocated), so the run reads "failed" with why, never "crashed"."""
        with self._lock:
            self.status.message = message
            self.status.step = step
            if last_loss is not None:
                self.status.last_loss = last_loss
        with self._events_lock:
            try:
                self._events.write(ev.Ended(state, step, last_loss, message, exit_status, exit_signal))
            except OSError as e:
                print(f"cannot write the ended record: {e}", file=sys.stderr, flush=True)
            try:
                self._events.close()
            except OSError:
                pass
            self._closed = True
        with self._lock:
            self.status.state = state
        if self._recorded:  # a framework deletes its old checkpoints after telling of the new one
            try:
                self._count_checkpoints()
            except TorchdeckError:
                pass
        # The summary before the status: a reader that sees the final status finds the run list's
        # summary final too (the other order let `runs list` read "running" after the end).
        try:
            self.write_summary()
        except TorchdeckError as e:
            print(f"cannot write summary.json: {e}", file=sys.stderr, flush=True)
        try:
            self.write_status()
        except TorchdeckError as e:
            print(f"cannot replace status.json ({e}): writing it in place", file=sys.stderr, flush=True)
            try:
                self._write_status_in_place()
            except OSError as e2:  # readers will see the dead worker and record "crashed"
                print(f"cannot write status.json in place either: {e2}", file=sys.stderr, flush=True)

    def _write_status_in_place(self) -> None:
        import json

        with self._lock:
            data = (json.dumps(asdict(self.status), indent=1, sort_keys=True) + "\n").encode()
        with open(self.run.path / "status.json", "r+b") as f:
            f.write(data)
            f.truncate(len(data))
            f.flush()
            os.fsync(f.fileno())
