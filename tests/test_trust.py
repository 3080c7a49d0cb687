"""The one trust gate (torchdeck.trust): nothing read from a file runs code or chooses where code
is imported from, without an explicit trust action.

Pickles here carry real `__reduce__` payloads (os.system, builtins.open) that would create a
marker file if they ever ran: each is refused, the marker never appears, and the message names
the global the file wanted.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli
from torchdeck import trust
from torchdeck.checkpoints import store as checkpoints
from torchdeck.checkpoints.formats import torchdeck_dir
from torchdeck.data import sources as data
from torchdeck.errors import Corrupt, DataError, Unreadable, UnsafeFile
from torchdeck.models import catalogue, specs
from torchdeck.workspace import Workspace


class SystemPayload:
    """Unpickling it runs a shell command (os.system), which would create `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class OpenPayload:
    """Unpickling it calls builtins.open(marker, "w"), which would create `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _linear_state() -> dict:
    return {k: v.clone() for k, v in torch.nn.Linear(10, 20).state_dict().items()}


@pytest.fixture(params=["system", "open"])
def evil_pt(request, tmp_path):
    """(file, marker, the global's name): a training dict whose extra entry runs code on load."""
    marker = tmp_path / "payload-ran"
    payload = SystemPayload(marker) if request.param == "system" else OpenPayload(marker)
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _linear_state(), "extra": payload}, path)
    wanted = r"(posix|os)\.system" if request.param == "system" else r"(builtins|io)\.open"
    return path, marker, wanted


def test_checkpoint_with_a_payload_is_refused_naming_the_global(evil_pt):
    path, marker, wanted = evil_pt
    with pytest.raises(UnsafeFile, match=wanted) as e:
        checkpoints.inspect(path)
    assert e.value.code == "untrusted" and "--trust" in str(e.value)
    with pytest.raises(UnsafeFile, match=wanted):
        checkpoints.load_weights(path)
    assert not marker.exists()


def test_data_file_with_a_payload_is_refused_naming_the_global(evil_pt):
    path, marker, wanted = evil_pt
    torch.save((torch.zeros(4, 2), SystemPayload(marker)), path)
    with pytest.raises(DataError, match=r"(posix|os)\.system") as e:
        data.load(f"file:{path}")
    assert (e.value.code, e.value.field) == ("untrusted", "data")
    assert not marker.exists()


def test_training_state_allows_no_extra_globals(evil_pt):
    path, marker, wanted = evil_pt
    with pytest.raises(UnsafeFile, match=wanted):
        trust.torch_load(path, kind="training_state")
    assert not marker.exists()


def test_cli_refuses_the_payload_with_its_code(evil_pt, tmp_path):
    path, marker, wanted = evil_pt
    ws = Workspace.open(tmp_path / "ws").root
    out = run_cli("--workspace", str(ws), "ckpt", "inspect", str(path), "--json", cwd=tmp_path)
    assert out.returncode == 1
    error = json.loads(out.stdout)["error"]
    assert error["code"] == "untrusted" and error["field"] == "path"
    import re

    assert re.search(wanted, error["message"]) and not marker.exists()


def test_allowlisted_training_dict_loads_without_trust(tmp_path):
    """What other tools' training dicts hold (Lightning's hparams Namespace, paths, numpy
    scalars and arrays) loads with weights_only: no code runs for plain data."""
    path = tmp_path / "lightning-like.ckpt"
    torch.save({"state_dict": _linear_state(), "hyper_parameters": argparse.Namespace(lr=0.1),
                "dirpath": pathlib.PosixPath("/tmp/ckpts"), "best": np.float64(0.25),
                "hist": np.arange(3)}, path)
    info = checkpoints.inspect(path)
    assert info.format == "torch-training-dict" and info.num_params == 220


def test_a_truncated_file_is_corrupt_not_untrusted(tmp_path):
    path = tmp_path / "half.pt"
    torch.save(_linear_state(), path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(Corrupt):
        trust.torch_load(path)


# -- FIFOs and permissions: never a hang, never "corrupt" for a permission problem ------------------
def _in_thread(fn, timeout: float = 10.0):
    """Run fn in a thread; fail (instead of hanging the suite) if it has not returned in time."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "it hung"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def test_inspect_of_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    with pytest.raises(Unreadable, match="FIFO") as e:
        _in_thread(lambda: checkpoints.inspect(fifo))
    assert e.value.code == "unreadable"
    st = tmp_path / "model.safetensors"
    os.mkfifo(st)
    with pytest.raises(Unreadable, match="FIFO"):
        _in_thread(lambda: checkpoints.inspect(st))


def test_checkpoint_whose_meta_is_a_fifo_neither_hangs_nor_lists(tmp_path):
    good = checkpoints.save(tmp_path / "ck", "step-2", weights=_linear_state(), training_state={"step": 2},
                            meta={"step": 2, "model_spec": specs.resolve("builtin:linear").to_json()})
    bad = tmp_path / "ck" / "step-3"
    bad.mkdir()
    os.mkfifo(bad / "meta.json")
    listed = _in_thread(lambda: checkpoints.list_checkpoints(tmp_path / "ck"))
    assert [c.path for c in listed] == [good]
    with pytest.raises(Unreadable, match="FIFO"):
        _in_thread(lambda: checkpoints.inspect(bad))
    assert _in_thread(lambda: checkpoints.verify(bad))  # a problem reported, not a hang


def test_cli_inspect_of_a_fifo_exits_with_a_message(tmp_path):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    ws = Workspace.open(tmp_path / "ws").root
    out = run_cli("--workspace", str(ws), "ckpt", "inspect", str(fifo), "--json", cwd=tmp_path, timeout=60)
    assert out.returncode == 1 and json.loads(out.stdout)["error"]["code"] == "unreadable"
    assert "FIFO" in out.stderr and len(out.stderr.splitlines()) == 1


def test_unreadable_checkpoint_directory_is_unreadable_not_corrupt(tmp_path, monkeypatch):
    """A permission problem says so (the suite may run as root, where chmod does not bite, so
    the refusal is simulated where the OS would raise it)."""
    ck = checkpoints.save(tmp_path / "ck", "step-1", weights=_linear_state(), training_state={},
                          meta={"step": 1})
    real_listdir, real_iterdir = os.listdir, Path.iterdir

    def listdir(p="."):
        if Path(p) in (ck, tmp_path / "ck"):
            raise PermissionError(13, "Permission denied", str(p))
        return real_listdir(p)

    def iterdir(self):
        if self == tmp_path / "ck":
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(torchdeck_dir.os, "listdir", listdir)
    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(Unreadable, match="Permission denied") as e:
        checkpoints.inspect(ck)
    assert e.value.code == "unreadable"
    with pytest.raises(Unreadable):
        checkpoints.list_checkpoints(tmp_path / "ck")


# -- model specs: where a file's spec is imported from ---------------------------------------------
GOOD_MODELS = """
import torch.nn as nn

def build(width=20):
    return nn.Linear(10, width)
"""

EVIL_MODELS = """
import pathlib, torch.nn as nn
pathlib.Path({marker!r}).write_text("the foreign mymodels.py ran")

def build(width=20):
    return nn.Linear(10, width)
"""


@pytest.fixture
def foreign_checkpoint(tmp_path):
    """A workspace where `mymodels:build` is registered from the user's project, and a checkpoint
    of it whose run_config records another import root holding a mymodels.py of its own."""
    project, foreign = tmp_path / "project", tmp_path / "foreign"
    project.mkdir()
    foreign.mkdir()
    marker = tmp_path / "foreign-code-ran"
    (project / "mymodels.py").write_text(GOOD_MODELS)
    (foreign / "mymodels.py").write_text(EVIL_MODELS.format(marker=str(marker)))
    ws = Workspace.open(tmp_path / "ws")
    catalogue.register(ws, "mine", "mymodels:build", input_shape=[10], import_root=str(project))
    spec = specs.ModelSpec(spec="mymodels:build", input_shape=(10,), registered_as="mine")
    ck = checkpoints.save(tmp_path / "ck", "step-5", weights=_linear_state(), training_state={"step": 5},
                          meta={"step": 5, "epoch": 1, "model_spec": spec.to_json(),
                                "run_config": {"import_root": str(foreign)}})
    return ws, ck, project, foreign, marker


def test_registered_spec_is_imported_from_its_registered_root_only(foreign_checkpoint):
    ws, ck, project, foreign, marker = foreign_checkpoint
    assert ws.model("mine").import_root == str(project.resolve())
    model, spec, _ = checkpoints.load_model(ck, ws)
    assert isinstance(model, torch.nn.Linear) and not marker.exists()
    import sys

    assert Path(sys.modules["mymodels"].__file__).parent == project.resolve()
    assert str(foreign) not in sys.path


def test_export_never_imports_from_the_checkpoints_root(foreign_checkpoint):
    """The finding, end to end: `export onnx` run from inside the foreign directory (so its
    mymodels.py is first on sys.path) still builds the registered one."""
    ws, ck, project, foreign, marker = foreign_checkpoint
    target = foreign / "out.onnx"
    out = run_cli("--workspace", str(ws.root), "export", "onnx", "--checkpoint", str(ck), "--out", str(target),
                  "--json", cwd=foreign, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ok"] and target.is_file()
    assert not marker.exists()


@pytest.mark.slow
def test_training_a_registered_model_imports_it_from_its_registered_root(foreign_checkpoint):
    """`train --model mine` started from another directory that holds its own mymodels.py: the
    worker builds the registered one (models.toml's root), never the one beside the user."""
    ws, ck, project, foreign, marker = foreign_checkpoint
    out = run_cli("--workspace", str(ws.root), "train", "--model", "mine", "--epochs", "1", "--dataset-size", "64",
                  "--data", "synthetic:regression", "--no-checkpoints", "--json", cwd=foreign, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["state"] == "finished"
    assert not marker.exists()
    [run_dir] = (ws.root / "runs").iterdir()
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["model_import_root"] == str(project.resolve()) and cfg["import_root"] == str(foreign.resolve())


def test_unregistered_spec_needs_trust_and_names_the_root(foreign_checkpoint):
    ws, ck, project, foreign, marker = foreign_checkpoint
    ws.remove_model("mine")
    with pytest.raises(UnsafeFile, match="mymodels:build") as e:
        checkpoints.load_model(ck, ws)
    assert str(foreign) in str(e.value) and e.value.field == "checkpoint"
    assert not marker.exists()
    model, _, _ = checkpoints.load_model(ck, ws, trust=True)  # explicit trust: the file's own root
    assert marker.exists() and isinstance(model, torch.nn.Linear)


def test_import_of_a_module_name_loaded_from_another_root_takes_the_asked_one(tmp_path):
    """A long-lived process (the TUI) meets the same module name in two roots: the root asked
    for wins, and nothing from the other runs again."""
    a, b = tmp_path / "a", tmp_path / "b"
    for d, width in ((a, 3), (b, 7)):
        d.mkdir()
        (d / "td_twice_mod.py").write_text(f"import torch.nn as nn\ndef build():\n    return nn.Linear(2, {width})\n")
    spec = specs.resolve("td_twice_mod:build")
    assert specs.build(spec, import_root=a).out_features == 3
    assert specs.build(spec, import_root=b).out_features == 7


def test_summary_of_a_file_spec_goes_through_the_gate(tmp_path):
    from torchdeck.models import summary

    ws = Workspace.open(tmp_path / "ws")
    spec = specs.ModelSpec(spec="td_not_registered_anywhere:make", input_shape=(4,))
    with pytest.raises(UnsafeFile):
        summary.summarize(spec, workspace=ws, trust=False)


def test_trust_module_is_light():
    """Importing the gate needs no torch (the CLI's error paths stay fast)."""
    code = "import sys, torchdeck.trust; assert 'torch' not in sys.modules, 'torch imported'"
    out = subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_no_pickle_load_outside_the_gate():
    """One gate: no engine module but torchdeck.trust calls torch.load, pickle.load(s) or
    numpy.load with pickles allowed."""
    import ast

    engine = Path(__file__).resolve().parent.parent / "engine"
    offenders = []
    for p in engine.rglob("*.py"):
        if p.name == "trust.py":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f"{f.value.id}.{f.attr}" if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
            if name in ("torch.load", "pickle.load", "pickle.loads", "dill.load"):
                offenders.append(f"{p.relative_to(engine)}:{node.lineno}: {name}")
            for kw in node.keywords:
                if kw.arg in ("weights_only", "allow_pickle") and isinstance(kw.value, ast.Constant) and \
                        kw.value.value is (kw.arg == "allow_pickle"):
                    offenders.append(f"{p.relative_to(engine)}:{node.lineno}: {kw.arg}={kw.value.value}")
    assert offenders == []


def test_fifo_guard_does_not_block_a_writer_waiting(tmp_path):
    """check_regular_file never opens: a FIFO with no writer is refused in well under a second."""
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(Unreadable):
        trust.check_regular_file(fifo)
    assert time.monotonic() - t0 < 1.0


def test_lightning_hparams_load_as_a_plain_dict_without_lightning(tmp_path, monkeypatch):
    """Lightning keeps hparams in an AttributeDict (a dict subclass). A .ckpt holding one loads
    weights-only, as a plain dict, and the lightning package is never imported."""
    import sys

    pkg = tmp_path / "fake" / "lightning" / "fabric" / "utilities"
    pkg.mkdir(parents=True)
    for d in (pkg.parent.parent, pkg.parent, pkg):
        (d / "__init__.py").write_text("")
    (pkg / "data.py").write_text("class AttributeDict(dict):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path / "fake"))
    from lightning.fabric.utilities.data import AttributeDict

    path = tmp_path / "epoch=1.ckpt"
    torch.save({"state_dict": _linear_state(), "hyper_parameters": AttributeDict(lr=0.1, hidden=8),
                "pytorch-lightning_version": "2.4.0"}, path)
    for name in [n for n in sys.modules if n == "lightning" or n.startswith("lightning.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path / "fake")])

    obj = trust.torch_load(path)
    assert type(obj["hyper_parameters"]) is dict and obj["hyper_parameters"] == {"lr": 0.1, "hidden": 8}
    assert "lightning" not in sys.modules
    assert checkpoints.inspect(path).format == "lightning"  # detected from its keys (issue 7)


@pytest.mark.parametrize("content", [b"root:x:0:0:root:/root:/bin/bash\n", b""])
def test_a_text_or_empty_file_is_not_a_pytorch_file(tmp_path, content):
    """`ckpt inspect /etc/passwd` answered "IndexError: list index out of range"."""
    p = tmp_path / "passwd"
    p.write_bytes(content)
    with pytest.raises(Corrupt, match="not a readable PyTorch file") as e:
        trust.torch_load(p)
    assert "Error" not in str(e.value) and e.value.code == "corrupt"
