"""Exports and migration (issue 13): `export onnx|pt2|safetensors`, `onnx inspect|validate|bench|
quantize|optimize`, through the real command line in child processes (real exports, real ONNX
Runtime sessions), and the bad inputs: an untraceable model, damaged files, an IR too new, shapes
that do not fit, unwritable outputs, a killed writer's leftovers."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import cli_cmd, cli_env, dead_pid

USER_MODULE = '''
import torch.nn as nn


class Branchy(nn.Module):
    """Data-dependent control flow: a Python branch on a value, which export cannot trace."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return self.fc(-x) * 2


def branchy():
    return Branchy()


def small():
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
'''


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run(home: Path, *args: str, child: bool = False, timeout: float = 240.0):
    """The command line on `home`'s workspace: in this process (fast: torch and the exporter's
    registry load once), or with `child` in a fresh process, as a user runs it (what reaches
    its real stdout and stderr, fd 1 and 2 included)."""
    import contextlib
    import io
    import subprocess

    argv = ["--workspace", str(home / "ws"), *args]
    if child:
        return subprocess.run(cli_cmd(*argv), cwd=home, env=cli_env(), capture_output=True, text=True,
                              timeout=timeout)
    from torchdeck.tui.cli import main

    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(home)  # a user's module spec is found from the current directory, as on the command line
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        os.chdir(cwd)
    return Result(code, out.getvalue(), err.getvalue())


def doc(proc) -> dict:
    assert proc.stdout.lstrip().startswith("{"), (proc.stdout, proc.stderr)
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A workspace with one trained demo checkpoint, a user module and foreign safetensors files."""
    from safetensors.torch import save_file
    from torchdeck.demo import make_demo_workspace

    home = tmp_path_factory.mktemp("exports")
    make_demo_workspace(home / "ws", epochs=1, dataset_size=256, export=False)
    (home / "usermods.py").write_text(USER_MODULE)
    import importlib.util

    spec = importlib.util.spec_from_file_location("usermods_for_test", home / "usermods.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    save_file(mod.branchy().state_dict(), str(home / "branchy.safetensors"))
    save_file(mod.small().state_dict(), str(home / "small.safetensors"))
    return home


@pytest.fixture(scope="module")
def checkpoint(home) -> Path:
    return next((home / "ws" / "runs").glob("*/checkpoints/step-*"))


@pytest.fixture(scope="module")
def exported(home, checkpoint):
    """One export, made once: (the process, its report)."""
    proc = run(home, "export", "onnx", "--checkpoint", str(checkpoint), "--out", str(home / "m.onnx"), "--json",
               child=True)
    assert proc.returncode == 0, proc.stderr
    return proc, doc(proc)


def test_export_writes_a_validated_file_and_only_the_report_on_stdout(home, checkpoint, exported):
    import onnx
    from torchdeck import __version__
    from torchdeck.exports.onnx import source_sha256

    proc, r = exported
    assert proc.stderr == ""  # the exporter's progress, logging and warnings went to the export's log
    assert "torchvision" in Path(r["log"]).read_text() or Path(r["log"]).exists()
    assert r["ok"] and r["exporter"] == "dynamo" and r["checker_ok"] and not r["external_data"]
    v = r["validation"]
    assert v["checker_ok"] and v["providers"] and v["passed"]
    assert [(row["case"], row["name"]) for row in v["rows"]] == [("batch 1", "output"), ("batch 8", "output")]
    assert all(row["atol"] == 1e-4 and row["rtol"] == 1e-3 and row["passed"] for row in v["rows"])
    assert v["rows"][1]["shape"] == v["rows"][1]["expected_shape"] and v["rows"][1]["shape"][0] == 8
    assert r["max_abs_diff"] == max(row["max_abs_diff"] for row in v["rows"]) < 1e-4
    acc = v["accuracy"]  # the demo run's validation split, through PyTorch and through the export
    assert acc["samples"] > 0 and abs(acc["pytorch"] - acc["onnx"]) < 1e-4
    assert [row["batch_size"] for row in r["benchmark"]["rows"]] == [1, 32]
    for row in r["benchmark"]["rows"]:
        assert row["pytorch"]["p50_ms"] <= row["pytorch"]["p95_ms"] and row["ratio"] > 0
    assert r["speed_ratio"] == r["benchmark"]["ratio_32"]
    m = onnx.load(r["path"])
    props = {p.key: p.value for p in m.metadata_props}
    assert props["source_sha256"] == source_sha256(checkpoint) == r["source_sha256"]
    assert props["torchdeck_version"] == __version__
    assert [d.dim_param for d in m.graph.input[0].type.tensor_type.shape.dim][:1] == ["batch"]
    assert json.loads((home / "m.report.json").read_text())["path"] == r["path"]
    assert not [p for p in home.iterdir() if ".tmp-" in p.name]


def test_human_output_shows_the_tables(home, checkpoint, exported):
    proc = run(home, "onnx", "validate", str(home / "m.onnx"), "--checkpoint", str(checkpoint), child=True)
    assert proc.returncode == 0 and proc.stderr == ""  # ONNX Runtime's C++ lines went to the log
    assert re.search(r"batch 8\s+output\s+8x\d+\s", proc.stdout) and "passed" in proc.stdout


def test_inspect_any_onnx(home, exported):
    proc = run(home, "onnx", "inspect", str(home / "m.onnx"), "--json")
    assert proc.returncode == 0 and proc.stderr == ""
    info = doc(proc)
    assert info["inputs"][0]["name"] == "input" and info["inputs"][0]["dtype"] == "float32"
    assert info["inputs"][0]["shape"][0] == "batch" and all(isinstance(d, int) for d in info["inputs"][0]["shape"][1:])
    assert info["outputs"][0]["name"] == "output"
    assert info["opset"] == 18 and info["ir_version"] >= 8 and info["warnings"] == []
    assert info["ops"] and all(isinstance(n, int) and n > 0 for n in info["ops"].values())
    from torchdeck.checkpoints import formats

    ck = formats.inspect(Path(exported[1]["checkpoint"]))
    assert info["num_params"] == ck.num_params and info["initializer_bytes"] == 4 * ck.num_params
    assert info["metadata"]["source_sha256"] == exported[1]["source_sha256"]
    human = run(home, "onnx", "inspect", str(home / "m.onnx"))
    assert "OPERATOR" in human.stdout and "IR version" in human.stdout


def test_validate_passes_and_fails_with_exit_1_on_changed_weights(home, checkpoint, exported):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    proc = run(home, "onnx", "validate", str(home / "m.onnx"), "--checkpoint", str(checkpoint), "--json")
    assert proc.returncode == 0 and doc(proc)["passed"]
    m = onnx.load(str(home / "m.onnx"))
    init = max(m.graph.initializer, key=lambda t: len(t.dims))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + np.float32(0.5), init.name))
    onnx.save(m, str(home / "changed.onnx"))
    proc = run(home, "onnx", "validate", str(home / "changed.onnx"), "--checkpoint", str(checkpoint), "--json")
    r = doc(proc)
    assert proc.returncode == 1 and not r["passed"] and not any(row["passed"] for row in r["rows"])


def test_validate_refuses_a_model_of_another_shape(home, exported):
    proc = run(home, "onnx", "validate", str(home / "m.onnx"), "--checkpoint", str(home / "small.safetensors"),
               "--model", "usermods:small", "--input-shape", "1,4", "--trust", "--json")
    assert proc.returncode == 2 and doc(proc)["error"]["field"] == "path"
    assert "the checkpoint's model takes (batch, 4)" in doc(proc)["error"]["message"]


def test_bench_random_inputs_of_declared_shapes(home, exported):
    proc = run(home, "onnx", "bench", str(home / "m.onnx"), "--batch-size", "1", "--batch-size", "4", "--json")
    assert proc.returncode == 0 and proc.stderr == ""
    r = doc(proc)
    assert [row["batch_size"] for row in r["rows"]] == [1, 4]
    assert all(0 < row["p50_ms"] <= row["p95_ms"] and row["throughput"] > 0 and row["runs"] >= 10 for row in r["rows"])
    for bad, field in ((["--batch-size", "0"], "batch_size"), (["--dims", "seq"], "dims")):
        proc = run(home, "onnx", "bench", str(home / "m.onnx"), *bad, "--json")
        assert proc.returncode == 2 and doc(proc)["error"]["field"] == field


def test_damaged_files_are_told_clearly(home, exported):
    data = (home / "m.onnx").read_bytes()
    (home / "truncated.onnx").write_bytes(data[: len(data) // 3])
    (home / "noise.onnx").write_bytes(os.urandom(4096))
    (home / "empty.onnx").write_bytes(b"")
    for name in ("truncated.onnx", "noise.onnx", "empty.onnx"):
        for cmd in (["onnx", "inspect"], ["onnx", "bench"]):
            proc = run(home, *cmd, str(home / name), "--json")
            err = doc(proc)["error"]
            assert proc.returncode == 1 and err["code"] == "corrupt" and err["field"] == "path", (name, err)
            assert name in err["message"] and "Traceback" not in proc.stderr
    proc = run(home, "onnx", "inspect", str(home / "nope.onnx"), "--json")
    assert doc(proc)["error"]["code"] == "not_found"
    proc = run(home, "onnx", "inspect", str(home), "--json")
    assert doc(proc)["error"]["field"] == "path" and proc.returncode != 0


def test_an_ir_version_too_new_is_warned_and_refused_to_run(home, exported):
    import onnx

    m = onnx.load(str(home / "m.onnx"))
    m.ir_version = 99
    onnx.save(m, str(home / "future.onnx"))
    proc = run(home, "onnx", "inspect", str(home / "future.onnx"), "--json")
    assert proc.returncode == 0 and any("IR version 99" in w for w in doc(proc)["warnings"])
    proc = run(home, "onnx", "bench", str(home / "future.onnx"), "--json")
    err = doc(proc)["error"]
    assert proc.returncode == 1 and "cannot run it" in err["message"] and "IR version" in err["message"]


def test_untraceable_model_names_the_dynamo_error_and_offers_legacy(home):
    args = ["export", "onnx", "--checkpoint", str(home / "branchy.safetensors"), "--model", "usermods:branchy",
            "--input-shape", "1,4", "--trust", "--out", str(home / "branchy.onnx"), "--json"]
    proc = run(home, *args)
    err = doc(proc)["error"]
    assert proc.returncode == 1 and err["field"] == "exporter"
    assert "data-dependent" in err["message"] and "--exporter legacy" in err["message"]
    assert "\x1b[" not in proc.stdout + proc.stderr
    # the legacy exporter, asked for: it traces one branch, and the validation says it is wrong
    proc = run(home, *args[:-1], "--exporter", "auto", "--json")
    err = doc(proc)["error"]
    assert proc.returncode == 1 and "disagrees" in err["message"] and "legacy" in err["message"]
    assert not (home / "branchy.onnx").exists() and not [p for p in home.iterdir() if ".tmp-" in p.name]


def test_a_checkpoint_without_a_model_needs_one(home):
    proc = run(home, "export", "onnx", "--checkpoint", str(home / "small.safetensors"), "--json")
    assert proc.returncode == 2 and doc(proc)["error"]["field"] == "model"
    proc = run(home, "export", "onnx", "--checkpoint", str(home / "small.safetensors"), "--model", "usermods:small",
               "--trust", "--json")
    assert proc.returncode == 2 and doc(proc)["error"]["field"] == "input_shape"


@pytest.mark.parametrize("flags, field", [(["--dynamic", "sequence"], "dynamic"), (["--opset", "99"], "opset"),
                                          (["--exporter", "nope"], "exporter")])
def test_bad_options_are_refused(home, checkpoint, flags, field):
    proc = run(home, "export", "onnx", "--checkpoint", str(checkpoint), *flags, "--json")
    assert proc.returncode == 2 and doc(proc)["error"]["field"] == field


def test_unwritable_output_is_refused_before_work(home, checkpoint):
    (home / "afile").write_text("x")
    for fmt, name in (("onnx", "x.onnx"), ("pt2", "x.pt2"), ("safetensors", "x.safetensors")):
        proc = run(home, "export", fmt, "--checkpoint", str(checkpoint), "--out", str(home / "afile" / name), "--json")
        assert proc.returncode != 0 and doc(proc)["error"]["field"] == "out"
    proc = run(home, "export", "pt2", "--checkpoint", str(checkpoint), "--out", str(home / "x.onnx"), "--json")
    assert doc(proc)["error"]["field"] == "out" and ".pt2" in doc(proc)["error"]["message"]


def test_a_killed_writers_temporary_is_removed_by_the_next_export(tmp_path):
    from torchdeck.exports.onnx import remove_dead_temporaries

    out = tmp_path / "m.onnx"
    dead = tmp_path / f".m.onnx.tmp-{dead_pid()}"
    dead.mkdir()
    (dead / "m.onnx").write_bytes(b"half")
    alive = tmp_path / f".m.onnx.tmp-{os.getpid()}"
    alive.mkdir()
    remove_dead_temporaries(out)
    assert not dead.exists() and alive.exists()


def test_export_pt2_round_trip_and_the_trust_gate(home, checkpoint):
    from torchdeck.errors import UnsafeFile
    from torchdeck.exports.pt2 import load_pt2

    proc = run(home, "export", "pt2", "--checkpoint", str(checkpoint), "--out", str(home / "m.pt2"), "--json")
    assert proc.returncode == 0 and proc.stderr == ""
    r = doc(proc)
    assert r["ok"] and r["passed"] and [row["case"] for row in r["rows"]] == ["batch 1", "batch 8"]
    assert r["max_abs_diff"] < 1e-5 and (home / "m.pt2").stat().st_size == r["size"]
    with pytest.raises(UnsafeFile) as e:
        load_pt2(home / "m.pt2")
    assert e.value.field == "path" and "--trust" in str(e.value)
    assert load_pt2(home / "m.pt2", trust=True).module() is not None


def test_export_safetensors_reads_back_identical(home, checkpoint):
    from safetensors import safe_open

    proc = run(home, "export", "safetensors", "--checkpoint", str(checkpoint), "--out", str(home / "w.safetensors"),
               "--json")
    assert proc.returncode == 0
    r = doc(proc)
    assert r["round_trip_identical"] and r["tensors"] > 0
    with safe_open(str(home / "w.safetensors"), "pt") as f:
        assert len(list(f.keys())) == r["tensors"]


def test_external_data_above_the_limit_is_kept_together(home, checkpoint, monkeypatch):
    """The 2 GB path without 2 GB: the threshold lowered, the weights go to `.onnx.data` beside it."""
    from torchdeck.exports import onnx as exports
    from torchdeck.exports.inspect import inspect_onnx
    from torchdeck.workspace import Workspace

    monkeypatch.setattr(exports, "EXTERNAL_DATA_BYTES", 0)
    out = home / "big" / "big.onnx"
    r = exports.export_onnx(checkpoint, out, workspace=Workspace.open(home / "ws"), data=False)
    assert r.external_data and r.validation["passed"] and r.checker_ok
    data = Path(r.files[1]).name
    assert Path(r.files[0]).name == "big.onnx" and data.startswith("big.onnx.") and data.endswith(".data")
    assert r.size == sum(Path(p).stat().st_size for p in r.files)
    info = inspect_onnx(out)
    assert list(info["external_data"]) == [data]
    assert 0 < info["external_data"][data] <= info["initializer_bytes"]
    # exported again: the new pair replaces the old one, whose data file goes
    r2 = exports.export_onnx(checkpoint, out, workspace=Workspace.open(home / "ws"), data=False)
    assert sorted(p.name for p in out.parent.iterdir() if ".data" in p.name) == [Path(r2.files[1]).name]
    data = Path(r2.files[1]).name
    (home / "big" / data).rename(home / "big" / "gone")
    assert any("missing" in w for w in inspect_onnx(out)["warnings"])


# -- variants: each a new file with its own report and a verdict (stage B) -----------------------------
@pytest.fixture(scope="module")
def quantized(home, exported):
    proc = run(home, "onnx", "quantize", str(home / "m.onnx"), "--mode", "dynamic", "--json")
    assert proc.returncode == 0, proc.stderr
    return doc(proc)


def test_dynamic_int8_variant_has_its_report_and_verdict(home, quantized):
    import onnx

    r = quantized
    out = home / "m.int8-dynamic.onnx"
    assert r["path"] == str(out) and out.is_file() and r["size"] == out.stat().st_size
    assert r["variant"] == "int8-dynamic" and r["source"] == str(home / "m.onnx") and r["checker_ok"]
    assert {"MatMulInteger", "DynamicQuantizeLinear"} & {n.op_type for n in onnx.load(str(out)).graph.node}
    assert r["size_ratio"] == round(r["size"] / (home / "m.onnx").stat().st_size, 3)
    assert all(row["atol"] == 0.05 and row["rtol"] == 0.05 for row in r["rows"])  # the int8 tolerance, stated
    assert [b["batch_size"] for b in r["benchmark"]] == [1, 32] and r["speed_ratio"] == r["benchmark"][1]["ratio"]
    acc = r["accuracy"]  # the demo run's validation split, through the source and the variant
    assert acc["samples"] > 0 and acc["delta"] == acc["onnx"] - acc["source"]
    assert any(("faster" in v or "SLOWER" in v or "as fast" in v) for v in r["verdict"])
    assert r["recommendation"].startswith(("use ", "keep "))
    assert json.loads((home / "m.int8-dynamic.report.json").read_text())["verdict"] == r["verdict"]


def test_optimized_variant_stays_within_fp32_tolerance(home, exported, quantized):
    proc = run(home, "onnx", "optimize", str(home / "m.onnx"), "--out", str(home / "opt" / "m-opt.onnx"), "--json")
    assert proc.returncode == 0 and proc.stderr == ""
    r = doc(proc)
    assert r["variant"] == "optimized" and r["within_tolerance"] and r["dtype"] == "fp32"
    assert all(row["passed"] and row["atol"] == 1e-4 for row in r["rows"])
    assert (home / "opt" / "m-opt.onnx").is_file() and (home / "opt" / "m-opt.report.json").is_file()


def test_static_qdq_calibrates_on_the_runs_data_and_refuses_bad_data(home, exported):
    proc = run(home, "onnx", "quantize", str(home / "m.onnx"), "--mode", "static", "--json")
    assert proc.returncode == 0, proc.stderr
    r = doc(proc)
    assert r["variant"] == "int8-static" and "QuantizeLinear" in r["ops"] and "accuracy" in r
    for data, code in (("synthetic:nosuch", "not_found"), ("mymod:make", "invalid_value")):
        proc = run(home, "onnx", "quantize", str(home / "m.onnx"), "--mode", "static", "--data", data,
                   "--out", str(home / "bad.onnx"), "--json")
        assert proc.returncode == 2 and doc(proc)["error"]["field"] == "data", proc.stdout
        assert not (home / "bad.onnx").exists()


def test_variant_bad_inputs(home, exported):
    proc = run(home, "onnx", "quantize", str(home / "m.onnx"), "--out", str(home / "m.onnx"), "--json")
    assert proc.returncode == 2 and doc(proc)["error"]["field"] == "out"
    (home / "cut.onnx").write_bytes((home / "m.onnx").read_bytes()[:200])
    proc = run(home, "onnx", "optimize", str(home / "cut.onnx"), "--json")
    assert proc.returncode == 1 and doc(proc)["error"]["code"] == "corrupt"
    assert not (home / "cut.optimized.onnx").exists()


def test_verdict_says_plainly_when_slower_and_less_accurate():
    from torchdeck.exports.variants import verdict

    bench = [{"batch_size": 32, "round_ratios": [0.4, 0.5, 0.6]}]
    r = {"speed_ratio": 0.5, "benchmark": bench, "size_ratio": 0.3, "within_tolerance": False, "max_abs_diff": 0.9, "dtype": "int8",
         "accuracy": {"metric": "accuracy", "source": 0.9, "onnx": 0.7, "delta": -0.2}}
    lines = verdict(r)
    assert lines[0] == "SLOWER than its source: 2.00x the latency at batch 32"
    assert any(v.startswith("LESS ACCURATE: 70.0% against 90.0% (-20.0 points)") for v in lines)
    assert any("beyond the int8 tolerance" in v for v in lines)
    # a ratio inside the spread of the measurements is not called faster or slower
    bench[0]["round_ratios"] = [1.4, 0.9, 1.3]
    assert verdict({**r, "speed_ratio": 1.25})[0].startswith("about as fast as its source (1.25x")


def test_fp16_variant_keeps_float32_inputs_and_states_its_tolerance(home, exported):
    proc = run(home, "onnx", "fp16", str(home / "m.onnx"), "--json")
    assert proc.returncode == 0, proc.stderr
    r = doc(proc)
    assert r["variant"] == "fp16" and r["dtype"] == "fp16" and all(row["atol"] == 1e-2 for row in r["rows"])
    info = doc(run(home, "onnx", "inspect", r["path"], "--json"))
    assert info["inputs"][0]["dtype"] == "float32" and "float16" in info["initializer_dtypes"]


def test_move_to_bf16_states_the_output_difference_and_writes_cast_weights(home, checkpoint):
    from safetensors import safe_open

    out = home / "moved-bf16.safetensors"
    proc = run(home, "export", "move", "--checkpoint", str(checkpoint), "--dtype", "bf16", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    r = doc(proc)
    assert r["dtype"] == "bfloat16" and r["device"] == "cpu" and r["path"] == str(out)
    assert [row["case"] for row in r["rows"]] == ["batch 1", "batch 8"]
    assert all(row["atol"] == 5e-2 for row in r["rows"]) and 0 < r["max_abs_diff"] < 0.5
    with safe_open(str(out), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.bfloat16"}
    proc = run(home, "export", "move", "--checkpoint", str(checkpoint), "--device", "nosuch:0", "--json")
    assert proc.returncode == 2 and doc(proc)["error"]["field"] == "device"


def test_an_export_killed_mid_write_leaves_nothing_under_the_final_name(home, checkpoint):
    import signal
    import subprocess
    import time

    from torchdeck.exports.onnx import remove_dead_temporaries

    out = home / "killed" / "k.onnx"
    out.parent.mkdir()
    proc = subprocess.Popen(cli_cmd("--workspace", str(home / "ws"), "export", "onnx", "--checkpoint", str(checkpoint),
                                    "--out", str(out), "--json"), cwd=home, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    tmp = out.with_name(f".k.onnx.tmp-{proc.pid}")
    while not (tmp / "k.onnx").exists() and proc.poll() is None:  # the exporter has written its file
        assert time.monotonic() < deadline, "the export never wrote its temporary"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and not out.with_suffix(".report.json").exists()
    remove_dead_temporaries(out)  # what the next export to this name does first
    assert sorted(p.name for p in out.parent.iterdir()) == ["k.log"]


def test_exports_of_one_checkpoint_in_three_formats_keep_three_reports(home, checkpoint):
    from torchdeck.exports.onnx import list_exports

    d = home / "three"
    for fmt in ("onnx", "pt2", "safetensors"):
        proc = run(home, "export", fmt, "--checkpoint", str(checkpoint), "--out", str(d / f"x.{fmt}"), "--json")
        assert proc.returncode == 0, proc.stdout
    assert sorted(r["format"] for r in list_exports(d)) == ["onnx", "pt2", "safetensors"]
