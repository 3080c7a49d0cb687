"""Widgets shared by the screens, one module each."""

from .chart import Curve, MetricChart
from .loss_chart import LossChart
from .mode_bar import MODES, ModeBar
from .run_label import run_label, short_run_id, short_run_label
from .tables import cursor_key

__all__ = ["Curve", "LossChart", "MetricChart", "MODES", "ModeBar", "cursor_key", "run_label", "short_run_id", "short_run_label"]
