"""`torchdeck runs tail` of a long run: a finished run of 1,000,000 steps (losses in chunks of
600, as a fast worker writes them, plus a grad_norm point per chunk), printed whole.

    python benchmarks/bench_tail.py [--steps 1000000] [--json]

Prints the file's size, the wall time of `runs tail RUN > file` and of `runs tail RUN --json`,
and checks that the output is every step in order, then the `ended` record.
"""

from __future__ import annotations

import argparse
import json
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


def make_run(ws: Workspace, steps: int, chunk: int = 600):
    run = RunStore(ws).create(RunConfig(model="demo", epochs=1, name="long"))
    w, lock = RunWriter.acquire(run)
    w.emit(ev.Started(run.id, {"model": "demo", "epochs": 1}, steps, steps, 0, "cpu", time.time()))
    for first in range(1, steps + 1, chunk):
        last = min(steps, first + chunk - 1)
        w.emit(ev.Losses.from_floats(first, 1, [1.0 / s for s in range(first, last + 1)], elapsed=last / 4000))
        w.emit(ev.Scalars.from_points("grad_norm", [last], [0.5]))
    w.ended("finished", steps, 1.0 / steps)
    lock.close()
    return run


def timed_tail(ws: Workspace, run_id: str, out: Path, *extra: str) -> float:
    t = time.perf_counter()
    with open(out, "w") as f:
        subprocess.run([sys.executable, "-m", "torchdeck.tui.cli", "--workspace", str(ws.root), "runs", "tail",
                        run_id, *extra], stdout=f, check=True)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.open(Path(tmp) / "ws")
        run = make_run(ws, args.steps)
        size = run.events_path.stat().st_size
        text_out, json_out = Path(tmp) / "tail.txt", Path(tmp) / "tail.jsonl"
        text_s = timed_tail(ws, run.id, text_out)
        json_s = timed_tail(ws, run.id, json_out, "--json")
        lines = text_out.read_text().splitlines()
        loss_steps = [int(ln.split()[3]) for ln in lines if ln.startswith("epoch 1 step ")]
        ok = (loss_steps == list(range(1, args.steps + 1))
              and lines[-2] == f"step {args.steps} grad_norm 0.5"
              and lines[-1].startswith(f"ended: state=finished step={args.steps}")
              and json.loads(json_out.read_text().splitlines()[-1])["type"] == "ended")
        result = {"steps": args.steps, "events_bytes": size, "text_seconds": round(text_s, 2),
                  "json_seconds": round(json_s, 2), "text_lines": len(lines), "last_lines": lines[-2:],
                  "every_step_then_ended": ok}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{args.steps:,} steps, events.jsonl {size / 2**20:.1f} MiB")
        print(f"runs tail (text): {text_s:.2f} s, {len(lines):,} lines; runs tail --json: {json_s:.2f} s")
        print("last lines:", *lines[-2:], sep="\n  ")
        print("every step in order, then the ended record:", ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
