"""The background checkpoint writer (torchdeck.checkpoints.writer): its safetensors output, hashes
taken while writing, the loop's pause, errors reaching the loop, a full disk, retention, dead
temporaries cleaned when runs are listed, and SIGKILL at many moments of large saves."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from helpers import StubHooks, dead_pid, pid_gone, stop_leftover_runs, wait_until
from torchdeck.checkpoints import ops
from torchdeck.checkpoints import store as checkpoints
from torchdeck.checkpoints import writer as ckw
from torchdeck.errors import NoSpace
from torchdeck.models import specs
from torchdeck.runs.config import RunConfig
from torchdeck.runs.store import Run, RunStore
from torchdeck.workspace import Workspace

torch = pytest.importorskip("torch")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402


def _model_and_adam(width=64, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(20, width), torch.nn.ReLU(), torch.nn.Linear(width, 5))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(8, 20)).sum().backward()
    opt.step()
    return model, opt


def _state(model, opt, step):
    return {"optimizer": opt.state_dict(), "rng": {"torch": torch.get_rng_state(), "python": [1, 2, 3]},
            "loop": {"step": step, "epoch": 1}}


def _meta(step, **metrics):
    return {"step": step, "epoch": 1, "metrics": metrics, "run_config": {},
            "model_spec": specs.resolve("builtin:linear").to_json()}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the format ----------------------------------------------------------------------------------
def _odd_tensors():
    g = torch.Generator().manual_seed(1)
    out = {
        "f32": torch.randn(3, 4, generator=g),
        "f64": torch.randn(5, generator=g).double(),
        "bf16": torch.randn(7, 3, generator=g).to(torch.bfloat16),
        "f16": torch.randn(2, 2, 2, generator=g).half(),
        "i64": torch.arange(9),
        "i32": torch.arange(4, dtype=torch.int32).reshape(2, 2),
        "i16": torch.arange(3, dtype=torch.int16),
        "i8": torch.arange(-3, 4, dtype=torch.int8),
        "u8": torch.arange(11, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),  # 0-dim
        "empty": torch.zeros(0, 3),  # 0 elements
        "empty_i": torch.zeros(4, 0, dtype=torch.int64),
        "big": torch.randn(3_000_000, generator=g),  # 12 MB: more than one write chunk, hashed alongside
        "noncontig": torch.randn(6, 4, generator=g).t(),
    }
    for name in ("float8_e4m3fn", "float8_e5m2", "uint16", "uint32", "uint64"):
        if hasattr(torch, name):
            out[name] = torch.ones(3).to(getattr(torch, name)) if "float8" in name else torch.arange(3).to(getattr(torch, name))
    return out


def _bits(t):
    """A tensor's bytes (NaN-safe, any dtype)."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def test_safetensors_bytes_equal_save_file(tmp_path):
    tensors = _odd_tensors()
    hasher = ckw._Hasher()
    try:
        with ckw.HashingFile(tmp_path / "ours.safetensors", hasher) as f:
            ckw.write_safetensors(f, tensors)
            rec = f.finish()
    finally:
        hasher.close()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "theirs.safetensors"),
              metadata={"format": "pt"})
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    assert ours.read_bytes() == theirs.read_bytes()
    assert rec == {"size": ours.stat().st_size, "sha256": _sha(ours)}
    a, b = load_file(ours), load_file(theirs)
    assert sorted(a) == sorted(b) == sorted(tensors)
    for k, t in tensors.items():
        assert a[k].dtype == t.dtype and a[k].shape == t.shape
        assert torch.equal(_bits(a[k]), _bits(t)) and torch.equal(_bits(a[k]), _bits(b[k]))
    with safe_open(str(ours), "pt") as fo, safe_open(str(theirs), "pt") as ft:
        assert fo.metadata() == ft.metadata() == {"format": "pt"}
        for k in tensors:
            assert torch.equal(_bits(fo.get_tensor(k)), _bits(ft.get_tensor(k)))
    # torchdeck's own hardened reader agrees
    assert {t.name for t in checkpoints.safetensors_header(ours)} == set(tensors)


def test_tied_tensors_are_written_under_each_name(tmp_path):
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    sd = model.state_dict()
    assert sd["emb.weight"].data_ptr() == sd["head.weight"].data_ptr()
    w = ckw.CheckpointWriter(tmp_path, keep_last=None)
    w.save("step-1", weights=sd, training_state={}, meta=_meta(1))
    w.close()
    loaded = load_file(tmp_path / "step-1" / checkpoints.WEIGHTS)
    assert torch.equal(loaded["emb.weight"], loaded["head.weight"]) and torch.equal(loaded["emb.weight"], emb.weight)
    model.load_state_dict(checkpoints.load_weights(tmp_path / "step-1"))


def test_hashes_and_training_state(tmp_path):
    model, opt = _model_and_adam()
    results = []
    w = ckw.CheckpointWriter(tmp_path, keep_last=3, on_saved=results.append)
    ticket = w.save("step-1", weights=model.state_dict(), training_state=_state(model, opt, 1), meta=_meta(1))
    w.close()
    path = tmp_path / "step-1"
    meta = json.loads((path / "meta.json").read_text())
    assert meta["format"] == checkpoints.FORMAT and meta["step"] == 1
    for fname in (checkpoints.WEIGHTS, checkpoints.TRAINING_STATE):
        assert meta["files"][fname] == {"size": (path / fname).stat().st_size, "sha256": _sha(path / fname)}
    assert ops.hash_problems(path) == []
    state = torch.load(path / checkpoints.TRAINING_STATE, weights_only=True)
    want = opt.state_dict()
    for pid, s in want["state"].items():
        assert torch.equal(state["optimizer"]["state"][pid]["exp_avg"], s["exp_avg"])
        assert torch.equal(state["optimizer"]["state"][pid]["exp_avg_sq"], s["exp_avg_sq"])
    assert state["optimizer"]["param_groups"] == want["param_groups"]
    assert state["rng"]["python"] == [1, 2, 3] and state["loop"] == {"step": 1, "epoch": 1}
    [res] = results
    assert ticket.result() is res and res.path == path and res.bytes == sum(r["size"] for r in meta["files"].values())
    assert res.write_s > 0 and res.hash_s > 0 and res.fsync_s > 0 and res.step == 1
    assert [p.name for p in tmp_path.iterdir()] == ["step-1"]  # no temporary left


def test_saved_copy_is_isolated_from_training(tmp_path, monkeypatch):
    """Training changes parameters and Adam's moments in place right after save() returns: the
    checkpoint holds the values of the moment of the save."""
    model, opt = _model_and_adam()
    gate = threading.Event()
    real = ckw.write_safetensors

    def held(f, weights, metadata=None):
        gate.wait(10)
        real(f, weights, metadata)

    monkeypatch.setattr(ckw, "write_safetensors", held)
    want_w = {k: v.clone() for k, v in model.state_dict().items()}
    want_m = {k: s["exp_avg"].clone() for k, s in opt.state_dict()["state"].items()}
    w = ckw.CheckpointWriter(tmp_path, keep_last=None)
    w.save("step-1", weights=model.state_dict(), training_state=_state(model, opt, 1), meta=_meta(1))
    for _ in range(3):  # the loop goes on while the thread waits
        model(torch.randn(8, 20)).sum().backward()
        opt.step()
    gate.set()
    w.close()
    got = checkpoints.load_weights(tmp_path / "step-1")
    assert all(torch.equal(got[k], v) for k, v in want_w.items())
    assert not torch.equal(got["0.weight"], model.state_dict()["0.weight"])
    st = torch.load(tmp_path / "step-1" / checkpoints.TRAINING_STATE, weights_only=True)
    assert all(torch.equal(st["optimizer"]["state"][k]["exp_avg"], v) for k, v in want_m.items())


def test_loop_is_not_blocked_by_a_slow_disk(tmp_path, monkeypatch):
    """save() returns after the copy; a second save waits for the first and reports the wait."""
    real = ckw.write_safetensors

    def slow(f, weights, metadata=None):
        time.sleep(0.6)
        real(f, weights, metadata)

    monkeypatch.setattr(ckw, "write_safetensors", slow)
    model, opt = _model_and_adam()
    results = []
    w = ckw.CheckpointWriter(tmp_path, keep_last=None, on_saved=results.append)
    t = time.perf_counter()
    first = w.save("step-1", weights=model.state_dict(), training_state=_state(model, opt, 1), meta=_meta(1))
    returned = time.perf_counter() - t
    assert returned < 0.3 and not first.done() and w.busy()
    assert first.wait_s < 0.05 and first.copy_s <= returned
    assert not (tmp_path / "step-1").exists()  # still being written: not listed
    assert checkpoints.list_checkpoints(tmp_path) == []
    t = time.perf_counter()
    second = w.save("step-2", weights=model.state_dict(), training_state=_state(model, opt, 2), meta=_meta(2))
    assert time.perf_counter() - t >= 0.3 and second.wait_s >= 0.3 and first.done()
    w.close()
    assert [r.name for r in results] == ["step-1", "step-2"]
    assert results[1].wait_s == second.wait_s and results[1].pause_s == pytest.approx(second.pause_s)
    assert [c.step for c in checkpoints.list_checkpoints(tmp_path)] == [1, 2]


# -- errors --------------------------------------------------------------------------------------
def _enospc_after(monkeypatch, nbytes: int):
    """os.write inside the checkpoint writer fails with ENOSPC once `nbytes` were written."""
    written = [0]
    real = os.write

    def fake(fd, data):
        if written[0] + len(data) > nbytes:
            raise OSError(errno.ENOSPC, "No space left on device")
        written[0] += len(data)
        return real(fd, data)

    monkeypatch.setattr(ckw.os, "write", fake)
    return written


def test_background_error_reaches_the_loop(tmp_path, monkeypatch):
    model, opt = _model_and_adam()
    w = ckw.CheckpointWriter(tmp_path, keep_last=3)
    w.save("step-1", weights=model.state_dict(), training_state=_state(model, opt, 1), meta=_meta(1))
    w.wait()
    _enospc_after(monkeypatch, 3000)
    w.save("step-2", weights=model.state_dict(), training_state=_state(model, opt, 2), meta=_meta(2))
    with pytest.raises(NoSpace) as info:
        w.save("step-3", weights=model.state_dict(), training_state=_state(model, opt, 3), meta=_meta(3))
    msg = str(info.value)
    assert "no space left on " in msg and "writing checkpoint step-2" in msg and "free, about" in msg
    assert str(ckw.mount_point(tmp_path)) in msg
    assert info.value.code == "no_space"
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["step-1"]  # the temporary is gone, step-3 never started
    assert ops.hash_problems(tmp_path / "step-1") == []
    assert checkpoints.latest_complete(tmp_path).step == 1
    w.close()  # raised once: the loop has it

    w2 = ckw.CheckpointWriter(tmp_path, keep_last=3)
    _enospc_after(monkeypatch, 3000)
    w2.save("step-2", weights=model.state_dict(), training_state=_state(model, opt, 2), meta=_meta(2))
    with pytest.raises(NoSpace):
        w2.close()  # the end of a run meets it too
    assert [p.name for p in tmp_path.iterdir()] == ["step-1"]


def test_free_space_check_counts_the_optimizer_state(tmp_path, monkeypatch):
    model, opt = _model_and_adam(width=256)
    weights = ckw.tensor_bytes(model.state_dict())
    state = ckw.tensor_bytes(_state(model, opt, 1))
    assert state > 2 * weights  # Adam's two moments, and the RNG
    monkeypatch.setattr(ckw, "free_bytes", lambda p: weights * 2)  # enough for weights alone, not with Adam
    w = ckw.CheckpointWriter(tmp_path, keep_last=3)
    with pytest.raises(NoSpace, match=r"no space left on .* writing checkpoint step-1: .* free, about .* needed"):
        w.save("step-1", weights=model.state_dict(), training_state=_state(model, opt, 1), meta=_meta(1))
    w.close()
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def tiny_disk(tmp_path):
    """An 8 MiB tmpfs (we may mount as root); None where mounting is not allowed."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        yield None
        return
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_during_a_save(tiny_disk, tmp_path, monkeypatch):
    """A real full disk where one can be mounted, else an injected ENOSPC: a message naming the
    disk, the previous checkpoint intact, the temporary removed, nothing partial listed."""
    root = (tiny_disk or tmp_path) / "ckpts"
    model, opt = _model_and_adam(width=8000)  # 0.8 MB of weights, 2.5 MB a checkpoint with Adam
    w = ckw.CheckpointWriter(root, keep_last=5)
    w.save("step-1", weights=model.state_dict(), training_state=_state(model, opt, 1), meta=_meta(1))
    w.wait()
    if tiny_disk is not None:
        free = ckw.free_bytes(root)
        with open(tiny_disk / "filler", "wb") as f:  # leave 600 KB: the check passes only when lied to
            f.write(b"\0" * (free - 600_000))
        with pytest.raises(NoSpace, match="no space left on .*tmpfs"):  # the check before writing
            w.save("step-2", weights=model.state_dict(), training_state=_state(model, opt, 2), meta=_meta(2))
        monkeypatch.setattr(ckw, "free_bytes", lambda p: 1 << 40)  # the disk fills during the write
    else:
        _enospc_after(monkeypatch, 100_000)
    w.save("step-3", weights=model.state_dict(), training_state=_state(model, opt, 3), meta=_meta(3))
    with pytest.raises(NoSpace) as info:
        w.wait()
    assert f"no space left on {ckw.mount_point(root)}" in str(info.value)
    assert "writing checkpoint step-3" in str(info.value)
    w.close()
    monkeypatch.undo()
    assert sorted(p.name for p in root.iterdir()) == ["step-1"]
    assert ops.hash_problems(root / "step-1") == []
    assert [c.step for c in checkpoints.list_checkpoints(root)] == [1]


# -- retention -----------------------------------------------------------------------------------
def test_retention_last_n_and_best_k(tmp_path, monkeypatch):
    model, opt = _model_and_adam(width=8)
    renames = []
    real = os.rename

    def spy(src, dst):
        renames.append((Path(src).name, Path(dst).name))
        return real(src, dst)

    monkeypatch.setattr(ckw.os, "rename", spy)
    losses = {1: 0.9, 2: 0.3, 3: 0.5, 4: None, 5: 0.7, 6: 0.8}  # step 4 has no val_loss
    w = ckw.CheckpointWriter(tmp_path, keep_last=2, keep_best=1, best_metric="val_loss")
    for step, loss in losses.items():
        metrics = {"train_loss": 0.01} if loss is None else {"val_loss": loss, "train_loss": 0.01}
        w.save(f"step-{step}", weights=model.state_dict(), training_state={}, meta=_meta(step, **metrics))
        w.wait()
    w.close()
    assert [c.step for c in checkpoints.list_checkpoints(tmp_path)] == [2, 5, 6]  # best (0.3) + last two
    assert sum(".removing-" in d for _, d in renames) == 3
    # new before old: each removal comes after the rename that completed the newer checkpoint
    for i, (src, dst) in enumerate(renames):
        if ".removing-" in dst:
            newest = max(int(d.split("-")[1]) for s, d in renames[:i] if ".tmp-" in s)
            assert int(src.split("-")[1]) < newest

    # accuracy: highest wins; a checkpoint without the metric never counts as best
    acc_root = tmp_path / "acc"
    w = ckw.CheckpointWriter(acc_root, keep_last=1, keep_best=2, best_metric="val_accuracy")
    for step, acc in {1: 0.5, 2: 0.9, 3: None, 4: 0.7, 5: 0.6, 6: None}.items():
        w.save(f"step-{step}", weights=model.state_dict(), training_state={},
               meta=_meta(step, **({} if acc is None else {"val_accuracy": acc})))
    w.close()
    assert [c.step for c in checkpoints.list_checkpoints(acc_root)] == [2, 4, 6]
    assert ckw.metric_direction("val_loss") == -1 and ckw.metric_direction("val_acc") == 1
    assert ckw.metric_direction("perplexity") == -1


def test_config_and_flags_for_retention(tmp_path):
    from torchdeck.errors import InvalidRequest

    assert RunConfig.from_json({"model": "demo", "an_unknown_key": 1}).keep_best == 0  # old runs load
    with pytest.raises(InvalidRequest) as info:
        RunConfig(keep_best=-1).validate()
    assert info.value.field == "keep_best"
    with pytest.raises(InvalidRequest) as info:
        RunConfig(best_metric=" ").validate()
    assert info.value.field == "best_metric"
    import argparse

    from torchdeck.tui.cli import runs as cli_runs

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd")
    cli_runs.add_parsers(sub, argparse.ArgumentParser(add_help=False))
    args = parser.parse_args(["train", "--model", "demo", "--keep", "2", "--keep-best", "1",
                              "--best-metric", "val_accuracy"])
    ws = Workspace.open(tmp_path / "ws")
    cfg = cli_runs.config_from_args(ws, args)
    assert (cfg.keep_checkpoints, cfg.keep_best, cfg.best_metric) == (2, 1, "val_accuracy")


# -- dead temporaries --------------------------------------------------------------------------
def test_listing_removes_dead_temporaries_but_never_a_live_runs(tmp_path):
    from torchdeck.runs.store import acquire_run_lock

    ws = Workspace.open(tmp_path / "ws")
    store = RunStore(ws)
    cfg = RunConfig(model="demo", epochs=1)
    dead_run, live_run = store.create(cfg), store.create(cfg)
    for run in (dead_run, live_run):
        (run.checkpoints_dir / "step-00000001").mkdir()
        for name in (f".step-00000002.tmp-{dead_pid()}", f".step-00000003.removing-{dead_pid()}"):
            (run.checkpoints_dir / name).mkdir()
            (run.checkpoints_dir / name / "model.safetensors").write_bytes(b"\0" * 1000)
        st = json.loads((run.path / "status.json").read_text())
        st.update(state="running", pid=dead_pid(), pid_start=1)
        (run.path / "status.json").write_text(json.dumps(st))
    lock = acquire_run_lock(live_run.path)  # a live worker of that run (the lock decides, not the pid)
    try:
        states = {s.id: s.state for s in store.summaries()}
        assert states[dead_run.id] == "crashed"
        assert sorted(p.name for p in dead_run.checkpoints_dir.iterdir()) == ["step-00000001"]
        assert len(list(live_run.checkpoints_dir.iterdir())) == 3  # untouched: its worker lives
    finally:
        lock.close()
    # a run that ended "stopped" or "failed" with leftovers (an older torchdeck) is swept once
    (dead_run.checkpoints_dir / f".step-00000004.tmp-{dead_pid()}").mkdir()
    store2 = RunStore(ws)
    store2.summaries()
    assert sorted(p.name for p in dead_run.checkpoints_dir.iterdir()) == ["step-00000001"]


# -- the loop ------------------------------------------------------------------------------------
def _trainer(tmp_path, hooks, **kw):
    from torchdeck.training.loop import Trainer

    base = dict(model="builtin:linear", epochs=3, dataset_size=512, batch_size=64, seed=1, device="cpu", threads=1)
    base.update(kw)
    return Trainer(RunConfig(**base), hooks, run_id="t", checkpoints_dir=tmp_path / "ckpts")


def test_loop_emits_checkpointed_when_complete_with_timings(tmp_path):
    hooks = StubHooks()
    complete_at_event = []
    real_emit = hooks.emit

    def emit(e):
        if type(e).__name__ == "Checkpointed":
            complete_at_event.append(checkpoints.torchdeck_dir.complete_meta(tmp_path / "ckpts" / e.name) is not None)
        real_emit(e)

    hooks.emit = emit
    trainer = _trainer(tmp_path, hooks, keep_checkpoints=2)
    out = trainer.run()
    assert out.state == "finished"
    cps = [e for e in hooks.events if type(e).__name__ == "Checkpointed"]
    n = trainer.steps_per_epoch
    assert [c.step for c in cps] == [n, 2 * n, 3 * n] and complete_at_event == [True] * 3
    assert all(c.reason == "epoch" and c.epoch == i + 1 for i, c in enumerate(cps))
    assert all(c.pause_s is not None and c.write_s > 0 and c.hash_s > 0 and c.bytes > 0 for c in cps)
    assert [c.step for c in checkpoints.list_checkpoints(tmp_path / "ckpts")] == [2 * n, 3 * n]
    assert trainer.ckpt_writer is None  # closed at the end of run()
    from torchdeck.runs import events as ev

    old = ev.parse({"type": "checkpoint", "name": "step-1", "step": 1, "epoch": 1, "reason": "epoch"})
    assert old is not None and old.pause_s is None  # records from before still parse


def _execute_in_thread(run):
    from torchdeck.runs.worker import execute
    from torchdeck.runs.writer import take_lock

    out = {}

    def go():
        lock = take_lock(run)
        try:
            out["state"] = execute(run, heartbeat=False)
        finally:
            lock.close()

    t = threading.Thread(target=go)  # not the main thread: execute installs no signal handlers
    t.start()
    t.join(120)
    return out.get("state")


def _ws_run(root: Path, **kw) -> Run:
    ws = Workspace.open(root)
    base = dict(model="demo", epochs=3, dataset_size=512, batch_size=64, seed=1, device="cpu", threads=1)
    base.update(kw)
    cfg = RunConfig(**base)
    cfg.model_spec = specs.resolve(cfg.model, ws).to_json()
    return RunStore(ws).create(cfg)


def test_a_background_write_error_fails_the_run(tmp_path, monkeypatch):
    run = _ws_run(tmp_path / "ws")
    calls = [0]
    real = ckw.write_safetensors

    def second_fails(f, weights, metadata=None):
        calls[0] += 1
        if calls[0] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, weights, metadata)

    monkeypatch.setattr(ckw, "write_safetensors", second_fails)
    assert _execute_in_thread(run) == "failed"
    st = run.status()
    assert st.state == "failed" and "no space left on" in st.message and "step-00000016" in st.message
    assert run.liveness().state == "failed"
    assert [c.step for c in checkpoints.list_checkpoints(run.checkpoints_dir)] == [8]
    assert checkpoints.temporaries(run.checkpoints_dir) == []


def test_disk_full_outside_a_save_fails_the_run(tiny_disk, tmp_path, monkeypatch):
    """The events file meets a full disk: "failed" with the cause in status.json, not "crashed"."""
    root = (tiny_disk or tmp_path) / "ws"
    run = _ws_run(root, epochs=200, dataset_size=4096, checkpoint_every_epoch=False, checkpoint_on_stop=False,
                  flush_interval=0.05)
    if tiny_disk is not None:
        def fill():
            wait_until(lambda: run.events_path.exists() and run.events_path.stat().st_size > 2000, timeout=60)
            with open(tiny_disk / "filler", "wb") as f:
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError:
                    pass
        threading.Thread(target=fill, daemon=True).start()
    else:
        from torchdeck.runs import events as ev

        real_write, n = ev.EventWriter.write, [0]

        def write(self, event):
            n[0] += 1
            if n[0] > 20:
                raise OSError(errno.ENOSPC, "No space left on device")
            real_write(self, event)

        monkeypatch.setattr(ev.EventWriter, "write", write)
    assert _execute_in_thread(run) == "failed"
    st = run.status()
    # the first write to fail (events.jsonl, summary.json or status.json) names the disk
    assert st.state == "failed" and f"no space left on {ckw.mount_point(root)}" in st.message, st
    assert f"of run {run.id}" in st.message
    assert run.liveness().state == "failed"


# -- SIGKILL during large saves -------------------------------------------------------------------
def _big_config(ws) -> RunConfig:
    # builtin:mlp with 2 hidden layers of 2,400: 5.8M parameters, 23 MB of weights, 70 MB a checkpoint
    # with Adam's moments; 256 samples a batch of 64: an epoch (and a checkpoint) every few tenths of a second.
    cfg = RunConfig(model="builtin:mlp", data="synthetic:classification", epochs=10_000, dataset_size=320,
                    batch_size=64, optimizer="adam", lr=1e-4, seed=0, device="cpu", threads=1, keep_checkpoints=2)
    spec = specs.resolve("builtin:mlp", ws)
    spec = specs.ModelSpec.from_json({**spec.to_json(), "kwargs": {"in_features": 20, "hidden": 2400, "num_classes": 5}})
    cfg.model_spec = spec.to_json()
    return cfg


# Starting a worker costs seconds here (importing torch, and the first optimizer step imports
# torch._dynamo), so most workers of the kill loop are forked from one process that has done both:
# each child runs the worker's own entry point, `torchdeck.runs.worker.main([RUN_DIR])` (lock,
# session, log, execute), exactly as `python -m torchdeck.runs.worker` would.
ZYGOTE = r"""
import os, signal, sys
import torch
torch.set_num_threads(1)  # no OpenMP pool before fork
from torchdeck.runs import worker
m = torch.nn.Linear(2, 2); o = torch.optim.Adam(m.parameters()); m(torch.randn(1, 2)).sum().backward(); o.step()
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
print("ready", flush=True)
for line in sys.stdin:
    path = line.strip()
    pid = os.fork()
    if pid == 0:
        os.setsid()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        fd = os.open(os.path.join(path, "worker.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1); os.dup2(fd, 2)
        code = 1
        try:
            code = worker.main([path])
        finally:
            os._exit(code)
    print(pid, flush=True)
"""


@pytest.mark.slow
def test_sigkill_at_random_moments_of_large_saves(tmp_path):
    """At >= 20 random moments (half of them while a `.tmp-` directory exists, i.e. inside the
    background writer): the previous checkpoint always loads with matching hashes, nothing partial
    is listed or taken as latest, the run reads "crashed", and listing removes the temporaries.
    The first two workers are started by RunStore.launch, the others forked (ZYGOTE)."""
    import sys

    ws = Workspace.open(tmp_path / "ws")
    store = RunStore(ws)
    cfg = _big_config(ws)
    rng = random.Random(8)
    kills, inside = 0, 0
    zygote = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        launched = [store.create(cfg), store.create(cfg)]
        for run in launched:
            store.launch(run)
        assert zygote.stdout.readline().strip() == "ready"
        while kills < 20:
            if launched:
                run = launched.pop(0)
            else:
                run = store.create(cfg)
                zygote.stdin.write(f"{run.path}\n")
                zygote.stdin.flush()
                int(zygote.stdout.readline())
            wait_until(lambda: checkpoints.list_checkpoints(run.checkpoints_dir), timeout=90,
                       what=f"a first checkpoint of {run.id} ({run.log_path})")
            if kills % 2 == 0:  # inside the writer: wait for its temporary, then a random moment
                wait_until(lambda: checkpoints.temporaries(run.checkpoints_dir), timeout=30, interval=0.002,
                           what="a save in flight")
                time.sleep(rng.uniform(0, 0.08))
            else:
                time.sleep(rng.uniform(0, 0.6))
            st = run.status()
            inside += bool([n for n in checkpoints.temporaries(run.checkpoints_dir) if ".tmp-" in n])
            os.kill(st.pid, signal.SIGKILL)
            wait_until(lambda: pid_gone(st.pid) and not run.writer_alive(), timeout=10, what="the worker to die")
            kills += 1
            listed = checkpoints.list_checkpoints(run.checkpoints_dir)
            assert listed, "the previous checkpoint was lost"
            latest = checkpoints.latest_complete(run.checkpoints_dir)
            assert latest.path == listed[-1].path and not latest.path.name.startswith(".")
            for info in listed:
                assert ops.hash_problems(info.path) == [], info.path
            ops.check_hashes(latest.path)
            model = specs.build(specs.ModelSpec.from_json(cfg.model_spec))
            model.load_state_dict(checkpoints.load_weights(latest.path))
            names = {s.id: s.state for s in RunStore(ws).summaries()}  # `runs list`
            assert names[run.id] == "crashed" and run.liveness().state == "crashed"
            assert checkpoints.temporaries(run.checkpoints_dir) == []
            shutil.rmtree(run.path)  # keep the disk small
        assert inside >= 5, f"only {inside} kills landed inside the writer"
    finally:
        zygote.kill()
        zygote.wait()
        stop_leftover_runs([ws.runs_dir])


def test_a_failed_background_save_ends_the_run_at_the_next_chunk(tmp_path, monkeypatch):
    """Not at the next checkpoint: the loop asks the writer at every chunk of losses."""
    from helpers import StubHooks
    from torchdeck.runs.config import RunConfig
    from torchdeck.training.loop import Trainer

    def fails(f, weights, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckw, "write_safetensors", fails)
    cfg = RunConfig(model="builtin:mlp", epochs=1, dataset_size=4000, batch_size=8, threads=1, flush_interval=0.0,
                    checkpoint_every=50, keep_checkpoints=100)
    trainer = Trainer(cfg, StubHooks(), checkpoints_dir=tmp_path)
    with pytest.raises(NoSpace, match="step-00000050"):
        trainer.run()
    assert 50 < trainer.step < 100, trainer.step  # ended before the next save was due
    assert checkpoints.list_checkpoints(tmp_path) == [] and checkpoints.temporaries(tmp_path) == []
