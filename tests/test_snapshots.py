"""One SVG snapshot per screen, from a real (deterministic) demo run, at 80x24.

The workspace is a new temporary directory each run; the screen shows it ~-shortened and HOME
is its parent meanwhile, so what is on screen (~/torchdeck-demo) is the same wherever it is.
Update after an intended change of look: pytest tests/test_snapshots.py --snapshot-update
"""

from __future__ import annotations

import pytest
from torchdeck.tui.app import TorchdeckApp
from torchdeck.tui.screenshots import WORKSPACE_NAME, build_workspace, home_at, settle


def pin_measured_speed(ws) -> None:
    """The Exported table shows each export's measured speed ratio, which varies from run to run:
    the snapshot shows a fixed one."""
    import json

    for p in ws.exports_dir.glob("*.report.json"):
        r = json.loads(p.read_text())
        r["speed_ratio"] = 1.0
        p.write_text(json.dumps(r))


@pytest.fixture(scope="module")
def demo_workspace(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    ws = build_workspace(home / WORKSPACE_NAME)
    pin_measured_speed(ws)
    with home_at(home):
        yield ws


@pytest.mark.parametrize("key, name", [("1", "models"), ("2", "checkpoints"), ("3", "training"), ("4", "exports")])
def test_screen_snapshot(snap_compare, demo_workspace, key, name):
    async def run_before(pilot):
        await pilot.press(key)
        await settle(pilot.app, pilot)

    assert snap_compare(TorchdeckApp(demo_workspace), terminal_size=(80, 24), run_before=run_before)


def test_help_snapshot(snap_compare, demo_workspace):
    async def run_before(pilot):
        await settle(pilot.app, pilot)
        await pilot.press("f1")
        await pilot.pause(0.2)

    assert snap_compare(TorchdeckApp(demo_workspace), terminal_size=(80, 24), run_before=run_before)

