"""Training throughput: `torchdeck train` against a plain PyTorch loop doing the same work.

Both sides train nn.Linear(10, 20) on synthetic:regression with the same seed, dataset size,
batch size, epochs, SGD lr 0.01 and MSE loss, checkpoints off, each in a fresh process, repeats
interleaved: torchdeck, plain, torchdeck, plain, ... Both get the same torch thread count:
torchdeck's own default (torchdeck.training.loop.cpu_threads: all cores but one; 1 on a 2-core box),
or --threads N; it is passed to both explicitly, and the run's `started` record is checked.
Both trainers run in a session of their own (torchdeck's worker always does), so the kernel's
autogroup scheduling treats them alike when the machine is busy.

- torchdeck: the real command, `torchdeck train --model builtin:linear --no-checkpoints --json
  --threads N --dataset-size N --workspace <fresh temp dir>`, in a subprocess. Training steps/s
  come from the run's own runs/<id>/events.jsonl: total steps (the `started` record, checked
  against the count of values in the `losses` records) divided by the sum of the `epoch`
  records' `seconds` (the worker's per-epoch time: permutation, steps, loss chunks,
  validation). Process start, torch import, model and data set-up are outside it. The wall
  clock of the whole command is reported separately, split into start-up (launch to the
  `started` record's time), the epochs, and what follows them.
- plain: benchmarks/plain_loop.py in a subprocess, timed over the same per-epoch span, with the
  same wall-clock split.

Reported: median, min/max and interquartile range for each side, and the ratio torchdeck /
plain of the median steps/s (1.0 = no overhead). The two sides' last losses must be equal (same
arithmetic); a mismatch is flagged, because then they did not do the same work. CPU pressure
(Linux PSI) during each run is recorded: a shared machine's other work shows there, and a
warning is printed when it was high; --wait-quiet waits for a calmer moment before each run.

    .venv/bin/python benchmarks/bench_train_throughput.py [--repeats 5] [--epochs 7]
        [--dataset-size 49152] [--batch-size 16] [--threads N] [--wait-quiet SECONDS] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PLAIN = HERE / "plain_loop.py"
BUSY_PRESSURE = 0.15  # above this share of waiting-for-CPU time a run competed with other work


class BenchError(RuntimeError):
    pass


def cpu_pressure_us() -> int | None:
    """Linux PSI: total microseconds some runnable task waited for a CPU (None where unavailable)."""
    try:
        with open("/proc/pressure/cpu") as f:
            for line in f:
                if line.startswith("some "):
                    return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def cpu_pressure_avg10() -> float | None:
    """PSI 'some avg10': percent of the last 10 s in which some task waited for a CPU."""
    try:
        with open("/proc/pressure/cpu") as f:
            for line in f:
                if line.startswith("some "):
                    return float(line.split("avg10=", 1)[1].split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return None


def wait_quiet(limit: float, threshold: float = 5.0) -> float:
    """Wait up to `limit` seconds for other work on the machine to calm down; seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        p = cpu_pressure_avg10()
        if p is None or p < threshold:
            break
        time.sleep(1.0)
    return time.monotonic() - t0


def loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def default_threads() -> int:
    """torchdeck's own default (torchdeck.training.loop.cpu_threads: all cores but one)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from torchdeck.training.loop import (
        cpu_threads,  # cheap: engine defers its torch import
    )

    return cpu_threads()


def timed(cmd: list[str], *, new_session: bool = False, cwd: Path = REPO) -> tuple[subprocess.CompletedProcess, dict[str, Any]]:
    """Run cmd to its end; its wall time, and how busy the machine was meanwhile.

    new_session: the plain loop gets its own session like torchdeck's worker (RunStore.launch
    starts it with start_new_session). With the kernel's autogroup scheduling (the Linux
    default) a new session is a new scheduling group, which takes a bigger share of a busy
    machine than a process sharing its group: without this the sides would not be alike.
    """
    load, psi0 = loadavg(), cpu_pressure_us()
    launched = time.time()  # wall clock: the children's `started` times are on it too
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL, start_new_session=new_session)
    try:
        out, err = child.communicate()
    except KeyboardInterrupt:
        # Ctrl-C reached `torchdeck train` too (same process group): let it stop its worker,
        # which lives in a session of its own. The plain loop has its own session: end it here.
        if new_session:
            child.kill()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
        raise
    wall = time.perf_counter() - t0
    proc = subprocess.CompletedProcess(cmd, child.returncode, out, err)
    psi1 = cpu_pressure_us()
    busy = {"wall_seconds": wall, "launched": launched, "loadavg_before": load,
            "cpu_pressure": (psi1 - psi0) / 1e6 / wall if psi0 is not None and psi1 is not None else None}
    return proc, busy


def torchdeck_command() -> list[str]:
    """The installed `torchdeck` script of this interpreter's environment (the venv's)."""
    beside = Path(sys.executable).parent / "torchdeck"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("torchdeck")
    if found:
        return [found]
    raise BenchError("no `torchdeck` command beside this Python or on PATH: install the project (pip install -e .)")


# -- one run of each side ----------------------------------------------------------------------
def run_torchdeck(args) -> dict[str, Any]:
    ws = Path(tempfile.mkdtemp(prefix="torchdeck-bench-"))
    try:
        what = ["--model", "bench_data:model", "--data", "bench_data:images"] if args.case == "dataloader" else \
            ["--model", "builtin:linear", "--dataset-size", str(args.dataset_size)]
        cmd = [*torchdeck_command(), "train", *what, "--no-checkpoints", "--json",
               "--workspace", str(ws), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
               "--lr", "0.01", "--optimizer", "sgd", "--seed", str(args.seed), "--threads", str(args.threads)]
        # the DataLoader case imports bench_data from benchmarks/ (the run's import root)
        proc, busy = timed(cmd, cwd=HERE if args.case == "dataloader" else REPO)
        wall = busy["wall_seconds"]
        if proc.returncode != 0:
            raise BenchError(f"torchdeck train exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
        out = json.loads(proc.stdout)
        if out.get("state") != "finished":
            raise BenchError(f"torchdeck run ended {out.get('state')!r}")
        run_dir = ws / "runs" / out["id"]
        stats = read_events(run_dir / "events.jsonl")
        if stats["threads"] not in (None, args.threads):
            raise BenchError(f"run {out['id']} trained with {stats['threads']} threads, asked for {args.threads}")
        if stats["epochs"] != args.epochs:
            raise BenchError(f"run {out['id']}: {stats['epochs']} epoch records, expected {args.epochs}")
        return {
            "steps": stats["steps"],
            "train_seconds": stats["train_seconds"],
            "startup_seconds": stats["started_time"] - busy["launched"],
            "steps_per_s": stats["steps"] / stats["train_seconds"],
            "wall_seconds": wall,
            "wall_steps_per_s": stats["steps"] / wall,
            "last_loss": out.get("last_loss"),
            "loss_chunks": stats["chunks"],
            "threads": stats["threads"],
            "loadavg_before": busy["loadavg_before"],
            "cpu_pressure": busy["cpu_pressure"],
        }
    finally:
        shutil.rmtree(ws, ignore_errors=True)


def read_events(path: Path) -> dict[str, Any]:
    """Total steps, loss chunks and summed epoch seconds from one run's events.jsonl, through
    the RunView every reader uses."""
    from torchdeck.runs import events as ev
    from torchdeck.runs.view import RunView

    view = RunView()
    chunks = 0
    for batch in ev.EventTail(path).read_batches():
        view.feed(batch)
        chunks += sum(isinstance(e, ev.Losses) for e in batch)
    if view.started is None:
        raise BenchError(f"{path}: no `started` record")
    total = view.total_steps
    values = view.metrics["loss"].count
    if values != total:
        raise BenchError(f"{path}: {values} losses recorded for {total} steps")
    seconds = sum(v.seconds for v in view.validation)
    if seconds <= 0:
        raise BenchError(f"{path}: no epoch time recorded")
    return {"steps": total, "chunks": chunks, "epochs": len(view.validation), "train_seconds": seconds,
            "threads": view.started.threads, "started_time": view.started.time}


def run_plain(args) -> dict[str, Any]:
    cmd = [sys.executable, str(PLAIN), "--json", "--epochs", str(args.epochs), "--batch-size",
           str(args.batch_size), "--dataset-size", str(args.dataset_size), "--seed", str(args.seed), "--threads", str(args.threads)]
    if args.case == "dataloader":
        cmd.append("--dataloader")
    proc, busy = timed(cmd, new_session=True)
    wall = busy["wall_seconds"]
    if proc.returncode != 0:
        raise BenchError(f"plain loop exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    r = json.loads(proc.stdout)
    return {
        "steps": r["steps"],
        "train_seconds": r["train_seconds"],
        "startup_seconds": r["started_time"] - busy["launched"],
        "steps_per_s": r["steps_per_s"],
        "wall_seconds": wall,
        "wall_steps_per_s": r["steps"] / wall,
        "last_loss": r["last_loss"],
        "threads": r["threads"],
        "torch": r["torch"],
        "loadavg_before": busy["loadavg_before"],
        "cpu_pressure": busy["cpu_pressure"],
    }


# -- statistics and report ---------------------------------------------------------------------
def summarize(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    if len(xs) >= 2:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = q3 = xs[0]
    return {"median": statistics.median(xs), "min": xs[0], "max": xs[-1], "q1": q1, "q3": q3, "n": len(xs)}


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": model or platform.processor(), "python": platform.python_version(),
            "platform": platform.platform()}


def report(results: dict[str, Any]) -> str:
    s, cfg = results["summary"], results["config"]
    what = ("bench_data:model on bench_data:images through a DataLoader" if cfg.get("case") == "dataloader"
            else f"nn.Linear(10, 20), synthetic:regression, dataset {cfg['dataset_size']}")
    lines = [
        f"training throughput, {what}, "
        f"batch {cfg['batch_size']}, {cfg['epochs']} epochs = {results['steps']} steps, checkpoints off",
        f"{cfg['repeats']} repeats each, interleaved; {results['machine']['cpus']} CPUs "
        f"({results['machine']['cpu']}), torch {results['torch']} with {results['threads']} threads"
        + (" (--threads)" if cfg.get("threads_given") else " (torchdeck's default: all cores but one)"),
        "",
    ]
    header = ["", "median", "min", "max", "IQR (q1-q3)"]
    rows = []
    for side in ("torchdeck", "plain"):
        for metric, label, fmt in (("steps_per_s", "steps/s (epochs only)", "{:,.0f}"),
                                   ("wall_steps_per_s", "steps/s (wall, with start-up)", "{:,.0f}"),
                                   ("wall_seconds", "wall seconds", "{:.2f}"),
                                   ("startup_seconds", "  start-up (launch -> first epoch)", "{:.2f}"),
                                   ("train_seconds", "  epochs", "{:.2f}"),
                                   ("after_seconds", "  after the last epoch", "{:.2f}")):
            d = s[side][metric]
            rows.append([f"{side:9} {label}", fmt.format(d["median"]), fmt.format(d["min"]), fmt.format(d["max"]),
                         f"{fmt.format(d['q1'])}-{fmt.format(d['q3'])}"])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    lines += [
        "",
        f"ratio torchdeck/plain of median steps/s, epochs only:     {results['ratio']:.3f}"
        f"  (torchdeck overhead {100 * (1 / results['ratio'] - 1):+.1f}% time per step)",
        f"ratio torchdeck/plain of median steps/s, wall clock:      {results['wall_ratio']:.3f}",
        f"last loss equal on both sides (same arithmetic): {'yes' if results['same_last_loss'] else 'NO'}"
        + (" (expected in this case: the items' noise is seeded per batch by torchdeck, per worker by the plain loop)"
           if cfg.get("case") == "dataloader" else ""),
    ]
    pressure = results.get("max_cpu_pressure")
    if pressure is not None:
        lines.append(f"CPU pressure (PSI 'some', share of wall time a task waited for a CPU): up to {_pct(pressure)}")
        if pressure > BUSY_PRESSURE:
            lines.append("WARNING: the machine was busy with other work during some runs; figures are noisy. "
                         "Rerun on a quiet machine, or with --wait-quiet 90.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Training throughput of `torchdeck train` against a plain PyTorch loop.")
    p.add_argument("--repeats", type=int, default=5, help="runs of each side, interleaved (default 5)")
    p.add_argument("--epochs", type=int, default=7, help="epochs per run (default 7: ~4 s of training on 2 CPU cores)")
    p.add_argument("--dataset-size", type=int, default=49152, help="samples, 10%% of them held out (default 49152)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="torch CPU threads for both sides (default: torchdeck's own default, all cores but one)")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each run wait up to SECONDS for the machine's CPU pressure (PSI avg10) "
                        "to fall below 5%% (default 0: do not wait)")
    p.add_argument("--case", choices=("memory", "dataloader"), default="memory",
                   help="memory (default): builtin:linear on in-memory tensors; dataloader: bench_data.py's "
                        "generated images through torchdeck's DataLoader path against plain_loop.py --dataloader "
                        "(the same DataLoader settings; use --batch-size 64 --epochs 2)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout (progress goes to stderr)")
    args = p.parse_args(argv)
    threads_given = args.threads > 0
    if args.repeats < 1 or args.epochs < 1 or args.dataset_size < 2 or args.batch_size < 1 or args.threads < 0:
        p.error("repeats, epochs and batch size must be at least 1, dataset size at least 2, threads at least 0")
    if not threads_given:
        args.threads = default_threads()

    runs: dict[str, list[dict[str, Any]]] = {"torchdeck": [], "plain": []}
    try:
        for i in range(args.repeats):
            for side, fn in (("torchdeck", run_torchdeck), ("plain", run_plain)):
                waited = wait_quiet(args.wait_quiet) if args.wait_quiet > 0 else 0.0
                r = fn(args)
                # what the wall clock holds besides start-up and the epochs: for torchdeck the CLI
                # noticing the end (it polls every 0.1 s) and both processes exiting
                r["after_seconds"] = r["wall_seconds"] - r["startup_seconds"] - r["train_seconds"]
                r["waited_for_quiet_seconds"] = round(waited, 1)
                runs[side].append(r)
                print(f"[{i + 1}/{args.repeats}] {side:9} {r['steps_per_s']:8,.0f} steps/s "
                      f"({r['steps']} steps in {r['train_seconds']:.2f} s of epochs, {r['wall_seconds']:.2f} s wall, "
                      f"cpu pressure {_pct(r['cpu_pressure'])})",
                      file=sys.stderr, flush=True)
    except BenchError as e:
        print(f"bench_train_throughput: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench_train_throughput: interrupted", file=sys.stderr)
        return 130

    steps = {r["steps"] for side in runs.values() for r in side}
    if len(steps) != 1:
        print(f"bench_train_throughput: error: the sides trained different step counts {sorted(steps)}", file=sys.stderr)
        return 1
    summary = {side: {m: summarize([r[m] for r in rs]) for m in ("steps_per_s", "wall_steps_per_s", "wall_seconds",
                                                                  "train_seconds", "startup_seconds", "after_seconds")}
               for side, rs in runs.items()}
    losses = {r["last_loss"] for rs in runs.values() for r in rs}
    results = {
        "benchmark": "train_throughput",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "torch": runs["plain"][0]["torch"],
        "threads": runs["plain"][0]["threads"],
        "config": {"model": "builtin:linear", "data": "synthetic:regression", "epochs": args.epochs,
                   "dataset_size": args.dataset_size, "batch_size": args.batch_size, "lr": 0.01,
                   "optimizer": "sgd", "loss": "mse", "seed": args.seed, "repeats": args.repeats,
                   "threads": args.threads, "threads_given": threads_given, "wait_quiet": args.wait_quiet,
                   "case": args.case},
        "steps": steps.pop(),
        "summary": summary,
        "ratio": summary["torchdeck"]["steps_per_s"]["median"] / summary["plain"]["steps_per_s"]["median"],
        "wall_ratio": summary["torchdeck"]["wall_steps_per_s"]["median"] / summary["plain"]["wall_steps_per_s"]["median"],
        "same_last_loss": len(losses) == 1,
        "max_cpu_pressure": max((r["cpu_pressure"] for rs in runs.values() for r in rs
                                 if r["cpu_pressure"] is not None), default=None),
        "runs": runs,
    }
    if args.json:
        sys.stdout.write(json.dumps(results, indent=1) + "\n")
    else:
        print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
