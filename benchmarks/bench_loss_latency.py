"""Delay from a loss being computed to its line on screen, while ~4,000 losses a second stream.

A writer process plays a training worker: it "computes" loss i at t0 + i/rate (on the shared
CLOCK_MONOTONIC), keeps it pending like the real worker, and appends chunk records to
events.jsonl through the worker's own torchdeck.runs.writer.RunWriter every flush interval
(0.15 s, the worker's default). The real TorchdeckApp runs headless on the Training screen,
tailing that run into its RunView. Each
time the loss log receives lines, the time of the next screen refresh is recorded for the
newest step in them; every loss's delay is then (painted - computed).

    python benchmarks/bench_loss_latency.py [--rate 4000] [--seconds 10] [--json]

Prints the distribution (p50, p90, p99, max), and the part of it that is the worker's own
chunking (computed -> written), so the TUI's share (written -> painted) is visible.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from torchdeck.runs import events as ev  # noqa: E402
from torchdeck.runs.config import RunConfig  # noqa: E402
from torchdeck.runs.store import RunStore  # noqa: E402
from torchdeck.workspace import Workspace  # noqa: E402


def writer(run_dir: str, rate: float, seconds: float, flush: float, t0: float, written_path: str) -> None:
    from torchdeck.runs.store import Run
    from torchdeck.runs.writer import RunWriter

    run = Run(Path(run_dir))
    w, _lock = RunWriter.acquire(run)  # the worker's own writer: lock, heartbeat, status, events
    total = int(rate * seconds)
    w.emit(ev.Started(run.id, {"model": "bench", "epochs": 1, "batch_size": 1, "optimizer": "sgd", "lr": 0.1},
                      total, total, 0, "cpu", time.time()))
    w.progress(state="running")
    w.start_heartbeat()
    written = []  # (last step in the chunk, monotonic time it was written)
    first = 1
    while first <= total:
        now = time.monotonic()
        computed = min(total, int((now - t0) * rate))  # losses computed so far
        if computed >= first:
            w.losses(first, 1, [1.0 / (1 + s * 1e-3) for s in range(first, computed + 1)])
            written.append((computed, time.monotonic()))
            first = computed + 1
            w.progress(step=computed, epoch=1)
        time.sleep(max(0.0, flush - (time.monotonic() - now)))
    w.ended("finished", total, 0.1)
    Path(written_path).write_text(json.dumps(written))


async def watch(ws: Workspace, run_id: str, proc: mp.Process) -> list[tuple[int, float]]:
    from torchdeck.tui.app import TorchdeckApp
    from torchdeck.tui.screens.training import TrainingScreen
    from torchdeck.tui.widgets import VirtualLog

    painted: list[tuple[int, float]] = []
    app = TorchdeckApp(ws)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("3")
        screen = app.screen
        assert isinstance(screen, TrainingScreen)
        log = screen.query_one("#loss-log", VirtualLog)
        original = log.poll

        def poll():
            # The log shows its newest line (it follows the end): the newest loss step on screen
            # is the view's last loss step once this poll's frame is painted.
            result = original()
            series = screen.view.metrics["loss"]
            if len(series) and log.following:
                newest = series.last_step
                app.call_after_refresh(lambda: painted.append((newest, time.monotonic())))
            return result

        log.poll = poll
        while proc.is_alive() or screen.state not in ("finished",):
            await pilot.pause(0.05)
            if not proc.is_alive() and screen.history_done and screen.state == "finished":
                break
        await pilot.pause(0.2)
    return painted


def delays(rate: float, t0: float, marks: list[tuple[int, float]], total: int) -> list[float]:
    """Each loss's delay: from its compute time to the first mark whose step covers it."""
    out, j = [], 0
    marks = sorted(marks)
    for step in range(1, total + 1):
        while j < len(marks) and marks[j][0] < step:
            j += 1
        if j == len(marks):
            break
        out.append(marks[j][1] - (t0 + step / rate))
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=4000.0, help="losses per second")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--flush", type=float, default=RunConfig.flush_interval, help="the worker's chunk interval")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.open(Path(tmp) / "ws")
        run = RunStore(ws).create(RunConfig(model="demo"))
        written_path = Path(tmp) / "written.json"
        t0 = time.monotonic() + 3.0  # the app is up and watching before the first loss
        proc = mp.get_context("spawn").Process(
            target=writer, args=(str(run.path), args.rate, args.seconds, args.flush, t0, str(written_path)))
        proc.start()
        painted = asyncio.run(watch(ws, run.id, proc))
        proc.join()
        written = [tuple(x) for x in json.loads(written_path.read_text())]
    total = int(args.rate * args.seconds)
    on_screen = delays(args.rate, t0, painted, total)
    in_file = delays(args.rate, t0, written, total)
    ms = lambda x: round(x * 1000, 1)  # noqa: E731
    result = {
        "rate_per_s": args.rate, "losses": total, "losses_painted": len(on_screen),
        "computed_to_screen_ms": {"p50": ms(pct(on_screen, .5)), "p90": ms(pct(on_screen, .9)),
                                  "p99": ms(pct(on_screen, .99)), "max": ms(max(on_screen)),
                                  "mean": ms(statistics.fmean(on_screen))},
        "computed_to_file_ms": {"p50": ms(pct(in_file, .5)), "p99": ms(pct(in_file, .99)),
                                "mean": ms(statistics.fmean(in_file))},
    }
    result["tui_share_mean_ms"] = round(result["computed_to_screen_ms"]["mean"] - result["computed_to_file_ms"]["mean"], 1)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        s, f = result["computed_to_screen_ms"], result["computed_to_file_ms"]
        print(f"{total} losses at {args.rate:.0f}/s, {len(on_screen)} seen on screen")
        print(f"computed -> on screen: p50 {s['p50']} ms  p90 {s['p90']} ms  p99 {s['p99']} ms  max {s['max']} ms")
        print(f"computed -> in events.jsonl (worker chunking, {args.flush * 1000:.0f} ms): p50 {f['p50']} ms  p99 {f['p99']} ms")
        print(f"the TUI's share (file -> screen), mean: {result['tui_share_mean_ms']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
