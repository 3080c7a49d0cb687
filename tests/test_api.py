"""The logging API (torchdeck.init/log/finish): a user's own script as a run. What is about
processes (exit, exceptions, SIGKILL, two writers, the attach seam, a stop from the command
line) runs real child scripts; the rest runs here, reading what was written through RunView."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torchdeck
from helpers import cli_env, read_json, wait_until
from torchdeck import api
from torchdeck.errors import Busy
from torchdeck.runs import events as ev
from torchdeck.runs.config import RunConfig
from torchdeck.runs.store import Run as StoreRun
from torchdeck.runs.store import RunStore
from torchdeck.runs.view import load
from torchdeck.runs.writer import RunWriter
from torchdeck.workspace import Workspace


def script(tmp_path: Path, body: str, name: str = "train.py") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return p


def run_script(path: Path, *, env: dict | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(path)], env=cli_env(**(env or {})), capture_output=True, text=True,
                          timeout=timeout)


def cli_json(ws: Path, *args: str) -> dict:
    p = subprocess.run([sys.executable, "-m", "torchdeck.tui.cli", "--workspace", str(ws), *args, "--json"],
                       env=cli_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout)


def only_run(ws: Path) -> StoreRun:
    runs = RunStore(Workspace.open(ws)).runs()
    assert len(runs) == 1, runs
    return runs[0]


def events_of(run) -> list:
    return list(ev.read_all(StoreRun(Path(run.path)).events_path))


@pytest.fixture(autouse=True)
def _no_current_run(monkeypatch):
    """Each test starts with no current run, outside torchrun and any wrapper."""
    for var in ("RANK", "LOCAL_RANK", api.RUN_DIR_ENV):
        monkeypatch.delenv(var, raising=False)
    yield
    if api._current is not None and not api._current.finished:
        api._current.finish()
    api._current = None


def test_a_script_logging_5000_times_is_a_finished_run_shown_by_the_cli_and_imports_nothing_heavy(tmp_path):
    ws = tmp_path / "ws"
    s = script(tmp_path, f"""
        import atexit, sys
        import torchdeck
        # registered before init's own handler, so it runs after the run is finished (LIFO)
        atexit.register(lambda: print("HEAVY AT EXIT", [m for m in ("torch", "textual", "rich") if m in sys.modules]))
        torchdeck.init(name="mine", config={{"lr": 0.1, "layers": [1, 2]}}, workspace={str(ws)!r})
        for i in range(5000):
            torchdeck.log({{"loss": 1.0 / (i + 1), "lr": 0.1}})
        heavy = [m for m in ("torch", "textual", "rich") if m in sys.modules]
        print("HEAVY", heavy)
        # no finish(): a normal exit finishes the run
    """)
    p = run_script(s)
    assert p.returncode == 0, p.stderr
    assert "HEAVY []" in p.stdout and "HEAVY AT EXIT []" in p.stdout
    doc = cli_json(ws, "runs", "show", "mine")
    assert doc["step"] == 5000 and doc["state"] == "finished" and doc["name"] == "mine" and doc["source"] == "api"
    assert doc["metrics"]["loss"]["count"] == 5000 and doc["metrics"]["lr"]["count"] == 5000
    assert doc["last_loss"] == pytest.approx(1 / 5000)
    listed = cli_json(ws, "runs", "list")["runs"]
    assert [(r["name"], r["state"], r["step"], r["model"]) for r in listed] == [("mine", "finished", 5000, "train.py")]
    run = only_run(ws)
    assert read_json(run.path / "config.json")["params"] == doc["params"] == {"lr": 0.1, "layers": [1, 2]}
    assert not run.writer_alive()
    text = subprocess.run([sys.executable, "-m", "torchdeck.tui.cli", "--workspace", str(ws), "runs", "show", "mine"],
                          capture_output=True, text=True, env=cli_env(), timeout=60).stdout
    # the script and its own config; never the defaults of torchdeck's training form
    assert "script         train.py (torchdeck.init)" in text and 'params         {"layers": [1, 2], "lr": 0.1}' in text
    assert "batch 16" not in text and "optimizer sgd" not in text, text


def test_explicit_steps_sparse_loss_and_steps_that_go_backwards(tmp_path):
    run = torchdeck.init(workspace=tmp_path / "ws", flush_interval=3600)
    run.log({"loss": 1.0}, step=10)
    run.log({"loss": 2.0})  # the next step: 11
    run.log({"acc": 0.5}, step=11)  # another name at the same step is fine
    with pytest.warns(api.LoggingWarning, match="before the last step"):
        run.log({"loss": 9.0, "acc": 9.0}, step=5)  # dropped, whole call
    run.flush()  # a consecutive chunk: a losses record
    for s in (100, 200, 300):  # sparse: a scalars record named loss
        run.log({"loss": float(s)}, step=s)
    with pytest.warns(api.LoggingWarning, match="'loss' was already logged at step 300"):
        run.log({"loss": 7.0}, step=300)  # twice at one step: the first value stands
    run.finish()
    view = load(StoreRun(run.path))
    loss = view.metrics["loss"]
    assert loss.steps_array().tolist() == [10, 11, 100, 200, 300]
    assert loss.values_array().tolist() == [1.0, 2.0, 100.0, 200.0, 300.0]
    assert view.metrics["acc"].steps_array().tolist() == [11]
    assert view.state == "finished" and view.step == 300
    kinds = [(type(e).__name__, getattr(e, "name", "")) for e in events_of(run)]
    assert ("Losses", "") in kinds and ("Scalars", "loss") in kinds


def test_values_that_are_not_numbers_are_named_and_skipped_and_the_rest_kept(tmp_path):
    import numpy as np
    import torch

    run = torchdeck.init(workspace=tmp_path / "ws")
    bad = {"s": "x", "none": None, "list": [1.0], "dict": {}, "flag": True, "vec": torch.ones(3),
           "npvec": np.ones(2)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            run.log({"loss": 0.5, **bad, "np": np.float32(2.0), "t": torch.tensor(3.0), "t1": torch.ones(1),
                     "i": 4})
    messages = [str(w.message) for w in caught if issubclass(w.category, api.LoggingWarning)]
    for key in bad:
        assert sum(f"'{key}'" in m for m in messages) == 1, (key, messages)  # once per key, named
    assert len(messages) == len(bad)
    run.finish()
    view = load(StoreRun(run.path))
    assert set(view.metrics) == {"loss", "np", "t", "t1", "i"}
    assert [view.metrics[k].last for k in ("loss", "np", "t", "t1", "i")] == [0.5, 2.0, 3.0, 1.0, 4.0]
    assert view.step == 3 and view.state == "finished"


def test_names_that_are_not_strings_are_named_and_skipped_and_chunks_are_written_on_time(tmp_path):
    run = torchdeck.init(workspace=tmp_path / "ws", flush_interval=0.05)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.log({"loss": 1.0, 3: 2.0, "": 3.0, "acc": 0.5})
        started = time.monotonic()
        wait_until(lambda: time.monotonic() - started > 0.06, interval=0.01, what="the flush interval")
        run.log({"loss": 2.0, 3: 2.0})  # past the interval: this call writes the chunk
    messages = sorted(str(w.message) for w in caught if issubclass(w.category, api.LoggingWarning))
    assert messages == ["metric names must be non-empty strings, not '': skipped",
                        "metric names must be non-empty strings, not 3: skipped"]
    # before finish(): written on time (in one chunk or two, as the clock fell)
    written = [e for e in events_of(run) if isinstance(e, (ev.Losses, ev.Scalars))]
    assert [v for e in written if isinstance(e, ev.Losses) for v in e.values] == [1.0, 2.0]
    assert {e.name for e in written if isinstance(e, ev.Scalars)} == {"acc"}
    run.finish()
    view = load(StoreRun(run.path))
    assert set(view.metrics) == {"loss", "acc"} and view.metrics["loss"].steps_array().tolist() == [1, 2]


def test_nan_and_inf_are_recorded_as_nonfinite(tmp_path):
    run = torchdeck.init(workspace=tmp_path / "ws")
    for v in (1.0, float("nan"), float("inf"), float("-inf"), 2.0):
        run.log({"loss": v, "gn": v})
    run.finish()
    view = load(StoreRun(run.path))
    for name in ("loss", "gn"):
        s = view.metrics[name].to_json()
        assert s["count"] == 5 and s["nonfinite"] == 3 and s["last"] == 2.0, s
    recs = [e for e in events_of(run) if isinstance(e, (ev.Losses, ev.Scalars))]
    assert sorted(tuple(x[1] for x in r.nonfinite) for r in recs) == [("nan", "inf", "-inf")] * 2
    assert view.last_loss == 2.0


def test_an_uncaught_exception_fails_the_run_with_its_line_and_the_traceback_still_printed(tmp_path):
    ws = tmp_path / "ws"
    s = script(tmp_path, f"""
        import torchdeck
        run = torchdeck.init(name="boom", workspace={str(ws)!r})
        run.log({{"loss": 1.0}})
        raise ValueError("the data ran out")
    """)
    p = run_script(s)
    assert p.returncode == 1 and "Traceback" in p.stderr and "the data ran out" in p.stderr
    doc = cli_json(ws, "runs", "show", "boom")
    assert doc["state"] == "failed" and doc["message"] == "ValueError: the data ran out" and doc["step"] == 1


def test_the_context_manager_finishes_or_fails(tmp_path):
    with torchdeck.init(workspace=tmp_path / "ws") as run:
        run.log({"loss": 1.0})
    assert StoreRun(run.path).observed_state() == "finished"
    with pytest.raises(RuntimeError):
        with torchdeck.init(workspace=tmp_path / "ws") as run2:
            raise RuntimeError("oops")
    assert StoreRun(run2.path).observed_state() == "failed"
    assert StoreRun(run2.path).status().message == "RuntimeError: oops"


def endless_logger(tmp_path: Path, ws: Path, name: str) -> Path:
    """A script that logs a loss every millisecond until it is stopped from outside."""
    return script(tmp_path, f"""
        import time, torchdeck
        run = torchdeck.init(name={name!r}, workspace={str(ws)!r})
        while True:
            run.log({{"loss": 1.0}})
            time.sleep(0.001)
    """)


def test_a_killed_script_reads_crashed(tmp_path):
    ws = tmp_path / "ws"
    s = endless_logger(tmp_path, ws, "victim")
    proc = subprocess.Popen([sys.executable, str(s)], env=cli_env())
    try:
        run = wait_until(lambda: RunStore(Workspace.open(ws)).runs(), what="the run")[0]
        wait_until(lambda: run.status().step >= 20, what="steps")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert run.observed_state() == "crashed"
    assert not run.writer_alive()


def test_one_writer_per_id_and_a_resume_continues_the_steps(tmp_path):
    ws = tmp_path / "ws"
    go = tmp_path / "go"
    s = script(tmp_path, f"""
        import os, time, torchdeck
        run = torchdeck.init(id="fixed-1", workspace={str(ws)!r}, config={{"lr": 0.1, "layers": 2}})
        for _ in range(7):
            run.log({{"loss": 1.0}})
        run.flush()
        while not os.path.exists({str(go)!r}):
            time.sleep(0.02)
        run.finish()
    """)
    proc = subprocess.Popen([sys.executable, str(s)], env=cli_env())
    try:
        run = StoreRun(ws / "runs" / "fixed-1")
        wait_until(lambda: run.status().step == 7, what="the first writer")
        with pytest.raises(Busy, match="another process"):
            torchdeck.init(id="fixed-1", workspace=ws)
    finally:
        go.touch()
        assert proc.wait(30) == 0
    assert run.observed_state() == "finished"
    again = torchdeck.init(id="fixed-1", workspace=ws, config={"lr": 0.05})
    assert read_json(run.path / "config.json")["params"] == {"lr": 0.05, "layers": 2}  # merged, as update_config
    again.log({"loss": 0.5})
    assert again.step == 8
    again.finish()
    view = load(run)
    assert view.step == 8 and view.state == "finished" and view.metrics["loss"].count == 8
    with pytest.raises(torchdeck.TorchdeckError, match="no run"):
        torchdeck.init(id="nope", resume=True, workspace=ws)


def test_attach_to_a_run_owned_by_a_wrapper_only_appends_events(tmp_path):
    """Plays the future `torchdeck run` wrapper: it owns the run (lock, status, end), the script
    attached through TORCHDECK_RUN_DIR only appends its metrics."""
    ws = Workspace.open(tmp_path / "ws")
    run = RunStore(ws).create(RunConfig(model="script", name="wrapped", epochs=1))
    writer, lock = RunWriter.acquire(run)
    writer.emit(ev.Started(run.id, {}, 0, 0, 0, "", time.time()))
    writer.progress(state="running")
    writer.write_status()
    s = script(tmp_path, """
        import torchdeck
        run = torchdeck.init(name="ignored")
        for i in range(100):
            run.log({"loss": float(i), "lr": 0.01})
        assert run.should_stop() is False
        run.finish()
        print("ATTACHED", run.id)
    """)
    p = run_script(s, env={api.RUN_DIR_ENV: str(run.path)})
    assert p.returncode == 0, p.stderr
    assert f"ATTACHED {run.id}" in p.stdout
    assert [r.id for r in RunStore(ws).runs()] == [run.id]  # no run of its own
    st = run.status()
    assert st.state == "running" and st.pid == os.getpid()  # the wrapper's status, untouched
    assert not any(isinstance(e, ev.Ended) for e in ev.read_all(run.events_path))
    assert run.writer_alive()  # the wrapper still holds the lock
    writer.ended("finished", 100, 99.0)
    lock.close()
    view = load(run)
    assert view.state == "finished" and view.name == "wrapped"
    assert view.metrics["loss"].steps_array().tolist() == list(range(1, 101))
    assert view.metrics["lr"].count == 100


def test_ranks_other_than_zero_do_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with torchdeck.init(name="rank1", workspace=tmp_path / "ws") as run:
        run.log({"loss": 1.0})
        torchdeck.log({"loss": 2.0})
        assert run.should_stop() is False
    assert not (tmp_path / "ws").exists() or not list((tmp_path / "ws" / "runs").glob("*"))


def test_should_stop_after_runs_stop_and_the_run_ends_stopped(tmp_path):
    ws = tmp_path / "ws"
    s = script(tmp_path, f"""
        import time, torchdeck
        run = torchdeck.init(name="long", workspace={str(ws)!r})
        while not run.should_stop():
            run.log({{"loss": 1.0}})
            time.sleep(0.002)
        run.finish()
    """)
    proc = subprocess.Popen([sys.executable, str(s)], env=cli_env())
    try:
        run = wait_until(lambda: RunStore(Workspace.open(ws)).runs(), what="the run")[0]
        wait_until(lambda: run.status().step >= 10, what="steps")
        doc = cli_json(ws, "runs", "stop", "long")
        assert doc["state"] == "stopped", doc
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert run.observed_state() == "stopped"


class CountSyncs:
    """Counts every call that copies a tensor's value to the host (as tests/test_metrics.py)."""

    SYNCS = ("item", "tolist", "cpu", "numpy", "__float__", "__bool__", "__int__", "__index__")

    def __new__(cls):
        from torch.overrides import TorchFunctionMode

        class Mode(TorchFunctionMode):
            def __init__(self):
                super().__init__()
                self.counts = dict.fromkeys(cls.SYNCS, 0)

            def __torch_function__(self, func, types, args=(), kwargs=None):
                name = getattr(func, "__name__", "")
                if name in self.counts:
                    self.counts[name] += 1
                return func(*args, **(kwargs or {}))

        return Mode()


def test_device_tensors_are_copied_once_per_chunk_never_per_step(tmp_path, monkeypatch):
    import torch

    # CPU tensors take the device path: not log()'s fast path, and not read as on the host
    monkeypatch.setattr(api, "_tensor_type", type("NotATensor", (), {}))
    monkeypatch.setattr(api, "_on_host", lambda t: False)
    run = torchdeck.init(workspace=tmp_path / "ws", flush_interval=3600, flush_points=250)
    w = torch.ones(3, requires_grad=True)
    with CountSyncs() as mode:
        for i in range(1000):
            loss = (w * i).sum()  # part of a graph: what is kept must not hold it
            run.log({"loss": loss, "gn": torch.tensor(float(i), dtype=torch.float64)})
    counts = {k: v for k, v in mode.counts.items() if v}
    # 2000 points / 250 a chunk = 8 chunks, each one .tolist() (float32 and float64 together)
    assert counts == {"tolist": 8}, counts
    with CountSyncs() as mode:
        run.finish()
    assert {k: v for k, v in mode.counts.items() if v} == {}  # nothing was left to copy
    view = load(StoreRun(run.path))
    assert view.metrics["loss"].values_array().tolist() == [3.0 * i for i in range(1000)]
    assert view.metrics["gn"].values_array().tolist() == [float(i) for i in range(1000)]
    assert view.step == 1000


def test_checkpoints_are_torchdeck_checkpoints_of_the_run(tmp_path):
    import torch
    from safetensors.torch import load_file
    from torchdeck.checkpoints import store as ckpt_store

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    run = torchdeck.init(workspace=tmp_path / "ws")
    for step in range(1, 11):
        opt.zero_grad()
        loss = model(torch.ones(4, 3)).pow(2).mean()
        loss.backward()
        opt.step()
        run.log({"loss": loss})
        if step % 5 == 0:
            path = run.checkpoint(model, opt)
    run.finish()
    assert path.name == "step-00000010"
    listed = ckpt_store.list_checkpoints(StoreRun(run.path).checkpoints_dir)
    assert [(c.name, c.step) for c in listed] == [("step-00000005", 5), ("step-00000010", 10)]
    weights = load_file(str(path / "model.safetensors"))
    assert torch.equal(weights["weight"], model.weight.detach())
    state = torch.load(path / "training_state.pt", weights_only=True)
    assert "momentum_buffer" in str(state["optimizer"]["state"])
    # the model is the script's own: rebuilding it says so and asks for it (it read "its model spec is damaged")
    with pytest.raises(torchdeck.TorchdeckError, match=r"saved by a script through torchdeck.init \(a Linear\).*--model") as e:
        ckpt_store.load_model(path, tmp_path / "ws")
    assert e.value.field == "model" and e.value.code != "corrupt"
    view = load(StoreRun(run.path))
    assert [c.step for c in view.checkpoints] == [5, 10]
    assert StoreRun(run.path).summary().checkpoints == 2


async def test_a_live_api_run_is_watched_on_the_training_screen(tmp_path):
    from torchdeck.tui.app import TorchdeckApp
    from tui_helpers import screen_text, wait_for

    ws = Workspace.open(tmp_path / "ws")
    run = torchdeck.init(name="my-script", workspace=ws.root, config={"lr": 3e-4, "optimizer": "adamw"})
    for i in range(300):
        run.log({"loss": 1.0 / (i + 1), "acc": i / 300})
    run.flush()
    try:
        app = TorchdeckApp(ws, default_config=RunConfig(epochs=1, dataset_size=4096))
        async with app.run_test(size=(120, 36)) as pilot:
            await pilot.press("3")
            screen = app.screen
            await wait_for(pilot, lambda: screen.current_run == run.id and screen.history_done
                           and "step 300" in screen_text(app), 20, "the API run to be watched")
            text = screen_text(app)
            assert "my-script" in text and "running" in text, text
            # the log starts with the script and its own config, not the defaults of torchdeck's form
            log = screen.query_one("#loss-log")
            log.focus()
            await pilot.press("home")
            await wait_for(pilot, lambda: "(torchdeck.init)" in " ".join(log.lines_in_view()), 5, "the start line")
            label = api._script_label()  # what this process runs ("pytest", or "__main__.py" under python -m)
            assert log.lines_in_view()[:2] == [f"started: {label} (torchdeck.init)", "  lr 0.0003, optimizer adamw"]
    finally:
        run.finish()


async def test_resume_of_a_scripts_run_in_the_tui_says_how_instead_of_a_dialog_of_defaults(tmp_path):
    """r on a finished API run opened a "continue exactly as if it had never stopped" dialog with
    the form's defaults; only the script can continue it, and the message says how."""
    from torchdeck.tui.app import TorchdeckApp
    from torchdeck.tui.screens.resume import ResumeDialog
    from tui_helpers import record_notifications, wait_for

    ws = Workspace.open(tmp_path / "ws")
    with torchdeck.init(name="mine", workspace=ws.root) as run:
        run.log({"loss": 1.0})
    app = TorchdeckApp(ws, default_config=RunConfig(epochs=1, dataset_size=4096))
    async with app.run_test(size=(120, 36)) as pilot:
        shown = record_notifications(app)
        await pilot.press("3")
        screen = app.screen
        await wait_for(pilot, lambda: screen.current_run == run.id and screen.history_done, 20, "the run")
        await pilot.press("r")
        await wait_for(pilot, lambda: shown, 10, "a message")
        assert not isinstance(app.screen, ResumeDialog)
        assert f'torchdeck.init(id="{run.id}")' in shown[-1][2], shown


def test_sigterm_ends_a_script_that_never_asks_should_stop_as_stopped(tmp_path):
    ws = tmp_path / "ws"
    s = endless_logger(tmp_path, ws, "deaf")
    proc = subprocess.Popen([sys.executable, str(s)], env=cli_env(), stderr=subprocess.PIPE, text=True)
    try:
        run = wait_until(lambda: RunStore(Workspace.open(ws)).runs(), what="the run")[0]
        wait_until(lambda: run.status().step >= 10, what="steps")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert run.observed_state() == "stopped"
    assert load(run).step == run.status().step >= 10


def test_a_forked_child_that_exits_never_ends_the_run(tmp_path):
    ws = tmp_path / "ws"
    s = script(tmp_path, f"""
        import os, sys, torchdeck
        run = torchdeck.init(name="forks", workspace={str(ws)!r})
        run.log({{"loss": 1.0}})
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # runs atexit in the child
        os.waitpid(pid, 0)
        print("STATE", run.state)
        run.log({{"loss": 2.0}})
    """)
    p = run_script(s)
    assert p.returncode == 0, p.stderr
    assert "STATE running" in p.stdout
    view = load(only_run(ws))
    assert view.state == "finished" and view.metrics["loss"].count == 2
    assert sum(isinstance(e, ev.Ended) for e in ev.read_all(only_run(ws).events_path)) == 1


def test_resume_refuses_a_script_run_and_says_how_to_continue_it(tmp_path):
    """`runs resume` retrains a torchdeck run from its checkpoint; a script's run has no model
    torchdeck could rebuild (its config names the script): refused, naming the way that works."""
    run = torchdeck.init(name="mine", workspace=tmp_path / "ws")
    run.log({"loss": 1.0})
    run.finish()
    p = subprocess.run([sys.executable, "-m", "torchdeck.tui.cli", "--workspace", str(tmp_path / "ws"), "runs",
                        "resume", "mine", "--json"], env=cli_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stdout + p.stderr
    error = json.loads(p.stdout)["error"]
    assert error["field"] == "resume" and "logged by a script" in error["message"]
    assert f'torchdeck.init(id="{run.id}")' in error["message"]
    assert StoreRun(run.path).observed_state() == "finished"  # untouched


def test_hostile_configs_are_recorded_as_far_as_they_go_and_never_raise(tmp_path):
    """A config that refers to itself, nests 5,000 deep, has a __repr__ that raises, an int Python
    will not print or a NaN: init and update_config record what they can (they raised
    RecursionError and ValueError), and the history stays strict JSON."""
    import math

    class Unprintable:
        def __repr__(self):
            raise RuntimeError("no")

    deep: dict = {}
    cur = deep
    for _ in range(5000):
        cur["a"] = {}
        cur = cur["a"]
    loop: dict = {}
    loop["self"] = loop
    ws = tmp_path / "ws"
    run = torchdeck.init(workspace=ws, config={"deep": deep, "loop": loop, "lr": 0.1, "gamma": math.inf})
    run.log({"loss": 1.0})
    run.update_config({"odd": Unprintable(), "huge": 10**5000, "nan": math.nan, "lst": [loop]})
    run.finish()
    doc = cli_json(ws, "runs", "show", run.id)
    params = doc["params"]
    assert params["lr"] == 0.1 and params["odd"] == "<Unprintable>" and params["huge"].startswith("<int of")
    assert math.isnan(params["nan"]) and str(params["deep"]).count("'a'") == api.MAX_CONFIG_DEPTH - 1
    [update] = [e for e in events_of(run) if isinstance(e, ev.Params)]
    assert update.values["nan"] == "nan"  # events are strict JSON: the name of the value
    assert params["gamma"] == math.inf  # config.json keeps it (init raised ValueError writing its start record)
    [start] = [e for e in events_of(run) if isinstance(e, ev.Started)]
    assert start.config["params"]["gamma"] == "inf"
    assert doc["state"] == "finished" and doc["step"] == 1


def test_update_config_and_record_checkpoint_for_what_a_framework_makes_after_init(tmp_path):
    """Hyper-parameters known once training starts, and checkpoints written by something else:
    both read back as `runs show` reads them; bad input is named, never raised."""
    ws = tmp_path / "ws"
    run = torchdeck.init(name="late", config={"lr": 0.1, "keep": True}, workspace=ws)
    run.log({"loss": 1.0})
    run.update_config({"lr": 0.2, (1, 2): "tuple key", "nested": {"a": [1, 2]}})
    ckpt = tmp_path / "epoch=0-step=1.ckpt"
    ckpt.write_bytes(b"x")
    gone = tmp_path / "checkpoint-1"
    gone.mkdir()
    run.record_checkpoint(ckpt, reason="best")
    run.record_checkpoint(gone, 1)
    run.log({"loss": 0.5})
    run.record_checkpoint(ckpt, reason="best")  # saved again over the same path: one checkpoint, at step 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.update_config(["not", "a", "dict"])
        run.record_checkpoint(object())
        run.record_checkpoint(ckpt, step="three", reason="best")  # recorded at the last step, named
    messages = [str(w.message) for w in caught]
    assert len(messages) == 3 and "takes a dict" in messages[0] and "must be a path" in messages[1]
    assert "whole numbers" in messages[2]
    gone.rmdir()  # its trainer's retention deleted it
    run.finish()
    doc = cli_json(ws, "runs", "show", "late")
    assert doc["params"] == {"lr": 0.2, "keep": True, "(1, 2)": "tuple key", "nested": {"a": [1, 2]}}
    assert [(c["path"], c["step"], c["reason"]) for c in doc["checkpoints"]] == [(str(ckpt), 2, "best")]
    assert StoreRun(run.path).summary().checkpoints == 1
    recorded = [e for e in events_of(run) if isinstance(e, ev.Checkpointed)]
    assert [e.path for e in recorded] == [str(ckpt), str(gone), str(ckpt), str(ckpt)]
    # the update is in the history too, where it came: the monitor's view and log show it
    [update] = [e for e in events_of(run) if isinstance(e, ev.Params)]
    assert update.step == 1 and update.values == {"lr": 0.2, "(1, 2)": "tuple key", "nested": {"a": [1, 2]}}
    view = load(StoreRun(run.path))
    assert view.params == doc["params"]
    from torchdeck.tui.widgets.virtual_log import event_lines

    assert event_lines(update) == ["config at step 1: lr 0.2, (1, 2) tuple key, nested.a [1, 2]"]
    with pytest.warns(api.LoggingWarning, match="finished"):
        run.update_config({"lr": 1.0})
