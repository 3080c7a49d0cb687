"""A metric history of 1,000,000 (and 10,000,000) steps: feeding, replay, per-column reduction, memory.

    python benchmarks/bench_history.py [--steps 1000000] [--big 10000000] [--repeats 5] [--json]

Prints:
- RunView.feed of a generated 1M-step history (4,000 loss chunks of 250 with `elapsed`, plus
  grad_norm and lr per chunk and a sparse val_loss), best and median of the repeats;
- replay of the same history written as events.jsonl, through EventTail + RunView;
- Series.columns() over random zoom windows (and the whole range) at 80 and 200 columns, p50
  and max, on the 1M series and the 10M one;
- the first ema(0.6) of the 1M series and its extension by one chunk;
- bytes per point at 1M and 10M (Series.nbytes, and tracemalloc's count of what building the
  series allocated), next to the earlier array('q') + array('d') layout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from array import array
from pathlib import Path

from torchdeck.runs import events as ev
from torchdeck.runs.history import Series
from torchdeck.runs.view import RunView

CHUNK = 250


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def make_events(steps: int, dense: bool = False) -> list[ev.Event]:
    """What the training loop writes: a loss chunk, grad_norm and lr at the chunk's last step,
    val_loss every 10,000 steps; `dense`: grad_norm and lr at every step instead."""
    import numpy as np

    rng = np.random.default_rng(0)
    out: list[ev.Event] = [ev.Started("bench", {"model": "demo"}, steps, steps, 0, "cpu", 1_700_000_000.0)]
    for first in range(1, steps + 1, CHUNK):
        last = min(steps, first + CHUNK - 1)
        k = last - first + 1
        losses = (2.0 / np.sqrt(np.arange(first, last + 1)) + rng.normal(0, 0.01, k)).astype(np.float32).tolist()
        out.append(ev.Losses.from_floats(first, 1, losses, elapsed=last / 4000))
        if dense:
            out.append(ev.Scalars.from_points("grad_norm", list(range(first, last + 1)),
                                              rng.gamma(2.0, 0.5, k).astype(np.float32).tolist()))
            out.append(ev.Scalars("lr", [1e-3] * k, first_step=first))
        else:
            out.append(ev.Scalars.from_points("grad_norm", [last], [float(rng.gamma(2.0, 0.5))]))
            out.append(ev.Scalars.from_points("lr", [last], [1e-3]))
        if last % 10_000 == 0:
            out.append(ev.Scalars.from_points("val_loss", [last], [float(losses[-1])]))
    return out


def timed(fn, repeats: int) -> dict[str, float]:
    """Wall and CPU seconds (this process's CPU time: steadier on a shared machine)."""
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {"best": min(wall), "median": statistics.median(wall), "cpu_best": min(cpu),
            "cpu_median": statistics.median(cpu)}


def bench_columns(s: Series, n_cols: int, windows: int, seed: int = 1) -> dict[str, float]:
    import numpy as np

    rng = np.random.default_rng(seed)
    lo, hi = s.x_range()
    times = []
    for i in range(windows):
        if i == 0:
            a, b = lo, hi
        else:  # zoom windows from a few hundred steps to the whole run
            width = (hi - lo) * 10 ** rng.uniform(-3.5, 0)
            a = rng.uniform(lo, hi - width)
            b = a + width
        t = time.perf_counter()
        s.columns(a, b, n_cols)
        times.append(time.perf_counter() - t)
    times.sort()
    return {"p50_ms": 1000 * statistics.median(times), "p95_ms": 1000 * times[int(0.95 * (len(times) - 1))],
            "max_ms": 1000 * times[-1]}


def build_series(steps: int) -> Series:
    import numpy as np

    s = Series()
    s.mark_time(0.0)
    rng = np.random.default_rng(2)
    block = 1_000_000
    for base in range(0, steps, block):
        vals = (1.0 + rng.normal(0, 0.1, min(block, steps - base))).astype(np.float32)
        for first in range(0, len(vals), CHUNK):
            s.extend(base + first + 1, vals[first:first + CHUNK].tolist(), (base + first + CHUNK) / 4000)
    return s


def traced_bytes(steps: int) -> tuple[Series, int]:
    """(the series, bytes still allocated by building it) under tracemalloc."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    s = build_series(steps)
    import gc

    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return s, after - before


def old_layout_bytes(steps: int) -> int:
    steps_a, values_a = array("q"), array("d")
    for i in range(steps):
        steps_a.append(i + 1)
        values_a.append(1.0)
    return steps_a.buffer_info()[1] * 8 + values_a.buffer_info()[1] * 8


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=1_000_000)
    p.add_argument("--big", type=int, default=10_000_000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--windows", type=int, default=200)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    import numpy as np


    res: dict = {"steps": args.steps, "loadavg": os.getloadavg()}
    log(f"generating {args.steps:,} steps of events ...")
    events = make_events(args.steps)
    n_loss_chunks = sum(isinstance(e, ev.Losses) for e in events)
    res["events"] = {"records": len(events), "loss_chunks": n_loss_chunks}

    def feed():
        v = RunView("bench")
        v.feed(events)
        assert v.metrics["loss"].count == args.steps

    res["feed_s"] = timed(feed, args.repeats)
    dense = make_events(args.steps, dense=True)
    res["feed_dense_s"] = timed(lambda: RunView("bench").feed(dense), args.repeats)
    dense = None  # free it

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "events.jsonl"
        with open(path, "w") as f:
            for e in events:
                f.write(ev.dumps(e) + "\n")
        res["events_file_mb"] = path.stat().st_size / 1e6

        def replay():
            v = RunView("bench")
            tail = ev.EventTail(path)
            for batch in tail.read_batches():
                v.feed(batch)
            assert v.metrics["loss"].count == args.steps

        res["replay_s"] = timed(replay, args.repeats)

        def parse_only():
            for _ in ev.EventTail(path).read_batches():
                pass

        res["parse_only_s"] = timed(parse_only, args.repeats)
    events = None  # free it

    view = RunView("bench")
    view.feed(make_events(args.steps))
    loss = view.metrics["loss"]
    res["columns_1m"] = {n: bench_columns(loss, n, args.windows) for n in (80, 200)}
    res["columns_1m_time_axis"] = {n: bench_columns_time(loss, n, args.windows) for n in (80, 200)}

    t = time.perf_counter()
    loss.ema(0.6)
    res["ema_first_ms"] = 1000 * (time.perf_counter() - t)
    res["ema_first_0.99_ms"] = 1000 * timed(lambda: (loss._ema.pop(0.99, None), loss.ema(0.99)), 1)["best"]
    chunk = np.float32(np.random.default_rng(3).normal(0, 1, CHUNK)).tolist()
    t = time.perf_counter()
    for _ in range(200):
        loss.extend(loss.last_step + 1, chunk, None)
    res["extend_with_2_emas_us"] = 1e6 * (time.perf_counter() - t) / 200
    loss._ema.clear()
    t = time.perf_counter()
    for _ in range(200):
        loss.extend(loss.last_step + 1, chunk, None)
    res["extend_us"] = 1e6 * (time.perf_counter() - t) / 200

    s1, traced1 = traced_bytes(args.steps)
    res["bytes_per_point_1m"] = {"nbytes": s1.nbytes / len(s1), "traced": traced1 / len(s1)}
    s1.ema(0.6)
    res["bytes_per_point_1m"]["with_one_ema"] = (s1.nbytes + s1.ema_nbytes) / len(s1)
    del s1
    res["old_layout_bytes_per_point"] = old_layout_bytes(args.steps) / args.steps
    if args.big:
        log(f"building {args.big:,} points ...")
        t = time.perf_counter()
        sb, tracedb = traced_bytes(args.big)
        res["build_big_s"] = time.perf_counter() - t
        res["bytes_per_point_big"] = {"points": len(sb), "nbytes": sb.nbytes / len(sb), "traced": tracedb / len(sb)}
        res["columns_big"] = {n: bench_columns(sb, n, args.windows) for n in (80, 200)}

    if args.json:
        print(json.dumps(res, indent=1))
        return
    print(f"history of {args.steps:,} steps: {res['events']['records']:,} records "
          f"({n_loss_chunks:,} loss chunks of {CHUNK}), events.jsonl {res['events_file_mb']:.0f} MB")
    def line(label, r):
        print(f"{label:<48} wall best {r['best']:.3f} s  median {r['median']:.3f} s | "
              f"CPU best {r['cpu_best']:.3f} s  median {r['cpu_median']:.3f} s")

    line("RunView.feed (events in memory)", res["feed_s"])
    line("  the same, grad_norm and lr at every step", res["feed_dense_s"])
    line("replay: EventTail + RunView", res["replay_s"])
    line("  of which EventTail alone (read + parse)", res["parse_only_s"])
    for key, label in (("columns_1m", f"{args.steps:,}, step axis"),
                       ("columns_1m_time_axis", f"{args.steps:,}, time axis"),
                       ("columns_big", f"{args.big:,}, step axis")):
        for n, r in res.get(key, {}).items():
            print(f"columns() {label:>22}, {n:3d} cols: p50 {r['p50_ms']:.3f} ms  p95 {r['p95_ms']:.3f} ms  "
                  f"max {r['max_ms']:.3f} ms "
                  f"({args.windows} windows)")
    print(f"ema(0.6) first: {res['ema_first_ms']:.1f} ms   ema(0.99) first: {res['ema_first_0.99_ms']:.1f} ms   "
          f"extend by {CHUNK}: {res['extend_us']:.0f} us, with 2 EMAs cached {res['extend_with_2_emas_us']:.0f} us")
    b = res["bytes_per_point_1m"]
    print(f"bytes/point at {args.steps:,}: nbytes {b['nbytes']:.2f}, traced {b['traced']:.2f}, with one EMA {b['with_one_ema']:.2f}")
    if args.big:
        b = res["bytes_per_point_big"]
        print(f"bytes/point at {b['points']:,}: nbytes {b['nbytes']:.2f}, traced {b['traced']:.2f} "
              f"(built in {res['build_big_s']:.1f} s)")
    print(f"old layout array('q') + array('d'): {res['old_layout_bytes_per_point']:.2f} bytes/point")
    print(f"load average while measuring: {res['loadavg']}")


def bench_columns_time(s: Series, n_cols: int, windows: int) -> dict[str, float]:
    import numpy as np

    rng = np.random.default_rng(5)
    lo, hi = s.x_range("time")
    times = []
    for i in range(windows):
        width = (hi - lo) if i == 0 else (hi - lo) * 10 ** rng.uniform(-3.5, 0)
        a = lo if i == 0 else rng.uniform(lo, hi - width)
        t = time.perf_counter()
        s.columns(a, a + width, n_cols, axis="time")
        times.append(time.perf_counter() - t)
    times.sort()
    return {"p50_ms": 1000 * statistics.median(times), "p95_ms": 1000 * times[int(0.95 * (len(times) - 1))],
            "max_ms": 1000 * times[-1]}


if __name__ == "__main__":
    main()
