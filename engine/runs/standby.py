"""The standby worker: a worker process started before its run exists, importing torch (the
longest part of a run's start) while the launcher checks the request. `RunStore.launch(run,
standby=...)` hands it the run over its stdin; a closed stdin (a refused request, a launcher that
died) ends it having done nothing.

`torchdeck train` starts one as the very first thing the command does (`start_early`), before
the command line's own modules are imported: those ~0.2 s would otherwise come before the
worker's torch import on the run's start-up path. This module imports only the standard library
for that reason.

Run as `python -m torchdeck.runs.standby` it is the standby worker itself: torch is imported
before any of torchdeck's own modules (those then find most of the standard library they need
already loaded), and once handed a run it becomes that run's worker (torchdeck.runs.worker).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

# GPUs numbered as nvidia-smi numbers them (CUDA's own default is fastest first): cuda:N in a run is
# GPU N in the system panel and in nvidia-smi. A choice the user made in the environment is kept.
CUDA_ORDER = os.environ.get("CUDA_DEVICE_ORDER", "PCI_BUS_ID")

# Global options that may come before the command (tui/cli's _common): those taking a value.
_VALUED = ("--workspace",)
_GLOBAL = ("--json", "--debug")

_early: subprocess.Popen | None = None


def start() -> subprocess.Popen | None:
    """A new standby worker; None when it cannot be started (the launcher then starts a fresh
    worker)."""
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "torchdeck.runs.standby"],
            # not the user's directory: `-m` puts the cwd first on sys.path, where a user's
            # own torch.py or random.py would shadow the real ones
            cwd="/", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_DEVICE_ORDER": CUDA_ORDER},
        )
    except OSError:
        return None
    reap(proc)
    return proc


def drop(proc: subprocess.Popen | None) -> None:
    """Not needed after all: the standby worker reads EOF and ends."""
    if proc is not None and proc.stdin is not None:
        try:
            proc.stdin.close()
        except OSError:
            pass


def reap(proc: subprocess.Popen) -> None:
    """Never a zombie while we live."""
    threading.Thread(target=proc.wait, name=f"reap-{proc.pid}", daemon=True).start()


def starts_a_run(argv: list[str]) -> bool:
    """Whether a command line is `torchdeck [global options] train ...` that starts a new run in
    one process (not a resume, not a help request, not --nproc N > 1): the commands that will want
    a standby worker. A guess made before parsing; a wrong one costs a standby that ends unused."""
    own = argv[: argv.index("--")] if "--" in argv else argv
    i = 0
    while i < len(own):
        a = own[i]
        if a in _VALUED:
            i += 2
        elif a in _GLOBAL or any(a.startswith(v + "=") for v in _VALUED):
            i += 1
        else:
            break
    if own[i:i + 1] != ["train"]:
        return False
    rest = own[i + 1:]
    if any(a in ("-h", "--help") or a.startswith("--res") for a in rest):
        return False
    for j, a in enumerate(rest):  # several processes: torchrun starts the ranks, not a standby
        n = a.split("=", 1)[1] if a.startswith("--nproc=") else rest[j + 1] if a == "--nproc" and j + 1 < len(rest) \
            else None
        if n is not None and n.strip() not in ("", "1"):
            return False
    return True


def start_early(argv: list[str]) -> None:
    """Start the standby worker now when the command line starts a run (see starts_a_run);
    `take()` gives it to the launch, `release()` ends it when nothing took it."""
    global _early
    if _early is None and starts_a_run(argv):
        _early = start()


def take() -> subprocess.Popen | None:
    """The standby worker started early, still alive, for the caller to use (once)."""
    global _early
    proc, _early = _early, None
    if proc is not None and proc.poll() is not None:
        return None
    return proc


def release() -> None:
    """End a standby worker started early that nothing took (the command failed, or did not
    start a run after all)."""
    drop(take())


def serve() -> str | None:
    """The standby worker's life before its run: import what training needs, answer the
    launcher's checks (`CHECK` lines: the request's preflight, run here where torch is imported
    already), then read the run's directory from stdin. EOF (the request was refused, or the
    launcher died): None, and the process ends having done nothing. Output goes to the run's
    worker.log from then on."""
    from pathlib import Path

    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Answers go to the launcher on the stdout it was given; fd 1 itself goes where stderr goes
    # (nowhere until the run's log), so that what a user's model prints while it is checked
    # never mixes with them.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    # Requests likewise come on a copy of the stdin it was given, and fd 0 reads nothing: a user's
    # model that reads stdin while it is checked gets EOF instead of the launcher's next line
    # (or a wait for one that never comes).
    requests = os.fdopen(os.dup(0), "r")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        import torch  # noqa: F401  (the point: paid while the launcher runs its own checks)
        import torchdeck.training.loop  # noqa: F401
        from torchdeck.runs.worker import CHECK, _answer_check
    except BaseException:  # noqa: BLE001  (the launcher falls back to a fresh worker)
        return None
    while True:
        line = requests.readline()
        if not line.startswith(CHECK):
            break
        _answer_check(line[len(CHECK):], answers)
    answers.close()
    requests.close()
    line = line.strip()
    if not line:
        return None
    run_dir = Path(line)
    fd = os.open(run_dir / "worker.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.chdir(run_dir)
    return str(run_dir)


def main() -> int:
    """The standby worker's process: serve, then train the run it is handed."""
    run_dir = serve()
    if run_dir is None:
        return 0
    # here, not at the top: the launcher's side imports this module
    from torchdeck.runs import worker

    return worker.main([run_dir])


if __name__ == "__main__":
    sys.exit(main())
