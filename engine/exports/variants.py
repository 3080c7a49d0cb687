"""Variants of an ONNX export for inference, each a new file with its own report: size, output
difference and accuracy change against its source, speed ratio against its source, and a verdict
that says plainly when the variant is slower or less accurate, with a recommendation among the
variants of that source measured so far.

- optimized: ONNX Runtime's extended graph optimizations, saved through
  SessionOptions.optimized_model_filepath (extended, not "all": layout-specific fused kernels of
  level "all" run only on the machine that wrote them).
- int8-dynamic: quant_pre_process (shape inference, basic optimizations), then quantize_dynamic
  (int8 weights, activations quantized at run time): ORT's advice for transformers and RNNs.
- int8-static: quant_pre_process, then quantize_static in QDQ format, S8S8, calibrated on
  samples of the model's dataset: ORT's advice for CNNs.
- fp16: weights and computation in float16 (onnxruntime.transformers.float16), inputs and
  outputs kept float32 so that callers do not change; meant for GPUs: on a CPU it is often slower.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from torchdeck.errors import DataError, InvalidRequest, OperationFailed, from_os_error

from .common import (
    captured_output,
    check_out,
    compare,
    first_line,
    log_path,
    measure_interleaved,
    report_path,
)
from .inspect import dtype_of_model, inspect_onnx, open_session, random_inputs

MODES = ("dynamic", "static")
VARIANTS = ("optimized", "int8-dynamic", "int8-static", "fp16")
CALIBRATION_SAMPLES = 128
# The recommendation: the fastest variant whose accuracy drops by at most this much (in points
# of accuracy, or relatively for a loss), else the source itself.
MAX_ACCURACY_DROP = 0.01


def default_variant_out(src: Path, variant: str) -> Path:
    return src.with_name(f"{src.stem}.{variant}.onnx")


def _source_report(src: Path) -> dict[str, Any] | None:
    try:
        d = json.loads(report_path(src).read_text())
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def _data_for(src: Path, data_spec: str | None) -> dict[str, Any] | None:
    """Data settings for accuracy and calibration: --data, else the run data of the checkpoint
    the source was exported from (its report names it)."""
    from .onnx import _data_of

    if data_spec:
        return {"data": data_spec}
    rep = _source_report(src)
    while rep and rep.get("source"):  # a variant of a variant: its root export knows the checkpoint
        rep = _source_report(Path(rep["source"]))
    found = _data_of(Path(rep["checkpoint"])) if rep and rep.get("checkpoint") else None
    if found is None and rep and str(rep.get("model", "")).startswith("builtin:"):
        from torchdeck.models import specs

        builtin = specs.BUILTINS.get(str(rep["model"]).split(":", 1)[1].split("(", 1)[0])
        found = {"data": builtin.default_data} if builtin else None  # a built-in's own data
    return found


class _Calibration:
    """onnxruntime.quantization.CalibrationDataReader over the training split's first samples."""

    def __init__(self, name: str, x, batch: int = 16):
        self.items = [{name: x[i:i + batch].numpy()} for i in range(0, len(x), batch)]
        self.pos = 0

    def get_next(self):
        if self.pos >= len(self.items):
            return None
        self.pos += 1
        return self.items[self.pos - 1]

    def rewind(self):
        self.pos = 0


def _calibration_x(data: dict[str, Any] | None):
    from torchdeck.data import sources
    from torchdeck.errors import TorchdeckError

    spec = (data or {}).get("data")
    if not isinstance(spec, str) or not spec:
        raise DataError("static quantization calibrates on data: give --data SPEC (the checkpoint's run "
                        "data is used when the source was exported by torchdeck from a run)")
    if not (spec.startswith("synthetic:") or spec.startswith("file:")):
        raise DataError(f"{spec} is a callable (code): calibration reads synthetic sets and files only")
    try:
        d = sources.load(spec, size=data.get("dataset_size"), seed=data.get("seed") or 0,
                         import_root=data.get("import_root"))
    except TorchdeckError as e:
        raise DataError(f"calibration data: {e}") from None
    return d.x_train[:CALIBRATION_SAMPLES]


def default_dims(src: Path, src_info: dict[str, Any]) -> dict[str, int]:
    """Sizes of the symbolic axes past the batch: the sample shape torchdeck exported with."""
    rep = _source_report(src)
    while rep and rep.get("source"):
        rep = _source_report(Path(rep["source"]))
    sample = (rep or {}).get("sample_shape") or []
    dims: dict[str, int] = {}
    for i in src_info["inputs"]:
        for axis, d in enumerate(i["shape"] or []):
            if axis and isinstance(d, str) and axis - 1 < len(sample):
                dims[d] = int(sample[axis - 1])
    return dims


def make_variant(src: str | os.PathLike, variant: str, *, out: str | os.PathLike | None = None,
                 data_spec: str | None = None, dims: dict[str, int] | None = None) -> dict[str, Any]:
    """Write the variant (`optimized`, `int8-dynamic`, `int8-static`) of `src` with its report.
    Written even when worse than its source: the verdict says so."""
    if variant not in VARIANTS:
        raise InvalidRequest(f"unknown variant {variant!r}", field="mode")
    src = Path(src)
    src_info = inspect_onnx(src)
    if src_info["external_data"]:
        raise InvalidRequest(f"{src.name} keeps its weights in external data; variants of models over 2 GB are "
                             "not made here", field="path")
    out = check_out(out if out is not None else default_variant_out(src, variant))
    if out.resolve() == src.resolve():
        raise InvalidRequest("the variant would replace its source; give another --out", field="out")
    data = _data_for(src, data_spec)
    dims = {**default_dims(src, src_info), **(dims or {})}
    from .inspect import random_inputs as _check

    _check(src_info, 1, dims)  # every symbolic axis has a size, before any work
    t0 = time.monotonic()
    from .onnx import remove_dead_temporaries

    remove_dead_temporaries(out)
    tmpdir = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with captured_output(log_path(out)):
            src_sess = open_session(src)
            tmpdir.mkdir()
            tmp = tmpdir / out.name
            _write_variant(src, tmp, tmpdir, variant, src_sess, data)
            report = _variant_report(src, tmp, variant, src_info, src_sess, data, dims)
        report["path"] = str(out)
        report["log"] = str(log_path(out))
        report["seconds"] = round(time.monotonic() - t0, 3)
        os.replace(tmp, out)
        from torchdeck.fsutil import atomic_write_json

        atomic_write_json(report_path(out), report)
    except OSError as e:
        raise from_os_error(e, f"cannot write {out}", field="out") from None
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    report["recommendation"] = recommend(src)
    atomic_write_json(report_path(out), report)
    return report


def _write_variant(src: Path, tmp: Path, tmpdir: Path, variant: str, src_sess, data) -> None:
    if variant == "optimized":
        try:
            open_session(src, level="ORT_ENABLE_EXTENDED", optimized_out=str(tmp), providers=["CPUExecutionProvider"])
        except Exception as e:
            raise OperationFailed(f"ONNX Runtime could not optimize {src.name}: {first_line(e)}") from None
        return
    if variant == "fp16":
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        try:
            onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(tmp))
        except OSError:
            raise
        except Exception as e:
            raise OperationFailed(f"converting {src.name} to fp16 failed: {first_line(e)}") from None
        return
    from onnxruntime.quantization import (
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_dynamic,
        quantize_static,
    )

    pre = tmpdir / "preprocessed.onnx"
    try:
        quant_pre_process(str(src), str(pre))
    except Exception as e:  # symbolic shape inference fails on some graphs: quantize the source as it is
        print(f"quant_pre_process failed ({first_line(e)}); quantizing without it")
        shutil.copyfile(src, pre)
    try:
        if variant == "int8-dynamic":
            quantize_dynamic(str(pre), str(tmp), weight_type=QuantType.QInt8)
        else:
            x = _calibration_x(data)
            reader = _Calibration(src_sess.get_inputs()[0].name, x)
            quantize_static(str(pre), str(tmp), reader, quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    except (OSError, DataError):
        raise
    except Exception as e:
        raise OperationFailed(f"quantizing {src.name} failed: {first_line(e)}") from None
    finally:
        pre.unlink(missing_ok=True)


def _variant_report(src: Path, tmp: Path, variant: str, src_info, src_sess, data, dims) -> dict[str, Any]:
    from .validate import accuracy, checker

    info = inspect_onnx(tmp)
    sess = open_session(tmp)
    ok, why = checker(tmp)
    dtype = "int8" if variant.startswith("int8") else "fp16" if variant == "fp16" else dtype_of_model(info)
    rows = []
    names = [o.name for o in sess.get_outputs()]
    for bs in (1, 8):
        feeds = random_inputs(src_info, bs, dims, seed=bs)
        rows += compare(f"batch {bs}", names, sess.run(None, feeds), src_sess.run(None, feeds), dtype)
    bench = []
    cpu_src = open_session(src, providers=["CPUExecutionProvider"])
    cpu_var = open_session(tmp, providers=["CPUExecutionProvider"])
    for bs in (1, 32):
        feeds = random_inputs(src_info, bs, dims, seed=bs)
        (a, b), rounds = measure_interleaved([lambda: cpu_src.run(None, feeds), lambda: cpu_var.run(None, feeds)], bs)
        bench.append({"batch_size": bs, "source": a.to_json(), "variant": b.to_json(),
                      "ratio": round(a.p50_ms / b.p50_ms, 3) if b.p50_ms else None,
                      "round_ratios": [round(x / y, 3) for x, y in zip(*rounds) if y]})
    acc = accuracy(None, sess, None, data, reference=src_sess) if data else "no labelled data known for the source"
    size = tmp.stat().st_size
    src_size = src_info["size"]
    report: dict[str, Any] = {
        "format": "onnx", "variant": variant, "source": str(src), "created": time.time(),
        "size": size, "source_size": src_size, "size_ratio": round(size / src_size, 3) if src_size else None,
        "checker_ok": ok, "checker_error": why, "providers": sess.get_providers(), "dtype": dtype,
        "ops": info["ops"], "opset": info["opset"],
        "rows": [r.to_json() for r in rows],
        "max_abs_diff": max((r.max_abs_diff for r in rows if r.max_abs_diff is not None), default=0.0),
        "max_rel_diff": max((r.max_rel_diff for r in rows if r.max_rel_diff is not None), default=0.0),
        "within_tolerance": all(r.passed for r in rows),
        "benchmark": bench, "speed_ratio": bench[-1]["ratio"],
    }
    if isinstance(acc, dict):
        acc["delta"] = acc["onnx"] - acc["source"]
        report["accuracy"] = acc
    else:
        report["accuracy_note"] = acc
    report["verdict"] = verdict(report)
    report["ok"] = ok
    return report


def speed_call(r: dict[str, Any]) -> str:
    """faster, slower or same at batch 32: beyond 5%, and in every round of the interleaved
    measurement (a sign test: when the rounds disagree the difference is the machine's noise,
    which ranks micro-second models otherwise)."""
    rows = r.get("benchmark") or []
    ratio = r.get("speed_ratio")
    if not rows or ratio is None:
        return "same"
    rounds = rows[-1].get("round_ratios") or [ratio]
    if ratio > 1.05 and all(x > 1.0 for x in rounds):
        return "faster"
    if ratio < 0.95 and all(x < 1.0 for x in rounds):
        return "slower"
    return "same"


def verdict(r: dict[str, Any]) -> list[str]:
    """Plain sentences: faster or slower, smaller or not, as accurate or less."""
    lines = []
    ratio = r.get("speed_ratio")
    if ratio is not None:
        if speed_call(r) == "slower":
            lines.append(f"SLOWER than its source: {1 / ratio:.2f}x the latency at batch 32")
        elif speed_call(r) == "faster":
            lines.append(f"faster than its source: {ratio:.2f}x at batch 32")
        else:
            lines.append(f"about as fast as its source ({ratio:.2f}x at batch 32, within the measurement's spread)")
    if r.get("size_ratio") is not None:
        lines.append(f"{r['size_ratio'] * 100:.0f}% of its source's size")
    acc = r.get("accuracy")
    if acc:
        d = acc["delta"]
        if acc["metric"] == "accuracy":
            worse = d < -MAX_ACCURACY_DROP
            lines.append(("LESS ACCURATE: " if worse else "accuracy ") +
                         f"{acc['onnx'] * 100:.1f}% against {acc['source'] * 100:.1f}% ({d * 100:+.1f} points)")
        else:
            worse = acc["onnx"] > acc["source"] * (1 + MAX_ACCURACY_DROP) + 1e-12
            lines.append(("LESS ACCURATE: " if worse else "") + f"MSE {acc['onnx']:.4g} against {acc['source']:.4g}")
    if not r.get("within_tolerance"):
        lines.append(f"outputs differ from its source by up to {r['max_abs_diff']:.3g}, beyond the "
                     f"{r['dtype']} tolerance" + ("" if acc else " (no labelled data to tell the accuracy change)"))
    return lines


def _acceptable(r: dict[str, Any]) -> bool:
    acc = r.get("accuracy")
    if acc:
        if acc["metric"] == "accuracy":
            return acc["delta"] >= -MAX_ACCURACY_DROP
        return acc["onnx"] <= acc["source"] * (1 + MAX_ACCURACY_DROP) + 1e-12
    return bool(r.get("within_tolerance"))


def variants_of(src: Path) -> list[dict[str, Any]]:
    found = []
    for p in Path(src).parent.glob("*.report.json"):
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and d.get("source") == str(src) and Path(d.get("path", "")).exists():
            found.append(d)
    return found


def recommend(src: Path) -> str:
    """The fastest variant of `src` measured so far that keeps accuracy (or, without labelled
    data, stays within its dtype's tolerance); else the source itself."""
    best = None
    for r in variants_of(src):
        if _acceptable(r) and speed_call(r) == "faster" and (
                best is None or r["speed_ratio"] > best["speed_ratio"]):
            best = r
    if best is None:
        return f"keep {Path(src).name}: no variant measured so far is faster without losing accuracy"
    return (f"use {Path(best['path']).name} ({best['variant']}): {best['speed_ratio']:.2f}x faster than "
            f"{Path(src).name} at batch 32, accuracy kept")
