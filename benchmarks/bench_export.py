"""`torchdeck runs export` of a long run: a finished run of 1,000,000 steps written as the worker
writes it (losses in chunks of 250, and per chunk lr, grad_norm, samples_per_s and rss_mb),
with one resume half-way (so the first pass finds a resume point and the second applies it).

    python benchmarks/bench_export.py [--steps 1000000] [--json]

Prints the events file's size, then for `--csv --out FILE` and `--json --out FILE` the wall
time and the peak RSS of the exporting process (its VmHWM), and checks the CSV's
row count. The CSV is streamed, so its peak RSS should not grow with the run; the JSON export
gathers points in compact arrays (16 bytes a point) before writing.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from torchdeck.runs import events as ev
from torchdeck.runs.config import RunConfig
from torchdeck.runs.store import RunStore
from torchdeck.runs.writer import RunWriter
from torchdeck.workspace import Workspace

CHUNK = 250


def make_run(ws: Workspace, steps: int):
    run = RunStore(ws).create(RunConfig(model="demo", epochs=1, name="long"))
    half = (steps // 2) // CHUNK * CHUNK
    for writer_no, (begin, end) in enumerate(((0, half + 10 * CHUNK), (half, steps))):
        w, lock = RunWriter.acquire(run, resume_step=begin if writer_no else None)
        w.emit(ev.Started(run.id, {"model": "demo", "epochs": 1}, steps, steps, 0, "cpu", time.time()))
        for first in range(begin + 1, end + 1, CHUNK):
            last = min(end, first + CHUNK - 1)
            w.emit(ev.Losses.from_floats(first, 1, [1.0 / s for s in range(first, last + 1)], elapsed=last / 4000))
            w.emit(ev.Scalars.from_points("lr", [last], [0.001]))
            w.emit(ev.Scalars.from_points("grad_norm", [last], [0.5 + 1.0 / last]))
            w.emit(ev.Scalars.from_points("samples_per_s", [last], [64000.0]))
            w.emit(ev.Scalars.from_points("rss_mb", [last], [812.5]))
        if writer_no:
            w.ended("finished", steps, 1.0 / steps)
        lock.close()
    return run, steps + 4 * (steps // CHUNK)


CHILD = """
import sys
from torchdeck.tui.cli import main
code = main(sys.argv[1:])
# VmHWM: this process image's peak (getrusage's maxrss would carry the forking parent's over exec)
hwm = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
sys.stderr.write(f"VmHWM {hwm}\\n")
sys.exit(code)
"""


def timed_export(ws: Workspace, run_id: str, fmt: str, out: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of `torchdeck runs export RUN --FMT --out OUT` in a fresh process."""
    cmd = [sys.executable, "-c", CHILD, "runs", "export", run_id, f"--{fmt}", "--out", str(out),
           "--workspace", str(ws.root)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"export --{fmt} failed: {proc.stderr}")
    hwm_kb = int(proc.stderr.rsplit("VmHWM ", 1)[1].split()[0])
    return wall, hwm_kb / 1024


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1_000_000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.open(Path(tmp) / "ws")
        print(f"writing a {args.steps:,}-step run ...", file=sys.stderr)
        run, points = make_run(ws, args.steps)
        size = run.events_path.stat().st_size
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        results = {"steps": args.steps, "points": points, "events_mb": round(size / 2**20, 1),
                   "bench_process_rss_mb": round(base, 1)}
        for fmt in ("csv", "json"):
            out = Path(tmp) / f"out.{fmt}"
            wall, rss = timed_export(ws, run.id, fmt, out)
            results[fmt] = {"seconds": round(wall, 2), "peak_rss_mb": round(rss, 1),
                            "out_mb": round(out.stat().st_size / 2**20, 1),
                            "points_per_s": round(points / wall)}
            if fmt == "csv":
                with open(out, "rb") as f:
                    rows = sum(1 for _ in f) - 1
                if rows != points:
                    raise SystemExit(f"CSV has {rows} rows, expected {points}")
            else:
                doc = json.loads(out.read_text())
                if len(doc["metrics"]["loss"]["steps"]) != args.steps:
                    raise SystemExit("JSON lacks losses")
            out.unlink()
    if args.json:
        print(json.dumps(results))
    else:
        print(f"{args.steps:,} steps, {points:,} points, events.jsonl {results['events_mb']} MiB")
        for fmt in ("csv", "json"):
            r = results[fmt]
            print(f"  --{fmt:4} {r['seconds']:6.2f} s  {r['points_per_s']:>10,} points/s  peak RSS "
                  f"{r['peak_rss_mb']:7.1f} MiB  output {r['out_mb']} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
