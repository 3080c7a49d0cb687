"""One warm child process for the TUI's exports: `torchdeck ... --json` commands run in it, one at
a time, instead of a new process each.

A fresh `torchdeck export onnx` spends most of its time before the export itself: importing torch,
torch._dynamo, onnxscript, onnx and ONNX Runtime, and building the exporter's operator registry
(about 5 s of a 7-9 s export of a tiny model on this machine). The child pays that once, while
the Exports screen is first shown, by exporting a one-layer model to memory; every export after
that costs what the export itself costs.

The child keeps the rules of a child: its fd 1 and 2 point at a log file from the start (C++
code writes there, never into the terminal), and it answers on a private copy of its original
stdout, one JSON line per request: {"rc", "stdout", "stderr"} of the command, as if it had run
in its own process. It ends when its stdin closes (the TUI exited or crashed).
"""

from __future__ import annotations

import io
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path


def serve(log_path: str) -> int:
    answer = os.fdopen(os.dup(1), "w", buffering=1)
    log = open(log_path, "a", buffering=1)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    _warm_up()
    answer.write(json.dumps({"ready": True}) + "\n")
    from torchdeck.tui.cli import main

    for line in sys.stdin:
        try:
            req = json.loads(line)
            argv, cwd = list(req["argv"]), req.get("cwd")
        except (ValueError, KeyError, TypeError):
            answer.write(json.dumps({"rc": 2, "stdout": "", "stderr": "bad request"}) + "\n")
            continue
        out, err = io.StringIO(), io.StringIO()
        sys.stdout, sys.stderr = out, err
        try:
            if cwd:
                os.chdir(cwd)
            rc = main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException as e:  # main turns errors into output; anything else is a bug, told
            rc = 1
            err.write(f"torchdeck: error: internal error in the export process: {type(e).__name__}: {e}\n")
        finally:
            sys.stdout = sys.stderr = log
        answer.write(json.dumps({"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()}) + "\n")
    return 0


def _warm_up() -> None:
    """Import what an export needs and build the exporter's registry with a one-layer export."""
    import warnings

    t = time.monotonic()
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(torch.nn.Linear(2, 2).eval(), (torch.zeros(1, 2),), None, dynamo=True, verbose=False)
    except Exception as e:  # a broken install shows in the first real request, with its message
        print(f"export child warm-up failed: {type(e).__name__}: {e}")
    print(f"export child warm in {time.monotonic() - t:.1f} s")


class ExportChild:
    """The TUI side: start the child (in a thread, off the UI), send commands, wait for answers.
    A child that died or stopped answering is killed (its own pid) and replaced on the next call."""

    def __init__(self, log_path: Path):
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen | None = None
        self.answers: queue.Queue = queue.Queue()
        self.lock = threading.Lock()
        self.ready = False

    def _start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.answers = queue.Queue()
        self.ready = False
        self.proc = subprocess.Popen([sys.executable, "-m", "torchdeck.tui.export_child", str(self.log_path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, bufsize=1)
        threading.Thread(target=self._read, args=(self.proc, self.answers), daemon=True,
                         name="export-child-reader").start()

    @staticmethod
    def _read(proc: subprocess.Popen, answers: queue.Queue) -> None:
        for line in proc.stdout:
            try:
                answers.put(json.loads(line))
            except ValueError:
                continue
        answers.put(None)  # the child ended

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def warm(self) -> None:
        """Start the child now if there is none, so that it is warm when an export is asked for."""
        with self.lock:
            if not self.alive():
                self._start()

    def run(self, argv: list[str], *, cwd: str | None = None, timeout: float = 900.0) -> tuple[int, str, str]:
        with self.lock:
            if not self.alive():
                self._start()
            assert self.proc is not None and self.proc.stdin is not None
            try:
                self.proc.stdin.write(json.dumps({"argv": argv, "cwd": cwd}) + "\n")
                self.proc.stdin.flush()
            except OSError as e:
                self._kill()
                return 1, "", f"torchdeck: error: the export process could not be reached: {e}"
            deadline = time.monotonic() + timeout
            while True:
                try:
                    msg = self.answers.get(timeout=max(0.01, deadline - time.monotonic()))
                except queue.Empty:
                    self._kill()
                    return 1, "", f"torchdeck: error: the export process did not answer within {timeout:.0f} s"
                if msg is None:
                    code = self.proc.wait()
                    self.proc = None
                    return 1, "", f"torchdeck: error: the export process ended (exit status {code}); see {self.log_path}"
                if msg.get("ready"):
                    self.ready = True
                    continue
                return int(msg.get("rc", 1)), str(msg.get("stdout", "")), str(msg.get("stderr", ""))

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def close(self) -> None:
        """End the child now. It holds nothing worth finishing: an export in flight writes to a
        temporary named by its pid, which the next export to that name removes."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1]))
