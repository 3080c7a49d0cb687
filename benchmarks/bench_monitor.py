"""The live monitor (issue 10): replay, key latency, bytes on the wire, memory, watched throughput.

One script, one subcommand per case; each prints a table, or with --json one JSON document on
stdout (progress goes to stderr). Every case records the machine's CPU pressure (Linux PSI,
/proc/pressure/cpu: the share of the time some task waited for a CPU) over its own span.

    python benchmarks/bench_monitor.py replay [--steps 1000000] [--size 120x40] [--cold]
        A generated events.jsonl (losses in chunks of 250 with `elapsed`, an lr and a grad_norm
        point a chunk, an epoch record every 50,000 steps), written through RunWriter. The real
        TorchdeckApp headless (run_test), 3 pressed once the app's background import of torch is
        done (--cold: one second after start, while it still runs): time until #chart-0 has drawn
        the whole curve and that frame is out, and the event loop's lag meanwhile (a coroutine
        that sleeps 10 ms at a time and records how late it wakes). Targets: 1 s, no stall > 50 ms.
    python benchmarks/bench_monitor.py keys [--rate 4000] [--rounds 9] [--no-loss-latency]
        A writer process streams losses (and lr, grad_norm) at --rate through RunWriter; on the
        Training screen the keys ] [ g g + - z Z t t and down/up in the run table are sent one at
        a time; each: key sent -> handled (its effect seen) -> the next frame out. Target p95 <
        100 ms. Then runs bench_loss_latency.py --json and quotes it.
    python benchmarks/bench_monitor.py wire [--rate 4000] [--seconds 10] [--sizes 80x24 200x60]
        The real `torchdeck --workspace WS` in a pty (TERM=xterm-256color, TIOCSWINSZ), 3 sent,
        a run streaming at --rate (then a finished run, nothing streaming: idle): bytes a second
        the app writes; and `top -d 0.5` the same way when it is installed.
    python benchmarks/bench_monitor.py memory [--steps 1000000 10000000]
        Each size in a fresh process: RSS (/proc/self/statm) before and after feeding a RunView
        the way the screen does (RunLogLines.feed per ~1 MiB batch, the header's EMA), and the
        view's own nbytes. Target <= 8 MiB per million steps per metric.
    python benchmarks/bench_monitor.py throughput [--repeats 3] [--epochs 7]
        `torchdeck train --model builtin:linear --no-checkpoints --detach` with nobody watching,
        and with the TUI (real command in a pty, Training screen) watching it, interleaved;
        steps/s from the run's own events. Target: watched / headless median >= 0.95.
    python benchmarks/bench_monitor.py all
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import fcntl
import gc
import json
import math
import multiprocessing as mp
import os
import pty
import random
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench_train_throughput import cpu_pressure_us, read_events, torchdeck_command  # noqa: E402
from torchdeck.runs import events as ev  # noqa: E402
from torchdeck.runs.config import RunConfig  # noqa: E402
from torchdeck.runs.store import RunStore  # noqa: E402
from torchdeck.workspace import Workspace  # noqa: E402

CHUNK = 250
EPOCH_STEPS = 50_000
STALL = 0.05  # the bar for a UI stall


def progress(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


class Pressure:
    """CPU pressure (PSI 'some') over a span: the share of wall time some task waited for a CPU."""

    def __init__(self) -> None:
        self.t0, self.p0 = time.monotonic(), cpu_pressure_us()

    def share(self) -> float | None:
        p1 = cpu_pressure_us()
        if self.p0 is None or p1 is None:
            return None
        return round((p1 - self.p0) / 1e6 / max(1e-9, time.monotonic() - self.t0), 3)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else math.nan


def ms(x: float) -> float:
    return round(x * 1e3, 1)


def parse_size(text: str) -> tuple[int, int]:
    w, h = text.lower().split("x")
    return int(w), int(h)


# -- a generated history, in the real format ---------------------------------------------------
def loss_at(step: int, rng: random.Random) -> float:
    return 0.1 + 2.0 * math.exp(-step / 300_000) * (1 + 0.3 * rng.random())


def write_history(run_dir: str, steps: int, rate: float = 4000.0, state: str = "finished") -> None:
    """`steps` steps through RunWriter (the worker's writer): losses in chunks of CHUNK with
    `elapsed` (a fake clock at `rate` steps/s), lr and grad_norm once a chunk, an epoch record
    every EPOCH_STEPS steps, then `ended`."""
    from torchdeck.runs.store import Run
    from torchdeck.runs.writer import RunWriter

    run = Run(Path(run_dir))
    clock = [0.0]
    w, _lock = RunWriter.acquire(run, clock=lambda: clock[0])
    epochs = max(1, -(-steps // EPOCH_STEPS))
    w.emit(ev.Started(run.id, {"model": "bench", "epochs": epochs, "batch_size": 16, "optimizer": "sgd", "lr": 0.1},
                      steps, EPOCH_STEPS, 220, "cpu", time.time()))
    w.progress(state="running")
    rng = random.Random(0)
    for first in range(1, steps + 1, CHUNK):
        last = min(steps, first + CHUNK - 1)
        epoch = (first - 1) // EPOCH_STEPS + 1
        clock[0] = last / rate
        w.losses(first, epoch, [loss_at(s, rng) for s in range(first, last + 1)])
        w.scalars("lr", [last], [0.1 * 0.5 * (1 + math.cos(math.pi * last / steps))])
        w.scalars("grad_norm", [last], [0.5 + rng.random()])
        if last % EPOCH_STEPS == 0 or last == steps:
            w.emit(ev.EpochEnd(epoch, last, loss_at(last, rng), loss_at(last, rng) * 1.1, EPOCH_STEPS / rate))
            w.progress(step=last, epoch=epoch)
    w.ended(state, steps, loss_at(steps, rng))


def make_history(ws: Workspace, steps: int, name: str = "") -> str:
    """A finished run of `steps` steps in `ws`, written by a child process (its lock goes with it)."""
    run = RunStore(ws).create(RunConfig(model="demo", name=name))
    p = mp.get_context("spawn").Process(target=write_history, args=(str(run.path), steps))
    p.start()
    p.join()
    if p.exitcode != 0:
        raise RuntimeError(f"writing the history failed ({p.exitcode})")
    return run.id


def stream(run_dir: str, rate: float, seconds: float, flush: float = 0.15) -> None:
    """A worker's stand-in: losses at `rate` a second (and lr, grad_norm) through RunWriter,
    one chunk every `flush` seconds, for `seconds`."""
    from torchdeck.runs.store import Run
    from torchdeck.runs.writer import RunWriter

    run = Run(Path(run_dir))
    w, _lock = RunWriter.acquire(run)
    total = int(rate * seconds)
    w.emit(ev.Started(run.id, {"model": "bench", "epochs": 1, "batch_size": 1, "optimizer": "sgd", "lr": 0.1},
                      total, total, 0, "cpu", time.time()))
    w.progress(state="running")
    w.start_heartbeat()
    rng = random.Random(1)
    t0 = time.monotonic()
    first = 1
    while first <= total:
        now = time.monotonic()
        computed = min(total, int((now - t0) * rate))
        if computed >= first:
            w.losses(first, 1, [loss_at(s * 25, rng) for s in range(first, computed + 1)])
            w.scalars("lr", [computed], [0.1 * (1 - computed / total) + 1e-4])
            w.scalars("grad_norm", [computed], [0.5 + rng.random()])
            w.progress(step=computed, epoch=1)
            first = computed + 1
        time.sleep(max(0.0, flush - (time.monotonic() - now)))
    w.ended("finished", total, 0.1)


def start_stream(ws: Workspace, rate: float, seconds: float) -> tuple[str, mp.Process]:
    run = RunStore(ws).create(RunConfig(model="demo", name="streaming"))
    p = mp.get_context("spawn").Process(target=stream, args=(str(run.path), rate, seconds), daemon=True)
    p.start()
    return run.id, p


# -- in-process instruments on the real app ------------------------------------------------------
class Frames:
    """Times each frame the app sends to its (headless) terminal: App._display wrapped, the
    frame turned into terminal output as a real driver would (bench_log.py's way)."""

    def __init__(self, app) -> None:
        self.times: list[float] = []
        display = app._display

        def timed_display(screen, renderable) -> None:
            if renderable is not None:
                if hasattr(renderable, "render_segments"):
                    renderable.render_segments(app.console)
                self.times.append(time.perf_counter())
            display(screen, renderable)

        app._display = timed_display

    def after(self, t: float) -> float | None:
        """The first frame out after time t (None: none yet)."""
        i = bisect.bisect_right(self.times, t)
        return self.times[i] if i < len(self.times) else None


class LagMonitor:
    """A coroutine on the app's event loop that sleeps 10 ms at a time and records how late it woke."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float]] = []  # (woke at, lag)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(self.interval)
            now = time.perf_counter()
            self.samples.append((now, now - t - self.interval))

    def stop(self) -> None:
        self._task.cancel()

    def between(self, a: float, b: float) -> list[float]:
        return [lag for t, lag in self.samples if a <= t <= b]


def send_key(app, key: str, character: str | None = None) -> None:
    from textual import events

    event = events.Key(key, character)
    event.set_sender(app)
    app._driver.send_message(event)


def chart_draws() -> list[tuple[float, str, int]]:
    """Patch MetricChart.draw (this process only) to record (time, chart id, points of its first curve)."""
    from torchdeck.tui.widgets.chart import MetricChart

    draws: list[tuple[float, str, int]] = []
    original = MetricChart._frame  # the data redraw (strips() calls it when data, size or options change)

    def frame(self, width, height):
        out = original(self, width, height)
        draws.append((time.perf_counter(), self.id or "", len(self._curves[0].series) if self._curves else 0))
        return out

    MetricChart._frame = frame
    return draws


# -- 1. replay ---------------------------------------------------------------------------------
async def _replay(ws: Workspace, steps: int, size: tuple[int, int], cold: bool = False) -> dict:
    from torchdeck.tui.app import TorchdeckApp
    from torchdeck.tui.screens.training import TrainingScreen

    draws = chart_draws()
    app = TorchdeckApp(ws)
    async with app.run_test(size=size) as pilot:
        frames = Frames(app)
        await pilot.pause(1.0)  # the first screen settled
        torch_wait = time.perf_counter()
        while not cold and not app.torch_ready and time.perf_counter() - torch_wait < 60:
            await asyncio.sleep(0.05)  # the app's background import of torch (seconds) is done
        if not cold:
            await pilot.pause(0.5)
        torch_importing = not app.torch_ready
        lag = LagMonitor()
        await asyncio.sleep(0.3)
        t0 = time.perf_counter()
        send_key(app, "3", "3")
        fed_at = full_draw = full_frame = watching = None
        deadline = t0 + 120
        while time.perf_counter() < deadline:
            await asyncio.sleep(0.002)
            screen = app.screen
            if not isinstance(screen, TrainingScreen):
                continue
            if watching is None and getattr(screen, "current_run", None):
                watching = time.perf_counter()  # the screen is up and its tail started: the replay
            if fed_at is None and getattr(screen, "history_done", False) and len(screen.view.metrics["loss"]) == steps:
                fed_at = time.perf_counter()
            if full_draw is None:
                full_draw = next((t for t, cid, n in draws if cid == "chart-0" and n == steps and t > t0), None)
            if full_draw is not None and full_frame is None:
                full_frame = frames.after(full_draw)
            if fed_at is not None and full_frame is not None:
                break
        else:
            screen = app.screen
            raise RuntimeError(f"the whole curve was never drawn: screen {type(screen).__name__}, watching "
                               f"{getattr(screen, 'current_run', None)}, history done "
                               f"{getattr(screen, 'history_done', None)}, points fed "
                               f"{len(screen.view.metrics['loss']) if hasattr(screen, 'view') else None} of {steps}, "
                               f"chart-0 draws {[n for _, cid, n in draws if cid == 'chart-0'][-3:]}")
        end = max(fed_at, full_frame)
        await asyncio.sleep(0.5)  # and a little after: the last batches' frames
        lags = lag.between(t0, end + 0.5)
        switch_lags = lag.between(t0, watching)
        replay_lags = lag.between(watching, end + 0.5)
        lag.stop()
        chart = app.screen.query_one("#chart-0")
        series_len = len(chart.curves[0].series)
    return {"steps": steps, "size": f"{size[0]}x{size[1]}", "chart_points": series_len,
            "torch_importing": torch_importing,
            "press_to_full_frame_s": round(full_frame - t0, 3), "press_to_full_draw_s": round(full_draw - t0, 3),
            "press_to_history_fed_s": round(fed_at - t0, 3), "frames": sum(1 for t in frames.times if t0 < t <= end),
            "chart0_draws": sum(1 for t, cid, _ in draws if cid == "chart-0" and t0 < t <= end),
            "lag_samples": len(lags), "lag_max_ms": ms(max(lags)), "lag_p99_ms": ms(pct(lags, .99)),
            "lag_p50_ms": ms(pct(lags, .5)), "stalls_over_50ms": sum(1 for x in lags if x > STALL),
            "press_to_watching_s": round(watching - t0, 3), "switch_lag_max_ms": ms(max(switch_lags, default=0.0)),
            "replay_lag_max_ms": ms(max(replay_lags, default=0.0)), "replay_lag_p99_ms": ms(pct(replay_lags, .99)),
            "replay_stalls_over_50ms": sum(1 for x in replay_lags if x > STALL)}


def case_replay(args) -> dict:
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.open(Path(tmp) / "ws")
        progress(f"replay: writing a {args.steps:,}-step history through RunWriter ...")
        t = time.monotonic()
        run_id = make_history(ws, args.steps)
        size_mb = (ws.runs_dir / run_id / "events.jsonl").stat().st_size / 2**20
        progress(f"  written in {time.monotonic() - t:.1f} s; opening the app, pressing 3 ...")
        pressure = Pressure()
        out = asyncio.run(_replay(ws, args.steps, size, cold=args.cold))
        out["cpu_pressure"] = pressure.share()
        out["events_mib"] = round(size_mb, 1) if size_mb else None
    return out


def print_replay(r: dict) -> None:
    print(f"replay of {r['steps']:,} steps ({r['events_mib']} MiB events.jsonl) at {r['size']}, "
          f"CPU pressure {r['cpu_pressure']:.0%}, "
          + ("3 pressed while the app still imports torch (--cold)" if r["torch_importing"] else
             "3 pressed once the app's background import of torch is done"))
    print(f"  3 pressed -> Training screen up, tail started  {r['press_to_watching_s']:.3f} s "
          f"(loop lag max {r['switch_lag_max_ms']} ms)")
    print(f"  3 pressed -> history fed to the view      {r['press_to_history_fed_s']:.3f} s")
    print(f"  3 pressed -> #chart-0 drawn with {r['chart_points']:,} points  {r['press_to_full_draw_s']:.3f} s")
    print(f"  3 pressed -> that frame out               {r['press_to_full_frame_s']:.3f} s   (target < 1 s)")
    print(f"  event loop lag ({r['lag_samples']} samples, 10 ms sleeps): p50 {r['lag_p50_ms']} ms  "
          f"p99 {r['lag_p99_ms']} ms  max {r['lag_max_ms']} ms; over 50 ms: {r['stalls_over_50ms']}"
          f"   (target: none over 50 ms)")
    print(f"    of which the replay (tail started -> full frame): p99 {r['replay_lag_p99_ms']} ms  "
          f"max {r['replay_lag_max_ms']} ms; over 50 ms: {r['replay_stalls_over_50ms']}")


# -- 2. keys while streaming -------------------------------------------------------------------
KEYS = ("]", "[", "g", "g", "+", "-", "z", "Z", "t", "t", "nav", "back")
KEY_NAMES = {"]": "right_square_bracket", "[": "left_square_bracket", "+": "plus", "-": "minus"}


async def _keys(ws: Workspace, rounds: int, size: tuple[int, int], stream_proc) -> dict:
    from torchdeck.tui.app import TorchdeckApp
    from torchdeck.tui.screens.training import TrainingScreen
    from torchdeck.tui.widgets import RunTable

    app = TorchdeckApp(ws)
    per_key: dict[str, list[float]] = {}
    to_handled: list[float] = []
    failures = []
    async with app.run_test(size=size) as pilot:
        frames = Frames(app)
        await pilot.press("3")
        screen = app.screen
        assert isinstance(screen, TrainingScreen)
        t_wait = time.monotonic()
        while not (screen.current_run and len(screen.view.metrics) >= 3 and screen.history_done):
            await pilot.pause(0.05)
            if time.monotonic() - t_wait > 30:
                raise RuntimeError("the streaming run never showed its metrics")
        await pilot.pause(1.0)
        table = screen.query_one("#runs-table", RunTable)
        grid = table.table
        lag = LagMonitor()
        t_start = time.perf_counter()
        for _ in range(rounds):
            for k in KEYS:
                if not stream_proc.is_alive():
                    break
                if k in ("nav", "back"):
                    row = grid.cursor_row
                    if k == "nav":
                        name = "down" if row < grid.row_count - 1 else "up"
                        nav_back = "up" if name == "down" else "down"
                    else:
                        name = nav_back
                    before = screen.current_run
                    def done(before=before): return screen.current_run != before  # noqa: E731,E704
                    label = "down/up"
                else:
                    name = KEY_NAMES.get(k, k)
                    snap = (screen.chart_metric, screen.grid, screen.smoothing, screen.zoom, screen.time_axis)
                    def done(snap=snap): return (screen.chart_metric, screen.grid, screen.smoothing,  # noqa: E731,E704
                                                 screen.zoom, screen.time_axis) != snap
                    label = k
                t0 = time.perf_counter()
                send_key(app, name, k if len(k) == 1 else None)
                handled = frame = None
                while time.perf_counter() - t0 < 10:
                    await asyncio.sleep(0.0005)
                    if handled is None and done():
                        handled = time.perf_counter()
                    if handled is not None:
                        frame = frames.after(handled)
                        if frame is not None:
                            break
                if frame is None:
                    failures.append(label)
                else:
                    per_key.setdefault(label, []).append(frame - t0)
                    to_handled.append(handled - t0)
                await asyncio.sleep(0.15 + random.random() * 0.1)
        t_end = time.perf_counter()
        lags = lag.between(t_start, t_end)
        lag.stop()
    everything = [x for xs in per_key.values() for x in xs]
    return {"presses": len(everything), "failures": failures,
            "key_to_frame_ms": {"p50": ms(pct(everything, .5)), "p95": ms(pct(everything, .95)),
                                "max": ms(max(everything)) if everything else None},
            "key_to_handled_ms_p50": ms(pct(to_handled, .5)),
            "per_key_ms": {k: {"n": len(v), "p50": ms(pct(v, .5)), "max": ms(max(v))} for k, v in per_key.items()},
            "lag_max_ms": ms(max(lags)) if lags else None, "lag_p99_ms": ms(pct(lags, .99))}


def case_keys(args) -> dict:
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.open(Path(tmp) / "ws")
        make_history(ws, 20_000, name="other")  # a second row in the run table (down/up)
        seconds = 30 + args.rounds * len(KEYS) * 0.6
        progress(f"keys: streaming {args.rate:.0f} losses/s for up to {seconds:.0f} s; {args.rounds} rounds of "
                 f"{' '.join(KEYS)} ...")
        run_id, proc = start_stream(ws, args.rate, seconds)
        pressure = Pressure()
        try:
            out = asyncio.run(_keys(ws, args.rounds, size, proc))
        finally:
            if proc.is_alive():
                proc.terminate()
            proc.join()
        out["cpu_pressure"] = pressure.share()
        out["rate_per_s"] = args.rate
        out["size"] = args.size
    if args.loss_latency:
        progress("keys: then bench_loss_latency.py --json ...")
        pressure = Pressure()
        proc = subprocess.run([sys.executable, str(HERE / "bench_loss_latency.py"), "--json"], capture_output=True,
                              text=True)
        out["loss_latency"] = json.loads(proc.stdout) if proc.returncode == 0 else {"error": proc.stderr[-2000:]}
        out["loss_latency_cpu_pressure"] = pressure.share()
    return out


def print_keys(r: dict) -> None:
    k = r["key_to_frame_ms"]
    print(f"keys while {r['rate_per_s']:.0f} losses/s stream ({r['size']}), {r['presses']} presses, "
          f"CPU pressure {r['cpu_pressure']:.0%}")
    print(f"  key -> next frame: p50 {k['p50']} ms  p95 {k['p95']} ms  max {k['max']} ms   (target p95 < 100 ms)")
    print(f"  key -> handled: p50 {r['key_to_handled_ms_p50']} ms; loop lag p99 {r['lag_p99_ms']} ms, "
          f"max {r['lag_max_ms']} ms")
    for key, v in r["per_key_ms"].items():
        print(f"    {key:8} n={v['n']:3}  p50 {v['p50']:7.1f} ms  max {v['max']:7.1f} ms")
    if r["failures"]:
        print(f"  no frame after: {r['failures']}")
    ll = r.get("loss_latency")
    if ll and "computed_to_screen_ms" in ll:
        s = ll["computed_to_screen_ms"]
        print(f"  bench_loss_latency.py: computed -> on screen p50 {s['p50']} ms  p90 {s['p90']} ms  p99 {s['p99']} ms"
              f"  max {s['max']} ms ({ll['losses_painted']:,}/{ll['losses']:,} seen; TUI share "
              f"{ll['tui_share_mean_ms']} ms; CPU pressure {r['loss_latency_cpu_pressure']:.0%})")
    elif ll:
        print(f"  bench_loss_latency.py failed: {ll}")


# -- 3. bytes on the wire ----------------------------------------------------------------------
class Pty:
    """A command in a pseudo-terminal of a given size; everything it writes is read and timed."""

    def __init__(self, argv: list[str], cols: int, rows: int) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execve(argv[0], argv, {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(cols),
                                      "LINES": str(rows)})
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.reads: list[tuple[float, int]] = []
        self.seen = bytearray()
        self.keep = True
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self.fd], [], [], 0.05)
            except (OSError, ValueError):
                return
            if not ready:
                continue
            try:
                data = os.read(self.fd, 1 << 16)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self.reads.append((time.monotonic(), len(data)))
                if self.keep:
                    self.seen += data

    def wait_for(self, marker: bytes, timeout: float = 60.0) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            with self._lock:
                if marker in self.seen:
                    return time.monotonic()
            time.sleep(0.01)
        raise RuntimeError(f"no {marker!r} within {timeout} s")

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def bytes_between(self, a: float, b: float) -> int:
        with self._lock:
            return sum(n for t, n in self.reads if a <= t < b)

    def close(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)
        os.close(self.fd)
        self._thread.join(timeout=2)


def measure_tui_bytes(ws_path: Path, cols: int, rows: int, seconds: float, settle: float = 8.0) -> dict:
    term = Pty([*torchdeck_command(), "--workspace", str(ws_path)], cols, rows)
    try:
        first = term.wait_for(b"Models")
        term.send(b"3")
        t_switch = time.monotonic()
        time.sleep(settle)  # the screen switch and the run's history replay
        a = time.monotonic()
        time.sleep(seconds)
        b = time.monotonic()
        return {"bytes_per_s": round(term.bytes_between(a, b) / (b - a)),
                "switch_bytes": term.bytes_between(t_switch, a), "first_frame_bytes": term.bytes_between(0, first + 0.5)}
    finally:
        term.close()


def case_wire(args) -> dict:
    out: dict = {"rate_per_s": args.rate, "seconds": args.seconds, "sizes": {}}
    pressure = Pressure()
    top = shutil.which("top")
    for size in args.sizes:
        cols, rows = parse_size(size)
        entry = {}
        with tempfile.TemporaryDirectory() as tmp:
            ws = Workspace.open(Path(tmp) / "ws")
            make_history(ws, 20_000, name="finished")
            progress(f"wire {size}: idle (a finished run shown, nothing streaming) ...")
            entry["idle"] = measure_tui_bytes(Path(tmp) / "ws", cols, rows, args.seconds)
            progress(f"wire {size}: streaming {args.rate:.0f} losses/s ...")
            _run_id, proc = start_stream(ws, args.rate, args.seconds + 40)
            time.sleep(1.0)
            try:
                entry["streaming"] = measure_tui_bytes(Path(tmp) / "ws", cols, rows, args.seconds)
            finally:
                proc.terminate()
                proc.join()
        if top:
            progress(f"wire {size}: top -d 0.5 ...")
            term = Pty([top, "-d", "0.5"], cols, rows)
            try:
                time.sleep(1.5)
                a = time.monotonic()
                time.sleep(args.seconds)
                b = time.monotonic()
                entry["top_d0.5"] = {"bytes_per_s": round(term.bytes_between(a, b) / (b - a))}
            finally:
                term.close()
        out["sizes"][size] = entry
    out["top"] = top
    out["htop"] = shutil.which("htop")
    out["cpu_pressure"] = pressure.share()
    return out


def print_wire(r: dict) -> None:
    print(f"bytes written to the terminal, {r['seconds']} s windows, {r['rate_per_s']:.0f} losses/s streaming, "
          f"CPU pressure {r['cpu_pressure']:.0%}")
    print("  size     streaming B/s   idle B/s   top -d 0.5 B/s   screen switch (3) B")
    for size, e in r["sizes"].items():
        top = e.get("top_d0.5", {}).get("bytes_per_s", "n/a")
        print(f"  {size:8} {e['streaming']['bytes_per_s']:13,}   {e['idle']['bytes_per_s']:8,}   {top!s:>14}   "
              f"{e['streaming']['switch_bytes']:,}")
    print(f"  top: {r['top'] or 'not installed'}; htop: {r['htop'] or 'not installed'}")


# -- 4. memory ---------------------------------------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(steps: int) -> dict:
    """In this (fresh) process: feed a RunView the way the Training screen does and measure."""
    import numpy  # noqa: F401  (imported before the baseline: the screen has it by then)
    from torchdeck.runs.view import RunView
    from torchdeck.tui.widgets import RunLogLines

    view = RunView("bench")
    log = RunLogLines(view)
    log.feed([ev.Started("bench", {"model": "bench", "epochs": 1}, steps, EPOCH_STEPS, 220, "cpu", 0.0)])
    rng = random.Random(0)
    gc.collect()
    before = rss_bytes()
    t = time.perf_counter()
    batch: list[ev.Event] = []
    per_batch = 200  # about what one 1 MiB read of the tail holds (3 records a chunk of 250)
    for first in range(1, steps + 1, CHUNK):
        last = min(steps, first + CHUNK - 1)
        epoch = (first - 1) // EPOCH_STEPS + 1
        batch.append(ev.Losses(first, epoch, [loss_at(s, rng) for s in range(first, last + 1)], [], last / 4000))
        batch.append(ev.Scalars("lr", [0.1 * (1 - last / steps) + 1e-4], first_step=last))
        batch.append(ev.Scalars("grad_norm", [0.5 + rng.random()], first_step=last))
        if last % EPOCH_STEPS == 0:
            batch.append(ev.EpochEnd(epoch, last, 0.5, 0.55, EPOCH_STEPS / 4000))
        if len(batch) >= per_batch * 3 or last == steps:
            log.feed(batch)  # the view, then the log's index (what _run_update does)
            view.metrics["loss"].ema(0.6).last  # the header's smoothed loss (default smoothing)
            batch = []
    seconds = time.perf_counter() - t
    batch = None
    gc.collect()
    after = rss_bytes()
    series = {name: {"points": len(s), "nbytes": s.nbytes, "ema_nbytes": s.ema_nbytes} for name, s in view.metrics.items()}
    own = sum(s["nbytes"] + s["ema_nbytes"] for s in series.values())
    return {"steps": steps, "rss_before_mib": round(before / 2**20, 1), "rss_growth_mib": round((after - before) / 2**20, 1),
            "view_nbytes_mib": round(own / 2**20, 2), "series": series, "feed_seconds": round(seconds, 2),
            "rss_growth_mib_per_million": round((after - before) / 2**20 / (steps / 1e6), 2),
            "view_mib_per_million": round(own / 2**20 / (steps / 1e6), 2)}


def case_memory(args) -> dict:
    out = []
    pressure = Pressure()
    for steps in args.steps:
        progress(f"memory: {steps:,} steps in a fresh process ...")
        proc = subprocess.run([sys.executable, __file__, "memory-child", "--steps", str(steps)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        out.append(json.loads(proc.stdout))
    return {"runs": out, "cpu_pressure": pressure.share()}


def print_memory(r: dict) -> None:
    print(f"memory of the watched history (fresh process each, CPU pressure {r['cpu_pressure']:.0%})")
    print("  steps        RSS growth   per 1M steps   RunView nbytes (series + EMA)   per 1M   feed time")
    for x in r["runs"]:
        print(f"  {x['steps']:>10,}   {x['rss_growth_mib']:7.1f} MiB   {x['rss_growth_mib_per_million']:6.2f} MiB   "
              f"{x['view_nbytes_mib']:10.2f} MiB{'':18}{x['view_mib_per_million']:6.2f} MiB   {x['feed_seconds']:.1f} s")
        for name, s in x["series"].items():
            print(f"      {name:10} {s['points']:>10,} points  {s['nbytes'] / 2**20:8.2f} MiB  "
                  f"EMA {s['ema_nbytes'] / 2**20:6.2f} MiB")
    print("  target: <= 8 MiB per million steps per metric (loss is the one metric with a point every step)")


# -- 5. watched vs headless throughput -----------------------------------------------------------
def train_once(args, watched: bool) -> dict:
    ws = Path(tempfile.mkdtemp(prefix="torchdeck-monitor-"))
    term = None
    try:
        Workspace.open(ws)
        if watched:
            term = Pty([*torchdeck_command(), "--workspace", str(ws)], 120, 40)
            term.wait_for(b"Models")
            term.send(b"3")
            time.sleep(4.0)  # the app's background torch import done before training starts
        pressure = Pressure()
        cmd = [*torchdeck_command(), "train", "--model", "builtin:linear", "--dataset-size", str(args.dataset_size),
               "--no-checkpoints", "--json", "--detach", "--workspace", str(ws), "--epochs", str(args.epochs),
               "--batch-size", "16", "--lr", "0.01", "--optimizer", "sgd", "--seed", "0", "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"train exited {proc.returncode}: {proc.stderr[-2000:]}")
        run_id = json.loads(proc.stdout)["id"]
        run_dir = ws / "runs" / run_id
        store = RunStore(Workspace.open(ws))
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            time.sleep(0.5)  # cheap: one status read a half second
            from torchdeck.options import FINAL_STATES

            if store.get(run_id).observed_state() in FINAL_STATES:
                break
        stats = read_events(run_dir / "events.jsonl")
        watched_ok = None
        if term is not None:
            watched_ok = run_id.encode() in bytes(term.seen) or b"step" in bytes(term.seen)
        return {"watched": watched, "steps": stats["steps"], "train_seconds": stats["train_seconds"],
                "steps_per_s": stats["steps"] / stats["train_seconds"], "cpu_pressure": pressure.share(),
                "tui_output_bytes": sum(n for _, n in term.reads) if term else 0, "tui_saw_run": watched_ok}
    finally:
        if term is not None:
            term.close()
        shutil.rmtree(ws, ignore_errors=True)


def case_throughput(args) -> dict:
    runs = []
    for i in range(args.repeats):
        for watched in (False, True):
            progress(f"throughput: repeat {i + 1}/{args.repeats}, {'watched by the TUI' if watched else 'headless'} ...")
            runs.append(train_once(args, watched))
            progress(f"  {runs[-1]['steps_per_s']:,.0f} steps/s (CPU pressure {runs[-1]['cpu_pressure']})")
    head = [r["steps_per_s"] for r in runs if not r["watched"]]
    seen = [r["steps_per_s"] for r in runs if r["watched"]]
    return {"runs": runs, "headless_median": round(statistics.median(head)),
            "watched_median": round(statistics.median(seen)),
            "ratio": round(statistics.median(seen) / statistics.median(head), 3), "epochs": args.epochs,
            "threads": args.threads}


def print_throughput(r: dict) -> None:
    print(f"training throughput, builtin:linear, {r['epochs']} epochs, {r['threads']} torch thread(s), interleaved")
    for x in r["runs"]:
        print(f"  {'watched ' if x['watched'] else 'headless'}  {x['steps_per_s']:8,.0f} steps/s  "
              f"CPU pressure {x['cpu_pressure']}" + (f"  TUI wrote {x['tui_output_bytes']:,} B" if x["watched"] else ""))
    print(f"  median: headless {r['headless_median']:,} steps/s, watched {r['watched_median']:,} steps/s: "
          f"ratio {r['ratio']}   (target >= 0.95)")


# -- main --------------------------------------------------------------------------------------
CASES = {"replay": (case_replay, print_replay), "keys": (case_keys, print_keys), "wire": (case_wire, print_wire),
         "memory": (case_memory, print_memory), "throughput": (case_throughput, print_throughput)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("case", choices=[*CASES, "all", "memory-child"])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--steps", type=int, nargs="+", help="replay: 1000000; memory: 1000000 10000000")
    ap.add_argument("--size", default="120x40", help="replay, keys: the headless terminal")
    ap.add_argument("--cold", action="store_true",
                    help="replay: press 3 one second after start, while the app still imports torch in the "
                         "background (it holds the GIL for seconds); by default 3 is pressed once that is done")
    ap.add_argument("--rate", type=float, default=4000.0, help="keys, wire: losses a second streamed")
    ap.add_argument("--rounds", type=int, default=9, help=f"keys: rounds of the {len(KEYS)} keys")
    ap.add_argument("--no-loss-latency", dest="loss_latency", action="store_false",
                    help="keys: skip running bench_loss_latency.py")
    ap.add_argument("--seconds", type=float, default=10.0, help="wire: the measured window")
    ap.add_argument("--sizes", nargs="+", default=["80x24", "200x60"], help="wire: terminal sizes")
    ap.add_argument("--repeats", type=int, default=3, help="throughput: runs of each side")
    ap.add_argument("--epochs", type=int, default=7, help="throughput")
    ap.add_argument("--dataset-size", type=int, default=49152, help="throughput")
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="throughput")
    args = ap.parse_args()
    if args.case == "memory-child":
        print(json.dumps(memory_child(args.steps[0])))
        return 0
    cases = list(CASES) if args.case == "all" else [args.case]
    results = {}
    for name in cases:
        run, show = CASES[name]
        a = argparse.Namespace(**vars(args))
        if a.steps is None:
            a.steps = 1_000_000 if name == "replay" else [1_000_000, 10_000_000]
        elif name == "replay":
            a.steps = a.steps[0]
        results[name] = run(a)
        if not args.json:
            show(results[name])
            print()
    if args.json:
        print(json.dumps(results if args.case == "all" else results[args.case], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
