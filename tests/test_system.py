"""The system panel: the real machine here (no GPU, no NVML: it must say so), the host's CPU and
memory with sparklines, opened from any screen.

The NVML path is tested against a FAKE NVML: this machine has no NVIDIA GPU and no driver, so
the pynvml module is replaced at its function boundary (the nvml* calls torchdeck makes) by
`FakeNvml` below. The real library is exercised by benchmarks/gpu_check.py on a GPU machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from helpers import wait_until
from textual.widgets import Sparkline
from torchdeck.system import History, SystemReader, gpu_choices, run_of_pid
from torchdeck.tui.app import TorchdeckApp
from torchdeck.tui.screens.system import SystemScreen
from torchdeck.workspace import Workspace
from tui_helpers import screen_text, wait_for

MIB = 1 << 20


class NVMLError(Exception):
    pass


class FakeNvml:
    """FAKE pynvml (see the module docstring): two GPUs, the second without power readings
    (NVML_ERROR_NOT_SUPPORTED), one process on GPU 0 that is a torchdeck rank."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, rank_pid: int, *, fail_init: bool = False):
        self.rank_pid = rank_pid
        self.fail_init = fail_init
        self.fail_reads = False
        self.shut = False

    def nvmlInit(self):
        if self.fail_init:
            raise NVMLError("Driver Not Loaded")

    def nvmlShutdown(self):
        self.shut = True

    def nvmlDeviceGetCount(self):
        if self.fail_reads:
            raise NVMLError("GPU is lost")
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return ["NVIDIA H200", b"NVIDIA A100-SXM4-80GB"][h]

    def nvmlDeviceGetMemoryInfo(self, h):
        total = [141 * 1024, 80 * 1024][h] * MIB
        return SimpleNamespace(total=total, used=[20 * 1024 * MIB, 1024 * MIB][h], free=0)

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=[87, 0][h], memory=10)

    def nvmlDeviceGetTemperature(self, h, kind):
        return [61, 33][h]

    def nvmlDeviceGetPowerUsage(self, h):
        if h == 1:
            raise NVMLError("Not Supported")
        return 412_000

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        if h == 1:
            raise NVMLError("Not Supported")
        return 700_000

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=self.rank_pid, usedGpuMemory=18 * 1024 * MIB)] if h == 0 else []

    def nvmlDeviceGetGraphicsRunningProcesses(self, h):
        raise NVMLError("Not Supported")


@pytest.fixture
def rank_process(tmp_path):
    """A real process carrying a run's mark, as a rank does."""
    run_dir = tmp_path / "runs" / "20260101-000000-abcd"
    run_dir.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            env={**os.environ, "TORCHDECK_DDP_RUN_DIR": str(run_dir)})
    yield proc
    proc.kill()
    proc.wait()


def test_nvml_readings_with_a_fake_nvml(rank_process):
    fake = FakeNvml(rank_process.pid)
    reader = SystemReader(nvml=fake)
    s = reader.sample()
    assert s.source == "nvml" and [g.index for g in s.gpus] == [0, 1]
    g0, g1 = s.gpus
    assert (g0.name, g0.mem_used_mb, g0.mem_total_mb, g0.util, g0.temp_c, g0.power_w, g0.power_limit_w) == \
        ("NVIDIA H200", 20 * 1024, 141 * 1024, 87.0, 61.0, 412.0, 700.0)
    assert g1.name == "NVIDIA A100-SXM4-80GB" and g1.power_w is None and g1.processes == []
    [p] = g0.processes
    assert p.pid == rank_process.pid and p.run_id == "20260101-000000-abcd" and p.used_mb == 18 * 1024
    assert gpu_choices(s)[0] == ("cuda:0", "cuda:0 NVIDIA H200, 121.0 of 141.0 GiB free")
    h = History(maxlen=3)
    for _ in range(5):
        h.add(reader.sample())
    assert h.get("gpu0.util") == [87.0] * 3 and len(h.get("gpu1.mem")) == 3
    # the driver goes away mid-session: told, and the panel goes on without NVML
    fake.fail_reads = True
    s = reader.sample()
    assert s.source == "none" and "NVML failed: GPU is lost" in s.note and fake.shut


def test_nvml_that_cannot_start_is_told():
    s = SystemReader(nvml=FakeNvml(0, fail_init=True)).sample()
    assert s.source == "none" and s.gpus == [] and s.note == "NVML failed: Driver Not Loaded"


def test_run_of_pid_knows_a_worker_by_its_command_line(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "torchdeck.runs.worker",
                             str(tmp_path / "20260101-000000-beef")])
    try:
        wait_until(lambda: run_of_pid(proc.pid) == "20260101-000000-beef", timeout=10,
                   what="the process's command line to name its run")
        assert run_of_pid(os.getpid()) is None
    finally:
        proc.kill()
        proc.wait()


async def test_the_panel_opens_from_any_screen_and_says_no_gpu_here(tmp_path):
    app = TorchdeckApp(Workspace.open(tmp_path / "ws"))
    async with app.run_test(size=(100, 30)) as pilot:
        for mode_key in ("1", "3"):
            await pilot.press(mode_key)
            before = app.screen
            await pilot.press("u")
            screen = app.screen
            assert isinstance(screen, SystemScreen)
            # this machine: no NVIDIA driver, no nvidia-ml-py, torch's CUDA absent
            await wait_for(pilot, lambda: screen.last is not None, 10, "the first sample")
            text = screen_text(app)
            assert "no GPU" in text and "NVML not installed" in text
            assert f"of {len(os.sched_getaffinity(0))} core(s)" in text and "GiB" in text
            await wait_for(pilot, lambda: len(screen.history.get("cpu")) >= 2, 10, "two CPU readings")
            assert len(screen.query_one("#spark-cpu", Sparkline).data) >= 2
            await pilot.press("escape")
            assert app.screen is before


async def test_the_panel_shows_each_gpu_its_processes_and_history_with_a_fake_nvml(tmp_path, rank_process):
    app = TorchdeckApp(Workspace.open(tmp_path / "ws"))
    async with app.run_test(size=(120, 30)) as pilot:
        screen = SystemScreen(SystemReader(nvml=FakeNvml(rank_process.pid)))
        await app.push_screen(screen)
        await wait_for(pilot, lambda: len(screen.history.get("gpu0.util")) >= 2, 10, "two samples")
        await pilot.pause()
        text = screen_text(app)
        assert "2 GPU(s), read through NVML" in text
        assert "GPU 0 NVIDIA H200  mem 20.0/141.0 GiB  util 87%  61°C  412 W/700 W" in text
        assert "GPU 1 NVIDIA A100-SXM4-80GB  mem 1.0/80.0 GiB  util 0%  33°C  -" in text
        assert f"{rank_process.pid}" in text and "run 20260101-000000-abcd" in text
        assert len(screen.query_one("#spark-gpu0-util", Sparkline).data) >= 2
        await pilot.press("f2")
        assert app.screen is not screen


def test_the_run_header_shows_each_devices_memory():
    """What a run of two ranks on GPUs records (rank 0's device under the plain names, rank 1's
    under rank1_), read back the way the monitor's header reads it."""
    from torchdeck.runs import events as ev
    from torchdeck.runs.view import RunView
    from torchdeck.tui.screens.training import _memory_pieces

    view = RunView("r")
    view.feed([ev.Started("r", {}, 10, 10, 0, "cuda:0", 0.0), ev.Losses.from_floats(1, 1, [1.0, 0.9])])
    assert _memory_pieces(view) == []  # a CPU run: nothing
    figures = {"cuda_allocated_mb": 1024.0, "cuda_reserved_mb": 2048.0, "cuda_peak_mb": 1536.0,
               "rank1_cuda_allocated_mb": 512.0, "rank1_cuda_reserved_mb": 1024.0, "rank1_cuda_peak_mb": 768.0}
    view.feed([ev.Scalars.from_points(name, [2], [v]) for name, v in figures.items()])
    assert _memory_pieces(view) == ["rank 0 cuda mem 1.00/2.00 GiB (peak 1.50)",
                                    "rank 1 cuda mem 0.50/1.00 GiB (peak 0.75)"]


async def test_sparklines_draw_percents_on_a_fixed_scale():
    """Host memory moving from 50.0 % to 50.1 % is two bars of the same height, not the empty and
    the full bar Textual's own scaling (each series from its min to its max) drew; newest right."""
    from textual.app import App
    from torchdeck.tui.screens.system import PercentSparkline

    class One(App):
        def compose(self):
            yield PercentSparkline([50.0, 50.1], id="flat")
            yield PercentSparkline([0.0, 100.0, 25.0], id="range")

    app = One()
    async with app.run_test(size=(10, 4)) as pilot:
        await pilot.pause()
        flat = app.query_one("#flat", PercentSparkline).render().plain
        assert flat == " " * 8 + "▅▅"
        assert app.query_one("#range", PercentSparkline).render().plain == " " * 7 + "▁█▃"
        app.query_one("#flat", PercentSparkline).data = [float(i) for i in range(30)]  # more than fit
        assert len(app.query_one("#flat", PercentSparkline).render().plain) == 10
