"""Exact resume: a run stopped (or cut off) at any point and continued from its checkpoint ends
with weights bit-identical (torch.equal) to the same run uninterrupted, on the CPU.

In-process tests drive the Trainer directly; the process tests at the end kill real workers
and resume them with `torchdeck train --resume`.
"""

from __future__ import annotations

import random
import textwrap
from pathlib import Path

import pytest
from helpers import StubHooks
from torchdeck.checkpoints import store as checkpoints
from torchdeck.runs import events as ev
from torchdeck.runs.config import RunConfig
from torchdeck.training.loop import Resume, Trainer, read_training_state

torch = pytest.importorskip("torch")

# A model with dropout (the torch RNG matters) whose forward also draws from Python's and
# NumPy's generators (as augmentation code does): every RNG must be restored.
MODEL = textwrap.dedent('''
    import random
    import numpy as np
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 5))

        def forward(self, x):
            if self.training:
                x = x * (1 + 0.01 * random.random()) + 0.01 * float(np.random.rand())
            return self.body(x)

    def make():
        return Net()

    def make_big():  # 4.3M parameters: a checkpoint with Adam's state is ~50 MB, long enough to be killed in
        return nn.Sequential(nn.Linear(20, 2048), nn.ReLU(), nn.Dropout(0.2), nn.Linear(2048, 2048), nn.ReLU(),
                             nn.Linear(2048, 5))
''')


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "dropnet.py").write_text(MODEL)
    return tmp_path


def config(model_dir, **kw) -> RunConfig:
    base = dict(model="dropnet:make", data="synthetic:classification", dataset_size=200, batch_size=16,
                epochs=3, lr=0.05, optimizer="adam", seed=7, threads=1, import_root=str(model_dir),
                model_import_root=str(model_dir), keep_checkpoints=100, flush_interval=0.01)
    base.update(kw)
    cfg = RunConfig(**base)
    from torchdeck.models import specs

    cfg.model_spec = specs.resolve(cfg.model).to_json()
    return cfg


class StopAt(StubHooks):
    """Asks for a stop once the trainer has done `at` steps (as a user's stop lands mid-epoch)."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at
        self.trainer = None

    def stop_requested(self):
        return self.trainer is not None and self.trainer.step >= self.at


def train(cfg, ckpts, *, stop_at=None, resume=None):
    hooks = StopAt(stop_at) if stop_at is not None else StubHooks()
    trainer = Trainer(cfg, hooks, run_id="t", checkpoints_dir=ckpts, resume=resume)
    hooks.trainer = trainer
    outcome = trainer.run()
    return trainer, outcome, hooks


def assert_same_weights(a, b):
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs after resume"


def latest(ckpts):
    return checkpoints.latest_complete(ckpts).path


def scramble_rngs():
    """What a fresh process would have: other RNG states than the ones the run left."""
    import numpy as np

    torch.manual_seed(12345)
    random.seed(12345)
    np.random.seed(12345)


@pytest.mark.parametrize("stop_at", [5, 12, 25], ids=["mid-epoch", "epoch-boundary", "next-epoch"])
def test_stopped_and_resumed_equals_uninterrupted(model_dir, tmp_path, stop_at):
    cfg = config(model_dir)
    whole, out, _ = train(cfg, tmp_path / "a")
    assert out.state == "finished"
    part, out, _ = train(config(model_dir), tmp_path / "b", stop_at=stop_at)
    assert out.state == "stopped" and out.step == stop_at
    scramble_rngs()
    resumed, out, hooks = train(config(model_dir), tmp_path / "b", resume=Resume(latest(tmp_path / "b")))
    assert out.state == "finished" and out.step == whole.step
    assert_same_weights(whole, resumed)
    # the resumed run's records start after the checkpoint and its epochs end where the whole run's did
    losses = [e for e in hooks.events if isinstance(e, ev.Losses)]
    assert losses[0].first_step == stop_at + 1
    ends = [(e.epoch, e.step) for e in hooks.events if isinstance(e, ev.EpochEnd)]
    assert ends[-1] == (3, whole.step)


def test_schedule_and_sgd_momentum_resume_exactly(model_dir, tmp_path):
    cfg = dict(schedule="cosine", optimizer="sgd", lr=0.2)
    whole, _, _ = train(config(model_dir, **cfg), tmp_path / "a")
    train(config(model_dir, **cfg), tmp_path / "b", stop_at=17)
    resumed, out, _ = train(config(model_dir, **cfg), tmp_path / "b", resume=Resume(latest(tmp_path / "b")))
    assert out.state == "finished"
    assert_same_weights(whole, resumed)
    assert resumed.optimizer.param_groups[0]["lr"] == whole.optimizer.param_groups[0]["lr"]


@pytest.mark.parametrize("settings", [
    dict(schedule="onecycle", warmup_steps=3, weight_decay=0.01, optimizer="adamw", betas=[0.8, 0.99]),
    dict(schedule="cosine", warmup_steps=4, accumulate=2, optimizer="sgd", momentum=0.9, nesterov=True, lr=0.1),
    dict(schedule="step", optimizer="rmsprop", momentum=0.5, lr=0.001, precision="bf16", loss="cross_entropy",
         label_smoothing=0.1),
], ids=["onecycle-adamw", "cosine-accumulate-nesterov", "step-rmsprop-bf16"])
def test_every_setting_resumes_exactly(model_dir, tmp_path, settings):
    whole, _, _ = train(config(model_dir, **settings), tmp_path / "a")
    train(config(model_dir, **settings), tmp_path / "b", stop_at=7)
    resumed, out, _ = train(config(model_dir, **settings), tmp_path / "b", resume=Resume(latest(tmp_path / "b")))
    assert out.state == "finished"
    assert_same_weights(whole, resumed)
    assert resumed.optimizer.param_groups[0]["lr"] == whole.optimizer.param_groups[0]["lr"]


def test_interval_checkpoint_resume_after_a_cut(model_dir, tmp_path):
    """A worker killed after an interval checkpoint: the run goes on from that checkpoint. Here
    the first run goes on past it (as if its later work was lost), the resume starts from it."""
    whole, _, _ = train(config(model_dir, checkpoint_every=5), tmp_path / "a")
    spe = whole.steps_per_epoch
    assert spe % 5
    names = [c.name for c in checkpoints.list_checkpoints(tmp_path / "a")]
    assert f"step-{10:08d}" in names and f"step-{spe:08d}" in names  # interval and epoch checkpoints
    at = (spe // 5 + 1) * 5  # inside the second epoch
    cut = tmp_path / "a" / f"step-{at:08d}"
    state = read_training_state(cut)
    assert state["loop"]["batch_in_epoch"] == at - spe and state["loop"]["epoch"] == 2
    # a second run directory holding only that checkpoint
    (tmp_path / "b").mkdir()
    import shutil

    shutil.copytree(cut, tmp_path / "b" / cut.name)
    resumed, out, _ = train(config(model_dir, checkpoint_every=5), tmp_path / "b", resume=Resume(tmp_path / "b" / cut.name))
    assert out.state == "finished"
    assert_same_weights(whole, resumed)


def test_longer_run_after_finishing_equals_the_longer_run(model_dir, tmp_path):
    whole, _, _ = train(config(model_dir, epochs=5), tmp_path / "a")
    short, out, _ = train(config(model_dir, epochs=3), tmp_path / "b")
    assert out.state == "finished"
    resumed, out, _ = train(config(model_dir, epochs=5), tmp_path / "b", resume=Resume(latest(tmp_path / "b")))
    assert out.state == "finished" and out.step == whole.step
    assert_same_weights(whole, resumed)


def test_max_steps_inside_an_epoch_then_longer(model_dir, tmp_path):
    whole, _, _ = train(config(model_dir, max_steps=30), tmp_path / "a")
    assert whole.step == 30
    part, out, _ = train(config(model_dir, max_steps=20), tmp_path / "b")
    assert out.state == "finished" and out.step == 20 and out.epoch == 2
    resumed, out, _ = train(config(model_dir, max_steps=30), tmp_path / "b", resume=Resume(latest(tmp_path / "b")))
    assert out.step == 30
    assert_same_weights(whole, resumed)


def test_training_state_loads_with_weights_only_and_holds_every_rng(model_dir, tmp_path):
    train(config(model_dir), tmp_path / "a", stop_at=9)
    state = torch.load(latest(tmp_path / "a") / "training_state.pt", weights_only=True)
    assert set(state["rng"]) >= {"torch", "data_order", "data_order_epoch_start", "python", "numpy"}
    assert state["rng"]["python"]["state"].numel() == 625
    assert state["loop"]["threads"] == 1 and state["loop"]["device"] == "cpu"
    assert state["loop"]["step"] == 9 and state["loop"]["batch_in_epoch"] == 9


def test_changed_data_is_refused(model_dir, tmp_path):
    from torchdeck.errors import InvalidRequest

    train(config(model_dir), tmp_path / "a", stop_at=5)
    with pytest.raises(InvalidRequest, match="steps per epoch"):
        Trainer(config(model_dir, dataset_size=300), StubHooks(), checkpoints_dir=tmp_path / "a",
                resume=Resume(latest(tmp_path / "a")))


# -- real workers, killed and resumed through the command line ------------------------------------
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

from helpers import run_cli  # noqa: E402
from torchdeck.runs.store import Run  # noqa: E402

RUN_FLAGS = ["--model", "dropnet:make", "--data", "synthetic:classification", "--dataset-size", "12000",
             "--batch-size", "16", "--epochs", "2", "--optimizer", "adam", "--lr", "0.01", "--seed", "5",
             "--threads", "1", "--checkpoint-every", "50"]


def cli(ws, model_dir, *args, timeout=180):
    return run_cli("--workspace", str(ws), *args, cwd=model_dir, timeout=timeout)


def final_weights(ws, run_id):
    run = Run(ws / "runs" / run_id)
    return checkpoints.load_weights(checkpoints.latest_complete(run.checkpoints_dir).path)


def wait_for_step(run, at, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = run.status()
        if st.state == "running" and st.pid and st.step >= at:
            return st
        if st.state in ("finished", "failed", "crashed", "stopped", "diverged"):
            raise AssertionError(f"run ended ({st.state}) before step {at}: {run.log_path.read_text()}")
        time.sleep(0.005)
    raise AssertionError(f"run {run.id} never reached step {at}")


@pytest.mark.slow
def test_killed_twice_and_resumed_equals_uninterrupted(model_dir, tmp_path):
    ws = tmp_path / "ws"
    whole = cli(ws, model_dir, "train", *RUN_FLAGS, "--name", "whole", "--json")
    assert whole.returncode == 0, whole.stderr
    whole_id = json.loads(whole.stdout)["id"]
    total = json.loads(whole.stdout)["total_steps"]

    out = cli(ws, model_dir, "train", *RUN_FLAGS, "--name", "cut", "--detach", "--json")
    assert out.returncode == 0, out.stderr
    run = Run(ws / "runs" / json.loads(out.stdout)["id"])
    rng = random.Random(1)
    for _ in range(2):
        st = wait_for_step(run, rng.randrange(run.status().step + 60, run.status().step + total // 3))
        os.kill(st.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while run.observed_state() != "crashed":
            assert time.monotonic() < deadline, "the killed run never showed as crashed"
            time.sleep(0.05)
        resumed = cli(ws, model_dir, "runs", "resume", "cut", "--json")
        assert resumed.returncode == 0, resumed.stderr
        doc = json.loads(resumed.stdout)
        assert doc["exact"] is True and doc["checkpoint"].startswith("step-")
    # the last leg in the foreground, to its end
    while run.observed_state() not in ("finished", "crashed", "failed"):
        time.sleep(0.05)
    assert run.observed_state() == "finished", run.log_path.read_text()
    a, b = final_weights(ws, whole_id), final_weights(ws, run.id)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # its history reads as one run: every step's loss once, the resumes recorded
    shown = cli(ws, model_dir, "runs", "show", "cut", "--json")
    doc = json.loads(shown.stdout)
    assert doc["step"] == total and doc["state"] == "finished"
    events = [json.loads(line) for line in run.events_path.read_text().splitlines()]
    assert sum(e["type"] == "resumed" for e in events) == 2


def in_process(ws, *args, capsys):
    """The command line in this process (a refusal launches nothing): (exit code, stderr)."""
    from torchdeck.tui.cli import main

    capsys.readouterr()
    code = main(["--workspace", str(ws), *args])
    return code, capsys.readouterr().err


@pytest.mark.slow
def test_resume_refusals_and_foreground_resume(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(model_dir)
    ws = tmp_path / "ws"
    flags = [f for f in RUN_FLAGS]
    flags[flags.index("12000")] = "1200"
    out = cli(ws, model_dir, "train", *flags, "--name", "r", "--json")
    assert out.returncode == 0, out.stderr
    # finished: nothing left to train without a new length
    code, text = in_process(ws, "train", "--resume", "r", capsys=capsys)
    assert code == 2 and "give it more epochs" in text
    # other settings cannot change; --lr only for a diverged run; a length that ends before now
    for extra, word in ((["--seed", "1"], "--seed"), (["--batch-size", "8"], "--batch-size"),
                        (["--model", "builtin:mlp"], "--model"), (["--lr", "0.1"], "diverged"),
                        (["--from", "x.pt"], "--from"), (["--no-checkpoints"], "--no-checkpoints")):
        code, text = in_process(ws, "train", "--resume", "r", "--epochs", "3", *extra, capsys=capsys)
        assert code == 2 and word in text, text
    code, text = in_process(ws, "train", "--resume", "r", "--max-steps", "10", capsys=capsys)
    assert code == 2 and "nothing left to train" in text
    code, text = in_process(ws, "train", "--resume", "r", "--epochs", "3", "--max-steps", "10", capsys=capsys)
    assert code == 2
    code, text = in_process(ws, "train", "--resume", "nosuchrun", capsys=capsys)
    assert code == 2 and "nosuchrun" in text
    # an older checkpoint would overwrite later ones
    run = Run(ws / "runs" / json.loads(out.stdout)["id"])
    older = checkpoints.list_checkpoints(run.checkpoints_dir)[0].path
    code, text = in_process(ws, "train", "--resume", str(older), "--epochs", "3", capsys=capsys)
    assert code == 2 and "later checkpoints" in text and "--from" in text
    # the latest checkpoint by path, in the foreground, exit 0 when it finishes
    latest_path = checkpoints.latest_complete(run.checkpoints_dir).path
    fg = cli(ws, model_dir, "train", "--resume", str(latest_path), "--max-steps", "200", "--json")
    assert fg.returncode == 0, fg.stderr
    assert json.loads(fg.stdout)["step"] == 200 and json.loads(fg.stdout)["state"] == "finished"
    # a run that is running cannot be resumed; pause and continue from the command line
    go = cli(ws, model_dir, "train", "--resume", "r", "--max-steps", "100000", "--detach")
    assert go.returncode == 0, go.stderr
    wait_for_step(run, 250)
    busy = cli(ws, model_dir, "runs", "resume", "r", "--max-steps", "200000")
    assert busy.returncode == 1 and "only a run that has ended" in busy.stderr
    assert cli(ws, model_dir, "runs", "pause", "r").returncode == 0
    deadline = time.monotonic() + 30
    while run.status().state != "paused":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert cli(ws, model_dir, "runs", "continue", "r").returncode == 0
    stop = cli(ws, model_dir, "runs", "stop", "r")
    assert stop.returncode == 0, stop.stderr
    not_running = cli(ws, model_dir, "runs", "pause", "r")
    assert not_running.returncode == 2 and "runs resume" in not_running.stderr


@pytest.mark.slow
def test_diverged_run_resumes_with_a_lower_rate(model_dir, tmp_path):
    ws = tmp_path / "ws"
    flags = ["--model", "builtin:mlp", "--epochs", "1", "--lr", "1e5", "--threads", "1", "--name", "d",
             "--checkpoint-every", "5"]
    out = cli(ws, model_dir, "train", *flags, "--json")
    doc = json.loads(out.stdout)
    assert out.returncode == 1 and doc["state"] == "diverged", out.stderr
    fixed = cli(ws, model_dir, "train", "--resume", "d", "--lr", "0.01", "--max-steps", "60", "--json")
    assert fixed.returncode == 0, fixed.stderr
    assert json.loads(fixed.stdout)["state"] == "finished"
    run = Run(ws / "runs" / doc["id"])
    resumed = [json.loads(line) for line in run.events_path.read_text().splitlines() if '"resumed"' in line]
    assert resumed[-1]["exact"] is False and resumed[-1]["changes"]["lr"] == [1e5, 0.01]
    for c in checkpoints.list_checkpoints(run.checkpoints_dir):
        w = checkpoints.load_weights(c.path)
        assert all(torch.isfinite(t).all() for t in w.values())


@pytest.mark.slow
def test_train_from_another_checkpoint(model_dir, tmp_path):
    from safetensors.torch import save_file
    from torchdeck.models import specs

    ws = tmp_path / "ws"
    model = specs.build(specs.resolve("builtin:mlp"))
    weights = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}  # as DataParallel saves them
    save_file(weights, str(tmp_path / "w.safetensors"))
    out = cli(ws, model_dir, "train", "--model", "builtin:mlp", "--from", str(tmp_path / "w.safetensors"),
              "--epochs", "1", "--lr", "1e-12", "--json")
    assert out.returncode == 0, out.stderr
    got = final_weights(ws, json.loads(out.stdout)["id"])
    for k, v in model.state_dict().items():
        assert torch.allclose(got[k], v, atol=1e-6), k
    wrong = cli(ws, model_dir, "train", "--model", "builtin:cnn", "--from", str(tmp_path / "w.safetensors"))
    assert wrong.returncode == 2 and "do not fit the model" in wrong.stderr


# -- the TUI: r on a run that ended ------------------------------------------------------------------
@pytest.mark.slow
async def test_tui_resume_key_asks_for_the_length_and_resumes(model_dir, tmp_path):
    from textual.widgets import Input
    from torchdeck.runs.store import RunStore
    from torchdeck.tui.app import TorchdeckApp
    from torchdeck.tui.screens.resume import ResumeDialog
    from torchdeck.workspace import Workspace
    from tui_helpers import screen_text, wait_for, wait_for_screen

    ws_path = tmp_path / "ws"
    out = cli(ws_path, model_dir, "train", "--model", "builtin:linear", "--epochs", "1", "--threads", "1",
              "--name", "short", "--json")
    assert out.returncode == 0, out.stderr
    run = Run(ws_path / "runs" / json.loads(out.stdout)["id"])
    steps = json.loads(out.stdout)["step"]
    ws = Workspace.open(ws_path)
    app = TorchdeckApp(ws, default_config=RunConfig(epochs=1))
    async with app.run_test(size=(110, 34)) as pilot:
        await pilot.press("3")
        screen = app.screen
        await wait_for(pilot, lambda: screen.current_run == run.id and screen.state == "finished", 30, "the run")
        await pilot.press("r")
        await wait_for_screen(pilot, app, ResumeDialog, "Only its length may change", timeout=10, what="the resume dialog")
        await pilot.press("enter")  # the same length: nothing left to train, said in the dialog
        await wait_for(pilot, lambda: "give it more epochs" in screen_text(app), 30,
                       "the refusal")
        assert isinstance(app.screen, ResumeDialog)
        app.screen.query_one("#r-epochs", Input).value = "abc"
        await pilot.press("enter")
        await wait_for(pilot, lambda: "epochs must be a whole number" in screen_text(app), 10, "the inline error")
        app.screen.query_one("#r-epochs", Input).value = "3"
        await pilot.press("enter")
        await wait_for(pilot, lambda: not isinstance(app.screen, ResumeDialog), 60, "the dialog to close")
        await wait_for(pilot, lambda: run.observed_state() == "finished" and run.status().step == 3 * steps, 120,
                       "the resumed run to finish")
        await wait_for(pilot, lambda: screen.view.step == 3 * steps and screen.state == "finished", 30,
                       "the screen to show it")
        # R on the Checkpoints screen: resume training from the selected (latest) checkpoint
        await pilot.press("2")
        ck_screen = app.screen
        latest_name = checkpoints.latest_complete(run.checkpoints_dir).path.name
        await wait_for(pilot, lambda: (ck_screen.selected_path() or "").endswith(latest_name), 30, "the checkpoint")
        await pilot.press("R")
        await wait_for_screen(pilot, app, ResumeDialog, f"from {latest_name}", timeout=10, what="the resume dialog")
        app.screen.query_one("#r-epochs", Input).value = "4"
        await pilot.press("enter")
        await wait_for(pilot, lambda: not isinstance(app.screen, ResumeDialog), 60, "the dialog to close")
        await wait_for(pilot, lambda: run.observed_state() == "finished" and run.status().step == 4 * steps, 120,
                       "the second resume to finish")
    assert RunStore(ws).get("short").config().epochs == 4


def test_log_lines_for_resumes_and_waits():
    from torchdeck.tui.widgets.virtual_log import event_lines

    lines = event_lines(ev.Resumed(10, checkpoint="step-00000010", exact=False,
                                                 changes={"lr": [1e5, 0.01], "odd": 3}, note="rate changed"))
    assert lines == ["resumed at step 10 from step-00000010: what follows replaces the history after it",
                     "  lr 100000.0 -> 0.01", "  not exact: rate changed"]
    assert event_lines(ev.Checkpointed("step-1", 1, 1, "epoch", wait_s=0.8)) == [
        "checkpoint step-1 saved (epoch); training waited 0.80 s for the previous save"]
    assert event_lines(ev.Checkpointed("step-1", 1, 1, "epoch", wait_s=0.001)) == [
        "checkpoint step-1 saved (epoch)"]


@pytest.mark.slow
def test_killed_inside_a_checkpoint_write_then_resumed_equals_uninterrupted(model_dir, tmp_path):
    ws = tmp_path / "ws"
    flags = ["--model", "dropnet:make_big", "--data", "synthetic:classification", "--dataset-size", "1200",
             "--epochs", "2", "--optimizer", "adam", "--lr", "0.001", "--seed", "2", "--threads", "1",
             "--checkpoint-every", "10"]
    whole = cli(ws, model_dir, "train", *flags, "--name", "whole", "--json")
    assert whole.returncode == 0, whole.stderr
    out = cli(ws, model_dir, "train", *flags, "--name", "cut", "--detach", "--json")
    run = Run(ws / "runs" / json.loads(out.stdout)["id"])
    deadline = time.monotonic() + 120
    killed = None
    while killed is None and time.monotonic() < deadline:
        st = run.status()
        if st.pid and st.step > 20 and any(".tmp-" in p.name for p in run.checkpoints_dir.iterdir()):
            os.kill(st.pid, signal.SIGKILL)
            killed = st.step
        assert st.state not in ("finished", "failed"), "the run ended before a save could be caught"
    assert killed, "no save was caught in flight"
    while run.observed_state() != "crashed":
        time.sleep(0.05)
    listed = checkpoints.list_checkpoints(run.checkpoints_dir)  # never the partial one
    assert all((c.path / "meta.json").exists() for c in listed)
    resumed = cli(ws, model_dir, "train", "--resume", "cut", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert not [p for p in run.checkpoints_dir.iterdir() if ".tmp-" in p.name]
    a, b = final_weights(ws, json.loads(whole.stdout)["id"]), final_weights(ws, run.id)
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- the standby worker: torch imported while the command checks the request ------------------------
def _standby_with_tag(tag: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes()
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if f"TORCHDECK_TEST_TAG={tag}".encode() in env and b"torchdeck.runs.standby" in cmd:
            pids.append(int(d.name))
    return pids


@pytest.mark.slow
def test_a_refused_train_leaves_no_standby_worker_and_no_run(model_dir, tmp_path, monkeypatch):
    import uuid

    tag = uuid.uuid4().hex
    monkeypatch.setenv("TORCHDECK_TEST_TAG", tag)
    ws = tmp_path / "ws"
    bad = cli(ws, model_dir, "train", "--model", "builtin:cnn", "--data", "synthetic:regression")
    assert bad.returncode == 2, bad.stderr
    assert not (ws / "runs").exists() or not any((ws / "runs").iterdir())
    deadline = time.monotonic() + 30
    while _standby_with_tag(tag):
        assert time.monotonic() < deadline, "the standby worker of a refused request is still running"
        time.sleep(0.1)


@pytest.mark.parametrize("argv, starts", [
    (["train", "--model", "builtin:linear"], True),
    (["--workspace", "ws", "--json", "train"], True),
    (["--workspace=ws", "--debug", "train", "--epochs", "1"], True),
    (["train", "--resume", "r1"], False),
    (["train", "--res", "r1"], False),  # argparse takes the abbreviation
    (["train", "--help"], False),
    (["train", "-h"], False),
    ([], False),
    (["runs", "list"], False),
    (["--workspace", "train", "runs", "list"], False),  # a workspace called train
    (["--workspace", "ws", "runs", "show", "train"], False),
    (["run", "--", "train"], False),
    (["--", "train"], False),
    (["train", "--nproc", "2"], False),  # torchrun starts the ranks
    (["train", "--nproc=4"], False),
    (["train", "--nproc", "1"], True),
    (["train", "--nproc"], True),  # a usage error to come: the guess does not matter
])
def test_the_command_line_starts_a_standby_worker_only_for_a_new_run(argv, starts):
    from torchdeck.runs.standby import starts_a_run

    assert starts_a_run(argv) is starts


@pytest.mark.slow
def test_train_hands_its_run_to_the_worker_it_started_first(tmp_path):
    """`torchdeck train` starts its standby worker before importing the command line (the
    worker's torch import is the run's start-up path); that process trains the run, and the
    system panel still knows which run it works for."""
    from torchdeck.procs import process_start_time
    from torchdeck.runs.store import Run
    from torchdeck.system import command_of, run_of_pid

    ws = tmp_path / "ws"
    out = cli(ws, tmp_path, "train", "--model", "builtin:linear", "--epochs", "100000", "--dataset-size", "64",
              "--detach", "--json")
    assert out.returncode == 0, out.stderr
    run = Run(ws / "runs" / json.loads(out.stdout)["id"])
    try:
        wait_for_step(run, 1)
        pid = run.status().pid
        assert "torchdeck.runs.standby" in command_of(pid, split=True)
        assert run_of_pid(pid) == run.id
        assert process_start_time(pid) == run.status().pid_start
    finally:
        run.stop()
        deadline = time.monotonic() + 60
        while run.observed_state() not in ("stopped", "finished", "failed", "crashed"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert run.observed_state() == "stopped"


def test_a_dead_standby_worker_falls_back_to_a_fresh_one(tmp_path):
    import subprocess
    import sys

    from torchdeck.runs.store import RunStore
    from torchdeck.workspace import Workspace

    store = RunStore(Workspace.open(tmp_path / "ws"))
    run = store.create(RunConfig(model="builtin:linear", epochs=1, dataset_size=64, threads=1,
                                 model_spec={"spec": "builtin:linear", "kwargs": {}}))
    dead = subprocess.Popen([sys.executable, "-c", "pass"], stdin=subprocess.PIPE)
    dead.wait()
    pid = store.launch(run, standby=dead)
    assert pid != dead.pid
    deadline = time.monotonic() + 120
    while run.observed_state() not in ("finished", "failed", "crashed"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert run.observed_state() == "finished", run.log_path.read_text()


NOISY = '''
import os, sys, torch

def make():
    print("building the model " * 40)  # a user's model that talks on stdout, from Python
    sys.stdout.flush()
    os.write(1, b"and from C: " * 40 + b"\\n")
    assert sys.stdin.read() == "" and os.read(0, 100) == b""  # stdin: nothing, never the launcher's lines
    return torch.nn.Linear(10, 20)
'''


@pytest.mark.slow
def test_the_standby_worker_checks_the_request_and_a_models_own_output_does_not_confuse_it(tmp_path):
    """The preflight runs in the standby worker (torch is imported there anyway): the command's
    answer is the same as its own check's, whatever the user's model prints while it is built."""
    import json

    (tmp_path / "noisy.py").write_text(NOISY)
    ws = tmp_path / "ws"
    ok = cli(ws, tmp_path, "train", "--model", "noisy:make", "--data", "synthetic:regression", "--epochs", "1",
             "--dataset-size", "64", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["state"] == "finished"
    bad = cli(ws, tmp_path, "train", "--model", "noisy:make", "--data", "synthetic:image", "--json")
    assert bad.returncode == 2, bad.stderr
    error = json.loads(bad.stdout)["error"]
    assert error["field"] == "data" and error["message"].startswith("--data: synthetic:image does not fit model "
                                                                     "noisy:make"), error
    assert len(list((ws / "runs").iterdir())) == 1  # the refused one left no run


def test_check_with_standby_answers_refuses_and_says_when_it_cannot_tell(tmp_path):
    import subprocess
    import sys

    from torchdeck.errors import InvalidRequest
    from torchdeck.models import specs
    from torchdeck.runs.store import RunStore
    from torchdeck.workspace import Workspace

    store = RunStore(Workspace.open(tmp_path / "ws"))
    cfg = RunConfig(model="builtin:linear", epochs=1, dataset_size=64, threads=1)
    cfg.model_spec = specs.resolve(cfg.model).to_json()
    standby = store.start_standby()
    try:
        assert store.check_with_standby(standby, cfg.to_json()) is True
        with pytest.raises(InvalidRequest) as refused:
            store.check_with_standby(standby, {**cfg.to_json(), "data": "synthetic:image"})
        assert refused.value.field == "data" and refused.value.code == "invalid_value"
        assert "does not fit model builtin:linear" in str(refused.value)
        # what it cannot judge (here a config this version does not know): the caller checks itself
        assert store.check_with_standby(standby, {**cfg.to_json(), "no_such_setting": 1}) is False
        assert store.check_with_standby(standby, cfg.to_json()) is True  # and it still answers
    finally:
        store.drop_standby(standby)
    assert standby.wait(60) == 0  # EOF: it ends having done nothing
    assert store.check_with_standby(standby, cfg.to_json()) is False  # gone
    dead = subprocess.Popen([sys.executable, "-c", "pass"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    dead.wait()
    assert store.check_with_standby(dead, cfg.to_json()) is False
