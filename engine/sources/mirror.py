"""Runs read from other tools' logs, mirrored as read-only run directories of the workspace.

Each found source (torchdeck.sources.scan) becomes `runs/<id>/`, its id derived from the source's
kind and absolute path (`tb-`, `hf-`, `pl-`, `mlflow-` and 12 hex digits), so a rescan finds the
same mirror:

    config.json   source, origin (the folder), read_only: true, params (hparams, params, tags)
    summary.json  what the run list shows (source set); status.json "finished" (or "running"
                  while a follower holds the run's lock and beats)
    events.jsonl  what RunView reads: a `started` record, then `scalars` records carrying each
                  chunk's wall times (Scalars.elapsed); the source's main loss is named "loss"
    import.json   the reader's state (per-file offsets, ...), the mirror's events size, counts

Registering writes only config, summary and status (a folder of 250 runs lists at once); the
history is converted by `sync` when the run is first shown, and later syncs append only what the
source gained. The source is never written. `import.json` records the size of events.jsonl it
goes with: a mirror whose events file does not match (an import that died between the two
writes) is rebuilt from the start, so no point is ever counted twice.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import secrets
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torchdeck.errors import (
    Busy,
    InvalidRequest,
    NoSpace,
    OperationFailed,
    TorchdeckError,
)
from torchdeck.fsutil import atomic_write_json, read_json
from torchdeck.runs import events as ev
from torchdeck.runs.config import RunConfig
from torchdeck.runs.store import (
    LOCK_NAME,
    Run,
    RunStore,
    Status,
    Summary,
    acquire_run_lock,
)
from torchdeck.sources import KINDS, MAIN_LOSS_KEYS, Found, read, scan

SHORT = {"tensorboard": "tb", "huggingface": "hf", "lightning": "pl", "mlflow": "mlflow"}
STATE_FILE = "import.json"
STATE_VERSION = 1
MAX_STEP = 2**53  # steps past this do not survive a JSON reader's float (orjson reads a huge int as one)
CHUNK = 500  # points a scalars record at most: each record anchors its first and last point's time
FOLLOW_INTERVAL = 0.25  # seconds between a follower's reads of its source


def mirror_id(kind: str, origin: Path) -> str:
    digest = hashlib.sha256(f"{kind}\0{origin}".encode("utf-8", "surrogateescape")).hexdigest()
    return f"{SHORT[kind]}-{digest[:12]}"


def imported_from(run: Run) -> dict[str, Any] | None:
    """The config of a mirrored run ({source, origin, ...}); None for torchdeck's own runs."""
    cfg = run.imported()
    return cfg if cfg is not None and cfg.get("source") in KINDS else None


def refuse_if_imported(run: Run, verb: str, field: str = "run") -> None:
    """InvalidRequest for an action that would change a read-only run (resume, stop, pause)."""
    run.refuse_if_imported(verb, field)


@dataclass
class SyncResult:
    run_id: str
    added: int = 0  # points appended by this sync
    metrics: dict[str, int] = field(default_factory=dict)  # name -> points in the mirror
    problems: list[str] = field(default_factory=list)
    rebuilt: bool = False
    skipped: str = ""  # why nothing was read (a follower holds the run)


def register(store: RunStore, found: Found) -> Run:
    """The mirror of `found`, created if new (config, summary, status only: no history yet). Made
    in a hidden temporary folder and renamed into place, so a scan running twice at once (two
    TUIs) leaves one whole mirror and never half of one."""
    rid = mirror_id(found.kind, found.path)
    path = store.root / rid
    if (path / "config.json").is_file():
        return Run(path)
    store.root.mkdir(parents=True, exist_ok=True)
    tmp = store.root / f"{IMPORTING}{rid}-{_owner()}-{secrets.token_hex(3)}"
    try:
        tmp.mkdir()
        (tmp / LOCK_NAME).touch()
        cfg = RunConfig(model=found.kind, name=found.name, epochs=1).to_json()
        cfg.update({"source": found.kind, "origin": str(found.path), "read_only": True, "params": {}})
        atomic_write_json(tmp / "config.json", cfg, durable=False)
        try:
            created = found.path.stat().st_mtime
        except OSError:
            created = time.time()
        atomic_write_json(tmp / "summary.json", asdict(Summary(
            id=rid, name=found.name, model=found.kind, state="finished", created=created, source=found.kind)),
            durable=False)
        atomic_write_json(tmp / "status.json", asdict(Status(state="finished", message=_origin_note(cfg))),
                          durable=False)
        try:
            os.rename(tmp, path)
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another scan made it meanwhile
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpace(f"no space left to import {found.path} into {store.root}") from None
        raise OperationFailed(f"cannot import {found.path} into {store.root}: {e.strerror or e}") from None
    return Run(path)


IMPORTING = ".importing-"  # a mirror being made: .importing-RUNID-PID.START-HEX, renamed into place when whole


def _owner() -> str:
    from torchdeck.procs import process_start_time

    return f"{os.getpid()}.{process_start_time(os.getpid()) or 0}"


def sweep_dead_imports(store: RunStore) -> list[Path]:
    """Remove the half-made mirrors whose maker is gone (a scan killed between making one and
    renaming it into place): by the process named in the name, never by age."""
    from torchdeck.procs import pid_alive

    removed = []
    try:
        entries = [p for p in store.root.iterdir() if p.name.startswith(IMPORTING)]
    except OSError:
        return removed
    for p in entries:
        try:
            pid, start = p.name[len(IMPORTING):].split("-")[-2].split(".")
            alive = pid_alive(int(pid), int(start) or None)
        except ValueError:  # not named by a maker (an older version's): nothing can own it now
            alive = False
        if not alive:
            shutil.rmtree(p, ignore_errors=True)
            if not p.exists():
                removed.append(p)
    return removed


def _origin_note(cfg: dict[str, Any]) -> str:
    return f"read-only: imported from {KINDS[cfg['source']]} at {cfg.get('origin')}"


def sync(run: Run, *, wait: float = 0.0) -> SyncResult:
    """Bring a mirror up to date with its source, under the run's lock. A follower that holds
    the lock keeps it current itself: then nothing is read (`skipped` says so)."""
    cfg = imported_from(run)
    if cfg is None:
        raise InvalidRequest(f"run {run.id} is not imported from another tool's logs", field="run")
    lock = acquire_run_lock(run.path, wait=wait)
    if lock is None:
        return SyncResult(run.id, metrics=_state(run).get("metrics", {}),
                          skipped="a follower is reading its source now")
    try:
        return Importer(run, cfg).sync()
    finally:
        lock.close()


def _state(run: Run) -> dict[str, Any]:
    st = read_json(run.path / STATE_FILE)
    return st if isinstance(st, dict) else {}


def _events_size(run: Run) -> int:
    try:
        return run.events_path.stat().st_size
    except FileNotFoundError:
        return 0


class Importer:
    """Appends a source's new points to its mirror through the run's one RunWriter. The caller
    holds the run's lock."""

    def __init__(self, run: Run, cfg: dict[str, Any]):
        from torchdeck.runs.writer import RunWriter

        self.run = run
        self.cfg = cfg
        self.kind = cfg["source"]
        self.origin = Path(cfg.get("origin") or "")
        self.state = _state(run)
        if self.state.get("version") != STATE_VERSION or self.state.get("events_size") != _events_size(run):
            self._fresh()
        self.writer = RunWriter(run, continues=True)
        self.live_state = "finished"  # "running" while a Follower holds the run

    def _fresh(self) -> None:
        """Forget everything imported: the next read starts from the source's beginning."""
        try:
            with open(self.run.events_path, "wb"):
                pass
        except OSError as e:
            raise OperationFailed(f"cannot rewrite {self.run.events_path}: {e.strerror or e}") from None
        self.state = {"version": STATE_VERSION, "reader": {}, "metrics": {}, "events_size": 0}

    def sync(self) -> SyncResult:
        result = self._sync_once(SyncResult(self.run.id))
        for _ in range(1000):  # a folder of event files restarted many times: one read each
            if not self._more:
                break
            result = self._sync_once(result)
        return result

    def _sync_once(self, result: SyncResult) -> SyncResult:
        self._more = False
        try:
            batch = read(self.kind, self.origin, self.state["reader"])
        except TorchdeckError as e:
            result.problems.append(str(e))
            result.metrics = dict(self.state.get("metrics", {}))
            self._finish(result)
            return result
        if batch.reset:
            # The source was rewritten or replaced: a `resumed` record before the first step
            # replaces the whole history with what follows, so a reader tailing the mirror
            # (the monitor) redraws from it; the mirror stays append-only.
            self.writer.emit(ev.Resumed(-1, note=f"{self.origin} was rewritten: read again from its start"))
            for key in ("metrics", "step", "last_loss"):
                self.state.pop(key, None)
            self.state["metrics"] = {}
            result.rebuilt = True
        if batch.name and batch.name != self.state.get("name"):
            self.state["name"] = batch.name
        if batch.params is not None:
            self._write_params(batch.params)
        self._more = batch.more
        result.problems = [p for p in result.problems if p not in batch.problems] + batch.problems
        if batch.replaces_from is not None and self.state.get("started"):
            self.writer.emit(ev.Resumed(batch.replaces_from - 1, note=f"a new event file in {self.origin} starts "
                                        f"again at step {batch.replaces_from}: it replaces what followed"))
        result.added += self._append(batch)
        if self._bad_steps:
            result.problems.append(f"{self._bad_steps} point(s) at a step below 0 or past 2^53 were skipped")
        if batch.replaces_from is not None:
            self._recount()
        result.metrics = dict(self.state["metrics"])
        if batch.pending and not any("incomplete record" in p for p in result.problems):
            result.problems.append(f"{batch.pending:,} byte(s) at the end of the source are an incomplete record "
                                   "(being written, or cut short): read when whole")
        self._finish(result)
        return result

    def _loss_key(self, names) -> str | None:
        key = self.state.get("loss_key")
        if key is None:
            key = next((k for k in MAIN_LOSS_KEYS if k in names), None)
            if key is not None:
                self.state["loss_key"] = key
        return key

    def _out_name(self, name: str, loss_key: str | None) -> str:
        if name == loss_key:
            return "loss"
        if name == "loss":
            return "loss (source)"  # a "loss" that came after another name was taken as the loss
        return name

    def _append(self, batch) -> int:
        if not self.state.get("started"):
            walls = [w for cols in batch.points.values() for w in cols[2][:1] if w is not None]
            t0 = min(walls) if walls else None
            self.state["t0"] = t0
            cfg = {"source": self.kind, "origin": str(self.origin), "epochs": 0,
                   "params": ev.finite_json(self.cfg.get("params") or {})}  # the hyper-parameters read so far
            self.writer.emit(ev.Started(self.run.id, cfg,
                                        total_steps=0, steps_per_epoch=0, num_params=0, device="",
                                        time=t0 if t0 is not None else time.time(), pipeline=self.kind,
                                        pipeline_note=f"imported from {self.origin}"))
            self.state["started"] = True
            self.writer._train_t0 = None  # the run table's duration is the source's span, not this import's
        t0 = self.state.get("t0")
        loss_key = self._loss_key(batch.points)
        self._bad_steps = 0
        metrics = self.state["metrics"]
        added = 0
        for name, (steps, values, walls) in batch.points.items():
            out = self._out_name(name, loss_key)
            if steps and (min(steps) < 0 or max(steps) > MAX_STEP):  # a hand-edited or foreign file
                keep = [i for i, x in enumerate(steps) if 0 <= x <= MAX_STEP]
                self._bad_steps += len(steps) - len(keep)
                steps, values, walls = [steps[i] for i in keep], [values[i] for i in keep], [walls[i] for i in keep]
                if not steps:
                    continue
            for i in range(0, len(steps), CHUNK):
                s, v, w = steps[i:i + CHUNK], values[i:i + CHUNK], walls[i:i + CHUNK]
                rec = ev.Scalars.from_points(out, s, v)
                if t0 is not None and w[-1] is not None and w[0] is not None:
                    rec.elapsed = round(max(0.0, w[-1] - t0), 6)
                    rec.first_elapsed = round(max(0.0, w[0] - t0), 6)
                self.writer.emit(rec)
            last_wall = max((x for x in walls if x is not None), default=None)
            if last_wall is not None:
                self.state["t_last"] = max(self.state.get("t_last") or last_wall, last_wall)
            metrics[out] = metrics.get(out, 0) + len(steps)
            added += len(steps)
            if steps:
                self.state["step"] = max(int(self.state.get("step", 0)), max(steps))
            if out == "loss":
                finite = [x for x in values if math.isfinite(x)]
                if finite:
                    self.state["last_loss"] = finite[-1]
        return added

    def _recount(self) -> None:
        """The mirror's counts after a replacement (rare): what a reader of it shows."""
        from torchdeck.runs.view import RunView

        view = RunView(self.run.id)
        view.feed(ev.read_all(self.run.events_path))
        self.state["metrics"] = {name: s.count for name, s in view.metrics.items() if s.count}
        self.state["step"] = max(0, view.step)
        self.state["last_loss"] = view.metrics["loss"].last

    def _write_params(self, params: dict[str, Any]) -> None:
        cfg = dict(self.cfg)
        cfg["params"] = json.loads(json.dumps(params, default=str))
        atomic_write_json(self.run.path / "config.json", cfg, durable=False)
        self.cfg = cfg

    def _finish(self, result: SyncResult) -> None:
        st = self.writer.status
        st.state = self.live_state
        st.step = int(self.state.get("step", 0))
        st.last_loss = self.state.get("last_loss")
        note = _origin_note(self.cfg)
        st.message = note + ("; " + "; ".join(result.problems) if result.problems else "")
        self.state["problems"] = result.problems
        self.state["events_size"] = _events_size(self.run)
        atomic_write_json(self.run.path / STATE_FILE, self.state, durable=False)
        summ = self.run.summary()
        if summ is not None:
            before = asdict(summ)
            if self.state.get("name"):
                summ.name = self.state["name"]
            t0, t1 = self.state.get("t0"), self.state.get("t_last")
            summ.duration = round(t1 - t0, 3) if t0 is not None and t1 is not None else None
            summ.steps_per_second = None
            if asdict(summ) != before:
                atomic_write_json(self.run.path / "summary.json", asdict(summ), durable=False)
        self.writer.write_summary()
        self.writer.write_status()


def open_path(store: RunStore, path: str | os.PathLike, *, progress=None, cancelled=None, sync_all: bool = True):
    """Scan `path`, register every run found, and (sync_all) import their histories. Returns
    (scan result, [(run, SyncResult or None)]). NotFound when nothing is found."""
    found = scan(path, progress=progress, cancelled=cancelled)
    sweep_dead_imports(store)
    out = []
    for f in found.found:
        run = register(store, f)
        out.append((run, sync(run, wait=1.0) if sync_all else None))
    return found, out


_following: set["Follower"] = set()  # this process's followers, stopped together at its end
_following_lock = threading.Lock()


def stop_followers() -> None:
    """Stop every follower of this process (an app that ends): each mirror reads "finished" at
    once, rather than "crashed" once a reader finds its lock free and its status running."""
    with _following_lock:
        followers = list(_following)
    for f in followers:
        f.stop()


def stop_following(run_id: str) -> bool:
    """Stop this process's follower of one run (before removing it); False when there is none."""
    with _following_lock:
        mine = [f for f in _following if f.run.id == run_id]
    for f in mine:
        f.stop()
    return bool(mine)


class Follower:
    """Keeps one mirror current while its source grows: holds the run's lock (the one writer),
    marks it "running" with a heartbeat, and reads the source every FOLLOW_INTERVAL seconds; a
    reader tailing the mirror's events.jsonl (the monitor) sees each new point within a second.
    `stop()` (or the process ending) leaves it "finished"."""

    def __init__(self, run: Run, *, interval: float = FOLLOW_INTERVAL):
        self.run = run
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = None
        self.last: SyncResult | None = None
        self.error: str = ""

    def start(self) -> None:
        cfg = imported_from(self.run)
        if cfg is None:
            raise InvalidRequest(f"run {self.run.id} is not imported from another tool's logs", field="run")
        self._lock = acquire_run_lock(self.run.path, wait=1.0)
        if self._lock is None:
            raise Busy(f"run {self.run.id} is already followed by another process", field="run")
        self.importer = Importer(self.run, cfg)
        self.importer.live_state = "running"
        self.last = self.importer.sync()
        self.importer.writer.start_heartbeat()
        self._thread = threading.Thread(target=self._loop, name=f"follow-{self.run.id}", daemon=True)
        self._thread.start()
        with _following_lock:
            _following.add(self)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.last = self.importer.sync()
            except TorchdeckError as e:
                self.error = str(e)
            except Exception as e:  # a reader's bug must not end the following silently: said, retried
                self.error = f"{type(e).__name__}: {e}"

    def stop(self) -> None:
        """Idempotent, from any thread."""
        with _following_lock:
            if self._lock is None or self._stop.is_set():
                return
            self._stop.set()
            _following.discard(self)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self.importer.live_state = "finished"
        try:
            self.importer._finish(self.last or SyncResult(self.run.id))
        except (TorchdeckError, OSError):
            pass  # a full disk: the status stays "running" and readers find the lock free ("crashed")
        finally:
            self._lock.close()
            self._lock = None
