"""The reading side of a run: ONE reducer from a run's files to what every reader shows.

The Training screen, `runs show`, `runs tail`, `train`'s progress line and the benchmarks all
read a run through a RunView, so they agree: the state (a dead worker reads "crashed"), whether
the heartbeat is stale (an observed condition, not a state), step of total, epoch, last loss,
steps/s and ETA, each epoch's validation, checkpoints, every metric's count/last/min/max, and
the message.

`RunView` itself is pure: it is fed events (`feed`, chunk by chunk as they are tailed, or a
whole file at once) and observations (`observe`: status.json, the store's observed state, the
checkpoints list, the reader's own monotonic clock). It reads no file and no clock itself.
`RunFollower` pairs one with an EventTail and a Run for readers that watch a run's files.

A `resumed` record replaces history: values past its step from before it are dropped, so
recomputed steps are never counted twice.

Each metric is a `torchdeck.runs.history.Series`. Time, for the charts' time axis, is seconds
since the run's first `started` record: a loss chunk's points end at (its writer's
Started.time - the first Started.time) + the chunk's `elapsed`, spread evenly from the previous
chunk (or from the writer's start). A scalars record carries no time: its first and last points
take the time of the loss point at the same step (or the nearest earlier one), the points
between spread evenly. Without `elapsed` (version 1 files) there is no time axis.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from torchdeck.options import ACTIVE_STATES, FINAL_STATES
from torchdeck.runs import events as ev
from torchdeck.runs.history import Series

__all__ = ["RunView", "RunFollower", "Series", "EpochResult", "CheckpointRef", "load", "observe_run",
           "read_observation"]

STALE_AFTER = 5.0  # seconds of the reader's own monotonic clock without a heartbeat change
RATE_WINDOW = 3.0  # seconds of the writer's clock that steps/s is measured over while running
_LIVE = ("running", "paused", "saving")  # states in which a worker bumps its heartbeat


def epochs_spanned(config: Any, steps_per_epoch: Any) -> int:
    """A run's epochs from its `started` record: its config's, or for a run bounded by max_steps
    the epochs those span (0 when unknown). The run list's summary uses the same rule."""
    cfg = config if isinstance(config, dict) else {}
    n, max_steps, spe = cfg.get("epochs"), cfg.get("max_steps"), steps_per_epoch
    if isinstance(max_steps, int) and max_steps > 0 and isinstance(spe, int) and spe > 0:
        return -(-max_steps // spe)
    return n if isinstance(n, int) and not isinstance(n, bool) else 0


@dataclass
class EpochResult:
    epoch: int
    step: int
    train_loss: float | None
    val_loss: float | None
    val_accuracy: float | None
    seconds: float


@dataclass
class CheckpointRef:
    name: str
    step: int
    epoch: int
    path: str = ""
    reason: str = ""
    metrics: dict[str, Any] | None = None
    size: int | None = None


class RunView:
    """What a reader shows of one run, reduced from its events and observations."""

    def __init__(self, run_id: str = "", name: str = ""):
        self.run_id = run_id
        self.name = name or run_id
        self.revision = 0  # bumped whenever history is replaced (a resume): redraw from scratch
        self.started: ev.Started | None = None
        self.ended: ev.Ended | None = None
        self.metrics: dict[str, Series] = {"loss": Series()}
        self.validation: list[EpochResult] = []
        self.params: dict[str, Any] = {}  # a script's own settings: its init config, then each update_config
        self._event_checkpoints: list[CheckpointRef] = []
        # Checkpoints written by something else (Lightning, Hugging Face), by path, newest record last
        self._recorded_checkpoints: dict[str, CheckpointRef] = {}
        self._chunk_epochs: list[tuple[int, int]] = []  # (first step, epoch) of each loss chunk
        self._event_state = ""
        self._step = 0
        self._epoch = 0
        self._rate: deque[tuple[float, int]] = deque(maxlen=4096)  # (writer's elapsed, step) per chunk
        self._t0: float | None = None  # the first Started.time (wall clock)
        self._time_base = 0.0  # seconds from the first start to this writer's start
        self.resumes = 0
        # observations
        self.observed_state = ""
        self.status = None  # the last status.json read (torchdeck.runs.store.Status)
        self.listed_checkpoints: list[CheckpointRef] | None = None
        self.missing_checkpoints: frozenset[str] = frozenset()  # recorded paths seen gone (deleted since)
        self._hb_value: int | None = None
        self._hb_seen_at: float | None = None
        self._now: float | None = None

    # -- feeding --------------------------------------------------------------------------------
    def feed(self, events: Iterable[ev.Event]) -> None:
        # One-point scalars records (lr, grad_norm, the system metrics: one each a chunk) are
        # gathered per metric and appended together at the end, or before any record but losses
        # (a start, a resume): a 1M-step replay spent most of its feeding on them one by one.
        # Consecutive losses chunks likewise go in together (their bookkeeping one by one).
        singles: dict[str, tuple[list[int], list[Any]]] = {}
        chunks: list[ev.Losses] = []
        for e in events:
            kind = type(e)
            if kind is ev.Losses:
                if chunks and e.first_step != chunks[-1].last_step + 1:
                    self._add_losses(chunks)
                chunks.append(e)
                continue
            if (kind is ev.Scalars and len(e.values) == 1 and (e.steps is None or len(e.steps) == 1)
                    and e.elapsed is None):
                buf = singles.get(e.name)
                if buf is None:
                    buf = singles[e.name] = ([], [])
                buf[0].append(e.steps[0] if e.steps is not None else (e.first_step or 0))
                buf[1].append(e.values[0])
                continue
            if chunks:
                self._add_losses(chunks)
            if singles:
                self._add_singles(singles)
            self._apply(e)
        if chunks:
            self._add_losses(chunks)
        if singles:
            self._add_singles(singles)

    def _add_losses(self, chunks: list[ev.Losses]) -> None:
        times = []
        for e in chunks:
            times.append(self._time_base + e.elapsed if e.elapsed is not None and math.isfinite(e.elapsed) else None)
            self._chunk_epochs.append((e.first_step, e.epoch))
            self._step = max(self._step, e.last_step)
            self._epoch = e.epoch
            if e.elapsed is not None:
                self._rate.append((float(e.elapsed), e.last_step))
        if not self._event_state:
            self._event_state = "running"
        self.metrics["loss"].extend_chunks(chunks[0].first_step, [e.values for e in chunks], times)
        chunks.clear()

    def _add_singles(self, singles: dict[str, tuple[list[int], list[Any]]]) -> None:
        for name, (steps, values) in singles.items():
            series = self.metrics.get(name)
            if series is None:
                series = self.metrics[name] = Series()
            series.add_singles(steps, values, self._loss_times_at(steps))
            if steps:
                self._step = max(self._step, max(steps))
        singles.clear()

    def _apply(self, e: ev.Event) -> None:
        if isinstance(e, ev.Losses):
            self._add_losses([e])
        elif isinstance(e, ev.Scalars):
            self._add_scalars(e)
        elif isinstance(e, ev.Started):
            self.started = e
            params = e.config.get("params") if isinstance(e.config, dict) else None
            if isinstance(params, dict) and not self.params:
                self.params = dict(params)  # a script's own config (torchdeck.init(config=...))
            self._event_state = "running"
            self._rate.clear()  # a new writer: its clock starts again
            try:
                wall = float(e.time)
            except (TypeError, ValueError):
                wall = math.nan
            if math.isfinite(wall):
                if self._t0 is None:
                    self._t0 = wall
                self._time_base = max(0.0, wall - self._t0)
            self.metrics["loss"].mark_time(self._time_base)
        elif isinstance(e, ev.EpochEnd):
            # a resume into an epoch's end records that end again: the later one stands
            self.validation = [v for v in self.validation if v.epoch != e.epoch]
            self.validation.append(EpochResult(e.epoch, e.step, e.train_loss, e.val_loss, e.val_accuracy, e.seconds))
            self._step = max(self._step, e.step)
            self._epoch = e.epoch
        elif isinstance(e, ev.Checkpointed):
            if e.path:  # a path saved again (Lightning's last.ckpt) is one checkpoint, at its newest step
                self._recorded_checkpoints.pop(e.path, None)
                self._recorded_checkpoints[e.path] = CheckpointRef(e.name, e.step, e.epoch, path=e.path,
                                                                   reason=e.reason)
            else:
                self._event_checkpoints.append(CheckpointRef(e.name, e.step, e.epoch, reason=e.reason))
        elif isinstance(e, ev.StateChanged):
            self._event_state = e.state
        elif isinstance(e, ev.Params):
            self.params.update(e.values)
        elif isinstance(e, ev.Resumed):
            self._resume(e.step)
        elif isinstance(e, ev.Ended):
            self.ended = e
            self._step = max(self._step, e.step)

    def _loss_time_at(self, step: int) -> float | None:
        """The time of the loss point at `step` (or the nearest earlier one; the writer's start
        before the first); None without a time axis."""
        loss = self.metrics["loss"]
        if not loss.has_time:
            return None
        last = loss.last_step
        i = len(loss) - 1 if last is not None and step >= last else loss.index_of_step(step + 1) - 1
        return loss.time_of(i) if i >= 0 else self._time_base

    def _loss_times_at(self, steps: list[int]) -> list[float | None]:
        """_loss_time_at for many steps at once (the same float operations)."""
        loss = self.metrics["loss"]
        if not loss.has_time:
            return [None] * len(steps)
        import numpy as np

        if not len(loss):
            return [self._time_base] * len(steps)
        x = np.asarray(steps, dtype=np.float64)
        idx = loss._first_step_at_or_after(x, np.ones(len(x), bool)) - 1  # the last point at or before
        t = loss._times_of(np.maximum(idx, 0))
        return np.where(idx >= 0, t, self._time_base).tolist()

    def _add_scalars(self, e: ev.Scalars) -> None:
        series = self.metrics.get(e.name)
        if series is None:
            series = self.metrics[e.name] = Series()
        n = len(e.values)
        if not n:
            return
        steps = e.steps
        if steps is not None and len(steps) != n:
            return  # a malformed record: steps and values do not pair up
        first = steps[0] if steps is not None else (e.first_step or 0)
        last = steps[-1] if steps is not None else first + n - 1
        self._step = max(self._step, last)
        if e.elapsed is not None and math.isfinite(e.elapsed):  # the record's own times (imported logs)
            t_last = self._time_base + e.elapsed
            t_first = (self._time_base + e.first_elapsed if n > 1 and e.first_elapsed is not None
                       and math.isfinite(e.first_elapsed) else None)
        else:
            t_last = self._loss_time_at(last)
            t_first = self._loss_time_at(first) if n > 1 and t_last is not None else None
        if steps is None:
            series.extend(first, e.values, t_last, first_time=t_first)
        else:
            series.add_points(steps, e.values, t_last, first_time=t_first)

    def _resume(self, step: int) -> None:
        """History past `step` is replaced by what follows."""
        self.resumes += 1
        self.revision += 1
        for series in self.metrics.values():
            series.truncate_after(step)
        self.validation = [v for v in self.validation if v.step <= step]
        self._event_checkpoints = [c for c in self._event_checkpoints if c.step <= step]
        self._recorded_checkpoints = {p: c for p, c in self._recorded_checkpoints.items() if c.step <= step}
        self._chunk_epochs = [c for c in self._chunk_epochs if c[0] <= step]
        self._epoch = self._chunk_epochs[-1][1] if self._chunk_epochs else 0
        self._step = step
        self._rate.clear()
        self.ended = None
        self._event_state = "running"

    # -- observing ------------------------------------------------------------------------------
    def observe(self, *, status=None, observed_state: str | None = None, checkpoints: list | None = None,
                name: str | None = None, now: float | None = None,
                missing_checkpoints: Iterable[str] | None = None) -> None:
        """What a reader saw besides the events: `status` (status.json), `observed_state`
        (Run.observed_state: the lock's word on a dead worker), the checkpoints on disk, the
        recorded checkpoints' paths that are gone, and `now` on the reader's own monotonic clock
        (heartbeat staleness is judged against it)."""
        if missing_checkpoints is not None:
            self.missing_checkpoints = frozenset(missing_checkpoints)
        if status is not None:
            self.status = status
            if now is not None and status.heartbeat != self._hb_value:
                self._hb_value, self._hb_seen_at = status.heartbeat, now
        if observed_state:
            self.observed_state = observed_state
        if checkpoints is not None:
            self.listed_checkpoints = [
                CheckpointRef(c.name, c.step, c.epoch, path=str(c.path), metrics=getattr(c, "metrics", None),
                              size=getattr(c, "size", None)) for c in checkpoints]
        if name:
            self.name = name
        if now is not None:
            self._now = now
            if self._hb_seen_at is None:
                self._hb_seen_at = now

    # -- what readers show ----------------------------------------------------------------------
    @property
    def state(self) -> str:
        if self.observed_state in FINAL_STATES:
            return self.observed_state
        if self.ended is not None:
            return self.ended.state
        return self.observed_state or self._event_state or "queued"

    def epoch_at(self, step: int) -> int:
        """The epoch of the loss chunk holding `step` (0 before the first chunk)."""
        i = bisect_right(self._chunk_epochs, (step, math.inf)) - 1
        return self._chunk_epochs[i][1] if i >= 0 else 0

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def stale_for(self) -> float:
        """Seconds since the heartbeat last changed, while the run should be alive; else 0."""
        if self.state not in _LIVE or self._now is None or self._hb_seen_at is None:
            return 0.0
        return max(0.0, self._now - self._hb_seen_at)

    @property
    def heartbeat_stale(self) -> bool:
        return self.stale_for > STALE_AFTER

    @property
    def step(self) -> int:
        if self._step or self.metrics["loss"].count or self.resumes:
            return self._step
        return self.status.step if self.status is not None else 0

    @property
    def total_steps(self) -> int:
        if self.started is not None:
            return self.started.total_steps
        return self.status.total_steps if self.status is not None else 0

    @property
    def epoch(self) -> int:
        if self._epoch:
            return self._epoch
        return self.status.epoch if self.status is not None else 0

    @property
    def epochs(self) -> int:
        """The run's epochs: its config's, or for a run bounded by max_steps the epochs those span."""
        if self.started is not None:
            return epochs_spanned(self.started.config, self.started.steps_per_epoch)
        return 0

    @property
    def last_loss(self) -> float | None:
        loss = self.metrics["loss"]
        if loss.last is not None:
            return loss.last
        return self.status.last_loss if self.status is not None else None

    @property
    def message(self) -> str:
        if self.ended is not None and self.ended.message:
            return self.ended.message
        return self.status.message if self.status is not None and self.final else ""

    @property
    def rate_is_average(self) -> bool:
        """True when steps/s is the whole run's average (the run is not running now)."""
        return self.state not in ("running", "saving")

    @property
    def steps_per_second(self) -> float | None:
        """While running: over the last few seconds of the writer's own clock (the chunks carry
        it). Otherwise, or for a version 1 file: the average over the epochs' training time."""
        if not self.rate_is_average and len(self._rate) >= 2:
            t_now, s_now = self._rate[-1]
            t, s = self._rate[0]
            for t_i, s_i in reversed(self._rate):
                t, s = t_i, s_i
                if t_now - t_i >= RATE_WINDOW:
                    break
            if t_now > t and s_now > s:
                return (s_now - s) / (t_now - t)
        seconds = sum(v.seconds for v in self.validation)
        steps = self.validation[-1].step if self.validation else 0
        if seconds > 0 and steps > 0:
            return steps / seconds
        return None

    @property
    def eta_seconds(self) -> float | None:
        rate = self.steps_per_second
        if self.state not in ("running", "saving") or not rate or self.total_steps <= self.step:
            return None
        return (self.total_steps - self.step) / rate

    @property
    def checkpoints(self) -> list[CheckpointRef]:
        """The run's own checkpoints on disk when they were listed (retention removes old ones),
        else those the events name; then those recorded by path (a framework's), less any seen
        gone (its own retention deleted them)."""
        own = self.listed_checkpoints if self.listed_checkpoints is not None else list(self._event_checkpoints)
        recorded = [c for p, c in self._recorded_checkpoints.items() if p not in self.missing_checkpoints]
        return own + recorded if recorded else own

    @property
    def recorded_checkpoint_paths(self) -> list[str]:
        """Every path a `checkpoint` record names (whether or not it is still there)."""
        return list(self._recorded_checkpoints)

    @property
    def best_val_loss(self) -> float | None:
        vals = [v.val_loss for v in self.validation if v.val_loss is not None]
        return min(vals) if vals else None

    def metrics_json(self) -> dict[str, dict[str, Any]]:
        return {name: s.to_json() for name, s in self.metrics.items() if s.count or name == "loss"}

    def to_json(self) -> dict[str, Any]:
        """The command line's contract: id, name, state, step, epoch, last_loss, checkpoints[]
        with path and step; plus the rest every reader shows."""
        return {
            "id": self.run_id, "name": self.name, "state": self.state, "step": self.step, "epoch": self.epoch,
            "total_steps": self.total_steps, "epochs": self.epochs, "last_loss": self.last_loss,
            "best_val_loss": self.best_val_loss, "steps_per_second": self.steps_per_second,
            "eta_seconds": self.eta_seconds, "heartbeat_stale": self.heartbeat_stale,
            "stale_for": round(self.stale_for, 1), "message": self.message,
            "validation": [vars(v) for v in self.validation],
            "checkpoints": [{"path": c.path, "name": c.name, "step": c.step, "epoch": c.epoch,
                             "metrics": c.metrics, "size": c.size, "reason": c.reason} for c in self.checkpoints],
            "metrics": self.metrics_json(),
        }


def read_observation(run):
    """(status.json, the store's observed state) of a run, read together: liveness is the store's
    (torchdeck.runs.store.Run.observed_state), never judged here."""
    status = run.status()
    state = run.observed_state(status)
    if state != status.state:
        status = run.status()  # the store may just have recorded a crash
    return status, state


def observe_run(view: RunView, run, *, now: float | None = None, checkpoints: bool = False) -> None:
    """Read a run's status, the store's observed state (and its checkpoints) into `view`."""
    status, state = read_observation(run)
    summary = run.summary()
    listed = None
    if checkpoints:
        from torchdeck.checkpoints import store as ckpt_store

        try:
            listed = ckpt_store.list_checkpoints(run.checkpoints_dir)
        except OSError:
            listed = None
    view.observe(status=status, observed_state=state, checkpoints=listed,
                 name=summary.name if summary is not None else None,
                 now=time.monotonic() if now is None else now,
                 missing_checkpoints=missing_checkpoints(view) if checkpoints else None)


def missing_checkpoints(view: RunView) -> list[str]:
    """The recorded checkpoints' paths (a framework's) that are no longer there."""
    import os

    return [p for p in view.recorded_checkpoint_paths if not os.path.exists(p)]


class RunFollower:
    """A RunView kept up to date from a run's files: each `poll` reads the events written since
    the last one and observes the run. `done` once the run is final and every whole line has
    been read: a torn last line left by a dead worker never keeps a reader waiting."""

    def __init__(self, run, *, clock: Callable[[], float] = time.monotonic, max_bytes: int = 8 << 20):
        self.run = run
        self.clock = clock
        self.max_bytes = max_bytes
        self.tail = ev.EventTail(run.events_path)
        self.view = RunView(run.id)

    def poll(self, *, checkpoints: bool = False) -> list[ev.Event]:
        """One batch of new events (at most about max_bytes), fed to the view, and a fresh
        observation. The observation is taken first: events read after a final state was seen
        are all the events there will be."""
        observe_run(self.view, self.run, now=self.clock(), checkpoints=checkpoints)
        batch = self.tail.read_new(self.max_bytes)
        self.view.feed(batch)
        return batch

    @property
    def caught_up(self) -> bool:
        return self.tail.caught_up

    @property
    def done(self) -> bool:
        return self.view.observed_state in FINAL_STATES and self.tail.caught_up


def load(run, *, checkpoints: bool = True, heartbeat_wait: float = 0.0) -> RunView:
    """A run's whole history reduced at once. `heartbeat_wait`: for an active run, watch its
    heartbeat up to this long (returning as soon as it moves) so that a stale one is told."""
    follower = RunFollower(run)
    while True:
        follower.poll(checkpoints=checkpoints)
        if follower.caught_up:
            break
    view = follower.view
    if checkpoints and view.recorded_checkpoint_paths:  # recorded in events read after the observation
        view.observe(missing_checkpoints=missing_checkpoints(view))
    if heartbeat_wait > 0 and view.state in ACTIVE_STATES:
        deadline = time.monotonic() + heartbeat_wait
        first = view.status.heartbeat if view.status is not None else None
        while time.monotonic() < deadline and view.state in _LIVE:
            time.sleep(0.1)
            observe_run(view, run)
            if view.status is not None and view.status.heartbeat != first:
                break
        view.feed(follower.tail.read_new())
    return view
