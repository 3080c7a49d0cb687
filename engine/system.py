"""The machine in view: each GPU (name, memory, utilization, temperature, power, the processes on
it, torchdeck's runs marked) and the host's CPU and memory, for the system panel.

GPUs are numbered as nvidia-smi numbers them (PCI bus order): NVML's own indices, and for
torch.cuda, CUDA_DEVICE_ORDER=PCI_BUS_ID set before CUDA starts (`pci_bus_order`). NVML
(`nvidia-ml-py`, imported as `pynvml`) when it is installed and answers; torch.cuda otherwise
(memory only, and only when torch is already imported: the panel never pays for importing
it); neither: "no GPU". Each reading is a plain dataclass; `History` keeps bounded deques per
device that the panel's sparklines draw. No Textual here.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

HISTORY = 60  # samples kept per series (a minute at the panel's 1 Hz)
MIB = 1 << 20


def pci_bus_order() -> None:
    """Number CUDA devices as nvidia-smi does (before CUDA is initialized; a choice made
    explicitly beforehand is kept)."""
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")


@dataclass
class GpuProcess:
    pid: int
    used_mb: float | None
    command: str
    run_id: str | None = None  # the torchdeck run it belongs to


@dataclass
class Gpu:
    index: int
    name: str
    mem_used_mb: float
    mem_total_mb: float
    util: float | None = None  # percent
    temp_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    processes: list[GpuProcess] = field(default_factory=list)

    @property
    def mem_free_mb(self) -> float:
        return max(0.0, self.mem_total_mb - self.mem_used_mb)


@dataclass
class Host:
    cpu_percent: float | None
    cores: int
    mem_used_mb: float | None
    mem_total_mb: float | None


@dataclass
class Sample:
    source: str  # "nvml", "torch.cuda" or "none"
    gpus: list[Gpu]
    host: Host
    note: str = ""  # why the source is what it is ("NVML not installed", "NVML failed: ..."), or ""
    time: float = 0.0


# -- host ----------------------------------------------------------------------------------------

class HostReader:
    """CPU use from /proc/stat between two readings; memory from /proc/meminfo (Linux)."""

    def __init__(self):
        self._last: tuple[int, int] | None = None

    def _cpu_times(self) -> tuple[int, int] | None:
        try:
            with open("/proc/stat", "rb") as f:
                parts = f.readline().split()[1:]
        except OSError:
            return None
        vals = [int(v) for v in parts]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        return sum(vals), idle

    def read(self) -> Host:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        now = self._cpu_times()
        cpu = None
        if now is not None and self._last is not None:
            total, idle = now[0] - self._last[0], now[1] - self._last[1]
            cpu = 100.0 * (total - idle) / total if total > 0 else 0.0
        self._last = now
        used = total_mb = None
        try:
            info = {}
            with open("/proc/meminfo") as f:
                for line in f:
                    k, _, v = line.partition(":")
                    info[k] = int(v.split()[0]) / 1024
            total_mb = info["MemTotal"]
            used = total_mb - info.get("MemAvailable", info.get("MemFree", 0.0))
        except (OSError, KeyError, ValueError, IndexError):
            pass
        return Host(cpu, cores, used, total_mb)


# -- which run a process belongs to --------------------------------------------------------------

_RUN_ENVS = (b"TORCHDECK_DDP_RUN_DIR=", b"TORCHDECK_RUN_DIR=")


def run_of_pid(pid: int) -> str | None:
    """The torchdeck run a process works for: a rank or a command run's process (by the run
    directory in its environment), or a worker (by its command line)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for entry in f.read().split(b"\0"):
                for prefix in _RUN_ENVS:
                    if entry.startswith(prefix):
                        return Path(entry[len(prefix):].decode(errors="replace")).name
    except OSError:
        pass
    args = command_of(pid, split=True)
    if "torchdeck.runs.worker" in args and args[-1] not in ("--standby", "torchdeck.runs.worker"):
        return Path(args[-1]).name
    if "torchdeck.runs.standby" in args or "--standby" in args:
        # a standby worker handed its run works in the run's directory (one not handed one yet: "/")
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            return None
        return cwd.name if cwd.parent.name == "runs" and (cwd / "config.json").exists() else None
    return None


def command_of(pid: int, split: bool = False):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        args = []
    return args if split else " ".join(args)


# -- GPUs ----------------------------------------------------------------------------------------

class NvmlReader:
    """NVML through nvidia-ml-py. `nvml` is the module (pynvml), passed in by tests that stand
    in for the library at its function boundary."""

    def __init__(self, nvml):
        self.nvml = nvml
        nvml.nvmlInit()

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001  (a library already gone)
            pass

    def read(self) -> list[Gpu]:
        n = self.nvml
        out = []
        for i in range(n.nvmlDeviceGetCount()):
            h = n.nvmlDeviceGetHandleByIndex(i)
            name = n.nvmlDeviceGetName(h)
            name = name.decode() if isinstance(name, bytes) else str(name)
            mem = n.nvmlDeviceGetMemoryInfo(h)
            gpu = Gpu(i, name, mem.used / MIB, mem.total / MIB)
            gpu.util = _maybe(lambda: float(n.nvmlDeviceGetUtilizationRates(h).gpu))
            gpu.temp_c = _maybe(lambda: float(n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU)))
            gpu.power_w = _maybe(lambda: n.nvmlDeviceGetPowerUsage(h) / 1000.0)
            gpu.power_limit_w = _maybe(lambda: n.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0)
            procs = []
            for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
                for p in _maybe(lambda: getattr(n, getter)(h)) or []:
                    if any(q.pid == p.pid for q in procs):
                        continue
                    used = getattr(p, "usedGpuMemory", None)
                    procs.append(GpuProcess(int(p.pid), used / MIB if isinstance(used, int) else None,
                                            command_of(int(p.pid)), run_of_pid(int(p.pid))))
            gpu.processes = procs
            out.append(gpu)
        return out


def _maybe(fn):
    """One NVML query a device may not support (NVML_ERROR_NOT_SUPPORTED): None instead."""
    try:
        return fn()
    except Exception:  # noqa: BLE001  (pynvml.NVMLError and its many subclasses)
        return None


def torch_cuda_gpus() -> list[Gpu]:
    """Memory of each CUDA device through torch (already imported only), no utilization or power."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        out.append(Gpu(i, torch.cuda.get_device_name(i), (total - free) / MIB, total / MIB))
    return out


class SystemReader:
    """Samples the machine: NVML when it loads and answers, torch.cuda otherwise; the host always.
    `nvml`: the pynvml module to use (None: import it; False: do not try)."""

    def __init__(self, nvml=None):
        pci_bus_order()
        self.host = HostReader()
        self.host.read()  # the first CPU reading is the baseline of the next
        self.nvml_reader: NvmlReader | None = None
        self.note = ""
        if nvml is None:
            try:
                import pynvml as nvml
            except ImportError:
                nvml = False
                self.note = "NVML not installed (pip install nvidia-ml-py)"
        if nvml is not False:
            try:
                self.nvml_reader = NvmlReader(nvml)
            except Exception as e:  # noqa: BLE001  (NVMLError_LibraryNotFound, DriverNotLoaded, ...)
                self.note = f"NVML failed: {_nvml_error(e)}"

    def sample(self) -> Sample:
        host = self.host.read()
        if self.nvml_reader is not None:
            try:
                return Sample("nvml", self.nvml_reader.read(), host, "", time.time())
            except Exception as e:  # noqa: BLE001  (a driver that went away mid-session)
                self.note = f"NVML failed: {_nvml_error(e)}"
                self.nvml_reader.close()
                self.nvml_reader = None
        try:
            gpus = torch_cuda_gpus()
        except Exception as e:  # noqa: BLE001
            return Sample("none", [], host, f"{self.note}; torch.cuda failed: {e}".strip("; "), time.time())
        if gpus:
            return Sample("torch.cuda", gpus, host, self.note, time.time())
        return Sample("none", [], host, self.note, time.time())

    def close(self) -> None:
        if self.nvml_reader is not None:
            self.nvml_reader.close()


def _nvml_error(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


class History:
    """Bounded series per device for sparklines: GPU utilization and memory use (percent), host CPU
    and memory (percent)."""

    def __init__(self, maxlen: int = HISTORY):
        self.maxlen = maxlen
        self.series: dict[str, deque[float]] = {}

    def _add(self, key: str, value: float | None) -> None:
        if value is None:
            return
        self.series.setdefault(key, deque(maxlen=self.maxlen)).append(float(value))

    def add(self, s: Sample) -> None:
        self._add("cpu", s.host.cpu_percent)
        if s.host.mem_used_mb is not None and s.host.mem_total_mb:
            self._add("mem", 100.0 * s.host.mem_used_mb / s.host.mem_total_mb)
        for g in s.gpus:
            self._add(f"gpu{g.index}.util", g.util)
            if g.mem_total_mb:
                self._add(f"gpu{g.index}.mem", 100.0 * g.mem_used_mb / g.mem_total_mb)

    def get(self, key: str) -> list[float]:
        return list(self.series.get(key, ()))


def gpu_choices(sample: Sample) -> list[tuple[str, str]]:
    """(device, label) for the form's device field: each GPU with its free memory."""
    return [(f"cuda:{g.index}", f"cuda:{g.index} {g.name}, {g.mem_free_mb / 1024:.1f} of "
                                f"{g.mem_total_mb / 1024:.1f} GiB free") for g in sample.gpus]
