"""Engine unit tests: workspace, model specs and trust, events format, checkpoints, inspect,
run configs, the training loop's host syncs, and the engine's import boundaries."""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from helpers import REPO, StubHooks, dead_pid
from torchdeck.checkpoints import store as checkpoints
from torchdeck.errors import InvalidRequest, OperationFailed, UnsafeFile
from torchdeck.models import specs
from torchdeck.runs import events as ev
from torchdeck.runs.config import RunConfig
from torchdeck.workspace import DEMO, ENV_HOME, PROJECT_DIR, Workspace, resolve_root

torch = pytest.importorskip("torch")


# -- workspace resolution ------------------------------------------------------------------------
@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No TORCHDECK_HOME, user data dir under tmp, cwd in an empty tmp directory."""
    monkeypatch.delenv(ENV_HOME, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_workspace_flag_beats_everything(clean_env, monkeypatch, tmp_path):
    (clean_env / PROJECT_DIR).mkdir()
    monkeypatch.setenv(ENV_HOME, str(tmp_path / "from-env"))
    assert resolve_root(tmp_path / "explicit") == (tmp_path / "explicit").resolve()


def test_env_beats_project_dir(clean_env, monkeypatch, tmp_path):
    (clean_env / PROJECT_DIR).mkdir()
    monkeypatch.setenv(ENV_HOME, str(tmp_path / "from-env"))
    assert resolve_root() == (tmp_path / "from-env").resolve()


def test_project_dir_in_cwd(clean_env):
    (clean_env / PROJECT_DIR).mkdir()
    assert resolve_root() == (clean_env / PROJECT_DIR).resolve()


def test_project_dir_in_a_parent(clean_env, monkeypatch):
    (clean_env / PROJECT_DIR).mkdir()
    deep = clean_env / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert resolve_root() == (clean_env / PROJECT_DIR).resolve()
    assert resolve_root(cwd=deep) == (clean_env / PROJECT_DIR).resolve()


def test_project_marker_must_be_a_directory(clean_env, tmp_path):
    (clean_env / PROJECT_DIR).write_text("not a workspace")
    assert resolve_root() == tmp_path / "xdg" / "torchdeck"


def test_falls_back_to_user_data_dir(clean_env, tmp_path):
    import platformdirs

    got = resolve_root()
    assert got == Path(platformdirs.user_data_dir("torchdeck", appauthor=False))
    assert got == tmp_path / "xdg" / "torchdeck"


def test_new_workspace_has_demo_model(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    for d in (ws.root, ws.runs_dir, ws.exports_dir):
        assert d.is_dir()
    text = ws.models_file.read_text()
    assert '[models.demo]' in text  # written by tomli-w
    assert ws.models() == [DEMO]
    assert ws.model("demo").spec == "builtin:linear"


def test_existing_models_toml_is_kept(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    (root / "models.toml").write_text('[models.mine]\nspec = "builtin:linear"\nkwargs = { out_features = 3 }\n')
    ws = Workspace.open(root)
    assert [m.name for m in ws.models()] == ["mine"]
    assert ws.model("mine").kwargs == {"out_features": 3}


def test_unusable_workspace_is_an_invalid_request(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidRequest, match="cannot use workspace"):
        Workspace.open(tmp_path / "file" / "ws")


# -- model specs -----------------------------------------------------------------------------------
@pytest.fixture
def ws(tmp_path):
    return Workspace.open(tmp_path / "ws")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user's module on an import root outside sys.path; importing it leaves a marker file."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    name = f"td_usermod_{uuid.uuid4().hex[:8]}"
    root = tmp_path / "userroot"
    root.mkdir()
    marker = root / "imported.marker"
    (root / f"{name}.py").write_text(textwrap.dedent(f"""
        import pathlib
        import torch.nn as nn
        pathlib.Path({str(marker)!r}).write_text("imported")

        def make(width=4):
            return nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2))

        def boom():
            raise RuntimeError("kaboom from user code")

        def not_a_module():
            return 42

        value = 3
    """))
    yield name, root, marker
    sys.modules.pop(name, None)


def test_resolve_builtin():
    spec = specs.resolve("builtin:linear")
    assert spec.builtin is not None and spec.input_shape == (10,)
    model = specs.build(spec)
    assert isinstance(model, torch.nn.Linear) and specs.num_params(model) == 220
    assert specs.resolve("linear").spec == "builtin:linear"  # a bare built-in name


def test_resolve_registered_name(ws):
    spec = specs.resolve("demo", ws)
    assert spec.spec == "builtin:linear" and spec.registered_as == "demo"
    assert specs.num_params(specs.build(spec)) == 220


def test_resolve_and_build_module_callable(user_module):
    name, root, marker = user_module
    spec = specs.resolve(f"{name}:make", kwargs={"width": 5})
    assert spec.builtin is None and spec.kwargs == {"width": 5}
    assert not marker.exists()  # resolving imports nothing
    model = specs.build(spec, import_root=root)
    assert isinstance(model, torch.nn.Module)
    assert model[0].out_features == 5
    # Appended, never first: torchdeck's own packages win over a user's of the same name.
    assert sys.path[-1] == str(root.resolve())
    assert str(root.resolve()) not in sys.path[:-1]


@pytest.mark.parametrize("text", ["", "nosuch", "builtin:nosuch", "no such:thing", "1abc:make"])
def test_unknown_spec_is_invalid(ws, text):
    with pytest.raises(InvalidRequest):
        specs.resolve(text, ws)


def test_unknown_name_lists_what_is_known(ws):
    with pytest.raises(InvalidRequest, match="demo") as e:
        specs.resolve("nosuch", ws)
    assert "nosuch" in str(e.value)


@pytest.mark.parametrize(
    "attr, kwargs, expected",
    [
        ("boom", {}, r"RuntimeError: kaboom from user code"),
        ("not_a_module", {}, r"returned int, not a torch\.nn\.Module"),
        ("make", {"depth": 3}, r"arguments do not fit.*depth"),
        ("missing", {}, r"has no attribute 'missing'"),
        ("value", {}, r"not callable"),
    ],
)
def test_build_failures_name_the_cause(user_module, attr, kwargs, expected):
    name, root, _ = user_module
    with pytest.raises(InvalidRequest, match=expected):
        specs.build(specs.resolve(f"{name}:{attr}", kwargs=kwargs), import_root=root)


def test_build_module_not_found():
    with pytest.raises(InvalidRequest, match="cannot import"):
        specs.build(specs.resolve("td_no_such_module_xyz:make"))


def test_build_from_file_refuses_untrusted_spec(ws, user_module):
    from torchdeck import trust

    name, root, marker = user_module
    spec = specs.resolve(f"{name}:make")
    assert not specs.is_trusted(spec, ws)
    with pytest.raises(UnsafeFile, match="--trust"):
        trust.build_from_file(spec, ws, trust=False, recorded_root=str(root))
    with pytest.raises(UnsafeFile):
        trust.build_from_file(spec, None, trust=False, recorded_root=str(root))
    assert not marker.exists()  # the refused module was never imported
    model = trust.build_from_file(spec, ws, trust=True, recorded_root=str(root))
    assert isinstance(model, torch.nn.Module) and marker.exists()


def test_build_from_file_allows_builtin_and_registered(ws, user_module):
    from torchdeck import trust

    name, root, _ = user_module
    assert trust.build_from_file(specs.resolve("builtin:linear"), None, trust=False) is not None
    ws.models_file.write_text(ws.models_file.read_text()
                              + f'\n[models.mine]\nspec = "{name}:make"\nimport_root = "{root}"\n')
    spec = specs.ModelSpec(spec=f"{name}:make")  # as read from a checkpoint's meta.json
    assert specs.is_trusted(spec, ws)
    # Imported from the root registered in models.toml, whatever root the file records.
    model = trust.build_from_file(spec, ws, trust=False, recorded_root="/nonexistent")
    assert isinstance(model, torch.nn.Module)


# -- events format ----------------------------------------------------------------------------------
def test_losses_nonfinite_become_null():
    rec = ev.Losses.from_floats(7, 2, [1.5, float("nan"), float("inf"), float("-inf"), 0.25])
    assert rec.values == [1.5, None, None, None, 0.25]
    assert rec.nonfinite == [[1, "nan"], [2, "inf"], [3, "-inf"]]
    assert rec.first_step == 7 and rec.last_step == 11
    line = ev.dumps(rec)
    assert "NaN" not in line and "Infinity" not in line

    def no_constants(c):
        raise AssertionError(f"bare {c} in {line}")

    d = json.loads(line, parse_constant=no_constants)
    assert d == {"type": "losses", "first_step": 7, "epoch": 2, "values": [1.5, None, None, None, 0.25],
                 "nonfinite": [[1, "nan"], [2, "inf"], [3, "-inf"]]}
    assert ev.parse(d) == rec


def test_dumps_refuses_bare_nan():
    with pytest.raises(ValueError):
        ev.dumps(ev.Losses(1, 1, [float("nan")]))
    with pytest.raises(ValueError):  # orjson would write it as null: the stdlib refuses it
        ev.dumps(ev.Ended("finished", 1, float("inf"), "done"))


def test_dumps_writes_every_float_exactly_and_what_orjson_refuses():
    """Records are written by orjson where it can (the stdlib's float repr was half of run.log's
    cost a step): every value reads back bit for bit, with either decoder; what orjson refuses
    (an integer past 64 bits, a lone surrogate) is still written, by the stdlib."""
    rng = random.Random(0)
    floats = [rng.uniform(-1e3, 1e3) for _ in range(300)] + [rng.lognormvariate(0, 40) for _ in range(300)]
    floats += [1e-05, 5e-324, 1.7976931348623157e308, -0.0, 0.1, 2.0**53 + 2, 1e22, 123456789.0]
    line = ev.dumps(ev.Losses.from_floats(1, 1, floats))
    for decoded in (json.loads(line), ev.loads(line)):
        assert [struct.pack("<d", v) for v in decoded["values"]] == [struct.pack("<d", v) for v in floats]
    ended = ev.Ended("failed", 3, 0.5, "échec ✗ données")
    assert ev.parse(ev.loads(ev.dumps(ended))) == ended
    for odd in (ev.Losses(2**70, 1, [1.0]), ev.Ended("failed", 3, 0.5, "bad \ud800 text")):
        assert ev.parse(json.loads(ev.dumps(odd))) == odd


def test_event_tail_ignores_torn_last_line(tmp_path):
    path = tmp_path / "events.jsonl"
    a = ev.Losses.from_floats(1, 1, [1.0, 2.0])
    b = ev.Losses.from_floats(3, 1, [3.0])
    c = ev.EpochEnd(1, 3, 2.0, 1.5, 0.1)
    full_c = ev.dumps(c) + "\n"
    path.write_text(ev.dumps(a) + "\n" + ev.dumps(b) + "\n" + full_c[:10])
    tail = ev.EventTail(path)
    assert tail.read_new() == [a, b]
    assert tail.read_new() == []
    assert not tail.at_end()
    with open(path, "a") as f:
        f.write(full_c[10:])
    assert tail.read_new() == [c]
    assert tail.at_end()


def test_event_tail_skips_unknown_and_bad_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    a = ev.Resumed(step=5)
    path.write_text('{"type":"future-thing","x":1}\nnot json\n\n' + ev.dumps(a) + "\n")
    assert list(ev.read_all(path)) == [a]
    assert ev.EventTail(tmp_path / "missing.jsonl").read_new() == []


def test_event_writer_truncates_torn_tail(tmp_path):
    path = tmp_path / "events.jsonl"
    a = ev.Losses.from_floats(1, 1, [1.0, 2.0])
    path.write_text(ev.dumps(a) + "\n" + '{"type":"losses","first_step":3,"va')
    w = ev.EventWriter(path)
    w.write(ev.Resumed(step=2))
    w.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and path.read_text().endswith("\n")
    assert [json.loads(x)["type"] for x in lines] == ["losses", "resumed"]
    assert list(ev.read_all(path)) == [a, ev.Resumed(step=2)]


def test_event_writer_on_new_file(tmp_path):
    w = ev.EventWriter(tmp_path / "new.jsonl")
    w.write(ev.StateChanged("paused", 3))
    w.close()
    assert list(ev.read_all(tmp_path / "new.jsonl")) == [ev.StateChanged("paused", 3)]


# -- checkpoints ------------------------------------------------------------------------------------
def _linear_state(seed: int = 0):
    torch.manual_seed(seed)
    return torch.nn.Linear(10, 20).state_dict()


def _save(root: Path, step: int, *, keep=None, seed: int = 0) -> Path:
    model = torch.nn.Linear(10, 20)
    model.load_state_dict(_linear_state(seed))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 10)).sum().backward()
    opt.step()
    return checkpoints.save(
        root, f"step-{step:08d}",
        weights=checkpoints.host_copy(model.state_dict()),
        training_state={"optimizer": opt.state_dict(), "rng": {"torch": torch.get_rng_state()},
                        "loop": {"step": step, "epoch": 1}},
        meta={"step": step, "epoch": 1, "metrics": {"train_loss": 0.5},
              "model_spec": specs.resolve("builtin:linear").to_json(), "run_config": {}},
        keep=keep,
    )


def test_save_writes_complete_directory(tmp_path):
    root = tmp_path / "ckpts"
    path = _save(root, 10)
    assert path == root / "step-00000010"
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "model.safetensors", "training_state.pt"]
    assert [p.name for p in root.iterdir()] == ["step-00000010"]  # no temporary left
    meta = json.loads((path / "meta.json").read_text())
    assert meta["format"] == checkpoints.FORMAT and meta["step"] == 10
    assert meta["torch_version"] == torch.__version__
    import hashlib

    assert set(meta["files"]) == {"model.safetensors", "training_state.pt"}
    for fname, rec in meta["files"].items():
        data = (path / fname).read_bytes()
        assert rec["size"] == len(data)
        assert rec["sha256"] == hashlib.sha256(data).hexdigest()
    state = torch.load(path / "training_state.pt", weights_only=True)
    assert state["loop"] == {"step": 10, "epoch": 1}
    assert "state" in state["optimizer"] and state["rng"]["torch"].dtype == torch.uint8
    assert checkpoints.verify(path) == []


def test_save_renames_a_finished_temporary_into_place(tmp_path, monkeypatch):
    root = tmp_path / "ckpts"
    seen = []
    real_rename = os.rename

    def spy(src, dst):
        src, dst = Path(src), Path(dst)
        seen.append((src.name, dst.name, sorted(p.name for p in src.iterdir()), dst.exists()))
        return real_rename(src, dst)

    monkeypatch.setattr(checkpoints.os, "rename", spy)
    _save(root, 3)
    assert seen == [(f".step-00000003.tmp-{os.getpid()}", "step-00000003",
                     ["meta.json", "model.safetensors", "training_state.pt"], False)]


def test_save_refuses_an_existing_name(tmp_path):
    _save(tmp_path, 1)
    with pytest.raises(OperationFailed, match="already exists"):
        _save(tmp_path, 1)


class Boom(Exception):
    pass


def test_interrupted_weights_write_leaves_nothing(tmp_path, monkeypatch):
    from torchdeck.checkpoints import writer

    def half_then_fail(f, tensors, metadata=None):  # the writer writes safetensors itself, hashing as it goes
        f.write(b"\0" * 100)
        raise Boom("disk went away")

    monkeypatch.setattr(writer, "write_safetensors", half_then_fail)
    with pytest.raises(Boom):
        _save(tmp_path / "ckpts", 5)
    assert list((tmp_path / "ckpts").iterdir()) == []
    assert checkpoints.list_checkpoints(tmp_path / "ckpts") == []


def test_interrupted_training_state_write_leaves_nothing(tmp_path, monkeypatch):
    real_save = torch.save

    def save_then_fail(obj, f, *a, **k):  # f: the writer's hashing file object
        real_save(obj, f, *a, **k)
        f.write(b"torn")
        raise KeyboardInterrupt  # a BaseException, as Ctrl-C would be

    _save(tmp_path / "ckpts", 1)
    monkeypatch.setattr(torch, "save", save_then_fail)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path / "ckpts", 2)
    assert [p.name for p in (tmp_path / "ckpts").iterdir()] == ["step-00000001"]
    assert checkpoints.latest_complete(tmp_path / "ckpts").step == 1


def test_stale_temporary_of_dead_writer(tmp_path):
    import shutil

    root = tmp_path / "ckpts"
    good = _save(root, 1)
    dead = root / f".step-00000009.tmp-{dead_pid()}"
    shutil.copytree(good, dead)  # complete-looking, but a temporary
    dead_meta = json.loads((dead / "meta.json").read_text())
    dead_meta["step"] = 9
    (dead / "meta.json").write_text(json.dumps(dead_meta))
    dead_removing = root / f".step-00000000.removing-{dead_pid()}"
    dead_removing.mkdir()
    live = root / f".step-00000008.tmp-{os.getpid()}"
    live.mkdir()
    assert [c.step for c in checkpoints.list_checkpoints(root)] == [1]
    assert checkpoints.latest_complete(root).step == 1
    removed = checkpoints.remove_stale_temporaries(root)
    assert sorted(removed) == sorted([dead, dead_removing])
    assert not dead.exists() and not dead_removing.exists()
    assert live.exists()  # its writer (this process) is alive
    assert good.exists()
    assert checkpoints.remove_stale_temporaries(tmp_path / "nowhere") == []


def test_size_mismatch_is_not_latest(tmp_path):
    root = tmp_path / "ckpts"
    _save(root, 1)
    newer = _save(root, 2)
    assert checkpoints.latest_complete(root).step == 2
    with open(newer / "model.safetensors", "ab") as f:
        f.write(b"\0")
    assert [c.step for c in checkpoints.list_checkpoints(root)] == [1]
    assert checkpoints.latest_complete(root).step == 1
    with pytest.raises(OperationFailed, match="incomplete"):
        checkpoints.inspect(newer)
    (root / "step-00000001" / "training_state.pt").unlink()
    assert checkpoints.latest_complete(root) is None


def test_corrupt_meta_is_not_listed(tmp_path):
    root = tmp_path / "ckpts"
    p = _save(root, 1)
    (p / "meta.json").write_text("{ not json")
    assert checkpoints.list_checkpoints(root) == []
    with pytest.raises(OperationFailed):
        checkpoints.inspect(p)
    assert checkpoints.verify(p) == ["meta.json is missing or corrupt"]


def test_retention_keeps_the_last_n(tmp_path):
    root = tmp_path / "ckpts"
    for step in range(1, 6):
        _save(root, step, keep=3)
    assert sorted(p.name for p in root.iterdir()) == ["step-00000003", "step-00000004", "step-00000005"]
    assert [c.step for c in checkpoints.list_checkpoints(root)] == [3, 4, 5]
    assert checkpoints.apply_retention(root, 1) == [root / "step-00000003", root / "step-00000004"]
    assert [p.name for p in root.iterdir()] == ["step-00000005"]


def test_verify_detects_a_flipped_byte(tmp_path):
    p = _save(tmp_path, 1)
    assert checkpoints.verify(p) == []
    f = p / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0x01
    f.write_bytes(bytes(data))
    problems = checkpoints.verify(p)
    assert len(problems) == 1 and "model.safetensors" in problems[0] and "sha256" in problems[0]
    # Listing only compares sizes: the flip is verify's job, not every listing's.
    assert [c.step for c in checkpoints.list_checkpoints(tmp_path)] == [1]
    (p / "training_state.pt").unlink()
    assert any("training_state.pt is missing" in x for x in checkpoints.verify(p))


def test_load_model_rebuilds_the_checkpoint(tmp_path):
    p = _save(tmp_path, 1)
    model, spec, info = checkpoints.load_model(p)
    assert spec.spec == "builtin:linear" and info.step == 1 and not model.training
    weights = checkpoints.load_weights(p)
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k])


def test_load_model_refuses_untrusted_spec(tmp_path, ws):
    p = _save(tmp_path, 1)
    meta = json.loads((p / "meta.json").read_text())
    meta["model_spec"]["spec"] = "somepkg.mod:make"
    (p / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UnsafeFile, match="somepkg.mod:make"):
        checkpoints.load_model(p, ws)


# -- inspect() --------------------------------------------------------------------------------------
def _tensor_table(info):
    return {t.name: (t.shape, t.dtype) for t in info.tensors}


LINEAR_TABLE = {"weight": ([20, 10], "float32"), "bias": ([20], "float32")}


def test_inspect_plain_state_dict(tmp_path):
    p = tmp_path / "model.pt"
    torch.save(_linear_state(), p)
    info = checkpoints.inspect(p)
    assert info.format == "torch-state-dict" and info.num_params == 220
    assert _tensor_table(info) == LINEAR_TABLE
    assert info.size == p.stat().st_size


def test_inspect_training_dict(tmp_path):
    model = torch.nn.Linear(10, 20)
    opt = torch.optim.Adam(model.parameters())
    p = tmp_path / "train.pth"
    torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(), "epoch": 3}, p)
    info = checkpoints.inspect(p)
    assert info.format == "torch-training-dict" and info.num_params == 220
    assert _tensor_table(info) == LINEAR_TABLE


def test_inspect_safetensors(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "model.safetensors"
    save_file({**_linear_state(), "half": torch.zeros(2, 3, dtype=torch.float16)}, str(p))
    info = checkpoints.inspect(p)
    assert info.format == "safetensors" and info.num_params == 226
    assert _tensor_table(info) == {**LINEAR_TABLE, "half": ([2, 3], "float16")}


def test_inspect_checkpoint_directory(tmp_path):
    info = checkpoints.inspect(_save(tmp_path, 4))
    assert info.format == checkpoints.FORMAT and info.step == 4 and info.num_params == 220
    assert info.model_spec["spec"] == "builtin:linear"
    assert _tensor_table(info) == LINEAR_TABLE


def test_inspect_refuses_arbitrary_global(tmp_path):
    # fractions.Fraction is harmless but outside the allowlist (argparse.Namespace is on it now:
    # Lightning's hparams); the real code-running payloads are in test_trust.py.
    import fractions

    p = tmp_path / "needs-pickle.pt"
    torch.save({"state_dict": _linear_state(), "args": fractions.Fraction(1, 3)}, p)
    with pytest.raises(UnsafeFile, match=r"fractions\.Fraction") as e:
        checkpoints.inspect(p)
    assert "--trust" in str(e.value)
    info = checkpoints.inspect(p, trust=True)
    assert info.format == "torch-training-dict" and info.num_params == 220


@pytest.mark.parametrize("content", ["random", "text", "empty", "truncated"])
def test_inspect_corrupt_file(tmp_path, content):
    p = tmp_path / "broken.pt"
    if content == "random":
        p.write_bytes(bytes(range(256)) * 8)
    elif content == "text":
        p.write_text("hello world\n" * 10)
    elif content == "empty":
        p.write_bytes(b"")
    else:
        torch.save(_linear_state(), p)
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    with pytest.raises(OperationFailed) as e:
        checkpoints.inspect(p)
    assert not isinstance(e.value, UnsafeFile)  # corrupt is not "unsafe": --trust would not help
    assert "not a readable PyTorch file" in str(e.value)


def test_inspect_corrupt_safetensors_and_missing(tmp_path):
    p = tmp_path / "broken.safetensors"
    p.write_bytes(b"\xff" * 64)
    with pytest.raises(OperationFailed, match="not a safetensors file"):
        checkpoints.inspect(p)
    with pytest.raises(InvalidRequest, match="no such file"):
        checkpoints.inspect(tmp_path / "missing.pt")
    (tmp_path / "plain-dir").mkdir()
    with pytest.raises(OperationFailed, match="not a torchdeck checkpoint"):
        checkpoints.inspect(tmp_path / "plain-dir")


# -- RunConfig.validate -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value, words",
    [
        ("epochs", 0, "epochs"),
        ("epochs", -3, "epochs"),
        ("epochs", 2.5, "epochs"),
        ("epochs", True, "epochs"),
        ("epochs", "3", "epochs"),
        ("batch_size", 0, "batch size"),
        ("dataset_size", 0, "dataset size"),
        ("lr", 0, "learning rate"),
        ("lr", -1.0, "learning rate"),
        ("lr", float("nan"), "learning rate"),
        ("lr", float("inf"), "learning rate"),
        ("lr", "0.1", "learning rate"),
        ("optimizer", "lion", "optimizer"),
        ("keep_checkpoints", 0, "keep checkpoints"),
    ],
)
def test_run_config_rejects_bad_values(field, value, words):
    cfg = RunConfig(**{field: value})
    with pytest.raises(InvalidRequest, match=words):
        cfg.validate()


def test_run_config_accepts_defaults_and_round_trips():
    cfg = RunConfig(model="builtin:linear", lr=1, epochs=1)
    assert cfg.validate() is cfg
    assert RunConfig.from_json({**cfg.to_json(), "unknown_future_field": 1}) == cfg


# -- the training loop makes no per-step host sync --------------------------------------------------
@pytest.mark.parametrize("host_losses", [False, True], ids=["device-path", "cpu-reads-at-once"])
def test_trainer_makes_no_per_step_host_sync(monkeypatch, host_losses):
    """On a GPU every per-step read is a host-device sync: losses stay on the device and are
    copied out once a chunk (the device path, forced here on the CPU). On the CPU a read is no
    sync, and holding each step's tensor cost more than reading it: one .item() a step, the
    same losses."""
    from torchdeck.training.loop import Trainer

    epochs = 2
    cfg = RunConfig(model="builtin:linear", epochs=epochs, dataset_size=2048, batch_size=16, device="cpu",
                    flush_interval=3600.0)
    hooks = StubHooks()
    trainer = Trainer(cfg, hooks, run_id="t", checkpoints_dir=None)
    assert trainer._host_losses  # the CPU's default
    trainer._host_losses = host_losses
    counts = {"item": 0, "tolist": 0, "__bool__": 0}
    for name in counts:
        real = getattr(torch.Tensor, name)

        def wrapper(self, *a, _real=real, _name=name, **k):
            counts[_name] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    # The wrappers do see syncs made from Python.
    assert bool(torch.tensor(1.0)) and torch.tensor(2.0).item() == 2.0 and torch.tensor([3.0]).tolist() == [3.0]
    assert counts == {"item": 1, "tolist": 1, "__bool__": 1}
    counts.update(item=0, tolist=0, __bool__=0)
    outcome = trainer.run()
    monkeypatch.undo()

    assert outcome.state == "finished" and outcome.step == trainer.total_steps
    losses = [e for e in hooks.events if isinstance(e, ev.Losses)]
    assert sum(len(e.values) for e in losses) == trainer.total_steps
    flushes = len(losses)
    assert flushes == epochs  # the long interval leaves one flush per epoch
    assert counts["tolist"] == flushes  # one copy-out per chunk (with the chunk's gradient norm)
    if host_losses:
        assert counts["item"] == trainer.total_steps + epochs, counts  # each step's loss, each validation's
        assert counts["__bool__"] == 0
    else:
        syncs = sum(counts.values())
        assert syncs <= flushes + epochs, counts  # one copy-out per chunk, one validation loss per epoch
        assert syncs < trainer.total_steps / 20
    values = [v for e in losses for v in e.values]
    other = Trainer(cfg, StubHooks(), run_id="t", checkpoints_dir=None)
    other._host_losses = not host_losses
    other.run()
    assert values == [v for e in other.hooks.events if isinstance(e, ev.Losses) for v in e.values]


# -- import boundaries ------------------------------------------------------------------------------
ENGINE_MODULES = sorted(".".join(p.relative_to(REPO / "engine").with_suffix("").parts).removesuffix(".__init__")
                        for p in (REPO / "engine").rglob("*.py") if p.name != "__init__.py" or p.parent != REPO / "engine")


def _fresh_python(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


# They import their framework (an optional dependency), which may import rich itself (Lightning's
# progress bar does): what they import of torchdeck (integrations._common, api) is checked here.
FRAMEWORK_MODULES = {"integrations.lightning", "integrations.transformers"}


def test_engine_never_imports_textual_or_rich():
    assert {"checkpoints.store", "runs.store", "training.loop", "runs.worker", "exports.onnx"} <= set(ENGINE_MODULES)
    assert FRAMEWORK_MODULES < set(ENGINE_MODULES) and "integrations._common" in ENGINE_MODULES
    own = [m for m in ENGINE_MODULES if m not in FRAMEWORK_MODULES]
    code = (
        "import importlib, json, sys\n"
        "import torchdeck\n"
        f"for m in {own!r}: importlib.import_module('torchdeck.' + m)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich'))))\n"
    )
    assert _fresh_python(code) == []


def test_light_engine_modules_do_not_import_torch():
    code = (
        "import json, sys\n"
        "import torchdeck.runs.store, torchdeck.runs.events, torchdeck.workspace, torchdeck.checkpoints.store\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'onnxruntime'))))\n"
    )
    assert _fresh_python(code) == []


def test_stop_right_after_an_epoch_checkpoint(tmp_path):
    """A stop obeyed at an epoch's end finds that step saved: the run stops, it does not fail."""
    from torchdeck.training.loop import Trainer

    class StopAtFirstChance(StubHooks):
        def control(self):
            return "stop"

    cfg = RunConfig(model="builtin:linear", epochs=3, dataset_size=2048, device="cpu", flush_interval=3600.0)
    hooks = StopAtFirstChance()
    trainer = Trainer(cfg, hooks, run_id="t", checkpoints_dir=tmp_path / "ckpts")
    outcome = trainer.run()
    assert outcome.state == "stopped" and outcome.step == trainer.steps_per_epoch and outcome.epoch == 1
    [only] = checkpoints.list_checkpoints(tmp_path / "ckpts")
    assert only.step == outcome.step and only.meta["reason"] == "epoch"
    assert checkpoints.verify(only.path) == []
