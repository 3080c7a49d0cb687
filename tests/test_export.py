"""`torchdeck runs export RUN --csv|--json [--out FILE]` and torchdeck.runs.export: every point
of every metric, exactly as written, agreeing with RunView across resumes; the bad inputs."""

from __future__ import annotations

import csv
import io
import json
import math
import random

import pytest
from torchdeck.runs import events as ev
from torchdeck.runs import export
from torchdeck.runs.config import RunConfig
from torchdeck.runs.store import RunStore
from torchdeck.runs.view import RunView
from torchdeck.runs.writer import RunWriter
from torchdeck.tui.cli import main
from torchdeck.workspace import Workspace


def line(record: dict) -> str:
    return json.dumps(record, separators=(",", ":")) + "\n"


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace.open(tmp_path / "ws")


def make_run(ws, text: str, name: str = "exp"):
    run = RunStore(ws).create(RunConfig(model="demo", epochs=2, name=name))
    run.events_path.write_text(text)
    return run


def cli(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def started(total=100) -> dict:
    return {"type": "started", "run_id": "r", "config": {"model": "demo", "epochs": 2}, "total_steps": total,
            "steps_per_epoch": total // 2, "num_params": 1, "device": "cpu", "time": 0.0, "version": 2}


def written_run(ws, seed: int):
    """A run written through RunWriter by three writers: resumes back to earlier steps, scalars at
    consecutive and scattered steps, non-finite losses, a user's metric with a comma in its name."""
    rng = random.Random(seed)
    run = RunStore(ws).create(RunConfig(model="demo", epochs=2, name=f"w{seed}"))
    step = 0
    for writer_no, resume_to in enumerate((None, 37, 12)):
        clock = iter(x * 0.125 for x in range(10_000)).__next__
        w = RunWriter(run, clock=clock, resume_step=resume_to)
        if resume_to is not None:
            step = resume_to
        w.emit(ev.Started(run_id=run.id, config={"model": "demo", "epochs": 2}, total_steps=100, steps_per_epoch=50,
                          num_params=1, device="cpu", time=0.0))
        for _ in range(rng.randint(3, 6)):
            n = rng.randint(1, 9)
            floats = [rng.choice([rng.random(), 0.1 + 0.2, 1e-300, float("nan"), float("inf"), -float("inf")])
                      for _ in range(n)]
            w.losses(step + 1, 1 + step // 50, floats)
            w.scalars("lr", list(range(step + 1, step + n + 1)), [0.01 * (k + 1) for k in range(n)])
            w.scalars("grad_norm", [step + n], [rng.choice([rng.random(), float("nan")])])
            w.scalars("my,metric", [step + 1, step + n], [1.5, -2.5]) if n > 1 else None
            step += n
        w.scalars("val_loss", [step], [rng.random()])
        w.ended("stopped", step, None)
    return run


def view_of(path) -> RunView:
    view = RunView("r")
    view.feed(ev.read_all(path))
    return view


def same(a: float | None, b: float) -> bool:
    return (a is None and math.isnan(b)) or (a is not None and a == b)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_json_export_agrees_with_runview_across_resumes(ws, capsys, seed):
    run = written_run(ws, seed)
    view = view_of(run.events_path)
    assert view.resumes == 2
    code, out, _ = cli(capsys, "runs", "export", run.id, "--json", "--workspace", str(ws.root))
    assert code == 0
    doc = json.loads(out)
    assert doc["run"] == run.id
    expected = {name: s for name, s in view.metrics.items() if s.count}
    assert set(doc["metrics"]) == set(expected)
    for name, series in expected.items():
        got = doc["metrics"][name]
        assert got["steps"] == list(series.steps), name
        assert len(got["values"]) == len(series.values)
        assert all(same(a, b) for a, b in zip(got["values"], series.values)), name
        bad = {i for i, v in enumerate(got["values"]) if v is None}
        assert {i for i, _ in got.get("nonfinite", [])} == bad
        assert all(r in ("nan", "inf", "-inf") for _, r in got.get("nonfinite", []))


@pytest.mark.parametrize("seed", [1, 4])
def test_csv_export_holds_the_same_points_as_json_with_reasons_and_times(ws, capsys, seed):
    run = written_run(ws, seed)
    _, js, _ = cli(capsys, "runs", "export", run.id, "--json", "--workspace", str(ws.root))
    code, text, _ = cli(capsys, "runs", "export", run.id, "--csv", "--workspace", str(ws.root))
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == ["metric", "step", "value", "time"]
    by_metric: dict[str, list[tuple[int, str]]] = {}
    for r in rows:
        by_metric.setdefault(r["metric"], []).append((int(r["step"]), r["value"]))
    doc = json.loads(js)["metrics"]
    assert set(by_metric) == set(doc) and "my,metric" in doc
    for name, m in doc.items():
        reasons = dict(map(tuple, m.get("nonfinite", [])))
        want = [(s, reasons[i] if v is None else repr(v)) for i, (s, v) in enumerate(zip(m["steps"], m["values"]))]
        assert by_metric[name] == want, name
    # time: the writer's clock at each chunk, continued across writers: never going back
    times = [float(r["time"]) for r in rows if r["metric"] == "loss"]
    assert times == sorted(times) and times[0] >= 0


def test_values_round_trip_exactly(ws, capsys):
    values = [0.1 + 0.2, 1e-300, 5e-324, 1.7976931348623157e308, -0.0, 123456789.12345679]
    run = make_run(ws, line(started()) + line({"type": "losses", "first_step": 1, "epoch": 1, "values": values,
                                               "elapsed": 0.25}))
    _, text, _ = cli(capsys, "runs", "export", run.id, "--csv", "--workspace", str(ws.root))
    assert [float(r["value"]) for r in csv.DictReader(io.StringIO(text))] == values
    assert [r["time"] for r in csv.DictReader(io.StringIO(text))] == ["0.25"] * len(values)
    _, js, _ = cli(capsys, "runs", "export", run.id, "--json", "--workspace", str(ws.root))
    assert json.loads(js)["metrics"]["loss"]["values"] == values


def test_a_version_1_file_exports_validation_from_its_epoch_records_and_no_time(ws, capsys):
    text = (line({**started(10), "version": 1})
            + line({"type": "losses", "first_step": 1, "epoch": 1, "values": [4.0, None, 2.0], "nonfinite": [[1, "inf"]]})
            + line({"type": "epoch", "epoch": 1, "step": 3, "train_loss": 3.0, "val_loss": 1.5, "seconds": 0.5,
                    "val_accuracy": 0.5}))
    run = make_run(ws, text)
    _, out, _ = cli(capsys, "runs", "export", run.id, "--csv", "--workspace", str(ws.root))
    assert out.splitlines() == ["metric,step,value,time", "loss,1,4.0,", "loss,2,inf,", "loss,3,2.0,",
                                "val_loss,3,1.5,", "val_accuracy,3,0.5,"]


def test_torn_last_line_ignored_corrupt_lines_skipped_and_counted(ws, capsys):
    text = (line(started()) + "not json at all\n" + "[1, 2]\n"
            + line({"type": "losses", "first_step": "x", "epoch": 1, "values": [1.0]})  # a known type, wrong shape
            + line({"type": "from_the_future", "x": 1})  # an unknown type: a newer writer's, not damage
            + line({"type": "losses", "first_step": 1, "epoch": 1, "values": [1.0, 0.5], "elapsed": 1.0})
            + '{"type":"losses","first_step":3,"epoch":1,"val')
    run = make_run(ws, text)
    code, out, err = cli(capsys, "runs", "export", run.id, "--csv", "--workspace", str(ws.root))
    assert code == 0
    assert out.splitlines()[1:] == ["loss,1,1.0,1.0", "loss,2,0.5,1.0"]
    assert "3 line(s)" in err and "skipped" in err


def test_unknown_run_is_a_clear_error_and_structured_with_json(ws, capsys):
    code, out, err = cli(capsys, "runs", "export", "nosuchrun", "--csv", "--workspace", str(ws.root))
    assert code == 2 and out == "" and "no run 'nosuchrun'" in err
    code, out, err = cli(capsys, "runs", "export", "nosuchrun", "--json", "--workspace", str(ws.root))
    assert code == 2 and json.loads(out)["error"]["code"] == "not_found"
    assert json.loads(out)["error"]["field"] == "run"


@pytest.mark.parametrize("args", [[], ["--csv", "--json"]], ids=["neither", "both"])
def test_format_flags_are_one_of_two(ws, capsys, args):
    run = make_run(ws, line(started()))
    code, out, err = cli(capsys, "runs", "export", run.id, *args, "--workspace", str(ws.root))
    assert code == 2 and "--csv" in err and "--json" in err


def test_global_json_with_csv_is_refused(ws, capsys):
    run = make_run(ws, line(started()))
    code, out, _ = cli(capsys, "--json", "runs", "export", run.id, "--csv", "--workspace", str(ws.root))
    assert code == 2 and json.loads(out)["error"]["code"] == "usage"


def test_out_writes_atomically_and_reports(ws, capsys, tmp_path):
    run = make_run(ws, line(started()) + line({"type": "losses", "first_step": 1, "epoch": 1, "values": [1.0]}))
    target = tmp_path / "out.json"
    target.write_text("old")
    code, out, err = cli(capsys, "runs", "export", run.id, "--json", "--out", str(target), "--workspace", str(ws.root))
    assert code == 0 and json.loads(target.read_text())["metrics"]["loss"]["values"] == [1.0]
    assert json.loads(out)["points"] == {"loss": 1} and "1 point(s)" in err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_unwritable_out_fails_clearly_and_leaves_nothing(ws, capsys, tmp_path):
    run = make_run(ws, line(started()))
    a_file = tmp_path / "plain"
    a_file.write_text("x")
    code, out, err = cli(capsys, "runs", "export", run.id, "--csv", "--out", str(a_file / "x.csv"),
                         "--workspace", str(ws.root))  # its "directory" is a file: even root cannot
    assert code == 1 and "cannot write" in err and str(a_file / "x.csv") in err and out == ""
    code, out, err = cli(capsys, "runs", "export", run.id, "--json", "--out", str(tmp_path / "no" / "x.json"),
                         "--workspace", str(ws.root))
    assert code != 0 and json.loads(out)["error"]["field"] == "out"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "ws"]


def test_a_failure_mid_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "keep.csv"
    target.write_text("old contents")

    def half(f):
        f.write("metric,step")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        export.write_atomic(target, half)
    assert target.read_text() == "old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.csv"]


def test_a_run_without_events_exports_empty(ws, capsys):
    run = RunStore(ws).create(RunConfig(model="demo", epochs=2))
    _, out, _ = cli(capsys, "runs", "export", run.id, "--csv", "--workspace", str(ws.root))
    assert out == export.CSV_HEADER
    _, out, _ = cli(capsys, "runs", "export", run.id, "--json", "--workspace", str(ws.root))
    assert json.loads(out) == {"run": run.id, "metrics": {}}


def test_csv_is_streamed_chunk_by_chunk(tmp_path):
    """A file several chunks long is handed out in several pieces, never whole."""
    path = tmp_path / "events.jsonl"
    with open(path, "w") as f:
        f.write(line(started(10**6)))
        for first in range(1, 400_001, 1000):
            f.write(line({"type": "losses", "first_step": first, "epoch": 1,
                          "values": [1.0 / (first + i) for i in range(1000)]}))
    pieces = list(export.blocks(path))
    assert len(pieces) >= 3
    assert sum(len(b.steps) for p in pieces for b in p) == 400_000
