"""Checkpoint operations: verify, diff, convert, load-check, list, and the integrity checks
export makes first (issue 7 items 3, 5 and the ops findings)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_cli
from torchdeck.checkpoints import ops
from torchdeck.checkpoints import store as checkpoints
from torchdeck.errors import Corrupt, Exists, NotFound, Unreadable
from torchdeck.models import specs
from torchdeck.workspace import Workspace


def make_ckpt(root: Path, name: str = "step-1", *, hidden: int = 8, seed: int = 0, step: int = 1, keep=None,
              mutate=None) -> Path:
    spec = specs.resolve("builtin:mlp", None, {"in_features": 4, "hidden": hidden, "num_classes": 3})
    torch.manual_seed(seed)
    model = specs.build(spec)
    weights = checkpoints.host_copy(model.state_dict())
    if mutate:
        mutate(weights)
    return checkpoints.save(root, name, weights=weights, training_state={"step": step},
                            meta={"step": step, "epoch": 0, "metrics": {"train_loss": 0.5}, "model_spec": spec.to_json()},
                            keep=keep)


def weights_offset(ckpt: Path) -> int:
    with open(ckpt / checkpoints.WEIGHTS, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    return 8 + n


def flip_bit(ckpt: Path, byte: int = 0, bit: int = 0) -> None:
    p = ckpt / checkpoints.WEIGHTS
    data = bytearray(p.read_bytes())
    data[weights_offset(ckpt) + byte] ^= 1 << bit
    p.write_bytes(bytes(data))


# -- verify -------------------------------------------------------------------------------------
def test_verify_intact(tmp_path):
    r = ops.verify(make_ckpt(tmp_path))
    assert r["ok"] and r["problems"] == [] and r["tensors_checked"] > 0


def test_verify_finite_bit_flip_is_a_hash_problem(tmp_path):
    c = make_ckpt(tmp_path)
    flip_bit(c, byte=0, bit=0)  # lowest mantissa bit: the value stays finite
    r = ops.verify(c)
    assert not r["ok"] and r["nonfinite"] == []
    assert any("sha256" in p for p in r["problems"])


def test_verify_reports_nan_and_inf_per_tensor(tmp_path):
    def poison(w):
        w["0.weight"][0, 0] = float("nan")
        w["0.bias"][0] = float("inf")
        w["0.bias"][1] = float("-inf")

    c = make_ckpt(tmp_path, mutate=poison)
    r = ops.verify(c)
    bad = {d["name"]: (d["nan"], d["inf"]) for d in r["nonfinite"]}
    assert bad == {"0.weight": (1, 0), "0.bias": (0, 2)}
    assert not r["ok"] and len(r["problems"]) == 2  # the hashes match: only the values are wrong


def test_verify_rotated_away_is_not_found_not_damaged(tmp_path):
    old = make_ckpt(tmp_path, "step-1", step=1)
    make_ckpt(tmp_path, "step-2", step=2, keep=1)  # retention removes step-1
    assert not old.exists()
    with pytest.raises(NotFound, match="no longer exists"):
        ops.verify(old)


def test_store_verify_of_a_rotated_checkpoint_is_not_found(tmp_path):
    """What the Checkpoints screen's `v` calls: the app tells a NotFound as its one line."""
    old = make_ckpt(tmp_path, "step-1", step=1)
    assert checkpoints.verify(old) == []
    make_ckpt(tmp_path, "step-2", step=2, keep=1)
    with pytest.raises(NotFound, match="no longer exists") as e:
        checkpoints.verify(old)
    assert e.value.code == "not_found"


def test_verify_unloadable_safetensors_file(tmp_path):
    p = tmp_path / "junk.safetensors"
    p.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{bad}")
    r = ops.verify(p)
    assert not r["ok"] and "cannot be loaded" in r["problems"][0]


# -- export findings ------------------------------------------------------------------------------
def test_export_refuses_a_flipped_bit_before_parity(tmp_path):
    from torchdeck.exports import onnx

    c = make_ckpt(tmp_path / "c")
    flip_bit(c, byte=5, bit=1)
    with pytest.raises(Corrupt, match="sha256") as e:
        onnx.export_onnx(c, tmp_path / "m.onnx")
    assert e.value.code == "corrupt" and "ONNX Runtime" not in str(e.value)
    assert not (tmp_path / "m.onnx").exists()


def test_check_hashes_offered_for_resume(tmp_path):
    c = make_ckpt(tmp_path)
    ops.check_hashes(c)  # intact: nothing raised
    flip_bit(c, byte=3, bit=7)
    with pytest.raises(Corrupt):
        ops.check_hashes(c)


def test_spec_larger_than_weights_is_refused_without_allocating(tmp_path):
    from torchdeck.exports import onnx

    c = make_ckpt(tmp_path / "c")
    meta = json.loads((c / checkpoints.META).read_text())
    meta["model_spec"]["kwargs"]["hidden"] = 300000
    (c / checkpoints.META).write_text(json.dumps(meta))
    with pytest.raises(Corrupt, match="meta.json and the weights disagree"):
        checkpoints.load_model(c)
    with pytest.raises(Corrupt, match="parameters"):
        onnx.export_onnx(c, tmp_path / "m.onnx")


# -- diff -----------------------------------------------------------------------------------------
def test_diff_same_and_different(tmp_path):
    a = make_ckpt(tmp_path / "a", seed=0)
    same = ops.diff(a, a)
    assert same["identical"] and all(t["max_abs_diff"] == 0 for t in same["tensors"])
    b = make_ckpt(tmp_path / "b", seed=1)
    d = ops.diff(a, b)
    assert not d["identical"] and d["only_in_a"] == [] and d["only_in_b"] == []
    diffs = [t["max_abs_diff"] for t in d["tensors"]]
    assert diffs == sorted(diffs, reverse=True) and diffs[0] > 0


def test_diff_keys_and_shapes(tmp_path):
    a = make_ckpt(tmp_path / "a", hidden=8)
    b = make_ckpt(tmp_path / "b", hidden=16)
    w = checkpoints.load_weights(a)
    w["extra"] = torch.zeros(2)
    w["0.bias"] = w["0.bias"].half()
    from safetensors.torch import save_file

    f = tmp_path / "a.safetensors"
    save_file(w, str(f))
    d = ops.diff(f, b)
    assert d["only_in_a"] == ["extra"]
    changed = {c["name"] for c in d["changed"]}
    assert {"0.weight", "0.bias"} <= changed and all(c["a"]["shape"] != c["b"]["shape"] or c["a"]["dtype"] != c["b"]["dtype"] for c in d["changed"])


def test_diff_against_torch_file(tmp_path):
    a = make_ckpt(tmp_path / "a")
    w = checkpoints.load_weights(a)
    k = next(iter(w))
    w[k] = w[k] + 0.25
    torch.save(w, tmp_path / "b.pt")
    d = ops.diff(a, tmp_path / "b.pt")
    assert d["tensors"][0]["name"] == k and abs(d["tensors"][0]["max_abs_diff"] - 0.25) < 1e-6


def test_diff_nan_and_inf_are_json_safe(tmp_path):
    from safetensors.torch import save_file

    nan = torch.tensor([float("nan"), 1.0])
    save_file({"same_nan": nan, "inf": torch.tensor([float("inf")]), "x": torch.zeros(1)}, str(tmp_path / "a.safetensors"))
    save_file({"same_nan": nan.clone(), "inf": torch.tensor([2.0]), "x": torch.ones(1)}, str(tmp_path / "b.safetensors"))
    d = ops.diff(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert [(t["name"], t["max_abs_diff"]) for t in d["tensors"]] == [("inf", None), ("x", 1.0), ("same_nan", 0.0)]
    json.dumps(d, allow_nan=False)  # strict JSON: no bare NaN


def test_diff_streams_tensor_by_tensor(tmp_path):
    """Two files of 6 x 32 MiB: the diff's peak memory growth stays under 2x the largest tensor
    (compared chunk by chunk from the files; 31 MiB measured), far below one whole file."""
    from safetensors.torch import save_file

    n = 8 << 20
    for name, seed in (("a", 0), ("b", 1)):
        g = torch.Generator().manual_seed(seed)
        save_file({f"t{i}": torch.randn(n, generator=g) for i in range(6)}, str(tmp_path / f"{name}.safetensors"))
    code = f"""
import resource, torch
from torchdeck.checkpoints import ops
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
d = ops.diff({str(tmp_path / "a.safetensors")!r}, {str(tmp_path / "b.safetensors")!r})
assert len(d["tensors"]) == 6
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r0) // 1024)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    growth_mib = int(p.stdout.strip())
    assert growth_mib < 2 * 32, f"diff grew by {growth_mib} MiB for 32 MiB tensors"


# -- convert --------------------------------------------------------------------------------------
def tied_pt(tmp_path) -> Path:
    emb = torch.randn(5, 3)
    w = {"embed.weight": emb, "head.weight": emb, "half": emb[:2], "b": torch.ones(2)}
    p = tmp_path / "tied.pt"
    torch.save(w, p)
    return p


def test_convert_tied_to_safetensors_keeps_once(tmp_path):
    from safetensors import safe_open

    r = ops.convert(tied_pt(tmp_path), "safetensors", out=tmp_path / "o.safetensors")
    assert r["aliases"] == {"head.weight": "embed.weight"} and r["cloned"] == ["half"]
    with safe_open(str(tmp_path / "o.safetensors"), framework="pt") as f:
        assert set(f.keys()) == {"embed.weight", "half", "b"}
        assert json.loads(f.metadata()["torchdeck_aliases"]) == {"head.weight": "embed.weight"}


def test_convert_dtype_and_round_trip(tmp_path):
    a = make_ckpt(tmp_path / "a")
    r = ops.convert(a, "pt", dtype="bf16", out=tmp_path / "w.pt")
    w = torch.load(tmp_path / "w.pt", weights_only=True)
    assert all(v.dtype == torch.bfloat16 for v in w.values()) and r["dtype"] == "bfloat16"
    r2 = ops.convert(tmp_path / "w.pt", "safetensors", out=tmp_path / "w.safetensors")
    assert ops.diff(tmp_path / "w.pt", Path(r2["path"]))["identical"]


def test_convert_out_checked_first(tmp_path):
    a = make_ckpt(tmp_path / "a")
    with pytest.raises(Exists):
        ops.convert(a, "pt", out=tmp_path)  # an existing directory
    (tmp_path / "taken.pt").write_bytes(b"mine")
    with pytest.raises(Exists):
        ops.convert(a, "pt", out=tmp_path / "taken.pt")
    assert (tmp_path / "taken.pt").read_bytes() == b"mine"
    with pytest.raises(Unreadable):
        ops.convert(a, "pt", out=tmp_path / "nowhere" / "x.pt")
    with pytest.raises(Unreadable):
        ops.convert(a, "pt", out=tmp_path / "taken.pt" / "x.pt")  # a file as the folder
    with pytest.raises(Unreadable):
        ops.convert(a, "pt", out="/proc/x.pt")  # not writable, even for root
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(Unreadable):
                ops.convert(a, "pt", out=ro / "x.pt")
        finally:
            ro.chmod(0o700)


def test_convert_default_out_beside_and_never_overwritten(tmp_path):
    f = tmp_path / "w.pt"
    torch.save({"x": torch.ones(3)}, f)
    r = ops.convert(f, "safetensors")
    assert r["path"] == str(tmp_path / "w.safetensors")
    with pytest.raises(Exists, match="--out"):
        ops.convert(f, "safetensors")
    r = ops.convert(tmp_path / "w.safetensors", "pt", dtype="fp16")
    assert r["path"] == str(tmp_path / "w-fp16.pt")
    assert torch.load(r["path"], weights_only=True)["x"].dtype == torch.float16


def test_convert_failing_write_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.torch

    a = make_ckpt(tmp_path / "a")

    def half_then_fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_fail)
    with pytest.raises(Exception) as e:
        ops.convert(a, "safetensors", out=tmp_path / "o.safetensors")
    assert e.value.code == "no_space"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_convert_killed_leaves_nothing_under_final_name(tmp_path):
    a = make_ckpt(tmp_path / "a")
    out = tmp_path / "o.pt"
    code = f"""
import os, signal, torch
from torchdeck.checkpoints import ops
real = torch.save
def save(obj, f):
    real(obj, f)
    os.kill(os.getpid(), signal.SIGKILL)  # killed after the bytes, before the rename
torch.save = save
ops.convert({str(a)!r}, "pt", out={str(out)!r})
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert p.returncode == -9, p.stderr
    assert not out.exists()
    left = [x.name for x in tmp_path.iterdir() if x.name != "a"]
    assert left and all(x.startswith(".o.pt.tmp-") for x in left)  # only the dead writer's temporary
    ops.convert(a, "pt", out=out)  # the next convert to that name clears it
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a", "o.pt"]


# -- load-check -----------------------------------------------------------------------------------
def mlp_spec(hidden=8):
    return specs.resolve("builtin:mlp", None, {"in_features": 4, "hidden": hidden, "num_classes": 3})


def test_load_check_ok_and_mismatch(tmp_path):
    a = make_ckpt(tmp_path / "a")
    assert ops.load_check(a, mlp_spec())["ok"]
    r = ops.load_check(a, mlp_spec(hidden=16))
    assert not r["ok"] and r["mismatched"] and r["missing"] == [] and r["unexpected"] == []


@pytest.mark.parametrize("prefix", ["model.", "module.", "_orig_mod."])
def test_load_check_offers_prefix_strip(tmp_path, prefix):
    from safetensors.torch import save_file

    w = checkpoints.load_weights(make_ckpt(tmp_path / "a"))
    f = tmp_path / "p.safetensors"
    save_file({prefix + k: v for k, v in w.items()}, str(f))
    r = ops.load_check(f, mlp_spec())
    assert not r["ok"] and r["suggested_prefix_fix"] == {"strip": prefix}


def test_prefix_fix_add_and_none():
    model = {"module.fc.weight": [2, 2], "module.fc.bias": [2]}
    assert ops.prefix_fix(model, {"fc.weight": [2, 2], "fc.bias": [2]}) == {"add": "module."}
    assert ops.prefix_fix(model, {"fc.weight": [2, 2]}) is None  # a key short: no prefix makes it match
    assert ops.prefix_fix(model, dict(model)) is None
    assert ops.prefix_fix(model, {}) is None


# -- the command line -----------------------------------------------------------------------------
@pytest.fixture
def ws(tmp_path):
    return Workspace.open(tmp_path / "ws")


def cli(ws, *args):
    return run_cli("--workspace", str(ws.root), *args, cwd=ws.root.parent)


def test_cli_verify_exit_codes(ws, tmp_path):
    c = make_ckpt(tmp_path / "c")
    ok = cli(ws, "ckpt", "verify", str(c), "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["ok"]
    flip_bit(c)
    bad = cli(ws, "ckpt", "verify", str(c))
    assert bad.returncode == 1 and "sha256" in bad.stdout
    gone = cli(ws, "ckpt", "verify", str(tmp_path / "nothing"), "--json")
    assert gone.returncode == 2 and json.loads(gone.stdout)["error"]["code"] == "not_found"


def test_cli_diff_convert_loadcheck(ws, tmp_path):
    a = make_ckpt(tmp_path / "a", seed=0)
    b = make_ckpt(tmp_path / "b", seed=1)
    d = cli(ws, "ckpt", "diff", str(a), str(b), "--json")
    assert d.returncode == 0 and json.loads(d.stdout)["tensors"][0]["max_abs_diff"] > 0
    out = tmp_path / "x.safetensors"
    c = cli(ws, "ckpt", "convert", str(a), "--to", "safetensors", "--dtype", "fp16", "--out", str(out), "--json")
    assert c.returncode == 0 and json.loads(c.stdout)["dtype"] == "float16" and out.exists()
    again = cli(ws, "ckpt", "convert", str(a), "--to", "safetensors", "--out", str(out))
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1 and "exists" in again.stderr
    lc = cli(ws, "ckpt", "load-check", str(a), "--model", "builtin:mlp", "--args",
             '{"in_features": 4, "hidden": 8, "num_classes": 3}')
    assert lc.returncode == 0 and "loads into" in lc.stdout
    bad = cli(ws, "ckpt", "load-check", str(a), "--model", "builtin:mlp", "--json")
    assert bad.returncode == 1 and json.loads(bad.stdout)["mismatched"]
    junk = cli(ws, "ckpt", "load-check", str(a), "--model", "builtin:mlp", "--args", "[1")
    assert junk.returncode == 2 and len(junk.stderr.strip().splitlines()) == 1


def test_cli_list_empty_and_unknown_run(ws):
    empty = cli(ws, "ckpt", "list", "--json")
    assert empty.returncode == 0 and json.loads(empty.stdout) == []
    unknown = cli(ws, "ckpt", "list", "no-such-run")
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1


def test_cli_list_verify_loadcheck_of_a_trained_run(ws):
    out = cli(ws, "train", "--model", "demo", "--epochs", "2", "--dataset-size", "256", "--name", "ops", "--json")
    assert out.returncode == 0, out.stderr
    run_id = json.loads(out.stdout)["id"]
    listed = cli(ws, "ckpt", "list", "--json")
    rows = json.loads(listed.stdout)
    assert listed.returncode == 0 and [r["step"] for r in rows] == sorted((r["step"] for r in rows), reverse=True)
    assert rows and all(r["run"] == run_id and r["size"] > 0 and r["loss"] is not None for r in rows)
    one = cli(ws, "ckpt", "list", "ops")
    assert one.returncode == 0 and rows[0]["name"] in one.stdout and "LOSS" in one.stdout
    assert cli(ws, "ckpt", "verify", "ops").returncode == 0
    lc = cli(ws, "ckpt", "load-check", "ops", "--model", "demo", "--json")
    assert lc.returncode == 0 and json.loads(lc.stdout)["ok"], lc.stdout + lc.stderr
