"""The `torchdeck` command: the TUI with no subcommand, and headless commands over the same engine.

Exit status: 0 success; 1 the operation was tried and failed; 2 the request is invalid; 130 interrupted.
With --json, stdout holds one JSON document (JSON Lines for `runs tail`) and nothing else.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from torchdeck import __version__
from torchdeck.errors import TorchdeckError
from torchdeck.workspace import Workspace

from . import checkpoints, models, runs
from .output import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, Parser, UsageError, err

COMMANDS = {**models.COMMANDS, **runs.COMMANDS, **checkpoints.COMMANDS}


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
    return root


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        for flag in ("workspace", "json", "debug"):
            if not hasattr(args, flag):
                setattr(args, flag, None if flag == "workspace" else False)
        if args.command is None:
            from ..launch import run_tui

            return run_tui(args.workspace)
        ws = Workspace.open(args.workspace)
        return COMMANDS[(args.command, getattr(args, "action", None))](ws, args)
    except KeyboardInterrupt:
        err("torchdeck: interrupted")
        return EXIT_INTERRUPTED
    except TorchdeckError as e:
        if debug:
            traceback.print_exc()
        err(f"torchdeck: error: {e}" if not isinstance(e, UsageError) else str(e))
        return e.exit_code
    except BrokenPipeError:
        return EXIT_OK
    except Exception as e:
        if debug:
            traceback.print_exc()
        err(f"torchdeck: internal error: {type(e).__name__}: {e} (run with --debug for the traceback)")
        return EXIT_FAILED
