"""Runs of several processes: a real supervisor, real torchrun, two Gloo ranks on the CPU.

Kept small (a tiny model with dropout, a few dozen steps a run, one thread a rank) so that the
whole file takes about a minute on a 2-core machine.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time

import pytest
from helpers import run_cli, wait_until
from torchdeck.checkpoints import store as checkpoints
from torchdeck.options import FINAL_STATES
from torchdeck.runs import events as ev
from torchdeck.runs.ddp import MARK_ENV
from torchdeck.runs.store import Run

torch = pytest.importorskip("torch")

# Dropout (torch's generator) and a draw from Python's and NumPy's in forward: every rank's
# generators must be restored for a resume to be exact.
MODEL = textwrap.dedent('''
    import os
    import random

    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    def make():
        return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 5))

    def step(model, batch):
        x, y = batch
        x = x * (1 + 0.01 * random.random()) + 0.01 * float(np.random.rand())
        return F.cross_entropy(model(x), y)

    class Items(torch.utils.data.Dataset):  # a Dataset of the user's own: read through a DataLoader
        def __init__(self):
            g = torch.Generator().manual_seed(0)
            self.x = torch.randn(320, 20, generator=g)
            self.y = (self.x[:, :5].argmax(dim=1))

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i], self.y[i]

    def items():
        return Items()

    def aborting_step(model, batch):
        """Rank 1 aborts as it exits, once rank 0 has written the result: what a C++ thread of
        torch's still joinable at exit did to a finished rank (SIGABRT) in CI."""
        if os.environ.get("RANK") == "1" and not getattr(os, "_aborts", False):
            import signal
            import sys
            import time

            outcome = os.path.join(sys.argv[sys.argv.index("--rank") + 1], "ranks", "outcome.json")

            def exit_aborting(code):
                deadline = time.monotonic() + 60
                while not os.path.exists(outcome) and time.monotonic() < deadline:
                    time.sleep(0.01)
                os.kill(os.getpid(), signal.SIGABRT)

            import atexit

            atexit.register(exit_aborting, 0)  # however the rank exits
            os._exit, os._aborts = exit_aborting, True
        return step(model, batch)

    calls = 0

    def breaking_step(model, batch):
        global calls
        calls += 1
        if os.environ.get("RANK") == "1" and calls > 6:
            raise ValueError("rank one's batch went bad")
        x, y = batch
        return F.cross_entropy(model(x), y)
''')

FLAGS = ["--model", "ddpnet:make", "--step", "ddpnet:step", "--data", "synthetic:classification",
         "--dataset-size", "320", "--batch-size", "8", "--optimizer", "adam", "--lr", "0.01", "--seed", "5",
         "--threads", "1", "--nproc", "2", "--device", "cpu"]


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "ddpnet.py").write_text(MODEL)
    return tmp_path


def cli(ws, model_dir, *args, timeout=180):
    return run_cli("--workspace", str(ws), *args, cwd=model_dir, timeout=timeout)


def marked(run_dir) -> list[int]:
    """Processes still carrying the run's mark (the supervisor's torchrun and ranks)."""
    target = os.stat(run_dir)
    found = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        for entry in env:
            if entry.startswith(MARK_ENV.encode() + b"="):
                try:
                    st = os.stat(entry.split(b"=", 1)[1])
                except OSError:
                    break
                if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                    found.append(int(p))
                break
    return found


def losses(run) -> list[float]:
    out = []
    for e in ev.read_all(run.events_path):
        if isinstance(e, ev.Losses):
            out += [v for v in e.values if v is not None]
    return out


def final_weights(run):
    return checkpoints.load_weights(checkpoints.latest_complete(run.checkpoints_dir).path)


def wait_final(run, timeout=120.0) -> str:
    return wait_until(lambda: run.observed_state() if run.observed_state() in FINAL_STATES else None,
                      timeout=timeout, what=f"run {run.id} to end ({run.log_path})")


def started(ws, model_dir, *args) -> Run:
    out = cli(ws, model_dir, "train", *args, "--detach", "--json")
    assert out.returncode == 0, out.stderr
    return Run(ws / "runs" / json.loads(out.stdout)["id"])


def test_two_ranks_finish_loss_falls_and_the_checkpoint_loads_into_one_process(model_dir, tmp_path):
    ws = tmp_path / "ws"
    out = cli(ws, model_dir, "train", *FLAGS, "--epochs", "3", "--json")
    assert out.returncode == 0, (out.stdout, out.stderr, [p.read_text()[-3000:] for p in (ws / "runs").glob("*/*.log")])
    doc = json.loads(out.stdout)
    run = Run(ws / "runs" / doc["id"])
    assert doc["state"] == "finished", run.log_path.read_text()
    assert not marked(run.path)  # `train` returned after every process exited
    # 288 training samples, 144 a rank, batch 8: 18 steps an epoch
    assert doc["total_steps"] == 54 and run.status().step == 54
    values = losses(run)
    assert len(values) == 54  # every step's loss once (rank 0's records only)
    assert sum(values[-10:]) / 10 < sum(values[:10]) / 10
    log = run.log_path.read_text()
    assert "rank 0 of 2 (gloo), global batch 16" in log and "rank 1 of 2 (gloo)" in log
    # rank 0's checkpoint: plain names (no DDP "module." prefix), loads into a one-process model
    import sys

    sys.path.insert(0, str(model_dir))
    try:
        import ddpnet
    finally:
        sys.path.remove(str(model_dir))
    model = ddpnet.make()
    model.load_state_dict(final_weights(run))
    state = torch.load(checkpoints.latest_complete(run.checkpoints_dir).path / "training_state.pt",
                       weights_only=True)
    assert state["loop"]["world"] == 2 and len(state["rng"]["ranks"]) == 2
    # each rank's generators differ (its own dropout draws), and each is kept
    assert not torch.equal(state["rng"]["ranks"][0]["torch"], state["rng"]["ranks"][1]["torch"])


def test_a_rank_that_aborts_as_it_exits_after_training_leaves_the_run_finished_and_says_so(model_dir, tmp_path):
    """Every step done and the checkpoint written, then a rank died as it shut down: the run read
    "failed" (CI, once). The result stands; the failure is told."""
    ws = tmp_path / "ws"
    flags = ["ddpnet:aborting_step" if f == "ddpnet:step" else f for f in FLAGS]
    out = cli(ws, model_dir, "train", *flags, "--epochs", "1", "--json")
    doc = json.loads(out.stdout)
    run = Run(ws / "runs" / doc["id"])
    assert out.returncode == 0 and doc["state"] == "finished", (doc, run.log_path.read_text()[-3000:])
    assert doc["step"] == 18 and "after training ended a process failed as it shut down" in doc["message"]
    assert "rank 1" in doc["message"] and "SIGABRT" in doc["message"], doc["message"]
    assert set(final_weights(run)) == {"0.weight", "0.bias", "3.weight", "3.bias"}
    wait_until(lambda: not marked(run.path), timeout=10, what="every process to exit")


def test_the_dataloader_path_gives_each_rank_its_share_through_a_distributed_sampler(model_dir, tmp_path):
    ws = tmp_path / "ws"
    flags = [f if f != "synthetic:classification" else "ddpnet:items" for f in FLAGS]
    out = cli(ws, model_dir, "train", *flags, "--epochs", "2", "--num-workers", "0", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    run = Run(ws / "runs" / doc["id"])
    # 288 training samples: 144 a rank, batch 8: 18 steps an epoch, as with tensors in memory
    assert doc["state"] == "finished" and doc["total_steps"] == 36, run.log_path.read_text()
    assert "DataLoader: 144 samples" in run.log_path.read_text()
    assert len(losses(run)) == 36 and sum(losses(run)[-6:]) < sum(losses(run)[:6])
    ends = [e.step for e in ev.read_all(run.events_path) if isinstance(e, ev.EpochEnd)]
    assert ends == [18, 36]  # each epoch is a rank's share, not the whole set


@pytest.mark.slow
def test_killed_and_resumed_equals_an_uninterrupted_two_process_run(model_dir, tmp_path):
    ws = tmp_path / "ws"
    # 1,800 training samples, 900 a rank: 113 steps an epoch, long enough to be killed in the middle
    flags = [*[f if f != "320" else "2000" for f in FLAGS], "--epochs", "3", "--checkpoint-every", "25"]
    whole = cli(ws, model_dir, "train", *flags, "--name", "whole", "--json")
    assert whole.returncode == 0, whole.stderr
    whole_run = Run(ws / "runs" / json.loads(whole.stdout)["id"])

    run = started(ws, model_dir, *flags, "--name", "cut")
    st = wait_until(lambda: (s := run.status()).state == "running" and s.step >= 130 and s,
                    timeout=120, what="the run to pass step 130")
    os.kill(st.pid, signal.SIGKILL)  # the supervisor: torchrun and the ranks die with it
    wait_until(lambda: run.observed_state() == "crashed", timeout=30, what="the run to show as crashed")
    wait_until(lambda: not marked(run.path), timeout=10, what="every rank to be gone")
    resumed = cli(ws, model_dir, "runs", "resume", "cut", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["exact"] is True
    assert wait_final(run) == "finished", run.log_path.read_text()
    a, b = final_weights(whole_run), final_weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert run.status().step == whole_run.status().step == 339


def test_a_rank_that_raises_fails_the_run_with_its_error_and_leaves_nothing(model_dir, tmp_path):
    ws = tmp_path / "ws"
    flags = [f if f != "ddpnet:step" else "ddpnet:breaking_step" for f in FLAGS]
    out = cli(ws, model_dir, "train", *flags, "--epochs", "3", "--json")
    doc = json.loads(out.stdout)
    run = Run(ws / "runs" / doc["id"])
    assert out.returncode != 0
    st = run.status()
    assert st.state == "failed", run.log_path.read_text()
    assert st.message.startswith("rank 1: ValueError: rank one's batch went bad"), st.message
    assert not marked(run.path)
    shown = cli(ws, model_dir, "runs", "show", run.id, "--json")
    assert "rank one's batch went bad" in shown.stdout


def test_stop_reaches_every_rank_and_sigterm_too(model_dir, tmp_path):
    ws = tmp_path / "ws"
    long = [*FLAGS, "--epochs", "1000"]
    run = started(ws, model_dir, *long, "--name", "stopped")
    wait_until(lambda: run.status().step >= 5, timeout=120, what="a few steps")
    out = cli(ws, model_dir, "runs", "stop", run.id, "--json")
    assert out.returncode == 0, out.stderr
    st = run.status()
    assert st.state == "stopped", run.log_path.read_text()
    ckpt = checkpoints.latest_complete(run.checkpoints_dir)
    assert ckpt is not None and json.loads((ckpt.path / "meta.json").read_text())["step"] == st.step
    wait_until(lambda: not marked(run.path), timeout=10, what="every rank to exit")

    # SIGTERM to the supervisor (what `runs stop` escalates to, or a shell's kill): passed to every rank
    run2 = started(ws, model_dir, *long, "--name", "terminated")
    st2 = wait_until(lambda: (s := run2.status()).step >= 5 and s, timeout=120, what="a few steps")
    os.kill(st2.pid, signal.SIGTERM)
    assert wait_final(run2) == "stopped", run2.log_path.read_text()
    wait_until(lambda: not marked(run2.path), timeout=10, what="every rank to exit")
    assert checkpoints.latest_complete(run2.checkpoints_dir) is not None


def test_a_stop_before_training_starts_ends_torchrun(model_dir, tmp_path):
    ws = tmp_path / "ws"
    run = started(ws, model_dir, *FLAGS, "--epochs", "1000")
    t0 = time.monotonic()
    assert run.stop(grace=60) == "stopped", run.log_path.read_text()  # at once: torchrun is starting its ranks
    assert time.monotonic() - t0 < 60
    log = run.log_path.read_text()
    assert "stopping (a stop request before training started)" in log or "stop requested" in run.status().message
    wait_until(lambda: not marked(run.path), timeout=10, what="every process to exit")


@pytest.fixture
def busy_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize("args, field, words", [
    (["--nproc", "0"], "nproc", "nproc must be a whole number of at least 1"),
    (["--nproc", "4096"], "nproc", "past the limit"),
    (["--nproc", "64", "--device", "cpu"], "nproc", "CPU core"),
    (["--nproc", "2", "--device", "cuda"], "device", "no CUDA device"),
    (["--nproc", "2", "--device", "cuda:1"], "device", "each rank takes its own device"),
    (["--nproc", "2", "--nnodes", "2"], "rdzv_endpoint", "need a rendezvous endpoint"),
    (["--nproc", "2", "--rdzv-endpoint", "nohost"], "rdzv_endpoint", "HOST:PORT"),
    (["--nproc", "2", "--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "h:29500"], "node_rank",
     "below the number of nodes"),
    (["--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", "127.0.0.1:BUSY"], "rdzv_endpoint",
     "is in use (another process listens there)"),
])
def test_bad_process_settings_are_refused_by_field(model_dir, tmp_path, args, field, words, busy_port):
    args = [a.replace("BUSY", str(busy_port)) for a in args]
    flags = [f for f in FLAGS if f not in ("--nproc", "2", "--device", "cpu")]
    out = cli(tmp_path / "ws", model_dir, "train", *flags, *args, "--json")
    assert out.returncode != 0
    err = json.loads(out.stdout)["error"]
    assert err["field"] == field and words in err["message"], err
    assert not (tmp_path / "ws" / "runs").exists() or not any((tmp_path / "ws" / "runs").iterdir())


async def test_the_forms_processes_field_refuses_too_many_and_starts_two(tmp_path):
    from textual.widgets import Input
    from torchdeck.runs.config import RunConfig
    from torchdeck.tui.app import TorchdeckApp
    from torchdeck.workspace import Workspace
    from tui_helpers import screen_text, wait_for

    ws = Workspace.open(tmp_path / "ws")
    app = TorchdeckApp(ws, default_config=RunConfig(epochs=1, dataset_size=256, device="cpu", threads=1))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3", "m")
        screen = app.screen
        field = screen.query_one("#f-nproc", Input)
        assert field.value == "1"
        await wait_for(pilot, lambda: "no GPU here" in str(screen.query_one("#f-device-list").render()), 30,
                       "the device list under the device field")
        field.value = "999"
        await pilot.press("escape", "s")
        await wait_for(pilot, lambda: "CPU core" in str(screen.query_one("#f-nproc-error").render()), 60,
                       "the error beside the field")
        assert app.focused is field and list(ws.runs_dir.iterdir()) == []
        field.value = "2"
        await pilot.press("escape", "s")
        await wait_for(pilot, lambda: screen.current_run is not None, 60, "the run to start")
        config = json.loads((ws.runs_dir / screen.current_run / "config.json").read_text())
        assert config["nproc"] == 2
        await wait_for(pilot, lambda: screen.state in FINAL_STATES, 120, "the run to end")
        assert screen.state == "finished", screen_text(app)
        run = Run(ws.runs_dir / screen.current_run)
        assert "rank 1 of 2 (gloo)" in run.log_path.read_text()


def test_a_rank_killed_outright_fails_the_run_naming_it(model_dir, tmp_path):
    ws = tmp_path / "ws"
    run = started(ws, model_dir, *FLAGS, "--epochs", "1000")
    wait_until(lambda: run.status().step >= 5, timeout=120, what="a few steps")

    def rank_one():
        for pid in marked(run.path):
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if b"RANK=1" in f.read().split(b"\0") and b"--rank" in open(f"/proc/{pid}/cmdline", "rb").read():
                        return pid
            except OSError:
                continue
        return None

    os.kill(wait_until(rank_one, timeout=10, what="rank 1's process"), signal.SIGKILL)
    assert wait_final(run, timeout=60) == "failed", run.log_path.read_text()
    assert run.status().message.startswith("rank 1 was killed by SIGKILL; the other ranks lost their peer")
    wait_until(lambda: not marked(run.path), timeout=10, what="every process to exit")


def test_ctrl_c_on_a_foreground_train_stops_every_rank(model_dir, tmp_path):
    import subprocess

    from helpers import cli_cmd, cli_env

    ws = tmp_path / "ws"
    proc = subprocess.Popen(cli_cmd("--workspace", str(ws), "train", *FLAGS, "--epochs", "1000", "--json"),
                            cwd=model_dir, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    runs = ws / "runs"
    run_dir = wait_until(lambda: runs.exists() and next(iter(runs.iterdir()), None), timeout=60, what="the run")
    run = Run(run_dir)
    wait_until(lambda: run.status().step >= 5, timeout=120, what="a few steps")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert json.loads(out)["state"] == "stopped"
    assert not marked(run.path)  # `train` returned after every process exited
    assert checkpoints.latest_complete(run.checkpoints_dir) is not None


def test_torchruns_command_line_one_node_and_several(tmp_path):
    from torchdeck.runs.config import RunConfig
    from torchdeck.runs.ddp import torchrun_argv

    one = torchrun_argv(RunConfig(nproc=4), tmp_path)
    assert one[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4", "--max-restarts", "0",
                       "-m", "torchdeck.runs.ddp", "--rank", str(tmp_path)]
    two = torchrun_argv(RunConfig(nproc=8, nnodes=2, node_rank=1, rdzv_endpoint="node0:29500").validate(), tmp_path)
    assert two[3:13] == ["--nnodes", "2", "--node-rank", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                         "node0:29500", "--rdzv-id", "torchdeck"] and "--standalone" not in two
