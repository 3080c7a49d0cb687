"""Logs people already have (issue 12), in one run:

1. A TensorBoard event file of N scalar points (default 1,000,000: one tag, one point a step, as
   torch's SummaryWriter writes them): time to the full chart in torchdeck (scan, import into the
   mirror, RunView of the whole history, the chart's columns at 200 wide) against tensorboard's
   own EventAccumulator with every scalar kept (size_guidance {scalars: 0}) on the same file, in
   fresh processes, interleaved. Also tensorboard's EventFileLoader alone (the record reader
   whose CRC32C is a per-byte Python loop without TensorFlow) on the first 100,000 records.
   The file is written with tensorboard's own Event class and TFRecord framing (CRC32C from
   google-crc32c: torch's SummaryWriter takes minutes for a million points with tensorboard's
   pure-Python CRC); the EventAccumulator reading every point back is the check that it is a
   valid event file.
2. A folder of 250 runs (TensorBoard's sluggish point), 2,000 points each: the run list within
   1 s (scan + register + RunStore.summaries, first time and at the next start), each history
   read only when shown (one run's import timed).

    python benchmarks/bench_sources.py [--points 1000000] [--runs 250] [--repeats 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

TORCHDECK = r"""
import sys, time, json
from pathlib import Path
t0 = time.perf_counter()
from torchdeck.workspace import Workspace
from torchdeck.runs.store import RunStore
from torchdeck.sources import mirror
from torchdeck.runs import view
store = RunStore(Workspace.open(sys.argv[2]))
scan, out = mirror.open_path(store, sys.argv[1])
t_import = time.perf_counter() - t0
v = view.load(out[0][0], checkpoints=False)
s = v.metrics["loss"]
lo, hi = s.x_range()
cols = s.columns(lo, hi, 200)
t = time.perf_counter() - t0
print(json.dumps({"seconds": t, "import_s": t_import, "points": s.count}))
"""

ACCUMULATOR = r"""
import sys, time, json
t0 = time.perf_counter()
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
n = sum(len(acc.Scalars(tag)) for tag in acc.Tags()["scalars"])
print(json.dumps({"seconds": time.perf_counter() - t0, "points": n}))
"""

LOADER = r"""
import sys, time, json, itertools
t0 = time.perf_counter()
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
n = sum(1 for _ in itertools.islice(EventFileLoader(sys.argv[1]).Load(), int(sys.argv[2])))
print(json.dumps({"seconds": time.perf_counter() - t0, "records": n}))
"""


def write_event_file(path: Path, points: int, tag: str = "train/loss") -> None:
    import google_crc32c
    from tensorboard.compat.proto import event_pb2, summary_pb2

    def masked(b: bytes) -> int:
        c = google_crc32c.value(b)
        return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    def record(payload: bytes) -> bytes:
        head = struct.pack("<Q", len(payload))
        return head + struct.pack("<I", masked(head)) + payload + struct.pack("<I", masked(payload))

    parts = [record(event_pb2.Event(wall_time=1.7e9, file_version="brain.Event:2").SerializeToString())]
    ev = event_pb2.Event()
    for i in range(points):
        ev.Clear()
        ev.wall_time = 1.7e9 + i * 0.01
        ev.step = i
        ev.summary.CopyFrom(summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag,
                                                                                   simple_value=2.0 / (1 + i * 1e-4))]))
        parts.append(record(ev.SerializeToString()))
    path.write_bytes(b"".join(parts))


def run(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd="/")
    if out.returncode:
        raise SystemExit(f"benchmark child failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_big_file(tmp: Path, points: int, repeats: int) -> dict:
    folder = tmp / "big" / "run"
    folder.mkdir(parents=True)
    f = folder / "events.out.tfevents.1700000000.bench.1.0"
    t = time.perf_counter()
    write_event_file(f, points)
    made = time.perf_counter() - t
    ours, theirs = [], []
    for r in range(repeats):
        ws = tmp / f"ws{r}"
        ours.append(run(TORCHDECK, str(tmp / "big"), str(ws)))
        theirs.append(run(ACCUMULATOR, str(folder)))
        shutil.rmtree(ws)
    assert all(o["points"] == points for o in ours), ours
    assert all(o["points"] == points for o in theirs), theirs
    loader_n = min(points, 100_000)
    loader = run(LOADER, str(f), str(loader_n))
    return {
        "points": points, "file_mb": round(f.stat().st_size / 2**20, 1), "write_s": round(made, 2),
        "torchdeck_s": round(statistics.median(o["seconds"] for o in ours), 2),
        "torchdeck_import_s": round(statistics.median(o["import_s"] for o in ours), 2),
        "event_accumulator_s": round(statistics.median(o["seconds"] for o in theirs), 2),
        "event_file_loader_s_per_100k": round(loader["seconds"] * 100_000 / loader_n, 2),
    }


def bench_many_runs(tmp: Path, runs: int) -> dict:
    from torchdeck.runs.store import RunStore
    from torchdeck.sources import mirror
    from torchdeck.workspace import Workspace

    one = tmp / "one.tfevents"
    write_event_file(one, 2000)
    root = tmp / "many"
    for i in range(runs):
        d = root / f"run{i:03d}"
        d.mkdir(parents=True)
        shutil.copy(one, d / "events.out.tfevents.1700000000.bench.1.0")
    store = RunStore(Workspace.open(tmp / "ws-many"))
    t = time.perf_counter()
    _, out = mirror.open_path(store, root, sync_all=False)
    listed = store.summaries()
    first = time.perf_counter() - t
    assert len(out) == runs and len(listed) == runs
    t = time.perf_counter()
    mirror.open_path(store, root, sync_all=False)  # the next start: every mirror already there
    listed = store.summaries()
    again = time.perf_counter() - t
    t = time.perf_counter()
    res = mirror.sync(out[0][0])
    shown = time.perf_counter() - t
    assert res.metrics["loss"] == 2000
    return {"runs": runs, "list_first_s": round(first, 3), "list_next_start_s": round(again, 3),
            "one_history_s": round(shown, 3), "histories_read_at_listing": 0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=250)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sources-") as d:
        tmp = Path(d)
        big = bench_big_file(tmp, args.points, args.repeats)
        many = bench_many_runs(tmp, args.runs)
    if args.json:
        print(json.dumps({"event_file": big, "many_runs": many}, indent=1))
        return
    print(f"TensorBoard event file, {big['points']:,} scalar points ({big['file_mb']} MiB; written in {big['write_s']} s)")
    print(f"  torchdeck, to the full chart      {big['torchdeck_s']:>7} s  (scan + import {big['torchdeck_import_s']} s)")
    print(f"  EventAccumulator, size_guidance 0 {big['event_accumulator_s']:>7} s")
    print(f"  EventFileLoader alone             {big['event_file_loader_s_per_100k']:>7} s per 100,000 records")
    print(f"{many['runs']} runs of 2,000 points")
    print(f"  run list, first time             {many['list_first_s']:>7} s")
    print(f"  run list, next start             {many['list_next_start_s']:>7} s")
    print(f"  one run's history when shown     {many['one_history_s']:>7} s")


if __name__ == "__main__":
    main()
