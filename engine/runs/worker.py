"""A run's worker process: `python -m torchdeck.runs.worker RUN_DIR`.

Started in its own session by RunStore.launch; holds an exclusive flock on the run directory
while it lives and writes the run's files through its RunWriter (heartbeat, events, status,
summary); reads control.json at chunk boundaries. SIGTERM asks for a graceful stop.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

from torchdeck.checkpoints import store as checkpoints
from torchdeck.errors import TorchdeckError
from torchdeck.runs import events as ev
from torchdeck.runs.store import Run
from torchdeck.runs.writer import RunWriter, hold_for_life, take_lock

__all__ = ["WorkerHooks", "execute", "main", "take_lock"]

class WorkerHooks:
    """The loop's Hooks (torchdeck.training.loop): writing goes through the run's RunWriter;
    control requests and signals are the worker's own."""

    def __init__(self, run: Run, writer: RunWriter):
        self.run = run
        self.writer = writer
        self._control_seq = run.read_control()[1]  # requests older than this worker are history
        self._stop = threading.Event()

    @property
    def status(self):
        return self.writer.status

    # Hooks protocol
    def emit(self, event: ev.Event) -> None:
        self.writer.emit(event)

    def progress(self, *, state=None, step=None, epoch=None, last_loss=None) -> None:
        self.writer.progress(state=state, step=step, epoch=epoch, last_loss=last_loss)

    def control(self) -> str | None:
        request, self._control_seq = self.run.control_since(self._control_seq)
        return request

    def stop_requested(self) -> bool:
        return self._stop.is_set()


def execute(run: Run, *, clock=time.monotonic, heartbeat: bool = True, freeze_gc: bool = False) -> str:
    """Train the run to an end, recording every state; the caller holds the run's lock.
    Returns the final state.

    freeze_gc (the worker process's own entry point): once the model, data and optimizer are
    built, move every object alive into the collector's permanent generation (gc.freeze), so
    the full collections that the loop's chunk of pending loss tensors triggers every few
    seconds scan only what was made since, not the ~170,000 objects of torch and the run's set-up
    (each such collection took 50-150 ms of training time: 2-4 % of a small model's run)."""
    checkpoints.remove_stale_temporaries(run.checkpoints_dir, writer_dead=True)  # we hold the lock
    from torchdeck.runs import resume as resume_mod

    request = resume_mod.pending(run)
    writer = RunWriter(run, clock=clock, resumed=resumed_record(request))
    hooks = WorkerHooks(run, writer)
    writer.write_status()
    writer.write_summary()
    if heartbeat:
        writer.start_heartbeat()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: hooks._stop.set())
        signal.signal(signal.SIGINT, lambda *_: hooks._stop.set())

    state, message, last_loss = "failed", "", None
    try:
        from torchdeck.training.loop import Trainer

        config = run.config()
        resume = resume_for(run, request)
        trainer = Trainer(config, hooks, run_id=run.id, checkpoints_dir=run.checkpoints_dir, clock=clock,
                          resume=resume)
        if freeze_gc:
            gc.freeze()
        outcome = trainer.run()
        state, message, last_loss = outcome.state, outcome.message, outcome.last_loss
        step = outcome.step
    except TorchdeckError as e:
        message = str(e)
        step = writer.status.step
        print(f"error: {message}", file=sys.stderr)
    except BaseException as e:  # the log gets the traceback; the status gets one line
        message = f"{type(e).__name__}: {e}"
        step = writer.status.step
        traceback.print_exc()
    writer.ended(state, step, last_loss, message)
    print(f"run {run.id} {state} at step {step}" + (f": {message}" if message else ""), flush=True)
    return state


def resumed_record(request: dict | None) -> ev.Resumed | None:
    """The `resumed` record a resume request starts the run's new events with (None: a fresh start)."""
    if request is None:
        return None
    changes = request.get("changes") if isinstance(request.get("changes"), dict) else None
    return ev.Resumed(_int(request.get("step")), checkpoint=str(request.get("checkpoint") or ""),
                      exact=request.get("exact") is not False, changes=changes, note=str(request.get("note") or ""))


_NO_REQUEST = object()


def resume_for(run: Run, request=_NO_REQUEST):
    """The loop's Resume for the run's pending resume request (None: a fresh start); the
    checkpoint's hashes are checked again (what was checked when asked may have changed since)."""
    from torchdeck.runs import resume as resume_mod

    if request is _NO_REQUEST:
        request = resume_mod.pending(run)
    if request is None:
        return None
    from torchdeck.checkpoints import ops
    from torchdeck.training.loop import Resume

    name = request.get("checkpoint")
    ckpt = run.checkpoints_dir / name if isinstance(name, str) and name else None
    if ckpt is not None:
        ops.check_hashes(ckpt, field="resume")
    lr = request.get("lr")
    return Resume(ckpt, lr=float(lr) if isinstance(lr, (int, float)) and not isinstance(lr, bool) else None)


def _int(v) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else 0


CHECK = "check "  # a launcher's line asking the standby worker to check a request's config (JSON)


def _answer_check(config_json: str, answers) -> None:
    """The launcher's preflight (training.loop.preflight), run where torch is already imported:
    one JSON line back, {"ok": true}, {"error": {class, code, message, field}} for a refused
    request, or {"unavailable": why} for anything else (the launcher then checks it itself)."""
    import json

    from torchdeck.errors import TorchdeckError
    from torchdeck.runs.config import RunConfig
    from torchdeck.training.loop import preflight

    try:
        preflight(RunConfig(**json.loads(config_json)))
        reply = {"ok": True}
    except TorchdeckError as e:
        reply = {"error": {"class": type(e).__name__, **e.to_json()}}
    except BaseException as e:  # noqa: BLE001  (told the same way by the launcher's own check)
        reply = {"unavailable": f"{type(e).__name__}: {e}"}
    try:
        answers.write(json.dumps(reply) + "\n")
        answers.flush()
    except OSError:
        pass  # the launcher is gone: the next read of stdin ends this process


def main(argv: list[str]) -> int:
    if argv == ["--standby"]:
        from torchdeck.runs.standby import serve

        run_dir = serve()
        if run_dir is None:
            return 0
        argv = [run_dir]
    if len(argv) != 1:
        print("usage: python -m torchdeck.runs.worker RUN_DIR | --standby", file=sys.stderr)
        return 2
    run = Run(Path(argv[0]))
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    lock = hold_for_life(run, "worker")
    if lock is None:
        return 1
    print(f"worker {os.getpid()} for run {run.id} on {socket.gethostname()}", flush=True)
    state = execute(run, freeze_gc=True)
    return 0 if state in ("finished", "stopped") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
