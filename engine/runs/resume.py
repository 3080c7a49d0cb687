"""Continuing a run that ended (stopped, crashed, diverged, failed or finished) in its own run
directory, from its checkpoint, exactly; the one way the command line and the TUI both use.

`plan` decides (and refuses with a clear reason): which checkpoint, the new length, whether the
result is still exact. `start` records the request (config.json, resume.json) under the run's
lock and launches a worker, which reads resume.json, restores everything from the checkpoint
(torchdeck.training.loop.Trainer.restore) and writes a `resumed` record before new history.

Only the length may change (`epochs` or `max_steps`), and the learning rate of a diverged run
(the `resumed` record then says the continuation is not exact). A checkpoint other than the
run's latest is refused: resuming from it would overwrite the later ones.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torchdeck.checkpoints import store as checkpoints
from torchdeck.errors import Busy, Corrupt, Exists, InvalidRequest, NotFound
from torchdeck.fsutil import atomic_write_json, read_json
from torchdeck.options import FINAL_STATES
from torchdeck.procs import process_start_time
from torchdeck.runs.config import RunConfig
from torchdeck.runs.store import Run, RunStore, Status, acquire_run_lock

RESUME_FILE = "resume.json"


@dataclass
class ResumePlan:
    run: Run
    config: RunConfig  # the run's config with the new length (and rate)
    checkpoint: Path | None  # None: from the start (the run ended before its first checkpoint)
    step: int
    state: str  # the run's state before the resume
    exact: bool = True
    changes: dict[str, list[Any]] = field(default_factory=dict)  # field -> [before, after]
    remove: list[Path] = field(default_factory=list)  # a diverged run's checkpoints past the last finite one
    note: str = ""

    def describe(self) -> str:
        where = f"from {self.checkpoint.name}" if self.checkpoint else "from the start (it has no checkpoint)"
        text = f"run {self.run.id} resumes {where} at step {self.step:,}"
        if self.changes:
            text += "; " + ", ".join(f"{k} {_fmt(a)} -> {_fmt(b)}" for k, (a, b) in self.changes.items())
        if not self.exact:
            text += f" (not exact: {self.note})"
        return text


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)


def run_of(store: RunStore, ref: str) -> tuple[Run, Path | None]:
    """The run a RUN reference or a checkpoint path names, and the checkpoint when one was named."""
    p = Path(os.path.expanduser(ref))
    if p.is_dir() and (p / checkpoints.META).exists():
        p = p.resolve()
        run_dir = p.parent.parent
        if p.parent.name != "checkpoints" or not (run_dir / "config.json").exists():
            raise InvalidRequest(f"{ref} is not a checkpoint of a torchdeck run: start a new run from its weights "
                                 f"with `torchdeck train --from {ref}`", field="resume")
        if run_dir.parent != store.root.resolve():
            raise InvalidRequest(f"{ref} belongs to a run of another workspace ({run_dir.parent.parent}): "
                                 "give that workspace with --workspace", field="resume")
        return Run(run_dir), p
    return store.get(ref), None


def _finite(path: Path) -> bool:
    import torch

    return all(bool(torch.isfinite(t).all()) for t in checkpoints.load_weights(path).values()
               if t.is_floating_point() or t.is_complex())


def refuse_if_not_torchdecks(run) -> None:
    """Raise naming why, when `run` is not one torchdeck's loop trained (another tool's logs, a
    script's torchdeck.init, a command): only those can be resumed."""
    raw = read_json(run.path / "config.json")
    from torchdeck.sources.mirror import refuse_if_imported

    refuse_if_imported(run, "resume", field="resume")
    if isinstance(raw, dict) and raw.get("source") == "api":
        script = raw.get("script") or "its script"
        raise InvalidRequest(f"run {run.id} was logged by a script ({script}) through torchdeck.init: torchdeck "
                             f"cannot retrain it; run the script again with torchdeck.init(id=\"{run.id}\") to "
                             "continue its history", field="resume")
    if isinstance(raw, dict) and raw.get("source") == "command":
        from torchdeck.runs.command import command_text

        argv = raw.get("command") if isinstance(raw.get("command"), list) else []
        raise InvalidRequest(f"run {run.id} ran a command ({command_text([str(a) for a in argv])}): torchdeck cannot "
                             "resume a command; run it again with torchdeck run -- ...", field="resume")


def plan(store: RunStore, ref: str, *, epochs: int | None = None, max_steps: int | None = None,
         lr: float | None = None) -> ResumePlan:
    """What resuming `ref` would do; raises naming why it cannot."""
    from torchdeck.training.loop import TRAINING_STATE_FORMAT

    if epochs is not None and max_steps is not None:
        raise InvalidRequest("give --epochs or --max-steps, not both", code="usage", field="epochs")
    run, named = run_of(store, ref)
    live = run.liveness()
    if live.state not in FINAL_STATES:
        raise Busy(f"run {run.id} is {live.state}: only a run that has ended can be resumed (stop it first)",
                   field="resume")
    refuse_if_not_torchdecks(run)
    checkpoints.remove_stale_temporaries(run.checkpoints_dir)  # nobody writes it now
    cfg = run.config()
    found = checkpoints.list_checkpoints(run.checkpoints_dir)
    remove: list[Path] = []
    chosen_info = None  # a CheckpointInfo of `found`
    if named is not None:
        chosen_info = next((c for c in found if c.path.resolve() == named), None)
        if chosen_info is None:
            raise NotFound(f"{named} is not a complete checkpoint of run {run.id}", field="resume")
        later = [c.path.name for c in found if (c.step or 0) > (chosen_info.step or 0)]
        if later:
            raise Exists(f"run {run.id} has later checkpoints ({', '.join(later)}): resuming from {named.name} would "
                         f"overwrite them; remove them first, or start a new run from its weights with "
                         f"`torchdeck train --from {named}`", field="resume")
    elif live.state == "diverged":
        for c in reversed(found):  # the last checkpoint whose weights are all finite
            if _finite(c.path):
                chosen_info = c
                break
            remove.append(c.path)
        if chosen_info is None and found:
            raise InvalidRequest(f"run {run.id} has no checkpoint with finite weights to resume from", field="resume")
    elif found:
        chosen_info = found[-1]
    chosen = chosen_info.path if chosen_info is not None else None
    step, spe = 0, None
    if chosen_info is not None:
        # meta.json says what is needed here; the worker checks every hash before it loads.
        meta = chosen_info.meta
        if meta.get("training_state_format") != TRAINING_STATE_FORMAT:
            raise Corrupt(f"checkpoint {chosen.name} of run {run.id} was written before exact resume existed: it "
                          f"cannot be resumed from; start a new run from its weights with `torchdeck train --from "
                          f"{chosen}`", field="resume")
        step, spe = int(meta.get("step") or 0), meta.get("steps_per_epoch")

    new = RunConfig.from_json(cfg.to_json())
    changes: dict[str, list[Any]] = {}
    if epochs is not None:
        new.epochs, new.max_steps = epochs, None
    if max_steps is not None:
        new.max_steps = max_steps
    if lr is not None:
        if live.state != "diverged":
            raise InvalidRequest(f"--lr is accepted only when resuming a diverged run; run {run.id} is {live.state} "
                                 "and a new rate would not continue the same training", code="usage", field="lr")
        new.lr = lr
    new.validate()
    for name in ("epochs", "max_steps", "lr"):
        if getattr(new, name) != getattr(cfg, name):
            changes[name] = [getattr(cfg, name), getattr(new, name)]
    if spe:
        total = new.max_steps or spe * new.epochs
        if total <= step:
            length = f"max steps {new.max_steps:,}" if new.max_steps else f"{new.epochs} epoch(s) ({total:,} steps)"
            if not changes:
                raise InvalidRequest(f"run {run.id} has trained all its {length}: give it more epochs (or "
                                     "max steps) to train it longer", field="epochs")
            raise InvalidRequest(f"run {run.id} is at step {step:,}; {length} ends there or before: nothing left to "
                                 "train", field="max_steps" if new.max_steps else "epochs")
    exact, note = True, ""
    if "lr" in changes:
        exact, note = False, f"learning rate changed from {cfg.lr:g} to {new.lr:g}"
    elif ("epochs" in changes or "max_steps" in changes) and cfg.schedule != "constant" and step:
        exact, note = False, f"the {cfg.schedule} schedule is stretched over the new length"
    return ResumePlan(run=run, config=new, checkpoint=chosen, step=step, state=live.state, exact=exact,
                      changes=changes, remove=remove, note=note)


def start(p: ResumePlan, store: RunStore) -> Run:
    """Record the resume under the run's lock (so two resumes cannot both start) and launch the
    worker, which takes the lock when this releases it."""
    run = p.run
    lock = acquire_run_lock(run.path)
    if lock is None:
        raise Busy(f"run {run.id} is being run by another process", field="resume")
    try:
        # Under the lock no worker lives; a queued status with a live launcher is another resume's.
        if run.status().state == "queued" and run._queued_verdict()[0] == "queued":
            raise Busy(f"run {run.id} is being resumed by another process", field="resume")
        for path in p.remove:  # a diverged run's non-finite checkpoints past the one resumed from
            checkpoints.remove_checkpoint(path, store.root)
        atomic_write_json(run.path / "config.json", p.config.to_json())
        atomic_write_json(run.path / RESUME_FILE, {
            "checkpoint": p.checkpoint.name if p.checkpoint else None, "step": p.step, "exact": p.exact,
            "changes": p.changes, "note": p.note, "lr": p.config.lr if "lr" in p.changes else None,
            "from_state": p.state, "time": time.time(),
        })
        now = time.time()
        atomic_write_json(run.path / "launch.json", {
            "created": now, "host": socket.gethostname(), "resume": True,
            "launcher": {"pid": os.getpid(), "pid_start": process_start_time(os.getpid())},
        }, durable=False)
        st = run.status()
        queued = Status(state="queued", host=socket.gethostname(), step=p.step, epoch=st.epoch,
                        total_steps=st.total_steps, last_loss=st.last_loss)
        atomic_write_json(run.path / "status.json", asdict(queued))
        summ = run.summary()
        if summ is not None:
            # a max_steps run's epochs are known again once its worker has read the data
            summ.state, summ.ended, summ.step = "queued", None, p.step
            summ.epochs = 0 if p.config.max_steps else p.config.epochs
            atomic_write_json(run.path / "summary.json", asdict(summ))
    finally:
        lock.close()
    store.launch(run)
    return run


def pending(run: Run) -> dict[str, Any] | None:
    """The resume request a worker starting on this run must honour (None: a fresh start)."""
    d = read_json(run.path / RESUME_FILE)
    return d if isinstance(d, dict) else None

