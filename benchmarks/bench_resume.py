"""Resume: the time from `torchdeck train --resume` to the first new step, against a fresh start
of the same run (`torchdeck train` with the same settings), interleaved in one run.

The model (defined here, `bench_resume:make_model`) is an MLP 20 -> 4096 -> 4096 -> 5, 16.9M
parameters (64 MiB of fp32), trained with Adam, so a checkpoint holds about 193 MiB (weights and
two Adam moments). A base run trains 20 steps and checkpoints. Then, alternately:

  resume  `train --resume base --max-steps S+2 --detach`: hash check of the checkpoint, its
          training state read, a worker started that restores weights, optimizer and RNGs
  fresh   `train --model ... --max-steps 2 --detach` (a new run, the same settings)

Each is timed from starting the command until the run's events file holds a loss record past
the start step (both runs flush their first losses when their two steps end, so the flush
bias is the same); the run is then waited for to finish before the next repeat.

    .venv/bin/python benchmarks/bench_resume.py [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FLAGS = ["--model", "bench_resume:make_model", "--data", "synthetic:classification", "--optimizer", "adam",
         "--threads", "1", "--batch-size", "16"]


def make_model():
    from torch import nn

    return nn.Sequential(nn.Linear(20, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 5))


def torchdeck(ws: Path, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("torchdeck")
    return subprocess.run([str(exe), "--workspace", str(ws), *args], cwd=HERE, capture_output=True, text=True,
                          check=True, timeout=600)


def first_new_loss(events: Path, after: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            for line in events.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("type") == "losses" and rec["first_step"] + len(rec["values"]) - 1 > after:
                    return
        except FileNotFoundError:
            pass
        time.sleep(0.005)
    raise TimeoutError(f"no loss past step {after} in {events}")


def wait_ended(ws: Path, run_id: str) -> dict:
    while True:
        doc = json.loads(torchdeck(ws, "runs", "show", run_id, "--json").stdout)
        if doc["state"] in ("finished", "stopped", "crashed", "failed", "diverged"):
            return doc
        time.sleep(0.2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    ws = tmp / "ws"
    times: dict[str, list[float]] = {"resume": [], "fresh": []}
    try:
        print("training the base run (20 steps) ...", file=sys.stderr)
        base = json.loads(torchdeck(ws, "train", *FLAGS, "--max-steps", "20", "--name", "base", "--json").stdout)
        assert base["state"] == "finished", base
        step = base["step"]
        ckpt_bytes = sum(f.stat().st_size for f in (ws / "runs" / base["id"] / "checkpoints").rglob("*") if f.is_file())
        for i in range(args.repeats):
            for kind in ("resume", "fresh"):
                t0 = time.monotonic()
                if kind == "resume":
                    torchdeck(ws, "train", "--resume", "base", "--max-steps", str(step + 2), "--detach")
                    run_id, after = base["id"], step
                else:
                    run_id = torchdeck(ws, "train", *FLAGS, "--max-steps", "2", "--detach").stdout.strip()
                    after = 0
                first_new_loss(ws / "runs" / run_id / "events.jsonl", after, t0 + 300)
                times[kind].append(time.monotonic() - t0)
                doc = wait_ended(ws, run_id)
                assert doc["state"] == "finished", doc
                if kind == "resume":
                    step = doc["step"]
                print(f"  {kind} #{i + 1}: {times[kind][-1]:.2f} s", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"checkpoint_bytes": ckpt_bytes, "repeats": args.repeats,
              "median_seconds": med, "min_seconds": {k: min(v) for k, v in times.items()},
              "max_seconds": {k: max(v) for k, v in times.items()}, "ratio": med["resume"] / med["fresh"]}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"checkpoint {ckpt_bytes / (1 << 20):,.0f} MiB (weights + Adam state); {args.repeats} repeats, interleaved")
    print(f"{'':<8}{'median':>9}{'min':>9}{'max':>9}")
    for k in times:
        print(f"{k:<8}{med[k]:>8.2f}s{min(times[k]):>8.2f}s{max(times[k]):>8.2f}s")
    print(f"resume / fresh start: {result['ratio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
