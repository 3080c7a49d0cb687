"""The Training screen's log and run list with long histories and many runs, headless.

1. Key to frame: a VirtualLog over a 1,000,000-step run (RunLogLines on a RunView), Home and
   End pressed alternately; each time from the key event sent to the app until the frame that
   shows the new position is composed and turned into terminal output. Baseline, interleaved:
   the same for Textual's Log holding 2,000 lines (what the screen kept before).
2. Streaming: 4,000 losses a second arrive from a thread (chunks of 600, as a worker flushes
   every 0.15 s) under the view's lock; the UI calls VirtualLog.poll() 4 times a second. Prints
   poll()'s cost and the frames' cost, and as the baseline the cost of formatting the same
   losses into a Log with write_lines (what the screen did before, per batch).
3. Run list: RunTable.set_summaries with 1,000 runs: unchanged, one run changed, and a rebuild
   (clear, then every row added) for comparison.

    python benchmarks/bench_log.py [--steps 1000000] [--repeats 15] [--seconds 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from textual import events  # noqa: E402
from textual.app import App, ComposeResult  # noqa: E402
from textual.widgets import Log  # noqa: E402
from torchdeck.runs import events as ev  # noqa: E402
from torchdeck.runs.store import Summary  # noqa: E402
from torchdeck.runs.view import RunView  # noqa: E402
from torchdeck.tui.widgets import RunLogLines, RunTable, VirtualLog  # noqa: E402
from torchdeck.tui.widgets.virtual_log import lines_for  # noqa: E402

SIZE = (100, 30)


def progress(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def history(steps: int, chunk: int = 600) -> list[ev.Event]:
    out: list[ev.Event] = [ev.Started("bench", {"model": "mlp", "epochs": 1}, steps, steps, 1000, "cpu", 0.0)]
    for first in range(1, steps + 1, chunk):
        out.append(ev.Losses(first, 1, [1.0 / s for s in range(first, min(first + chunk, steps + 1))]))
    out.append(ev.Ended("finished", steps, 1.0 / steps))
    return out


class Bench(App):
    def __init__(self, widget):
        super().__init__()
        self.widget = widget
        self.frames: list[float] = []
        self.frame_cost: list[float] = []

    def compose(self) -> ComposeResult:
        yield self.widget

    def on_mount(self) -> None:
        self.widget.focus()
        display = self._display
        compositor = self.screen._compositor
        render_update = compositor.render_update
        composed: list[float] = []

        def timed_render_update(*a, **k):  # the frame's lines drawn (render_line of what is in view)
            t = time.perf_counter()
            try:
                return render_update(*a, **k)
            finally:
                composed.append(time.perf_counter() - t)

        def timed_display(screen, renderable) -> None:
            if renderable is not None:
                t = time.perf_counter()
                if hasattr(renderable, "render_segments"):  # what a real terminal is sent
                    renderable.render_segments(self.console)
                now = time.perf_counter()
                self.frames.append(now)
                self.frame_cost.append(now - t + (composed.pop() if composed else 0.0))
                composed.clear()
            display(screen, renderable)

        compositor.render_update = timed_render_update
        self._display = timed_display


class InstantLog(Log):
    """Textual's Log with Home and End not animated (its default animates over a second), so
    the baseline times the same thing: the key, then the frame at the new place."""

    def action_scroll_home(self) -> None:
        self.scroll_home(animate=False, immediate=True)

    def action_scroll_end(self) -> None:
        self.scroll_end(animate=False, immediate=True)


async def key_to_frame(app: Bench, widget, key: str, at_target) -> float:
    t0 = time.perf_counter()
    event = events.Key(key, None)
    event.set_sender(app)
    app._driver.send_message(event)
    deadline = t0 + 10
    while True:
        if app.frames and app.frames[-1] > t0 and at_target():
            return app.frames[-1] - t0
        if time.perf_counter() > deadline:
            raise RuntimeError(f"no frame after {key}")
        await asyncio.sleep(0.0002)


async def bench_keys(widget, repeats: int, setup=None) -> list[float]:
    app = Bench(widget)
    out = []
    async with app.run_test(size=SIZE) as pilot:
        if setup is not None:
            setup(widget)
        await pilot.pause()
        for _ in range(repeats):
            for key, top in (("home", True), ("end", False)):
                def at() -> bool:
                    return (widget.scroll_y == 0) if top else (widget.scroll_y == widget.max_scroll_y > 0)
                out.append(await key_to_frame(app, widget, key, at))
                await pilot.pause()
    return out


async def bench_stream(rate: int, seconds: float, chunk: int = 600) -> dict:
    view, lock = RunView("bench"), threading.Lock()
    source = RunLogLines(view, lock)
    source.feed(history(100_000))
    log = VirtualLog(source)
    app = Bench(log)
    polls: list[float] = []
    fed = threading.Event()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        stop = threading.Event()

        def feeder() -> None:
            step = 100_000
            t0 = time.perf_counter()
            while not stop.is_set():
                due = t0 + (step - 100_000 + chunk) / rate
                time.sleep(max(0.0, due - time.perf_counter()))
                source.feed([ev.Losses(step + 1, 1, [0.5] * chunk)])
                step += chunk
            fed.set()

        def poll() -> None:
            t = time.perf_counter()
            log.poll()
            polls.append(time.perf_counter() - t)

        app.frame_cost.clear()
        thread = threading.Thread(target=feeder, daemon=True)
        thread.start()
        timer = app.set_interval(0.25, poll)
        t_start = time.perf_counter()
        await asyncio.sleep(seconds)
        elapsed = time.perf_counter() - t_start
        timer.stop()
        stop.set()
        thread.join()
        frames = list(app.frame_cost)
        last = str(source.line(source.line_count() - 1))
        assert last.startswith("e1   step"), last
        # the baseline: each batch's losses formatted and written to a Log (2,000 lines kept)
        base = Log(max_lines=2000)
        await app.mount(base)
        batch = ev.Losses(1, 1, [0.5] * (rate // 4))
        t = time.perf_counter()
        n = 0
        while time.perf_counter() - t < 1.0:
            base.write_lines(lines_for(batch), scroll_end=False)
            n += 1
        write_lines = (time.perf_counter() - t) / n
    return {"polls": len(polls), "poll_median_ms": statistics.median(polls) * 1e3,
            "poll_max_ms": max(polls) * 1e3, "frames": len(frames),
            "frame_median_ms": statistics.median(frames) * 1e3 if frames else None,
            "ui_share": (sum(polls) + sum(frames)) / elapsed,
            "baseline_format_write_ms_per_batch": write_lines * 1e3, "lines_per_batch": rate // 4}


async def bench_table(runs: int, repeats: int) -> dict:
    def listing(k: int) -> list[Summary]:
        out = []
        for i in range(runs):
            s = Summary(id=f"20261129-{i:06d}-r{i:03d}", name=f"run{i}", model="mlp", state="running",
                        created=float(i), step=i * 10 + (k if i == 7 else 0), total_steps=1_000_000, best_val_loss=0.5)
            s.duration, s.steps_per_second = 60.0 + i, 100.0
            out.append(s)
        return out[::-1]

    table = RunTable()
    app = App()
    result: dict = {}
    async with app.run_test(size=SIZE) as pilot:
        await app.mount(table)
        t = time.perf_counter()
        table.set_summaries(listing(0))
        result["first_listing_ms"] = (time.perf_counter() - t) * 1e3
        await pilot.pause()
        same, one, rebuild = [], [], []
        for k in range(1, repeats + 1):
            t = time.perf_counter()
            table.set_summaries(listing(0))
            same.append(time.perf_counter() - t)
            t = time.perf_counter()
            table.set_summaries(listing(k))
            one.append(time.perf_counter() - t)
            await pilot.pause()
            # what a rebuild costs: every row cleared and added again (the old list did this
            # whenever the set of runs changed)
            summaries = listing(k)
            t = time.perf_counter()
            grid = table.table
            grid.clear()
            table._cells.clear()
            table._order = []
            table.set_summaries(summaries)
            rebuild.append(time.perf_counter() - t)
            await pilot.pause()
    result.update(unchanged_ms=statistics.median(same) * 1e3, one_changed_ms=statistics.median(one) * 1e3,
                  rebuild_ms=statistics.median(rebuild) * 1e3)
    return result


def summary(xs: list[float]) -> dict:
    return {"median_ms": statistics.median(xs) * 1e3, "min_ms": min(xs) * 1e3, "max_ms": max(xs) * 1e3, "n": len(xs)}


async def main_async(args) -> dict:
    progress(f"building a {args.steps:,}-step history ...")
    t = time.perf_counter()
    view = RunView("bench")
    source = RunLogLines(view)
    source.feed(history(args.steps))
    build_s = time.perf_counter() - t
    progress(f"  {build_s:.2f} s (RunView fed and events indexed); {source.line_count():,} lines")
    t = time.perf_counter()
    text = [str(source.line(i)) for i in range(0, source.line_count(), max(1, source.line_count() // 10_000))]
    per_line_us = (time.perf_counter() - t) / len(text) * 1e6
    out: dict = {"steps": args.steps, "lines": source.line_count(), "build_s": build_s, "line_us": per_line_us}
    progress("key to frame: VirtualLog (1M lines) and Log (2,000 lines), alternated ...")
    virtual, baseline = [], []
    for _ in range(3):
        virtual += await bench_keys(VirtualLog(source), args.repeats // 3 or 1)
        tail = [str(source.line(i)) for i in range(source.line_count() - 2000, source.line_count())]
        baseline += await bench_keys(InstantLog(max_lines=2000), args.repeats // 3 or 1, lambda w: w.write_lines(tail))
    out["key_to_frame_virtual"] = summary(virtual)
    out["key_to_frame_log_2000"] = summary(baseline)
    progress(f"streaming 4,000 losses/s for {args.seconds} s ...")
    out["stream"] = await bench_stream(4000, args.seconds)
    progress("run list: 1,000 runs re-listed ...")
    out["run_table"] = await bench_table(1000, args.repeats)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    v, b, s, r = out["key_to_frame_virtual"], out["key_to_frame_log_2000"], out["stream"], out["run_table"]
    print(f"history: {out['steps']:,} steps, {out['lines']:,} lines; fed and indexed in {out['build_s']:.2f} s; "
          f"one line on demand {out['line_us']:.1f} us")
    print("key (Home/End) to frame      median     min     max   n")
    print(f"  VirtualLog, {out['lines']:>9,} lines {v['median_ms']:6.1f} {v['min_ms']:7.1f} {v['max_ms']:7.1f} "
          f"{v['n']:3}  ms")
    print(f"  Log,            2,000 lines {b['median_ms']:6.1f} {b['min_ms']:7.1f} {b['max_ms']:7.1f} {b['n']:3}  ms")
    print(f"  ratio (median) {v['median_ms'] / b['median_ms']:.2f}x")
    print(f"streaming 4,000 lines/s, poll() 4/s: {s['polls']} polls, median {s['poll_median_ms']:.3f} ms, "
          f"max {s['poll_max_ms']:.3f} ms; {s['frames']} frames, median {s['frame_median_ms']:.2f} ms; "
          f"UI thread share (polls + frames) {s['ui_share']:.1%}")
    print(f"  baseline: formatting {s['lines_per_batch']:,} lines into a Log per batch "
          f"{s['baseline_format_write_ms_per_batch']:.2f} ms")
    print(f"run list, 1,000 runs: first listing {r['first_listing_ms']:.1f} ms; re-list unchanged "
          f"{r['unchanged_ms']:.2f} ms, one run changed {r['one_changed_ms']:.2f} ms, rebuild {r['rebuild_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
