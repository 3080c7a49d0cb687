"""Training on real pipelines (issue 9): a DataLoader over the user's Dataset, dict batches and
Hugging Face-like outputs, the user's own step, accumulation, precision, validation cadence,
early stop, and the bad inputs of each. Resume stays bit-identical on every path."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from helpers import StubHooks, run_cli
from test_resume import StopAt, assert_same_weights, latest, scramble_rngs
from torchdeck.errors import InvalidRequest
from torchdeck.models import specs
from torchdeck.runs import events as ev
from torchdeck.runs.config import RunConfig
from torchdeck.training.loop import Resume, Trainer, preflight

torch = pytest.importorskip("torch")

USER = textwrap.dedent('''
    import random
    import numpy as np
    import torch
    from torch import nn
    from torch.utils.data import Dataset, IterableDataset

    class Noisy(Dataset):
        """Map-style, made in __getitem__ with augmentation noise from every global generator."""
        def __init__(self, n=240, dim=20):
            self.n, self.dim = n, dim
        def __len__(self):
            return self.n
        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            x = torch.randn(self.dim, generator=g)
            x = x + 0.05 * torch.randn(self.dim) + 0.01 * random.random() + 0.01 * float(np.random.rand())
            return x, int(i % 5)

    def noisy():
        return Noisy()

    class Dicts(Dataset):
        def __len__(self):
            return 96
        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return {"input_ids": torch.randint(0, 50, (8,), generator=g), "labels": torch.tensor(i % 3)}

    def dicts():
        return Dicts()

    class Output:
        def __init__(self, loss, logits):
            self.loss, self.logits = loss, logits

    class HFLike(nn.Module):
        """Takes input_ids and labels as keywords; returns an object with .loss and .logits."""
        def __init__(self):
            super().__init__()
            self.emb = nn.EmbeddingBag(50, 16)
            self.head = nn.Linear(16, 3)
        def forward(self, input_ids, labels=None):
            logits = self.head(self.emb(input_ids))
            loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
            return Output(loss, logits)

    def hf_like():
        return HFLike()

    def my_step(model, batch):
        x, y = batch
        out = model(x)
        loss = nn.functional.cross_entropy(out, y)
        return {"loss": loss, "acc": (out.argmax(1) == y).float().mean(), "const": 2.5}

    def net():
        return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 5))

    class Loud(nn.Module):
        """Logits x50: a cross-entropy of tens, which a loss scale of 2**127 overflows."""
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(20, 5)
        def forward(self, x):
            return 50 * self.lin(x)

    def loud():
        return Loud()

    def wide():
        return nn.Sequential(nn.Linear(30, 5))

    CALLS = {"n": 0}

    class Flaky(nn.Module):
        """Its forward raises at its 30th call in training."""
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(20, 5)
        def forward(self, x):
            if self.training:
                CALLS["n"] += 1
                if CALLS["n"] == 30:
                    raise RuntimeError("boom at call 30")
            return self.lin(x)

    def flaky():
        CALLS["n"] = 0
        return Flaky()

    class Stream(IterableDataset):
        """Iterable, 160 items an epoch, with a state_dict when asked for one."""
        def __init__(self):
            self.pos = 0
        def __iter__(self):
            while self.pos < 160:
                i = self.pos
                self.pos += 1
                g = torch.Generator().manual_seed(i)
                yield torch.randn(20, generator=g), i % 5
            self.pos = 0
        def state_dict(self):
            return {"pos": self.pos}
        def load_state_dict(self, d):
            self.pos = d["pos"]

    def stream():
        return Stream(), Noisy(40)

    def bad_collate(items):
        bad_collate.calls = getattr(bad_collate, "calls", 0) + 1
        if bad_collate.calls == 8:
            raise ValueError("collate broke at its 8th batch")
        return torch.utils.data.default_collate(items)

    class Dies(Noisy):
        def __getitem__(self, i):
            from torch.utils.data import get_worker_info
            if get_worker_info() is not None and i % 7 == 3:
                import os
                os._exit(3)
            return super().__getitem__(i)

    def dies():
        return Dies(400)
''')


@pytest.fixture
def user_dir(tmp_path):
    (tmp_path / "pipeuser.py").write_text(USER)
    return tmp_path


def config(user_dir, **kw) -> RunConfig:
    base = dict(model="pipeuser:net", data="pipeuser:noisy", batch_size=16, epochs=2, lr=0.05, optimizer="adam",
                seed=11, threads=1, import_root=str(user_dir), model_import_root=str(user_dir),
                keep_checkpoints=100, flush_interval=0.01, device="cpu", num_workers=0)
    base.update(kw)
    cfg = RunConfig(**base)
    cfg.model_spec = specs.resolve(cfg.model).to_json()
    return cfg


def train(cfg, ckpts, *, stop_at=None, resume=None):
    hooks = StopAt(stop_at) if stop_at is not None else StubHooks()
    trainer = Trainer(cfg, hooks, run_id="t", checkpoints_dir=ckpts, resume=resume)
    hooks.trainer = trainer
    return trainer, trainer.run(), hooks


def losses_of(hooks):
    out = []
    for e in hooks.events:
        if isinstance(e, ev.Losses):
            out.extend(e.values)
    return out


def scalars_of(hooks, name):
    return [v for e in hooks.events if isinstance(e, ev.Scalars) and e.name == name for v in e.values]


# -- the DataLoader path and exact resume ------------------------------------------------------------
@pytest.mark.parametrize("workers,stop_at", [(2, 9), (0, 20)], ids=["2-workers-mid-epoch", "no-workers-2nd-epoch"])
def test_dataloader_resume_is_exact(user_dir, tmp_path, workers, stop_at):
    cfg = config(user_dir, num_workers=workers)
    whole, out, hooks = train(cfg, tmp_path / "a")
    assert out.state == "finished"
    started = next(e for e in hooks.events if isinstance(e, ev.Started))
    assert started.pipeline == "dataloader" and f"{workers} worker(s)" in started.pipeline_note
    assert whole.steps_per_epoch == 14  # 216 training samples, batch 16
    part, out, _ = train(config(user_dir, num_workers=workers), tmp_path / "b", stop_at=stop_at)
    assert out.state == "stopped" and out.step == stop_at
    scramble_rngs()
    resumed, out, hooks2 = train(config(user_dir, num_workers=workers), tmp_path / "b",
                                 resume=Resume(latest(tmp_path / "b")))
    assert out.state == "finished" and out.step == whole.step
    assert "skipped in the sampler (exact)" in resumed.resume_note
    assert_same_weights(whole, resumed)
    assert losses_of(hooks2) == losses_of(hooks)[stop_at:]


def test_in_memory_is_chosen_for_small_tensor_sets(user_dir, tmp_path):
    (user_dir / "small.py").write_text("import torch\nfrom torch.utils.data import TensorDataset\n"
                                       "def make():\n    return TensorDataset(torch.randn(64, 20), torch.arange(64) % 5)\n")
    _, out, hooks = train(config(user_dir, data="small:make", epochs=1), tmp_path / "a")
    started = next(e for e in hooks.events if isinstance(e, ev.Started))
    assert out.state == "finished" and started.pipeline == "in-memory"
    # an old file's record (no pipeline field) still parses
    rec = started.to_json()
    del rec["pipeline"], rec["pipeline_note"]
    assert ev.parse(rec).pipeline == "in-memory"


def test_iterable_dataset_resumes_through_its_state_dict(user_dir, tmp_path):
    cfg = dict(data="pipeuser:stream", max_steps=20)  # no __len__: max steps decide
    whole, out, hooks = train(config(user_dir, **cfg), tmp_path / "a")
    assert out.state == "finished" and whole.step == 20
    assert scalars_of(hooks, "val_loss")  # the (train, val) pair's val set
    train(config(user_dir, **cfg), tmp_path / "b", stop_at=6)
    scramble_rngs()
    resumed, out, _ = train(config(user_dir, **cfg), tmp_path / "b", resume=Resume(latest(tmp_path / "b")))
    assert "state_dict" in resumed.resume_note
    assert_same_weights(whole, resumed)
    fresh = Trainer(config(user_dir, **cfg), StubHooks())
    assert fresh.pipeline.dataset.pos == 0  # the peeks at its first items (kind, first batch) put it back


BIG = textwrap.dedent('''
    import resource, sys, torch
    from torch.utils.data import Dataset
    from torch import nn

    class Big(Dataset):
        """100,000 images 3x64x64 made in __getitem__: 4.9 GB if stacked."""
        def __len__(self):
            return 100_000
        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return torch.rand(3, 64, 64, generator=g), i % 10

    def big():
        return Big()

    def model():
        return nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 10))

    if __name__ == "__main__":
        sys.path.insert(0, sys.argv[1])
        from helpers import StubHooks
        from torchdeck.models import specs
        from torchdeck.runs.config import RunConfig
        from torchdeck.training.loop import Trainer
        cfg = RunConfig(model="bigdata:model", data="bigdata:big", batch_size=32, max_steps=300, lr=0.01,
                        import_root=sys.argv[2], model_import_root=sys.argv[2], device="cpu", num_workers=1,
                        threads=1, checkpoint_every_epoch=False, val_fraction=0.0)
        cfg.model_spec = specs.resolve(cfg.model).to_json()
        hooks = StubHooks()
        t = Trainer(cfg, hooks)
        out = t.run()
        hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(out.state, out.step, t.pipeline.kind, hwm, children)
''')


def test_a_dataset_larger_than_memory_trains_in_bounded_memory(tmp_path):
    """The training process's peak RSS (VmHWM) and its DataLoader worker's stay under 1 GiB."""
    from helpers import REPO

    (tmp_path / "bigdata.py").write_text(BIG)
    out = subprocess.run([sys.executable, str(tmp_path / "bigdata.py"), str(REPO / "tests"), str(tmp_path)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    state, step, kind, hwm_kb, child_kb = out.stdout.split()
    assert (state, step, kind) == ("finished", "300", "dataloader")
    assert int(hwm_kb) < 1 << 20, f"peak RSS {int(hwm_kb) >> 10} MiB"
    assert int(child_kb) < 1 << 20, f"worker's peak RSS {int(child_kb) >> 10} MiB"


# -- steps ---------------------------------------------------------------------------------------------
def test_dict_batches_and_a_model_returning_an_output_object(user_dir, tmp_path):
    _, out, hooks = train(config(user_dir, model="pipeuser:hf_like", data="pipeuser:dicts", epochs=2), tmp_path / "a")
    assert out.state == "finished"
    values = losses_of(hooks)
    assert len(values) == out.step and all(v is not None for v in values)
    assert scalars_of(hooks, "val_loss")


def test_user_step_scalars_are_metrics_in_runs_show(user_dir, tmp_path):
    from torchdeck.runs import worker
    from torchdeck.runs.store import RunStore
    from torchdeck.runs.writer import take_lock
    from torchdeck.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    store = RunStore(ws)
    cfg = config(user_dir, data="synthetic:classification", dataset_size=256, model="pipeuser:net",
                 step="pipeuser:my_step", accumulate=2)
    run = store.create(cfg)
    lock = take_lock(run)
    assert worker.execute(run, heartbeat=False) == "finished", run.log_path.read_text()
    del lock
    out = run_cli("--workspace", str(ws.root), "runs", "show", run.id, "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    metrics = json.loads(out.stdout)["metrics"]
    assert {"acc", "const", "val_loss"} <= set(metrics), metrics.keys()


def test_accumulation_logs_the_mean_and_resumes_exactly(user_dir, tmp_path):
    cfg = dict(data="synthetic:classification", dataset_size=200, accumulate=3, batch_size=8)
    whole, out, hooks = train(config(user_dir, **cfg), tmp_path / "a")
    assert whole.steps_per_epoch == 8  # 180 samples: 23 batches, 8 steps of 3 (the last of 2)
    assert out.step == 16 and len(losses_of(hooks)) == 16
    train(config(user_dir, **cfg), tmp_path / "b", stop_at=5)
    scramble_rngs()
    resumed, out, _ = train(config(user_dir, **cfg), tmp_path / "b", resume=Resume(latest(tmp_path / "b")))
    assert_same_weights(whole, resumed)
    # one step's loss is the mean of its micro-batches' losses
    from torchdeck.training import steps

    t = Trainer(config(user_dir, **cfg, max_steps=1), StubHooks())
    x, y = t.data.x_train, t.data.y_train
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(11))
    t.model.train()
    torch.manual_seed(5)
    fn = steps.default_step(t.loss_fn)
    expect = sum(fn(t.model, (x[perm[i * 8:(i + 1) * 8]], y[perm[i * 8:(i + 1) * 8]])).item() for i in range(3)) / 3
    torch.manual_seed(5)
    hooks = StubHooks()
    t.hooks = hooks
    t.run()
    assert losses_of(hooks)[0] == pytest.approx(expect, rel=1e-5)


def test_bf16_on_cpu_and_fp16_refused(user_dir, tmp_path):
    _, out, hooks = train(config(user_dir, data="synthetic:classification", dataset_size=128, precision="bf16",
                                 epochs=1), tmp_path / "a")
    assert out.state == "finished" and all(v is not None for v in losses_of(hooks))
    with pytest.raises(InvalidRequest, match="fp16 needs a CUDA device") as e:
        preflight(config(user_dir, precision="fp16"))
    assert e.value.field == "precision"
    with pytest.raises(InvalidRequest, match="not available") as e:
        preflight(config(user_dir, device="cuda:3"))
    assert e.value.field == "device"


def test_val_every_and_early_stop(user_dir, tmp_path):
    cfg = config(user_dir, data="synthetic:classification", dataset_size=400, epochs=50, lr=5.0, optimizer="sgd",
                 val_every=5, early_stop_patience=2)
    t, out, hooks = train(cfg, tmp_path / "a")
    assert out.state == "finished" and out.message.startswith("early stop: no better val_loss in 2")
    steps = [s for e in hooks.events if isinstance(e, ev.Scalars) and e.name == "val_loss" for s in e.step_list()]
    assert steps and all(s % 5 == 0 for s in steps) and out.step == steps[-1]
    assert out.step < t.total_steps


# -- bad input -------------------------------------------------------------------------------------------
def test_a_forward_raising_mid_run_writes_the_losses_done_first(user_dir, tmp_path):
    hooks = StubHooks()
    t = Trainer(config(user_dir, model="pipeuser:flaky", epochs=3, flush_interval=60.0), hooks, checkpoints_dir=tmp_path)
    with pytest.raises(RuntimeError, match="boom at call 30"):
        t.run()
    assert len(losses_of(hooks)) == 29 == t.step


def test_a_failure_in_collate_mid_run_fails_the_run_with_its_traceback(user_dir, tmp_path, capfd):
    from torchdeck.runs import worker
    from torchdeck.runs.store import RunStore
    from torchdeck.runs.writer import take_lock
    from torchdeck.workspace import Workspace

    store = RunStore(Workspace.open(tmp_path / "ws"))
    run = store.create(config(user_dir, collate="pipeuser:bad_collate", flush_interval=60.0))
    lock = take_lock(run)
    assert worker.execute(run, heartbeat=False) == "failed"
    del lock
    st = run.status()
    assert "collate broke at its 8th batch" in st.message
    assert st.step == 6  # the preflight's batch was the first call; 6 steps were done
    log = capfd.readouterr().err  # a launched worker's stderr is its worker.log
    assert "Traceback" in log and "bad_collate" in log


def test_a_dataloader_worker_that_dies_is_named(user_dir, tmp_path):
    with pytest.raises(Exception, match="DataLoader worker process died"):
        train(config(user_dir, data="pipeuser:dies", num_workers=1), tmp_path / "a")


def test_shapes_that_do_not_fit_are_found_on_the_first_batch(user_dir):
    with pytest.raises(InvalidRequest, match=r"first batch \(x \(4, 20\) float32, y \(4,\) int64\) does not fit"):
        preflight(config(user_dir, model="pipeuser:wide"))


def test_a_batch_larger_than_the_dataset_is_a_warning(user_dir, tmp_path, capfd):
    _, out, _ = train(config(user_dir, batch_size=1000, epochs=1), tmp_path / "a")
    assert out.state == "finished" and out.step == 1
    assert "warning: batch size 1000 is larger than the 216 training samples" in capfd.readouterr().err


def test_grad_scaler_skipped_steps_are_counted_not_divergence_and_resume(user_dir, tmp_path):
    """fp16's GradScaler logic, on the CPU (torch's CPU scaler stands in for CUDA's): a scale so
    large that the first steps' gradients overflow makes the scaler skip them."""
    def scaled(cfg, ckpts, **kw):
        hooks = StopAt(kw.pop("stop_at")) if "stop_at" in kw else StubHooks()
        t = Trainer(cfg, hooks, checkpoints_dir=ckpts, **kw)
        hooks.trainer = t
        if t.scaler is None:
            t.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127)
            if kw.get("resume"):
                t.scaler.load_state_dict(read_state(kw["resume"].checkpoint)["scaler"])
        return t, t.run(), hooks

    from torchdeck.training.loop import read_training_state as read_state

    cfg = dict(data="synthetic:classification", dataset_size=200, model="pipeuser:loud", optimizer="sgd", lr=0.001)
    whole, out, hooks = scaled(config(user_dir, **cfg), tmp_path / "a")
    assert out.state == "finished", out.message
    skipped = scalars_of(hooks, "skipped_steps")
    assert skipped and skipped[-1] >= 1
    state = read_state(latest(tmp_path / "a"))
    assert state["scaler"]["scale"] < 2.0 ** 127 and state["loop"]["skipped_steps"] == skipped[-1]
    scaled(config(user_dir, **cfg), tmp_path / "b", stop_at=5)
    resumed, out, _ = scaled(config(user_dir, **cfg), tmp_path / "b", resume=Resume(latest(tmp_path / "b")))
    assert_same_weights(whole, resumed)


def test_a_preflight_refusal_leaves_no_run_directory(user_dir, tmp_path, monkeypatch):
    from torchdeck.runs import launch
    from torchdeck.workspace import Workspace

    ws = Workspace.open(tmp_path / "ws")
    monkeypatch.chdir(user_dir)
    for bad, words in ((dict(precision="fp16"), "fp16 needs a CUDA device"), (dict(model="pipeuser:wide"), "does not fit")):
        cfg = RunConfig(model=bad.get("model", "pipeuser:net"), data="pipeuser:noisy", device="cpu",
                        precision=bad.get("precision", "fp32"))
        with pytest.raises(InvalidRequest, match=words):
            launch.start(ws, cfg, directory=str(user_dir))
    assert not any(ws.runs_dir.iterdir()) if ws.runs_dir.exists() else True


def test_no_validation_set_and_deterministic(user_dir, tmp_path):
    _, out, hooks = train(config(user_dir, data="synthetic:classification", dataset_size=128, val_fraction=0.0,
                                 deterministic=True, epochs=1), tmp_path / "a")
    assert out.state == "finished" and not scalars_of(hooks, "val_loss")
    assert torch.are_deterministic_algorithms_enabled()
    _, out, hooks = train(config(user_dir, val_fraction=0.0, epochs=1), tmp_path / "b")  # the DataLoader path
    started = next(e for e in hooks.events if isinstance(e, ev.Started))
    assert out.state == "finished" and "no validation" in started.pipeline_note and not scalars_of(hooks, "val_loss")
    assert not torch.are_deterministic_algorithms_enabled()
