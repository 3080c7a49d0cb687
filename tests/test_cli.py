"""The real `torchdeck` command line, run as a subprocess against a temporary workspace.

One small foreground run is trained once and shared by the tests that read runs, checkpoints
and exports; the detached, stopped and interrupted runs each get their own long run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from helpers import cli_cmd, cli_env, read_json, run_cli, stop_leftover_runs, wait_until

LONG = ["--epochs", "50", "--dataset-size", "49152"]  # far longer than any test lets it run


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A directory to run the command in (the user's project), holding the workspaces."""
    home = tmp_path_factory.mktemp("cli")
    yield home
    stop_leftover_runs(home.glob("*/runs"))


@pytest.fixture(scope="module")
def ws(home) -> str:
    from torchdeck.workspace import Workspace

    # Made first: a read-only command on a --workspace that does not exist is an error.
    return str(Workspace.open(home / "ws").root)


def cli(ws: str, *args: str, cwd=None, timeout: float = 180.0) -> subprocess.CompletedProcess:
    return run_cli("--workspace", ws, *args, cwd=cwd or Path(ws).parent, timeout=timeout)


def one_json(out: subprocess.CompletedProcess):
    """stdout must be exactly one JSON document."""
    assert out.stdout.strip(), f"nothing on stdout; stderr: {out.stderr}"
    return json.loads(out.stdout)


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    return lines[0]


@pytest.fixture(scope="module")
def trained(ws):
    out = cli(ws, "train", "--model", "demo", "--epochs", "1", "--dataset-size", "2048", "--name", "tiny", "--json")
    assert out.returncode == 0, out.stderr
    return one_json(out)


@pytest.fixture(scope="module")
def checkpoint(trained) -> str:
    return trained["checkpoints"][-1]["path"]


# -- models and a foreground run ---------------------------------------------------------------------
def test_models_list_json(ws):
    out = cli(ws, "models", "list", "--json")
    assert out.returncode == 0, out.stderr
    models = {m["name"]: m for m in one_json(out)["models"]}
    assert models["demo"]["spec"] == "builtin:linear" and models["demo"]["num_params"] == 220
    assert models["builtin:linear"]["num_params"] == 220
    assert all(m["error"] == "" for m in models.values())


def test_train_foreground_json(trained):
    assert trained["state"] == "finished"
    assert trained["id"] and isinstance(trained["last_loss"], float)
    assert trained["step"] == 116 and trained["epoch"] == 1
    [ck] = trained["checkpoints"]
    assert ck["step"] == 116 and Path(ck["path"]).is_dir()


def test_runs_list_json(ws, trained):
    out = cli(ws, "runs", "list", "--json")
    assert out.returncode == 0, out.stderr
    runs = {r["id"]: r for r in one_json(out)["runs"]}
    r = runs[trained["id"]]
    assert r["state"] == "finished" and r["name"] == "tiny" and r["model"] == "demo"
    assert r["step"] == r["total_steps"] == 116 and r["checkpoints"] == 1


@pytest.mark.parametrize("order", ["before", "after", "mixed"])
def test_global_flags_before_or_after_subcommand(ws, trained, order):
    args = {
        "before": ["--workspace", ws, "--json", "runs", "list"],
        "after": ["runs", "list", "--workspace", ws, "--json"],
        "mixed": ["--json", "runs", "--workspace", ws, "list"],
    }[order]
    out = run_cli(*args)
    assert out.returncode == 0, out.stderr
    assert trained["id"] in {r["id"] for r in one_json(out)["runs"]}


def test_runs_show_json(ws, trained):
    for ref in (trained["id"], "tiny", trained["id"][:-2]):  # id, name, unique prefix
        out = cli(ws, "runs", "show", ref, "--json")
        assert out.returncode == 0, out.stderr
        doc = one_json(out)
        assert {"id", "name", "state", "step", "epoch", "last_loss", "checkpoints"} <= set(doc)
        assert doc["id"] == trained["id"] and doc["name"] == "tiny" and doc["state"] == "finished"
        assert doc["source"] == "torchdeck" and doc["config"]["model"] == "demo"
        assert doc["step"] == 116 and doc["epoch"] == 1 and doc["last_loss"] == trained["last_loss"]
        assert [(c["path"], c["step"]) for c in doc["checkpoints"]] == [
            (c["path"], c["step"]) for c in trained["checkpoints"]]


def test_runs_tail_json_lines(ws, trained):
    out = cli(ws, "runs", "tail", trained["id"], "--json")
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]  # every line is JSON
    types = [r["type"] for r in records]
    assert types[0] == "started" and types[-1] == "ended" and "losses" in types and "checkpoint" in types
    assert sum(len(r["values"]) for r in records if r["type"] == "losses") == 116


def test_ckpt_inspect_json(ws, trained, checkpoint):
    out = cli(ws, "ckpt", "inspect", checkpoint, "--json")
    assert out.returncode == 0, out.stderr
    doc = one_json(out)
    assert doc["format"] == "torchdeck-checkpoint" and doc["num_params"] == 220 and doc["step"] == 116
    assert doc["trusted_spec"] is True
    assert sorted((t["name"], tuple(t["shape"]), t["dtype"]) for t in doc["tensors"]) == [
        ("bias", (20,), "float32"), ("weight", (20, 10), "float32")]
    # A run stands for its latest checkpoint.
    out = cli(ws, "ckpt", "inspect", trained["id"], "--json")
    assert out.returncode == 0, out.stderr
    assert one_json(out)["path"] == checkpoint


def test_export_onnx_json(ws, home, checkpoint):
    target = home / "model.onnx"
    out = cli(ws, "export", "onnx", "--checkpoint", checkpoint, "--out", str(target), "--json")
    assert out.returncode == 0, out.stderr
    report = one_json(out)  # the exporter's chatter went to stderr, not into the document
    assert out.stdout.lstrip().startswith("{") and out.stdout.rstrip().endswith("}")
    assert Path(report["path"]) == target and target.is_file() and report["size"] == target.stat().st_size
    assert report["ok"] and report["checker_ok"] and report["max_abs_diff"] < 1e-4
    assert [row["case"] for row in report["validation"]["rows"]] == ["batch 1", "batch 8"]
    assert read_json(target.with_suffix(".report.json"))["path"] == str(target)
    assert not [p for p in home.iterdir() if ".tmp-" in p.name]


# -- bad input: exit 2, one line on stderr, {"error": ...} on stdout with --json, nothing written -------
ANY = object()  # a field this part of the code does not own yet (run lookup)
BAD = {  # case: (arguments, code, field)
    "unknown-model": (["train", "--model", "nosuch"], "not_found", "model"),
    "unimportable-model": (["train", "--model", "td_nosuch_module:make", "--data", "synthetic:regression"],
                           "invalid_value", "model"),
    "no-data-for-user-model": (["train", "--model", "td_nosuch_module:make"], "invalid_value", "data"),
    "missing-checkpoint-inspect": (["ckpt", "inspect", "/nonexistent/model.pt"], "not_found", "path"),
    "missing-checkpoint-export": (["export", "onnx", "--checkpoint", "/nonexistent/step-1"], "not_found", "checkpoint"),
    "lr-not-a-number": (["train", "--model", "demo", "--lr", "abc"], "invalid_value", "lr"),
    "lr-negative": (["train", "--model", "demo", "--lr", "-1"], "invalid_value", "lr"),
    "epochs-zero": (["train", "--model", "demo", "--epochs", "0"], "invalid_value", "epochs"),
    "bad-optimizer": (["train", "--model", "demo", "--optimizer", "lion"], "invalid_value", "optimizer"),
    "no-model": (["train"], "usage", "model"),
    "unknown-subcommand": (["frobnicate"], "usage", None),
    "unknown-action": (["runs", "frobnicate"], "usage", None),
    "unknown-run": (["runs", "show", "nosuchrun"], ANY, ANY),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exits_2_with_one_line(tmp_path, case):
    from torchdeck.workspace import Workspace

    argv, code, field = BAD[case]
    ws = Workspace.open(tmp_path / "ws").root  # so that each case meets its own error, not a missing workspace
    out = run_cli("--workspace", str(ws), *argv, "--json", cwd=tmp_path)
    assert out.returncode == 2, (out.stdout, out.stderr)
    line = one_line(out.stderr)
    assert line.startswith("torchdeck") and "Traceback" not in line
    error = one_json(out)["error"]
    assert set(error) == {"code", "message", "field"} and error["message"] in line
    if code is not ANY:
        assert (error["code"], error["field"]) == (code, field)
    assert list((ws / "runs").iterdir()) == [] and list((ws / "exports").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["ws"])


def test_corrupt_checkpoint_file_exits_1(ws, home):
    bad = home / "corrupt.pt"
    bad.write_bytes(bytes(range(256)) * 16)
    out = cli(ws, "ckpt", "inspect", str(bad), "--json")
    assert out.returncode == 1, out.stderr
    line = one_line(out.stderr)
    assert "not a readable PyTorch file" in line and "--trust" not in line
    assert one_json(out)["error"]["code"] == "corrupt"


def test_corrupt_checkpoint_directory_exits_1(ws, home, checkpoint):
    broken = home / "broken" / "step-00000116"
    shutil.copytree(checkpoint, broken)
    with open(broken / "model.safetensors", "ab") as f:
        f.write(b"extra")
    out = cli(ws, "export", "onnx", "--checkpoint", str(broken), "--out", str(home / "broken.onnx"))
    assert out.returncode == 1
    assert "incomplete checkpoint" in one_line(out.stderr)
    assert not (home / "broken.onnx").exists()


def test_export_refuses_untrusted_model_spec(ws, home, checkpoint):
    # A user package that would leave a marker if it were ever imported.
    root = home / "userroot"
    (root / "somepkg").mkdir(parents=True)
    marker = home / "somepkg-was-imported"
    (root / "somepkg" / "__init__.py").write_text("")
    (root / "somepkg" / "mod.py").write_text(textwrap.dedent(f"""
        import pathlib, torch.nn as nn
        pathlib.Path({str(marker)!r}).write_text("imported")
        def make():
            return nn.Linear(10, 20)
    """))
    ck = home / "untrusted" / "step-00000116"
    shutil.copytree(checkpoint, ck)
    meta = json.loads((ck / "meta.json").read_text())
    meta["model_spec"]["spec"] = "somepkg.mod:make"
    meta["model_spec"]["registered_as"] = None
    meta["run_config"]["import_root"] = str(root)
    (ck / "meta.json").write_text(json.dumps(meta))
    target = home / "untrusted.onnx"

    out = cli(ws, "export", "onnx", "--checkpoint", str(ck), "--out", str(target), "--json")
    assert out.returncode == 1
    line = one_line(out.stderr)
    assert "somepkg.mod:make" in line and "--trust" in line
    assert one_json(out)["error"]["code"] == "untrusted"  # what the TUI's export child is read by
    assert not target.exists() and not marker.exists()

    # Inspecting it reads no code either, and says the spec is not trusted here.
    out = cli(ws, "ckpt", "inspect", str(ck), "--json")
    assert out.returncode == 0, out.stderr
    assert one_json(out)["trusted_spec"] is False and not marker.exists()


# -- detached runs, stop, Ctrl-C ---------------------------------------------------------------------
def _run_state(ws: str, run_id: str) -> dict:
    return read_json(Path(ws) / "runs" / run_id / "status.json") or {}


def assert_stop_checkpoint(run_dir: Path, ck: dict) -> None:
    """The last checkpoint is the stop's: saved for it, or the epoch's one at that very step."""
    started = json.loads((run_dir / "events.jsonl").read_text().splitlines()[0])
    at_epoch_end = ck["step"] % started["steps_per_epoch"] == 0
    assert read_json(Path(ck["path"]) / "meta.json")["reason"] == ("epoch" if at_epoch_end else "stop")


def test_detach_returns_at_once_then_runs_stop(ws):
    t0 = time.monotonic()
    out = cli(ws, "train", "--model", "demo", *LONG, "--name", "detached", "--detach")
    elapsed = time.monotonic() - t0
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.strip()
    assert len(out.stdout.splitlines()) == 1 and (Path(ws) / "runs" / run_id).is_dir()
    # The command is back while the run goes on (the run alone would take minutes).
    assert _run_state(ws, run_id).get("state") in ("queued", "running", "saving"), elapsed
    wait_until(lambda: _run_state(ws, run_id).get("state") == "running" and _run_state(ws, run_id)["step"] > 0,
               timeout=60, what="the detached run to be running")

    out = cli(ws, "runs", "stop", "detached", "--json")
    assert out.returncode == 0, out.stderr
    assert one_json(out) == {"id": run_id, "state": "stopped"}
    out = cli(ws, "runs", "show", run_id, "--json")
    doc = one_json(out)
    assert doc["state"] == "stopped" and doc["checkpoints"]
    assert doc["checkpoints"][-1]["step"] == doc["step"]
    assert_stop_checkpoint(Path(doc["path"]), doc["checkpoints"][-1])

    out = cli(ws, "runs", "stop", run_id, "--json")  # already stopped: says so, succeeds
    assert out.returncode == 0 and "already stopped" in one_line(out.stderr)
    assert one_json(out) == {"id": run_id, "state": "stopped"}


def test_ctrl_c_stops_the_run_with_a_checkpoint(home):
    ws = home / "ctrl-c-ws"
    proc = subprocess.Popen(cli_cmd("--workspace", str(ws), "train", "--model", "demo", *LONG, "--json"),
                            cwd=home, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        def running_run():
            runs = list((ws / "runs").glob("*")) if (ws / "runs").exists() else []
            for r in runs:
                st = read_json(r / "status.json") or {}
                if st.get("state") == "running" and st.get("step", 0) > 0:
                    return r
            return None

        run_dir = wait_until(running_run, timeout=60, what="the foreground run to be running")
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, stderr
    doc = json.loads(stdout)
    assert doc["id"] == run_dir.name and doc["state"] == "stopped" and doc["checkpoints"]
    st = read_json(run_dir / "status.json")
    assert st["state"] == "stopped"
    assert doc["checkpoints"][-1]["step"] == st["step"]
    assert_stop_checkpoint(run_dir, doc["checkpoints"][-1])


# -- at a terminal --------------------------------------------------------------------------------------
def at_terminal(*args: str, cwd: Path, timeout: float = 120.0) -> bytes:
    """The real command line with stdout and stderr on a pseudo-terminal, as a person runs it:
    everything it wrote, as the terminal received it."""
    import pty

    master, slave = pty.openpty()
    p = subprocess.Popen(cli_cmd(*args), cwd=cwd, env=cli_env(), stdin=subprocess.DEVNULL, stdout=slave,
                         stderr=slave)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its side
                break
            if not chunk:
                break
            out += chunk
        assert p.wait(timeout=max(1.0, deadline - time.monotonic())) == 0, out
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
    return out


def test_names_from_scripts_print_as_text_at_a_terminal_and_a_commands_output_as_it_is(tmp_path):
    """A metric named with an escape sequence (a script's, or another tool's log) cleared the
    screen of whoever ran `runs show` or `runs tail`: at a terminal, control characters from
    files and scripts print as \\xNN. A pipe keeps the bytes (data), and a command's own output
    keeps its colours (as `tail` would show them)."""
    import sys

    ws = tmp_path / "ws"
    script = tmp_path / "evil.py"
    script.write_text(textwrap.dedent(f"""
        import torchdeck
        with torchdeck.init(workspace={str(ws)!r}, name="evil") as run:
            run.log({{"lo\\x1b[2Jss": 1.0, "bell\\x07": 2.0}})
    """))
    assert subprocess.run([sys.executable, str(script)], env=cli_env(), timeout=60).returncode == 0
    shown = at_terminal("--workspace", str(ws), "runs", "show", "evil", cwd=tmp_path)
    assert b"\x1b" not in shown and b"\x07" not in shown, shown
    assert b"lo\\x1b[2Jss" in shown and b"bell\\x07" in shown
    tail = at_terminal("--workspace", str(ws), "runs", "tail", "evil", cwd=tmp_path)
    assert b"\x1b" not in tail and b"step 1 lo\\x1b[2Jss 1" in tail, tail
    piped = run_cli("--workspace", str(ws), "runs", "show", "evil", cwd=tmp_path)
    assert "lo\x1b[2Jss" in piped.stdout  # not a terminal: the name as it is
    colours = at_terminal("--workspace", str(ws), "run", "--name", "colours", "--", sys.executable, "-c",
                          "print('\\x1b[31mred\\x1b[0m')", cwd=tmp_path)
    assert b"\x1b[31mred\x1b[0m" in colours, colours
