"""Other targets: torch.export to `.pt2` (its round trip validated like ONNX: names, shapes,
difference per output at batch 1 and a larger batch), and weights-only `.safetensors`.

`torch.export.load` unpickles: loading a `.pt2` goes through the trust gate (refused without
trust), except the file this process has just written, in its own temporary directory."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from torchdeck.errors import OperationFailed, UnsafeFile, from_os_error

from .common import (
    captured_output,
    check_out,
    compare,
    first_line,
    log_path,
    report_path,
)


def load_pt2(path: str | os.PathLike, *, trust: bool = False):
    from torchdeck import trust as gate

    path = Path(path)
    gate.check_regular_file(path, field="path", what="a .pt2 file")
    if not trust:
        raise UnsafeFile(f"{path}: loading a .pt2 file unpickles it (torch.export.load), which can run code "
                         "from the file; load it only if you trust where it came from (--trust)", field="path")
    import torch

    try:
        return torch.export.load(str(path))
    except Exception as e:
        raise OperationFailed(f"{path} is not a loadable .pt2 file: {first_line(e)}", code="corrupt",
                              field="path") from None


def export_pt2(checkpoint: str | os.PathLike, out: str | os.PathLike, *, workspace=None, trust: bool = False,
               model_spec: str | None = None, dynamic_sequence: bool = False,
               input_shape: str | None = None) -> dict[str, Any]:
    from .onnx import load_source, remove_dead_temporaries, source_sha256
    from .validate import cases, example, flat_outputs

    out = check_out(out, ".pt2")
    t0 = time.monotonic()
    remove_dead_temporaries(out)
    tmpdir = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    report: dict[str, Any] = {"path": str(out), "checkpoint": str(checkpoint), "format": "pt2", "created": time.time(),
                              "log": str(log_path(out))}
    try:
        with captured_output(log_path(out)):
            import torch

            model, spec = load_source(Path(checkpoint), workspace=workspace, trust=trust, model_spec=model_spec,
                                      input_shape=input_shape)
            if not spec.input_shape:
                from torchdeck.errors import InvalidRequest

                raise InvalidRequest(f"{spec.spec}: no example input shape known; give one with --input-shape, "
                                     "batch first, like 1,10", field="input_shape")
            report["model"] = spec.describe()
            dims = {0: torch.export.Dim("batch", min=1, max=65536)}
            if dynamic_sequence:
                dims[1] = torch.export.Dim("sequence", min=1, max=max(2, spec.input_shape[0]))
            try:
                ep = torch.export.export(model, (example(spec, 2, None, 0),), dynamic_shapes=(dims,))
            except Exception as e:
                raise OperationFailed(f"torch.export cannot export {spec.describe()}: {type(e).__name__}: "
                                      f"{first_line(e)}", field="model") from None
            tmpdir.mkdir()
            tmp = tmpdir / out.name
            torch.export.save(ep, str(tmp))
            loaded = load_pt2(tmp, trust=True).module()  # the bytes this process has just written
            rows = []
            with torch.no_grad():
                for label, batch, seq in cases(spec, dynamic_sequence):
                    x = example(spec, batch, seq, seed=batch + (seq or 0))
                    expected = flat_outputs(model(x))
                    got = flat_outputs(loaded(x))
                    rows += compare(label, [f"output_{i}" for i in range(len(got))], got, expected)
        report["rows"] = [r.to_json() for r in rows]
        report["max_abs_diff"] = max((r.max_abs_diff for r in rows if r.max_abs_diff is not None), default=0.0)
        report["passed"] = all(r.passed for r in rows)
        if not report["passed"]:
            raise OperationFailed(f"the reloaded .pt2 disagrees with PyTorch: max abs diff {report['max_abs_diff']:.3g}")
        report["dynamic_axes"] = ["batch"] + (["sequence"] if dynamic_sequence else [])
        report["source_sha256"] = source_sha256(Path(checkpoint))
        os.replace(tmp, out)
        report["size"] = out.stat().st_size
        report["ok"] = True
        report["seconds"] = round(time.monotonic() - t0, 3)
        from torchdeck.fsutil import atomic_write_json

        atomic_write_json(report_path(out), report)
    except OSError as e:
        raise from_os_error(e, f"cannot write {out}", field="out") from None
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return report


def export_safetensors(checkpoint: str | os.PathLike, out: str | os.PathLike) -> dict[str, Any]:
    """Weights only, no pickle (ckpt convert's writer), and the written file read back and
    compared tensor by tensor with its source."""
    from torchdeck.checkpoints import ops

    out = check_out(out, ".safetensors")
    t0 = time.monotonic()
    report = ops.convert(Path(checkpoint), "safetensors", out=out)
    d = ops.diff(Path(checkpoint), out)
    report.update({"format": "safetensors", "checkpoint": str(checkpoint), "created": time.time(),
                   "round_trip_identical": d["identical"], "ok": d["identical"],
                   "seconds": round(time.monotonic() - t0, 3)})
    if not d["identical"]:
        out.unlink(missing_ok=True)
        raise OperationFailed(f"{out} does not read back as its source's weights (removed)")
    from torchdeck.fsutil import atomic_write_json

    atomic_write_json(report_path(out), report)
    return report




MOVE_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def move(checkpoint: str | os.PathLike, *, dtype: str = "fp32", device: str = "cpu", out: str | os.PathLike | None = None,
         workspace=None, trust: bool = False, model_spec: str | None = None,
         input_shape: str | None = None) -> dict[str, Any]:
    """A checkpoint moved to another dtype and/or device, with the output difference that causes
    (against float32 on the CPU, at batch 1 and a larger batch, the dtype's tolerance stated).
    With `out`, the cast weights are written as safetensors (ckpt convert's writer)."""
    from torchdeck.errors import InvalidRequest

    from .onnx import load_source
    from .validate import cases, example, flat_outputs

    if dtype not in MOVE_DTYPES:
        raise InvalidRequest(f"dtype must be one of {', '.join(MOVE_DTYPES)}, not {dtype!r}", field="dtype")
    if out is not None:
        out = check_out(out, ".safetensors")
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InvalidRequest(f"unknown device {device!r}: {first_line(e)}", field="device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidRequest(f"device {device} is not available here (torch sees no CUDA device)", field="device")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise InvalidRequest(f"device {device} does not exist: {torch.cuda.device_count()} CUDA device(s)",
                             field="device")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidRequest(f"device {device} is not available here", field="device")
    t0 = time.monotonic()
    with captured_output(None):
        model, spec = load_source(Path(checkpoint), workspace=workspace, trust=trust, model_spec=model_spec,
                                  input_shape=input_shape)
        if not spec.input_shape:
            raise InvalidRequest(f"{spec.spec}: no example input shape known; give one with --input-shape, "
                                 "batch first, like 1,10", field="input_shape")
        cast = getattr(torch, MOVE_DTYPES[dtype])
        import copy

        moved = copy.deepcopy(model).to(device=dev, dtype=cast)
        rows = []
        with torch.no_grad():
            for label, batch, seq in cases(spec, False):
                x = example(spec, batch, seq, seed=batch)
                expected = flat_outputs(model(x))
                xm = x.to(dev, dtype=cast) if x.is_floating_point() else x.to(dev)
                try:
                    got = [g.astype("float32") for g in flat_outputs(_float(moved(xm)))]
                except RuntimeError as e:
                    raise OperationFailed(f"{spec.describe()} does not run in {dtype} on {device}: {first_line(e)}",
                                          field="dtype") from None
                rows += compare(label, [f"output_{i}" for i in range(len(got))], got, expected,
                                "fp32" if dtype == "fp32" else dtype)
    report: dict[str, Any] = {"checkpoint": str(checkpoint), "model": spec.describe(), "dtype": MOVE_DTYPES[dtype],
                              "device": str(dev), "rows": [r.to_json() for r in rows],
                              "max_abs_diff": max((r.max_abs_diff for r in rows if r.max_abs_diff is not None), default=0.0),
                              "within_tolerance": all(r.passed for r in rows), "path": None}
    if out is not None:
        from torchdeck.checkpoints import ops

        written = ops.convert(Path(checkpoint), "safetensors", dtype=None if dtype == "fp32" else dtype, out=out)
        report.update(path=written["path"], size=written["size"], format="safetensors", created=time.time())
    report["seconds"] = round(time.monotonic() - t0, 3)
    return report


def _float(out):
    import torch

    if isinstance(out, torch.Tensor):
        return out.detach().float().cpu()
    if isinstance(out, dict):
        return {k: _float(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(_float(v) for v in out)
    return out
