"""Any command as a run: `torchdeck run -- python train.py --lr 0.1`.

`create` makes the run (config.json: `source: "command"`, the argv list, its working directory
and the stop timeouts) and `launch` starts its supervisor, `python -m torchdeck.runs.command
RUN_DIR`, detached in its own session like a worker (a dropped SSH connection, a closed TUI
or `torchdeck run` itself ending do not stop it), output to the run's worker.log.

The supervisor is the run's one owner: it holds the run's lock through a RunWriter, writes
status (heartbeat), summary and the `started`/`ended` records, and starts the command (no
shell) in its own process group with stdout and stderr appended to worker.log and
TORCHDECK_RUN_DIR naming the run, so that `torchdeck.init()` inside it attaches and only
appends events (the run keeps the supervisor's name, state and end).

Stop (a control request, `runs stop`, the TUI, or SIGTERM/SIGINT to the supervisor): SIGINT to
the command's process group, SIGTERM after `int_timeout` s, SIGKILL after `term_timeout` s
more; each further SIGTERM/SIGINT to the supervisor skips to the next signal at once. The end:
exit 0 -> "finished", a stop -> "stopped", else "failed" with "exited with status N" or
"killed by SIGNAME" and the last lines of its output; a command that cannot be started ->
"failed" naming why. The supervisor SIGKILLed: readers see "crashed" (lock free, no final
state); the command, started with PR_SET_PDEATHSIG, gets SIGKILL from the kernel at once, and
the reader that records the crash kills whatever else still carries the run's TORCHDECK_RUN_DIR
(a `sh -c` wrapper's children, a launcher's workers: see kill_leftovers).
"""

from __future__ import annotations

import errno
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torchdeck.errors import InvalidRequest
from torchdeck.fsutil import atomic_write_json, disk_full_note, read_json
from torchdeck.runs import events as ev
from torchdeck.runs.config import MAX_NAME, RunConfig
from torchdeck.runs.store import Run, RunStore, spawn_detached
from torchdeck.workspace import Workspace

SOURCE = "command"  # config.json's "source" of a command run
PIPELINE = "command"  # its `started` record's pipeline
DEFAULT_INT_TIMEOUT = 10.0  # seconds from SIGINT to SIGTERM
DEFAULT_TERM_TIMEOUT = 5.0  # seconds from SIGTERM to SIGKILL
MAX_TIMEOUT = 3600.0
TAIL_LINES = 3  # lines of a failed command's output in its run's message
TAIL_CHARS = 400
POLL_SECONDS = 0.1  # how often the supervisor looks at its command and the control file (~0.5 % of a core)
PROGRESS_EVERY = 1.0  # how often it reads the attached script's events into status/summary (run list's step)
RUN_DIR_ENV = "TORCHDECK_RUN_DIR"  # torchdeck.api.RUN_DIR_ENV (not imported: that module is the script's)

PAUSE_REFUSED = "a command run cannot be paused (torchdeck cannot hold an arbitrary process at a safe point): " \
                "stop it, or pause inside your script"


def _seconds(x: float) -> str:
    from torchdeck.fmt import fmt_duration

    return f"{x:g} s" if x < 60 else fmt_duration(x)  # a test's 0.5 s is not "0s"


def timeouts_text(int_timeout: float, term_timeout: float) -> str:
    return f"SIGINT now, SIGTERM after {_seconds(int_timeout)}, SIGKILL after {_seconds(int_timeout + term_timeout)}"


def check_command(command: Any) -> list[str]:
    """The argv list, or InvalidRequest (field "command")."""
    if not isinstance(command, (list, tuple)) or not command:
        raise InvalidRequest("no command given: put it after --, e.g. torchdeck run -- python train.py",
                             code="usage", field="command")
    out = []
    for a in command:
        if not isinstance(a, str):
            raise InvalidRequest(f"the command's arguments must be strings, not {a!r}", field="command")
        if "\0" in a:
            raise InvalidRequest(f"the command's argument {a!r} holds a NUL byte", field="command")
        out.append(a)
    if not out[0].strip():
        raise InvalidRequest("the command's program name is empty", field="command")
    return out


def command_text(argv: list[str]) -> str:
    """The command shell-quoted on one line (a newline inside an argument written as \\n)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in shlex.join(argv))


def command_label(argv: list[str], width: int = 60) -> str:
    """The command as the run list's MODEL column shows it (shell-quoted, one line, shortened)."""
    text = command_text(argv)
    return text if len(text) <= width else text[: width - 3] + "..."


def parse_command_line(text: str) -> list[str]:
    """A command line as a shell would split it (no expansion, no pipes): what the TUI's form takes."""
    try:
        argv = shlex.split(text or "")
    except ValueError as e:  # "No closing quotation", "No escaped character"
        raise InvalidRequest(f"cannot split the command line: {str(e).lower()}", field="command") from None
    return check_command(argv)


def _timeout(value: Any, what: str, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= MAX_TIMEOUT:
        raise InvalidRequest(f"{what} must be a number of seconds from 0 to {MAX_TIMEOUT:g}, not {value!r}",
                             field=field)
    return float(value)


def _cwd(cwd: Any) -> str:
    path = Path(os.path.expanduser(str(cwd))) if cwd else Path.cwd()
    if not path.is_dir():
        raise InvalidRequest(f"working directory {str(path)!r} does not exist or is not a directory", field="cwd")
    if not os.access(path, os.X_OK):
        raise InvalidRequest(f"working directory {str(path)!r} cannot be entered (permissions)", field="cwd")
    return str(path.resolve())


def create(ws: Workspace, command: Any, *, name: str = "", cwd: Any = None,
           int_timeout: Any = DEFAULT_INT_TIMEOUT, term_timeout: Any = DEFAULT_TERM_TIMEOUT) -> Run:
    """A queued command run; every bad input refused with its field before anything is written."""
    argv = check_command(command)
    if not isinstance(name, str) or len(name) > MAX_NAME:
        raise InvalidRequest(f"name must be text of at most {MAX_NAME} characters", field="name")
    workdir = _cwd(cwd)
    t_int = _timeout(int_timeout, "--int-timeout", "int_timeout")
    t_term = _timeout(term_timeout, "--term-timeout", "term_timeout")
    cfg = RunConfig(model=command_label(argv), name=name.strip(), epochs=1,
                    checkpoint_every_epoch=False, checkpoint_on_stop=False)
    extra = {"source": SOURCE, "command": argv, "cwd": workdir, "int_timeout": t_int, "term_timeout": t_term}
    run = RunStore(ws).create(cfg, extra=extra)
    summ = run.summary()
    if summ is not None:
        summ.epochs = 0  # a command's epochs, if any, are its own
        atomic_write_json(run.path / "summary.json", asdict(summ))
    return run


def launch(run: Run) -> int:
    """Start the run's supervisor in a new session; a launch that fails records "failed: never
    started" and raises. Its cwd is /: `-m` puts the cwd first on sys.path, never the user's
    directory."""
    return spawn_detached(run, "torchdeck.runs.command", role="supervisor", cwd="/")


def start(ws: Workspace, command: Any, **kwargs) -> Run:
    run = create(ws, command, **kwargs)
    launch(run)
    return run


def is_command_run(run: Run) -> bool:
    raw = read_json(run.path / "config.json")
    return isinstance(raw, dict) and raw.get("source") == SOURCE


def command_info(run: Run) -> dict[str, Any] | None:
    """{"command", "cwd", "int_timeout", "term_timeout"} of a command run; None for any other run."""
    raw = read_json(run.path / "config.json")
    if not isinstance(raw, dict) or raw.get("source") != SOURCE:
        return None
    info = {"command": raw.get("command"), "cwd": raw.get("cwd")}
    for key, default in (("int_timeout", DEFAULT_INT_TIMEOUT), ("term_timeout", DEFAULT_TERM_TIMEOUT)):
        try:
            info[key] = _timeout(raw.get(key, default), key, key)
        except InvalidRequest:
            info[key] = default
    return info


def kill_leftovers(run_dir: Path, *, env_name: str = RUN_DIR_ENV) -> list[int]:
    """SIGKILL every process of this user whose environment names this run (TORCHDECK_RUN_DIR:
    the command and whatever it started, in its process group or not) and return their pids.
    For a command run whose supervisor died without ending it (SIGKILL, out of memory): the
    kernel's PDEATHSIG reaches the command alone, not a `sh -c` wrapper's children or a
    launcher's workers. The run directory is compared by device and inode, never by spelling."""
    try:
        target = os.stat(run_dir)
    except OSError:
        return []
    key = (target.st_dev, target.st_ino)
    prefix = env_name.encode() + b"="
    killed = []
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:  # gone, or another user's
            continue
        for entry in env.split(b"\0"):
            if entry.startswith(prefix):
                try:
                    st = os.stat(entry[len(prefix):])
                except (OSError, ValueError):
                    break
                if (st.st_dev, st.st_ino) == key:
                    try:
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                    except OSError:
                        pass
                break
    return killed


# -- the supervisor ---------------------------------------------------------------------------------

def _dir_id(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _child_setup():
    """The command's preexec_fn: its own process group (so that a stop's signals reach what it
    starts, and never the supervisor), and on Linux PR_SET_PDEATHSIG: the kernel SIGKILLs it
    when the supervisor (its parent's main thread) dies. libc is loaded here, in the parent:
    the child between fork and exec only calls it."""
    prctl = None
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            prctl = None
    parent = os.getpid()
    PR_SET_PDEATHSIG = 1

    def preexec() -> None:
        os.setpgid(0, 0)
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
            if os.getppid() != parent:  # the supervisor died before the request was in place
                os._exit(137)

    return preexec


def _output_tail(path: Path, offset: int) -> str:
    """The last lines the command wrote (from `offset` of the log), as one line for a message."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(offset, size - 8192)
            f.seek(start)
            data = f.read()
    except OSError:
        return ""
    lines = [ln.strip() for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    if start > offset and lines:
        lines = lines[1:]  # the first may be cut
    text = " | ".join(lines[-TAIL_LINES:])
    return text if len(text) <= TAIL_CHARS else "..." + text[-TAIL_CHARS:]


class Supervisor:
    """Runs one command run to its end; the caller holds the run's lock."""

    def __init__(self, run: Run, *, heartbeat: bool = True):
        from torchdeck.runs.writer import RunWriter

        self.run = run
        self.writer = RunWriter(run)
        self.heartbeat = heartbeat
        # A command run is never relaunched (it cannot be resumed): every request is its own, one
        # written while it was still queued (a Ctrl-C at once) included.
        self._control_seq = 0
        self._signals = 0  # SIGTERM/SIGINT received by the supervisor
        self._phase = 0  # 0 running; 1 SIGINT sent; 2 SIGTERM sent; 3 SIGKILL sent
        self._phase_at = 0.0
        self._stop_reason = ""
        self._tail = ev.EventTail(run.events_path)
        self._last_progress = 0.0
        self._step = 0
        self._last_loss: float | None = None

    def say(self, line: str) -> None:
        try:
            print(f"torchdeck: {line}", flush=True)
        except OSError:  # a full disk: the run's end is recorded all the same
            pass

    def _on_signal(self, signum, frame) -> None:
        self._signals += 1

    def execute(self) -> str:
        raw = read_json(self.run.path / "config.json")
        raw = raw if isinstance(raw, dict) else {}
        writer = self.writer
        writer.write_status()
        writer.write_summary()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        try:
            argv = check_command(raw.get("command"))
            cwd = str(raw.get("cwd") or "/")
            self.int_timeout = _timeout(raw.get("int_timeout", DEFAULT_INT_TIMEOUT), "int_timeout", "int_timeout")
            self.term_timeout = _timeout(raw.get("term_timeout", DEFAULT_TERM_TIMEOUT), "term_timeout",
                                         "term_timeout")
        except InvalidRequest as e:
            return self._end("failed", f"config.json: {e}", None, None)
        writer.emit(ev.Started(self.run.id, ev.finite_json({**raw, "epochs": 0}), total_steps=0, steps_per_epoch=0, num_params=0,
                               device="", time=time.time(), pipeline=PIPELINE, pipeline_note=command_text(argv)))
        request, seq = self.run.read_control()
        if self._signals or (seq > self._control_seq and request == "stop"):
            self._control_seq = seq
            return self._end("stopped", "stopped before the command started", None, None)
        env = {**os.environ, RUN_DIR_ENV: str(self.run.path)}
        env.setdefault("PYTHONUNBUFFERED", "1")  # a Python script's prints reach the log as they come
        self.say(f"running {command_text(argv)} in {cwd}")
        try:
            self.log_offset = os.path.getsize(self.run.log_path)  # the command's output starts here
        except OSError:
            self.log_offset = 0
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=sys.stdout.fileno(),
                                    stderr=sys.stderr.fileno(), preexec_fn=_child_setup(),
                                    close_fds=True)
        except OSError as e:
            why = self._start_error(argv[0], cwd, e)
            return self._end("failed", why, None, None)
        self.proc = proc
        try:
            self._dir_id = _dir_id(self.run.path)
        except OSError:
            pass
        if self.heartbeat:
            writer.start_heartbeat()  # after the fork: no thread of ours holds a lock across it
        rc = self._wait(proc)
        return self._finish(rc)

    @staticmethod
    def _start_error(program: str, cwd: str, e: OSError) -> str:
        if isinstance(e, FileNotFoundError):
            if not os.path.isdir(cwd):
                return f"cannot start {program!r}: its working directory {cwd} is gone"
            where = "" if "/" in program else " (searched PATH)"
            return f"command not found: {program!r}{where}"
        if isinstance(e, PermissionError):
            return f"cannot start {program!r}: not executable (permission denied)"
        if e.errno == errno.ENOEXEC:
            return f"cannot start {program!r}: not an executable format (a script needs a #! line)"
        return f"cannot start {program!r}: {e.strerror or e}"

    def _wait(self, proc: subprocess.Popen) -> int:
        while True:
            try:
                return proc.wait(timeout=POLL_SECONDS)
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if self._phase == 0:
                request, self._control_seq = self.run.control_since(self._control_seq)
                if request == "stop":
                    self._escalate(proc, "a stop request")
                elif request == "pause":
                    self.say(PAUSE_REFUSED)
                if self._phase == 0 and self._signals:
                    self._escalate(proc, "SIGTERM/SIGINT to the supervisor")
            else:
                if self._signals > self._signals_seen:  # asked again: the next signal now
                    self._escalate(proc, "asked again")
                elif self._phase == 1 and now - self._phase_at >= self.int_timeout:
                    self._escalate(proc, f"no exit {self.int_timeout:g} s after SIGINT")
                elif self._phase == 2 and now - self._phase_at >= self.term_timeout:
                    self._escalate(proc, f"no exit {self.term_timeout:g} s after SIGTERM")
            if now - self._last_progress >= PROGRESS_EVERY:
                self._last_progress = now
                self._progress()
                if self._phase == 0 and self._dir_gone():
                    # nobody can see, follow or stop it any more: it must not run on unowned
                    self._escalate(proc, "its run directory was deleted")

    def _dir_gone(self) -> bool:
        """The run's directory was deleted (or replaced by another of the same name)."""
        if self._dir_id is None:
            return False
        try:
            return _dir_id(self.run.path) != self._dir_id
        except FileNotFoundError:
            return True
        except OSError:
            return False

    def _escalate(self, proc: subprocess.Popen, why: str) -> None:
        self._signals_seen = self._signals
        if self._phase >= 3:
            return
        self._phase += 1
        self._phase_at = time.monotonic()
        sig = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)[self._phase - 1]
        if self._phase == 1:
            self._stop_reason = why
            self.say(f"stopping ({why}): {timeouts_text(self.int_timeout, self.term_timeout)}")
        else:
            self.say(f"{why}: sending {sig.name}")
        try:
            os.killpg(proc.pid, sig)
            if sig != signal.SIGKILL:
                os.killpg(proc.pid, signal.SIGCONT)  # a suspended command handles nothing until continued
        except (ProcessLookupError, PermissionError):
            pass

    def _progress(self) -> None:
        """The attached script's last step and loss into status and summary (the run list)."""
        try:
            batch = self._tail.read_new(1 << 20)
        except OSError:
            return
        step, loss = self._step, self._last_loss
        for e in batch:
            # the script's records only (the tail also reads back our own `started`, which would
            # restart the run's clock): the run list's steps/s, checkpoints and best validation
            if isinstance(e, (ev.Losses, ev.Checkpointed, ev.EpochEnd)):
                try:
                    self.writer.observe(e)
                except Exception:  # noqa: BLE001  (a full disk: the end is told anyway)
                    pass
            if isinstance(e, ev.Losses) and e.values:
                step = max(step, e.last_step)
                loss = next((v for v in reversed(e.values) if v is not None), loss)
            elif isinstance(e, ev.Scalars) and e.values:
                step = max(step, max(e.step_list()))
        if step != self._step or loss != self._last_loss:
            self._step, self._last_loss = step, loss
            self.writer.progress(step=step, last_loss=loss)
            try:
                self.writer.write_summary()
            except Exception:  # noqa: BLE001  (a full disk: the end is told anyway)
                pass

    def _finish(self, rc: int) -> str:
        self._progress()
        if self._phase:  # a stop: nothing the command started outlives it
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its process group
            except (ProcessLookupError, PermissionError):
                pass
            left = kill_leftovers(self.run.path)  # and what left the group (setsid, a daemon)
            if left:
                self.say(f"killed {len(left)} process(es) the command left outside its process group "
                         f"(pid {', '.join(map(str, left))})")
        status = rc if rc >= 0 else None
        sig = _signal_name(-rc) if rc < 0 else None
        how = f"exited with status {rc}" if rc >= 0 else f"killed by {sig}"
        if self._phase:
            sent = ", ".join(("SIGINT", "SIGTERM", "SIGKILL")[: self._phase])
            return self._end("stopped", f"{how} after {sent} ({self._stop_reason})", status, sig)
        if rc == 0:
            return self._end("finished", "", 0, None)
        tail = _output_tail(self.run.log_path, self.log_offset)
        full = disk_full_note(self.run.path)  # a command that died of its own write errors
        return self._end("failed", how + (f"; {full}" if full else "") + (f"; last output: {tail}" if tail else
                                                                         "; no output"), status, sig)

    def _end(self, state: str, message: str, exit_status: int | None, exit_signal: str | None) -> str:
        # in the log before the final state, so that a follower that stops at it has read this
        self.say(f"run {self.run.id} {state}" + (f": {message}" if message else ""))
        self.writer.reopen_events()  # a torn line the attached script left must not swallow our record
        self.writer.ended(state, self._step, self._last_loss, message, exit_status=exit_status,
                          exit_signal=exit_signal)
        return state

    _signals_seen = 0
    _dir_id: tuple[int, int] | None = None
    int_timeout = DEFAULT_INT_TIMEOUT
    term_timeout = DEFAULT_TERM_TIMEOUT
    log_offset = 0
    proc: subprocess.Popen


def main(argv: list[str]) -> int:
    from torchdeck.runs.writer import hold_for_life

    if len(argv) != 1:
        print("usage: python -m torchdeck.runs.command RUN_DIR", file=sys.stderr)
        return 2
    run = Run(Path(argv[0]))
    lock = hold_for_life(run)
    if lock is None:
        return 1
    state = Supervisor(run).execute()
    return 0 if state in ("finished", "stopped") else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
