"""The workspace registry (models.toml) and which workspace a command uses.

One bad value must not break the workspace: what TOML cannot hold is refused with its field; a
damaged models.toml is reported (file and line) while built-ins, runs and checkpoints go on. A
read-only command never makes a workspace out of a typo."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import tomllib
from helpers import cli_env, run_cli
from torchdeck.errors import Corrupt, InvalidRequest
from torchdeck.models import catalogue
from torchdeck.workspace import RegisteredModel, Workspace


def cli(ws, *args, cwd):
    return run_cli("--workspace", str(ws), *args, cwd=cwd)


# -- values models.toml cannot hold ------------------------------------------------------------------
@pytest.mark.parametrize("args", ['{"negative_slope": Infinity}', '{"negative_slope": NaN}',
                                  '{"negative_slope": -Infinity}', '{"negative_slope": null}',
                                  '{"negative_slope": 99999999999999999999999}',
                                  '{"nested": {"deep": [1, NaN]}}'])
def test_models_add_refuses_what_toml_cannot_hold(tmp_path, args):
    ws = Workspace.open(tmp_path / "ws")
    before = ws.models_file.read_bytes()
    out = cli(ws.root, "models", "add", "leaky", "torch.nn:LeakyReLU", "--args", args, "--json", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    error = json.loads(out.stdout)["error"]
    assert (error["code"], error["field"]) == ("invalid_value", "args")
    assert len(out.stderr.splitlines()) == 1
    assert ws.models_file.read_bytes() == before
    out = cli(ws.root, "models", "list", "--json", cwd=tmp_path)  # the workspace still works
    assert out.returncode == 0 and json.loads(out.stdout)["registry_error"] is None


def test_lone_surrogate_in_a_description_is_refused(tmp_path):
    """A byte that is not UTF-8 on the command line arrives as a lone surrogate."""
    ws = Workspace.open(tmp_path / "ws")
    before = ws.models_file.read_bytes()
    cmd = [sys.executable.encode(), b"-m", b"torchdeck.tui.cli", b"--workspace", str(ws.root).encode(), b"models",
           b"add", b"leaky", b"torch.nn:LeakyReLU", b"--description", b"caf\xe9 \xff", b"--json"]
    out = subprocess.run(cmd, cwd=tmp_path, env=cli_env(), capture_output=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert json.loads(out.stdout)["error"]["field"] == "description"
    assert ws.models_file.read_bytes() == before
    with pytest.raises(InvalidRequest) as e:
        catalogue.register(ws, "leaky", "torch.nn:LeakyReLU", description="\ud800")
    assert e.value.field == "description"


def test_what_is_written_reads_back(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    odd = RegisteredModel(name="odd.name-1", spec="torch.nn:LeakyReLU",
                          kwargs={"negative_slope": 0.5, "inplace": False, "s": 'quote " and \\ and \n newline',
                                  "n": [1, 2, {"k": -3}]},
                          description="été — ünïcode, \"quotes\", [brackets] and = signs",
                          input_shape=[4], import_root=str(tmp_path / "dir with spaces"))
    ws.add_model(odd)
    tomllib.loads(ws.models_file.read_text())
    assert ws.model("odd.name-1") == odd and ws.registry_problem is None


def test_a_valid_model_with_leaky_relu_registers(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    entry, result = catalogue.register(ws, "leaky", "torch.nn:LeakyReLU", kwargs={"negative_slope": 0.2},
                                       input_shape=[3], import_root=str(tmp_path))
    assert ws.model("leaky").kwargs == {"negative_slope": 0.2} and result.output_shape == [1, 3]


# -- a damaged registry -------------------------------------------------------------------------------
DAMAGED = '[models.demo]\nspec = "builtin:linear"\n\n[models.leaky]\nspec = "torch.nn:LeakyReLU"\nkwargs = { "negative_slope" = Infinity }\n'


def test_damaged_registry_is_reported_and_the_rest_goes_on(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    ws.models_file.write_text(DAMAGED)
    damaged = ws.models_file.read_bytes()

    out = cli(ws.root, "models", "list", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert "models.toml" in doc["registry_error"] and "line 6" in doc["registry_error"]
    assert {m["name"] for m in doc["models"]} == {"builtin:linear", "builtin:mlp", "builtin:cnn",
                                                  "builtin:tiny-transformer"}
    [warning] = out.stderr.splitlines()  # one notice, naming the file and the line
    assert "warning" in warning and str(ws.models_file) in warning and "line 6" in warning

    out = cli(ws.root, "models", "list", cwd=tmp_path)
    assert "registry is damaged" in out.stdout and "builtin:linear" in out.stdout

    for args in (["runs", "list", "--json"], ["models", "show", "builtin:mlp", "--json"],
                 ["data", "show", "synthetic:regression", "--json"]):
        out = cli(ws.root, *args, cwd=tmp_path)
        assert out.returncode == 0, (args, out.stderr)
        json.loads(out.stdout)

    out = cli(ws.root, "models", "add", "lin", "builtin:linear", "--json", cwd=tmp_path)
    assert out.returncode == 1 and json.loads(out.stdout)["error"]["code"] == "corrupt"
    out = cli(ws.root, "models", "remove", "demo", "--json", cwd=tmp_path)
    assert out.returncode == 1 and json.loads(out.stdout)["error"]["code"] == "corrupt"
    assert ws.models_file.read_bytes() == damaged  # never overwritten: the user's entries stay


def test_damaged_registry_in_process(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    ws.models_file.write_bytes(b"\xff\xfe not utf-8")
    assert ws.models() == [] and "models.toml" in ws.registry_problem
    with pytest.raises(Corrupt):
        ws.add_model(RegisteredModel(name="x", spec="builtin:linear"))
    names = [e.name for e in catalogue.catalogue(ws)]
    assert names == ["builtin:linear", "builtin:mlp", "builtin:cnn", "builtin:tiny-transformer"]


async def test_tui_opens_on_a_damaged_registry(tmp_path):
    from torchdeck.tui.app import TorchdeckApp
    from tui_helpers import screen_text, wait_for

    ws = Workspace.open(tmp_path / "ws")
    ws.models_file.write_text(DAMAGED)
    app = TorchdeckApp(Workspace.open(tmp_path / "ws"))
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: "mlp" in screen_text(app), 30, "the built-ins listed")
        await pilot.press("3")
        await pilot.pause()
        assert app.is_running


# -- which workspace ----------------------------------------------------------------------------------
READ_ONLY = [["models", "list"], ["models", "show", "builtin:linear"], ["runs", "list"], ["runs", "show", "x"],
             ["ckpt", "inspect", "x"], ["data", "show", "synthetic:regression"]]


@pytest.mark.parametrize("argv", READ_ONLY, ids=lambda a: " ".join(a[:2]))
def test_read_only_command_on_a_missing_workspace_is_an_error(tmp_path, argv):
    typo = tmp_path / "wokrspace"
    out = cli(typo, *argv, "--json", cwd=tmp_path)
    assert out.returncode == 2
    assert json.loads(out.stdout)["error"] | {"message": ""} == {"code": "not_found", "field": "workspace",
                                                                "message": ""}
    assert str(typo) in out.stderr and len(out.stderr.splitlines()) == 1
    assert not typo.exists()


def test_writing_command_creates_the_workspace_and_says_so(tmp_path):
    new = tmp_path / "new-ws"
    out = cli(new, "models", "add", "lin", "builtin:linear", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"created workspace {new}" in out.stderr
    assert {m.name for m in Workspace.open(new).models()} == {"demo", "lin"}


def test_a_failed_writing_command_leaves_no_workspace(tmp_path):
    new = tmp_path / "typo-ws"
    out = cli(new, "models", "add", "bad name", "builtin:linear", cwd=tmp_path)
    assert out.returncode == 2 and "created" not in out.stderr
    assert not new.exists()
    out = cli(new, "train", "--model", "nosuch", cwd=tmp_path)
    assert out.returncode == 2 and not new.exists()


def test_default_location_is_still_created(tmp_path):
    env = cli_env(TORCHDECK_HOME=str(tmp_path / "home-ws"))
    out = subprocess.run([sys.executable, "-m", "torchdeck.tui.cli", "models", "list", "--json"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "home-ws" / "models.toml").is_file()


def test_registered_model_records_its_root(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "td_ws_models.py").write_text("import torch.nn as nn\ndef make():\n    return nn.Linear(3, 2)\n")
    ws = Workspace.open(tmp_path / "ws")
    catalogue.register(ws, "mine", "td_ws_models:make", input_shape=[3], import_root=str(project))
    assert tomllib.loads(ws.models_file.read_text())["models"]["mine"]["import_root"] == str(project.resolve())
    # Listed (its parameters counted) from any directory: the registered root is used.
    monkeypatch.chdir(tmp_path)
    entry = next(e for e in catalogue.catalogue(ws, count_params=True) if e.name == "mine")
    assert entry.num_params == 8 and entry.error == ""


@pytest.mark.parametrize("name", ["mlp", "builtin:x", "cnn"])
def test_a_builtin_name_is_taken(tmp_path, name):
    ws = Workspace.open(tmp_path / "ws")
    with pytest.raises(InvalidRequest) as e:
        catalogue.register(ws, name, "builtin:linear")
    assert e.value.field == "name"


def test_one_name_in_the_cli_and_the_training_form(tmp_path):
    """`models list` names each model as the Training form's model list (and `--model`) do."""
    ws = Workspace.open(tmp_path / "ws")
    catalogue.register(ws, "lin", "builtin:linear")
    out = cli(ws.root, "models", "list", "--json", cwd=tmp_path)
    names = [m["name"] for m in json.loads(out.stdout)["models"]]
    assert names == [e.name for e in catalogue.catalogue(ws)]  # what the Training form lists
    from torchdeck.models import specs

    for name in names:  # and each resolves as --model
        assert specs.resolve(name, ws)


def test_an_unknown_name_on_a_damaged_registry_says_why(tmp_path):
    from torchdeck.models import specs

    ws = Workspace.open(tmp_path / "ws")
    ws.models_file.write_text(DAMAGED)
    with pytest.raises(InvalidRequest) as e:
        specs.resolve("demo", ws)
    assert "models.toml" in str(e.value) and e.value.field == "model" and e.value.code == "not_found"
