"""Widgets shared by the screens, one module each."""

from .chart import Curve, MetricChart
from .loss_chart import LossChart
from .mode_bar import MODES, ModeBar
from .run_label import run_label, short_run_id, short_run_label
from .run_table import RunTable
from .tables import cursor_key
from .virtual_log import FileLines, LineSource, RunLogLines, VirtualLog

__all__ = ["Curve", "FileLines", "LineSource", "LossChart", "MetricChart", "MODES", "ModeBar", "RunLogLines", "RunTable", "VirtualLog",
           "cursor_key", "run_label", "short_run_id", "short_run_label"]
