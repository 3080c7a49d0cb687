"""The `torchdeck` command's entry point: a run's worker first, then the command line.

`torchdeck train` starts its worker (standby, importing torch) before anything else here is
imported: the command line's own modules take ~0.2 s to import, which would otherwise come
before the worker's torch import on the run's start-up path. Everything else is
torchdeck.tui.cli.main.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from torchdeck.runs import standby

    open("/tmp/tdt.log", "a").write("TDT %s %.3f\n" % ('c_main', __import__("time").time()))
    standby.start_early(argv)
    open("/tmp/tdt.log", "a").write("TDT %s %.3f\n" % ('c_early', __import__("time").time()))
    try:
        from torchdeck.tui.cli import main as cli_main

        return cli_main(argv)
    finally:
        standby.release()  # one nothing took (a refused request, a resume after all) ends now


if __name__ == "__main__":
    sys.exit(main())
