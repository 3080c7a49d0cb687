"""RUN lookup (exact id, exact name newest first, then a unique prefix or suffix of the id) and
removal of runs that are not active, through RunStore and through `torchdeck runs rm`.

Runs here are made by RunStore.create and given their final files by hand: no worker starts."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import time
from dataclasses import asdict

import pytest
from helpers import cli_cmd, cli_env, dead_pid, read_json
from torchdeck.errors import Busy, InvalidRequest, NotFound
from torchdeck.fsutil import atomic_write_json
from torchdeck.runs import store as store_mod
from torchdeck.runs.config import RunConfig
from torchdeck.runs.store import LOCK_NAME, RunStore, Status
from torchdeck.workspace import Workspace


@pytest.fixture
def ws(tmp_path):
    return Workspace.open(tmp_path / "ws")


@pytest.fixture
def store(ws):
    return RunStore(ws)


def make_run(store, run_id, *, name="", state="finished"):
    """A run directory as its worker would have left it in `state` (no worker involved)."""
    run = store.create(RunConfig(model="builtin:linear", name=name), run_id=run_id)
    if state != "queued":
        st = Status(state=state, host=os.uname().nodename, step=10, message="")
        atomic_write_json(run.path / "status.json", asdict(st))
        summ = run.summary()
        summ.state = state
        atomic_write_json(run.path / "summary.json", asdict(summ))
    return run


@pytest.fixture
def three(store):
    """Two runs share a day and a name; a third is from another day and has a suffix of its own."""
    a = make_run(store, "20260101-090000-ab12", name="baseline")
    b = make_run(store, "20260101-100000-cd34", name="baseline")
    c = make_run(store, "20260202-080000-ab99", name="20260101")  # a name that looks like a prefix
    return a, b, c


def test_exact_id_first(store, three):
    a, b, c = three
    assert store.get(a.id).id == a.id
    assert store.get(f"  {b.id}\n").id == b.id  # surrounding blanks (a pasted id) do not matter


def test_exact_name_is_the_newest_of_that_name(store, three):
    a, b, c = three
    assert store.get("baseline").id == b.id


def test_name_before_prefix(store, three):
    # "20260101" is a prefix of two ids, and exactly the name of the third run: the name wins.
    assert store.get("20260101").id == three[2].id


def test_exact_id_before_a_name_equal_to_it(store, three):
    a, b, c = three
    d = make_run(store, "20260303-000000-ee00", name=a.id)  # a newer run named like a's id
    assert store.get(a.id).id == a.id
    assert store.get(d.id).id == d.id


def test_unique_suffix_and_prefix(store, three):
    a, b, c = three
    assert store.get("cd34").id == b.id          # the random suffix, the handy part
    assert store.get("100000-cd34").id == b.id   # a longer suffix
    assert store.get("20260202").id == c.id      # a unique prefix
    assert store.get("20260101-09").id == a.id


def test_ambiguous_lists_candidates(store, three):
    a, b, c = three
    with pytest.raises(InvalidRequest) as e:
        store.get("2026")
    assert not isinstance(e.value, NotFound)
    assert e.value.code == "invalid_value" and e.value.field == "run"
    assert all(r.id in str(e.value) for r in three)
    assert "baseline" in str(e.value)  # candidates shown with their names
    # A part that is a suffix of one id and a prefix of none is still matched as either.
    with pytest.raises(InvalidRequest) as e:
        store.get("20260101-")  # a prefix of a and b
    assert a.id in str(e.value) and b.id in str(e.value) and c.id not in str(e.value)


@pytest.mark.parametrize("ref", ["nope", "zz99", "20270101", "../20260101-090000-ab12", "a" * 300])
def test_no_match_is_not_found(store, three, ref):
    with pytest.raises(NotFound) as e:
        store.get(ref)
    assert e.value.code == "not_found" and e.value.field == "run"
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("ref", ["", "   ", None])
def test_empty_ref_is_invalid(store, three, ref):
    with pytest.raises(InvalidRequest) as e:
        store.get(ref)
    assert e.value.field == "run"


def test_no_runs_at_all(store):
    with pytest.raises(NotFound):
        store.get("anything")


def test_unreadable_summary_still_found_by_id(store, three):
    a = three[0]
    (a.path / "summary.json").write_text("{torn")
    assert store.get("ab12").id == a.id
    assert store.get("baseline").id == three[1].id


# -- removal -------------------------------------------------------------------------------------
def test_remove_a_finished_run(store, three):
    a, b, c = three
    removed = store.remove("ab12")
    assert removed.id == a.id
    assert not a.path.exists()
    assert [r.id for r in store.runs()] == [c.id, b.id]
    assert not any(p.name.startswith(".removing") for p in store.root.iterdir())  # nothing left aside
    assert store.get("baseline").id == b.id


def test_remove_refuses_an_active_run_and_keeps_it(store):
    run = make_run(store, "20260101-090000-aaaa", state="running")
    before = sorted(p.name for p in run.path.iterdir())
    with open(run.path / LOCK_NAME, "a") as lock:  # its worker, as far as anyone can tell
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(Busy) as e:
            store.remove(run.id)
    assert e.value.code == "busy" and e.value.field == "run"
    assert "runs stop" in str(e.value)
    assert sorted(p.name for p in run.path.iterdir()) == before
    assert read_json(run.path / "status.json")["state"] == "running"


def test_remove_refuses_a_queued_run_that_is_still_launching(store):
    run = store.create(RunConfig(model="builtin:linear"), run_id="20260101-090000-bbbb")  # launcher: us, alive
    with pytest.raises(Busy):
        store.remove(run.id)
    assert run.path.exists()


def test_remove_a_run_that_never_started(store):
    run = store.create(RunConfig(model="builtin:linear"), run_id="20260101-090000-cccc")
    launch = read_json(run.path / "launch.json")
    launch["launcher"] = {"pid": dead_pid(), "pid_start": None}
    launch["created"] = time.time() - 3600
    atomic_write_json(run.path / "launch.json", launch)
    assert run.liveness().state == "failed"
    store.remove("cccc")
    assert not run.path.exists()


def test_remove_unknown_run(store, three):
    with pytest.raises(NotFound):
        store.remove("nope")
    assert len(store.runs()) == 3


def test_remove_failing_half_way_leaves_nothing_listed(store, three, monkeypatch):
    a = three[0]

    def half(path, onerror=None, **kw):
        onerror(os.unlink, str(path / "status.json"), (PermissionError, PermissionError(13, "Permission denied"), None))

    monkeypatch.setattr(store_mod.shutil, "rmtree", half)
    with pytest.raises(store_mod.OperationFailed) as e:
        store.remove(a.id)
    assert "no longer listed" in str(e.value) and ".removing-" in str(e.value)
    assert a.id not in [r.id for r in store.runs()]


# -- the command line ----------------------------------------------------------------------------
def cli(ws, *args, timeout=60):
    return subprocess.run(cli_cmd("--workspace", str(ws.root), *args), env=cli_env(), capture_output=True,
                          text=True, timeout=timeout)


def test_cli_runs_rm(ws, store, three):
    a, b, c = three
    out = cli(ws, "runs", "rm", "cd34")
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == f"run {b.id} removed" and out.stdout == ""
    assert not b.path.exists()
    out = cli(ws, "runs", "rm", "baseline", "--json")  # now only a has that name
    assert out.returncode == 0 and json.loads(out.stdout) == {"id": a.id, "removed": True}
    assert [r.id for r in store.runs()] == [c.id]


@pytest.mark.parametrize("ref,status,says", [("2026", 2, "ambiguous"), ("nope", 2, "no run 'nope'")])
def test_cli_runs_rm_bad_refs(ws, store, three, ref, status, says):
    out = cli(ws, "runs", "rm", ref)
    assert out.returncode == status
    assert len(out.stderr.strip().splitlines()) == 1 and says in out.stderr
    assert len(store.runs()) == 3


def test_cli_runs_rm_active_run_is_busy(ws, store):
    run = make_run(store, "20260101-090000-dddd", state="running")
    with open(run.path / LOCK_NAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        out = cli(ws, "runs", "rm", "dddd")
    assert out.returncode == 1
    assert out.stderr.strip() == f"torchdeck: error: run {run.id} is running: stop it first (torchdeck runs stop {run.id})"
    assert run.path.exists()


@pytest.mark.parametrize("ref,code,status", [("2026", "invalid_value", 2), ("nope", "not_found", 2),
                                             ("dddd", "busy", 1)])
def test_cli_runs_rm_json_errors(ws, store, three, ref, code, status):
    run = make_run(store, "20260101-090000-dddd", state="running")
    with open(run.path / LOCK_NAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        out = cli(ws, "runs", "rm", ref, "--json")
    assert out.returncode == status
    doc = json.loads(out.stdout)
    assert doc["error"]["code"] == code and doc["error"]["field"] == "run"
    assert len(store.runs()) == 4


def test_cli_show_takes_a_suffix(ws, store, three):
    out = cli(ws, "runs", "show", "ab99", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["id"] == three[2].id


def test_remove_refuses_a_run_whose_worker_started_after_the_first_look(store, monkeypatch):
    run = make_run(store, "20260101-090000-eeee", state="failed")
    real = store_mod.Run.liveness

    def then_a_worker_starts(self, status=None):
        live = real(self, status)
        started = Status(state="running", host=os.uname().nodename)
        atomic_write_json(self.path / "status.json", asdict(started))
        return live

    monkeypatch.setattr(store_mod.Run, "liveness", then_a_worker_starts)
    with pytest.raises(Busy):
        store.remove(run.id)
    assert run.path.exists()


def test_control_request_on_a_full_disk(store, monkeypatch):
    run = make_run(store, "20260101-090000-ffff", state="running")

    def full(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_mod, "atomic_write_json", full)
    with pytest.raises(store_mod.NoSpace) as e:
        run.request("stop")
    assert e.value.code == "no_space"
