"""MetricChart: what a user sees on screen for known data, bad data and every size."""

from __future__ import annotations

import numpy as np
import pytest
from textual.app import App, ComposeResult
from torchdeck.fmt import fmt_number
from torchdeck.runs.view import Series
from torchdeck.tui.widgets import Curve, MetricChart
from torchdeck.tui.widgets.chart import TOO_SMALL, WAITING


def make_series(values, steps=None, times=None) -> Series:
    """A Series of these values at steps 0, 1, ... (or the given steps), timed 0.5 s a step (or
    at the given evenly spaced times; none when steps are given without times)."""
    values = np.asarray(values, dtype=np.float64)
    s = Series()
    n = len(values)
    if steps is not None:
        s.add_points([int(x) for x in steps], values.tolist(),
                      elapsed=None if times is None else float(times[-1]))
        return s
    if n == 0:
        return s
    times = np.arange(n) * 0.5 if times is None else np.asarray(times, dtype=np.float64)
    # Points are spread evenly from the previous time anchor up to `elapsed`: the first point
    # at its own time anchors the rest.
    s.extend(0, values[:1], elapsed=float(times[0]))
    if n > 1:
        s.extend(1, values[1:], elapsed=float(times[-1]))
    return s


class ChartApp(App):
    def __init__(self, chart: MetricChart):
        super().__init__()
        self.chart = chart

    def compose(self) -> ComposeResult:
        yield self.chart


async def screen(chart: MetricChart, size=(100, 24)) -> list[str]:
    """The chart's rows as text, rendered by a running app; every row is exactly the width."""
    async with ChartApp(chart).run_test(size=size) as pilot:
        await pilot.pause()
        assert chart.size.width == size[0] and chart.size.height == size[1]
        strips = [chart.render_line(y) for y in range(chart.size.height)]
        assert all(s.cell_length == size[0] for s in strips), [s.cell_length for s in strips]
        return [s.text for s in strips]


def styled(chart: MetricChart, row: int) -> list[tuple[str, object]]:
    return [(seg.text, seg.style) for seg in chart.render_line(row) if seg.text.strip()]


def gutter_labels(rows: list[str]) -> list[str]:
    return [r.split("┤")[0].strip() for r in rows if "┤" in r]


def braille(text: str) -> bool:
    return any(0x2800 < ord(ch) <= 0x28FF for ch in text)


def chart_of(*series, **opts) -> MetricChart:
    chart = MetricChart(opts.pop("title", "loss"))
    colors = ["cyan", "magenta", "yellow", "green"]
    chart.set_curves([Curve(s, f"run{i}", colors[i % 4]) for i, s in enumerate(series)])
    for k, v in opts.items():
        setattr(chart, k, v)
    return chart


async def test_one_spike_among_a_million_points_shows_in_the_envelope():
    values = np.ones(1_000_000)
    values[654_321] = 100.0
    rows = await screen(chart_of(make_series(values)), size=(100, 20))
    top = rows[1].split("┤" if "┤" in rows[1] else "│", 1)[1]
    lit = [i for i, ch in enumerate(top) if braille(ch)]
    assert len(lit) == 1, top  # only the spike reaches the top row
    assert abs(lit[0] / len(top) - 0.654) < 0.02
    assert "100" in gutter_labels(rows)
    rows = await screen(chart_of(make_series(values), smoothing=0.9), size=(100, 20))
    top = rows[1].split("┤" if "┤" in rows[1] else "│", 1)[1]
    assert [i for i, ch in enumerate(top) if braille(ch)] == lit  # smoothed, the raw envelope still has it


async def test_axes_labels_for_known_data():
    rows = await screen(chart_of(make_series(np.linspace(0, 100, 1001))), size=(100, 24))
    assert gutter_labels(rows) == ["100", "75", "50", "25", "0"]
    bottom = rows[-1].split()
    assert bottom[0] == "0" and bottom[-1] == "1k"
    assert "400" in bottom and "600" in bottom
    assert rows[0].startswith("loss  run0 100")


async def test_step_labels_use_k_and_m_suffixes():
    s = make_series(np.arange(2_000_001, dtype=np.float64) % 7)
    rows = await screen(chart_of(s), size=(100, 12))
    assert rows[-1].split()[0] == "0" and "2M" in rows[-1].split() and "1M" in rows[-1].split()


@pytest.mark.parametrize("steps", [[1, 2], [1, 2, 3, 4, 5], list(range(1, 21))])
async def test_a_short_run_labels_whole_steps_each_once_where_it_is(steps):
    """Steps are whole numbers: a run of 2 steps read "1 1 1 2 2 2" (ticks at 1.2, 1.4, ...), one
    of 20 put "2" where step 2.5 is."""
    rows = await screen(chart_of(make_series([1.0 / s for s in steps], steps=steps)), size=(100, 16))
    labels = rows[-1].split()
    assert all(label.isdigit() for label in labels) and len(set(labels)) == len(labels), labels
    ints = [int(x) for x in labels]
    assert set(ints) <= set(steps) and str(steps[-1]) in labels, labels
    assert len({b - a for a, b in zip(ints, ints[1:])}) <= 1, labels  # evenly spaced, as drawn


async def test_log_scale_labels_powers_of_ten_and_leaves_out_zero_and_negatives():
    values = 10.0 ** np.linspace(-3, 1, 5000)
    values[2000] = 0.0
    values[3000] = -5.0
    chart = chart_of(make_series(values), log_y=True)
    rows = await screen(chart, size=(100, 24))
    assert gutter_labels(rows) == ["10", "1", "0.1", "0.01", "0.001"]
    assert "log" in rows[0]
    # The non-positive points are a mark on the bottom row, not a stretch of the scale.
    bottom_plot = rows[-2].split("│", 1)[1] if "│" in rows[-2] else rows[-2].split("┤", 1)[1]
    marked = [i / len(bottom_plot) for i, ch in enumerate(bottom_plot) if braille(ch)]
    assert any(abs(x - 0.4) < 0.02 for x in marked) and any(abs(x - 0.6) < 0.02 for x in marked)


async def test_log_scale_within_one_decade_uses_1_2_5():
    rows = await screen(chart_of(make_series(np.linspace(1.0, 6.0, 100)), log_y=True), size=(60, 16))
    assert gutter_labels(rows) == ["5", "2", "1"]


async def test_time_axis_labels_are_durations():
    s = make_series(np.linspace(1, 0, 1000), times=np.arange(1000) * 0.5)  # 0 .. 499.5 s
    rows = await screen(chart_of(s, x_axis="time"), size=(100, 12))
    assert rows[-1].split() == ["0s", "2m", "4m", "6m", "8m"]
    rows = await screen(chart_of(s, x_axis="time", last_n=60), size=(100, 12))
    assert " ".join(rows[-1].split()) == "7m 20s 7m 30s 7m 40s 7m 50s 8m 00s 8m 10s"  # 439.5 .. 499.5 s
    rows = await screen(chart_of(s, x_axis="time", cursor=61.2), size=(100, 12))
    assert rows[-1].startswith("time 1m 01s  step 122  value ")
    s2 = make_series(np.ones(100), times=90_000 + np.arange(100) * 30.0)  # 25 h in, 50 min long
    rows = await screen(chart_of(s2, x_axis="time"), size=(100, 12))
    assert rows[-1].split()[:4] == ["25h", "00m", "25h", "10m"]


async def test_smoothing_draws_the_ema_bright_over_the_raw_envelope_dim():
    s = make_series(np.tile([0.0, 10.0], 5000))  # noise between 0 and 10, mean 5
    chart = chart_of(s, smoothing=0.99)
    async with ChartApp(chart).run_test(size=(60, 13)) as pilot:
        await pilot.pause()

        def kinds(row):
            return {bool(st.dim) for t, st in styled(chart, row) if braille(t)}

        assert kinds(1) == {True}  # the top of the envelope: raw, faint
        assert kinds(6) == {False, True} or kinds(6) == {False}  # the EMA at 5: bright
        assert kinds(11) == {True}  # the bottom of the envelope


async def test_a_nan_is_a_red_mark_at_the_top_and_does_not_stretch_the_scale():
    values = np.linspace(1.0, 2.0, 10_000)
    values[5000] = np.nan
    values[7000] = np.inf
    chart = chart_of(make_series(values))
    async with ChartApp(chart).run_test(size=(80, 16)) as pilot:
        await pilot.pause()
        top = styled(chart, 1)
        red = [t for t, st in top if st is not None and st.color is not None and st.color.name == "red"]
        assert len("".join(red).strip()) >= 2, top
        labels = gutter_labels([chart.render_line(y).text for y in range(16)])
        assert labels[0] == "2" and labels[-1] == "1"


async def test_cursor_readout_equals_the_series_nearest_point():
    s = make_series(np.sin(np.arange(50_000) / 300.0) + 2)
    chart = chart_of(s, cursor=12_345.3)
    rows = await screen(chart, size=(100, 20))
    step, _, value = s.nearest(12_345.3)
    assert rows[-1].startswith(f"step {step:,}  value {fmt_number(value)}")
    chart2 = chart_of(s, cursor=30_000.0, smoothing=0.6)
    rows = await screen(chart2, size=(100, 20))
    sm = s.ema(0.6).nearest(30_000.0)[2]
    assert f"step 30,000  value {fmt_number(s.values[30_000])} (smoothed {fmt_number(sm)})" in rows[-1]


async def test_cursor_readout_gives_every_curve_its_value_at_that_x():
    a, b = make_series(np.arange(1000.0)), make_series(np.arange(1000.0) * 2)
    rows = await screen(chart_of(a, b, cursor=400.0), size=(100, 12))
    assert rows[-1].startswith("step 400  value 400  run1 800")


async def test_a_cursor_outside_the_zoomed_window_reads_out_the_window_edge():
    s = make_series(np.arange(10_000.0))
    rows = await screen(chart_of(s, cursor=100.0, last_n=1000), size=(100, 12))
    assert rows[-1].startswith("step 9,000  value 9000")


async def test_move_cursor_starts_at_the_newest_point_and_moves_by_cells():
    s = make_series(np.arange(1000, dtype=np.float64))
    chart = chart_of(s)
    async with ChartApp(chart).run_test(size=(80, 12)) as pilot:
        await pilot.pause()
        chart.move_cursor(0)
        assert chart.cursor is not None and 990 <= chart.cursor <= 1000
        chart.move_cursor(-1000)
        assert chart.cursor == 0
        chart.move_cursor(3)
        await pilot.pause()
        assert 30 < chart.cursor < 50
        text = chart.render_line(chart.size.height - 1).text
        assert text.startswith(f"step {s.nearest(chart.cursor)[0]:,}")


async def test_moving_the_cursor_redraws_without_asking_the_series_for_columns():
    s = make_series(np.arange(1000.0))
    chart = chart_of(s, cursor=500.0)
    async with ChartApp(chart).run_test(size=(80, 12)) as pilot:
        await pilot.pause()
        frames = chart.redraws
        chart.move_cursor(-5)
        await pilot.pause()
        rows = [chart.render_line(y).text for y in range(12)]
        assert chart.redraws == frames
        step = s.nearest(chart.cursor)[0]
        assert rows[-1].startswith(f"step {step}  value {step}")
        col = [r.split("│", 1)[1] if "│" in r else r.split("┤", 1)[1] for r in rows[1:10]]
        x = int(chart.cursor / 1000 * 72)
        assert sum(braille(c[x]) for c in col) >= 7  # the dotted vertical, except where the line is


async def test_zoom_last_n_shows_only_that_window_on_the_x_axis():
    s = make_series(np.r_[np.full(9000, 50.0), np.linspace(1, 2, 1000)])
    rows = await screen(chart_of(s, last_n=1000), size=(100, 16))
    ticks = [float(t.replace("k", "e3")) for t in rows[-1].split()]
    assert min(ticks) >= 9000 and max(ticks) >= 9800
    assert gutter_labels(rows)[0] == "2"  # the 50s before the window do not set the scale


async def test_overlay_legend_shows_each_label_in_its_colour():
    a, b, c = (make_series(np.linspace(k, k + 1, 500)) for k in range(3))
    chart = chart_of(a, b, c)
    async with ChartApp(chart).run_test(size=(100, 16)) as pilot:
        await pilot.pause()
        top = styled(chart, 0)
        for label, color in (("run0", "cyan"), ("run1", "magenta"), ("run2", "yellow")):
            assert any(label in t and st.color.name == color for t, st in top), top


async def test_later_curves_win_a_shared_cell():
    a, b = make_series(np.ones(500)), make_series(np.ones(500))
    chart = chart_of(a, b)
    async with ChartApp(chart).run_test(size=(60, 10)) as pilot:
        await pilot.pause()
        colors = {st.color.name for y in range(1, 9) for t, st in styled(chart, y) if braille(t)}
        assert colors == {"magenta"}


async def test_constant_data_is_centred():
    rows = await screen(chart_of(make_series(np.full(100, 3.0))), size=(60, 13))
    plot = rows[1:-1]
    lit = [i for i, r in enumerate(plot) if braille(r)]
    assert lit and abs(sum(lit) / len(lit) - (len(plot) - 1) / 2) <= 1
    assert "3" in gutter_labels(rows)


async def test_smoothing_legend_shows_last_and_smoothed_value():
    s = make_series(np.r_[np.zeros(100), np.ones(5)])
    rows = await screen(chart_of(s, smoothing=0.9), size=(80, 10))
    sm = s.ema(0.9).values[-1]
    assert f"run0 1 (smoothed {fmt_number(sm)})" in rows[0]


async def test_marker_curve_draws_a_cell_per_point():
    loss = make_series(np.linspace(2, 1, 1000))
    val = make_series([1.9, 1.5, 1.2], steps=[300, 600, 999])
    chart = MetricChart("loss")
    chart.set_curves([Curve(loss, "loss", "cyan"), Curve(val, "val_loss", "yellow", markers=True)])
    rows = await screen(chart, size=(80, 16))
    assert sum(r.count("●") for r in rows[1:-1]) == 3
    assert "val_loss" in rows[0]


async def test_too_small():
    for size in ((19, 10), (40, 4)):
        rows = await screen(chart_of(make_series(np.ones(10))), size=size)
        assert rows[0].strip() == TOO_SMALL and not "".join(rows[1:]).strip()


async def test_empty():
    for chart in (chart_of(), chart_of(make_series([]))):
        rows = await screen(chart, size=(60, 10))
        assert any(r.strip() == WAITING for r in rows)


async def test_points_without_times_say_so_on_the_time_axis():
    s = make_series(np.ones(10), steps=range(10))  # a log without times
    rows = await screen(chart_of(s, x_axis="time"), size=(60, 10))
    assert any(r.strip() == "no time values for these points" for r in rows)


def test_importing_the_chart_does_not_import_numpy():
    import subprocess
    import sys

    code = "import sys, torchdeck.tui.widgets.chart; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # the first frame does not wait for numpy


HOSTILE = {
    "all nan": np.full(1000, np.nan),
    "infs": np.r_[np.inf, -np.inf, np.ones(10)],
    "huge": np.array([1e308, -1e308, 0.0, 1e-308]),
    "tiny": np.array([1e-300, 2e-300]),
    "one": np.array([5.0]),
    "negative": -np.arange(100.0),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.parametrize("log_y", [False, True])
async def test_hostile_data_renders_every_row_at_full_width(name, log_y):
    for size in ((20, 5), (250, 80), (81, 23)):
        chart = chart_of(make_series(HOSTILE[name]), log_y=log_y, smoothing=0.5, cursor=0.0)
        rows = await screen(chart, size=size)  # asserts every strip's width
        assert rows[0].startswith("loss")


async def test_poll_redraws_only_when_data_changed():
    s = make_series(np.ones(100))
    chart = chart_of(s)
    async with ChartApp(chart).run_test(size=(60, 10)) as pilot:
        await pilot.pause()
        before = chart.redraws
        assert chart.poll() is False
        for y in range(10):
            chart.render_line(y)
        assert chart.redraws == before  # nothing changed: the cached strips
        s.extend(100, [5.0] * 10)
        assert chart.poll() is True
        await pilot.pause()
        assert chart.redraws == before + 1
        assert "5" in chart.render_line(0).text


async def test_hostile_labels_cannot_reach_the_terminal_and_wide_ones_keep_the_width():
    chart = MetricChart("\x1b[2Jtitle\n")
    chart.set_curves([Curve(make_series([1.0, 2.0]), "\x1b]0;pwned\x07run", "cyan"),
                      Curve(make_series([3.0, 1.0]), "训练运行" * 8, "magenta")])
    rows = await screen(chart, size=(40, 8))  # asserts every strip's width
    assert not any(ch in "".join(rows) for ch in "\x1b\x07\n")
    assert rows[0].startswith("\ufffd[2Jtitle\ufffd  ━ \ufffd]0;pwned\ufffdrun  ━ 训练")


async def test_a_feeding_thread_and_the_chart_share_the_series_under_its_lock():
    import threading

    lock = threading.Lock()
    s = make_series([1.0])
    chart = MetricChart("loss", lock=lock)
    chart.set_curves([Curve(s, "run", "cyan")])
    chunks = 300

    def feed():
        for k in range(chunks):
            with lock:
                s.extend(1 + k * 1000, np.full(1000, float(k)), elapsed=(k + 1) * 0.1)

    async with ChartApp(chart).run_test(size=(80, 12)) as pilot:
        feeder = threading.Thread(target=feed)
        feeder.start()
        while feeder.is_alive():
            if chart.poll():
                await pilot.pause()  # the app redraws from the Series while the thread appends
        feeder.join()
        chart.poll()
        await pilot.pause()
        assert chart.render_line(0).text.startswith(f"loss  run {chunks - 1}")
        assert "300k" in chart.render_line(11).text


async def test_set_curves_shows_the_new_curves_at_once():
    chart = chart_of(make_series(np.ones(50)))
    async with ChartApp(chart).run_test(size=(60, 10)) as pilot:
        await pilot.pause()
        assert chart.render_line(0).text.startswith("loss  run0 1")
        chart.set_curves([Curve(make_series(np.full(50, 7.0)), "other", "green")])  # same revision
        await pilot.pause()
        assert chart.render_line(0).text.startswith("loss  other 7")
        frames = chart.redraws
        chart.set_curves(chart.curves)  # the same Series again (a screen re-applying its choice)
        await pilot.pause()
        assert chart.redraws == frames and chart.render_line(0).text.startswith("loss  other 7")


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="not a colour"):
        Curve(make_series([1.0]), "run", "no-such-colour")
    chart = MetricChart()
    with pytest.raises(ValueError):
        chart.x_axis = "epoch"
    with pytest.raises(ValueError):
        chart.last_n = -3
    with pytest.raises(ValueError):
        chart.smoothing = float("nan")
    chart.smoothing = 5
    assert chart.smoothing == 0.999
    chart.cursor = float("inf")
    assert chart.cursor is None
