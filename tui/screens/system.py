"""The system panel (key u or F2, from any screen): each GPU as nvidia-smi numbers it (name,
memory, utilization, temperature, power, its processes with torchdeck's runs marked) with
short history sparklines, and the host's CPU and memory. Sampled once a second in a thread
(torchdeck.system); the widgets are updated from the message, never from the thread."""

from __future__ import annotations

from dataclasses import dataclass

from rich.style import Style
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Sparkline, Static
from torchdeck.system import History, Sample, SystemReader

SAMPLE_SECONDS = 1.0
BARS = "▁▂▃▄▅▆▇█"


class PercentSparkline(Sparkline):
    """A percent series on a fixed 0-100 scale, newest on the right, one sample a cell. Textual's
    Sparkline scales each series from its own minimum to its maximum: host memory moving by 0.1 %
    filled the whole height, the picture of a leak that was not one."""

    def render(self) -> Text:
        width = self.size.width
        data = list(self.data or [])[-width:] if width > 0 else []
        _, base = self.background_colors
        low = base + (self.min_color or self.get_component_styles("sparkline--min-color").color)
        high = base + (self.max_color or self.get_component_styles("sparkline--max-color").color)
        text = Text(" " * (width - len(data)))
        for v in data:
            share = min(1.0, max(0.0, v / 100.0))
            text.append(BARS[min(len(BARS) - 1, int(share * len(BARS)))], style=Style(color=low.blend(high, share).rich_color))
        return text


def _gib(mb: float | None) -> str:
    return "?" if mb is None else f"{mb / 1024:.1f}"


def _opt(v: float | None, unit: str, fmt: str = "{:.0f}") -> str:
    return "-" if v is None else fmt.format(v) + unit


def gpu_lines(s: Sample) -> dict[int, str]:
    """Each GPU's text: its figures on one line, then one line a process."""
    out = {}
    for g in s.gpus:
        power = _opt(g.power_w, " W") + (f"/{g.power_limit_w:.0f} W" if g.power_limit_w else "")
        lines = [f"[b]GPU {g.index}[/b] {g.name}  mem {_gib(g.mem_used_mb)}/{_gib(g.mem_total_mb)} GiB  "
                 f"util {_opt(g.util, '%')}  {_opt(g.temp_c, '°C')}  {power}"]
        for p in g.processes:
            mark = f"[b]run {p.run_id}[/b] " if p.run_id else ""
            used = f"{p.used_mb:.0f} MiB" if p.used_mb is not None else "? MiB"
            lines.append(f"  {p.pid:>7} {used:>10}  {mark}{p.command[:60]}")
        if not g.processes:
            lines.append("  [dim]no processes[/dim]")
        out[g.index] = "\n".join(lines)
    return out


def host_line(s: Sample) -> str:
    h = s.host
    cpu = _opt(h.cpu_percent, "%")
    mem = f"{_gib(h.mem_used_mb)}/{_gib(h.mem_total_mb)} GiB"
    return f"[b]Host[/b]  CPU {cpu} of {h.cores} core(s)  memory {mem}"


def source_line(s: Sample) -> str:
    if s.source == "nvml":
        return f"{len(s.gpus)} GPU(s), read through NVML"
    if s.source == "torch.cuda":
        return f"{len(s.gpus)} GPU(s), memory through torch.cuda" + (f" ({s.note})" if s.note else "")
    return "no GPU" + (f" ({s.note})" if s.note else "")


class SystemScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,u,f2", "dismiss", "Close", id="system.close")]

    @dataclass
    class Sampled(Message):
        sample: Sample

    def __init__(self, reader: SystemReader | None = None):
        super().__init__()
        self._reader = reader
        self.history = History()
        self.last: Sample | None = None
        self._gpus_shown: tuple[int, ...] | None = None

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="system-box") as box:
            box.border_title = "System"
            yield Static("sampling…", id="system-source")
            yield VerticalScroll(id="system-gpus")
            yield Static("", id="system-host")
            with Horizontal(classes="system-sparks"):
                yield Static("cpu ", classes="dim")
                yield PercentSparkline([], id="spark-cpu")
                yield Static(" mem ", classes="dim")
                yield PercentSparkline([], id="spark-mem")

    def on_mount(self) -> None:
        self.sample_now()
        self.set_interval(SAMPLE_SECONDS, self.sample_now)

    def on_unmount(self) -> None:
        if self._reader is not None:
            self._reader.close()

    @work(thread=True, exclusive=True, exit_on_error=False, group="system-sample")
    def sample_now(self) -> None:
        if self._reader is None:
            self._reader = SystemReader()
        self.post_message(self.Sampled(self._reader.sample()))

    @on(Sampled)
    async def show(self, message: Sampled) -> None:
        s = message.sample
        self.last = s
        self.history.add(s)
        self.query_one("#system-source", Static).update(source_line(s))
        box = self.query_one("#system-gpus", VerticalScroll)
        box.display = bool(s.gpus)
        indices = tuple(g.index for g in s.gpus)
        if indices != self._gpus_shown:
            self._gpus_shown = indices
            await box.remove_children()
            rows = []
            for i in indices:
                rows.append(Vertical(
                    Static("", id=f"gpu-{i}-text"),
                    Horizontal(Static("util ", classes="dim"), PercentSparkline([], id=f"spark-gpu{i}-util"),
                               Static(" mem ", classes="dim"), PercentSparkline([], id=f"spark-gpu{i}-mem"),
                               classes="system-sparks"),
                    classes="system-gpu"))
            await box.mount_all(rows)
        for i, text in gpu_lines(s).items():
            self.query_one(f"#gpu-{i}-text", Static).update(text)
            for kind in ("util", "mem"):
                self.query_one(f"#spark-gpu{i}-{kind}", Sparkline).data = self.history.get(f"gpu{i}.{kind}")
        self.query_one("#system-host", Static).update(host_line(s))
        self.query_one("#spark-cpu", Sparkline).data = self.history.get("cpu")
        self.query_one("#spark-mem", Sparkline).data = self.history.get("mem")
