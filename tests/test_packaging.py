"""One import name: the installed distribution is `torchdeck` and nothing else at the top level.

Users' training repos have their own `engine.py` and `tui.py`; a package index has a `tui`. The
wheel must hold every module of engine/ and tui/ under `torchdeck`, the styles beside them, and
no top-level `engine` or `tui`; and torchdeck must work from a directory that shadows both.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import REPO, cli_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build = tmp_path_factory.mktemp("build")
    # No build isolation: the venv's setuptools builds it, with no package index involved.
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        capture_output=True, text=True, timeout=300, env={**cli_env(), "TMPDIR": str(build)},
    )
    assert proc.returncode == 0, proc.stderr
    [whl] = out.glob("torchdeck-*.whl")
    return whl


def test_wheel_holds_every_module_under_one_name(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"torchdeck"}, top
    expected = {"torchdeck/" + p.relative_to(REPO / "engine").as_posix() for p in (REPO / "engine").rglob("*.py")}
    expected |= {"torchdeck/tui/" + p.relative_to(REPO / "tui").as_posix()
                 for p in (REPO / "tui").rglob("*") if p.suffix in (".py", ".tcss")}
    expected = {e for e in expected if "__pycache__" not in e}
    assert any(e.endswith(".tcss") for e in expected)
    missing = expected - set(names)
    assert not missing, f"not in the wheel: {sorted(missing)}"
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "torchdeck = torchdeck.tui.entry:main" in zipfile.ZipFile(wheel).read(entry).decode()


@pytest.fixture
def shadowing_dir(tmp_path) -> Path:
    """A user's training repo: its own engine.py and tui.py that must never be imported by us."""
    d = tmp_path / "userrepo"
    d.mkdir()
    for name in ("engine", "tui"):
        (d / f"{name}.py").write_text(f"raise SystemExit('the user\\'s own {name}.py was imported')\n")
    return d


def test_import_is_light_and_ignores_a_users_engine_and_tui(shadowing_dir):
    # torchdeck.integrations too: its frameworks are imported by its submodules only
    code = ("import json, sys, torchdeck, torchdeck.integrations\n"
            "print(json.dumps([torchdeck.__file__, sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'textual', 'rich', 'engine', 'tui', 'lightning', 'pytorch_lightning', 'transformers'))]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=shadowing_dir, capture_output=True, text=True,
                         timeout=60, env=cli_env())
    assert out.returncode == 0, out.stderr
    path, heavy = json.loads(out.stdout)
    assert heavy == []
    assert Path(path).resolve().is_relative_to(REPO / "engine")


def test_cli_and_a_training_run_from_a_directory_with_its_own_engine_and_tui(shadowing_dir, tmp_path):
    torchdeck = Path(sys.executable).with_name("torchdeck")
    env = cli_env()
    out = subprocess.run([str(torchdeck), "--help"], cwd=shadowing_dir, capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 0 and "usage" in out.stdout.lower(), out.stderr
    ws = tmp_path / "ws"
    out = subprocess.run([str(torchdeck), "--workspace", str(ws), "train", "--model", "builtin:linear",
                          "--epochs", "1", "--dataset-size", "256", "--no-checkpoints", "--json"],
                         cwd=shadowing_dir, capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["state"] == "finished"
    assert "own" not in out.stderr
