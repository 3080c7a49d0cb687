"""The compact metric history: exact per-column reductions, TensorBoard's smoothing, time, resume."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from torchdeck.runs import events as ev
from torchdeck.runs.history import LEAF, Series
from torchdeck.runs.view import RunView


def brute_columns(steps, values, x_lo, x_hi, n):
    """Column i holds the points with edges[i] <= x < edges[i+1] (the last: <= x_hi), with
    edges[i] = x_lo + i*w as Series.columns computes them; each column reduced on its own."""
    x, v = np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64)
    w = (x_hi - x_lo) / n
    edges = x_lo + np.arange(n + 1) * w
    edges[n] = x_hi
    out = []
    for i in range(n):
        inside = (x >= edges[i]) & ((x <= edges[i + 1]) if i == n - 1 else (x < edges[i + 1]))
        pts = v[inside]
        fin = pts[np.isfinite(pts)]
        last = float(pts[-1]) if len(pts) and math.isfinite(pts[-1]) else math.nan
        out.append((len(pts), float(fin.min()) if len(fin) else math.nan, float(fin.max()) if len(fin) else math.nan,
                    last, bool((~np.isfinite(pts)).any())))
    return out


def as_rows(c):
    return [(int(c.count[i]), float(c.min[i]), float(c.max[i]), float(c.last[i]), bool(c.nonfinite[i]))
            for i in range(len(c.count))]


def same(a, b):
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        for p, q in zip(x, y):
            assert p == q or (isinstance(p, float) and math.isnan(p) and math.isnan(q)), (i, x, y)


def random_series(rng: random.Random, n_points: int):
    s = Series()
    steps, values = [], []
    step = rng.randint(-5, 5)
    while len(steps) < n_points:
        k = min(n_points - len(steps), rng.choice([1, 3, 64, 250, 700]))
        chunk = []
        for _ in range(k):
            r = rng.random()
            chunk.append(None if r < 0.03 else math.inf if r < 0.04 else -math.inf if r < 0.05
                         else rng.uniform(-1e3, 1e3))
        if rng.random() < 0.7:
            s.extend(step, chunk)
            st = list(range(step, step + k))
        else:
            st, at = [], step
            for _ in range(k):
                st.append(at)
                at += rng.choice([0, 1, 1, 3, 10])
            s.add_points(st, chunk)
        steps += st
        values += [math.nan if v is None else float(np.float32(v)) for v in chunk]
        step = st[-1] + rng.choice([0, 1, 1, 5])
    return s, steps, values


@pytest.mark.parametrize("seed", range(6))
def test_columns_equal_a_brute_force_reduction(seed):
    rng = random.Random(seed)
    s, steps, values = random_series(rng, rng.choice([1, 2, 63, 64, 65, 1000, 5000]))
    assert len(s) == len(steps) and list(s.steps_array()) == steps
    lo, hi = steps[0], steps[-1]
    windows = [(lo, hi), (lo - 100, hi + 100), (hi + 1, hi + 50), (lo - 50, lo - 1), (lo, lo), (hi, hi)]
    for _ in range(12):
        a, b = sorted(rng.uniform(lo - 20, hi + 20) for _ in range(2))
        windows.append((a, b))
    for x_lo, x_hi in windows:
        for n in (1, 7, rng.randint(1, 500), 500):
            got = as_rows(s.columns(x_lo, x_hi, n))
            same(got, brute_columns(steps, values, x_lo, x_hi, n))


def test_columns_of_a_single_point_and_an_empty_series():
    s = Series()
    c = s.columns(0, 10, 5)
    assert c.count.tolist() == [0] * 5 and np.isnan(c.min).all() and not c.nonfinite.any()
    s.add(7, 2.5)
    c = s.columns(7, 7, 3)  # x_lo == x_hi: only the closed last column holds the point
    assert c.count.tolist() == [0, 0, 1] and c.min[2] == c.max[2] == c.last[2] == 2.5
    assert s.columns(0, 6.99, 4).count.sum() == 0


def test_columns_refuse_bad_requests_clearly():
    s = Series()
    s.extend(1, [1.0, 2.0])
    for bad in [(0, 1, 0), (0, 1, -3), (0, 1, 10**9), (0, 1, 2.5), (math.nan, 1, 4), (0, math.inf, 4), (5, 1, 4)]:
        with pytest.raises(ValueError):
            s.columns(*bad)
    with pytest.raises(ValueError):
        s.columns(0, 1, 4, axis="epoch")


def test_stats_are_exact_float64_and_values_float32():
    s = Series()
    s.extend(1, [0.1, None, 1e300, -0.3])
    assert s.to_json() == {"count": 4, "last": -0.3, "min": -0.3, "max": 1e300, "nonfinite": 1}
    v = s.values_array()
    assert v.dtype == np.float32 and math.isnan(v[1]) and math.isfinite(v[2])  # clipped, still finite
    c = s.columns(1, 4, 1)
    assert not math.isinf(c.max[0]) and c.nonfinite[0]


def test_steps_never_go_backwards_and_hostile_values_fail_clearly():
    s = Series()
    s.extend(10, [1.0, 2.0, 3.0])
    s.extend(5, [9.0] * 10)  # steps 5..14: the ones below 12 are dropped, 12 is kept twice
    assert s.steps_array().tolist() == [10, 11, 12, 12, 13, 14]
    assert s.last_step == 14 and s.dropped == 7 and s.count == 6
    s.add_points([20, 19, 21], [1.0, 2.0, 3.0])
    assert s.steps_array().tolist()[-2:] == [20, 21] and s.dropped == 8
    with pytest.raises(ValueError):
        s.extend(30, ["x", 1.0])
    with pytest.raises(ValueError):
        s.add_points([1, 2], [1.0])
    with pytest.raises(ValueError):  # a long chunk takes the NumPy path: the same refusal
        s.extend(40, ["x"] * 20)
    with pytest.raises(ValueError):
        s.add_points(list(range(50, 70)), [[1.0]] * 20)
    with pytest.raises(ValueError):
        s.extend(80, [10**400] * 20)
    assert len(s) == s.count == 8  # a refused chunk leaves nothing half-appended


def test_point_index_of_step_and_nearest():
    s = Series()
    s.add_points([0, 10, 20, 30], [1.0, None, 3.0, 4.0])
    s.extend(31, [5.0, 6.0])
    assert s.point(1)[0] == 10 and math.isnan(s.point(1)[1]) and s.point(-1) == (32, 6.0)
    with pytest.raises(IndexError):
        s.point(6)
    assert [s.index_of_step(x) for x in (-5, 0, 1, 10, 11, 31, 32, 33)] == [0, 0, 1, 1, 2, 4, 5, 6]
    assert s.nearest(14)[0] == 10 and s.nearest(16)[0] == 20 and s.nearest(15)[0] == 10
    assert s.nearest(1e18)[0] == 32 and s.nearest(-1e18)[0] == 0 and s.nearest(math.nan) is None
    assert Series().nearest(3) is None and Series().x_range() is None
    assert s.x_range() == (0.0, 32.0) and s.x_range("time") is None


def reference_ema(values, w):
    """TensorBoard's classicSmoothing, written out plainly."""
    first = values[0] if values else None
    if all(v == first for v in values):
        return list(values)
    last, n, out = 0.0, 0, []
    for v in values:
        if not math.isfinite(v):
            out.append(v)
            continue
        last = last * w + (1 - w) * v
        n += 1
        out.append(last / (1 if w == 1 else 1 - w ** n))
    return out


@pytest.mark.parametrize("w", [0.0, 0.3, 0.6, 0.9, 0.99, 0.999, 1.0])
def test_ema_matches_tensorboard_on_random_data_with_nan_and_inf(w):
    rng = random.Random(int(w * 1000))
    s = Series()
    first = True
    for _ in range(30):
        chunk = [rng.choice([None, math.inf, -math.inf]) if rng.random() < 0.05 else rng.gauss(3, 2)
                 for _ in range(rng.randint(1, 400))]
        s.extend(len(s) + 1, chunk)
        if first:
            s.ema(w)  # asked for early: then extended as points arrive
            first = False
    raw = [float(v) for v in s.values_array()]
    want = np.array(reference_ema(raw, w), dtype=np.float32)
    got = s.ema(w).values_array()
    assert len(got) == len(raw)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=2e-6, atol=1e-6)
    if w == 0:
        assert s.ema(w) is s


def test_ema_of_a_constant_series_is_the_series_until_it_changes():
    s = Series()
    s.extend(1, [0.7] * 10)
    e = s.ema(0.6)
    assert e.values_array().tolist() == s.values_array().tolist()
    s.extend(11, [0.1])
    raw = [float(v) for v in s.values_array()]
    np.testing.assert_allclose(s.ema(0.6).values_array(), reference_ema(raw, 0.6), rtol=1e-6)
    assert s.ema(math.nan) is s and len(s.ema(5)) == len(s)  # bad weights clamped like TensorBoard


def test_truncate_after_keeps_stats_reductions_smoothing_and_time_exact():
    s = Series()
    s.mark_time(0.0)
    s.extend(1, [5.0, 4.0, 3.0, 2.0], 1.0)
    s.extend(5, [100.0, 0.001, None], 2.0)
    s.ema(0.5)
    assert s.truncate_after(4) and not s.truncate_after(4)
    assert s.to_json() == {"count": 4, "last": 2.0, "min": 2.0, "max": 5.0, "nonfinite": 0}
    assert s.columns(0, 100, 1).max[0] == 5.0 and s.time_of(-1) == 1.0
    s.mark_time(10.0)
    s.extend(5, [1.5, 0.25], 10.5)
    assert s.steps_array().tolist() == [1, 2, 3, 4, 5, 6]
    assert [s.time_of(i) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 10.25, 10.5]
    raw = [float(v) for v in s.values_array()]
    np.testing.assert_allclose(s.ema(0.5).values_array(), reference_ema(raw, 0.5), rtol=1e-6)
    # inside a chunk: the rest is recomputed from the stored float32 values
    assert s.truncate_after(2)
    assert s.to_json() == {"count": 2, "last": 4.0, "min": 4.0, "max": 5.0, "nonfinite": 0}
    assert s.truncate_after(-100) and len(s) == 0 and s.to_json()["count"] == 0 and s.last_step is None


def test_truncate_restores_exact_stats_of_float32_losses_anywhere_and_of_others_at_chunk_ends():
    rng = random.Random(3)
    vals = [float(np.float32(rng.uniform(0, 10))) for _ in range(20000)]  # what a float32 loss gives
    s = Series()
    for i in range(0, len(vals), 250):
        s.extend(i + 1, vals[i:i + 250])
    for cut in (19999, 12345, 4097, 1):
        assert s.truncate_after(cut)
        kept = vals[:cut]
        assert s.to_json() == {"count": cut, "last": kept[-1], "min": min(kept), "max": max(kept), "nonfinite": 0}
    lrs = [0.1 * 0.999 ** i for i in range(1000)]  # Python floats that float32 would round
    lr = Series()
    for i in range(0, len(lrs), 100):
        lr.extend(i + 1, lrs[i:i + 100])
    assert lr.truncate_after(500)
    assert (lr.min, lr.max, lr.last, lr.count) == (min(lrs[:500]), 0.1, lrs[499], 500)


def test_time_columns_and_nearest_follow_the_anchors():
    s = Series()
    s.mark_time(0.0)
    s.extend(1, [1.0] * 4, 4.0)  # points at t = 1, 2, 3, 4
    s.extend(5, [2.0] * 2, 4.0)  # a clock that did not move: t = 4, 4
    s.extend(7, [3.0] * 2, 3.0)  # a clock that went back: held at 4
    assert s.times_array().tolist() == [1, 2, 3, 4, 4, 4, 4, 4] and s.x_range("time") == (1.0, 4.0)
    c = s.columns(0, 4, 4, axis="time")
    assert c.count.tolist() == [0, 1, 1, 6]
    assert s.nearest(2.4, axis="time")[:2] == (2, 2.0)


def run_events(steps=1000, chunk=250, resume_at=None):
    out = [ev.Started("r", {}, steps, steps, 0, "cpu", 1000.0)]
    for first in range(1, steps + 1, chunk):
        last = min(steps, first + chunk - 1)
        out.append(ev.Losses.from_floats(first, 1, [1.0 / s for s in range(first, last + 1)], elapsed=last / 100))
        out.append(ev.Scalars.from_points("grad_norm", [first, last], [float(first), float(last)]))
        out.append(ev.Scalars.from_points("lr", list(range(first, last + 1)), [0.1] * (last - first + 1)))
    return out


def test_runview_times_points_from_each_writers_start():
    events = run_events(1000)
    view = RunView("r")
    view.feed(events)
    loss = view.metrics["loss"]
    assert len(loss) == 1000 and loss.x_range("time") == pytest.approx((0.01, 10.0))
    assert loss.time_of(249) == 2.5 and view.metrics["grad_norm"].time_of(0) == loss.time_of(0)
    assert view.metrics["grad_norm"].time_of(-1) == 10.0 and view.metrics["lr"].count == 1000
    # a resume at step 500, a second writer started 100 s after the first, its clock from 0
    view.feed([ev.Resumed(500), ev.Started("r", {}, 1000, 1000, 0, "cpu", 1100.0),
               ev.Losses.from_floats(501, 1, [0.5] * 100, elapsed=1.0)])
    assert len(loss) == 600 and loss.time_of(499) == 5.0 and loss.time_of(-1) == 101.0
    assert loss.time_of(500) == pytest.approx(100.01)
    assert view.metrics_json()["loss"]["count"] == 600 and view.metrics["lr"].count == 500


def test_runview_replay_from_a_file_equals_feeding_events(tmp_path):
    path = tmp_path / "events.jsonl"
    events = run_events(3000, chunk=300)
    path.write_text("".join(ev.dumps(e) + "\n" for e in events))
    a, b = RunView("r"), RunView("r")
    a.feed(events)
    b.feed(ev.read_all(path))
    for name in ("loss", "grad_norm", "lr"):
        assert a.metrics[name].to_json() == b.metrics[name].to_json()
        assert a.metrics[name].values_array().tolist() == b.metrics[name].values_array().tolist()
    assert json.dumps(a.metrics_json())


def test_a_million_points_stay_under_8_mib_and_reduce_exactly_at_the_edges():
    s = Series()
    rng = np.random.default_rng(0)
    vals = rng.normal(size=1_000_000).astype(np.float32).astype(np.float64)  # a float32 loss's values
    vals[rng.integers(0, len(vals), 50)] = np.nan
    for first in range(0, len(vals), 250):
        s.extend(first + 1, vals[first:first + 250].tolist(), first / 1000)
    assert len(s) == 1_000_000 and s.nbytes <= 4.5 * 2**20
    s.ema(0.6)
    assert s.nbytes + s.ema_nbytes <= 8 * 2**20  # with the smoothed curve cached too
    s32 = vals.astype(np.float32)
    for lo, hi in [(1, 1_000_000), (1000.5, 1200.2), (LEAF * 7 + 3, LEAF * 9 - 1)]:
        c = s.columns(lo, hi, 200)
        steps = np.arange(1, len(vals) + 1)
        w = (hi - lo) / 200
        edges = lo + np.arange(201) * w
        edges[200] = hi
        a = np.searchsorted(steps, edges[:-1], side="left")
        b = np.append(a[1:], np.searchsorted(steps, hi, side="right"))
        for i in range(200):
            seg = s32[a[i]:b[i]]
            assert c.count[i] == len(seg)
            if len(seg):
                assert c.min[i] == np.nanmin(seg) and c.max[i] == np.nanmax(seg)
                assert c.nonfinite[i] == bool(np.isnan(seg).any())


def test_one_large_extend_across_storage_blocks_reduces_exactly():
    vals = np.random.default_rng(7).normal(size=150_000).astype(np.float32)
    vals[[65535, 65536, 131071]] = [np.inf, np.nan, -np.inf]
    s = Series()
    s.extend(0, vals.astype(np.float64).tolist())  # one call, three storage blocks
    assert len(s) == 150_000 and s.nonfinite == 3 and s.point(65536)[0] == 65536
    for lo, hi, n in [(65000, 66000, 7), (0, 149_999, 200), (131_000, 131_100, 100), (65535, 65536, 2)]:
        c = s.columns(lo, hi, n)
        same(as_rows(c), brute_columns(np.arange(150_000), vals.astype(np.float64), lo, hi, n))


def test_a_reader_under_the_lock_never_sees_a_half_appended_series():
    import threading

    s = Series()
    lock = threading.Lock()
    done = threading.Event()
    errors: list[str] = []
    chunk = [float(np.float32(v)) for v in np.random.default_rng(1).normal(size=250)]

    def writer():
        for i in range(400):
            with lock:
                s.extend(i * 250 + 1, chunk, elapsed=i * 0.1)
        done.set()

    def reader():
        while not done.is_set():
            with lock:
                if not len(s):
                    continue
                lo, hi = s.x_range()
                c = s.columns(lo, hi, 80)
                smooth = s.ema(0.6)
                if c.count.sum() != len(s) or len(smooth) != len(s) or s.last_step != len(s):
                    errors.append(f"{c.count.sum()} {len(smooth)} {s.last_step} {len(s)}")

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(s) == 100_000


def test_a_version_1_file_has_no_time_axis_and_falls_back_to_steps():
    view = RunView("r")
    view.feed([ev.Losses(1, 1, [3.0, 2.0, None, 1.0]), ev.Scalars("lr", [0.1, 0.2], first_step=1)])
    loss = view.metrics["loss"]
    assert loss.x_range("time") is None and loss.time_of(0) is None and not loss.has_time
    assert loss.columns(1, 4, 4, axis="time").count.tolist() == [1, 1, 1, 1]
    assert loss.nearest(2.2, axis="time") == (2, None, 2.0)
    assert view.metrics_json()["loss"] == {"count": 4, "last": 1.0, "min": 1.0, "max": 3.0, "nonfinite": 1}


def test_many_short_metrics_hold_little():
    """A step that logs thousands of names once each (per-layer norms, a hostile file) must not
    cost a block's worth of memory each: 10,000 one-point metrics hold under 10 MB."""
    from torchdeck.runs import events as ev
    from torchdeck.runs.view import RunView

    view = RunView("r")
    view.feed([ev.Scalars.from_points(f"layer{i}.grad_norm", [1], [float(i)]) for i in range(10_000)])
    assert len(view.metrics) == 10_001
    assert sum(s.nbytes for s in view.metrics.values()) < 10_000_000


def series_state(s: Series) -> dict:
    """Everything a Series holds, as plain lists (NaN as a string: NaN != NaN)."""
    def clean(xs):
        return ["nan" if isinstance(x, float) and x != x else x for x in xs]

    n_leaves = -(-len(s) // LEAF)
    return {
        "values": clean(s.values_array().astype(np.float64).tolist()), "steps": s.steps_array().tolist(),
        "times": None if s.times_array() is None else s.times_array().tolist(),
        "stats": clean([s.count, s.nonfinite, s.min, s.max, s.last, s.dropped, s._f32_exact]),
        "segments": (list(s._seg_idx), list(s._seg_step), list(s._seg_stride)),
        "anchors": (list(s._t_idx), list(s._t_val)),
        "checkpoints": (list(s._ck_n), list(s._ck_bad), clean(list(s._ck_f))),
        "leaves": None if s._lmin is None else (clean(s._lmin[:n_leaves].astype(np.float64).tolist()),
                                                clean(s._lmax[:n_leaves].astype(np.float64).tolist()),
                                                s._lbad[:n_leaves].tolist()),
        "ema": clean(s.ema(0.9).values_array().astype(np.float64).tolist()),
    }


def hostile_run(rng: random.Random, chunks: int = 60) -> list:
    """Losses chunks of mixed sizes (some small, one overlapping the step before), values that
    are float32 or not, NaN/inf, beyond float32's range; one-point and many-point scalars; a resume
    and a second writer's start in the middle. Every chunk carries `elapsed`, as every version 2
    writer's does (a scalar's time is its loss point's: gathered, a chunk without one would be
    timed by the next chunk's anchor rather than the last one before it)."""
    out = [ev.Started("r", {}, 0, 0, 0, "cpu", 1000.0)]
    step, t = 1, 0.0
    for c in range(chunks):
        k = rng.choice([1, 3, 8, 9, 50, 250, 700])
        if c == 20:
            step -= 2  # overlaps what was written (a relaunched writer)
        vals = []
        for _ in range(k):
            r = rng.random()
            vals.append(math.nan if r < 0.02 else math.inf if r < 0.03 else 1e39 if r < 0.035
                        else float(np.float32(rng.random())) if c < 30 else rng.random())
        t += rng.random()
        out.append(ev.Losses.from_floats(step, 1, vals, elapsed=t))
        last = step + k - 1
        if c == 19:
            step = last + 1
            continue  # no scalar on the step the next chunk repeats (two loss points hold it then)
        out.append(ev.Scalars.from_points("lr", [last], [rng.random() * 0.1]))
        out.append(ev.Scalars.from_points("grad_norm", [last], [math.nan if c % 11 == 0 else rng.random()]))
        if c % 9 == 0:
            out.append(ev.Scalars.from_points("lr", [last, last + 3], [0.5, 0.25]))  # many points of a batched name
        if c == 40:
            out.append(ev.Resumed(last - 100))
            out.append(ev.Started("r", {}, 0, 0, 0, "cpu", 1100.0))
            step, t = last - 99, 0.0
            continue
        step = last + 1
    return out


@pytest.mark.parametrize("seed", range(6))
def test_a_batch_fed_at_once_equals_its_records_fed_one_by_one(seed):
    """RunView.feed gathers consecutive losses chunks and one-point scalars into vectorized
    appends: the result is the same, to the last anchor, checkpoint and leaf, as one record a call."""
    events = hostile_run(random.Random(seed))
    one_by_one, at_once = RunView("r"), RunView("r")
    for e in events:
        one_by_one.feed([e])
    at_once.feed(events)
    assert set(one_by_one.metrics) == set(at_once.metrics)
    for name in one_by_one.metrics:
        assert series_state(at_once.metrics[name]) == series_state(one_by_one.metrics[name]), name
    assert one_by_one.metrics_json() == at_once.metrics_json()
    # and their checkpoints restore the same stats wherever a later resume cuts
    for cut in (37, 555, 4000, 9000):
        for view in (one_by_one, at_once):
            for series in view.metrics.values():
                series.truncate_after(cut)
        for name in one_by_one.metrics:
            assert series_state(at_once.metrics[name]) == series_state(one_by_one.metrics[name]), (name, cut)
