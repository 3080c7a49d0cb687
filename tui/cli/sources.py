"""`torchdeck open`: the logs people already have (TensorBoard, Hugging Face, Lightning, MLflow) as
read-only runs of the workspace."""

from __future__ import annotations

import sys
from pathlib import Path

from torchdeck.errors import InvalidRequest, NotFound
from torchdeck.fmt import fmt_count
from torchdeck.runs.store import RunStore
from torchdeck.sources import KINDS, mirror
from torchdeck.workspace import Workspace

from .output import EXIT_OK, emit_json, err, table, unfiltered


def add_parsers(sub, common) -> None:
    p = sub.add_parser(
        "open", help="add a directory of TensorBoard, Hugging Face, Lightning or MLflow logs as read-only runs",
        parents=[common],
        description="Scan PATH (and its subfolders) for TensorBoard event files, Hugging Face trainer_state.json "
        "(checkpoint-N/ copies included), Lightning CSVLogger metrics.csv and MLflow file stores; each run found "
        "becomes a read-only run of the workspace (listed, shown, charted, compared and exported like torchdeck's "
        "own; its files are never written), and PATH is remembered: the TUI scans it again at start. Without PATH, "
        "every remembered directory is scanned again.")
    p.add_argument("path", metavar="PATH", nargs="?", help="a directory (or one log file: its folder)")
    p.add_argument("--no-history", action="store_true",
                   help="list the runs only; each history is read when the run is first shown")
    p.add_argument("--list", action="store_true", dest="list_dirs", help="print the remembered directories")
    p.add_argument("--forget", action="store_true",
                   help="stop scanning PATH (its runs stay until removed with `torchdeck runs rm`)")


def cmd_open(ws: Workspace, args) -> int:
    if args.list_dirs:
        dirs = ws.source_dirs()
        if args.json:
            emit_json({"directories": [str(d) for d in dirs]})
        elif not dirs:
            err(f"no directories of logs are remembered in {ws.sources_file}")
        else:
            print("\n".join(str(d) for d in dirs))
        return EXIT_OK
    if args.forget:
        if not args.path:
            raise InvalidRequest("--forget needs the PATH to forget", code="usage", field="path")
        path = Path(args.path).expanduser().absolute()
        ws.forget_source_dir(Path(_resolved(path)))
        if args.json:
            emit_json({"forgotten": str(_resolved(path))})
        else:
            err(f"{_resolved(path)} is no longer scanned")
        return EXIT_OK
    store = RunStore(ws)
    roots = [Path(args.path).expanduser()] if args.path else ws.source_dirs()
    if not roots:
        raise InvalidRequest("give a PATH to open (no directories are remembered yet)", code="usage", field="path")
    tty = sys.stderr.isatty() and not args.json

    def progress(dirs: int, found: int) -> None:
        if tty:
            unfiltered(sys.stderr).write(f"\rscanned {fmt_count(dirs)} folder(s), found {found} run(s)\x1b[K")
            sys.stderr.flush()

    runs, problems = [], []
    for root in roots:
        try:
            scan, out = mirror.open_path(store, root, progress=progress, sync_all=not args.no_history)
        except NotFound:
            if args.path:
                raise
            problems.append(f"{root} is gone (still remembered; `torchdeck open --forget {root}` drops it)")
            continue
        if tty:
            unfiltered(sys.stderr).write("\r\x1b[K")
        problems += scan.problems
        if not scan.found:
            if args.path:
                raise NotFound(f"no logs under {scan.root}: no TensorBoard event files, trainer_state.json, "
                               f"metrics.csv or MLflow runs (looked at {fmt_count(scan.dirs)} folder(s)); "
                               "nothing remembered", field="path")
            problems.append(f"no logs under {scan.root} any more")
            continue
        if args.path:
            ws.add_source_dir(scan.root)
        for run, res in out:
            summ = run.summary()
            cfg = mirror.imported_from(run) or {}
            entry = {"id": run.id, "name": summ.name if summ else run.id, "source": cfg.get("source"),
                     "origin": cfg.get("origin"),
                     "metrics": res.metrics if res is not None else None}
            if res is not None and res.problems:
                entry["problems"] = res.problems
                problems += [f"{entry['name']}: {p}" for p in res.problems]
            runs.append(entry)
    if args.json:
        emit_json({"runs": runs, "problems": problems})
    else:
        for p in problems:
            err(f"torchdeck: warning: {p}")
        print(table([[r["id"], r["name"], r["source"],
                      "-" if r["metrics"] is None else ", ".join(f"{k} {fmt_count(v)}" for k, v in r["metrics"].items())
                      or "(no scalars yet)"] for r in runs], ["ID", "NAME", "SOURCE", "POINTS"]))
        kinds = sorted({KINDS[r["source"]] for r in runs if r["source"] in KINDS})
        err(f"{len(runs)} read-only run(s) from {', '.join(kinds)}" if runs else "no runs")
    return EXIT_OK


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path


COMMANDS = {("open", None): cmd_open}
