"""Time to first frame: from starting `torchdeck` in a terminal to its first screen drawn.

Each repeat starts a fresh process in a pseudo-terminal (80x24) and times the bytes until the
first frame's mode bar arrives. Baseline, interleaved in the same run: a minimal Textual app
(one Static) started the same way: the floor Textual itself sets. Also shown: how long
`import torch` alone takes, which the first frame must not wait for.

    python benchmarks/bench_first_frame.py [--repeats 7] [--json]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import select
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

MINIMAL_APP = """
from textual.app import App
from textual.widgets import Static
class Minimal(App):
    def compose(self):
        yield Static("1 Models  2 Checkpoints")
Minimal().run()
"""


def time_to_marker(argv: list[str], marker: bytes, timeout: float = 30.0) -> float:
    t0 = time.monotonic()
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(argv[0], argv, {**os.environ, "TERM": "xterm-256color"})
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    seen = b""
    try:
        while time.monotonic() - t0 < timeout:
            ready, _, _ = select.select([fd], [], [], 0.01)
            if ready:
                try:
                    seen += os.read(fd, 65536)
                except OSError:
                    break
                if marker in seen:
                    return time.monotonic() - t0
        raise RuntimeError(f"no {marker!r} within {timeout} s from {argv}")
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)


def summary(xs: list[float]) -> dict:
    return {"median_s": round(statistics.median(xs), 3), "min_s": round(min(xs), 3), "max_s": round(max(xs), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torchdeck = str(Path(sys.executable).with_name("torchdeck"))
    with tempfile.TemporaryDirectory() as tmp:
        minimal = Path(tmp) / "minimal.py"
        minimal.write_text(MINIMAL_APP)
        ws = Path(tmp) / "ws"
        # Create it once, with its demo, outside the timing (read-only commands no longer create one).
        subprocess.run([sys.executable, "-c", f"from torchdeck.workspace import Workspace; Workspace.open({str(ws)!r})"],
                       check=True)
        ours, floor = [], []
        for _ in range(args.repeats):  # interleaved: both see the same machine
            ours.append(time_to_marker([torchdeck, "--workspace", str(ws)], b"Models"))
            floor.append(time_to_marker([sys.executable, str(minimal)], b"Models"))
    t = time.monotonic()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    torch_import = time.monotonic() - t
    result = {"torchdeck": summary(ours), "minimal_textual_app": summary(floor),
              "ratio_median": round(statistics.median(ours) / statistics.median(floor), 2),
              "import_torch_s": round(torch_import, 3), "repeats": args.repeats}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        o, f = result["torchdeck"], result["minimal_textual_app"]
        print(f"first frame, {args.repeats} starts each, interleaved (80x24 pty)")
        print(f"  torchdeck            median {o['median_s']:.3f} s  (min {o['min_s']:.3f}, max {o['max_s']:.3f})")
        print(f"  minimal Textual app  median {f['median_s']:.3f} s  (min {f['min_s']:.3f}, max {f['max_s']:.3f})")
        print(f"  ratio torchdeck / minimal: {result['ratio_median']}x   (target: first frame < 0.5 s)")
        print(f"  for scale, `import torch` alone: {result['import_torch_s']:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
