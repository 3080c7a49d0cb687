"""Registering a user's own model and reading its summary: the command line and the Models
screen, with every kind of bad input told where it was typed and nothing registered."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from helpers import run_cli
from textual.widgets import Input, Tree
from torchdeck.runs.config import RunConfig
from torchdeck.tui.app import TorchdeckApp
from torchdeck.tui.screens.model_form import AddModelScreen
from torchdeck.tui.screens.models import ModelsScreen
from torchdeck.tui.screens.training import TrainingScreen
from torchdeck.workspace import Workspace
from tui_helpers import screen_text, wait_for

USER_MODULE = textwrap.dedent('''
    import torch.nn as nn

    def make(hidden=8, out=3):
        return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, out))

    def explode():
        raise ValueError("no GPU in the test")

    def not_a_module():
        return 42
''')


@pytest.fixture
def project(tmp_path) -> Path:
    """A user's project directory: their module beside them, torchdeck started there."""
    d = tmp_path / "project"
    d.mkdir()
    (d / "usermodels.py").write_text(USER_MODULE)
    Workspace.open(d / "ws")  # read-only commands need an existing workspace
    return d


def cli(project: Path, *args: str):
    return run_cli("--workspace", str(project / "ws"), *args, cwd=project)


def registered(project: Path) -> list[str]:
    return [m.name for m in Workspace.open(project / "ws").models()]


def test_models_add_show_train_remove(project):
    r = cli(project, "models", "add", "mynet", "usermodels:make", "--args", '{"hidden": 16}', "--input-shape", "1,4",
            "--json")
    assert r.returncode == 0, r.stderr
    added = json.loads(r.stdout)
    assert added["num_params"] == 4 * 16 + 16 + 16 * 3 + 3 and added["output_shape"] == [1, 3]
    assert "mynet" in registered(project)

    r = cli(project, "models", "show", "mynet", "--json", "--batch-size", "8")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["params"]["total"] == added["num_params"]
    assert [layer["type"] for layer in summary["layers"]] == ["Sequential", "Linear", "ReLU", "Linear"]
    assert summary["layers"][-1]["output_shape"] == [8, 3]

    r = cli(project, "models", "list", "--json")
    assert {"mynet", "demo"} <= {m["name"] for m in json.loads(r.stdout)["models"]}

    # A registered name works wherever a model spec does; it has no data of its own.
    r = cli(project, "train", "--model", "mynet", "--epochs", "1")
    assert r.returncode == 2 and "give a data spec" in r.stderr
    (project / "d.csv").write_text("a,b,c,d,label\n" + "".join(f"{i},{i+1},{i%3},{i%5},{i%3}\n" for i in range(60)))
    r = cli(project, "train", "--model", "mynet", "--data", "file:d.csv", "--epochs", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"] == "finished"

    r = cli(project, "models", "remove", "mynet")
    assert r.returncode == 0 and "mynet" not in registered(project)
    r = cli(project, "models", "remove", "mynet")
    assert r.returncode == 2 and "no model named 'mynet'" in r.stderr


@pytest.mark.parametrize("args, cause", [
    (["nomodule:make"], "No module named 'nomodule'"),
    (["usermodels:explode"], "raised ValueError: no GPU in the test"),
    (["usermodels:not_a_module"], "returned int, not a torch.nn.Module"),
    (["usermodels:missing"], "has no attribute 'missing'"),
    (["usermodels:make", "--args", "{hidden: 3}"], "not valid JSON"),
    (["usermodels:make", "--args", "[1, 2]"], "must be a JSON object"),
    (["usermodels:make", "--args", '{"width": 3}'], "unexpected keyword argument 'width'"),
    (["usermodels:make", "--input-shape", "1,5"], "an input of shape (1, 5) float32 was rejected"),
    (["usermodels:make", "--input-shape", "ten"], "input shape must be whole numbers"),
    (["not-a-spec"], "package.module:callable"),
])
def test_models_add_refuses_bad_input_with_its_cause(project, args, cause):
    r = cli(project, "models", "add", "bad", *args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and cause in lines[0], r.stderr
    assert "bad" not in registered(project)


def test_models_add_refuses_a_taken_or_bad_name(project):
    assert cli(project, "models", "add", "demo", "usermodels:make").returncode == 2
    r = cli(project, "models", "add", "two words", "usermodels:make")
    assert r.returncode == 2 and "model name" in r.stderr


def test_data_show(project):
    r = cli(project, "data", "show", "synthetic:classification", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["target_kind"] == "classes" and info["train_size"] > 0 and info["val_size"] > 0
    r = cli(project, "data", "show", "file:missing.npz")
    assert r.returncode == 2 and "missing.npz" in r.stderr


# -- the Models screen ---------------------------------------------------------------------------
def make_app(project: Path, monkeypatch) -> TorchdeckApp:
    monkeypatch.chdir(project)  # the user's modules are importable from where torchdeck started
    return TorchdeckApp(Workspace.open(project / "ws"), default_config=RunConfig(epochs=1, dataset_size=2048))


async def fill(pilot, app, values: dict[str, str]) -> None:
    for fid, value in values.items():
        app.screen.query_one(f"#{fid}", Input).value = value
    app.screen.query_one("#m-shape", Input).focus()  # Enter in the last field registers
    await pilot.press("enter")


async def test_register_a_model_from_the_form(project, monkeypatch):
    app = make_app(project, monkeypatch)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.torch_ready, 60, "torch")
        await pilot.press("a")
        assert isinstance(app.screen, AddModelScreen)
        await fill(pilot, app, {"m-name": "mynet", "m-spec": "nomodule:make", "m-kwargs": "", "m-shape": "1,4"})
        await wait_for(pilot, lambda: "No module named 'nomodule'" in screen_text(app), 30, "the inline error")
        assert app.focused is app.screen.query_one("#m-spec", Input)  # where the cause was typed
        assert "mynet" not in registered(project)

        await fill(pilot, app, {"m-spec": "usermodels:make", "m-kwargs": "{hidden: 2}"})
        await wait_for(pilot, lambda: "not valid JSON" in screen_text(app), 30, "the JSON error")
        assert app.focused is app.screen.query_one("#m-kwargs", Input)

        await fill(pilot, app, {"m-kwargs": '{"hidden": 16}', "m-shape": "1,7"})
        await wait_for(pilot, lambda: "shape (1, 7)" in screen_text(app), 30, "the shape error")
        assert app.focused is app.screen.query_one("#m-shape", Input)
        assert "mynet" not in registered(project)

        await fill(pilot, app, {"m-shape": "1,4"})
        await wait_for(pilot, lambda: isinstance(app.screen, ModelsScreen), 30, "the form to close")
        assert "mynet" in registered(project)
        screen = app.screen
        await wait_for(pilot, lambda: screen.selected() is not None and screen.selected().name == "mynet", 10)
        await wait_for(pilot, lambda: "(1, 4) -> [1, 3]" in screen_text(app) or "-> [32, 3]" in screen_text(app),
                       30, "the summary")
        assert "131" in screen_text(app)  # 4*16+16 + 16*3+3 parameters

        await pilot.press("v")  # the layer tree
        tree = screen.query_one("#layers", Tree)
        labels = [str(node.label) for node in tree.root.children]
        assert any("Linear" in label and "[32, 16]" in label for label in labels)

        await pilot.press("d")
        await pilot.press("y")
        await wait_for(pilot, lambda: "mynet" not in registered(project), 10, "removal")


async def test_enter_moves_through_the_form_before_registering(project, monkeypatch):
    app = make_app(project, monkeypatch)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("a")
        for text in ("mynet", "usermodels:make", '{"hidden": 4}'):
            app.focused.value = text
            await pilot.press("enter")
            assert isinstance(app.screen, AddModelScreen)
        assert app.focused is app.screen.query_one("#m-shape", Input)
        app.focused.value = "1,4"
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelsScreen), 60, "the form to close")
        assert Workspace.open(project / "ws").model("mynet").input_shape == [4]


async def test_escape_cancels_the_form_and_registers_nothing(project, monkeypatch):
    app = make_app(project, monkeypatch)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("a")
        app.screen.query_one("#m-name", Input).value = "half"
        await pilot.press("escape")
        assert isinstance(app.screen, ModelsScreen)
        assert registered(project) == ["demo"]


async def test_builtins_cannot_be_removed_and_t_trains_the_selected_model(project, monkeypatch):
    app = make_app(project, monkeypatch)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await pilot.press("down")  # builtin:linear
        assert screen.selected().name == "builtin:linear"
        await pilot.press("d")
        assert isinstance(app.screen, ModelsScreen)  # no dialog: built-ins stay
        await pilot.press("t")
        await wait_for(pilot, lambda: isinstance(app.screen, TrainingScreen), 10)
        await pilot.pause(0.2)
        assert str(app.screen.query_one("#f-model").value) == "builtin:linear"


async def test_export_of_an_unregistered_models_checkpoint_asks_for_trust(project, monkeypatch):
    """A checkpoint whose model spec is neither built-in nor registered here is not rebuilt
    (its code not imported) until the user says so in a dialog that names the risk."""
    from torchdeck.runs.launch import prepare
    from torchdeck.runs.store import RunStore
    from torchdeck.runs.worker import execute, take_lock
    from torchdeck.tui.screens.dialogs import ConfirmTrust

    monkeypatch.chdir(project)
    ws = Workspace.open(project / "ws")
    (project / "d.csv").write_text("a,b,c,d,label\n" + "".join(f"{i % 7},{i % 5},{i % 3},{i % 2},{i % 2}\n"
                                                               for i in range(200)))
    from torchdeck.models import catalogue as models

    models.register(ws, "mynet", "usermodels:make", kwargs={"out": 2}, input_shape=[4], import_root=str(project))
    cfg = prepare(ws, RunConfig(model="mynet", data="file:d.csv", epochs=1, threads=1), directory=str(project))
    run = RunStore(ws).create(cfg)
    lock = take_lock(run)
    try:
        assert execute(run, heartbeat=False) == "finished"
    finally:
        lock.close()
    ws.remove_model("mynet")  # now the checkpoint names code nobody here vouched for

    app = TorchdeckApp(ws)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("4")
        await wait_for(pilot, lambda: app.screen.sources, 30, "the checkpoint list")
        await pilot.press("e")
        # the dialog's text, not only the dialog: a screen just pushed may not be drawn yet
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmTrust) and "runs its code" in screen_text(app),
                       120, "the trust dialog")
        text = screen_text(app)
        assert "usermodels:make" in text and "runs its code" in text
        assert not list(ws.exports_dir.glob("*.onnx"))
        await pilot.press("y")
        await wait_for(pilot, lambda: "matches PyTorch" in screen_text(app), 180, "the export report")
        assert len(list(ws.exports_dir.glob("*.onnx"))) == 1
