"""`torchdeck train` and `torchdeck runs ...`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from torchdeck.errors import InvalidRequest, TorchdeckError
from torchdeck.fmt import fmt_count, fmt_duration, fmt_loss, fmt_number
from torchdeck.fsutil import read_json
from torchdeck.options import FINAL_STATES, LOSSES, OPTIMIZERS, PRECISIONS, SCHEDULES
from torchdeck.runs import events as ev
from torchdeck.runs import view as run_view
from torchdeck.runs.command import DEFAULT_INT_TIMEOUT as DEFAULT_INT
from torchdeck.runs.command import DEFAULT_TERM_TIMEOUT as DEFAULT_TERM
from torchdeck.runs.config import RunConfig, parse_betas, parse_number
from torchdeck.runs.store import RunStore
from torchdeck.workspace import Workspace

from .output import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Parser,
    emit_json,
    err,
    table,
    unfiltered,
)


def add_parsers(sub, common) -> None:
    train = sub.add_parser("train", help="train a model in a background worker", parents=[common])
    train.add_argument("--config", metavar="FILE", help="settings from a TOML file whose keys are these flags' names "
                       "with _ for - (model, data, max_steps, ...); flags override it")
    train.add_argument("--model", metavar="SPEC", help="builtin:NAME, a registered name, or module:callable "
                       "(required unless --config names one)")
    train.add_argument("--data", metavar="SPEC", help="data spec (default: the model's own)")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--epochs", metavar="N", help=f"epochs (default {RunConfig.epochs})")
    length.add_argument("--max-steps", metavar="N", help="stop after N optimizer steps instead")
    train.add_argument("--batch-size", metavar="N", help=f"default {RunConfig.batch_size}")
    train.add_argument("--lr", metavar="X", help=f"learning rate (default {RunConfig.lr}; onecycle's peak)")
    train.add_argument("--optimizer", metavar="NAME", help="|".join(OPTIMIZERS) + f" (default {RunConfig.optimizer})")
    train.add_argument("--momentum", metavar="X", help="sgd, rmsprop (default 0)")
    train.add_argument("--nesterov", action="store_true", default=None, help="Nesterov momentum (sgd)")
    train.add_argument("--weight-decay", metavar="X", help="default: the optimizer's own (adamw 0.01, else 0)")
    train.add_argument("--betas", metavar="X,Y", help="adam, adamw (default 0.9,0.999)")
    train.add_argument("--schedule", metavar="NAME", help="|".join(SCHEDULES) + " (default constant)")
    train.add_argument("--warmup-steps", metavar="N", help="linear warm-up over the first N steps (default 0)")
    train.add_argument("--loss", metavar="NAME", help="|".join(LOSSES) + " (default: follows the targets)")
    train.add_argument("--label-smoothing", metavar="X", help="cross_entropy (default 0)")
    train.add_argument("--clip-grad-norm", "--grad-clip", dest="grad_clip", metavar="X",
                       help="clip the gradients' total norm to X (grad_norm is then recorded every step)")
    train.add_argument("--accumulate", metavar="N", help="micro-batches per optimizer step (default 1)")
    train.add_argument("--precision", metavar="NAME", help="|".join(PRECISIONS) + " (default fp32; fp16 needs CUDA)")
    train.add_argument("--device", metavar="NAME", help="auto|cpu|cuda:N|mps (default auto)")
    train.add_argument("--deterministic", action="store_true", default=None,
                       help="deterministic algorithms only (slower; exact reruns on CUDA)")
    train.add_argument("--seed", metavar="N", help=f"default {RunConfig.seed}")
    train.add_argument("--name", help="a name for the run")
    train.add_argument("--threads", metavar="N", help="torch CPU threads (default: all cores but one; with "
                       "--nproc, (cores - 1) / N a process)")
    train.add_argument("--nproc", metavar="N", help="processes on this node, through torchrun with "
                       "DistributedDataParallel: one a GPU, or Gloo CPU processes without GPUs (default 1); "
                       "--batch-size is each process's")
    train.add_argument("--nnodes", metavar="N", help="nodes taking part (torchrun --nnodes; default 1)")
    train.add_argument("--node-rank", metavar="N", help="this node's rank (torchrun --node-rank; default 0)")
    train.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="the rendezvous (torchrun --rdzv-endpoint; "
                       "needed with --nnodes above 1)")
    train.add_argument("--dataset-size", metavar="N", help="synthetic data: how many samples (default: the set's own)")
    train.add_argument("--val-fraction", metavar="X", help="held out for validation (default: the data's own, 0.1)")
    train.add_argument("--val-every", metavar="N", help="validate every N steps (default: each epoch)")
    train.add_argument("--early-stop-patience", metavar="N", help="stop after N validations without a better "
                       "--best-metric")
    train.add_argument("--num-workers", metavar="N", help="DataLoader workers (default: from the cores)")
    train.add_argument("--collate", metavar="SPEC", help="package.module:callable, the DataLoader's collate_fn")
    train.add_argument("--step", metavar="SPEC", help="package.module:callable (model, batch) -> loss or "
                       "{\"loss\": ..., ...}")
    train.add_argument("--checkpoint-every", metavar="N", help="also checkpoint every N steps (default: each epoch and at a stop)")
    train.add_argument("--keep", metavar="N", help=f"keep the newest N checkpoints (default {RunConfig.keep_checkpoints})")
    train.add_argument("--keep-best", metavar="K", help="also keep the best K checkpoints by --best-metric (default 0)")
    train.add_argument("--best-metric", metavar="NAME", help=f"the metric --keep-best ranks by (default {RunConfig.best_metric}; "
                       "lowest wins unless it is an accuracy)")
    train.add_argument("--no-checkpoints", action="store_true", help="write no checkpoints (benchmarks)")
    start = train.add_mutually_exclusive_group()
    start.add_argument("--resume", metavar="RUN|CKPT", help="continue a run that ended, exactly, from its latest "
                       "checkpoint (or the one given); only --epochs/--max-steps may change, and --lr for a diverged run")
    start.add_argument("--from", dest="init_from", metavar="CKPT", help="start a new run from a checkpoint's weights "
                       "(any format torchdeck opens), with a fresh optimizer")
    train.add_argument("--detach", action="store_true", help="print the run id and return; the run goes on")

    crun = sub.add_parser(
        "run", help="run any command as a run (its output in the run's log, its exit recorded)", parents=[common],
        usage="torchdeck run [--name N] [--detach] [--json] [--workspace DIR] [--int-timeout S] [--term-timeout S] "
              "-- CMD [ARG ...]",
        description="Start CMD (no shell) as a run, in a detached supervisor that survives the terminal: its "
        "stdout and stderr go to the run's log (runs tail, the TUI), TORCHDECK_RUN_DIR names the run so that "
        "torchdeck.init() inside it attaches to it (the run keeps this name). Returns when the command ends: "
        "exit 0 when it exited 0, else 1. A stop (Ctrl-C here, runs stop, the TUI) sends SIGINT to the "
        f"command's process group, SIGTERM after --int-timeout (default {DEFAULT_INT:g} s) and SIGKILL after "
        f"--term-timeout (default {DEFAULT_TERM:g} s) more. A command run cannot be paused or resumed.")
    crun.add_argument("--name", help="a name for the run")
    crun.add_argument("--detach", action="store_true", help="print the run id and return; the command goes on")
    crun.add_argument("--int-timeout", metavar="S", help=f"seconds from SIGINT to SIGTERM on a stop (default {DEFAULT_INT:g})")
    crun.add_argument("--term-timeout", metavar="S", help=f"seconds from SIGTERM to SIGKILL (default {DEFAULT_TERM:g})")
    crun.add_argument("--cwd", metavar="DIR", help="the command's working directory (default: this one)")
    crun.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD", help="the command and its arguments")

    runs = sub.add_parser("runs", help="training runs", parents=[common])
    rsub = runs.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=Parser)
    rsub.add_parser("list", help="list runs", parents=[common])
    for name, text in (("show", "show a run"), ("stop", "stop a run (checkpoint first)"),
                       ("pause", "pause a running run at its next chunk"), ("continue", "continue a paused run")):
        p = rsub.add_parser(name, help=text, parents=[common])
        p.add_argument("run", metavar="RUN", help="run id, id prefix or name")
    res = rsub.add_parser("resume", help="continue a run that ended, in the background (train --resume --detach)",
                          parents=[common])
    res.add_argument("run", metavar="RUN|CKPT")
    rlen = res.add_mutually_exclusive_group()
    rlen.add_argument("--epochs", metavar="N")
    rlen.add_argument("--max-steps", metavar="N")
    res.add_argument("--lr", metavar="X", help="a new learning rate (a diverged run only; not exact)")
    rm = rsub.add_parser("rm", help="delete a run that is not active (its checkpoints too)", parents=[common])
    rm.add_argument("run", metavar="RUN", help="run id, a unique part of its start or end, or name")
    exp = rsub.add_parser(
        "export", help="write every point of every metric of a run as CSV or JSON",
        description="Every point of every metric (loss, lr, grad_norm, validation, throughput, memory, the step's "
        "own), exactly as written; a resumed run's replaced steps appear once, with their later values. "
        "CSV is long format, one row a point in the order recorded: metric,step,value,time. value: a non-finite "
        "one as its reason (nan, inf, -inf). time: training seconds since the run first started, at the copy-out "
        "of the chunk holding the point (one chunk's resolution, ~0.1-0.25 s); empty where the file has no clock. "
        "JSON: {\"run\": ID, \"metrics\": {NAME: {\"steps\": [...], \"values\": [...]}}}, a non-finite value as "
        "null with \"nonfinite\": [[index, reason], ...]. Lines that are not records are skipped and counted on "
        "stderr; a torn last line is ignored.")
    exp.add_argument("run", metavar="RUN", help="run id, a unique part of its start or end, or name")
    fmt = exp.add_mutually_exclusive_group(required=True)
    fmt.add_argument("--csv", action="store_true", default=argparse.SUPPRESS, help="CSV, streamed (long format)")
    fmt.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                     help="one JSON document (errors too are JSON on stdout)")
    exp.add_argument("--out", metavar="FILE", help="write FILE (atomically: a temporary sibling renamed) instead "
                     "of stdout")
    exp.add_argument("--workspace", metavar="DIR", default=argparse.SUPPRESS, help="workspace directory")
    exp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    tail = rsub.add_parser("tail", help="print a run's whole history, then its end (a command run's: its output; "
                           "--json: its events)", parents=[common])
    tail.add_argument("run", metavar="RUN")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing until the run ends")


# Flags that define a run; a resume may change none of them but the length (and a diverged
# run's rate): anything else would not continue the same run.
RUN_FLAGS = ("config", "model", "data", "batch_size", "optimizer", "momentum", "nesterov", "weight_decay", "betas",
             "schedule", "warmup_steps", "loss", "label_smoothing", "grad_clip", "accumulate", "precision", "device",
             "deterministic", "seed", "name", "threads", "dataset_size", "val_fraction", "val_every",
             "early_stop_patience", "num_workers", "collate", "step", "checkpoint_every", "keep", "keep_best",
             "best_metric", "init_from", "nproc", "nnodes", "node_rank", "rdzv_endpoint")
# A flag's dest -> its spelling, where that is not --dest with - for _.
FLAG_NAMES = {"init_from": "--from", "grad_clip": "--clip-grad-norm"}

# A setting's flag (its argparse dest) -> (RunConfig field, how its text is read).
FLAG_SETTINGS: dict[str, tuple[str, str]] = {
    "model": ("model", "str"), "data": ("data", "str"), "epochs": ("epochs", "int"),
    "max_steps": ("max_steps", "int"), "batch_size": ("batch_size", "int"), "lr": ("lr", "float"),
    "optimizer": ("optimizer", "name"), "momentum": ("momentum", "float"), "nesterov": ("nesterov", "bool"),
    "weight_decay": ("weight_decay", "float"), "betas": ("betas", "betas"), "schedule": ("schedule", "name"),
    "warmup_steps": ("warmup_steps", "int"), "loss": ("loss", "name"), "label_smoothing": ("label_smoothing", "float"),
    "grad_clip": ("grad_clip", "float"), "accumulate": ("accumulate", "int"), "precision": ("precision", "name"),
    "device": ("device", "name"), "deterministic": ("deterministic", "bool"), "seed": ("seed", "int"),
    "name": ("name", "str"), "threads": ("threads", "int"), "dataset_size": ("dataset_size", "int"),
    "val_fraction": ("val_fraction", "float"), "val_every": ("val_every", "int"),
    "early_stop_patience": ("early_stop_patience", "int"), "num_workers": ("num_workers", "int"),
    "collate": ("collate", "str"), "step": ("step", "str"), "checkpoint_every": ("checkpoint_every", "int"),
    "keep": ("keep_checkpoints", "int"), "keep_best": ("keep_best", "int"), "best_metric": ("best_metric", "strip"),
    "init_from": ("init_from", "str"), "nproc": ("nproc", "int"), "nnodes": ("nnodes", "int"),
    "node_rank": ("node_rank", "int"), "rdzv_endpoint": ("rdzv_endpoint", "strip"),
}


def flag_name(dest: str) -> str:
    return FLAG_NAMES.get(dest, "--" + dest.replace("_", "-"))


def flag_value(text, dest: str, field: str, kind: str):
    """A flag's text as its setting's value; InvalidRequest naming the flag, with the field."""
    flag = flag_name(dest)
    if kind in ("int", "float"):
        try:
            return parse_number(text, flag, int if kind == "int" else float)
        except InvalidRequest as e:
            raise InvalidRequest(str(e), field=field) from None
    if kind == "betas":
        return parse_betas(text, flag)
    if kind == "name":
        return str(text).strip().lower()
    if kind == "strip":
        return str(text).strip()
    return text


def config_from_args(ws: Workspace, args, standby=None) -> RunConfig:
    """The run's settings: the defaults, then --config's file, then the flags; each problem names
    its flag (or its key and the file) and carries its field."""
    from torchdeck.runs import config_file
    from torchdeck.runs.launch import prepare

    file = config_file.load(args.config) if getattr(args, "config", None) else None
    cfg = RunConfig()
    if file is not None:
        file.apply(cfg)
    flagged: dict[str, str] = {}  # field -> the flag that set it
    for dest, (field, kind) in FLAG_SETTINGS.items():
        text = getattr(args, dest, None)
        if text is None:
            continue
        setattr(cfg, field, flag_value(text, dest, field, kind))
        flagged[field] = flag_name(dest)
    if "epochs" in flagged and "max_steps" not in flagged:
        cfg.max_steps = None  # --epochs over a file's max_steps: the flag says how long
    if not args.model and (file is None or "model" not in file.values):
        raise InvalidRequest("--model is required (or a model key in --config FILE, or --resume RUN to continue a "
                             "run)", code="usage", field="model")
    if args.no_checkpoints:
        cfg.checkpoint_every_epoch = cfg.checkpoint_on_stop = False
    try:
        return prepare(ws, cfg, standby=standby)
    except InvalidRequest as e:
        if e.field in flagged:
            raise type(e)(f"{flagged[e.field]}: {e}", code=e.code, field=e.field) from None
        if file is not None:
            raise file.blame(e) from None
        raise


def _resume_plan(ws: Workspace, args):
    from torchdeck.runs import resume

    given = [flag_name(name) for name in RUN_FLAGS if getattr(args, name, None) not in (None, "", False)]
    if getattr(args, "no_checkpoints", False):
        given.append("--no-checkpoints")
    if given:
        raise InvalidRequest(f"{', '.join(given)} cannot change when resuming: a resumed run continues with its own "
                             "settings (only --epochs or --max-steps, and --lr for a diverged run)", code="usage",
                             field="resume")
    return resume.plan(
        RunStore(ws), args.resume if hasattr(args, "resume") else args.run,
        epochs=None if args.epochs is None else parse_number(args.epochs, "epochs", int),
        max_steps=None if args.max_steps is None else parse_number(args.max_steps, "max steps", int),
        lr=None if args.lr is None else parse_number(args.lr, "learning rate", float),
    )


def _import_numpy() -> None:
    """The follower's history arrays need numpy: imported before the run exists, not lazily in
    the follow loop, where a Ctrl-C landing mid-import left numpy refusing to load again ("cannot
    load module more than once per process") and the run was never stopped. (The command used
    to import it with torch for its own checks; the standby worker does those now.)"""
    import numpy  # noqa: F401


def cmd_train(ws: Workspace, args) -> int:
    store = RunStore(ws)
    if args.resume:
        _import_numpy()
        from torchdeck.runs import resume

        p = _resume_plan(ws, args)
        run = resume.start(p, store)
        cfg = p.config
        err(p.describe())
    else:
        # A worker starts importing torch now, on the core the checks below leave idle; it is
        # handed the run once they pass, or ends with nothing done when they do not.
        standby = store.start_standby()
        try:
            _import_numpy()  # after the standby is on its way: not on its start-up's path
            cfg = config_from_args(ws, args, standby)
            run = store.create(cfg)
        except BaseException:
            store.drop_standby(standby)
            raise
        store.launch(run, standby=standby)  # config_from_args checked everything a worker checks first
    if args.detach:
        if args.json:
            emit_json({"id": run.id, "name": cfg.name or run.id, "state": run.observed_state(), "path": str(run.path)})
        else:
            print(run.id)
        return EXIT_OK
    err(f"run {run.id} {'resumed' if args.resume else 'started'}; Ctrl-C stops it after a checkpoint")
    interrupted = False
    try:
        view = _follow_progress(run)
        run_view.observe_run(view, run, checkpoints=True)
    except KeyboardInterrupt:
        interrupted = True
        err("\nstopping (checkpoint first)...")
        try:
            run.stop()
        except KeyboardInterrupt:
            run.stop(grace=0.5, term_grace=2)
        view = run_view.load(run)
    if args.json:
        doc = view.to_json()
        emit_json({k: doc[k] for k in ("id", "name", "state", "step", "epoch", "total_steps", "last_loss",
                                       "message", "checkpoints")})
    else:
        err(f"run {_label(view)} {view.state} at step {fmt_count(view.step)}, last loss {fmt_loss(view.last_loss)}"
            + (f": {view.message}" if view.message and view.state != "finished" else ""))
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if view.state == "finished" else EXIT_FAILED


def cmd_run(ws: Workspace, args) -> int:
    """`torchdeck run -- CMD`: the command's output as it comes (stdout; stderr with --json, whose
    stdout holds one document), until the run ends. Ctrl-C asks for a stop and goes on printing
    the command's last words; a second one sends the next signal at once."""
    from torchdeck.runs import command as command_run

    argv = list(args.argv or [])
    if argv[:1] == ["--"]:
        argv = argv[1:]
    timeouts = {}
    for dest in ("int_timeout", "term_timeout"):
        text = getattr(args, dest)
        if text is not None:
            timeouts[dest] = parse_number_field(text, "--" + dest.replace("_", "-"), dest)
    run = command_run.create(ws, argv, name=args.name or "", cwd=args.cwd, **timeouts)
    command_run.launch(run)
    info = command_run.command_info(run) or {}
    if args.detach:
        if args.json:
            emit_json({"id": run.id, "name": run.name(), "state": run.observed_state(),
                       "path": str(run.path), "command": argv, "cwd": info.get("cwd")})
        else:
            print(run.id)
        return EXIT_OK
    err(f"run {run.id} started; Ctrl-C stops its command ("
        f"{command_run.timeouts_text(info.get('int_timeout', DEFAULT_INT), info.get('term_timeout', DEFAULT_TERM))})")
    out = sys.stderr if args.json else sys.stdout
    interrupts = 0
    log = _LogFollower(run.log_path)
    while True:
        try:
            while True:
                final = run.observed_state() in FINAL_STATES  # before the read: what follows is all there is
                got = log.copy_to(out, notes=sys.stderr)
                if final and not got:
                    break
                if not got:
                    time.sleep(0.1)
            break
        except KeyboardInterrupt:
            interrupts += 1
            _interrupt_command(run, interrupts)
    view = run_view.load(run)
    doc = command_run_json(run, view)
    if args.json:
        emit_json(doc)
    elif view.state != "finished":
        err(f"run {_label(view)} {view.state}" + (f": {view.message}" if view.message else ""))
    if interrupts:
        return EXIT_INTERRUPTED
    return EXIT_OK if view.state == "finished" else EXIT_FAILED


def parse_number_field(text, flag: str, field: str) -> float:
    try:
        return parse_number(text, flag, float)
    except InvalidRequest as e:
        raise InvalidRequest(str(e), field=field) from None


def _interrupt_command(run, n: int) -> None:
    """Ctrl-C in `torchdeck run`: the first asks for a stop (the supervisor's escalation), each
    later one sends the supervisor SIGTERM, which sends the command's next signal at once."""
    import signal as signals

    from torchdeck.procs import pid_alive

    live = run.liveness()
    if live.state in FINAL_STATES:
        return
    if n == 1:
        err("\nstopping the command (Ctrl-C again sends the next signal at once)...")
        run.request("stop")
        return
    st = run.status()
    if pid_alive(st.pid, st.pid_start):
        err("\nsending the command the next signal...")
        try:
            os.kill(st.pid, signals.SIGTERM)
        except OSError:
            pass


class _LogFollower:
    """A run's worker.log copied as it grows (bytes, undecoded: the command's own encoding).
    With `notes`, the supervisor's own lines ("torchdeck: ..." at a line's start) go there
    instead, so that `torchdeck run -- CMD > out.txt` holds the command's output alone."""

    PREFIX = b"torchdeck: "

    def __init__(self, path):
        self.path = path
        self.offset = 0
        self._line_start = True

    def copy_to(self, out, notes=None) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(1 << 20)
        except OSError:
            return 0
        if not data:
            return 0
        self.offset += len(data)
        if notes is None:
            _write_bytes(out, data)
            return len(data)
        pos = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            piece = data[pos:] if nl < 0 else data[pos:nl + 1]
            ours = self._line_start and piece.startswith(self.PREFIX)
            _write_bytes(notes if ours else out, piece)
            self._line_start = nl >= 0
            pos += len(piece)
        return len(data)


def _write_bytes(stream, data: bytes) -> None:
    stream.flush()
    raw = getattr(stream, "buffer", None)
    if raw is not None:
        raw.write(data)
        raw.flush()
    else:  # a text-only stream (tests calling main() in process)
        stream.write(data.decode("utf-8", "replace"))
        stream.flush()


def command_run_json(run, view) -> dict:
    """What `run --json` and `runs show --json` add for a command run: its command, working
    directory, exit status (or the signal that killed it) and duration."""
    from torchdeck.runs import command as command_run

    info = command_run.command_info(run) or {}
    summ = run.summary()
    ended = view.ended
    return {"id": run.id, "name": view.name, "state": view.state,
            "exit_status": ended.exit_status if ended is not None else None,
            "exit_signal": ended.exit_signal if ended is not None else None,
            "duration": summ.duration if summ is not None else None, "message": view.message,
            "command": info.get("command"), "cwd": info.get("cwd"), "step": view.step,
            "last_loss": view.last_loss, "path": str(run.path)}


def _label(view) -> str:
    return view.run_id if view.name in ("", view.run_id) else f"{view.name} ({view.run_id})"


def progress_line(view, width: int = 30) -> str:
    """`train`'s one-line progress, from the run's view."""
    total, step = view.total_steps, view.step
    filled = min(width, int(width * step / total)) if total else 0
    line = f"[{'#' * filled}{'.' * (width - filled)}] {fmt_count(step)}/{fmt_count(total)} loss {fmt_loss(view.last_loss)}"
    rate = view.steps_per_second
    if rate:
        line += f" {fmt_number(rate)} steps/s"
    if view.eta_seconds is not None:
        line += f" ETA {fmt_duration(view.eta_seconds)}"
    if view.heartbeat_stale:
        line += f" no heartbeat for {fmt_duration(view.stale_for)}"
    return line


def _follow_progress(run) -> run_view.RunView:
    """Draw progress until the run is final and its history read (a torn last line left by a
    crashed worker does not keep this waiting); the run's view, whole."""
    follower = run_view.RunFollower(run)
    tty = sys.stderr.isatty()
    last_draw = 0.0
    while True:
        follower.poll()
        now = time.monotonic()
        if tty and now - last_draw > 0.25 and follower.view.total_steps:
            last_draw = now
            unfiltered(sys.stderr).write("\r" + progress_line(follower.view) + "\x1b[K")  # our own line
            sys.stderr.flush()
        if follower.done:
            if tty:
                sys.stderr.write("\n")
            return follower.view
        if follower.caught_up:
            time.sleep(0.1)


def cmd_runs_list(ws: Workspace, args) -> int:
    summaries = RunStore(ws).summaries()
    if args.json:
        emit_json({"runs": [vars(s) for s in summaries]})
    elif not summaries:
        err(f"no runs in {ws.runs_dir}")
    else:
        print(table([[s.id, s.name if s.name != s.id else "", s.model, s.state,
                       f"{s.step}/{s.total_steps}" if s.total_steps else f"{s.step}",  # an API run has no total
                       f"{s.epoch}/{s.epochs or '?'}" if s.epochs or s.epoch else "-", fmt_loss(s.last_loss),
                       "-" if s.duration is None else fmt_duration(s.duration),
                       "-" if not s.steps_per_second else fmt_number(s.steps_per_second)] for s in summaries],
                     ["ID", "NAME", "MODEL", "STATE", "STEP", "EPOCH", "LOSS", "TIME", "STEPS/S"]))
    return EXIT_OK


def _sync_imported(run) -> dict | None:
    """An imported run's mirror brought up to date with its source (its history is read the first
    time it is shown); its config ({source, origin, ...}), or None for torchdeck's own runs."""
    from torchdeck.sources import mirror

    imported = mirror.imported_from(run)
    if imported is not None:
        res = mirror.sync(run, wait=1.0)
        for p in res.problems:
            err(f"torchdeck: warning: {p}")
    return imported


def cmd_runs_show(ws: Workspace, args) -> int:
    run = RunStore(ws).get(args.run)
    imported = _sync_imported(run)
    view = run_view.load(run, heartbeat_wait=run_view.STALE_AFTER + 0.5)
    cfg = run.config()
    st = view.status
    doc = {**view.to_json(), "pid": st.pid if st else None, "host": st.host if st else "", "path": str(run.path),
           "config": cfg.to_json()}
    raw = read_json(run.path / "config.json")
    if isinstance(raw, dict) and isinstance(raw.get("params"), dict):
        doc["params"] = raw["params"]  # a logging-API run's own config (torchdeck.init(config=...))
    # where the run came from: torchdeck's loop ("torchdeck": `config` is its settings), a script
    # ("api") or a command ("command"): their own settings are `params`; imported: the tool's name
    source = raw.get("source") if isinstance(raw, dict) and raw.get("source") in ("api", "command") else "torchdeck"
    doc["source"] = source
    command, script = source == "command", source == "api"
    if command:
        cdoc = command_run_json(run, view)
        doc.update({k: cdoc[k] for k in ("command", "cwd", "exit_status", "exit_signal", "duration")})
    if imported is not None:
        doc.update(source=imported["source"], origin=imported.get("origin"), read_only=True)
    if args.json:
        emit_json(doc)
        return EXIT_OK
    state = view.state + (f" (no heartbeat for {fmt_duration(view.stale_for)})" if view.heartbeat_stale else "")
    rate = view.steps_per_second
    rows = [
        ("id", view.run_id), ("name", view.name), ("state", state),
        ("step", f"{fmt_count(view.step)}/{fmt_count(view.total_steps)}" if view.total_steps
         else fmt_count(view.step)),
        ("epoch", f"{view.epoch}/{view.epochs or cfg.epochs}"
         if not isinstance(raw, dict) or ("params" not in raw and not command) else str(view.epoch or "-")),
        ("last_loss", fmt_loss(view.last_loss)), ("best_val_loss", fmt_loss(view.best_val_loss)),
        ("speed", "-" if not rate else f"{fmt_number(rate)} steps/s" + (" (average)" if view.rate_is_average else "")),
    ]
    if view.eta_seconds is not None:
        rows.append(("eta", fmt_duration(view.eta_seconds)))
    rows += [("host", doc["host"]), ("path", doc["path"])]
    if view.message:
        rows.append(("message", view.message))
    if command:
        from torchdeck.runs.command import command_text

        argv = doc["command"] if isinstance(doc["command"], list) else []
        rows += [("command", command_text([str(a) for a in argv])), ("cwd", str(doc["cwd"])),
                 ("exit", "-" if doc["exit_status"] is None and doc["exit_signal"] is None
                  else f"status {doc['exit_status']}" if doc["exit_status"] is not None else f"killed by {doc['exit_signal']}"),
                 ("duration", "-" if doc["duration"] is None else fmt_duration(doc["duration"]))]
    for k, v in rows:
        print(f"{k:14} {v}")
    if imported is not None:
        print(f"{'source':14} {imported['source']} (read-only)  {imported.get('origin')}")
    elif script:
        print(f"{'script':14} {raw.get('script') or cfg.model} (torchdeck.init)")
    elif not command:  # torchdeck's own loop: its settings (a script's or a command's are its own)
        print(f"{'model':14} {cfg.model}  data {cfg.data or '(default)'}  epochs {cfg.epochs}  batch {cfg.batch_size}  "
              f"lr {cfg.lr}  optimizer {cfg.optimizer}  seed {cfg.seed}")
    if imported is not None or script or doc.get("params"):
        params = json.dumps(doc.get("params") or {}, separators=(", ", ": "), default=str)
        print(f"{'params':14} {params if len(params) <= 400 else params[:400] + ' … (--json for all)'}")
    if view.validation:
        print("epochs")
        for v in view.validation:
            acc = "" if v.val_accuracy is None else f"  accuracy {v.val_accuracy:.1%}"
            print(f"  {v.epoch:>4}  step {fmt_count(v.step):>10}  train {fmt_loss(v.train_loss)}  "
                  f"val {fmt_loss(v.val_loss)}{acc}  {fmt_duration(v.seconds)}")
    print("metrics")
    for name, m in view.metrics_json().items():
        print(f"  {name:14} count {fmt_count(m['count'])}  last {fmt_loss(m['last'])}  min {fmt_loss(m['min'])}  "
              f"max {fmt_loss(m['max'])}" + (f"  non-finite {m['nonfinite']}" if m["nonfinite"] else ""))
    print("checkpoints")
    for c in doc["checkpoints"]:
        print(f"  step {c['step']:>8}  epoch {c['epoch']:>4}  {c['path']}")
    return EXIT_OK


def event_lines(e) -> list[str]:
    """`runs tail`'s text lines for one event: one a loss, one a scalar point."""
    if isinstance(e, ev.Losses):
        bad = {i: kind for i, kind in e.nonfinite}
        return [f"epoch {e.epoch} step {e.first_step + i} loss {bad.get(i, 'nan') if v is None else fmt_loss(v)}"
                for i, v in enumerate(e.values)]
    if isinstance(e, ev.Scalars):
        bad = {i: kind for i, kind in e.nonfinite}
        return [f"step {s} {e.name} {bad.get(i, 'nan') if v is None else fmt_loss(v)}"
                for i, (s, v) in enumerate(zip(e.step_list(), e.values))]
    d = e.to_json()
    kind = d.pop("type")
    d.pop("config", None)
    return [f"{kind}: " + " ".join(f"{k}={v}" for k, v in d.items())]


def cmd_runs_tail(ws: Workspace, args) -> int:
    """The whole history, however long, then the `ended` record when the run has ended (one
    made from the run's observed state when a dead worker wrote none). --follow ends when the
    run ends, whatever the state of its files."""
    from torchdeck.runs import command as command_run

    run = RunStore(ws).get(args.run)
    _sync_imported(run)
    if not args.json and command_run.is_command_run(run):
        return _tail_command_log(run, args.follow)
    source = None
    if args.follow and run.imported() is not None:
        from torchdeck.sources import mirror

        # Another tool's logs: followed at their source (as the TUI does) until interrupted, each
        # new point printed within a second; read-only, so nothing ends it but Ctrl-C.
        source = mirror.Follower(run)
        try:
            source.start()
        except TorchdeckError:
            source = None  # followed by another process (a TUI): what it imports is tailed all the same
    try:
        return _tail_events(run, args)
    finally:
        if source is not None:
            source.stop()


def _tail_events(run, args) -> int:
    follower = run_view.RunFollower(run, max_bytes=1 << 20)
    out = sys.stdout
    while True:
        batch = follower.poll()
        if args.json:
            out.write("".join(json.dumps(e.to_json(), separators=(",", ":")) + "\n" for e in batch))
        else:
            out.write("".join(line + "\n" for e in batch for line in event_lines(e)))
        out.flush()
        if not follower.caught_up:
            continue  # more history to print: no sleeping, no deciding yet
        if follower.done or not args.follow:
            break
        time.sleep(0.2)
    view = follower.view
    if view.final and view.ended is None:
        end = ev.Ended(view.state, view.step, view.last_loss, view.message)
        if args.json:
            out.write(json.dumps({**end.to_json(), "observed": True}, separators=(",", ":")) + "\n")
        else:
            out.write(event_lines(end)[0] + " (observed: the worker wrote no end record)\n")
        out.flush()
    return EXIT_OK


def _tail_command_log(run, follow: bool) -> int:
    """A command run's tail: its log (the command's output and the supervisor's lines), as it
    comes with --follow, until the run ends."""
    log = _LogFollower(run.log_path)
    while True:
        final = run.observed_state() in FINAL_STATES
        got = log.copy_to(sys.stdout)
        if got:
            continue
        if final or not follow:
            return EXIT_OK
        time.sleep(0.1)


def cmd_runs_export(ws: Workspace, args) -> int:
    """CSV streamed to stdout or --out; JSON likewise. With --out and --json, stdout holds what
    was written ({"run", "out", "points", "corrupt_lines", ...})."""
    from torchdeck.runs import export

    if getattr(args, "csv", False) and args.json:  # `torchdeck --json runs export R --csv`
        raise InvalidRequest("give one of --csv or --json, not both", code="usage", field="format")
    run = RunStore(ws).get(args.run)
    _sync_imported(run)

    def write(out) -> export.ExportStats:
        if args.json:
            return export.write_json(run.events_path, out, run.id)
        return export.write_csv(run.events_path, out)

    if args.out:
        stats = export.write_atomic(args.out, write)
    else:
        stats = write(sys.stdout)
        sys.stdout.flush()
    if stats.corrupt_lines:
        err(f"torchdeck: warning: {stats.corrupt_lines} line(s) of {run.events_path} are not records and were skipped")
    if args.out:
        total = sum(stats.points.values())
        if args.json:
            emit_json({"run": run.id, "out": str(args.out), **stats.to_json()})
        err(f"run {run.id}: {fmt_count(total)} point(s) of {len(stats.points)} metric(s) written to {args.out}")
    return EXIT_OK


def cmd_runs_stop(ws: Workspace, args) -> int:
    """Exit 0 when the run ends stopped (or had already ended), 1 when it ends otherwise (it
    crashed or diverged meanwhile) or could not be stopped."""
    from torchdeck.sources import mirror

    run = RunStore(ws).get(args.run)
    mirror.refuse_if_imported(run, "stop")
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


def cmd_runs_control(ws: Workspace, args) -> int:
    """pause / continue: a request the worker reads at its next chunk (within about a second)."""
    from torchdeck.runs import command as command_run
    from torchdeck.sources import mirror

    run = RunStore(ws).get(args.run)
    mirror.refuse_if_imported(run, args.action)
    if args.action == "pause" and command_run.is_command_run(run):
        raise InvalidRequest(f"run {run.id}: {command_run.PAUSE_REFUSED}", field="run")
    live = run.liveness()
    if live.state not in ("running", "paused", "saving"):
        raise InvalidRequest(f"run {run.id} is {live.state}: only a running run can be "
                             f"{'paused' if args.action == 'pause' else 'continued'}"
                             + (" (resume an ended run with `torchdeck runs resume`)" if live.state in FINAL_STATES else ""),
                             field="run")
    run.request(args.action)
    if args.json:
        emit_json({"id": run.id, "requested": args.action})
    else:
        err(f"run {run.id}: {args.action} requested")
    return EXIT_OK


def cmd_runs_resume(ws: Workspace, args) -> int:
    from torchdeck.runs import resume

    p = _resume_plan(ws, args)
    run = resume.start(p, RunStore(ws))
    if args.json:
        emit_json({"id": run.id, "state": run.observed_state(), "step": p.step, "checkpoint": p.checkpoint.name
                   if p.checkpoint else None, "exact": p.exact, "changes": p.changes})
    else:
        err(p.describe())
        print(run.id)
    return EXIT_OK


def cmd_runs_rm(ws: Workspace, args) -> int:
    from torchdeck.sources import mirror

    store = RunStore(ws)
    imported = mirror.imported_from(store.get(args.run))
    run = store.remove(args.run)
    if args.json:
        emit_json({"id": run.id, "removed": True})
    if imported is not None:  # only torchdeck's copy: the source's files are never written
        origin = imported.get("origin")
        err(f"run {run.id} removed (torchdeck's read-only copy; {origin} is untouched, and it comes back when a "
            f"remembered directory holding it is scanned: `torchdeck open --forget DIR` stops that)")
    else:
        err(f"run {run.id} removed")
    return EXIT_OK


COMMANDS = {
    ("train", None): cmd_train,
    ("run", None): cmd_run,
    ("runs", "list"): cmd_runs_list,
    ("runs", "show"): cmd_runs_show,
    ("runs", "tail"): cmd_runs_tail,
    ("runs", "export"): cmd_runs_export,
    ("runs", "stop"): cmd_runs_stop,
    ("runs", "rm"): cmd_runs_rm,
    ("runs", "pause"): cmd_runs_control,
    ("runs", "continue"): cmd_runs_control,
    ("runs", "resume"): cmd_runs_resume,
}
