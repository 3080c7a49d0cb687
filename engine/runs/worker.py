"""A run's worker process: `python -m torchdeck.runs.worker RUN_DIR`.

Started in its own session by RunStore.launch; holds an exclusive flock on the run directory
while it lives, bumps a heartbeat counter from a thread, appends events, replaces status.json,
and reads control.json at chunk boundaries. SIGTERM asks for a graceful stop.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from torchdeck.checkpoints import store as checkpoints
from torchdeck.errors import TorchdeckError
from torchdeck.fsutil import atomic_write_json, read_json
from torchdeck.options import FINAL_STATES
from torchdeck.procs import process_start_time
from torchdeck.runs import events as ev
from torchdeck.runs.store import Run, Status, acquire_run_lock

HEARTBEAT_SECONDS = 0.5


class WorkerHooks:
    def __init__(self, run: Run, writer: ev.EventWriter):
        self.run = run
        self.writer = writer
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # a snapshot and its write go together, or a stale one lands last
        self.status = Status(
            state="running", pid=os.getpid(), pid_start=process_start_time(os.getpid()),
            host=socket.gethostname(),
        )
        self._control_seq = self._read_control()[1]  # requests older than this worker are history
        self._stop = threading.Event()
        self.checkpoints = 0
        self.best_val: float | None = None

    # Hooks protocol
    def emit(self, event: ev.Event) -> None:
        self.writer.write(event)
        if isinstance(event, ev.Started):
            with self._lock:
                self.status.total_steps = event.total_steps
        elif isinstance(event, ev.Checkpointed):
            self.checkpoints = len(checkpoints.list_checkpoints(self.run.checkpoints_dir))
            self.write_summary()
        elif isinstance(event, ev.EpochEnd):
            if event.val_loss is not None and (self.best_val is None or event.val_loss < self.best_val):
                self.best_val = event.val_loss
            self.write_summary()

    def progress(self, *, state=None, step=None, epoch=None, last_loss=None) -> None:
        with self._lock:
            changed = state is not None and state != self.status.state
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

    def control(self) -> str | None:
        request, seq = self._read_control()
        if seq > self._control_seq:
            self._control_seq = seq
            return request
        return None

    def stop_requested(self) -> bool:
        return self._stop.is_set()

    # files
    def _read_control(self) -> tuple[str | None, int]:
        d = read_json(self.run.path / "control.json")
        if not isinstance(d, dict):
            return None, 0
        try:
            return d.get("request"), int(d.get("seq", 0))
        except (TypeError, ValueError):
            return None, 0

    def write_status(self) -> None:
        with self._write_lock:
            with self._lock:
                snapshot = asdict(self.status)
            atomic_write_json(self.run.path / "status.json", snapshot, durable=snapshot["state"] in FINAL_STATES)

    def write_summary(self) -> None:
        prev = self.run.summary()
        if prev is None:
            return
        with self._lock:
            st = self.status
            prev.state, prev.step, prev.epoch, prev.total_steps = st.state, st.step, st.epoch, st.total_steps
            prev.last_loss = st.last_loss
        prev.best_val_loss = self.best_val
        prev.checkpoints = self.checkpoints
        if prev.state in FINAL_STATES:
            prev.ended = time.time()
        atomic_write_json(self.run.path / "summary.json", asdict(prev), durable=prev.state in FINAL_STATES)

    def heartbeat_forever(self) -> None:
        while True:
            time.sleep(HEARTBEAT_SECONDS)
            with self._lock:
                if self.status.state in FINAL_STATES:
                    return
                self.status.heartbeat += 1
            self.write_status()


def take_lock(run: Run):
    """The run's exclusive lock, held for the life of the process (the kernel drops it at exit);
    None when another worker holds it."""
    return acquire_run_lock(run.path)  # retries briefly: a reader's probe must not turn us away


def execute(run: Run, *, clock=time.monotonic, heartbeat: bool = True) -> str:
    """Train the run to an end, recording every state; the caller holds the run's lock.
    Returns the final state."""
    checkpoints.remove_stale_temporaries(run.checkpoints_dir)  # we hold the lock: their writers are dead
    writer = ev.EventWriter(run.events_path)
    hooks = WorkerHooks(run, writer)
    hooks.write_status()
    hooks.write_summary()
    if heartbeat:
        threading.Thread(target=hooks.heartbeat_forever, name="heartbeat", daemon=True).start()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: hooks._stop.set())
        signal.signal(signal.SIGINT, lambda *_: hooks._stop.set())

    state, message, last_loss = "failed", "", None
    try:
        from torchdeck.training.loop import Trainer

        config = run.config()
        trainer = Trainer(config, hooks, run_id=run.id, checkpoints_dir=run.checkpoints_dir, clock=clock)
        outcome = trainer.run()
        state, message, last_loss = outcome.state, outcome.message, outcome.last_loss
        step = outcome.step
    except TorchdeckError as e:
        message = str(e)
        step = hooks.status.step
        print(f"error: {message}", file=sys.stderr)
    except BaseException as e:  # the log gets the traceback; the status gets one line
        message = f"{type(e).__name__}: {e}"
        step = hooks.status.step
        traceback.print_exc()
    hooks.progress(step=step, last_loss=last_loss)
    with hooks._lock:
        hooks.status.message = message
    writer.write(ev.Ended(state, step, last_loss, message))
    writer.close()
    hooks.progress(state=state)
    print(f"run {run.id} {state} at step {step}" + (f": {message}" if message else ""), flush=True)
    return state


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m torchdeck.runs.worker RUN_DIR", file=sys.stderr)
        return 2
    run = Run(Path(argv[0]))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    lock = take_lock(run)
    if lock is None:
        print(f"run {run.id} already has a worker", file=sys.stderr)
        return 1
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the terminal that started us is not our master
    print(f"worker {os.getpid()} for run {run.id} on {socket.gethostname()}", flush=True)
    state = execute(run)
    return 0 if state in ("finished", "stopped") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
