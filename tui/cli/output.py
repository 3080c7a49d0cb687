"""What every command shares: exit statuses, the one-line parser, stdout/stderr helpers."""

from __future__ import annotations

import argparse
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
