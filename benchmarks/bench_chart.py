"""MetricChart redraw cost: a full redraw (every curve's columns, the braille raster, the strips)
of long histories at 200x60 cells, and the cost of a frame when nothing changed.

    python benchmarks/bench_chart.py [--points 1000000 10000000] [--repeats 50] [--size 200x60] [--json]

For each history length, 1 and 4 overlaid curves, smoothing off and on (0.6): p50/p95 of
`repeats` full redraws (MetricChart.draw: no cache), the chart's own share of them (the time
outside Series.columns), p50 of an unchanged frame (poll() and every row, served from the cache)
and of a cursor move (the data frame kept: the cursor, the readout and the rows redone). The
smoothed Series is the Series' own EMA, cached per weight and extended as points arrive, so a
redraw pays for its columns, not for smoothing.

The Series is torchdeck's own (engine/runs/history.py), fed in chunks of 100,000 as a replay
feeds it. Series.ema(0.6) built from scratch is timed once per length (a live chart extends it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from torchdeck.runs.view import Series
from torchdeck.tui.widgets.chart import Curve, MetricChart


def make_series(values: np.ndarray) -> Series:
    s = Series()
    for a in range(0, len(values), 100_000):  # as a replay feeds it, chunk by chunk
        s.extend(a, values[a:a + 100_000], elapsed=(a + 100_000) / 4000)
    return s


def loss_curve(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    v = 2.5 * np.exp(-t / (n / 5)) + 0.2 + rng.normal(0, 0.05, n)
    v[n // 3] = 40.0  # a spike: the envelope must show it
    v[n // 2] = np.nan
    return v


class Timed:
    """A Series whose columns() calls (its own and its EMA's) add their time to `spent`: the
    benchmark splits a redraw into the Series' reduction and the chart's own drawing."""

    def __init__(self, series, spent: list[float]):
        self._s, self._spent = series, spent

    def __getattr__(self, name):
        return getattr(self._s, name)

    def __len__(self):
        return len(self._s)

    @property
    def revision(self):
        return self._s.revision

    def columns(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self._s.columns(*args, **kwargs)
        finally:
            self._spent[0] += time.perf_counter() - t0

    def ema(self, weight):
        return Timed(self._s.ema(weight), self._spent)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def measure(curves: list[Curve], smoothing: float, width: int, height: int, repeats: int) -> dict:
    spent = [0.0]
    chart = MetricChart("loss")
    chart.set_curves([Curve(Timed(c.series, spent), c.label, c.color, c.markers) for c in curves])
    chart.smoothing = smoothing
    chart.draw(width, height)  # warm: numpy tables, the smoothed series
    full, own = [], []
    for _ in range(repeats):
        spent[0] = 0.0
        t0 = time.perf_counter()
        strips = chart.draw(width, height)
        full.append(time.perf_counter() - t0)
        own.append(full[-1] - spent[0])
    assert len(strips) == height and all(s.cell_length == width for s in strips)
    # Unchanged frame: what the screen's timer and Textual's compositor pay when nothing moved.
    chart.strips(width, height)
    redraws = chart.redraws
    idle = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        chart.poll()
        rows = chart.strips(width, height)
        for y in range(height):
            rows[y]
        idle.append(time.perf_counter() - t0)
    assert chart.redraws == redraws, "an unchanged frame redrew"
    # Cursor moves: the data frame is kept, only the cursor, the readout and the rows are redone.
    lo, hi = chart._x_window
    chart.cursor = lo
    chart.strips(width, height)
    redraws = chart.redraws
    moves = []
    for i in range(repeats):
        chart.cursor = lo + (hi - lo) * (i + 1) / (repeats + 1)
        t0 = time.perf_counter()
        chart.strips(width, height)
        moves.append(time.perf_counter() - t0)
    assert chart.redraws == redraws, "a cursor move recomputed the data frame"
    return {"p50_ms": pct(full, 0.5) * 1e3, "p95_ms": pct(full, 0.95) * 1e3,
            "chart_own_p50_ms": pct(own, 0.5) * 1e3,
            "idle_p50_us": pct(idle, 0.5) * 1e6, "cursor_move_p50_ms": pct(moves, 0.5) * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--size", default="200x60")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    width, height = map(int, args.size.split("x"))
    impl = "torchdeck.runs.view.Series"
    results = []
    for n in args.points:
        print(f"building 4 series of {n:,} points ({impl})", file=sys.stderr)
        series = [make_series(loss_curve(n, seed)) for seed in range(4)]
        t0 = time.perf_counter()
        series[0].ema(0.6)
        ema_s = time.perf_counter() - t0
        colors = ["cyan", "magenta", "yellow", "green"]
        for k in (1, 4):
            curves = [Curve(s, f"run{i}", colors[i]) for i, s in enumerate(series[:k])]
            for smoothing in (0.0, 0.6):
                print(f"  {n:,} points x{k} curves, smoothing {smoothing}", file=sys.stderr)
                r = measure(curves, smoothing, width, height, args.repeats)
                results.append({"points": n, "curves": k, "smoothing": smoothing, **r})
        results.append({"points": n, "ema_once_s": ema_s})
        del series
    doc = {"series": impl, "size": f"{width}x{height}", "repeats": args.repeats, "results": results}
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    print(f"MetricChart at {width}x{height}, {args.repeats} redraws each, Series: {impl}")
    print("| points | curves | smoothing | full redraw p50 | p95 | of which chart (not columns) p50 "
          "| unchanged frame p50 | cursor move p50 |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        if "ema_once_s" in r:
            continue
        print(f"| {r['points']:,} | {r['curves']} | {r['smoothing']} | {r['p50_ms']:.1f} ms | "
              f"{r['p95_ms']:.1f} ms | {r['chart_own_p50_ms']:.1f} ms | {r['idle_p50_us']:.0f} us | "
              f"{r['cursor_move_p50_ms']:.1f} ms |")
    for r in results:
        if "ema_once_s" in r:
            print(f"Series.ema(0.6) of {r['points']:,} points: {r['ema_once_s'] * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
