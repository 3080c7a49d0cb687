"""One metric's history, kept compactly and reduced per screen column as points arrive.

A `Series` holds a metric's points in step order:

- values as float32 in fixed-size blocks of BLOCK points (the last one grows: doubling from 64
  points, then GROW_STEP points at a time, so a short metric holds little and a long one at most
  32 KiB of slack; no block is ever copied once full): 4 bytes a point;
- steps as segments of evenly spaced steps (start index, first step, stride): a loss history
  written in consecutive chunks is one segment, a scalar logged every N steps one more;
- time as anchors (point index, seconds since the run's first start), one per appended chunk,
  the points between two anchors spaced evenly in time; a series without anchors has no time
  axis (`x_range("time")` is None and `axis="time"` falls back to steps);
- a finite min, finite max and a non-finite flag per LEAF points (one level of reduction,
  folded in as points arrive), so `columns()` reads about n_points / LEAF leaves (one
  `reduceat` each) plus two partial leaves per column, never the points: about a millisecond
  for a million or ten million points (benchmarks/bench_history.py);
- the running count/nonfinite/last/min/max of the incoming Python floats (exact float64), with
  checkpoints of them so that a truncation (a resume) restores them exactly: the points after
  the last checkpoint are recomputed from the stored float32 values, exact while every value is
  a float32 number (losses computed in float32 are: then a checkpoint every CK_EXACT_EVERY
  points), else a checkpoint per appended chunk (a resume inside a chunk then rounds the
  remainder's values to float32).

Steps never go backwards: a point whose step is below the last point's is dropped (and counted
in `dropped`); equal steps are kept. Finite values beyond float32's range are stored clipped to
+-3.4e38 (they stay finite on the chart; the stats keep the exact value). A null value is NaN.

Threads: every method that changes a Series (add, extend, add_points, mark_time,
truncate_after) and `ema()` (which may create a cached smoothed series) must run under the
lock that readers hold; every other read changes nothing, so readers holding that lock never
see a half-appended state.

numpy is imported inside the methods: `import torchdeck` stays light.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

BLOCK_SHIFT = 16
BLOCK = 1 << BLOCK_SHIFT  # points per storage block of values (256 KiB of float32)
FIRST_CAP = 64  # a new series' first block holds this many points, then doubles up to GROW_STEP
GROW_STEP = 8192  # ... then grows by this many points up to BLOCK (at most 32 KiB of slack)
LEAF = 128  # points per leaf of the min/max pyramid
LEAF_GROW = 4096  # leaves added at a time (the leaf arrays grow by this fixed amount)
MAX_COLUMNS = 100_000
SMALL = 8  # appends of at most this many points take a plain-Python path
CK_EXACT_EVERY = 4096  # points between stats checkpoints while every value is a float32 number
EMA_CACHE = 2  # smoothed series kept per series (each costs about as much as the series)
_F32_MAX = 3.4028234663852886e38
_IDX: dict = {}  # (offset to the next leaf, chunk length) -> reduceat offsets (never changed once made)


@dataclass
class Columns:
    """One metric reduced to n screen columns over [x_lo, x_hi]: column i covers
    [x_lo + i*w, x_lo + (i+1)*w) with w = (x_hi - x_lo) / n, the last one [.., x_hi] closed."""

    x_lo: float
    x_hi: float
    count: "np.ndarray"  # int32 points per column (0 = no point there)
    min: "np.ndarray"  # float64 finite min per column; NaN where no finite point
    max: "np.ndarray"  # float64 finite max per column; NaN where no finite point
    last: "np.ndarray"  # float64 value of the column's last point (NaN if none or non-finite)
    nonfinite: "np.ndarray"  # bool: the column holds a NaN/inf point

    @property
    def n(self) -> int:
        return len(self.count)


def _floats(values) -> "np.ndarray":
    """values (numbers and None) as float64, None as NaN; ValueError for anything else. Through
    array('d'): half the time of np.array(values, dtype=float) on a list of Python floats."""
    import numpy as np

    try:
        try:
            return np.frombuffer(array("d", values), dtype=np.float64)
        except TypeError:
            return np.frombuffer(array("d", [math.nan if v is None else v for v in values]), dtype=np.float64)
    except (TypeError, OverflowError) as e:
        raise ValueError(f"values must be a flat list of numbers or None: {e}") from None


def _clamp_weight(weight: float) -> float:
    """TensorBoard's: a non-finite weight is 0, others are clamped to [0, 1]."""
    try:
        w = float(weight)
    except (TypeError, ValueError):
        return 0.0
    if not math.isfinite(w):
        return 0.0
    return min(1.0, max(0.0, w))


class Series:
    """One metric's points in step order, with exact running stats and per-column reductions."""

    def __init__(self) -> None:
        self._blocks: list[Any] = []  # float32 arrays; all but the last hold BLOCK points
        self._n = 0
        self._seg_idx = array("q")  # first point index of each step segment
        self._seg_step = array("q")  # its first step
        self._seg_stride = array("q")  # steps between its points (0 while it has one point)
        self._t_idx = array("q")  # time anchors: point index (-1: before the first point)
        self._t_val = array("d")  # seconds since the run's first start, non-decreasing
        self._lmin: Any = None  # float32 finite min per leaf (+inf: none)
        self._lmax: Any = None  # float32 finite max per leaf (-inf: none)
        self._lbad: Any = None  # bool: the leaf holds a non-finite point
        self._ck_n = array("q")  # stats checkpoints: after the first _ck_n[k] points ...
        self._ck_bad = array("q")
        self._ck_f = array("d")  # ... last, min, max (NaN: None), three per checkpoint
        self._ema: dict[float, _Ema] = {}
        self.revision = 0
        self.dropped = 0  # points refused because their step went backwards
        self._f32_exact = True  # every finite value so far is a float32 number (losses are)
        self._reset_stats()

    def _reset_stats(self) -> None:
        self.count = 0
        self.nonfinite = 0
        self.last: float | None = None
        self.min: float | None = None
        self.max: float | None = None

    # -- appending ------------------------------------------------------------------------------
    def add(self, step: int, value: float | None) -> None:
        """One point (slow path; chunks go through extend/add_points)."""
        self._append([step], [value], None, consecutive=False, checkpoint=False)

    def extend(self, first_step: int, values: list[float | None], elapsed: float | None = None,
               first_time: float | None = None) -> None:
        """Points at first_step, first_step+1, ...; `elapsed`: the time of the last of them, in
        seconds since the run's first start (the points since the previous anchor, or since
        `first_time` at the first of them, are spread evenly up to it)."""
        self._append(first_step, values, elapsed, consecutive=True, checkpoint=True, first_time=first_time)

    def add_points(self, steps: list[int], values: list[float | None], elapsed: float | None = None,
                   first_time: float | None = None) -> None:
        """Points at the given (non-decreasing) steps; `elapsed` as in extend; `first_time`: the
        time of the first of them (else they are spread from the previous anchor)."""
        if len(steps) != len(values):
            raise ValueError(f"{len(steps)} steps for {len(values)} values")
        self._append(steps, values, elapsed, consecutive=False, checkpoint=True, first_time=first_time)

    def extend_chunks(self, first_step: int, chunks: list[list[float | None]], elapsed: list[float | None]) -> None:
        """Consecutive chunks (each starting at the step after the one before ends), as extend()
        for each in turn would append them (a time anchor and a stats checkpoint each), with one
        vectorized pass over all their points: a 1M-step replay is 4,000 chunks of losses."""
        import numpy as np

        last_step = self.last_step
        lens = [len(c) for c in chunks]
        if len(chunks) < 2 or min(lens) <= SMALL or (last_step is not None and first_step < last_step):
            step = first_step  # few, small or overlapping chunks: one at a time
            for c, t in zip(chunks, elapsed):
                self.extend(step, c, t)
                step += len(c)
            return
        buf = array("d")
        for c in chunks:
            size = len(buf)
            try:
                buf.extend(c)
            except TypeError:  # a null (non-finite) value: what went in before it comes out again
                del buf[size:]
                try:
                    buf.extend([math.nan if v is None else v for v in c])
                except (TypeError, OverflowError) as e:
                    raise ValueError(f"values must be a flat list of numbers or None: {e}") from None
        v64 = np.frombuffer(buf, dtype=np.float64)
        k = len(v64)
        ends = np.cumsum(lens)
        starts = ends - lens
        self._append_steps_run(first_step, 1, k)
        fin = np.isfinite(v64)
        nfin = np.add.reduceat(fin, starts, dtype=np.int64).tolist()
        lo = np.minimum.reduceat(np.where(fin, v64, np.inf), starts).tolist()
        hi = np.maximum.reduceat(np.where(fin, v64, -np.inf), starts).tolist()
        at = np.maximum.reduceat(np.where(fin, np.arange(k), -1), starts)
        last = v64[np.maximum(at, 0)].tolist()
        clipped = [a < -_F32_MAX or b > _F32_MAX for a, b in zip(lo, hi)]
        if any(clipped):
            v64 = np.where(fin, np.clip(v64, -_F32_MAX, _F32_MAX), v64)
        v32 = v64.astype(np.float32)
        exact = np.logical_and.reduceat((v32 == v64) | ~fin, starts).tolist() if self._f32_exact else None
        start = self._n
        self._write_values(start, v32)
        for i, n_i in enumerate(lens):
            f = nfin[i]
            self.count += n_i
            self.nonfinite += n_i - f
            if f:
                if self.min is None or lo[i] < self.min:
                    self.min = lo[i]
                if self.max is None or hi[i] > self.max:
                    self.max = hi[i]
                self.last = last[i]
                if clipped[i]:
                    self._f32_exact = False
                if self._f32_exact:
                    self._f32_exact = exact[i]
            n = start + int(ends[i])
            t = elapsed[i]
            if t is not None:
                self._anchor(n - 1, t)
            if self._want_checkpoint(n, True):
                self._checkpoint(n)
        self._update_leaves(start, start + k, all_finite=all(f == n_i for f, n_i in zip(nfin, lens)))
        self._n = start + k
        self.revision += 1

    def add_singles(self, steps: list[int], values: list[float | None], times: list[float | None]) -> None:
        """Points that came one a record (a scalar logged once a chunk), appended at once: the same
        series as add_points([step], [value], time) for each in turn (its own time anchor and stats
        checkpoint each), with one vectorized write of values and leaves instead of one a point."""
        import numpy as np

        try:
            vals = [math.nan if v is None else float(v) for v in values]
        except TypeError as e:
            raise ValueError(f"values must be numbers: {e}") from None
        ks, kv, kt = self._going_forward([int(x) for x in steps], vals, list(times))
        k = len(ks)
        if not k:
            return
        start = self._n
        self._place_points(ks)
        rounded = array("f", [min(_F32_MAX, max(-_F32_MAX, v)) if v - v == 0.0 else v for v in kv]).tolist()
        self._write_values(start, np.array(rounded, dtype=np.float32))
        all_finite = True
        for i, (v, r, t) in enumerate(zip(kv, rounded, kt)):
            self.count += 1
            if v - v != 0.0:  # NaN or +-inf
                self.nonfinite += 1
                all_finite = False
            else:
                self.last = v
                if self.min is None or v < self.min:
                    self.min = v
                if self.max is None or v > self.max:
                    self.max = v
                if self._f32_exact and r != v:
                    self._f32_exact = False
            n = start + i + 1
            if t is not None:
                self._anchor(n - 1, t)
            if self._want_checkpoint(n, True):
                self._checkpoint(n)
        self._update_leaves(start, start + k, all_finite=all_finite)
        self._n = start + k
        self.revision += 1

    def mark_time(self, t: float) -> None:
        """The points appended next are timed from `t` (a writer's start, in seconds since the
        run's first start): an anchor just before the next point."""
        self._anchor(self._n - 1, t)
        self.revision += 1

    def _anchor(self, idx: int, t: float | None) -> None:
        if t is None:
            return
        t = float(t)
        if not math.isfinite(t):
            return
        if self._t_val:
            t = max(t, self._t_val[-1])  # a clock stepped back never makes time go backwards
        if self._t_idx and self._t_idx[-1] == idx and len(self._t_idx) >= 2 and self._t_idx[-2] == idx:
            self._t_val[-1] = t  # at most two anchors at one index: the later replaces the latest
            return
        self._t_idx.append(idx)
        self._t_val.append(t)

    def _append(self, steps, values, elapsed, *, consecutive: bool, checkpoint: bool,
                first_time: float | None = None) -> None:
        import numpy as np

        k = len(values)
        if k == 0:
            return
        if k <= SMALL:
            self._append_small(steps, values, elapsed, consecutive=consecutive, checkpoint=checkpoint,
                               first_time=first_time)
            return
        v64 = _floats(values)
        last_step = self.last_step
        if consecutive:
            first = int(steps)
            if last_step is not None and first < last_step:
                skip = min(k, last_step - first)
                self.dropped += skip
                v64 = v64[skip:]
                first += skip
                k -= skip
                if k == 0:
                    return
            self._append_steps_run(first, 1, k)
        else:
            st = np.asarray(steps, dtype=np.int64)
            if st.ndim != 1 or len(st) != k:
                raise ValueError("steps must be a flat list of integers, one per value")
            floor = np.maximum.accumulate(st)
            keep = st >= floor  # a step below an earlier one in this call
            if last_step is not None:
                keep &= st >= last_step
            if not keep.all():
                self.dropped += int(k - keep.sum())
                st, v64 = st[keep], v64[keep]
                k = len(st)
                if k == 0:
                    return
            self._append_steps(st)
        fin = np.isfinite(v64)
        nfin = int(np.count_nonzero(fin))
        if nfin:
            f = v64[fin] if nfin < k else v64
            lo, hi = float(f.min()), float(f.max())
            if self.min is None or lo < self.min:
                self.min = lo
            if self.max is None or hi > self.max:
                self.max = hi
            self.last = float(f[-1])
            if lo < -_F32_MAX or hi > _F32_MAX:
                v64 = np.where(fin, np.clip(v64, -_F32_MAX, _F32_MAX), v64)
                self._f32_exact = False
        self.count += k
        self.nonfinite += k - nfin
        start = self._n
        v32 = v64.astype(np.float32)
        if self._f32_exact and nfin:
            self._f32_exact = bool((v32 == v64).all() if nfin == k else (v32[fin] == v64[fin]).all())
        self._write_values(start, v32)
        self._update_leaves(start, start + k, all_finite=nfin == k)
        self._publish(start, k, elapsed, first_time, checkpoint)

    def _append_small(self, steps, values, elapsed, *, consecutive: bool, checkpoint: bool,
                      first_time: float | None) -> None:
        """_append for a few points (a scalar logged once a chunk) in plain Python: the same
        result without a dozen NumPy calls' overhead."""
        try:
            vals = [math.nan if v is None else float(v) for v in values]
        except TypeError as e:
            raise ValueError(f"values must be a flat list of numbers: {e}") from None
        if consecutive:
            first = int(steps)
            st = list(range(first, first + len(vals)))
        else:
            st = [int(x) for x in steps]
            if len(st) != len(vals):
                raise ValueError("steps must be a flat list of integers, one per value")
        kept_s, kept_v = self._going_forward(st, vals)
        k = len(kept_v)
        if not k:
            return
        start = self._n
        self._place_points(kept_s)
        stored = []
        for v in kept_v:
            self.count += 1
            if v - v != 0.0:  # NaN or +-inf
                self.nonfinite += 1
                stored.append(v)
                continue
            self.last = v
            if self.min is None or v < self.min:
                self.min = v
            if self.max is None or v > self.max:
                self.max = v
            stored.append(min(_F32_MAX, max(-_F32_MAX, v)))
        rounded = array("f", stored).tolist()  # each value as float32 stores it
        if self._f32_exact:  # against the values before clipping: a clipped one is not exact
            self._f32_exact = all(a == b or a != a for a, b in zip(rounded, kept_v))
        b, off = start >> BLOCK_SHIFT, start & (BLOCK - 1)
        if b < len(self._blocks) and off + k <= len(self._blocks[b]):  # room in the last block
            if k == 1:
                self._blocks[b][off] = rounded[0]
            else:
                self._blocks[b][off:off + k] = rounded
        else:
            import numpy as np

            self._write_values(start, np.array(rounded, dtype=np.float32))
        n_leaves = -(-(start + k) // LEAF)
        if self._lmin is None or len(self._lmin) < n_leaves:
            self._update_leaves(start, start + k)  # grows the leaf arrays
        else:
            lmin, lmax, lbad = self._lmin, self._lmax, self._lbad
            for i, v in enumerate(rounded, start):
                leaf = i // LEAF
                fresh = i % LEAF == 0
                if v - v != 0.0:
                    if fresh:
                        lmin[leaf], lmax[leaf] = math.inf, -math.inf
                    lbad[leaf] = True
                elif fresh:
                    lmin[leaf] = lmax[leaf] = v
                    lbad[leaf] = False
                else:  # .item(): a Python float, compared without a NumPy scalar
                    if v < lmin.item(leaf):
                        lmin[leaf] = v
                    if v > lmax.item(leaf):
                        lmax[leaf] = v
        self._publish(start, k, elapsed, first_time, checkpoint)

    def _publish(self, start: int, k: int, elapsed, first_time, checkpoint: bool) -> None:
        """The end of an append of k points at `start`: their time anchors, a stats checkpoint,
        then the new length and revision (published last: a reader never sees a point half-written;
        cached EMAs catch up when next asked for, in one vectorized pass, not one a chunk)."""
        if first_time is not None and k > 1:
            self._anchor(start, first_time)
        if elapsed is not None:
            self._anchor(start + k - 1, elapsed)
        if self._want_checkpoint(start + k, checkpoint):
            self._checkpoint(start + k)
        self._n = start + k
        self.revision += 1

    def _want_checkpoint(self, n: int, per_call: bool) -> bool:
        """Whether to keep the stats at n points. While every value is a float32 number the
        stored values give exact stats back, so a checkpoint every CK_EXACT_EVERY points is
        enough; otherwise one per appended chunk (where resumes land) and every LEAF points."""
        if not self._ck_n:
            return True
        since = n - self._ck_n[-1]
        if self._f32_exact:
            return since >= CK_EXACT_EVERY
        return per_call or since >= LEAF

    def _checkpoint(self, n: int) -> None:
        nan = math.nan
        self._ck_n.append(n)
        self._ck_bad.append(self.nonfinite)
        self._ck_f.extend((nan if self.last is None else self.last, nan if self.min is None else self.min,
                           nan if self.max is None else self.max))

    def _append_steps_run(self, first: int, stride: int, k: int) -> None:
        """k points at first, first+stride, ... (k >= 1)."""
        n = self._n
        if self._seg_idx:
            s_idx, s_step, s_stride = self._seg_idx[-1], self._seg_step[-1], self._seg_stride[-1]
            s_len = n - s_idx
            s_last = s_step + s_stride * (s_len - 1)
            if s_len == 1 and first >= s_last and (k == 1 or first - s_last == stride):
                self._seg_stride[-1] = first - s_last  # a one-point segment takes the stride
                s_stride = first - s_last
                if k == 1:
                    return
            if first - s_last == s_stride and (k == 1 or stride == s_stride):
                return  # continues the last segment
        self._seg_idx.append(n)
        self._seg_step.append(first)
        self._seg_stride.append(stride if k > 1 else 0)

    def _append_steps(self, st: "np.ndarray") -> None:
        import numpy as np

        k = len(st)
        if k > 1:
            d = np.diff(st)
            if (d == d[0]).all():
                self._append_steps_run(int(st[0]), int(d[0]), k)
                return
        self._place_points(st.tolist())  # uneven spacing

    def _place_points(self, steps: list[int]) -> None:
        """Steps of points about to be appended, point by point, each extending the last step
        segment where it can (segments are positioned by point index: _n advances meanwhile)."""
        n0 = self._n
        for x in steps:
            self._append_steps_run(x, 0, 1)
            self._n += 1
        self._n = n0

    def _going_forward(self, steps: list[int], *columns: list) -> list[list]:
        """[steps, *columns] of the points whose step is not below the one before (nor the
        series' last): a step that goes back is dropped and counted in `dropped`."""
        floor = self.last_step
        kept: list[list] = [[] for _ in range(1 + len(columns))]
        for row in zip(steps, *columns):
            if floor is not None and row[0] < floor:
                self.dropped += 1
                continue
            floor = row[0]
            for out, v in zip(kept, row):
                out.append(v)
        return kept

    def _write_values(self, start: int, v32: "np.ndarray") -> None:
        import numpy as np

        pos, done, k = start, 0, len(v32)
        while done < k:
            b, off = pos >> BLOCK_SHIFT, pos & (BLOCK - 1)
            if b == len(self._blocks):
                self._blocks.append(np.empty(min(BLOCK, max(FIRST_CAP, k - done)), dtype=np.float32))
            blk = self._blocks[b]
            take = min(k - done, BLOCK - off)
            if off + take > len(blk):  # the last block grows (doubling, capped at BLOCK)
                cap = 2 * len(blk) if len(blk) < GROW_STEP else len(blk) + GROW_STEP
                grown = np.empty(min(BLOCK, max(cap, off + take)), dtype=np.float32)
                grown[:off] = blk[:off]
                self._blocks[b] = blk = grown
            blk[off:off + take] = v32[done:done + take]
            done += take
            pos += take

    def _update_leaves(self, lo: int, hi: int, all_finite: bool = False) -> None:
        """Fold points [lo, hi) into the leaves (hi is the new end): a leaf from its first point
        is set, a leaf already holding points before lo is combined with them."""
        import numpy as np

        n_leaves = -(-hi // LEAF)
        if self._lmin is None or len(self._lmin) < n_leaves:
            old = 0 if self._lmin is None else len(self._lmin)
            # Doubling from 8 leaves up to LEAF_GROW, then LEAF_GROW at a time: a metric of a few
            # points holds ~100 bytes of leaves, not 37 KiB (10,000 one-point metrics were 370 MB).
            cap = 8
            while cap < n_leaves and cap < LEAF_GROW:
                cap *= 2
            if cap < n_leaves:
                cap = -(-n_leaves // LEAF_GROW) * LEAF_GROW
            lmin, lmax, lbad = (np.empty(cap, np.float32), np.empty(cap, np.float32), np.zeros(cap, bool))
            if old:
                lmin[:old], lmax[:old], lbad[:old] = self._lmin, self._lmax, self._lbad
            self._lmin, self._lmax, self._lbad = lmin, lmax, lbad
        pos = lo
        while pos < hi:
            b, off = pos >> BLOCK_SHIFT, pos & (BLOCK - 1)
            end = min(hi, (b + 1) << BLOCK_SHIFT)
            v = self._blocks[b][off:off + end - pos]
            if all_finite:
                vmin = vmax = v
                bad = None
            else:
                fin = np.isfinite(v)
                vmin = np.where(fin, v, np.float32(np.inf))
                vmax = np.where(fin, v, np.float32(-np.inf))
                bad = ~fin
            # one reduceat per array: the first segment ends at the leaf boundary after pos
            h = (LEAF - pos % LEAF) % LEAF
            idx = _IDX.get((h, len(v)))
            if idx is None:
                idx = np.arange(h - LEAF if h else 0, len(v), LEAF)
                idx[0] = 0
                if len(_IDX) < 4096:
                    _IDX[(h, len(v))] = idx  # chunks have a few sizes: the offsets repeat
            leaf = pos // LEAF
            nl = len(idx)
            rmin = np.minimum.reduceat(vmin, idx)
            rmax = np.maximum.reduceat(vmax, idx)
            if h:  # the first leaf already holds points: combine with them
                rmin[0] = min(rmin[0], self._lmin[leaf])
                rmax[0] = max(rmax[0], self._lmax[leaf])
            self._lmin[leaf:leaf + nl] = rmin
            self._lmax[leaf:leaf + nl] = rmax
            if bad is None:  # all finite: the new leaves are clean, a combined one stays as it was
                self._lbad[leaf + (1 if h else 0):leaf + nl] = False
            else:
                rbad = np.logical_or.reduceat(bad, idx)
                if h:
                    rbad[0] |= self._lbad[leaf]
                self._lbad[leaf:leaf + nl] = rbad
            pos = end

    # -- truncating -----------------------------------------------------------------------------
    def truncate_after(self, step: int) -> bool:
        """Drop points past `step`; True when any were dropped."""
        keep = self.index_of_step(step + 1)
        if keep >= self._n:
            return False
        t_keep = self.time_of(keep - 1) if keep > 0 else None
        # steps
        while self._seg_idx and self._seg_idx[-1] >= keep:
            self._seg_idx.pop()
            self._seg_step.pop()
            self._seg_stride.pop()
        if self._seg_idx and keep - self._seg_idx[-1] == 1:
            self._seg_stride[-1] = 0
        # time: anchors past the kept points go; the last kept point keeps its time
        had_later = False
        while self._t_idx and self._t_idx[-1] > keep - 1:
            self._t_idx.pop()
            self._t_val.pop()
            had_later = True
        if had_later and t_keep is not None and keep > 0 and (not self._t_idx or self._t_idx[-1] < keep - 1):
            self._t_idx.append(keep - 1)
            self._t_val.append(t_keep)
        # values: whole blocks past the end go
        del self._blocks[-(-keep >> BLOCK_SHIFT) if keep else 0:]
        # stats: from the last checkpoint at or before `keep`, then the rest of the points
        while self._ck_n and self._ck_n[-1] > keep:
            self._ck_n.pop()
            self._ck_bad.pop()
            del self._ck_f[-3:]
        self._reset_stats()
        if self._ck_n:
            self.count = self._ck_n[-1]
            self.nonfinite = self._ck_bad[-1]
            last, lo, hi = self._ck_f[-3:]
            self.last = None if math.isnan(last) else last
            self.min = None if math.isnan(lo) else lo
            self.max = None if math.isnan(hi) else hi
        done = self.count
        if done < keep:
            import numpy as np

            rest = self._slice(done, keep).astype(np.float64)
            fin = rest[np.isfinite(rest)]
            self.count = keep
            self.nonfinite += len(rest) - len(fin)
            if len(fin):
                lo, hi = float(fin.min()), float(fin.max())
                self.min = lo if self.min is None else min(self.min, lo)
                self.max = hi if self.max is None else max(self.max, hi)
                self.last = float(fin[-1])
            self._checkpoint(keep)
        self._n = keep
        if keep:
            self._update_leaves((keep - 1) // LEAF * LEAF, keep)
        self._ema.clear()  # recomputed from the kept points when next asked for
        self.revision += 1
        return True

    # -- reading --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    @property
    def has_time(self) -> bool:
        """Whether the points have a time (else the time axis falls back to steps)."""
        return bool(self._t_idx) and self._n > 0

    @property
    def last_step(self) -> int | None:
        if not self._n:
            return None
        i = len(self._seg_idx) - 1
        return self._seg_step[i] + self._seg_stride[i] * (self._n - 1 - self._seg_idx[i])

    @property
    def nbytes(self) -> int:
        """Memory held by the values, leaves, segments, anchors and stats checkpoints (not the
        cached smoothed series: see `ema_nbytes`)."""
        n = sum(b.nbytes for b in self._blocks)
        if self._lmin is not None:
            n += self._lmin.nbytes + self._lmax.nbytes + self._lbad.nbytes
        for a in (self._seg_idx, self._seg_step, self._seg_stride, self._t_idx, self._t_val,
                  self._ck_n, self._ck_bad, self._ck_f):
            n += a.buffer_info()[1] * a.itemsize
        return n

    @property
    def ema_nbytes(self) -> int:
        """Memory held by the cached smoothed series (their values and leaves: they share this
        series' steps and times)."""
        total = 0
        for e in self._ema.values():
            s = e.series
            total += sum(b.nbytes for b in s._blocks)
            if s._lmin is not None:
                total += s._lmin.nbytes + s._lmax.nbytes + s._lbad.nbytes
        return total

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "last": self.last, "min": self.min, "max": self.max,
                "nonfinite": self.nonfinite}

    def _seg_arrays(self):
        import numpy as np

        return (np.array(self._seg_idx, dtype=np.int64), np.array(self._seg_step, dtype=np.int64),
                np.array(self._seg_stride, dtype=np.int64))

    def _steps_of(self, idx: "np.ndarray", segs=None) -> "np.ndarray":
        import numpy as np

        s_idx, s_step, s_stride = segs if segs is not None else self._seg_arrays()
        k = np.searchsorted(s_idx, idx, side="right") - 1
        k = np.maximum(k, 0)
        return s_step[k] + s_stride[k] * (idx - s_idx[k])

    def _anchor_arrays(self):
        import numpy as np

        return np.array(self._t_idx, dtype=np.int64), np.array(self._t_val, dtype=np.float64)

    def _times_of(self, idx: "np.ndarray", anchors=None) -> "np.ndarray":
        """Seconds since the run's first start of points idx (needs at least one anchor)."""
        import numpy as np

        a_idx, a_t = anchors if anchors is not None else self._anchor_arrays()
        k = np.searchsorted(a_idx, idx, side="left")  # first anchor at or after the point
        after = k >= len(a_idx)
        kc = np.minimum(k, len(a_idx) - 1)
        kp = np.maximum(kc - 1, 0)
        i1, t1 = a_idx[kc], a_t[kc]
        i0, t0 = a_idx[kp], a_t[kp]
        span = i1 - i0
        with np.errstate(invalid="ignore", divide="ignore"):
            t = t1 - (t1 - t0) * ((i1 - idx) / np.where(span > 0, span, 1))
        t = np.where((k == 0) | (span <= 0), t1, np.maximum(t, t0))
        return np.where(after, a_t[-1], t)

    def _x_of(self, idx: "np.ndarray", axis: str, cache: dict) -> "np.ndarray":
        if axis == "time":
            if "anchors" not in cache:
                cache["anchors"] = self._anchor_arrays()
            return self._times_of(idx, cache["anchors"])
        if "segs" not in cache:
            cache["segs"] = self._seg_arrays()
        return self._steps_of(idx, cache["segs"]).astype("float64")

    def _axis(self, axis: str) -> str:
        if axis not in ("step", "time"):
            raise ValueError(f"axis must be 'step' or 'time', not {axis!r}")
        return "time" if axis == "time" and self._t_idx else "step"

    def _first_at_or_after(self, x: "np.ndarray", axis: str, cache: dict, strict: "np.ndarray | None" = None):
        """Per x: the first point index whose coordinate is >= x (> x where strict)."""
        import numpy as np

        strict = np.zeros(len(x), bool) if strict is None else strict
        if axis == "step":
            return self._first_step_at_or_after(x, strict)
        # time: the anchors bound each answer, then a bisection inside one chunk's points
        n = self._n
        a_idx, a_t = cache.setdefault("anchors", self._anchor_arrays())
        k = np.where(strict, np.searchsorted(a_t, x, side="right"), np.searchsorted(a_t, x, side="left"))
        lo = np.where(k > 0, a_idx[np.maximum(k - 1, 0)] + 1, 0)
        hi = np.where(k < len(a_idx), a_idx[np.minimum(k, len(a_idx) - 1)] + 1, n)
        lo = np.clip(lo, 0, n)
        hi = np.clip(hi, lo, n)
        while True:
            active = lo < hi
            if not active.any():
                return lo
            mid = (lo + hi) // 2
            xm = self._times_of(np.minimum(mid, n - 1), (a_idx, a_t))
            below = np.where(strict, xm <= x, xm < x)
            lo = np.where(active & below, mid + 1, lo)
            hi = np.where(active & ~below, mid, hi)

    def _first_step_at_or_after(self, x: "np.ndarray", strict: "np.ndarray") -> "np.ndarray":
        """index_of_step for many float x at once (> x where strict), in integer arithmetic."""
        import numpy as np

        n = self._n
        s_idx, s_step, s_stride = self._seg_arrays()
        xc = np.clip(x, -(2.0 ** 62), 2.0 ** 62)
        target = np.where(strict, np.floor(xc) + 1, np.ceil(xc)).astype(np.int64)
        k = np.searchsorted(s_step, target, side="left")  # the first segment starting at or past it
        out = np.where(k < len(s_idx), s_idx[np.minimum(k, len(s_idx) - 1)], n)
        prev = np.maximum(k - 1, 0)
        p_len = np.where(k < len(s_idx), s_idx[np.minimum(k, len(s_idx) - 1)], n) - s_idx[prev]
        p_stride = s_stride[prev]
        with np.errstate(divide="ignore", invalid="ignore"):
            off = -((s_step[prev] - target) // np.where(p_stride > 0, p_stride, 1))  # ceil division
        inside = (k > 0) & (p_stride > 0) & (off < p_len)
        return np.where(inside, s_idx[prev] + off, out)

    def index_of_step(self, step: int) -> int:
        """The first point whose step is >= `step` (len(self) when none is)."""
        step = math.ceil(step) if isinstance(step, float) and math.isfinite(step) else step
        if not self._n:
            return 0
        if isinstance(step, float):  # +-inf or NaN
            return 0 if step < 0 else self._n
        k = bisect_left(self._seg_step, step)  # the first segment starting at or past `step`
        if k > 0:  # the segment before may reach `step`
            s_idx, s_first, s_stride = self._seg_idx[k - 1], self._seg_step[k - 1], self._seg_stride[k - 1]
            s_len = (self._seg_idx[k] if k < len(self._seg_idx) else self._n) - s_idx
            if s_stride > 0:
                off = -(-(step - s_first) // s_stride)
                if off < s_len:
                    return s_idx + off
        return self._seg_idx[k] if k < len(self._seg_idx) else self._n

    def _step_scalar(self, i: int) -> int:
        k = bisect_right(self._seg_idx, i) - 1
        return self._seg_step[k] + self._seg_stride[k] * (i - self._seg_idx[k])

    def _time_scalar(self, i: int) -> float:
        """As _times_of for one point, with the same float operations."""
        a_idx, a_t = self._t_idx, self._t_val
        k = bisect_left(a_idx, i)
        if k >= len(a_idx):
            return a_t[-1]
        i1, t1 = a_idx[k], a_t[k]
        if k == 0:
            return t1
        i0, t0 = a_idx[k - 1], a_t[k - 1]
        span = i1 - i0
        if span <= 0:
            return t1
        return max(t1 - (t1 - t0) * ((i1 - i) / span), t0)

    def point(self, i: int) -> tuple[int, float]:
        """The i-th point (negative i counts from the end): (step, value), value NaN where null."""
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"point {i} of {self._n}")
        return self._step_scalar(i), float(self._blocks[i >> BLOCK_SHIFT][i & (BLOCK - 1)])

    def time_of(self, i: int) -> float | None:
        """Seconds since the run's first start of the i-th point; None without a time axis."""
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"point {i} of {self._n}")
        if not self._t_idx:
            return None
        return self._time_scalar(i)

    def x_range(self, axis: str = "step") -> tuple[float, float] | None:
        """(first, last) coordinate of the points; None when empty or (time) without times."""
        if axis not in ("step", "time"):
            raise ValueError(f"axis must be 'step' or 'time', not {axis!r}")
        if not self._n or (axis == "time" and not self._t_idx):
            return None
        if axis == "time":
            return self.time_of(0), self.time_of(-1)
        return float(self.point(0)[0]), float(self.last_step)

    def nearest(self, x: float, axis: str = "step") -> tuple[int, float | None, float] | None:
        """The point nearest x (the earlier one on a tie): (step, time or None, value)."""
        import numpy as np

        ax = self._axis(axis)
        try:
            x = float(x)
        except (TypeError, ValueError):
            return None
        if not self._n or math.isnan(x):
            return None
        cache: dict = {}
        i = int(self._first_at_or_after(np.array([x]), ax, cache)[0])
        if i >= self._n:
            i = self._n - 1
        elif i > 0:
            x0, x1 = self._x_of(np.array([i - 1, i]), ax, cache)
            if x - x0 <= x1 - x:
                i -= 1
        step, value = self.point(i)
        return step, self.time_of(i), value

    def _slice(self, lo: int, hi: int) -> "np.ndarray":
        import numpy as np

        if hi <= lo:
            return np.empty(0, np.float32)
        parts = []
        pos = lo
        while pos < hi:
            b, off = pos >> BLOCK_SHIFT, pos & (BLOCK - 1)
            end = min(hi, (b + 1) << BLOCK_SHIFT)
            parts.append(self._blocks[b][off:off + end - pos])
            pos = end
        return parts[0].copy() if len(parts) == 1 else np.concatenate(parts)

    def values_array(self) -> "np.ndarray":
        """Every value as float32 (a copy), NaN where null."""
        return self._slice(0, self._n)

    def steps_array(self) -> "np.ndarray":
        """Every point's step as int64 (computed from the segments)."""
        import numpy as np

        return self._steps_of(np.arange(self._n, dtype=np.int64))

    def times_array(self) -> "np.ndarray | None":
        import numpy as np

        if not self._t_idx:
            return None
        return self._times_of(np.arange(self._n, dtype=np.int64))

    # compatibility with the list-like attributes of the earlier Series
    steps = property(steps_array)
    values = property(values_array)

    def _take(self, idx: "np.ndarray") -> "np.ndarray":
        """Values at point indices idx, which are non-decreasing by storage block."""
        import numpy as np

        out = np.empty(len(idx), np.float32)
        if not len(idx):
            return out
        blk = idx >> BLOCK_SHIFT
        off = idx & (BLOCK - 1)
        cuts = np.flatnonzero(blk[1:] != blk[:-1]) + 1
        starts = [0, *cuts.tolist()]
        ends = [*cuts.tolist(), len(idx)]
        for s, e in zip(starts, ends):
            out[s:e] = self._blocks[int(blk[s])][off[s:e]]
        return out

    def columns(self, x_lo: float, x_hi: float, n: int, axis: str = "step") -> Columns:
        """The points reduced to n columns over [x_lo, x_hi] (see Columns)."""
        import numpy as np

        ax = self._axis(axis)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_COLUMNS:
            raise ValueError(f"n must be an integer from 1 to {MAX_COLUMNS}, not {n!r}")
        n = int(n)
        x_lo, x_hi = float(x_lo), float(x_hi)
        if not (math.isfinite(x_lo) and math.isfinite(x_hi)) or x_hi < x_lo:
            raise ValueError(f"the range must be finite with x_lo <= x_hi, not [{x_lo}, {x_hi}]")
        count = np.zeros(n, np.int32)
        cmin = np.full(n, np.nan)
        cmax = np.full(n, np.nan)
        last = np.full(n, np.nan)
        bad = np.zeros(n, bool)
        out = Columns(x_lo, x_hi, count, cmin, cmax, last, bad)
        if not self._n:
            return out
        w = (x_hi - x_lo) / n
        edges = x_lo + np.arange(n + 1) * w
        edges[n] = x_hi
        strict = np.zeros(n + 1, bool)
        strict[n] = True  # the last column is closed: its end is the first point past x_hi
        bounds = self._first_at_or_after(edges, ax, {}, strict)
        a, b = bounds[:-1], bounds[1:]
        count[:] = b - a
        self._reduce(a, b, out)
        has = b > a
        if has.any():
            lv = self._take(b[has] - 1).astype(np.float64)
            last[has] = np.where(np.isfinite(lv), lv, np.nan)
        return out

    def _reduce(self, a: "np.ndarray", b: "np.ndarray", out: Columns) -> None:
        """min/max/nonfinite of points [a[i], b[i]) per column, from whole leaves and the
        partial leaves at each end."""
        import numpy as np

        n = len(a)
        la = -(-a // LEAF)  # first whole leaf
        lb = b // LEAF  # end of whole leaves
        whole = la < lb
        # the partial leaves: head [a, la*LEAF) and tail [lb*LEAF, b), each under LEAF points
        # and inside one leaf; a range inside one leaf is all head
        head_end = np.minimum(b, la * LEAF)
        tail_lo = np.maximum(lb * LEAF, head_end)
        starts = np.concatenate([a[:, None], tail_lo[:, None]], 1).ravel()
        ends = np.concatenate([head_end[:, None], b[:, None]], 1).ravel()
        lens = np.maximum(ends - starts, 0)
        pmin = np.full(2 * n, np.inf)
        pmax = np.full(2 * n, -np.inf)
        pbad = np.zeros(2 * n, bool)
        rows = np.flatnonzero(lens)
        if len(rows):
            width = int(lens[rows].max())
            cols = np.arange(width)
            valid = cols[None, :] < lens[rows][:, None]
            idx = np.where(valid, starts[rows][:, None] + cols[None, :], starts[rows][:, None])
            v = self._take(idx.ravel()).reshape(len(rows), width)
            fin = np.isfinite(v)
            pmin[rows] = np.where(fin & valid, v, np.inf).min(1)
            pmax[rows] = np.where(fin & valid, v, -np.inf).max(1)
            pbad[rows] = (~fin & valid).any(1)
        cmin = np.minimum(pmin[0::2], pmin[1::2])
        cmax = np.maximum(pmax[0::2], pmax[1::2])
        cbad = pbad[0::2] | pbad[1::2]
        cols_w = np.flatnonzero(whole)
        if len(cols_w):
            n_leaves = -(-self._n // LEAF)
            ix = np.stack([la[cols_w], lb[cols_w]], 1).ravel()
            if ix[-1] >= n_leaves:
                ix = ix[:-1]
            lmin, lmax, lbad = self._lmin[:n_leaves], self._lmax[:n_leaves], self._lbad[:n_leaves]
            cmin[cols_w] = np.minimum(cmin[cols_w], np.minimum.reduceat(lmin, ix)[0::2])
            cmax[cols_w] = np.maximum(cmax[cols_w], np.maximum.reduceat(lmax, ix)[0::2])
            cbad[cols_w] |= np.logical_or.reduceat(lbad, ix)[0::2]
        out.min[:] = np.where(np.isfinite(cmin), cmin, np.nan)
        out.max[:] = np.where(np.isfinite(cmax), cmax, np.nan)
        out.nonfinite[:] = cbad

    # -- smoothing ------------------------------------------------------------------------------
    def ema(self, weight: float) -> "Series":
        """TensorBoard's debiased EMA of the values (non-finite points passed through; a
        constant series returned unchanged), as a Series with the same steps and times. Kept
        per weight (the last EMA_CACHE weights asked for) and extended as points arrive; weight
        0 is the series itself. Creates the cache on first use, and brings it up to date lazily
        here (appends do not pay for it: a replay of 4,000 chunks smoothed each one as it came,
        0.9 s of a 1.1 s feed): call under the readers' lock."""
        w = _clamp_weight(weight)
        if w == 0.0:
            return self
        e = self._ema.get(w)
        if e is None:
            while len(self._ema) >= EMA_CACHE:
                del self._ema[next(iter(self._ema))]
            e = self._ema[w] = _Ema(w)
            e.extend(self)
        else:  # most recently used last
            del self._ema[w]
            self._ema[w] = e
            e.extend(self)  # the points appended since it was last asked for, in one pass
        return e.series


class _Ema:
    """One weight's smoothed copy of a series, extended from where it stopped."""

    def __init__(self, w: float):
        self.w = w
        self.series = Series()
        self.done = 0  # points of the source smoothed
        self.state = 0.0  # TensorBoard's `last`
        self.n_finite = 0
        self.first: float | None = None  # the source's first value while it is constant
        self.constant = True

    def extend(self, src: Series) -> None:
        import numpy as np

        new = src._slice(self.done, src._n).astype(np.float64)
        if not len(new):
            return
        if self.constant:
            if self.first is None:
                self.first = float(new[0])
            if not (new == self.first).all():  # NaN != NaN: a null point ends constancy too
                if self.done:  # what was passed through unchanged is smoothed now
                    self.__init__(self.w)
                    self.constant = False
                    self.extend(src)
                    return
                self.constant = False
        out = new if self.constant else self._smooth(new)
        s = self.series
        # the smoothed series shares the source's steps and time (the same arrays: the source
        # only appends to them, and drops this cache when it truncates)
        s._seg_idx, s._seg_step, s._seg_stride = src._seg_idx, src._seg_step, src._seg_stride
        s._t_idx, s._t_val = src._t_idx, src._t_val
        start = s._n
        fin = np.isfinite(out)
        f = out[fin]
        if len(f):
            lo, hi = float(f.min()), float(f.max())
            s.min = lo if s.min is None else min(s.min, lo)
            s.max = hi if s.max is None else max(s.max, hi)
            s.last = float(f[-1])
        s.count += len(out)
        s.nonfinite += len(out) - len(f)
        s._write_values(start, np.where(fin, np.clip(out, -_F32_MAX, _F32_MAX), out).astype(np.float32))
        s._update_leaves(start, start + len(out), all_finite=len(f) == len(out))
        s._n = start + len(out)
        s.revision += 1
        self.done = src._n

    def _smooth(self, v: "np.ndarray") -> "np.ndarray":
        """The debiased EMA of v continuing from the state, vectorized in rows of C points
        (w**-C stays below 1e100: no overflow; the rounding of a row's cumulative sum, scaled back
        by w**k, stays about k*eps/(1-w) of the values' size), carried between rows in a short
        Python loop."""
        import numpy as np

        w = self.w
        out = v.copy()
        fin = np.isfinite(v)
        x = v[fin]
        m = len(x)
        if not m:
            return out
        if w >= 1.0:  # TensorBoard: last stays 0 and the debias weight is 1
            out[fin] = self.state
            self.n_finite += m
            return out
        c = max(1, min(16384, m, int(100 * math.log(10) / -math.log(w)) + 1))  # rows no longer than v
        rows = -(-m // c)
        pad = np.zeros(rows * c)
        pad[:m] = x
        mat = pad.reshape(rows, c)
        j = np.arange(c)
        local = (1 - w) * np.cumsum(mat * w ** -j.astype(np.float64), axis=1) * w ** j
        # carry: the state before each row
        wc = w ** c
        s = self.state
        carried = []
        for end in local[:, -1].tolist():
            carried.append(s)
            s = end + wc * s
        last = local + np.array(carried)[:, None] * w ** (j + 1)
        last = last.ravel()[:m]
        self.state = float(last[-1])
        # the debias divisor 1 - w**n is exactly 1.0 once w**n < 2**-60: powers only before that
        settled = int(60 * math.log(2) / -math.log(w)) + 1 if w > 0.0 else 1
        if self.n_finite + 1 < settled:
            nacc = self.n_finite + np.arange(1, min(m, settled - self.n_finite) + 1)
            last[:len(nacc)] /= 1 - np.power(w, nacc)
        self.n_finite += m
        out[fin] = last
        return out
