"""Structured errors: a code from errors.CODES and the field at fault travel with every error;
callers decide from them, never from the wording. With --json a failed command prints
{"error": {code, message, field}} on stdout; without, one line on stderr. Values past what a
run could ever do are refused with their limit."""

from __future__ import annotations

import json
import re
import textwrap

import pytest
from helpers import REPO, run_cli
from torchdeck import errors
from torchdeck.errors import CODES, InvalidRequest, TorchdeckError, field_for
from torchdeck.runs.config import (
    MAX_EPOCHS,
    MAX_SEED,
    RunConfig,
    max_threads,
    parse_number,
)
from torchdeck.tui import cli
from torchdeck.workspace import Workspace


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace.open(tmp_path / "ws")


def run_main(ws: Workspace, capsys, *argv: str) -> tuple[int, dict | None, str]:
    """The command line in this process (fast): exit status, the JSON on stdout, stderr."""
    status = cli.main(["--workspace", str(ws.root), *argv])
    captured = capsys.readouterr()
    doc = json.loads(captured.out) if captured.out.strip() else None
    return status, doc, captured.err


# -- the code list -----------------------------------------------------------------------------------
def test_readme_lists_every_code_and_no_other():
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    listed = dict(re.findall(r"^- `(\w+)`: (.+)$", section, flags=re.M))
    assert listed == CODES


def test_every_error_class_has_a_known_code():
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, TorchdeckError)]
    assert len(classes) >= 10
    for c in classes:
        assert c.default_code in CODES, c
        assert c.exit_code in (1, 2), c
    with pytest.raises(AssertionError):
        InvalidRequest("x", code="no_such_code")


@pytest.mark.parametrize("name, field", [("batch size", "batch_size"), ("learning rate", "lr"), ("epochs", "epochs"),
                                         ("dataset size", "dataset_size"), ("input-shape", "input_shape"),
                                         ("keyword arguments", "args")])
def test_field_for_names(name, field):
    assert field_for(name) == field
    assert field in errors.FIELDS


@pytest.mark.parametrize("text, name, kind, field", [("abc", "learning rate", float, "lr"),
                                                    ("1.5", "batch size", int, "batch_size"),
                                                    ("nan", "learning rate", float, "lr"),
                                                    ("1e999", "learning rate", float, "lr"),
                                                    ("9" * 5000, "seed", int, "seed")])
def test_parse_number_sets_the_field(text, name, kind, field):
    with pytest.raises(InvalidRequest) as e:
        parse_number(text, name, kind)
    assert e.value.field == field and len(str(e.value)) < 200


# -- bounds ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, field, limit", [
    ({"epochs": 10**20}, "epochs", f"{MAX_EPOCHS:,}"),
    ({"seed": 99999999999999999999}, "seed", f"{MAX_SEED:,}"),
    ({"seed": -1}, "seed", "at least 0"),
    ({"threads": 100000}, "threads", f"{max_threads():,}"),
    ({"threads": 0}, "threads", "at least 1"),
    ({"batch_size": 10**9}, "batch_size", "limit"),
    ({"dataset_size": 10**12}, "dataset_size", "limit"),
    ({"lr": float("inf")}, "lr", "finite"),
    ({"lr": float("nan")}, "lr", "finite"),
    ({"lr": 0}, "lr", "positive"),
    ({"lr": 1e300}, "lr", "limit"),
    ({"keep_checkpoints": 0}, "keep_checkpoints", "at least 1"),
    ({"name": "two\nlines"}, "name", "printable"),
    ({"optimizer": "lion"}, "optimizer", "sgd"),
    ({"loss": "hinge"}, "loss", "mse"),
])
def test_validate_refuses_with_the_field_and_the_limit(changes, field, limit):
    with pytest.raises(InvalidRequest) as e:
        RunConfig(**changes).validate()
    assert e.value.field == field and e.value.code == "invalid_value"
    assert limit in str(e.value)


def test_limits_let_real_runs_through():
    RunConfig(epochs=MAX_EPOCHS, seed=MAX_SEED, threads=max_threads(), batch_size=4096, dataset_size=10**6,
              lr=10.0).validate()


@pytest.mark.parametrize("argv, field", [
    (["--seed", "99999999999999999999"], "seed"),
    (["--threads", "100000"], "threads"),
    (["--epochs", str(10**20)], "epochs"),
    (["--batch-size", "0"], "batch_size"),
    (["--dataset-size", "99999999999"], "dataset_size"),
    (["--lr", "inf"], "lr"),
    (["--lr", "nan"], "lr"),
])
def test_train_bounds_exit_2_with_json(ws, capsys, argv, field):
    status, doc, err = run_main(ws, capsys, "train", "--model", "demo", *argv, "--json")
    assert status == 2
    assert doc["error"]["field"] == field and doc["error"]["code"] == "invalid_value"
    assert len(err.splitlines()) == 1 and "internal" not in err
    assert not any(ws.runs_dir.iterdir())


# -- every failure in JSON ---------------------------------------------------------------------------
def test_internal_error_is_json_too(ws, capsys, monkeypatch):
    def boom(ws, args):
        raise RuntimeError("a bug")

    monkeypatch.setitem(cli.COMMANDS, ("models", "list"), boom)
    status, doc, err = run_main(ws, capsys, "models", "list", "--json")
    assert status == 1
    assert doc == {"error": {"code": "internal", "message": doc["error"]["message"], "field": None}}
    assert "RuntimeError: a bug" in doc["error"]["message"] and len(err.splitlines()) == 1


def test_usage_errors_in_json_name_the_option(tmp_path):
    ws = Workspace.open(tmp_path / "ws").root
    out = run_cli("--workspace", str(ws), "export", "onnx", "--json", cwd=tmp_path)
    assert out.returncode == 2
    assert json.loads(out.stdout)["error"] | {"message": ""} == {"code": "usage", "field": "checkpoint", "message": ""}
    assert len(out.stderr.splitlines()) == 1


def test_without_json_stdout_stays_empty(ws, capsys):
    status, doc, err = run_main(ws, capsys, "train", "--model", "demo", "--epochs", "0")
    assert status == 2 and doc is None and err.startswith("torchdeck: error: --epochs")


# -- export: the output is checked before any work --------------------------------------------------
def test_export_out_existing_directory_is_refused_first(ws, capsys, tmp_path):
    (tmp_path / "outdir").mkdir()
    # The checkpoint does not even exist: the output is what is checked first.
    status, doc, _ = run_main(ws, capsys, "export", "onnx", "--checkpoint", str(tmp_path / "nope"),
                              "--out", str(tmp_path / "outdir"), "--json")
    assert status == 2 and (doc["error"]["code"], doc["error"]["field"]) == ("exists", "out")


def test_export_out_unwritable_is_refused_first(ws, capsys, tmp_path):
    (tmp_path / "a-file").write_text("")
    status, doc, _ = run_main(ws, capsys, "export", "onnx", "--checkpoint", str(tmp_path / "nope"),
                              "--out", str(tmp_path / "a-file" / "m.onnx"), "--json")
    assert (doc["error"]["code"], doc["error"]["field"]) == ("unreadable", "out") and status in (1, 2)
    status, doc, _ = run_main(ws, capsys, "export", "onnx", "--checkpoint", str(tmp_path / "nope"),
                              "--out", "/proc/m.onnx", "--json")
    assert doc["error"]["field"] == "out" and doc["error"]["code"] in ("unreadable", "not_found")


@pytest.mark.parametrize("opset", ["6", "99", "x"])
def test_export_opset_range(ws, capsys, tmp_path, opset):
    status, doc, _ = run_main(ws, capsys, "export", "onnx", "--checkpoint", str(tmp_path / "nope"),
                              "--opset", opset, "--json")
    assert status == 2 and doc["error"]["field"] == "opset"


# -- the form's field comes from the engine call it makes --------------------------------------------
def test_prepare_names_the_data_field_for_a_bad_data_spec(ws, tmp_path, monkeypatch):
    """The bug: the training form focused Model for `foo.bar:baz` as data. The engine call the
    form makes says which field is at fault."""
    from torchdeck.runs.launch import prepare

    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidRequest) as e:
        prepare(ws, RunConfig(model="demo", data="foo.bar:baz"), directory=str(tmp_path))
    assert e.value.field == "data"
    with pytest.raises(InvalidRequest) as e:
        prepare(ws, RunConfig(model="foo.bar:baz", data="synthetic:regression"), directory=str(tmp_path))
    assert e.value.field == "model"
    with pytest.raises(InvalidRequest) as e:  # the data does not fit the model: about the data
        prepare(ws, RunConfig(model="builtin:cnn", data="synthetic:regression"), directory=str(tmp_path))
    assert e.value.field == "data"
    with pytest.raises(InvalidRequest) as e:
        prepare(ws, RunConfig(model="demo", data="synthetic:nosuch"), directory=str(tmp_path))
    assert e.value.field == "data"


MISLEADING = textwrap.dedent('''
    import torch.nn as nn

    # Its message reads like an input-shape or a name problem; the field says it is the spec's.
    raise ValueError("input shape must be whole numbers; model name taken")
''')


async def test_model_form_focuses_from_the_field_not_the_wording(tmp_path, monkeypatch):
    from textual.widgets import Input
    from torchdeck.tui.app import TorchdeckApp
    from torchdeck.tui.screens.model_form import AddModelScreen
    from tui_helpers import screen_text, wait_for

    (tmp_path / "misleading.py").write_text(MISLEADING)
    (tmp_path / "fine.py").write_text("import torch.nn as nn\ndef make():\n    return nn.Linear(4, 2)\n")
    monkeypatch.chdir(tmp_path)
    ws = Workspace.open(tmp_path / "ws")
    app = TorchdeckApp(ws)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.torch_ready, 60, "torch")
        await pilot.press("a")
        assert isinstance(app.screen, AddModelScreen)

        async def submit(values):
            for fid, value in values.items():
                app.screen.query_one(f"#{fid}", Input).value = value
            app.screen.query_one("#m-shape", Input).focus()
            await pilot.press("enter")

        await submit({"m-name": "mine", "m-spec": "misleading:make", "m-kwargs": "", "m-shape": "1,4"})
        await wait_for(pilot, lambda: "ValueError" in screen_text(app), 60, "the import error")
        assert app.focused is app.screen.query_one("#m-spec", Input)
        # The whole message is shown, not cut.
        assert "model name taken" in screen_text(app).replace("\n", " ")

        await submit({"m-name": "demo", "m-spec": "fine:make"})  # taken: the Name field
        await wait_for(pilot, lambda: "already registered" in screen_text(app), 60, "the name error")
        assert app.focused is app.screen.query_one("#m-name", Input)

        await submit({"m-name": "mine", "m-kwargs": '{"x": NaN}'})  # not storable: the Arguments field
        await wait_for(pilot, lambda: "finite" in screen_text(app), 60, "the arguments error")
        assert app.focused is app.screen.query_one("#m-kwargs", Input)
        assert [m.name for m in ws.models()] == ["demo"]


def test_error_json_shape():
    e = InvalidRequest("bad", field="epochs")
    assert e.to_json() == {"code": "invalid_value", "message": "bad", "field": "epochs"}
