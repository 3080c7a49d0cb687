"""What every command shares: exit statuses, the one-line parser, stdout/stderr helpers."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from typing import Any, NoReturn

from torchdeck.errors import InvalidRequest, field_for

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(InvalidRequest):
    default_code = "usage"


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage block
        # The option at fault, as a field: "argument --batch-size: ..." or "required: --checkpoint".
        m = re.search(r"(?:argument|required:) (?:--)?([A-Za-z][\w-]*)", message)
        field = field_for(m.group(1)) if m and m.group(1) not in ("COMMAND", "ACTION", "FORMAT") else None
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)", field=field)


# What a terminal obeys rather than prints (ESC and so CSI/OSC sequences, BEL, backspace, \r,
# C1 controls); tab and newline are text.
_TERMINAL_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _escape(m: re.Match) -> str:
    return f"\\x{ord(m.group()):02x}"


class TerminalText:
    """stdout or stderr at a terminal while a command runs: text that came from files and
    scripts (metric names, messages, paths, a command's arguments) is printed, never obeyed, its
    control characters shown as \\xNN. `unfiltered` is the stream itself: the CLI's own progress
    line, and a command's output (its colours and \\r are its own, as `tail` shows them). Output
    to a pipe or a file is not wrapped: data keeps its bytes."""

    def __init__(self, stream):
        self.unfiltered = stream

    def write(self, text: str) -> int:
        self.unfiltered.write(_TERMINAL_CONTROL.sub(_escape, text))
        return len(text)

    def __getattr__(self, name: str):  # flush, isatty, fileno, buffer (raw bytes: a command's output), ...
        return getattr(self.unfiltered, name)


@contextlib.contextmanager
def terminal_safe():
    """stdout and stderr as TerminalText where they are terminals, for the block."""
    saved = sys.stdout, sys.stderr
    try:
        if _at_terminal(sys.stdout):
            sys.stdout = TerminalText(sys.stdout)
        if _at_terminal(sys.stderr):
            sys.stderr = TerminalText(sys.stderr)
        yield
    finally:
        sys.stdout, sys.stderr = saved


def _at_terminal(stream) -> bool:
    try:
        return not isinstance(stream, TerminalText) and stream.isatty()
    except (AttributeError, ValueError):  # none, or closed
        return False


def unfiltered(stream):
    """The stream under a TerminalText (for the CLI's own control sequences), else itself."""
    return stream.unfiltered if isinstance(stream, TerminalText) else stream


def err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=1, default=str) + "\n")
    sys.stdout.flush()


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)
