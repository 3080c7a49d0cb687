"""Numbers for people (torchdeck.fmt): one formatter each, used by the TUI, the CLI and summaries."""

from __future__ import annotations

import math

import pytest
from torchdeck.fmt import (
    fmt_axis,
    fmt_bytes,
    fmt_count,
    fmt_duration,
    fmt_loss,
    fmt_number,
)


@pytest.mark.parametrize("v, text", [
    (1383982498794438656.0, "1.384e+18"),  # a diverging validation loss, not 19 digits
    (123456.7, "123,457"), (1234.5, "1234"), (0.5, "0.5"), (0.0123, "0.0123"), (1.2e-5, "1.200e-05"),
    (0.0, "0"), (math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf"), (None, "-"), (42, "42"),
    (10**20, "1.000e+20"),
])
def test_numbers_by_magnitude(v, text):
    assert fmt_number(v) == text


def test_losses_keep_six_digits_and_never_grow_past_a_dozen_characters():
    assert fmt_loss(0.123456789) == "0.123457"
    for v in (1e300, -1e-300, 1383982498794438656.0, 123456.789, 1e-7):
        assert len(fmt_loss(v)) <= 13, fmt_loss(v)


@pytest.mark.parametrize("v", [0.0, 1e-300, 1e-9, 0.001, 0.5, 1.0, 999.0, 1234.5, 9999.0, 1e4, 1e6, 1e99, 1e100,
                               1e300, -1e300, -0.5, math.nan, math.inf])
def test_axis_labels_fit_seven_columns(v):
    assert len(fmt_axis(v)) <= 7, fmt_axis(v)


def test_bytes_in_iec_units():
    assert [fmt_bytes(n) for n in (0, 1023, 1024, 1536, 3 * 2**30, 2**60)] == \
        ["0 B", "1023 B", "1.0 KiB", "1.5 KiB", "3.0 GiB", "1024.0 PiB"]
    assert fmt_bytes(None) == "?"


def test_durations_stay_readable_however_long():
    assert fmt_duration(59) == "59s" and fmt_duration(3725) == "1h 02m" and fmt_duration(90000) == "1d 01h"
    assert fmt_duration(7752732547184624 * 3600) == "> 1 year"  # the ETA the issue saw
    assert fmt_duration(math.inf) == fmt_duration(-1) == fmt_duration(None) == "-"
    assert fmt_count(1234567) == "1,234,567" and fmt_count(None) == "?"
