"""The loop's system metrics (issue 10 item 1): samples/s, host RSS and, on CUDA, the allocator's
memory, written once per chunk as scalars records at the chunk's last step, on the in-memory
and the DataLoader paths. A fake clock that moves only with the steps makes samples/s exact."""

from __future__ import annotations

import math

import pytest
from helpers import StubHooks
from test_pipeline import USER
from torchdeck.models import specs
from torchdeck.runs import events as ev
from torchdeck.runs.config import RunConfig
from torchdeck.runs.view import RunView
from torchdeck.training import loop
from torchdeck.training.loop import Trainer

torch = pytest.importorskip("torch")

STEP_SECONDS = 0.001


class StepClock:
    """A clock that moves STEP_SECONDS per step (the loop asks stop_requested once a step)."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class ClockHooks(StubHooks):
    def __init__(self, clock: StepClock):
        super().__init__()
        self.clock = clock

    def stop_requested(self):
        self.clock.t += STEP_SECONDS
        return False


def scalars(events, name):
    return [(s, v) for e in events if isinstance(e, ev.Scalars) and e.name == name
            for s, v in zip(e.step_list(), e.values)]


def chunk_ends(events) -> dict[int, int]:
    """The last step of each losses chunk -> its number of steps."""
    return {e.last_step: len(e.values) for e in events if isinstance(e, ev.Losses)}


def test_in_memory_run_writes_throughput_and_memory_per_chunk():
    cfg = RunConfig(model="builtin:linear", epochs=2, dataset_size=2048, batch_size=16, device="cpu",
                    flush_interval=0.05, threads=1)
    hooks = StubHooks()
    trainer = Trainer(cfg, hooks, run_id="t", checkpoints_dir=None)
    out = trainer.run()
    assert out.state == "finished"
    ends = chunk_ends(hooks.events)
    for name in ("samples_per_s", "rss_mb"):
        points = scalars(hooks.events, name)
        assert points, f"no {name} records"
        assert all(1 <= s <= trainer.total_steps for s, _ in points)
        assert {s for s, _ in points} <= set(ends), f"{name} not at a chunk's last step"
    assert all(v is not None and v > 10 for _, v in scalars(hooks.events, "rss_mb"))
    assert all(v is not None and v > 0 for _, v in scalars(hooks.events, "samples_per_s"))
    assert not scalars(hooks.events, "cuda_allocated_mb")  # a CPU run has no CUDA figures
    # a reader sees them as metrics like any other
    view = RunView("t")
    view.feed(hooks.events)
    assert view.metrics["samples_per_s"].count == len(scalars(hooks.events, "samples_per_s"))
    assert view.metrics["rss_mb"].min > 10


def test_samples_per_s_is_exact_and_leaves_validation_time_out(monkeypatch):
    """1843 training samples at batch 16 (the epoch's last batch holds 3): every chunk's samples/s
    times its seconds gives back every sample once; validation's 100 s are not a chunk's time."""
    clock = StepClock()
    cfg = RunConfig(model="builtin:linear", epochs=3, dataset_size=2048, batch_size=16, device="cpu",
                    flush_interval=10 * STEP_SECONDS - 1e-9, threads=1)
    hooks = ClockHooks(clock)
    trainer = Trainer(cfg, hooks, run_id="t", checkpoints_dir=None, clock=clock)
    validate = trainer.validate

    def slow_validate():
        clock.t += 100.0
        return validate()

    monkeypatch.setattr(trainer, "validate", slow_validate)
    n_train = len(trainer.data.x_train)
    assert n_train % 16 and trainer.steps_per_epoch == math.ceil(n_train / 16)
    assert trainer.run().state == "finished"
    ends = chunk_ends(hooks.events)
    rates = scalars(hooks.events, "samples_per_s")
    assert len(rates) == len(ends)
    counted = sum(v * ends[s] * STEP_SECONDS for s, v in rates)
    assert counted == pytest.approx(3 * n_train, rel=1e-6)
    assert min(v for _, v in rates) > 3 / STEP_SECONDS * 0.9 / 10  # no chunk paid for validation
    assert max(v for _, v in rates) == pytest.approx(16 / STEP_SECONDS)


def test_accumulated_steps_count_every_micro_batch():
    clock = StepClock()
    cfg = RunConfig(model="builtin:linear", epochs=1, dataset_size=1000, batch_size=8, accumulate=4,
                    device="cpu", flush_interval=5 * STEP_SECONDS - 1e-9, threads=1)
    hooks = ClockHooks(clock)
    trainer = Trainer(cfg, hooks, run_id="t", checkpoints_dir=None, clock=clock)
    assert trainer.run().state == "finished"
    ends = chunk_ends(hooks.events)
    counted = sum(v * ends[s] * STEP_SECONDS for s, v in scalars(hooks.events, "samples_per_s"))
    assert counted == pytest.approx(len(trainer.data.x_train), rel=1e-6)


def test_on_cuda_the_allocator_counters_are_written_in_mib(monkeypatch):
    """The CUDA branch without a GPU: the run's device reads "cuda" and the allocator's counters
    are stand-ins (on a real GPU they are torch's, read without a sync)."""
    calls = []

    def counter(value):
        def read(device=None):
            calls.append(device)
            return value
        return read

    monkeypatch.setattr(torch.cuda, "memory_allocated", counter(3 << 20))
    monkeypatch.setattr(torch.cuda, "memory_reserved", counter(8 << 20))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", counter(5 << 19))
    cfg = RunConfig(model="builtin:linear", epochs=1, dataset_size=256, batch_size=16, device="cpu", threads=1)
    hooks = StubHooks()
    trainer = Trainer(cfg, hooks, run_id="t", checkpoints_dir=None)
    trainer.device = torch.device("cuda", 0)  # the tensors stay on the CPU; only the figures ask
    assert trainer.run().state == "finished"
    ends = chunk_ends(hooks.events)
    for name, mib in (("cuda_allocated_mb", 3.0), ("cuda_reserved_mb", 8.0), ("cuda_peak_mb", 2.5)):
        points = scalars(hooks.events, name)
        assert points and all(v == mib for _, v in points) and {s for s, _ in points} <= set(ends)
        assert ev.METRICS[name].unit == "MiB"
    assert calls and all(d == torch.device("cuda", 0) for d in calls)  # the run's device, not the current one


def test_no_proc_filesystem_means_no_rss_record_not_a_failed_run(monkeypatch):
    monkeypatch.setattr(loop, "rss_mb", lambda: None)
    cfg = RunConfig(model="builtin:linear", epochs=1, dataset_size=256, batch_size=16, device="cpu", threads=1)
    hooks = StubHooks()
    assert Trainer(cfg, hooks, run_id="t", checkpoints_dir=None).run().state == "finished"
    assert not scalars(hooks.events, "rss_mb") and scalars(hooks.events, "samples_per_s")


def test_rss_reads_this_process():
    rss = loop.rss_mb()
    assert rss is not None and 10 < rss < 1 << 20


@pytest.fixture
def user_dir(tmp_path):
    (tmp_path / "pipeuser.py").write_text(USER)
    return tmp_path


@pytest.mark.parametrize("data,n", [("pipeuser:noisy", 216), ("pipeuser:dicts", 87)], ids=["tuples", "dicts"])
def test_dataloader_path_counts_its_samples_exactly(user_dir, data, n):
    """A map-style Dataset through the DataLoader: its length is known, so the count is exact
    (216 = 240 less validation; the epoch's last batch holds 216 - 13 * 16 = 8)."""
    clock = StepClock()
    model = "pipeuser:hf_like" if data == "pipeuser:dicts" else "pipeuser:net"
    cfg = RunConfig(model=model, data=data, batch_size=16, epochs=2, lr=0.05, optimizer="adam", seed=11,
                    threads=1, import_root=str(user_dir), model_import_root=str(user_dir),
                    flush_interval=3 * STEP_SECONDS - 1e-9, device="cpu", num_workers=0)
    cfg.model_spec = specs.resolve(cfg.model).to_json()
    hooks = ClockHooks(clock)
    trainer = Trainer(cfg, hooks, run_id="t", checkpoints_dir=None, clock=clock)
    assert trainer.pipeline.kind == "dataloader"
    assert trainer.run().state == "finished"
    ends = chunk_ends(hooks.events)
    rates = scalars(hooks.events, "samples_per_s")
    assert rates and {s for s, _ in rates} <= set(ends)
    counted = sum(v * ends[s] * STEP_SECONDS for s, v in rates)
    assert counted == pytest.approx(2 * trainer.data.train_size, rel=1e-6)
    assert trainer.data.train_size == n
    assert all(v > 10 for _, v in scalars(hooks.events, "rss_mb"))
    tokens = scalars(hooks.events, "tokens_per_s")
    if data == "pipeuser:dicts":  # 8 input_ids a sample: tokens/s is 8 x samples/s, chunk by chunk
        assert {s for s, _ in tokens} == {s for s, _ in rates}
        assert sum(v * ends[s] * STEP_SECONDS for s, v in tokens) == pytest.approx(8 * 2 * n, rel=1e-6)
    else:
        assert tokens == []  # no input_ids: no tokens/s, never a zero


def test_metric_names_are_defined_once_with_labels():
    for name in ev.SYSTEM_METRICS + ("loss", "lr", "grad_norm", "val_loss", "val_accuracy"):
        assert ev.METRICS[name].label
    assert ev.METRICS["rss_mb"].unit == "MiB"


# -- the run table's figures in summary.json -------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _started(total=150, spe=100, epochs=20, max_steps=150):
    return ev.Started(run_id="r", config={"model": "demo", "epochs": epochs, "max_steps": max_steps},
                      total_steps=total, steps_per_epoch=spe, num_params=1, device="cpu", time=1_700_000_000.0)


def test_summary_keeps_started_duration_and_rate_across_pause_and_resume(tmp_path):
    from torchdeck.runs.store import RunStore
    from torchdeck.runs.writer import RunWriter
    from torchdeck.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    run = RunStore(ws).create(RunConfig(model="demo", epochs=20, max_steps=150))
    assert run.summary().epochs == 0  # a max_steps run's epochs are unknown until its data is read
    clock = FakeClock()
    w = RunWriter(run, clock=clock)
    clock.t = 10.0
    w.emit(_started())
    w.progress(state="running")
    w.losses(1, 1, [1.0] * 100)
    clock.t = 20.0
    w.progress(state="paused")
    clock.t = 50.0  # 30 s paused: not training time
    w.progress(state="running")
    clock.t = 60.0
    w.ended("stopped", 100, 1.0)
    s = run.summary()
    assert (s.started, s.duration, s.steps_per_second, s.epochs) == (1_700_000_000.0, 20.0, 5.0, 2)
    # a resume from step 80: 100 steps more in 10 s; recomputed steps are steps trained
    clock2 = FakeClock()
    w2 = RunWriter(run, clock=clock2, resume_step=80)
    clock2.t = 5.0
    w2.emit(ev.Started(**{**vars(_started()), "time": 1_800_000_000.0}))
    w2.losses(81, 1, [0.5] * 70)
    w2.losses(151, 2, [0.5] * 30)
    clock2.t = 15.0
    w2.ended("finished", 180, 0.5)
    s = run.summary()
    assert s.started == 1_700_000_000.0  # the first start
    assert s.duration == 30.0 and s.steps_per_second == pytest.approx(200 / 30)


def test_old_and_hostile_summaries_still_load(tmp_path):
    import json

    from torchdeck.runs.store import Summary

    old = {"id": "a", "name": "a", "model": "m", "state": "finished", "created": 1.0, "epochs": 3}
    s = Summary.from_json(old)
    assert s is not None and (s.started, s.duration, s.steps_per_second) == (None, None, None)
    hostile = json.loads('{"id": "a", "name": "a", "model": "m", "state": "finished", "created": 1.0, '
                         '"started": "yesterday", "duration": NaN, "steps_per_second": -3}')
    s = Summary.from_json(hostile)
    assert s is not None and (s.started, s.duration, s.steps_per_second) == (None, None, None)


def test_runs_list_shows_the_epochs_max_steps_spans_and_the_rate(tmp_path, capsys):
    import json

    from torchdeck.runs.store import RunStore
    from torchdeck.runs.writer import RunWriter
    from torchdeck.tui.cli import main
    from torchdeck.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    run = RunStore(ws).create(RunConfig(model="demo", epochs=20, max_steps=150, name="bounded"))
    clock = FakeClock()
    w = RunWriter(run, clock=clock)
    w.emit(_started())
    w.progress(state="running", step=150, epoch=2)
    w.losses(1, 1, [1.0] * 150)
    clock.t = 3.0
    w.ended("finished", 150, 1.0)
    assert main(["runs", "list", "--workspace", str(ws.root)]) == 0
    out = capsys.readouterr().out
    header, row = out.splitlines()[0].split(), out.splitlines()[1].split()
    cells = dict(zip(header, row))
    assert (cells["EPOCH"], cells["STEPS/S"], cells["TIME"]) == ("2/2", "50", "3s")
    assert main(["runs", "list", "--json", "--workspace", str(ws.root)]) == 0
    doc = json.loads(capsys.readouterr().out)["runs"][0]
    assert doc["epochs"] == 2 and doc["duration"] == 3.0 and doc["steps_per_second"] == 50.0


def test_a_real_worker_run_records_its_figures(tmp_path):
    from torchdeck.runs import worker
    from torchdeck.runs.store import RunStore
    from torchdeck.runs.view import load
    from torchdeck.runs.writer import take_lock
    from torchdeck.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    run = RunStore(ws).create(RunConfig(model="builtin:linear", max_steps=60, dataset_size=512, batch_size=16,
                                        device="cpu", threads=1, flush_interval=0.01, checkpoint_every_epoch=False,
                                        checkpoint_on_stop=False))
    lock = take_lock(run)
    assert worker.execute(run, heartbeat=False) == "finished", run.log_path.read_text()
    del lock
    s = run.summary()
    assert s.started and s.duration > 0 and s.steps_per_second > 0 and s.step == 60
    assert s.epochs == 3  # 60 steps of 29 a epoch (460 samples, batch 16)
    view = load(run)
    for name in ("samples_per_s", "rss_mb"):
        m = view.metrics[name]
        assert m.count and m.min > 0 and 1 <= m.steps[0] and m.steps[-1] <= 60
    assert view.metrics["rss_mb"].min > 10
