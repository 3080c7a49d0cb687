"""`torchdeck run -- CMD`: any command as a run, through the real command line and real processes.

Each test's command is a tiny `python -c` script; stops use sub-second timeouts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from helpers import (
    cli_cmd,
    cli_env,
    pid_gone,
    read_json,
    run_cli,
    stop_leftover_runs,
    wait_until,
)

pytestmark = pytest.mark.slow

PY = sys.executable  # has torchdeck installed: a script's `import torchdeck` works


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("cmdrun")
    yield home
    stop_leftover_runs(home.glob("*/runs"))


@pytest.fixture(scope="module")
def ws(home) -> str:
    from torchdeck.workspace import Workspace

    return str(Workspace.open(home / "ws").root)


def cli(ws: str, *args: str, cwd=None, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return run_cli("--workspace", ws, *args, cwd=cwd or Path(ws).parent, timeout=timeout)


def one_json(out: subprocess.CompletedProcess):
    assert out.stdout.strip(), f"nothing on stdout; stderr: {out.stderr}"
    return json.loads(out.stdout)


def script(home: Path, name: str, body: str) -> str:
    path = home / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def run_dir(ws: str, run_id: str) -> Path:
    return Path(ws) / "runs" / run_id


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "events.jsonl").read_text().splitlines() if line.strip()]


def detached(ws: str, *args: str) -> Path:
    out = cli(ws, "run", "--detach", "--json", *args)
    assert out.returncode == 0, out.stderr
    return run_dir(ws, one_json(out)["id"])


def log_has(path: Path, text: str) -> bool:
    try:
        return text in (path / "worker.log").read_text()
    except OSError:
        return False


def final_state(path: Path) -> str | None:
    from torchdeck.options import FINAL_STATES
    from torchdeck.runs.store import Run

    state = Run(path).observed_state()
    return state if state in FINAL_STATES else None


# A command that ignores SIGINT (and, given "term", SIGTERM too), writes its pid, then says ready.
STUBBORN = """
import os, signal, sys, time
signal.signal(signal.SIGINT, lambda *a: print("got SIGINT, going on", flush=True))
if "term" in sys.argv:
    signal.signal(signal.SIGTERM, lambda *a: print("got SIGTERM, going on", flush=True))
open(sys.argv[1], "w").write(str(os.getpid()))
print("ready", flush=True)
while True:
    time.sleep(0.02)
"""


# -- ends ---------------------------------------------------------------------------------------------
def test_exit_zero_finishes_with_output_duration_and_status(ws):
    out = cli(ws, "run", "--name", "hello", "--", PY, "-c", "import time; print('hello out'); time.sleep(0.3)")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "hello out\n"  # the command's output alone on stdout; torchdeck's lines on stderr
    assert "torchdeck: running" in out.stderr and "finished" in out.stderr
    shown = one_json(cli(ws, "runs", "show", "hello", "--json"))
    assert shown["state"] == "finished" and shown["name"] == "hello"
    assert shown["exit_status"] == 0 and shown["exit_signal"] is None
    assert shown["duration"] is not None and shown["duration"] >= 0.3
    assert shown["command"] == [PY, "-c", "import time; print('hello out'); time.sleep(0.3)"]
    assert shown["cwd"] == str(Path(ws).parent)
    path = Path(shown["path"])
    assert "hello out" in (path / "worker.log").read_text()
    recs = events(path)
    assert recs[0]["type"] == "started" and recs[0]["pipeline"] == "command"
    assert recs[0]["config"]["source"] == "command"
    assert [r["type"] for r in recs].count("ended") == 1 and recs[-1]["exit_status"] == 0


def test_json_prints_one_document_and_the_output_on_stderr(ws):
    out = cli(ws, "run", "--json", "--", PY, "-c", "import sys; print('args', sys.argv[1:])", "--json", "--debug")
    assert out.returncode == 0, out.stderr
    doc = one_json(out)  # the command's own --json and --debug are its arguments, not torchdeck's
    assert doc["state"] == "finished" and doc["exit_status"] == 0 and doc["id"]
    assert "args ['--json', '--debug']" in out.stderr


def test_nonzero_exit_fails_with_status_and_last_output(ws):
    out = cli(ws, "run", "--json", "--", PY, "-c", "import sys; print('first'); print('boom: bad lr', flush=True); "
              "sys.exit(3)")
    assert out.returncode == 1
    doc = one_json(out)
    assert doc["state"] == "failed" and doc["exit_status"] == 3
    assert doc["message"] == "exited with status 3; last output: first | boom: bad lr"
    assert "boom: bad lr" in out.stderr  # shown as it came


def test_an_exception_in_an_attached_script_fails_once_with_its_traceback(ws):
    out = cli(ws, "run", "--json", "--", PY, "-c", "import torchdeck; r = torchdeck.init(); r.log({'loss': 1.0}); "
              "raise ValueError('no data')")
    assert out.returncode == 1
    doc = one_json(out)
    assert doc["state"] == "failed" and doc["exit_status"] == 1
    assert "ValueError: no data" in doc["message"]
    recs = events(Path(doc["path"]))
    assert [r["type"] for r in recs].count("ended") == 1  # the supervisor's: the script appends no end


def test_killed_by_a_signal_is_named(ws):
    out = cli(ws, "run", "--json", "--", PY, "-c", "import os, signal; print('bye', flush=True); "
              "os.kill(os.getpid(), signal.SIGKILL)")
    doc = one_json(out)
    assert out.returncode == 1 and doc["state"] == "failed"
    assert doc["exit_status"] is None and doc["exit_signal"] == "SIGKILL"
    assert doc["message"].startswith("killed by SIGKILL; last output: bye")


def test_command_not_found_fails_naming_it(ws):
    out = cli(ws, "run", "--json", "--", "no-such-command-xyz", "--flag")
    assert out.returncode == 1
    doc = one_json(out)
    assert doc["state"] == "failed" and doc["exit_status"] is None
    assert doc["message"] == "command not found: 'no-such-command-xyz' (searched PATH)"
    assert "command not found: 'no-such-command-xyz'" in (Path(doc["path"]) / "worker.log").read_text()


def test_a_file_that_is_not_executable_fails_naming_it(ws, home):
    path = home / "notexec.sh"
    path.write_text("echo hi\n")
    path.chmod(0o644)
    doc = one_json(cli(ws, "run", "--json", "--", "./notexec.sh", cwd=home))
    assert doc["state"] == "failed"
    assert doc["message"] == "cannot start './notexec.sh': not executable (permission denied)"


@pytest.mark.parametrize("args", [[], ["--"], ["--name", "x", "--"]])
def test_no_command_is_a_usage_error(ws, args):
    out = cli(ws, "run", "--json", *args)
    assert out.returncode == 2
    err = one_json(out)["error"]
    assert err["code"] == "usage" and err["field"] == "command"
    assert "no command given" in err["message"]
    assert "no command given" in out.stderr


@pytest.mark.parametrize("flag, value, field", [("--int-timeout", "-1", "int_timeout"),
                                                ("--term-timeout", "nan", "term_timeout"),
                                                ("--int-timeout", "soon", "int_timeout"),
                                                ("--cwd", "/no/such/dir", "cwd")])
def test_bad_options_are_refused_with_their_field(ws, flag, value, field):
    before = set(os.listdir(Path(ws) / "runs")) if (Path(ws) / "runs").exists() else set()
    out = cli(ws, "run", "--json", flag, value, "--", "true")
    assert out.returncode == 2, out.stderr
    err = one_json(out)["error"]
    assert err["field"] == field, err
    after = set(os.listdir(Path(ws) / "runs")) if (Path(ws) / "runs").exists() else set()
    assert after == before  # nothing created


# -- the logging API inside ---------------------------------------------------------------------------
def test_torchdeck_init_inside_attaches_and_the_run_keeps_its_name(ws, home):
    body = script(home, "logs.py", """
        import torchdeck
        run = torchdeck.init(name="the-scripts-own-name", config={"lr": 0.1})
        assert run.attached
        for i in range(5):
            run.log({"loss": 1.0 / (i + 1), "acc": i / 10})
        run.finish()
        print("logged", run.id)
    """)
    out = cli(ws, "run", "--json", "--name", "wrapped", "--", PY, body)
    assert out.returncode == 0, out.stderr
    doc = one_json(out)
    assert f"logged {doc['id']}" in out.stderr  # the script's run is the wrapper's
    shown = one_json(cli(ws, "runs", "show", doc["id"], "--json"))
    assert shown["name"] == "wrapped" and shown["state"] == "finished"
    assert shown["params"] == {"lr": 0.1}  # init(config=...) inside a command run is recorded, not dropped
    assert shown["source"] == "command"
    assert shown["metrics"]["loss"]["count"] == 5 and shown["metrics"]["acc"]["count"] == 5
    assert shown["step"] == 5 and shown["last_loss"] == pytest.approx(0.2)
    listed = {r["id"]: r for r in one_json(cli(ws, "runs", "list", "--json"))["runs"]}
    assert listed[doc["id"]]["step"] == 5  # the supervisor read the script's steps into the summary
    assert listed[doc["id"]]["steps_per_second"] > 0  # and its speed (the run list read "-")


def test_a_second_writer_with_the_same_id_is_refused(ws, home):
    ready = home / "ready-busy"
    path = detached(ws, "--", PY, "-c", f"import time; open({str(ready)!r}, 'w').close(); time.sleep(30)")
    wait_until(ready.exists, timeout=20, what="the command to start")
    other = subprocess.run([PY, "-c", f"import torchdeck; torchdeck.init(id={path.name!r}, workspace={ws!r})"],
                           env=cli_env(), capture_output=True, text=True, timeout=30)
    assert other.returncode != 0
    assert f"Busy: run {path.name} is being written by another process" in other.stderr
    assert cli(ws, "runs", "stop", path.name).returncode == 0
    assert final_state(path) == "stopped"


def test_a_torn_line_left_by_the_script_does_not_swallow_the_end(ws):
    out = cli(ws, "run", "--json", "--", PY, "-c", "import os, sys; f = open(os.environ['TORCHDECK_RUN_DIR'] + "
              "'/events.jsonl', 'a'); f.write('{\"type\": \"losses\", \"first_st'); f.close(); sys.exit(2)")
    doc = one_json(out)
    assert doc["state"] == "failed" and doc["exit_status"] == 2
    recs = events(Path(doc["path"]))  # every line whole
    assert recs[-1]["type"] == "ended" and recs[-1]["exit_status"] == 2


# -- stopping -----------------------------------------------------------------------------------------
def test_stop_escalates_to_sigterm_for_a_command_that_ignores_sigint(ws, home):
    pidfile = home / "pid-int"
    body = script(home, "stubborn.py", STUBBORN)
    path = detached(ws, "--int-timeout", "0.5", "--term-timeout", "5", "--", PY, body, str(pidfile))
    wait_until(lambda: log_has(path, "ready"), timeout=20, what="the command to be ready")
    t0 = time.monotonic()
    out = cli(ws, "runs", "stop", path.name, "--json")
    took = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    assert one_json(out)["state"] == "stopped"
    assert "its command gets SIGINT now, SIGTERM after 0.5 s, SIGKILL after 5.5 s" in out.stderr
    end = events(path)[-1]
    assert end["exit_signal"] == "SIGTERM"
    assert end["message"] == "killed by SIGTERM after SIGINT, SIGTERM (a stop request)"
    assert log_has(path, "got SIGINT, going on") and took < 5
    assert pid_gone(int(pidfile.read_text()))


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored_too(ws, home):
    pidfile = home / "pid-term"
    body = script(home, "stubborn.py", STUBBORN)
    path = detached(ws, "--int-timeout", "0.3", "--term-timeout", "0.3", "--", PY, body, str(pidfile), "term")
    wait_until(lambda: log_has(path, "ready"), timeout=20, what="the command to be ready")
    out = cli(ws, "runs", "stop", path.name, "--json")
    assert one_json(out)["state"] == "stopped"
    end = events(path)[-1]
    assert end["state"] == "stopped" and end["exit_signal"] == "SIGKILL"
    assert log_has(path, "got SIGTERM, going on")
    assert pid_gone(int(pidfile.read_text()))


def test_a_stop_leaves_nothing_the_command_started_even_outside_its_group(ws, home):
    pidfile = home / "pid-escaped"
    body = script(home, "escape.py", """
        import os, signal, sys, time
        if os.fork() == 0:  # a child in a session of its own, deaf to SIGINT and SIGTERM
            os.setsid()
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            open(sys.argv[1], "w").write(str(os.getpid()))
            while True:
                time.sleep(0.02)
        print("ready", flush=True)
        time.sleep(60)
    """)
    path = detached(ws, "--", PY, body, str(pidfile))
    wait_until(lambda: log_has(path, "ready") and pidfile.exists() and pidfile.read_text(), timeout=20,
               what="the command and its escaped child")
    escaped = int(pidfile.read_text())
    assert one_json(cli(ws, "runs", "stop", path.name, "--json"))["state"] == "stopped"
    wait_until(lambda: pid_gone(escaped), timeout=10, what="the escaped child to be killed")
    assert log_has(path, f"left outside its process group (pid {escaped})")


def test_sigterm_to_the_supervisor_runs_the_escalation_and_leaves_no_orphan(ws, home):
    pidfile = home / "pid-sup-term"
    body = script(home, "stubborn.py", STUBBORN)
    path = detached(ws, "--int-timeout", "0.3", "--term-timeout", "0.3", "--", PY, body, str(pidfile), "term")
    wait_until(lambda: log_has(path, "ready"), timeout=20, what="the command to be ready")
    supervisor = read_json(path / "status.json")["pid"]
    os.kill(supervisor, signal.SIGTERM)
    wait_until(lambda: final_state(path), timeout=20, what="the run to end")
    assert final_state(path) == "stopped"
    end = events(path)[-1]
    assert end["exit_signal"] == "SIGKILL" and "SIGTERM/SIGINT to the supervisor" in end["message"]
    assert pid_gone(int(pidfile.read_text()))
    wait_until(lambda: pid_gone(supervisor), timeout=10, what="the supervisor to exit")


def test_a_killed_supervisors_crash_takes_a_wrappers_children_along_too(ws, home):
    """`sh -c 'python stubborn.py'`: PDEATHSIG kills sh alone; the reader that records the crash
    kills the python it left (found by the run's TORCHDECK_RUN_DIR in its environment)."""
    pidfile = home / "pid-sh-child"
    body = script(home, "stubborn.py", STUBBORN)
    path = detached(ws, "--", "sh", "-c", f"{PY} {body} {pidfile} term; echo never")
    wait_until(lambda: log_has(path, "ready"), timeout=20, what="the command to be ready")
    grandchild = int(pidfile.read_text())
    supervisor = read_json(path / "status.json")["pid"]
    os.kill(supervisor, signal.SIGKILL)
    wait_until(lambda: pid_gone(supervisor), timeout=10, what="the supervisor to die")
    shown = one_json(cli(ws, "runs", "show", path.name, "--json"))  # a reader records the crash
    assert shown["state"] == "crashed"
    assert shown["message"] == ("its supervisor ended without recording a final state; the 1 process(es) left of "
                                f"its command were killed (pid {grandchild})")
    wait_until(lambda: pid_gone(grandchild), timeout=10, what="the orphaned python to be killed")


def test_a_deleted_run_directory_stops_its_command(ws, home):
    """Nobody can see, follow or stop a run whose directory was deleted (rm -rf of a workspace, a
    test's temporary directory): its supervisor stops the command (SIGINT first) and ends."""
    import shutil

    pidfile = home / "pid-rmdir"
    body = script(home, "rmdir.py", """
        import os, sys, time
        open(sys.argv[1], "w").write(str(os.getpid()))
        print("ready", flush=True)
        time.sleep(120)
    """)
    path = detached(ws, "--", PY, body, str(pidfile))
    wait_until(lambda: log_has(path, "ready"), timeout=20, what="the command to be ready")
    command = int(pidfile.read_text())
    supervisor = read_json(path / "status.json")["pid"]
    shutil.rmtree(path)
    wait_until(lambda: pid_gone(command), timeout=15, what="the command to be stopped")
    wait_until(lambda: pid_gone(supervisor), timeout=15, what="the supervisor to end")


def test_a_full_disk_is_named_in_a_failed_or_crashed_runs_message(tmp_path, monkeypatch):
    """A command that died of its own write errors, or a worker whose end did not fit: the message
    says the disk is full, with how much is free, instead of only "exited with status 1"."""
    from torchdeck.fsutil import disk_full_note
    from torchdeck.runs.config import RunConfig
    from torchdeck.runs.store import RunStore
    from torchdeck.workspace import Workspace

    assert disk_full_note(tmp_path) == ""  # this machine's disk has room
    store = RunStore(Workspace.open(tmp_path / "ws"))
    run = store.create(RunConfig(model="builtin:linear", epochs=1))
    status = read_json(run.path / "status.json")
    (run.path / "status.json").write_text(json.dumps({**status, "state": "running", "pid": 1}))
    real = os.statvfs

    class Full:
        def __init__(self, st):
            self.f_frsize, self.f_bavail = st.f_frsize, 3

    monkeypatch.setattr(os, "statvfs", lambda p: Full(real(p)))
    note = disk_full_note(run.path / "no" / "such" / "file")  # the nearest existing parent is asked
    assert note.startswith("the disk holding it is full (") and note.endswith(" free)"), note
    live = run.liveness()  # no worker holds the lock: a crash, and the likely cause
    assert live.state == "crashed"
    assert live.reason == f"the worker process ended without recording a final state; {note}"

    # The end reached the events file, the status did not fit: the run's own word stands.
    run2 = store.create(RunConfig(model="builtin:linear", epochs=1))
    (run2.path / "status.json").write_text(json.dumps({**status, "state": "running", "pid": 1}))
    why = f"exited with status 1; {note}; last output: OSError: [Errno 28] No space left on device"
    with open(run2.events_path, "a") as f:
        f.write(json.dumps({"type": "ended", "state": "failed", "step": 0, "last_loss": None, "message": why,
                            "exit_status": 1}) + "\n")
    live = run2.liveness()
    assert (live.state, live.reason) == ("failed", why)
    assert read_json(run2.path / "status.json")["state"] == "failed"  # recorded, now that it fits


def test_a_killed_supervisor_reads_crashed_and_takes_its_command_along(ws, home):
    pidfile = home / "pid-sup-kill"
    body = script(home, "stubborn.py", STUBBORN)
    path = detached(ws, "--", PY, body, str(pidfile), "term")
    wait_until(lambda: log_has(path, "ready"), timeout=20, what="the command to be ready")
    command = int(pidfile.read_text())
    supervisor = read_json(path / "status.json")["pid"]
    os.kill(supervisor, signal.SIGKILL)
    wait_until(lambda: pid_gone(command), timeout=10, what="the command to die with its supervisor (PDEATHSIG)")
    assert wait_until(lambda: final_state(path), timeout=10, what="a final state") == "crashed"
    shown = one_json(cli(ws, "runs", "show", path.name, "--json"))
    assert shown["state"] == "crashed" and shown["exit_status"] is None


def test_ctrl_c_in_the_foreground_stops_the_command_and_shows_its_last_words(ws, home):
    body = script(home, "graceful.py", """
        import time
        print("working", flush=True)
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            print("cleaning up", flush=True)
            raise SystemExit(5)
    """)
    proc = subprocess.Popen(cli_cmd("--workspace", ws, "run", "--json", "--", PY, body), cwd=home, env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        path = wait_until(lambda: next((p for p in (Path(ws) / "runs").iterdir() if log_has(p, "working")), None),
                          timeout=20, what="the command to be working")
        os.kill(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, stderr
    doc = json.loads(stdout)
    assert doc["id"] == path.name and doc["state"] == "stopped" and doc["exit_status"] == 5
    assert "cleaning up" in stderr  # printed while it stopped


def test_the_run_survives_sighup_of_the_foreground_command(ws, home):
    """A dropped SSH connection kills `torchdeck run` (SIGHUP), as it kills `train`; the command,
    in the supervisor's own session, goes on to its end."""
    flag = home / "hup-go-on"
    body = script(home, "hup.py", f"""
        import os, time
        print("started", flush=True)
        while not os.path.exists({str(flag)!r}):
            time.sleep(0.02)
        print("done", flush=True)
    """)
    proc = subprocess.Popen(cli_cmd("--workspace", ws, "run", "--name", "hup", "--", PY, body), cwd=home,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        path = wait_until(lambda: next((p for p in (Path(ws) / "runs").iterdir() if log_has(p, "started")
                                        and "hup.py" in (p / "config.json").read_text()), None),
                          timeout=20, what="the command to start")
        os.kill(proc.pid, signal.SIGHUP)
        assert proc.wait(timeout=10) == -signal.SIGHUP
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert final_state(path) is None  # still running without its terminal
    flag.touch()
    assert wait_until(lambda: final_state(path), timeout=20, what="the run to end") == "finished"
    assert log_has(path, "done")


# -- the other commands on a command run ----------------------------------------------------------------
def test_runs_tail_follow_prints_the_output_as_it_comes(ws, home):
    flag = home / "tail-go-on"
    path = detached(ws, "--", PY, "-c", f"import os, time\nprint('tick one', flush=True)\n"
                    f"while not os.path.exists({str(flag)!r}): time.sleep(0.02)\nprint('tick two')")
    tail = subprocess.Popen(cli_cmd("--workspace", ws, "runs", "tail", "-f", path.name), env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(30, tail.kill)  # a tail that never prints must not hang the test
    watchdog.start()
    try:
        first = tail.stdout.readline()
        while "tick one" not in first:
            first = tail.stdout.readline()
            assert first, "tail ended before the output came"
        assert final_state(path) is None  # printed while the command still runs
        flag.touch()
        rest, _ = tail.communicate(timeout=20)
    finally:
        watchdog.cancel()
        if tail.poll() is None:
            tail.kill()
            tail.wait()
    assert tail.returncode == 0
    assert "tick two" in rest and f"run {path.name} finished" in rest


def test_pause_and_resume_are_refused_clearly(ws, home):
    ready = home / "ready-pause"
    path = detached(ws, "--", PY, "-c", f"import time; open({str(ready)!r}, 'w').close(); time.sleep(30)")
    wait_until(ready.exists, timeout=20, what="the command to start")
    out = cli(ws, "runs", "pause", path.name, "--json")
    assert out.returncode == 2
    assert "a command run cannot be paused" in one_json(out)["error"]["message"]
    assert cli(ws, "runs", "stop", path.name).returncode == 0
    out = cli(ws, "runs", "resume", path.name, "--json")
    assert out.returncode == 2
    err = one_json(out)["error"]
    assert err["field"] == "resume" and "torchdeck cannot resume a command" in err["message"]
    shown = cli(ws, "runs", "show", path.name)
    assert "command" in shown.stdout and "time.sleep(30)" in shown.stdout


def test_a_stop_asked_before_the_supervisor_is_up_is_not_lost(ws):
    from torchdeck.runs import command
    from torchdeck.runs.store import Run, RunStore
    from torchdeck.workspace import Workspace

    run = command.create(Workspace.open(ws), [PY, "-c", "print('never')"], name="early-stop")
    run.request("stop")  # a Ctrl-C landing before the supervisor has its lock
    command.launch(run)
    assert wait_until(lambda: final_state(run.path), timeout=20, what="the run to end") == "stopped"
    assert Run(run.path).status().message == "stopped before the command started"
    assert not log_has(run.path, "never")
    assert RunStore(Workspace.open(ws)).get("early-stop").id == run.id


# -- the TUI's form -----------------------------------------------------------------------------------
async def test_the_training_screen_runs_a_command_shows_its_output_and_stops_it(tmp_path):
    from textual.widgets import Input
    from torchdeck.runs.config import RunConfig
    from torchdeck.tui.app import TorchdeckApp
    from torchdeck.tui.screens.command_form import CommandDialog
    from torchdeck.workspace import Workspace
    from tui_helpers import log_lines, record_notifications, screen_text, wait_for

    ws = Workspace.open(tmp_path / "ws")
    (tmp_path / "ticks.py").write_text(textwrap.dedent("""
        import time
        print("tick 1", flush=True)
        try:
            while True:
                time.sleep(0.02)
        except KeyboardInterrupt:
            print("interrupted, bye", flush=True)
    """))
    app = TorchdeckApp(ws, default_config=RunConfig(epochs=1))
    async with app.run_test(size=(120, 36)) as pilot:
        shown = record_notifications(app)
        await pilot.press("3")
        screen = app.screen
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandDialog), 10, "the command form")
        dialog = app.screen
        await pilot.press(*"python", "space", "quotation_mark")  # an unclosed quote
        await pilot.press("enter")
        error = dialog.query_one("#c-command-error")
        await wait_for(pilot, lambda: "no closing quotation" in str(error.render()), 10, "the inline error")
        dialog.query_one("#c-command", Input).value = f"{PY} ticks.py"
        dialog.query_one("#c-cwd", Input).value = str(tmp_path / "nowhere")
        await pilot.press("enter")
        cwd_error = dialog.query_one("#c-cwd-error")
        await wait_for(pilot, lambda: "does not exist" in str(cwd_error.render()), 10, "the directory's error")
        assert app.screen is dialog and not (ws.runs_dir.exists() and any(ws.runs_dir.iterdir()))
        dialog.query_one("#c-cwd", Input).value = str(tmp_path)
        dialog.query_one("#c-name", Input).value = "ticker"
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is screen, 20, "the form to close")
        await wait_for(pilot, lambda: screen.current_run and screen.state == "running", 30, "the run to be watched")
        await wait_for(pilot, lambda: "tick 1" in log_lines(screen), 30, "the command's output in the log")
        assert "ticker" in screen_text(app)
        assert "$ " in screen_text(app) and "ticks.py" in screen_text(app)
        bindings = screen.active_bindings
        assert not bindings["p"].enabled and bindings["x"].enabled  # Pause greyed: a command cannot be held
        await pilot.press("p")
        await pilot.pause(0.2)
        assert screen.state == "running" and not (ws.runs_dir / screen.current_run / "control.json").exists()
        screen.action_pause()  # reached some other way (the palette), it says why
        assert any("a command run cannot be paused" in m for _, _, m in shown)
        await pilot.press("x")
        await wait_for(pilot, lambda: screen.state == "stopped", 30, "the stop")
        assert any("its command gets SIGINT now" in m for _, _, m in shown)
        await wait_for(pilot, lambda: "interrupted, bye" in log_lines(screen), 10, "the command's last words")
        assert not screen.active_bindings["r"].enabled
        screen.action_resume_run()
        assert any("cannot resume a command" in m for _, _, m in shown)


def test_the_tui_log_source_shows_the_line_being_written_as_a_terminal_would(tmp_path):
    from torchdeck.tui.widgets import FileLines

    log = tmp_path / "worker.log"
    log.write_bytes(b"\x1b[32mgreen\x1b[0m start\n 10%|#   |\r 50%|##  |")
    lines = FileLines(log)
    assert lines.read_more()
    assert [lines.line(i) for i in range(lines.line_count())] == ["green start", " 50%|##  |"]
    revision = lines.revision
    with open(log, "ab") as f:
        f.write(b"\r100%|####|\nnext \xff\n")
    assert lines.read_more() and lines.revision > revision  # the last line changed in place
    assert [lines.line(i) for i in range(lines.line_count())] == ["green start", "100%|####|", "next \ufffd"]
    assert not lines.read_more()  # nothing new

    big = tmp_path / "big.log"
    big.write_bytes(b"".join(b"line %d\n" % i for i in range(200_000)))
    tail = FileLines(big, max_lines=1000, first_bytes=4096)
    while tail.read_more(1024):
        pass
    shown = [tail.line(i) for i in range(tail.line_count())]
    assert shown[-1] == "line 199999" and len(shown) <= 1000
    assert shown[0].startswith("(earlier output is in")
