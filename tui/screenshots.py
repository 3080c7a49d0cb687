"""Make the README's screenshots: `python -m torchdeck.tui.screenshots [OUT_DIR]`.

Trains and exports the demo model for real in a fresh temporary workspace (torchdeck.demo),
then drives the app by keys and saves one SVG per screen. The run's clock is a step counter,
so the figures repeat from one build to the next; the screen shows the workspace ~-shortened,
and HOME is the temporary directory meanwhile, so the path on screen is always
~/torchdeck-demo wherever the workspace was made.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from torchdeck.demo import make_demo_workspace
from torchdeck.workspace import Workspace

SIZE = (100, 30)
WORKSPACE_NAME = "torchdeck-demo"
SHOTS = (("1", "models"), ("2", "checkpoints"), ("3", "training"), ("4", "exports"))


def build_workspace(root: Path) -> Workspace:
    """The demo workspace (8 epochs, trained and exported for real) in `root`, a new directory,
    plus a small safetensors file opened from the Checkpoints screen (remembered, so listed)."""
    ws = make_demo_workspace(root, epochs=8, dataset_size=8192)
    opened_file(ws)
    return ws


def opened_file(ws: Workspace) -> Path:
    """A two-layer MLP's weights (fixed seed) as a safetensors file in the workspace's folder,
    in the list of opened paths."""
    import torch
    from safetensors.torch import save_file
    from torchdeck.checkpoints import recent

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    path = ws.root / "downloads" / "mlp.safetensors"
    path.parent.mkdir(exist_ok=True)
    save_file({f"encoder.{k}": v.contiguous() for k, v in mlp.state_dict().items()}, str(path))
    recent.remember(ws.root, str(path))
    return path


@contextmanager
def home_at(directory: Path) -> Iterator[None]:
    """HOME is `directory` meanwhile: a workspace inside it shows as ~/NAME, whatever its path."""
    saved = os.environ.get("HOME")
    os.environ["HOME"] = str(directory)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = saved


async def settle(app, pilot) -> None:
    """Wait until the screen has what it is waiting for: torch, the run's history, the lists."""
    from torchdeck.tui.screens.training import TrainingScreen

    for _ in range(600):
        screen = app.screen
        ready = app.torch_ready and not any(w.is_running for w in app.workers)
        if isinstance(screen, TrainingScreen):
            ready = ready and screen.history_done and screen.state == "finished"
        if ready:
            break
        await pilot.pause(0.05)
    await pilot.pause(0.5)  # the chart redraws on a timer


async def shoot(ws: Workspace, out: Path) -> list[Path]:
    from torchdeck.tui.app import TorchdeckApp

    out.mkdir(parents=True, exist_ok=True)
    app = TorchdeckApp(ws)
    written = []
    async with app.run_test(size=SIZE) as pilot:
        for key, name in SHOTS:
            await pilot.press(key)
            await settle(app, pilot)
            if name == "exports":  # show the report of the export made with the workspace
                await pilot.press("tab", "enter")
                await pilot.pause(0.3)
            if name == "checkpoints":  # into the newest checkpoint's tensor tree
                await pilot.press("enter", "down")
                await pilot.pause(0.3)
            path = out / f"{name}.svg"
            app.save_screenshot(filename=path.name, path=str(out))
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else Path("screenshots")
    out = out.resolve()  # before HOME moves
    with tempfile.TemporaryDirectory(prefix="torchdeck-screenshots-") as tmp:
        ws = build_workspace(Path(tmp) / WORKSPACE_NAME)
        with home_at(Path(tmp)):
            written = asyncio.run(shoot(ws, out))
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
