"""Logs people already have (issue 12): TensorBoard event files, Hugging Face trainer_state.json,
Lightning CSVLogger metrics.csv and MLflow file stores, written here by the real libraries, read
by torchdeck.sources and mirrored as read-only runs (torchdeck.sources.mirror).

The libraries come from the `real` test extra (tensorboard, transformers, lightning,
mlflow-skinny); without one its tests skip, naming what to install; under `make test`
(TORCHDECK_REAL_REQUIRED=1) they fail.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import shutil
import struct
import time
from pathlib import Path

import pytest
from helpers import wait_until
from torchdeck import sources
from torchdeck.errors import NotFound, Unreadable
from torchdeck.runs import view as run_view
from torchdeck.runs.store import RunStore
from torchdeck.sources import mirror
from torchdeck.workspace import Workspace

REQUIRED = os.environ.get("TORCHDECK_REAL_REQUIRED") == "1"
EXTRA = "pip install -c .ci/constraints.txt -e '.[test,real]' (make test does)"


def _need(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        if REQUIRED:
            pytest.fail(f"{module} is missing: {EXTRA}. TORCHDECK_REAL_REQUIRED=1 asks for every real-library test")
        pytest.skip(f"{module} is missing: {EXTRA}")


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore(Workspace.open(tmp_path / "ws"))


# -- writers: the real libraries --------------------------------------------------------------------
def write_tb(folder: Path, steps, *, tag="train/loss", f=lambda i: 1.0 / (i + 1), extra=True, walltime0=None):
    """torch's SummaryWriter (simple_value), plus a histogram and a text that are not scalars."""
    _need("tensorboard")
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(folder))
    for i in steps:
        w.add_scalar(tag, f(i), i, walltime=None if walltime0 is None else walltime0 + i)
        w.add_scalar("lr", 0.1 * 0.5 ** (i // 10), i, walltime=None if walltime0 is None else walltime0 + i)
    if extra:
        w.add_histogram("weights", np.arange(10.0), 1)
        w.add_text("notes", "hello", 1)
    w.close()
    return w


def write_tb_v2(folder: Path, points: dict[str, list[tuple[int, float]]]) -> None:
    """TF2-style tensor scalars without TensorFlow: tensorboard's own summary_v2.scalar_pb (a rank-0
    tensor in tensor_content, the scalars plugin's metadata) through its own EventFileWriter."""
    _need("tensorboard")
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.scalar import summary_v2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    w = EventFileWriter(str(folder))
    for tag, pts in points.items():
        for step, value in pts:
            w.add_event(event_pb2.Event(wall_time=1000.0 + step, step=step, summary=summary_v2.scalar_pb(tag, value)))
    w.close()


def one_event_file(folder: Path) -> Path:
    (f,) = [p for p in folder.iterdir() if "tfevents" in p.name]
    return f


def record_ends(data: bytes) -> list[int]:
    """Byte offsets where each TFRecord of an event file ends."""
    ends, pos = [], 0
    while pos + 12 <= len(data):
        (n,) = struct.unpack_from("<Q", data, pos)
        pos += 12 + n + 4
        ends.append(pos)
    return ends


# -- TensorBoard ---------------------------------------------------------------------------------------
def test_tensorboard_simple_values_recursing_into_subfolders(tmp_path):
    write_tb(tmp_path / "logs" / "a", range(50), walltime0=5000.0)
    write_tb(tmp_path / "logs" / "b" / "deeper", range(7))
    (tmp_path / "logs" / "empty").mkdir()
    found = sources.scan(tmp_path / "logs")
    assert [(f.kind, f.name) for f in found.found] == [("tensorboard", "logs/a"), ("tensorboard", "logs/b/deeper")]
    state: dict = {}
    batch = sources.read("tensorboard", found.found[0].path, state)
    steps, values, walls = batch.points["train/loss"]
    assert steps == list(range(50))
    assert values == pytest.approx([1.0 / (i + 1) for i in range(50)], rel=1e-6)
    assert walls == [5000.0 + i for i in range(50)]
    assert set(batch.points) == {"train/loss", "lr"}  # the histogram and the text are not scalars
    assert batch.problems == [] and batch.pending == 0
    assert sources.read("tensorboard", found.found[0].path, state).count == 0  # nothing is read twice


def test_tensorboard_tf2_tensor_scalars(tmp_path):
    write_tb_v2(tmp_path, {"loss": [(1, 0.5), (2, 0.25)], "accuracy": [(2, 0.75)]})
    batch = sources.read("tensorboard", tmp_path, {})
    assert batch.points["loss"][:2] == ([1, 2], [0.5, 0.25])
    assert batch.points["loss"][2] == [1001.0, 1002.0]
    assert batch.points["accuracy"][:2] == ([2], [0.75])


def test_tensorboard_hparams_become_the_runs_params(tmp_path, store):
    """Hyper-parameters written by the HParams plugin: in the training's own event file (as
    Lightning's TensorBoardLogger writes them) and in the subfolder `add_hparams` makes."""
    _need("tensorboard")
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    w = SummaryWriter(str(tmp_path / "logs" / "pl"))
    for s in (hparams({"lr": 0.01, "optimizer": "adam", "amp": True}, {"val_loss": 0.0})):
        w.file_writer.add_summary(s)
    for step in range(5):
        w.add_scalar("train_loss", 1.0 / (step + 1), step)
    w.add_hparams({"batch_size": 32, "dropout": 0.1}, {"hparam/acc": 0.9}, run_name="hp")
    w.close()
    _, opened = mirror.open_path(store, tmp_path / "logs")
    by_name = {run.name(): run for run, _ in opened}
    assert set(by_name) == {"logs/pl", "logs/pl/hp"}
    assert read_json_file(by_name["logs/pl"].path / "config.json")["params"] == {"lr": 0.01, "optimizer": "adam",
                                                                            "amp": True}
    view = run_view.load(by_name["logs/pl"])
    assert view.metrics["loss"].count == 5
    assert read_json_file(by_name["logs/pl/hp"].path / "config.json")["params"] == {"batch_size": 32.0, "dropout": 0.1}
    # the monitor's log says where the run came from and its hyper-parameters, never a form's defaults
    from torchdeck.tui.widgets.virtual_log import started_lines

    lines = started_lines(view.started)
    assert lines[0] == f"imported from tensorboard: {tmp_path / 'logs' / 'pl'}"
    assert sorted(lines[1].strip().split(", ")) == ["amp 1.0", "lr 0.01", "optimizer adam"]  # torch writes bools as 1.0


def read_json_file(path):
    return json.loads(path.read_text())


def test_tensorboard_torn_last_record_waits_for_the_rest(tmp_path):
    """A file being written: its last record cut anywhere inside is not consumed, and the next read
    takes it whole once it is there, without reading anything twice."""
    write_tb(tmp_path / "src", range(30), extra=False)
    data = one_event_file(tmp_path / "src").read_bytes()
    ends = record_ends(data)
    live = tmp_path / "live"
    live.mkdir()
    f = live / one_event_file(tmp_path / "src").name
    state: dict = {}
    seen: list[int] = []
    cut_points = [ends[5] - 3, ends[5] + 5, ends[20] + 11, ends[-1] - 1, ends[-1]]
    for cut in cut_points:
        f.write_bytes(data[:cut])
        batch = sources.read("tensorboard", live, state)
        seen += batch.points.get("train/loss", ([], [], []))[0]
        assert batch.problems == []
        if cut != ends[-1]:
            assert batch.pending > 0
    assert seen == list(range(30))


def test_tensorboard_corrupt_record_read_up_to_the_damage(tmp_path):
    write_tb(tmp_path / "src", range(40), extra=False)
    src = one_event_file(tmp_path / "src")
    data = bytearray(src.read_bytes())
    ends = record_ends(bytes(data))
    data[ends[20] + 14] ^= 0xFF  # a byte inside the 22nd record's payload
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / src.name).write_bytes(bytes(data))
    state: dict = {}
    batch = sources.read("tensorboard", bad, state)
    steps = batch.points["train/loss"][0]
    assert steps and steps == list(range(len(steps))) and len(steps) < 40  # everything before the damage
    assert any(f"at byte {ends[20]:,}" in p and "read up to there" in p for p in batch.problems), batch.problems
    again = sources.read("tensorboard", bad, state)  # still said, nothing read twice, nothing past it
    assert again.count == 0 and again.problems == batch.problems


def test_tensorboard_truncated_file_is_said_and_the_rest_shown(tmp_path, store):
    write_tb(tmp_path / "src", range(40), extra=False)
    src = one_event_file(tmp_path / "src")
    data = src.read_bytes()
    cut = tmp_path / "logs" / "cut"
    cut.mkdir(parents=True)
    (cut / src.name).write_bytes(data[: len(data) * 2 // 3])
    _, [(run, res)] = mirror.open_path(store, tmp_path / "logs")
    assert 0 < res.metrics["loss"] < 40
    assert any("incomplete record" in p for p in res.problems)
    v = run_view.load(run)
    assert v.state == "finished" and "incomplete record" in v.message
    assert v.metrics["loss"].count == res.metrics["loss"]


def test_garbage_named_like_an_event_file(tmp_path):
    d = tmp_path / "junk"
    d.mkdir()
    (d / "events.out.tfevents.123.host").write_bytes(os.urandom(4096))
    batch = sources.read("tensorboard", d, {})
    assert batch.count == 0
    assert batch.problems and "byte 0" in batch.problems[0]


# -- Hugging Face ----------------------------------------------------------------------------------------
def _trainer_state(log_history, step):
    transformers = _need("transformers")
    return transformers.TrainerState(global_step=step, max_steps=60, num_train_epochs=3, logging_steps=10,
                                     log_history=log_history, train_batch_size=8)


def _hf_history(upto: int) -> list[dict]:
    out = []
    for s in range(10, upto + 1, 10):
        out.append({"loss": 2.0 / s, "learning_rate": 1e-3 * (1 - s / 60), "grad_norm": 1.5, "epoch": s / 20, "step": s})
        if s % 20 == 0:
            out.append({"eval_loss": 3.0 / s, "eval_accuracy": s / 60, "epoch": s / 20, "step": s})
    return out


def test_huggingface_checkpoints_and_final_state(tmp_path, store):
    out = tmp_path / "out"
    for n in (20, 40):
        (out / f"checkpoint-{n}").mkdir(parents=True)
        _trainer_state(_hf_history(n), n).save_to_json(str(out / f"checkpoint-{n}" / "trainer_state.json"))
    found = sources.scan(tmp_path)
    assert [(f.kind, f.path) for f in found.found] == [("huggingface", out)]  # one run, not one per checkpoint
    _, [(run, res)] = mirror.open_path(store, tmp_path)
    assert res.metrics == {"loss": 4, "learning_rate": 4, "grad_norm": 4, "epoch": 6, "eval_loss": 2,
                           "eval_accuracy": 2}
    # training goes on: a later checkpoint, then the final state with the end-of-training summary
    (out / "checkpoint-60").mkdir()
    _trainer_state(_hf_history(60), 60).save_to_json(str(out / "checkpoint-60" / "trainer_state.json"))
    final = _hf_history(60) + [{"train_loss": 0.1, "train_runtime": 12.5, "epoch": 3.0, "step": 60}]
    _trainer_state(final, 60).save_to_json(str(out / "trainer_state.json"))
    res = mirror.sync(run)
    assert res.added == 4 + 4 + 3 + 3  # steps 50 and 60, the eval at 60, the end-of-training summary
    v = run_view.load(run)
    loss = v.metrics["loss"]
    assert loss.steps_array().tolist() == [10, 20, 30, 40, 50, 60]
    assert loss.values_array().tolist() == pytest.approx([2.0 / s for s in range(10, 61, 10)], rel=1e-6)
    assert v.metrics["eval_loss"].steps_array().tolist() == [20, 40, 60]
    assert v.metrics["train_loss"].count == 1 and v.step == 60
    cfg = json.loads((run.path / "config.json").read_text())
    assert cfg["params"]["train_batch_size"] == 8 and cfg["params"]["state_file"] == "trainer_state.json"


def test_huggingface_folder_reused_for_another_training_is_read_again(tmp_path, store):
    out = tmp_path / "out"
    (out / "checkpoint-40").mkdir(parents=True)
    _trainer_state(_hf_history(40), 40).save_to_json(str(out / "checkpoint-40" / "trainer_state.json"))
    _, [(run, _)] = mirror.open_path(store, tmp_path)
    shutil.rmtree(out / "checkpoint-40")
    (out / "checkpoint-20").mkdir()
    other = [dict(e, loss=9.0) if "loss" in e else e for e in _hf_history(20)]
    _trainer_state(other, 20).save_to_json(str(out / "checkpoint-20" / "trainer_state.json"))
    res = mirror.sync(run)
    assert res.rebuilt
    v = run_view.load(run)
    assert v.metrics["loss"].values_array().tolist() == [9.0, 9.0]


def test_huggingface_state_being_written_is_passed_over(tmp_path, store):
    out = tmp_path / "out"
    (out / "checkpoint-20").mkdir(parents=True)
    _trainer_state(_hf_history(20), 20).save_to_json(str(out / "checkpoint-20" / "trainer_state.json"))
    (out / "checkpoint-40").mkdir()
    text = json.dumps({"log_history": _hf_history(40), "global_step": 40})
    (out / "checkpoint-40" / "trainer_state.json").write_text(text[: len(text) // 2])  # half written
    _, [(run, res)] = mirror.open_path(store, tmp_path)
    assert res.metrics["loss"] == 2
    assert any("checkpoint-40" in p and "not valid JSON" in p for p in res.problems)
    (out / "checkpoint-40" / "trainer_state.json").write_text(text)  # the write completes
    res = mirror.sync(run)
    assert res.metrics["loss"] == 4 and not res.rebuilt and res.problems == []


# -- Lightning -------------------------------------------------------------------------------------------
def test_lightning_csv_logger_with_a_header_rewrite(tmp_path, store):
    _need("lightning")
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(str(tmp_path), name="lightning_logs")
    logger.log_hyperparams({"lr": 0.01, "layers": [4, 8], "optimizer": {"name": "adamw"}})
    for s in range(5):
        logger.log_metrics({"train_loss_step": 1.0 / (s + 1), "epoch": 0}, step=s)
    logger.save()
    _, [(run, res)] = mirror.open_path(store, tmp_path)
    assert run.name().endswith("lightning_logs/version_0")
    assert res.metrics == {"loss": 5, "epoch": 5}
    cfg = json.loads((run.path / "config.json").read_text())
    assert cfg["params"] == {"lr": 0.01, "layers": [4, 8], "optimizer": {"name": "adamw"}}
    for s in range(5, 8):
        logger.log_metrics({"train_loss_step": 1.0 / (s + 1), "epoch": 1}, step=s)
    logger.save()
    res = mirror.sync(run)  # appended, same header
    assert res.added == 6 and not res.rebuilt
    logger.log_metrics({"val_loss": 0.3, "epoch": 1}, step=7)  # a new key: CSVLogger rewrites the whole file
    logger.save()
    res = mirror.sync(run)
    assert res.rebuilt and res.metrics == {"loss": 8, "epoch": 9, "val_loss": 1}
    v = run_view.load(run)
    assert v.metrics["loss"].steps_array().tolist() == list(range(8))  # once each, after the rewrite
    assert v.metrics["val_loss"].values_array().tolist() == pytest.approx([0.3])


def test_lightning_torn_line_and_junk_cells(tmp_path):
    d = tmp_path / "version_0"
    d.mkdir()
    (d / "metrics.csv").write_text("epoch,step,train_loss\n0,0,0.5\n0,1,oops\n0,2,0.2")
    state: dict = {}
    b = sources.read("lightning", d, state)
    assert b.points["train_loss"][:2] == ([0], [0.5]) and b.pending == len("0,2,0.2")
    assert any("not numbers" in p for p in b.problems)
    with open(d / "metrics.csv", "a") as f:
        f.write("5\n")
    b = sources.read("lightning", d, state)
    assert b.points["train_loss"][:2] == ([2], [0.25]) and not b.reset


def test_a_stray_quote_in_lightning_junk_does_not_swallow_the_rows_after_it(tmp_path):
    """Found by CI: random junk with a '"' in it opened a quoted cell that the csv module ran to the
    end of the file, so the good rows after it were lost (1 in ~80 random files)."""
    d = tmp_path / "version_0"
    d.mkdir()
    (d / "metrics.csv").write_bytes(b'step,loss\n0,0.5\n1,"oops\n2,0.25\n3,\x00\r0.1\n4,0.125\n')
    b = sources.read("lightning", d, {})
    assert b.points["loss"][:2] == ([0, 2, 4], [0.5, 0.25, 0.125])
    assert any("not numbers" in p for p in b.problems)
    for seed in range(200):  # junk of every kind before a good row: the good row is always read
        (d / "metrics.csv").write_bytes(b"step,loss\n" + random.Random(seed).randbytes(500) + b"\n7,0.5\n")
        b = sources.read("lightning", d, {})
        assert (7, 0.5) in zip(*b.points.get("loss", ([], []))[:2]), seed


def test_lightning_hparams_with_python_tags_are_not_executed(tmp_path):
    d = tmp_path / "version_0"
    d.mkdir()
    (d / "metrics.csv").write_text("step,loss\n0,1.0\n")
    marker = tmp_path / "ran"
    (d / "hparams.yaml").write_text(f"cfg: !!python/object/apply:os.system ['touch {marker}']\n")
    b = sources.read("lightning", d, {})
    assert not marker.exists()
    assert "hparams.yaml" in b.params and any("not plain YAML" in p for p in b.problems)


# -- MLflow ----------------------------------------------------------------------------------------------
def _mlflow(tmp_path):
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3 keeps the file store behind this switch
    mlflow = _need("mlflow")
    mlflow.set_tracking_uri(f"file:{tmp_path / 'mlruns'}")
    mlflow.set_experiment("exp1")
    return mlflow


def test_mlflow_file_store(tmp_path, store):
    mlflow = _mlflow(tmp_path)
    with mlflow.start_run(run_name="baseline") as active:
        mlflow.log_params({"lr": 0.1, "batch": 32})
        mlflow.set_tag("team", "vision")
        for i in range(20):
            mlflow.log_metric("train_loss", 1 / (i + 1), step=i)
            mlflow.log_metric("val/acc", i / 20, step=i)
        run_id = active.info.run_id
    with mlflow.start_run(run_name="gone") as deleted:
        mlflow.log_metric("train_loss", 1.0, step=0)
    mlflow.delete_run(deleted.info.run_id)
    found = sources.scan(tmp_path / "mlruns")
    assert [f.path.name for f in found.found] == [run_id]  # the deleted run is not listed
    _, [(run, res)] = mirror.open_path(store, tmp_path / "mlruns")
    assert res.metrics == {"loss": 20, "val/acc": 20}
    assert run.name() == "baseline"
    cfg = json.loads((run.path / "config.json").read_text())
    assert cfg["params"]["lr"] == "0.1" and cfg["params"]["mlflow"]["tags"]["team"] == "vision"
    assert cfg["params"]["mlflow"]["experiment"] == "exp1"
    v = run_view.load(run)
    assert v.metrics["val/acc"].steps_array().tolist() == list(range(20))
    assert v.metrics["loss"].has_time  # the points' timestamps give the time axis
    client = mlflow.tracking.MlflowClient()
    client.log_metric(run_id, "train_loss", 0.01, step=20)  # the run grows after the fact
    res = mirror.sync(run)
    assert res.added == 1 and res.metrics["loss"] == 21
    client.set_tag(run_id, "team", "speech and vision")  # a tag changed: the config follows
    mirror.sync(run)
    cfg = json.loads((run.path / "config.json").read_text())
    assert cfg["params"]["mlflow"]["tags"]["team"] == "speech and vision" and run.name() == "baseline"


# -- folders, mirrors, follow ---------------------------------------------------------------------------
def test_a_folder_with_no_logs(tmp_path, store):
    (tmp_path / "nothing" / "here").mkdir(parents=True)
    (tmp_path / "nothing" / "notes.txt").write_text("hi")
    assert sources.scan(tmp_path / "nothing").found == []
    with pytest.raises(NotFound, match="no such file or directory"):
        sources.scan(tmp_path / "missing")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file: permissions cannot be denied")
def test_permission_denied_on_some_files(tmp_path, store):
    write_tb(tmp_path / "logs" / "ok", range(5), extra=False)
    write_tb(tmp_path / "logs" / "locked", range(5), extra=False)
    (tmp_path / "logs" / "hidden_dir").mkdir()
    os.chmod(tmp_path / "logs" / "hidden_dir", 0)
    os.chmod(one_event_file(tmp_path / "logs" / "locked"), 0)
    try:
        found, out = mirror.open_path(store, tmp_path / "logs")
        assert any("hidden_dir" in p and "permission denied" in p for p in found.problems)
        by_name = {run.name(): res for run, res in out}
        assert by_name["logs/ok"].metrics["loss"] == 5
        assert any("permission denied" in p.lower() for p in by_name["logs/locked"].problems)
        with pytest.raises(Unreadable):
            os.chmod(tmp_path / "logs", 0)
            sources.scan(tmp_path / "logs")
    finally:
        os.chmod(tmp_path / "logs", 0o755)
        os.chmod(tmp_path / "logs" / "hidden_dir", 0o755)


def test_mirror_is_stable_read_only_and_rebuilt_when_out_of_step(tmp_path, store):
    write_tb(tmp_path / "logs" / "a", range(20), extra=False)
    _, [(run, res)] = mirror.open_path(store, tmp_path / "logs")
    before = {p.name: p.read_bytes() for p in (tmp_path / "logs" / "a").iterdir()}
    _, [(again, res2)] = mirror.open_path(store, tmp_path / "logs")  # a rescan finds the same mirror
    assert again.id == run.id and res2.added == 0 and res2.metrics == res.metrics
    assert {p.name: p.read_bytes() for p in (tmp_path / "logs" / "a").iterdir()} == before  # never written
    with open(run.events_path, "a") as f:  # an import that died between its events and its state
        f.write('{"type":"scalars","name":"loss","first_step":0,"values":[99.0]}\n')
    res3 = mirror.sync(run)
    assert res3.metrics == res.metrics
    assert run_view.load(run).metrics["loss"].count == 20  # rebuilt, not counted twice
    summ = store.summaries()[0]
    assert summ.source == "tensorboard" and summ.state == "finished" and summ.step == 19


def test_half_made_mirrors_of_a_dead_scan_are_swept_and_a_live_ones_kept(tmp_path, store):
    """A scan killed between making a mirror and renaming it into place leaves a hidden
    `.importing-*` folder; the next scan removes it, judged by the maker named in its name
    (pid and start time), never by age. A live scan's is left alone."""
    import subprocess
    import sys

    from torchdeck.procs import process_start_time

    write_tb(tmp_path / "logs" / "a", range(5), extra=False)
    store.root.mkdir(parents=True, exist_ok=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_start = process_start_time(dead.pid) or 1
    dead.wait()
    gone = store.root / f".importing-tb-0123456789ab-{dead.pid}.{dead_start}-a1b2c3"
    old = store.root / ".importing-tb-0123456789ab-d4e5f6"  # named before makers were: no owner left
    live = store.root / f".importing-tb-0123456789ab-{os.getpid()}.{process_start_time(os.getpid())}-aaaaaa"
    for p in (gone, old, live):
        p.mkdir()
        (p / "config.json").write_text("{}")
    _, [(run, _)] = mirror.open_path(store, tmp_path / "logs")
    assert not gone.exists() and not old.exists() and live.exists()
    assert [s.id for s in store.summaries()] == [run.id]  # temporaries never listed as runs


def test_follow_a_growing_event_file(tmp_path, store):
    """A training writing its event file right now: the mirror's reader sees each new point within
    a second, and the run reads "running" while followed, "finished" after."""
    _need("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path / "logs" / "live"), flush_secs=3600)
    w.add_scalar("loss", 1.0, 0)
    w.flush()
    _, [(run, _)] = mirror.open_path(store, tmp_path / "logs", sync_all=False)
    follower = mirror.Follower(run, interval=0.1)
    follower.start()
    try:
        tail = run_view.RunFollower(run)
        tail.poll()
        assert tail.view.state == "running"
        for step in range(1, 6):
            w.add_scalar("loss", 1.0 / (step + 1), step)
            w.flush()
            t0 = time.monotonic()
            wait_until(lambda: (tail.poll(), tail.view.metrics["loss"].count)[1] == step + 1, timeout=5)
            assert time.monotonic() - t0 < 1.0
        with pytest.raises(Exception, match="already followed"):
            mirror.Follower(run).start()
    finally:
        follower.stop()
        w.close()
    assert run.observed_state() == "finished"
    assert run_view.load(run).metrics["loss"].count == 6


def test_runs_tail_follow_follows_an_imported_runs_source_until_interrupted(tmp_path, store):
    """`runs tail -f` of a TensorBoard run: the points written after it started are printed as
    they come (it follows the source, as the TUI does); Ctrl-C ends it and the mirror reads
    "finished", its lock free."""
    import signal
    import subprocess

    from helpers import cli_cmd, cli_env

    _need("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path / "logs" / "live"), flush_secs=3600)
    w.add_scalar("loss", 1.0, 0)
    w.flush()
    _, [(run, _)] = mirror.open_path(store, tmp_path / "logs")
    tail = subprocess.Popen(cli_cmd("--workspace", str(store.workspace.root), "runs", "tail", "-f", "--json",
                                    run.id), env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert json.loads(tail.stdout.readline())["type"] in ("started", "scalars")
        wait_until(lambda: run.observed_state() == "running", timeout=20, what="the source to be followed")
        for step in (1, 2, 3):
            w.add_scalar("loss", 1.0 / (step + 1), step)
        w.flush()
        seen = set()
        while seen != {1, 2, 3}:  # each new point as it comes (readline blocks until one does)
            rec = json.loads(tail.stdout.readline())
            if rec["type"] in ("losses", "scalars"):
                first = rec.get("first_step", rec.get("step", 0))
                seen |= {first + i for i in range(len(rec["values"]))} & {1, 2, 3}
        tail.send_signal(signal.SIGINT)
        assert tail.wait(timeout=20) == 130, tail.stderr.read()
    finally:
        if tail.poll() is None:
            tail.kill()
        w.close()
    assert run.observed_state() == "finished"


def test_250_runs_list_at_once_and_histories_wait(tmp_path, store):
    write_tb(tmp_path / "one", range(200), extra=False)
    src = one_event_file(tmp_path / "one")
    for i in range(250):
        d = tmp_path / "many" / f"run{i:03d}"
        d.mkdir(parents=True)
        shutil.copy(src, d / src.name)
    t0 = time.perf_counter()
    found, out = mirror.open_path(store, tmp_path / "many", sync_all=False)
    summaries = store.summaries()
    elapsed = time.perf_counter() - t0
    assert len(out) == 250 and len(summaries) == 250
    assert elapsed < 5.0  # the bar is 1 s (benchmarks/bench_sources.py); slack for a loaded CI machine
    assert not any(run.events_path.exists() for run, _ in out)  # no history read yet
    run = out[17][0]
    assert mirror.sync(run).metrics["loss"] == 200


# -- the command line ------------------------------------------------------------------------------------
def _cli(ws: Path, capsys, *args: str) -> tuple[int, str, str]:
    from torchdeck.tui.cli import main as cli_main

    code = cli_main(["--workspace", str(ws), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def opened(tmp_path, capsys):
    """A workspace that opened a folder holding a TensorBoard run and a Lightning run."""
    _need("lightning")
    from lightning.pytorch.loggers import CSVLogger

    write_tb(tmp_path / "logs" / "tb" / "exp1", range(30), extra=False, walltime0=1000.0)
    logger = CSVLogger(str(tmp_path / "logs"), name="lightning_logs")
    logger.log_hyperparams({"lr": 0.01})
    for s in range(4):
        logger.log_metrics({"train_loss": 1.0 / (s + 1), "val_loss": 2.0 / (s + 1)}, step=s)
    logger.save()
    ws = tmp_path / "ws"
    code, out, err = _cli(ws, capsys, "open", str(tmp_path / "logs"), "--json")
    assert code == 0, err
    return ws, tmp_path / "logs", json.loads(out)


def test_cli_open_json_lists_the_runs_and_remembers_the_folder(opened, capsys):
    ws, logs, doc = opened
    by_name = {r["name"]: r for r in doc["runs"]}
    assert set(by_name) == {"logs/tb/exp1", "logs/lightning_logs/version_0"}
    assert by_name["logs/tb/exp1"]["source"] == "tensorboard"
    assert by_name["logs/tb/exp1"]["metrics"] == {"loss": 30, "lr": 30}
    assert by_name["logs/lightning_logs/version_0"]["metrics"] == {"loss": 4, "val_loss": 4}
    assert doc["problems"] == []
    code, out, _ = _cli(ws, capsys, "open", "--list", "--json")
    assert json.loads(out) == {"directories": [str(logs)]}
    code, out, _ = _cli(ws, capsys, "open", "--json")  # no PATH: every remembered folder again
    assert code == 0 and {r["id"] for r in json.loads(out)["runs"]} == {r["id"] for r in doc["runs"]}


def test_cli_runs_list_show_export_mark_the_source(opened, capsys, tmp_path):
    ws, logs, doc = opened
    tb = next(r for r in doc["runs"] if r["source"] == "tensorboard")
    code, out, _ = _cli(ws, capsys, "runs", "list", "--json")
    listed = {r["id"]: r for r in json.loads(out)["runs"]}
    assert listed[tb["id"]]["source"] == "tensorboard" and listed[tb["id"]]["state"] == "finished"
    assert listed[tb["id"]]["step"] == 29
    code, out, _ = _cli(ws, capsys, "runs", "list")
    assert "tensorboard" in out and "lightning" in out
    code, out, _ = _cli(ws, capsys, "runs", "show", "logs/tb/exp1", "--json")
    shown = json.loads(out)
    assert shown["read_only"] is True and shown["source"] == "tensorboard" and shown["origin"] == str(logs / "tb" / "exp1")
    assert shown["metrics"]["loss"]["count"] == 30 and shown["metrics"]["loss"]["last"] == pytest.approx(1 / 30)
    code, out, _ = _cli(ws, capsys, "runs", "show", tb["id"])
    assert "source         tensorboard (read-only)" in out
    code, out, _ = _cli(ws, capsys, "runs", "export", tb["id"], "--csv")
    rows = out.strip().splitlines()
    assert rows[0] == "metric,step,value,time" and len(rows) == 1 + 60
    assert rows[1] == "loss,0,1.0,29.0"  # the source's wall time since its first point, at the record's last
    code, out, _ = _cli(ws, capsys, "runs", "show", "logs/lightning_logs/version_0", "--json")
    assert json.loads(out)["params"] == {"lr": 0.01}
    code, out, _ = _cli(ws, capsys, "runs", "show", "logs/lightning_logs/version_0")
    assert 'params         {"lr": 0.01}' in out  # hparams.yaml, the run's config


def test_cli_refuses_to_change_an_imported_run(opened, capsys):
    ws, logs, doc = opened
    rid = doc["runs"][0]["id"]
    for action in ("stop", "pause", "continue", "resume"):
        code, out, err = _cli(ws, capsys, "runs", action, rid, "--json")
        e = json.loads(out)["error"]
        assert code == 2 and "read-only" in e["message"] and "cannot" in e["message"], (action, e)
        assert e["field"] in ("run", "resume")
    before = sorted(p.name for p in logs.rglob("*"))
    code, out, err = _cli(ws, capsys, "runs", "rm", rid)
    assert code == 0 and "untouched" in err
    assert sorted(p.name for p in logs.rglob("*")) == before  # the source stays whole


def test_cli_open_bad_paths(tmp_path, capsys):
    ws = tmp_path / "ws"
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    code, out, err = _cli(ws, capsys, "open", str(tmp_path / "empty"), "--json")
    e = json.loads(out)["error"]
    assert code == 2 and e["code"] == "not_found" and e["field"] == "path" and "no logs under" in e["message"]
    assert "nothing remembered" in e["message"]
    code, out, err = _cli(ws, capsys, "open", str(tmp_path / "nope"), "--json")
    assert code == 2 and json.loads(out)["error"]["code"] == "not_found"
    code, out, err = _cli(ws, capsys, "open", "--forget", str(tmp_path / "empty"), "--json")
    assert code == 2 and json.loads(out)["error"]["field"] == "path"
    code, out, err = _cli(ws, capsys, "open", "--json")
    assert code == 2 and json.loads(out)["error"]["code"] == "usage"


def test_tensorboard_records_across_read_pieces_and_a_replaced_file(tmp_path, store, monkeypatch):
    """Records cut by the reader's own pieces are joined; a file replaced by a shorter one (a
    training started again under the same name) is read again from the start, and the monitor's
    history replaced, not doubled."""
    from torchdeck.sources import tensorboard_files

    write_tb(tmp_path / "logs" / "a", range(60), extra=False)
    monkeypatch.setattr(tensorboard_files, "READ_PIECE", 97)  # far smaller than most records
    _, [(run, res)] = mirror.open_path(store, tmp_path / "logs")
    assert res.metrics == {"loss": 60, "lr": 60} and res.problems == []
    f = one_event_file(tmp_path / "logs" / "a")
    shutil.rmtree(tmp_path / "other", ignore_errors=True)
    write_tb(tmp_path / "other", range(10), f=lambda i: 5.0, extra=False)
    os.replace(one_event_file(tmp_path / "other"), f)
    res = mirror.sync(run)
    assert res.rebuilt and res.metrics == {"loss": 10, "lr": 10}
    v = run_view.load(run)
    assert v.metrics["loss"].values_array().tolist() == [5.0] * 10 and v.step == 9


def test_tensorboard_training_started_again_replaces_what_followed(tmp_path, store):
    """A second event file whose steps go back (a training resumed from a checkpoint at step 30,
    over the same folder): TensorBoard purges the first file's points from step 30 on; so does
    the mirror (a `resumed` record), in one read or across reads."""
    import time as _time

    for label, both_at_once in (("once", True), ("later", False)):
        d = tmp_path / label / "run"
        write_tb(d, range(50), f=lambda i: 1.0, extra=False)
        if not both_at_once:
            _, [(run, _)] = mirror.open_path(store, tmp_path / label)
        _time.sleep(1.1)  # event file names hold the second they were made
        write_tb(d, range(30, 40), f=lambda i: 2.0, extra=False)
        if both_at_once:
            _, [(run, res)] = mirror.open_path(store, tmp_path / label)
        else:
            res = mirror.sync(run)
        v = run_view.load(run)
        loss = v.metrics["loss"]
        assert loss.steps_array().tolist() == list(range(40)), label
        assert loss.values_array().tolist() == [1.0] * 30 + [2.0] * 10, label
        assert res.metrics["loss"] == 40 and v.step == 39, label


def test_hostile_files_are_read_as_far_as_they_make_sense(tmp_path, store):
    """Hand-edited or foreign files: entries of the wrong shape, steps that are not whole numbers or
    past what JSON readers keep, non-finite values, binary junk, torn lines."""
    hf = tmp_path / "logs" / "hf"
    hf.mkdir(parents=True)
    (hf / "trainer_state.json").write_text(
        '{"log_history": [1, "x", null, {"step": "3", "loss": 1}, {"step": true, "loss": 1}, {"step": -5, "loss": 1},'
        ' {"step": 2, "loss": Infinity, "ok": false, "lr": 1e309}, {"step": 99999999999999999999999, "loss": 3},'
        ' {"step": 4, "loss": NaN}], "global_step": 4}')
    ml = tmp_path / "logs" / "mlruns" / "1" / "abc"
    (ml / "metrics").mkdir(parents=True)
    (ml / "meta.yaml").write_text("run_id: abc\nexperiment_id: '1'\n")
    (ml / "metrics" / "loss").write_bytes(b"100 0.5 0\n\xff\xfe junk\n200 0.25 1\n300 nan 2\n400 0.1")
    pl = tmp_path / "logs" / "pl" / "version_0"
    pl.mkdir(parents=True)
    (pl / "metrics.csv").write_bytes(b"step,loss\n" + random.Random(120).randbytes(3000) + b"\n1,0.5\n")
    scan, out = mirror.open_path(store, tmp_path / "logs")
    by_kind = {mirror.imported_from(run)["source"]: (run, res) for run, res in out}
    run, res = by_kind["huggingface"]
    assert res.metrics == {"loss": 2, "lr": 1}
    assert any("2 point(s) at a step below 0 or past 2^53" in p for p in res.problems)
    v = run_view.load(run)
    assert v.metrics["loss"].steps_array().tolist() == [2, 4] and v.metrics["loss"].nonfinite == 2
    run, res = by_kind["mlflow"]
    assert res.metrics == {"loss": 3} and any("not 'timestamp value step'" in p for p in res.problems)
    assert any("incomplete record" in p for p in res.problems)  # "400 0.1" waits for its newline
    run, res = by_kind["lightning"]
    assert res.metrics.get("loss", 0) >= 1  # the good row, whatever the junk parses as
    for run, _ in out:
        assert run_view.load(run).state == "finished"


def test_a_follower_that_dies_leaves_the_run_finished(tmp_path, store):
    """A TUI following an imported run is killed: nothing holds the run any more, and it reads
    "finished" (nothing was lost: the source is still there), never "crashed"."""
    import signal
    import subprocess
    import sys

    write_tb(tmp_path / "logs" / "a", range(5), extra=False)
    _, [(run, _)] = mirror.open_path(store, tmp_path / "logs")
    code = ("import sys, time\nfrom torchdeck.runs.store import Run\nfrom torchdeck.sources import mirror\n"
            "mirror.Follower(Run(sys.argv[1])).start()\nprint('following', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "following"
        assert run.observed_state() == "running"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        live = run.liveness()
        assert live.state == "finished" and "following its source ended" in live.reason
        assert mirror.sync(run).metrics["loss"] == 5
    finally:
        proc.kill()
        proc.wait()


def test_scan_of_a_big_tree_reports_progress_and_can_be_cancelled(tmp_path):
    for i in range(30):
        for j in range(30):
            (tmp_path / "tree" / f"a{i}" / f"b{j}").mkdir(parents=True)
    write_tb(tmp_path / "tree" / "a7" / "b3", range(3), extra=False)
    seen: list[tuple[int, int]] = []
    result = sources.scan(tmp_path / "tree", progress=lambda d, f: seen.append((d, f)))
    assert [f.name for f in result.found] == ["tree/a7/b3"] and result.dirs == 931
    assert seen[0][0] == 200 and seen[-1] == (931, 1) and not result.cancelled
    stopped = sources.scan(tmp_path / "tree", cancelled=lambda: True)
    assert stopped.cancelled and stopped.dirs == 200


def test_without_tensorboard_the_message_names_the_extra(tmp_path, store, monkeypatch):
    """tensorboard is optional at run time: a folder of event files is still listed, and its
    message says what to install; the other sources read on."""
    import sys

    write_tb(tmp_path / "logs" / "tb", range(3), extra=False)
    (tmp_path / "logs" / "pl").mkdir()
    (tmp_path / "logs" / "pl" / "metrics.csv").write_text("step,train_loss\n0,1.0\n")
    import tensorboard.compat.proto as proto

    monkeypatch.delattr(proto, "event_pb2")
    monkeypatch.setitem(sys.modules, "tensorboard.compat.proto.event_pb2", None)  # as if not installed
    _, out = mirror.open_path(store, tmp_path / "logs")
    by_kind = {mirror.imported_from(run)["source"]: (run, res) for run, res in out}
    run, res = by_kind["tensorboard"]
    assert res.metrics == {} and any("needs the tensorboard package" in p and "torchdeck[logs]" in p
                                     for p in res.problems)
    assert "torchdeck[logs]" in run_view.load(run).message
    assert by_kind["lightning"][1].metrics == {"loss": 1}
