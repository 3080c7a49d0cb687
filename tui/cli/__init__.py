"""The `torchdeck` command: the TUI with no subcommand, and headless commands over the same engine.

Exit status: 0 success; 1 the operation was tried and failed; 2 the request is invalid; 130 interrupted.
With --json, stdout holds one JSON document (JSON Lines for `runs tail`) and nothing else.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from torchdeck import __version__
from torchdeck.errors import InternalError, TorchdeckError
from torchdeck.workspace import Workspace

from . import checkpoints, exports, models, runs, sources
from .output import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Parser,
    UsageError,
    emit_json,
    err,
    terminal_safe,
)

COMMANDS = {**models.COMMANDS, **runs.COMMANDS, **checkpoints.COMMANDS, **sources.COMMANDS, **exports.COMMANDS}


def _common() -> argparse.ArgumentParser:
    # SUPPRESS defaults, so a flag given before the subcommand is not reset by the subparser's default.
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--workspace", metavar="DIR", default=argparse.SUPPRESS, help="workspace directory")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document on stdout")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    return p

def build_parser() -> Parser:
    common = _common()
    root = Parser(prog="torchdeck", parents=[common],
                  description="A keyboard-driven terminal app for PyTorch models. With no command, opens the TUI.")
    root.add_argument("--version", action="version", version=f"torchdeck {__version__}")
    sub = root.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    models.add_parsers(sub, common)
    runs.add_parsers(sub, common)
    checkpoints.add_parsers(sub, common)
    sources.add_parsers(sub, common)
    exports.add_parsers(sub, common)
    return root


# Commands that may create the workspace they are given (and say so); every other command needs
# an existing one when --workspace names it: a typo is an error, not a new workspace.
CREATES_WORKSPACE = {("train", None), ("run", None), ("models", "add"), ("export", "onnx"),
                     ("export", "pt2"), ("export", "safetensors"), ("open", None)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from torchdeck.system import pci_bus_order

    pci_bus_order()  # cuda:N here is GPU N of nvidia-smi and of the system panel
    own = argv[: argv.index("--")] if "--" in argv else argv  # past `--`: a command's arguments (torchdeck run)
    debug = "--debug" in own
    as_json = "--json" in own  # known before parsing, so a usage error is told in JSON too
    try:
        args = build_parser().parse_args(argv)
        for flag in ("workspace", "json", "debug"):
            if not hasattr(args, flag):
                setattr(args, flag, None if flag == "workspace" else False)
        as_json = bool(args.json)
        if args.command is None:
            from ..launch import run_tui

            return run_tui(args.workspace)
        key = (args.command, getattr(args, "action", None))
        with terminal_safe():  # names and messages from files and scripts print as text at a terminal
            ws = Workspace.open(args.workspace, create=key in CREATES_WORKSPACE)
            if ws.registry_problem:
                err(f"torchdeck: warning: {ws.registry_problem}; built-in models, runs and checkpoints still work")
            try:
                status = COMMANDS[key](ws, args)
            except BaseException:
                ws.remove_if_untouched()  # a request that failed leaves no new workspace behind
                raise
            if ws.created and args.workspace:
                err(f"torchdeck: created workspace {ws.root}")
            return status
    except KeyboardInterrupt:
        err("torchdeck: interrupted")
        return EXIT_INTERRUPTED
    except TorchdeckError as e:
        if debug:
            traceback.print_exc()
        report_error(e, as_json)
        return e.exit_code
    except BrokenPipeError:
        return EXIT_OK
    except Exception as e:
        if debug:
            traceback.print_exc()
        report_error(InternalError(f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback)"),
                     as_json)
        return EXIT_FAILED


def report_error(e: TorchdeckError, as_json: bool) -> None:
    """One line on stderr; with --json, also {"error": {code, message, field}} on stdout."""
    with terminal_safe():
        _report_error(e, as_json)


def _report_error(e: TorchdeckError, as_json: bool) -> None:
    if as_json:
        try:
            emit_json({"error": e.to_json()})
        except BrokenPipeError:
            pass
    text = str(e) if isinstance(e, UsageError) else f"torchdeck: error: {e}"
    err(text.replace("\n", "\\n"))  # a file name holding a newline must not break the one line
