"""The logging API: a user's own training script as a torchdeck run.

    import torchdeck

    run = torchdeck.init(name="baseline", config={"lr": 0.1})
    for batch in data:
        ...
        run.log({"loss": loss, "lr": lr})   # or torchdeck.log({...})
        if run.should_stop():
            break
    run.finish()                            # or `with torchdeck.init(...) as run:`

It writes an ordinary run directory through the same RunWriter as the worker (lock, heartbeat,
status.json, summary.json, events.jsonl), so the run is listed, shown and charted like any other.

- Values are buffered and written in chunks (every `flush_interval` seconds of wall clock or
  `flush_points` points, and at the end) from the calling thread: one `losses` record for "loss"
  when its points are at consecutive steps (else a `scalars` record named "loss"), one `scalars`
  record per other name. CPU tensors and numpy scalars are read at once; tensors on another
  device stay there and are copied to the host once per chunk (one stack and `.tolist()` per
  device and dtype), never with a per-step sync.
- A value that is not a number is refused with its name (a warning once per name); the rest of
  the call goes on. A call never raises for its values: a logging mistake must not kill training.
- Steps: without `step` each call is the next step; a `step` below the last one is dropped with
  a warning (once), so the history never goes backwards; a name logged twice at one step keeps
  its first value (the second is dropped with a warning).
- Ends: `finish()` or a normal exit -> "finished" ("stopped" once `should_stop()` has said
  True); an uncaught exception (sys.excepthook, the context manager) -> "failed" with the
  exception's line; KeyboardInterrupt, or SIGTERM where the script has no handler of its own
  (the escalation of `runs stop`) -> "stopped"; a killed process leaves its lock free and no
  final state, which readers report as "crashed".
- TORCHDECK_RUN_DIR names a run owned by someone else (the `torchdeck run` wrapper, which holds
  its lock and records its state): `init` attaches and only appends events.
- Under torchrun, ranks other than 0 get a run whose methods do nothing.

Importing this module imports neither torch nor any UI; torch is only looked at (never
imported) to recognise its tensors.
"""

from __future__ import annotations

import atexit
import math
import os
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Mapping

from torchdeck.errors import Busy, InvalidRequest, NotFound

__all__ = ["init", "log", "finish", "Run", "LoggingWarning", "RUN_DIR_ENV"]

RUN_DIR_ENV = "TORCHDECK_RUN_DIR"  # set by a wrapper that owns the run: init() attaches to it
FLUSH_INTERVAL = 0.15  # seconds between chunks, as the worker's flush_interval
FLUSH_POINTS = 4096  # or this many buffered points, whichever comes first
SUMMARY_EVERY = 1.0  # seconds between summary.json updates while running (the run list's step)
CONTROL_EVERY = 0.1  # should_stop() reads control.json at most this often


class LoggingWarning(UserWarning):
    """A value or step that run.log refused (named); the rest of the call was kept."""


class _Device:
    """A buffered value still on its device: index into the run's pending tensors."""
    __slots__ = ("i",)

    def __init__(self, i: int):
        self.i = i


_current: "Run | None" = None
_tensor_type: Any = None  # torch.Tensor once a tensor was logged (torch is never imported here)
_monotonic = time.monotonic
_hooks_installed = False
_prev_excepthook = None


def _on_host(t: Any) -> bool:
    """Whether a tensor's value can be read now without a device sync (tests replace this to
    send CPU tensors down the device path, which they can count)."""
    return t.is_cpu


def _rank_is_zero() -> bool:
    for var in ("RANK", "LOCAL_RANK"):
        v = os.environ.get(var)
        if v not in (None, "", "0"):
            return False
    return True


def init(name: str | None = None, config: Mapping[str, Any] | None = None, workspace: str | os.PathLike | None = None,
         id: str | None = None, resume: bool = False, *, flush_interval: float = FLUSH_INTERVAL,
         flush_points: int = FLUSH_POINTS) -> "Run":
    """Start (or continue, or attach to) a run and make it the current one for `log`/`finish`.

    - TORCHDECK_RUN_DIR set: attach to that run directory (its owner keeps lock and state).
    - `id` names an existing run of the workspace (or `resume=True` with `id` or `name`): continue
      it, steps going on from its last one; refused (Busy) while another process writes it.
    - Otherwise a new run; `id` (if given) becomes its id, `name` its label.
    Ranks other than 0 (RANK/LOCAL_RANK) get a run that does nothing."""
    global _current
    if _current is not None and not _current.finished:
        _current.finish()
    if not _rank_is_zero():
        run: Run = _NoOpRun()
    else:
        run = Run._open(name=name, config=config, workspace=workspace, run_id=id, resume=resume,
                        flush_interval=flush_interval, flush_points=flush_points)
    _current = run
    _install_hooks()
    return run


def log(values: Mapping[str, Any], step: int | None = None) -> None:
    """Log to the current run (see Run.log); a warning when there is none."""
    if _current is None or _current.finished:
        warnings.warn("torchdeck.log called with no run: call torchdeck.init() first", LoggingWarning, stacklevel=2)
        return
    _current.log(values, step=step)


def finish() -> None:
    """Finish the current run (see Run.finish); nothing when there is none."""
    if _current is not None:
        _current.finish()


def _install_hooks() -> None:
    global _hooks_installed, _prev_excepthook
    if _hooks_installed:
        return
    _hooks_installed = True
    _prev_excepthook = sys.excepthook
    sys.excepthook = _excepthook
    atexit.register(_at_exit)


def _excepthook(exc_type, exc, tb) -> None:
    run = _current
    if run is not None and not run.finished and run._pid == os.getpid():
        try:
            run._end_with_exception(exc_type, exc)
        except BaseException:  # noqa: BLE001  (the user's traceback must still be printed)
            pass
    hook = _prev_excepthook or sys.__excepthook__
    hook(exc_type, exc, tb)


def _at_exit() -> None:
    run = _current
    if run is not None and not run.finished and run._pid == os.getpid():  # not a forked child's exit
        try:
            run.finish()
        except BaseException as e:  # noqa: BLE001
            print(f"torchdeck: could not finish run {run.id}: {e}", file=sys.stderr)


def _caller_level() -> int:
    """The stacklevel that points a warning at the user's line, past this module's frames."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    return level


def _exception_line(exc_type, exc) -> str:
    lines = traceback.format_exception_only(exc_type, exc)
    return lines[-1].strip() if lines else exc_type.__name__


def _script_label() -> str:
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None) or (sys.argv[0] if sys.argv and sys.argv[0] else "")
    label = os.path.basename(str(path)) if path else ""
    return label if label and label not in ("-c", "-") else "script"


MAX_CONFIG_DEPTH = 32  # nesting kept in a recorded config; deeper levels read as "…"


def _json_safe(obj: Any, depth: int = 0) -> Any:
    """The user's config as plain JSON values, so config.json always writes: keys as strings
    (others as their repr), tuples as lists, anything else as its repr, NaN kept (Python's json
    reads it), nesting cut at MAX_CONFIG_DEPTH (a self-referencing or absurdly deep config
    raised RecursionError out of init)."""
    if obj is None or isinstance(obj, (str, bool, float)):
        return obj
    if isinstance(obj, int):  # past ~4,300 digits Python will not print it (nor json write it)
        return obj if obj.bit_length() < 14_000 else f"<int of {obj.bit_length()} bits>"
    if depth >= MAX_CONFIG_DEPTH:
        return "…"
    if isinstance(obj, Mapping):
        return {k if isinstance(k, str) else _repr(k): _json_safe(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v, depth + 1) for v in obj]
    return _repr(obj)


def _repr(obj: Any) -> str:
    try:
        text = repr(obj)
    except Exception:  # a broken __repr__ (or one too deep to print) must not lose the rest
        return f"<{type(obj).__name__}>"
    return text if len(text) <= 10_000 else text[:10_000] + "…"


class _AppendOnly:
    """The events of a run owned by another process (attach): each record one O_APPEND write,
    so lines from the owner and from us never interleave; no truncation, no status, no lock."""

    def __init__(self, path: Path):
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()

    def emit(self, event) -> None:
        from torchdeck.runs import events as ev

        data = (ev.dumps(event) + "\n").encode()
        with self._lock:
            os.write(self._fd, data)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class Run:
    """A run written by this process through the logging API (made by `torchdeck.init`)."""

    # What log()'s fast path reads and writes lives in slots: a Run has more attributes than
    # CPython shares a dict's keys for (30), so each read of one in its instance dict is a hashed
    # lookup (LOAD_ATTR_WITH_HINT) touching the dict's table; a slot is an offset into the object
    # (LOAD_ATTR_SLOT), and these five share a cache line. Everything else stays in __dict__.
    __slots__ = ("_buf", "_room", "_flush_at", "_step", "finished", "__dict__", "__weakref__")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.path: Path | None = None
        self.attached = False
        self.finished = False
        self.state = ""
        self._store_run = None
        self._writer = None
        self._lock_file = None
        self._append = None
        self._step = 0
        self._last_loss_step = 0  # last step written in a `losses` record
        self._last_loss: float | None = None
        self._buf: dict[str, tuple[list[int], list[Any]]] = {}
        self._room = FLUSH_POINTS  # points until the buffer is written whatever the time
        self._pending: list[Any] = []  # device tensors waiting for the next chunk's copy-out
        self._last_written: dict[str, int] = {}  # name -> last step written
        self._warned: set[str] = set()
        self._t0 = time.monotonic()
        self._elapsed_base = 0.0  # attach: seconds from the owner's start to ours
        self._flush_at = self._t0 + FLUSH_INTERVAL  # when the buffer is written next
        self._last_summary = self._t0
        self._flush_interval = FLUSH_INTERVAL
        self._flush_points = FLUSH_POINTS
        self._control_seq = 0
        self._control_checked = 0.0
        self._stop_seen = False
        self._mutex = threading.RLock()
        self._pid = os.getpid()  # a forked child inherits this object: it never ends the run
        self._ckpt_writer = None  # torchdeck.checkpoints.CheckpointWriter, made by the first checkpoint()
        self._last_values: dict[str, float] = {}  # each name's last finite value (a checkpoint's metrics)

    # -- opening --------------------------------------------------------------------------------
    @classmethod
    def _open(cls, *, name, config, workspace, run_id, resume, flush_interval, flush_points) -> "Run":
        self = cls()
        self._flush_interval = float(flush_interval)
        self._flush_points = self._room = max(1, int(flush_points))
        self._flush_at = self._t0 + self._flush_interval
        if name is not None and not isinstance(name, str):
            raise InvalidRequest(f"name must be a string, not {type(name).__name__}", field="name")
        if config is not None and not isinstance(config, Mapping):
            raise InvalidRequest(f"config must be a dict, not {type(config).__name__}", field="config")
        attach_dir = os.environ.get(RUN_DIR_ENV)
        if attach_dir:
            self._attach(Path(attach_dir))
            if config:  # the wrapper's run records the script's config as its own would
                self.update_config(config)
        else:
            self._own(name=name, config=config, workspace=workspace, run_id=run_id, resume=resume)
        return self

    def _attach(self, path: Path) -> None:
        from torchdeck.runs.store import Run as StoreRun

        if not (path / "config.json").is_file():
            raise NotFound(f"{RUN_DIR_ENV}={path} is not a run directory (no config.json)", field=RUN_DIR_ENV)
        run = StoreRun(path)
        self._store_run, self.path, self.id, self.attached = run, path, run.id, True
        self.name = run.name()
        started_time, last, _ = self._history(run)
        self._step = self._last_loss_step = last
        if started_time is not None:
            self._elapsed_base = max(0.0, time.time() - started_time)
        self._append = _AppendOnly(run.events_path)
        self._control_seq = run.read_control()[1]
        self.state = "running"

    def _own(self, *, name, config, workspace, run_id, resume) -> None:
        from torchdeck.runs import events as ev
        from torchdeck.runs.config import RunConfig
        from torchdeck.runs.store import RunStore
        from torchdeck.runs.writer import RunWriter
        from torchdeck.workspace import Workspace

        ws = Workspace.open(workspace)
        store = RunStore(ws)
        existing = None
        if run_id is not None:
            if not isinstance(run_id, str) or not run_id.strip() or "/" in run_id or run_id.startswith("."):
                raise InvalidRequest(f"id must be a run id (no '/', not starting with '.'), not {run_id!r}",
                                     field="id")
            if (store.root / run_id).is_dir():
                existing = store.get(run_id)
        elif resume:
            if not name:
                raise InvalidRequest("resume=True needs the id= or name= of the run to continue", field="resume")
            existing = store.get(name)
        if resume and existing is None:
            raise NotFound(f"no run {run_id!r} to resume in {store.root}", field="id")
        if existing is not None:
            run = existing
            started_time, last, self._last_loss = self._history(run)  # the run list's loss until a new one
            got = RunWriter.acquire(run, resume_step=last)
            if got is None:
                st = run.status()
                who = f" (pid {st.pid} on {st.host})" if st.pid else ""
                raise Busy(f"run {run.id} is being written by another process{who}: one writer a run",
                           field="id")
            self._step = self._last_loss_step = last
        else:
            cfg = RunConfig(model=_script_label(), name=name or "", epochs=1, flush_interval=self._flush_interval)
            run = store.create(cfg, run_id=run_id)
            self._set_up_new(run, cfg, config)
            got = RunWriter.acquire(run)
            if got is None:  # nobody else knows this run yet
                raise Busy(f"run {run.id} is locked by another process", field="id")
        self._writer, self._lock_file = got
        self._store_run, self.path, self.id = run, run.path, run.id
        self.name = run.name()
        self._control_seq = run.read_control()[1]  # requests older than this process are history
        writer = self._writer
        # a script's epochs are its own: none shown; NaN in its config by name (records are strict JSON)
        cfg_json = ev.finite_json({**_read_config(run), "epochs": 0})
        writer.emit(ev.Started(run.id, cfg_json, total_steps=0, steps_per_epoch=0, num_params=0, device="",
                               time=time.time(), pipeline="script", pipeline_note="torchdeck.init (logging API)"))
        if existing is not None and config:  # continued with settings: merged, as update_config
            self.update_config(config)
        writer.progress(state="running", step=self._step, last_loss=self._last_loss)
        writer.write_status()
        writer.write_summary()
        writer.start_heartbeat()
        self._handle_sigterm()
        self.state = "running"

    def _handle_sigterm(self) -> None:
        """`runs stop` sends SIGTERM when a stop request goes unanswered (a script that never
        asks should_stop()): end the script as Python's exit does, so the run reads "stopped"
        rather than "crashed". Only where SIGTERM has no handler of the user's, from the main
        thread."""
        import signal

        if threading.current_thread() is not threading.main_thread():
            return
        try:
            if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
                return
        except (ValueError, OSError):
            return

        def terminated(signum, frame) -> None:
            if os.getpid() != self._pid:  # a forked child (a DataLoader worker): Python's default
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
                return
            self._stop_seen = True
            if _current is not None:  # the handler stays; the current run may be a later one (an integration's)
                _current._stop_seen = True
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, terminated)

    @staticmethod
    def _set_up_new(run, cfg, config) -> None:
        """config.json keeps the user's config under "params" (RunConfig.from_json ignores it);
        the summary says no epochs (a script's epochs are its own business)."""
        from dataclasses import asdict

        from torchdeck.fsutil import atomic_write_json

        data = cfg.to_json()
        data["source"] = "api"
        data["params"] = _json_safe(dict(config)) if config else {}
        data["script"] = _script_label()
        atomic_write_json(run.path / "config.json", data)
        summ = run.summary()
        if summ is not None:
            summ.epochs = 0
            atomic_write_json(run.path / "summary.json", asdict(summ))

    @staticmethod
    def _history(run) -> tuple[float | None, int, float | None]:
        """(the first Started record's wall time, the last step the run's events hold, its last
        finite loss)."""
        from torchdeck.runs import events as ev
        from torchdeck.runs.view import RunView

        view = RunView(run.id)
        view.feed(ev.read_all(run.events_path))
        last = view.step
        for series in view.metrics.values():
            if series.last_step is not None:
                last = max(last, int(series.last_step))
        started = view.started.time if view.started is not None else None
        return (started if isinstance(started, (int, float)) else None), int(last), view.metrics["loss"].last

    # -- logging --------------------------------------------------------------------------------
    def _warn_once(self, key: str, message: str) -> None:
        if key in self._warned:
            return
        self._warned.add(key)
        warnings.warn(message, LoggingWarning, stacklevel=_caller_level())

    @property
    def step(self) -> int:
        """The last step logged (0 before the first)."""
        return self._step

    def log(self, values: Mapping[str, Any], step: int | None = None) -> None:
        """Record `values` (name -> number) at `step` (default: the step after the last one).

        Never raises for what it is given: a refused value or step is a warning naming it.
        Call it from one thread (the training loop's)."""
        # The common call (a dict, no step, known names, floats or CPU tensors) in as few
        # bytecodes as can be: in a small model's loop the interpreter's cache is cold at each
        # call, and every line here showed in the loop's steps/s (bench_log_api.py).
        bufs = self._buf
        if step is None and type(values) is dict and not self.finished:
            step = self._step = self._step + 1
            room = self._room
            for key, value in values.items():
                if type(value) is not float:
                    if type(value) is _tensor_type and value.is_cpu:
                        try:
                            value = value.item()  # a CPU tensor: no sync
                        except RuntimeError:
                            pass  # several elements: refused, named, below
                    if type(value) is not float:
                        value = self._convert(key, value)
                        if value is None:
                            continue
                buf = bufs.get(key)
                if buf is None:
                    if not self._first_point(key, step, value):
                        continue
                else:
                    buf[0].append(step)
                    buf[1].append(value)
                room -= 1
            self._room = room
            if room <= 0 or _monotonic() >= self._flush_at:
                with self._mutex:
                    self._flush(_monotonic())
            return
        self._log_slow(values, step)

    def _first_point(self, key: Any, step: int, value: Any) -> bool:
        """Start `key`'s buffer for this chunk with one point; False (warned) when refused."""
        if type(key) is not str or not key:
            self._warn_once(f"\0key{key!r}", f"metric names must be non-empty strings, not {key!r}: skipped")
            return False
        last = self._last_written.get(key)
        if last is not None and step <= last:
            self._warn_once(f"\0dup{key}", f"{key!r} was already logged at step {step}: point dropped")
            return False
        self._buf[key] = ([step], [value])
        return True

    def _log_slow(self, values: Mapping[str, Any], step: int | None) -> None:
        if self.finished:
            self._warn_once("\0finished", f"run {self.id} is finished: log() ignored")
            return
        if type(values) is not dict and not isinstance(values, Mapping):
            self._warn_once("\0values", f"log() takes a dict of name -> number, not {type(values).__name__}: ignored")
            return
        with self._mutex:
            if step is None:
                step = self._step + 1
            elif type(step) is not int:
                try:
                    if isinstance(step, bool):
                        raise TypeError
                    step = int(step.__index__())  # numpy integers
                except (AttributeError, TypeError, ValueError):
                    self._warn_once("\0step", f"step must be a whole number, not {step!r}: log() call dropped")
                    return
            if step < self._step or step < 0:
                self._warn_once("\0backwards", f"step {step} is before the last step logged ({self._step}): "
                                "steps must not go backwards; this call (and later ones like it) dropped")
                return
            self._step = step
            bufs = self._buf
            for key, value in values.items():
                kind = type(value)
                if kind is float:
                    v = value
                elif kind is int and -(1 << 53) <= value <= (1 << 53):
                    v = float(value)
                else:
                    v = self._convert(key, value)
                    if v is None:
                        continue
                buf = bufs.get(key)
                if buf is None:  # this key's first point of the chunk
                    if not self._first_point(key, step, v):
                        continue
                elif buf[0][-1] == step:  # twice at one step: the first value stands, as once written
                    self._warn_once(f"\0dup{key}", f"{key!r} was already logged at step {step}: point dropped")
                    continue
                else:
                    buf[0].append(step)
                    buf[1].append(v)
                self._room -= 1
            now = _monotonic()
            if self._room <= 0 or now >= self._flush_at:
                self._flush(now)

    def _convert(self, key: str, value: Any) -> float | _Device | None:
        """A float, a _Device for a tensor left on its device, or None (refused, warned once)."""
        kind = type(value)
        if kind is float or kind is int:
            try:
                return float(value)
            except OverflowError:
                self._warn_once(key, f"{key!r}: {value!r} is too large for a float: skipped")
                return None
        if kind is bool:
            self._warn_once(key, f"{key!r}: a bool is not a number ({value!r}): skipped; log 0/1 for a flag")
            return None
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(value, torch.Tensor):
            global _tensor_type
            if _tensor_type is None:
                _tensor_type = torch.Tensor  # log()'s fast path reads CPU tensors from now on
            return self._tensor(key, value, torch)
        np = sys.modules.get("numpy")
        if np is not None and isinstance(value, (np.generic, np.ndarray)):
            if value.size != 1 or value.dtype.kind not in "iuf":
                self._warn_once(key, f"{key!r}: a numpy value must be one real number, not "
                                f"{value.dtype} of shape {value.shape}: skipped")
                return None
            return float(value.reshape(()).item() if isinstance(value, np.ndarray) else value.item())
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # subclasses (IntEnum, ...)
            return float(value)
        self._warn_once(key, f"{key!r}: {type(value).__name__} is not a number: skipped (log numbers or "
                        "one-element tensors)")
        return None

    def _tensor(self, key: str, t: Any, torch) -> float | _Device | None:
        if _on_host(t):  # .item() on the CPU is no sync; it refuses more than one element itself
            try:
                x = t.item()
            except RuntimeError:
                x = None
            if type(x) is float or type(x) is int:
                return float(x)
        elif t.numel() == 1 and t.dtype != torch.bool and not t.is_complex():
            self._pending.append(t.detach().reshape(()))  # stays on its device; no graph kept alive
            return _Device(len(self._pending) - 1)
        self._warn_once(key, f"{key!r}: a tensor must hold one real number, not {t.dtype} of shape "
                        f"{tuple(t.shape)}: skipped")
        return None

    def _copy_out(self) -> list[float]:
        """The pending device values: per device, one stack per dtype and one `.tolist()` of
        them all (float64 holds every float dtype's and every int32's value exactly)."""
        pending, self._pending = self._pending, []
        if not pending:
            return []
        import torch

        out: list[float] = [math.nan] * len(pending)
        devices: dict[Any, dict[Any, list[int]]] = {}
        for i, t in enumerate(pending):
            devices.setdefault(t.device, {}).setdefault(t.dtype, []).append(i)
        for dtypes in devices.values():
            order = [i for idx in dtypes.values() for i in idx]
            stacked = [torch.stack([pending[i] for i in idx]).to(torch.float64) for idx in dtypes.values()]
            values = (stacked[0] if len(stacked) == 1 else torch.cat(stacked)).tolist()
            for i, v in zip(order, values):
                out[i] = float(v)
        return out

    # -- writing --------------------------------------------------------------------------------
    def _emit(self, event) -> None:
        if self._append is not None:
            if hasattr(event, "elapsed") and self._elapsed_base:
                event.elapsed = round(self._elapsed_base + time.monotonic() - self._t0, 4)
            self._append.emit(event)
        else:
            self._writer.emit(event)

    def flush(self) -> None:
        """Write what is buffered now (done by itself every chunk and at the end)."""
        with self._mutex:
            if not self.finished:
                self._flush(time.monotonic())
                if self._writer is not None:
                    self._writer.write_summary()  # the run list's step, now

    def _flush(self, now: float) -> None:
        from torchdeck.runs import events as ev

        self._flush_at = now + self._flush_interval
        if not self._buf:
            return
        host = self._copy_out()
        buf, self._buf, self._room = self._buf, {}, self._flush_points
        elapsed = round(self._elapsed_base + now - self._t0, 4) if self._append is not None else None
        for key, (steps, vals) in buf.items():
            floats = [host[v.i] if type(v) is _Device else v for v in vals] if host else vals
            # a buffer's steps rise strictly: consecutive when they span exactly their count
            if key == "loss" and steps[0] > self._last_loss_step and steps[-1] - steps[0] == len(steps) - 1:
                rec = ev.Losses.from_floats(steps[0], 0, floats, elapsed=elapsed)
                if self._writer is not None:
                    rec.elapsed = self._writer.elapsed()
                self._emit(rec)
                self._last_loss_step = steps[-1]
            else:
                self._emit(ev.Scalars.from_points(key, steps, floats))
            self._last_written[key] = steps[-1]
            for f in reversed(floats):
                if math.isfinite(f):
                    self._last_values[key] = f
                    break
            if key == "loss" and key in self._last_values:
                self._last_loss = self._last_values[key]
        if self._writer is not None:
            self._writer.progress(step=self._step, last_loss=self._last_loss)
            if now - self._last_summary >= SUMMARY_EVERY:
                self._last_summary = now
                self._writer.write_summary()

    # -- control --------------------------------------------------------------------------------
    def should_stop(self) -> bool:
        """True once a stop was asked (`torchdeck runs stop`, the TUI) after this run started
        here; the script should then end (finish() records "stopped"). Cheap to call every step:
        control.json is read at most every CONTROL_EVERY seconds."""
        if self._stop_seen or self.finished:
            return self._stop_seen
        now = time.monotonic()
        if now - self._control_checked < CONTROL_EVERY:
            return False
        self._control_checked = now
        if self._store_run is not None:
            request, self._control_seq = self._store_run.control_since(self._control_seq)
            if request == "stop":
                self._stop_seen = True
        return self._stop_seen

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint(self, model: Any, optimizer: Any = None, step: int | None = None, *, keep: int = 3) -> Path:
        """Save a torchdeck checkpoint (model.safetensors, training_state.pt, meta.json) of
        `model` (an nn.Module or a state dict) and `optimizer` into the run's checkpoints/, named
        by `step` (default: the last step logged), through the worker's background writer:
        training pauses only to copy the tensors to host memory. The newest `keep` are kept.
        Returns the checkpoint's final path (complete once the next save or finish() returns;
        a `checkpoint` event is written when it is). A failed save raises from the next
        checkpoint() or is reported by finish()."""
        from torchdeck.checkpoints import store as checkpoints
        from torchdeck.runs import events as ev

        if self.finished:
            raise InvalidRequest(f"run {self.id} is finished: no checkpoint", field="checkpoint")
        with self._mutex:
            self._flush(time.monotonic())  # the history up to the checkpoint is on disk first
            step = self._step if step is None else int(step)
            name = f"step-{step:08d}"
            if self._ckpt_writer is None:
                def saved(r) -> None:
                    self._emit(ev.Checkpointed(r.name, r.step, 0, r.meta.get("reason", ""),
                                               pause_s=round(r.pause_s, 6), wait_s=round(r.wait_s, 6),
                                               write_s=round(r.write_s, 6), hash_s=round(r.hash_s, 6),
                                               fsync_s=round(r.fsync_s, 6), bytes=r.bytes))

                self._ckpt_writer = checkpoints.CheckpointWriter(self._store_run.checkpoints_dir,
                                                                 keep_last=max(1, int(keep)), on_saved=saved)
            elif self._ckpt_writer.last_name == name:
                return self._store_run.checkpoints_dir / name  # this step's is written or on its way
            weights = model.state_dict() if hasattr(model, "state_dict") else dict(model)
            state = {"optimizer": optimizer.state_dict()} if optimizer is not None else {}
            self._ckpt_writer.save(name, weights=weights, training_state=state, meta={
                "step": step, "epoch": 0, "reason": "api", "run_id": self.id,
                "metrics": dict(self._last_values), "model_spec": None, "run_config": _read_config(self._store_run),
                "source": "api", "model_class": type(model).__name__,
            })
            return self._store_run.checkpoints_dir / name

    def record_checkpoint(self, path: str | os.PathLike, step: int | None = None, *, epoch: int = 0,
                          reason: str = "") -> None:
        """Record a checkpoint that something else wrote (a Lightning `.ckpt` file, a Hugging Face
        `checkpoint-N` folder) by its path, at `step` (default: the last step logged): a
        `checkpoint` event with `path`, which `runs show` lists while the path exists. `reason`
        says what it is to whoever wrote it ("best", "last", ...). Never raises for what it is
        given (a warning, as log)."""
        from torchdeck.runs import events as ev

        if self.finished:
            self._warn_once("\0finished", f"run {self.id} is finished: record_checkpoint() ignored")
            return
        try:
            where = os.path.abspath(os.fspath(path))
        except TypeError:
            self._warn_once("\0ckpt-path", f"a checkpoint's path must be a path, not {path!r}: not recorded")
            return
        with self._mutex:
            self._flush(time.monotonic())  # the history up to the checkpoint is on disk first
            at, ep = self._step, 0
            try:
                at = self._step if step is None else int(step.__index__())  # numpy integers too
                ep = int(epoch.__index__())
            except (AttributeError, TypeError, ValueError):
                self._warn_once("\0ckpt-step", f"a checkpoint's step and epoch must be whole numbers, not "
                                f"{step!r} and {epoch!r}: recorded at step {at}")
            self._emit(ev.Checkpointed(os.path.basename(where) or where, at, ep, str(reason), path=where))

    def update_config(self, values: Mapping[str, Any]) -> None:
        """Merge `values` into the run's recorded config (config.json's `params`, what `runs show`
        shows): settings known only once training starts (a framework's hyper-parameters). A
        top-level key replaces the one of the same name. Never raises for what it is given (a
        warning, as log)."""
        from torchdeck.fsutil import atomic_write_json

        if self.finished:
            self._warn_once("\0finished", f"run {self.id} is finished: update_config() ignored")
            return
        if not isinstance(values, Mapping):
            self._warn_once("\0config", f"update_config() takes a dict, not {type(values).__name__}: ignored")
            return
        from torchdeck.runs import events as ev

        with self._mutex:
            values = _json_safe(dict(values))
            data = _read_config(self._store_run)
            params = data.get("params") if isinstance(data.get("params"), dict) else {}
            params.update(values)
            data["params"] = params
            try:
                atomic_write_json(self._store_run.path / "config.json", data)
            except OSError as e:
                self._warn_once("\0config-write", f"could not record the config of run {self.id}: {e}")
            self._emit(ev.Params(self._step, ev.finite_json(values)))  # the monitor's log shows it where it came

    def _close_checkpoints(self) -> str:
        """Wait for a save in flight; its error as a message ("" when none)."""
        writer, self._ckpt_writer = self._ckpt_writer, None
        if writer is None:
            return ""
        try:
            writer.close(raise_error=True)
        except BaseException as e:  # noqa: BLE001  (told in the run's end, never raised at exit)
            print(f"torchdeck: checkpoint failed: {e}", file=sys.stderr)
            return f"checkpoint failed: {e}"
        return ""

    # -- the end --------------------------------------------------------------------------------
    def finish(self, state: str | None = None, message: str = "") -> None:
        """Write what is buffered and end the run: "finished", or "stopped" once should_stop()
        said True (an explicit `state` from torchdeck.options' final states wins). Attached, only
        the buffer is written: the run's owner records its end."""
        with self._mutex:
            if self.finished:
                return
            try:
                self._flush(time.monotonic())
            finally:
                self.finished = True
                self._end(state or ("stopped" if self._stop_seen else "finished"), message)

    def _end(self, state: str, message: str) -> None:
        failed_save = self._close_checkpoints()
        if failed_save and not message:
            message = failed_save
        self.state = state
        if self._append is not None:
            self._append.close()
            return
        writer = self._writer
        writer.ended(state, self._step, self._last_loss, message)
        try:
            self._lock_file.close()  # the lock goes with its file
        except (OSError, AttributeError):
            pass

    def _end_with_exception(self, exc_type, exc) -> None:
        if issubclass(exc_type, KeyboardInterrupt) or (issubclass(exc_type, SystemExit) and self._stop_seen):
            state = "stopped"
        elif issubclass(exc_type, SystemExit) and getattr(exc, "code", None) in (0, None):
            self.finish()
            return
        else:
            state = "failed"
        with self._mutex:
            if self.finished:
                return
            try:
                self._flush(time.monotonic())
            except BaseException:  # noqa: BLE001  (the end is recorded whatever the buffer did)
                pass
            finally:
                self.finished = True
                self._end(state, _exception_line(exc_type, exc))

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.finish()
        else:
            self._end_with_exception(exc_type, exc)
        return False

    def __repr__(self) -> str:
        return f"<torchdeck run {self.id} ({self.state or 'new'})>"


class _NoOpRun(Run):
    """What ranks other than 0 get: every method does nothing and nothing is written."""

    def __init__(self) -> None:
        super().__init__()
        self.state = "no-op"

    def log(self, values, step=None) -> None:
        pass

    def flush(self) -> None:
        pass

    def should_stop(self) -> bool:
        return False

    def finish(self, state=None, message="") -> None:
        self.finished = True

    def _end_with_exception(self, exc_type, exc) -> None:
        self.finished = True

    def checkpoint(self, *args, **kwargs) -> None:
        pass

    def record_checkpoint(self, *args, **kwargs) -> None:
        pass

    def update_config(self, values) -> None:
        pass


def _read_config(run) -> dict[str, Any]:
    from torchdeck.fsutil import read_json

    d = read_json(run.path / "config.json")
    return d if isinstance(d, dict) else {}

