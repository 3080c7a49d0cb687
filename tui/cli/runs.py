"""`torchdeck train` and `torchdeck runs ...`."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from torchdeck.errors import InvalidRequest
from torchdeck.options import FINAL_STATES, OPTIMIZERS
from torchdeck.runs.config import RunConfig, parse_number
from torchdeck.runs.store import RunStore
from torchdeck.workspace import Workspace

from .output import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Parser,
    emit_json,
    err,
    fmt_loss,
    table,
)


def add_parsers(sub, common) -> None:
    train = sub.add_parser("train", help="train a model in a background worker", parents=[common])
    train.add_argument("--model", required=True, metavar="SPEC", help="builtin:NAME, a registered name, or module:callable")
    train.add_argument("--data", metavar="SPEC", help="data spec (default: the model's own)")
    train.add_argument("--epochs", metavar="N", default=str(RunConfig.epochs))
    train.add_argument("--batch-size", metavar="N", default=str(RunConfig.batch_size))
    train.add_argument("--lr", metavar="X", default=str(RunConfig.lr))
    train.add_argument("--optimizer", metavar="NAME", default=RunConfig.optimizer, help="|".join(OPTIMIZERS))
    train.add_argument("--loss", choices=("mse", "cross_entropy"), help="default: follows the targets")
    train.add_argument("--seed", metavar="N", default=str(RunConfig.seed))
    train.add_argument("--name", default="", help="a name for the run")
    train.add_argument("--threads", metavar="N", help="torch CPU threads (default: all cores but one)")
    train.add_argument("--dataset-size", metavar="N", help="synthetic data: how many samples (default: the set's own)")
    train.add_argument("--no-checkpoints", action="store_true", help="write no checkpoints (benchmarks)")
    train.add_argument("--detach", action="store_true", help="print the run id and return; the run goes on")

    runs = sub.add_parser("runs", help="training runs", parents=[common])
    rsub = runs.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=Parser)
    rsub.add_parser("list", help="list runs", parents=[common])
    for name, text in (("show", "show a run"), ("stop", "stop a run (checkpoint first)")):
        p = rsub.add_parser(name, help=text, parents=[common])
        p.add_argument("run", metavar="RUN", help="run id, id prefix or name")
    rm = rsub.add_parser("rm", help="delete a run that is not active (its checkpoints too)", parents=[common])
    rm.add_argument("run", metavar="RUN", help="run id, a unique part of its start or end, or name")
    tail = rsub.add_parser("tail", help="print a run's events", parents=[common])
    tail.add_argument("run", metavar="RUN")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing until the run ends")


def config_from_args(ws: Workspace, args) -> RunConfig:
    from torchdeck.runs.launch import prepare

    cfg = RunConfig(
        model=args.model,
        data=args.data,
        epochs=parse_number(args.epochs, "epochs", int),
        batch_size=parse_number(args.batch_size, "batch size", int),
        lr=parse_number(args.lr, "learning rate", float),
        optimizer=args.optimizer.lower(),
        seed=parse_number(args.seed, "seed", int),
        name=args.name,
        dataset_size=None if args.dataset_size is None else parse_number(args.dataset_size, "dataset size", int),
        loss=args.loss,
    )
    if args.threads is not None:
        cfg.threads = parse_number(args.threads, "threads", int)
        if cfg.threads < 1:
            raise InvalidRequest(f"threads must be at least 1, not {cfg.threads}")
    if args.no_checkpoints:
        cfg.checkpoint_every_epoch = cfg.checkpoint_on_stop = False
    return prepare(ws, cfg)


def cmd_train(ws: Workspace, args) -> int:
    cfg = config_from_args(ws, args)
    store = RunStore(ws)
    run = store.create(cfg)
    store.launch(run)  # config_from_args checked everything a worker checks first
    if args.detach:
        if args.json:
            emit_json({"id": run.id, "state": run.observed_state(), "path": str(run.path)})
        else:
            print(run.id)
        return EXIT_OK
    err(f"run {run.id} started; Ctrl-C stops it after a checkpoint")
    interrupted = False
    try:
        _follow_progress(run)
    except KeyboardInterrupt:
        interrupted = True
        err("\nstopping (checkpoint first)...")
        try:
            run.stop()
        except KeyboardInterrupt:
            run.stop(grace=0.5, term_grace=2)
    state = run.observed_state()
    st = run.status()
    if args.json:
        emit_json({"id": run.id, "state": state, "last_loss": st.last_loss, "step": st.step, "epoch": st.epoch,
                   "checkpoints": _checkpoints_json(run)})
    else:
        err(f"run {run.id} {state} at step {st.step}, last loss {fmt_loss(st.last_loss)}"
            + (f": {st.message}" if st.message and state not in ('finished',) else ""))
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if state == "finished" else EXIT_FAILED


def _follow_progress(run) -> None:
    from torchdeck.runs.events import EventTail, Losses, Started

    tail = EventTail(run.events_path)
    total, step, loss, t_start, s_start = 0, 0, None, None, 0
    tty = sys.stderr.isatty()
    last_draw = 0.0
    while True:
        for e in tail.read_new():
            if isinstance(e, Started):
                total = e.total_steps
            elif isinstance(e, Losses):
                step = e.last_step
                finite = [v for v in e.values if v is not None]
                loss = finite[-1] if finite else loss
                if t_start is None:
                    t_start, s_start = time.monotonic(), step
        now = time.monotonic()
        if now - last_draw > 0.25 and total:
            last_draw = now
            rate = (step - s_start) / (now - t_start) if t_start and now > t_start else 0.0
            width = 30
            filled = int(width * step / total)
            line = f"[{'#' * filled}{'.' * (width - filled)}] {step}/{total} loss {fmt_loss(loss)} {rate:,.0f} steps/s"
            if tty:
                sys.stderr.write("\r" + line + "\x1b[K")
                sys.stderr.flush()
        state = run.observed_state()
        if state in FINAL_STATES and tail.at_end():
            if tty:
                sys.stderr.write("\n")
            return
        time.sleep(0.1)


def _checkpoints_json(run) -> list[dict[str, Any]]:
    from torchdeck.checkpoints import store as checkpoints

    return [{"path": str(c.path), "name": c.name, "step": c.step, "epoch": c.epoch, "metrics": c.metrics,
             "size": c.size} for c in checkpoints.list_checkpoints(run.checkpoints_dir)]


def cmd_runs_list(ws: Workspace, args) -> int:
    summaries = RunStore(ws).summaries()
    if args.json:
        emit_json({"runs": [vars(s) for s in summaries]})
    elif not summaries:
        err(f"no runs in {ws.runs_dir}")
    else:
        print(table([[s.id, s.name if s.name != s.id else "", s.model, s.state, f"{s.step}/{s.total_steps}",
                       f"{s.epoch}/{s.epochs}", fmt_loss(s.last_loss)] for s in summaries],
                     ["ID", "NAME", "MODEL", "STATE", "STEP", "EPOCH", "LOSS"]))
    return EXIT_OK


def cmd_runs_show(ws: Workspace, args) -> int:
    run = RunStore(ws).get(args.run)
    state = run.observed_state()
    st, summ, cfg = run.status(), run.summary(), run.config()
    doc = {
        "id": run.id, "name": summ.name if summ else run.id, "state": state, "step": st.step, "epoch": st.epoch,
        "total_steps": st.total_steps, "last_loss": st.last_loss,
        "best_val_loss": summ.best_val_loss if summ else None, "message": st.message,
        "pid": st.pid, "host": st.host, "path": str(run.path), "config": cfg.to_json(),
        "checkpoints": _checkpoints_json(run),
    }
    if args.json:
        emit_json(doc)
        return EXIT_OK
    for k in ("id", "name", "state", "step", "epoch", "total_steps", "last_loss", "best_val_loss", "host", "path"):
        print(f"{k:14} {doc[k]}")
    if st.message:
        print(f"{'message':14} {st.message}")
    print(f"{'model':14} {cfg.model}  data {cfg.data or '(default)'}  epochs {cfg.epochs}  batch {cfg.batch_size}  "
          f"lr {cfg.lr}  optimizer {cfg.optimizer}  seed {cfg.seed}")
    print("checkpoints")
    for c in doc["checkpoints"]:
        print(f"  step {c['step']:>8}  epoch {c['epoch']:>4}  {c['path']}")
    return EXIT_OK


def cmd_runs_tail(ws: Workspace, args) -> int:
    from torchdeck.runs.events import EventTail, Losses

    run = RunStore(ws).get(args.run)
    tail = EventTail(run.events_path)
    while True:
        for e in tail.read_new():
            if args.json:
                sys.stdout.write(json.dumps(e.to_json(), separators=(",", ":")) + "\n")
            elif isinstance(e, Losses):
                bad = {i: kind for i, kind in e.nonfinite}
                sys.stdout.write("".join(
                    f"epoch {e.epoch} step {e.first_step + i} loss {bad.get(i, 'nan') if v is None else fmt_loss(v)}\n"
                    for i, v in enumerate(e.values)))
            else:
                d = e.to_json()
                kind = d.pop("type")
                d.pop("config", None)
                sys.stdout.write(f"{kind}: " + " ".join(f"{k}={v}" for k, v in d.items()) + "\n")
        sys.stdout.flush()
        if not args.follow:
            return EXIT_OK
        if run.observed_state() in FINAL_STATES and tail.at_end():
            return EXIT_OK
        time.sleep(0.2)


def cmd_runs_stop(ws: Workspace, args) -> int:
    """Exit 0 when the run ends stopped (or had already ended), 1 when it ends otherwise (it
    crashed or diverged meanwhile) or could not be stopped."""
    run = RunStore(ws).get(args.run)
    live = run.liveness()
    if live.state in FINAL_STATES:
        err(f"run {run.id} is already {live.state}" + (f": {live.reason}" if live.reason else ""))
        if args.json:  # --json promises one document on stdout, this case included
            emit_json({"id": run.id, "state": live.state})
        return EXIT_OK
    state = run.stop(say=err)
    st = run.status()
    if args.json:
        emit_json({"id": run.id, "state": state})
    else:
        err(f"run {run.id} {state}" + (f": {st.message}" if st.message and state != "finished" else ""))
    return EXIT_OK if state in ("stopped", "finished") else EXIT_FAILED


def cmd_runs_rm(ws: Workspace, args) -> int:
    run = RunStore(ws).remove(args.run)
    if args.json:
        emit_json({"id": run.id, "removed": True})
    err(f"run {run.id} removed")
    return EXIT_OK


COMMANDS = {
    ("train", None): cmd_train,
    ("runs", "list"): cmd_runs_list,
    ("runs", "show"): cmd_runs_show,
    ("runs", "tail"): cmd_runs_tail,
    ("runs", "stop"): cmd_runs_stop,
    ("runs", "rm"): cmd_runs_rm,
}
