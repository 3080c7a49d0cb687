"""A run of several processes: PyTorch's own torchrun and DistributedDataParallel, owned by a
torchdeck supervisor.

`python -m torchdeck.runs.ddp RUN_DIR` is the supervisor (started by RunStore.launch for a run
with nproc > 1, in its own session like a worker). It holds the run's lock, writes status.json
(heartbeat), summary.json and the `resumed`/`ended` records, and runs
`python -m torch.distributed.run --standalone --nproc-per-node N -m torchdeck.runs.ddp --rank
RUN_DIR` as its child (its own process group, PR_SET_PDEATHSIG), with TORCHELASTIC_ERROR_FILE
set: torchrun copies the first failed rank's error file there, so a rank's exception ends the
run "failed" with that rank's error. Rank 0 alone appends events and writes checkpoints; the
supervisor follows the events into the status (step, loss, paused). Each rank sets its own
PR_SET_PDEATHSIG (torchrun starts ranks in their own sessions), so a killed torchrun takes its
ranks with it, and the supervisor's end kills whatever still carries the run's mark.

Stop: a control request (rank 0 reads it, every rank stops at the same step); SIGTERM/SIGINT to
the supervisor is passed to torchrun, which passes it to every rank (each stops at the next
chunk's end, saving a checkpoint); a second one, or a rank that ignores it for
KILL_AFTER seconds, gets the SIGKILL of everything. A stop during the rendezvous ends torchrun.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from torchdeck.errors import TorchdeckError
from torchdeck.fsutil import atomic_write_json, read_json
from torchdeck.runs import events as ev
from torchdeck.runs.store import Run

RANKS_DIR = "ranks"  # the run's per-process files: outcome.json, error.json, rank-N.error.json
MARK_ENV = "TORCHDECK_DDP_RUN_DIR"  # every process of the run carries it (kill_leftovers finds them)
CONTROL_SEQ_ENV = "TORCHDECK_CONTROL_SEQ"  # control requests up to this one are history for rank 0
POLL_SECONDS = 0.1
KILL_AFTER = 30.0  # seconds from passing SIGTERM on to the SIGKILL of every process


def torchrun_argv(cfg, run_dir: Path) -> list[str]:
    """torchrun's command line for the run: --standalone on one node (a free local port, no port
    to collide with), else the multi-node options passed through (c10d rendezvous)."""
    argv = [sys.executable, "-m", "torch.distributed.run"]
    if cfg.nnodes > 1:
        argv += ["--nnodes", str(cfg.nnodes), "--node-rank", str(cfg.node_rank), "--rdzv-backend", "c10d",
                 "--rdzv-endpoint", cfg.rdzv_endpoint, "--rdzv-id", "torchdeck"]
    else:
        argv += ["--standalone"]
    argv += ["--nproc-per-node", str(cfg.nproc), "--max-restarts", "0", "-m", "torchdeck.runs.ddp", "--rank",
             str(run_dir)]
    return argv


# -- the ranks -----------------------------------------------------------------------------------

def _set_parent_death_signal() -> None:
    """torchrun starts each rank in its own session: if torchrun dies (SIGKILL) the kernel kills
    the rank too (Linux), instead of leaving it training alone."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return


class LeaderHooks:
    """Rank 0's Hooks: it appends the events (the supervisor owns status and summary and follows
    them) and reads control.json."""

    def __init__(self, run: Run, stop: threading.Event):
        self.run = run
        self._stop = stop
        self._lock = threading.Lock()  # the checkpoint writer's thread emits too
        self._events = ev.EventWriter(run.events_path)
        try:
            self._control_seq = int(os.environ.get(CONTROL_SEQ_ENV, ""))
        except ValueError:
            self._control_seq = run.read_control()[1]

    def emit(self, event: ev.Event) -> None:
        with self._lock:
            self._events.write(event)

    def progress(self, **_) -> None:
        pass  # the supervisor reads the step, loss and state from the events

    def control(self) -> str | None:
        request, self._control_seq = self.run.control_since(self._control_seq)
        return request

    def stop_requested(self) -> bool:
        return self._stop.is_set()


class RankHooks:
    """Any other rank's: it writes nothing; only a signal reaches it (and is agreed at the chunk's end)."""

    def __init__(self, stop: threading.Event):
        self._stop = stop

    def emit(self, event) -> None:
        pass

    def progress(self, **_) -> None:
        pass

    def control(self) -> None:
        return None

    def stop_requested(self) -> bool:
        return self._stop.is_set()


def _is_peer_error(e: BaseException) -> bool:
    """An error a rank gets because another one failed (a collective whose peer went away)."""
    try:
        import torch.distributed as dist

        if isinstance(e, dist.DistError):
            return True
    except (ImportError, AttributeError):
        pass
    text = str(e)
    return any(s in text for s in ("Connection closed by peer", "Connection reset by peer", "gloo", "NCCL"))


def _record_rank_error(run: Run, rank: int, e: BaseException) -> None:
    """The rank's error, where torchrun looks (TORCHELASTIC_ERROR_FILE, torch's own JSON shape) and
    in the run's ranks/ folder with a precise time and whether it followed another rank's failure."""
    message = f"rank {rank}: {type(e).__name__}: {e}" if not isinstance(e, TorchdeckError) else f"rank {rank}: {e}"
    peer = _is_peer_error(e)
    now = time.time()
    data = {"message": {"message": message, "extraInfo": {
        "py_callstack": traceback.format_exc(), "timestamp": str(int(now)), "time": now, "peer": peer,
        "rank": rank}}}
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    for target in filter(None, (path, str(run.path / RANKS_DIR / f"rank-{rank}.error.json"))):
        try:
            with open(target, "w") as f:
                json.dump(data, f)
        except OSError:
            pass


def rank_main(run_dir: str) -> int:
    parent = os.getppid()
    _set_parent_death_signal()
    if os.getppid() != parent:  # torchrun died before the request was in place
        return 1
    run = Run(Path(run_dir))
    rank = int(os.environ.get("RANK", "0"))
    from torchdeck.training.distributed import LAUNCHED_ENV

    os.environ[LAUNCHED_ENV] = "1"  # DDP even with one process (the GPU check's nproc 1)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    trainer = None
    try:
        from torchdeck.runs.worker import resume_for
        from torchdeck.training.loop import Trainer

        hooks = LeaderHooks(run, stop) if rank == 0 else RankHooks(stop)
        config = run.config()
        trainer = Trainer(config, hooks, run_id=run.id, checkpoints_dir=run.checkpoints_dir if rank == 0 else None,
                          resume=resume_for(run))
        outcome = trainer.run()
        if rank == 0:
            atomic_write_json(run.path / RANKS_DIR / "outcome.json", {
                "state": outcome.state, "step": outcome.step, "epoch": outcome.epoch,
                "last_loss": outcome.last_loss, "message": outcome.message})
        if trainer.dist is not None:
            trainer.dist.close()
        # Done: the outcome and every checkpoint are on disk. Not through the interpreter's
        # teardown, where a C++ thread of torch's still joinable at exit aborted a rank that had
        # finished ("terminate called without an active exception", SIGABRT, 1 run in ~100).
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(0)
    except BaseException as e:  # noqa: BLE001  (told to the supervisor through the error files)
        traceback.print_exc()
        _record_rank_error(run, rank, e)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(1)  # not through atexit: a process group whose peers are gone can hang there


# -- the supervisor ------------------------------------------------------------------------------

def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


class Supervisor:
    """Runs one run of several processes to its end; the caller holds the run's lock."""

    def __init__(self, run: Run, *, heartbeat: bool = True):
        from torchdeck.runs.worker import resumed_record
        from torchdeck.runs.writer import RunWriter

        self.run = run
        self.heartbeat = heartbeat
        from torchdeck.runs import resume as resume_mod

        self.writer = RunWriter(run, resumed=resumed_record(resume_mod.pending(run)))
        self._tail = ev.EventTail(run.events_path)
        try:
            self._tail.offset = os.path.getsize(run.events_path)  # what rank 0 appends from now on
        except OSError:
            pass
        self._control_seq = run.read_control()[1]
        self._signals = 0
        self._signals_seen = 0
        self._term_at: float | None = None
        self._killed = False
        self._stop_reason = ""
        self._started = False
        self._trained = False
        self._step = 0
        self._epoch = 0
        self._last_loss: float | None = None
        self.proc: subprocess.Popen | None = None

    def say(self, line: str) -> None:
        try:
            print(f"torchdeck: {line}", flush=True)
        except OSError:
            pass

    def _on_signal(self, signum, frame) -> None:
        self._signals += 1

    def execute(self) -> str:
        from torchdeck.runs.command import _child_setup

        writer = self.writer
        writer.write_status()
        writer.write_summary()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        try:
            cfg = self.run.config()
        except TorchdeckError as e:
            return self._end("failed", str(e))
        ranks = self.run.path / RANKS_DIR
        ranks.mkdir(exist_ok=True)
        for old in ranks.iterdir():  # an earlier launch's outcome and errors are not this one's
            try:
                old.unlink()
            except OSError:
                pass
        self.error_file = ranks / "error.json"
        env = {**os.environ, MARK_ENV: str(self.run.path), "TORCHELASTIC_ERROR_FILE": str(self.error_file),
               CONTROL_SEQ_ENV: str(self._control_seq), "PYTHONUNBUFFERED": "1",
               "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
        from torchdeck.training.distributed import rank_threads

        env.setdefault("OMP_NUM_THREADS", str(cfg.threads or rank_threads(cfg.nproc)))
        argv = torchrun_argv(cfg, self.run.path)
        self.say(f"{cfg.processes} process(es): {' '.join(argv[1:])}")
        try:
            self.log_offset = os.path.getsize(self.run.log_path)
        except OSError:
            self.log_offset = 0
        try:
            self.proc = subprocess.Popen(argv, cwd=self.run.path, env=env, stdin=subprocess.DEVNULL,
                                         stdout=sys.stdout.fileno(), stderr=sys.stderr.fileno(),
                                         preexec_fn=_child_setup(), close_fds=True)
        except OSError as e:
            return self._end("failed", f"cannot start torchrun: {e.strerror or e}")
        if self.heartbeat:
            writer.start_heartbeat()  # after the fork: no thread of ours holds a lock across it
        rc = self._wait(self.proc)
        return self._finish(rc)

    def _wait(self, proc: subprocess.Popen) -> int:
        while True:
            try:
                return proc.wait(timeout=POLL_SECONDS)
            except subprocess.TimeoutExpired:
                pass
            self._follow()
            if not self._trained and (self.run.path / RANKS_DIR / "outcome.json").exists():
                self._trained = True
                self.writer.training_ended()  # torchrun's teardown is not training time
            request, self._control_seq = self.run.control_since(self._control_seq)
            if request == "stop" and not self._started and self._term_at is None:
                self._stop_reason = "a stop request before training started"
                self._terminate(proc)
            if self._signals > self._signals_seen:
                self._signals_seen = self._signals
                if self._term_at is None:
                    self._stop_reason = "SIGTERM/SIGINT to the supervisor"
                    self._terminate(proc)
                else:
                    self._kill(proc, "asked again")
            if self._term_at is not None and not self._killed and time.monotonic() - self._term_at > KILL_AFTER:
                self._kill(proc, f"no exit {KILL_AFTER:g} s after SIGTERM")

    def _terminate(self, proc: subprocess.Popen) -> None:
        """SIGTERM to torchrun, which passes it to every rank: each stops at the next chunk's end."""
        self.say(f"stopping ({self._stop_reason}): SIGTERM to torchrun and its ranks")
        self._term_at = time.monotonic()
        try:
            os.kill(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def _kill(self, proc: subprocess.Popen, why: str) -> None:
        from torchdeck.runs.command import kill_leftovers

        self.say(f"{why}: SIGKILL to torchrun and every rank")
        self._killed = True
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        kill_leftovers(self.run.path, env_name=MARK_ENV)

    def _follow(self) -> None:
        """Rank 0's new records into the status and summary (step, epoch, loss, paused)."""
        try:
            batch = self._tail.read_new(1 << 20)
        except OSError:
            return
        state = None
        for e in batch:
            self.writer.observe(e)
            if isinstance(e, ev.Started):
                self._started = True
            elif isinstance(e, ev.Losses) and e.values:
                self._step, self._epoch = max(self._step, e.last_step), e.epoch
                self._last_loss = next((v for v in reversed(e.values) if v is not None), self._last_loss)
            elif isinstance(e, ev.StateChanged):
                state = e.state
        if batch:
            self.writer.progress(state=state, step=self._step, epoch=self._epoch, last_loss=self._last_loss)

    def _finish(self, rc: int) -> str:
        from torchdeck.runs.command import kill_leftovers

        self._follow()
        try:  # whatever torchrun left in its group, and any rank that left it (they carry the mark)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        left = kill_leftovers(self.run.path, env_name=MARK_ENV)
        if left:
            self.say(f"killed {len(left)} process(es) left behind (pid {', '.join(map(str, left))})")
        outcome = read_json(self.run.path / RANKS_DIR / "outcome.json")
        outcome = outcome if isinstance(outcome, dict) and outcome.get("state") else None
        if outcome is not None:
            self._step = int(outcome.get("step") or self._step)
            if isinstance(outcome.get("last_loss"), (int, float)):
                self._last_loss = outcome["last_loss"]
        error, peer = self.rank_error()
        stopping = self._term_at is not None
        if error is not None and peer:  # the others only lost their peer: was a rank killed outright?
            killed = _signalled_ranks(self._log_text())
            if killed and not stopping:
                rank, sig = killed[0]
                error = f"rank {rank} was killed by {sig}; the other ranks lost their peer ({error.splitlines()[0][:160]})"
        if outcome is not None:
            # Rank 0 wrote the result after every rank's last step (each step's collectives need
            # all of them), with the checkpoints on disk: a process that failed after that
            # failed as it shut down, and the run's result stands, the failure told.
            message = str(outcome.get("message") or "")
            if rc != 0 and not (stopping and outcome["state"] == "stopped" and error is None):
                what = error.splitlines()[0][:200] if error else self._torchrun_failure(rc)
                message = (message + "; " if message else "") + f"after training ended a process failed as it shut down: {what}"
            return self._end(outcome["state"], message)
        if error is not None:
            return self._end("failed", error)
        if stopping:
            how = f"exited with status {rc}" if rc >= 0 else f"killed by {_signal_name(-rc)}"
            return self._end("stopped", f"torchrun {how} ({self._stop_reason})")
        return self._end("failed", self._torchrun_failure(rc))

    def _log_text(self) -> str:
        try:
            with open(self.run.log_path, "rb") as f:
                f.seek(self.log_offset)
                return f.read()[-65536:].decode("utf-8", "replace")
        except OSError:
            return ""

    def rank_error(self) -> tuple[str | None, bool]:
        """The failed rank's error: TORCHELASTIC_ERROR_FILE (torchrun's copy of the first failure)
        and each rank's own record; an error a rank got only because a peer went away yields
        to the peer's own, then the earliest."""
        found: list[tuple[bool, float, str]] = []
        paths = [self.error_file, *sorted((self.run.path / RANKS_DIR).glob("rank-*.error.json"))]
        for path in paths:
            d = read_json(path)
            msg = d.get("message") if isinstance(d, dict) else None
            if isinstance(msg, str):  # torch's shape for an error it recorded itself
                msg = {"message": msg, "extraInfo": {}}
            if not isinstance(msg, dict) or not isinstance(msg.get("message"), str):
                continue
            extra = msg.get("extraInfo") if isinstance(msg.get("extraInfo"), dict) else {}
            t = extra.get("time") if isinstance(extra.get("time"), (int, float)) else \
                float(extra.get("timestamp") or 0) if str(extra.get("timestamp") or "").isdigit() else 0.0
            if msg["message"].startswith("SignalException"):
                continue  # torchrun's own record of the SIGTERM it was sent (a stop), not a rank's error
            found.append((bool(extra.get("peer")), float(t), msg["message"].strip()))
        if not found:
            return None, False
        found.sort()
        return found[0][2], found[0][0]

    def _torchrun_failure(self, rc: int) -> str:
        """torchrun failed with no rank's error recorded: a rank killed by a signal (its root-cause
        block names the rank and signal), a rendezvous that failed, or torchrun's own error."""
        from torchdeck.runs.command import _output_tail

        text = self._log_text()
        root = text.rfind("Root Cause")
        if root >= 0:
            block = text[root:]
            rank = re.search(r"rank\s*:\s*(\d+)", block)
            why = re.search(r"traceback\s*:\s*(.+)", block)
            code = re.search(r"exitcode\s*:\s*(-?\d+)", block)
            if rank:
                what = why.group(1).strip() if why and "N/A" not in why.group(1) else \
                    f"exit code {code.group(1)}" if code else "failed"
                return f"rank {rank.group(1)}: {what}"
        if "Address already in use" in text or "EADDRINUSE" in text:
            return "the rendezvous port is in use (another job listens there): choose another --rdzv-endpoint port"
        how = f"exited with status {rc}" if rc >= 0 else f"killed by {_signal_name(-rc)}"
        tail = _output_tail(self.run.log_path, self.log_offset)
        return f"torchrun {how}" + (f"; last output: {tail}" if tail else "")

    def _end(self, state: str, message: str) -> str:
        self.say(f"run {self.run.id} {state}" + (f": {message}" if message else ""))
        self.writer.reopen_events()  # a torn line a killed rank 0 left must not swallow our record
        self.writer.ended(state, self._step, self._last_loss, message)
        return state

    log_offset = 0
    error_file: Path


def _signalled_ranks(text: str) -> list[tuple[int, str]]:
    """(rank, signal name) of each rank torchrun's failure report shows killed by a signal."""
    out = []
    for m in re.finditer(r"rank\s*:\s*(\d+)[^\n]*\n\s*exitcode\s*:\s*-(\d+)", text):
        entry = (int(m.group(1)), _signal_name(int(m.group(2))))
        if entry not in out:
            out.append(entry)
    return out


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "--rank":
        return rank_main(argv[1])
    if len(argv) != 1:
        print("usage: python -m torchdeck.runs.ddp RUN_DIR | --rank RUN_DIR", file=sys.stderr)
        return 2
    from torchdeck.runs.writer import hold_for_life

    run = Run(Path(argv[0]))
    lock = hold_for_life(run)
    if lock is None:
        return 1
    print(f"supervisor {os.getpid()} for run {run.id}", flush=True)
    state = Supervisor(run).execute()
    return 0 if state in ("finished", "stopped") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
