"""The `torchdeck` command: the TUI with no subcommand, and headless commands over the same engine.

Exit status: 0 success; 1 the operation was tried and failed; 2 the request is invalid; 130 interrupted.
With --json, stdout holds one JSON document (JSON Lines for `runs tail`) and nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

from torchdeck import __version__
from torchdeck.errors import InvalidRequest, OperationFailed, TorchdeckError
from torchdeck.runs.store import FINAL_STATES, OPTIMIZERS, RunConfig, RunStore, parse_number
from torchdeck.workspace import Workspace

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(InvalidRequest):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage block
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _common() -> argparse.ArgumentParser:
    # SUPPRESS defaults, so a flag given before the subcommand is not reset by the subparser's default.
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--workspace", metavar="DIR", default=argparse.SUPPRESS, help="workspace directory")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document on stdout")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return p


def build_parser() -> Parser:
    common = _common()
    root = Parser(prog="torchdeck", parents=[common],
                  description="A keyboard-driven terminal app for PyTorch models. With no command, opens the TUI.")
    root.add_argument("--version", action="version", version=f"torchdeck {__version__}")
    sub = root.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    models = sub.add_parser("models", help="registered and built-in models", parents=[common])
    msub = models.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=Parser)
    msub.add_parser("list", help="list models", parents=[common])
    add = msub.add_parser("add", help="register a model: package.module:callable with keyword arguments", parents=[common])
    add.add_argument("name", metavar="NAME")
    add.add_argument("spec", metavar="SPEC", help="package.module:callable, importable from the current directory")
    add.add_argument("--args", metavar="JSON", help='keyword arguments as a JSON object, e.g. \'{"hidden": 64}\'')
    add.add_argument("--input-shape", metavar="SHAPE", help="an example input's shape, batch first, e.g. 1,10")
    add.add_argument("--description", default="", help="a line about the model")
    rm = msub.add_parser("remove", help="unregister a model (its runs and checkpoints stay)", parents=[common])
    rm.add_argument("name", metavar="NAME")
    show = msub.add_parser("show", help="a model's summary: layers, shapes, sizes, training memory", parents=[common])
    show.add_argument("name", metavar="NAME", help="a registered name, builtin:NAME or package.module:callable")
    show.add_argument("--batch-size", metavar="N", default="32", help="for the training memory estimate (default 32)")
    show.add_argument("--optimizer", metavar="NAME", default="adam", help="for the training memory estimate (default adam)")

    data = sub.add_parser("data", help="datasets", parents=[common])
    dsub = data.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=Parser)
    dshow = dsub.add_parser("show", help="size, sample shapes and dtypes, target kind", parents=[common])
    dshow.add_argument("spec", metavar="SPEC", help="synthetic:NAME, file:PATH or package.module:callable")

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
    tail = rsub.add_parser("tail", help="print a run's events", parents=[common])
    tail.add_argument("run", metavar="RUN")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing until the run ends")

    ckpt = sub.add_parser("ckpt", help="checkpoints", parents=[common])
    csub = ckpt.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=Parser)
    ins = csub.add_parser("inspect", help="what a checkpoint holds", parents=[common])
    ins.add_argument("path", metavar="PATH", help="a checkpoint directory or file, or a run (its latest checkpoint)")
    ins.add_argument("--trust", action="store_true", help="allow full unpickling (runs code from the file)")

    exp = sub.add_parser("export", help="export a checkpoint", parents=[common])
    esub = exp.add_subparsers(dest="action", metavar="FORMAT", required=True, parser_class=Parser)
    onnx = esub.add_parser("onnx", help="export to ONNX, checked against PyTorch with ONNX Runtime", parents=[common])
    onnx.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint directory, or a run (its latest)")
    onnx.add_argument("--out", metavar="FILE", help="output .onnx file (default: in the workspace's exports/)")
    onnx.add_argument("--opset", metavar="N", default="18")
    onnx.add_argument("--trust", action="store_true", help="allow building a model spec that is not built-in or registered")
    return root


# -- output helpers ----------------------------------------------------------------------------
def err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=1, default=str) + "\n")
    sys.stdout.flush()


def _fmt_loss(v: float | None) -> str:
    return "-" if v is None else f"{v:.6g}"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


# -- commands ----------------------------------------------------------------------------------
def cmd_models_list(ws: Workspace, args) -> int:
    from torchdeck.models.catalogue import catalogue

    entries = catalogue(ws, count_params=True)
    if args.json:
        emit_json({"models": [e.to_json() for e in entries]})
    else:
        print(_table([[e.name, e.spec, f"{e.num_params:,}" if e.num_params is not None else "?", e.description]
                      for e in entries], ["NAME", "SPEC", "PARAMS", "DESCRIPTION"]))
    return EXIT_OK


def cmd_models_add(ws: Workspace, args) -> int:
    from torchdeck.models import catalogue as models

    entry, result = models.register(
        ws, args.name, args.spec, kwargs=models.parse_kwargs(args.args),
        input_shape=models.parse_input_shape(args.input_shape), description=args.description,
        import_root=os.getcwd())
    if args.json:
        emit_json({"name": entry.name, "spec": entry.spec, "kwargs": entry.kwargs, "input_shape": entry.input_shape,
                   "num_params": result.num_params, "output_shape": result.output_shape})
    else:
        err(f"registered {entry.name}: {entry.spec}, {result.describe()}")
    return EXIT_OK


def cmd_models_remove(ws: Workspace, args) -> int:
    removed = ws.remove_model(args.name)
    if args.json:
        emit_json({"removed": removed.name, "spec": removed.spec})
    else:
        err(f"removed {removed.name} ({removed.spec}); its runs and checkpoints stay")
    return EXIT_OK


def cmd_models_show(ws: Workspace, args) -> int:
    from torchdeck.models import specs
    from torchdeck.models import summary

    spec = specs.resolve(args.name, ws)
    batch = parse_number(args.batch_size, "batch size", int)
    if batch < 1:
        raise InvalidRequest(f"batch size must be at least 1, not {batch}")
    optimizer = args.optimizer.lower()
    if optimizer not in OPTIMIZERS:
        raise InvalidRequest(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {args.optimizer!r}")
    s = summary.summarize(spec, batch_size=batch, optimizer=optimizer, import_root=os.getcwd())
    if args.json:
        emit_json({"name": args.name, **s.to_json()})
        return EXIT_OK
    from .summary_view import render_text

    print(render_text(s))
    return EXIT_OK


def cmd_data_show(ws: Workspace, args) -> int:
    from torchdeck.data import sources as data

    info = data.describe(args.spec, import_root=os.getcwd())
    if args.json:
        emit_json(info.to_json())
    else:
        for line in info.lines():
            print(line)
    return EXIT_OK


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
        err(f"run {run.id} {state} at step {st.step}, last loss {_fmt_loss(st.last_loss)}"
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
            line = f"[{'#' * filled}{'.' * (width - filled)}] {step}/{total} loss {_fmt_loss(loss)} {rate:,.0f} steps/s"
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
        print(_table([[s.id, s.name if s.name != s.id else "", s.model, s.state, f"{s.step}/{s.total_steps}",
                       f"{s.epoch}/{s.epochs}", _fmt_loss(s.last_loss)] for s in summaries],
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
                    f"epoch {e.epoch} step {e.first_step + i} loss {bad.get(i, 'nan') if v is None else _fmt_loss(v)}\n"
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
    run = RunStore(ws).get(args.run)
    before = run.observed_state()
    if before in FINAL_STATES:
        err(f"run {run.id} is already {before}")
        if args.json:  # --json promises one document on stdout, this case included
            emit_json({"id": run.id, "state": before})
        return EXIT_OK
    state = run.stop()
    if args.json:
        emit_json({"id": run.id, "state": state})
    else:
        err(f"run {run.id} {state}")
    return EXIT_OK if state in FINAL_STATES else EXIT_FAILED


def resolve_checkpoint(ws: Workspace, ref: str) -> Path:
    """A checkpoint path, or a run (id, prefix or name) meaning its latest complete checkpoint."""
    from torchdeck.checkpoints import store as checkpoints

    p = Path(ref).expanduser()
    if p.exists():
        return p
    try:
        run = RunStore(ws).get(ref)
    except InvalidRequest:
        raise InvalidRequest(f"no such checkpoint: {ref} (not a file, a directory, or a run)") from None
    latest = checkpoints.latest_complete(run.checkpoints_dir)
    if latest is None:
        raise OperationFailed(f"run {run.id} has no complete checkpoint")
    return latest.path


def cmd_ckpt_inspect(ws: Workspace, args) -> int:
    from torchdeck.checkpoints import store as checkpoints
    from torchdeck.models import specs

    info = checkpoints.inspect(resolve_checkpoint(ws, args.path), trust=args.trust)
    doc = info.to_json()
    if info.model_spec:
        doc["trusted_spec"] = specs.is_trusted(specs.ModelSpec.from_json(info.model_spec), ws)
    if args.json:
        emit_json(doc)
        return EXIT_OK
    print(f"path        {info.path}")
    print(f"format      {info.format}")
    if info.step is not None:
        print(f"step        {info.step}  epoch {info.epoch}")
    if info.metrics:
        print("metrics     " + "  ".join(f"{k} {_fmt_loss(v)}" for k, v in info.metrics.items()))
    if info.model_spec:
        print(f"model       {info.model_spec.get('spec')}" + ("" if doc["trusted_spec"] else "  (not trusted here)"))
    print(f"parameters  {info.num_params:,}")
    print(f"size        {info.size:,} bytes")
    print(_table([[t.name, "x".join(map(str, t.shape)) or "scalar", t.dtype] for t in info.tensors],
                 ["TENSOR", "SHAPE", "DTYPE"]))
    return EXIT_OK


def cmd_export_onnx(ws: Workspace, args) -> int:
    from torchdeck.checkpoints import store as checkpoints
    from torchdeck.exports import onnx as exports

    opset = parse_number(args.opset, "opset", int)
    path = resolve_checkpoint(ws, args.checkpoint)
    info = checkpoints.inspect(path)
    out = Path(args.out) if args.out else exports.default_out(ws.exports_dir, info)
    if out.suffix != ".onnx":
        raise InvalidRequest(f"output file must end in .onnx: {out}")
    report = exports.export_onnx(path, out, workspace=ws, trust=args.trust, opset=opset)
    if args.json:
        emit_json(report.to_json())
    else:
        print(f"exported    {report.path} ({report.size:,} bytes, opset {report.opset}, {report.exporter})")
        print(f"checker     {'ok' if report.checker_ok else 'FAILED'}")
        for c in report.parity:
            print(f"batch {c.batch_size:<5} max abs diff {c.max_abs_diff:.3g}  max rel diff {c.max_rel_diff:.3g}  "
                  f"{'ok' if c.ok else 'FAIL'}")
        print(f"max abs diff {report.max_abs_diff:.3g} (atol {report.atol})")
        print(f"latency     onnxruntime {report.ort_latency_ms} ms, pytorch {report.torch_latency_ms} ms (batch 32)")
    return EXIT_OK


COMMANDS = {
    ("models", "list"): cmd_models_list,
    ("models", "add"): cmd_models_add,
    ("models", "remove"): cmd_models_remove,
    ("models", "show"): cmd_models_show,
    ("data", "show"): cmd_data_show,
    ("train", None): cmd_train,
    ("runs", "list"): cmd_runs_list,
    ("runs", "show"): cmd_runs_show,
    ("runs", "tail"): cmd_runs_tail,
    ("runs", "stop"): cmd_runs_stop,
    ("ckpt", "inspect"): cmd_ckpt_inspect,
    ("export", "onnx"): cmd_export_onnx,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        for flag in ("workspace", "json", "debug"):
            if not hasattr(args, flag):
                setattr(args, flag, None if flag == "workspace" else False)
        if args.command is None:
            from .launch import run_tui

            return run_tui(args.workspace)
        ws = Workspace.open(args.workspace)
        return COMMANDS[(args.command, getattr(args, "action", None))](ws, args)
    except KeyboardInterrupt:
        err("torchdeck: interrupted")
        return EXIT_INTERRUPTED
    except TorchdeckError as e:
        if debug:
            traceback.print_exc()
        err(f"torchdeck: error: {e}" if not isinstance(e, UsageError) else str(e))
        return e.exit_code
    except BrokenPipeError:
        return EXIT_OK
    except Exception as e:
        if debug:
            traceback.print_exc()
        err(f"torchdeck: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
