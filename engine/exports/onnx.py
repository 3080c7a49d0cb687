"""Exports with a report: ONNX through torch.onnx.export (dynamo), checked with onnx.checker and
compared against PyTorch with ONNX Runtime at several batch sizes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from torchdeck.checkpoints import store as checkpoints
from torchdeck.errors import (
    Exists,
    InvalidRequest,
    OperationFailed,
    Unreadable,
    from_os_error,
)
from torchdeck.fsutil import atomic_write_json
from torchdeck.models import specs

BATCH_SIZES = (1, 2, 7)
DEFAULT_OPSET = 18
MIN_OPSET, MAX_OPSET = 7, 23  # what torch.onnx.export and onnx.checker accept here
ATOL = 1e-4
RTOL = 1e-3


@dataclass
class ParityCase:
    batch_size: int
    max_abs_diff: float
    max_rel_diff: float
    ok: bool


@dataclass
class ExportReport:
    path: str
    checkpoint: str
    format: str = "onnx"
    opset: int = DEFAULT_OPSET
    exporter: str = "dynamo"
    input_name: str = "input"
    output_name: str = "output"
    dynamic_batch: bool = True
    checker_ok: bool = False
    parity: list[ParityCase] = field(default_factory=list)
    max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0
    atol: float = ATOL
    rtol: float = RTOL
    ok: bool = False
    size: int = 0
    ort_latency_ms: float | None = None
    torch_latency_ms: float | None = None
    seconds: float = 0.0
    created: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """The exporter prints progress to stdout from Python and C++: point fd 1 at fd 2 meanwhile,
    so a `--json` document on stdout stays the only thing there."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def export_onnx(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    workspace=None,
    trust: bool = False,
    opset: int = DEFAULT_OPSET,
) -> ExportReport:
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    check_opset(opset)
    out = check_out(out)
    t0 = time.monotonic()
    from torchdeck.checkpoints.ops import check_hashes

    check_hashes(Path(checkpoint))  # a flipped bit is "damaged", not an ONNX parity failure
    model, spec, info = checkpoints.load_model(Path(checkpoint), workspace, trust=trust)
    if not spec.input_shape:
        raise InvalidRequest(f"{spec.spec}: no example input shape known; cannot export", field="checkpoint")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    report = ExportReport(path=str(out), checkpoint=str(info.path), opset=opset, created=time.time())
    example = specs.example_input(spec, 2)
    try:
        for name in ("torch.onnx", "onnxscript", "onnx_ir"):
            logging.getLogger(name).setLevel(logging.ERROR)
        with quiet_stdout(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter deprecation chatter; real failures raise
            try:
                torch.onnx.export(
                    model, (example,), str(tmp), dynamo=True, external_data=False, opset_version=opset,
                    input_names=[report.input_name], output_names=[report.output_name],
                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},),
                    verbose=False, report=False,
                )
            except Exception as e:
                print(f"dynamo exporter failed ({type(e).__name__}: {e}); trying the legacy exporter", file=sys.stderr)
                report.exporter = "torchscript (fallback)"
                try:
                    torch.onnx.export(
                        model, (example,), str(tmp), dynamo=False, opset_version=opset,
                        input_names=[report.input_name], output_names=[report.output_name],
                        dynamic_axes={report.input_name: {0: "batch"}, report.output_name: {0: "batch"}},
                    )
                except OSError:
                    raise
                except Exception as legacy:
                    first = (str(legacy).strip().splitlines() or [""])[0]
                    raise OperationFailed(f"{spec.describe()} cannot be exported to ONNX: the dynamo exporter "
                                          f"raised {type(e).__name__}, the legacy one {type(legacy).__name__}: "
                                          f"{first}") from None
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
            report.checker_ok = True
        except Exception as e:
            raise OperationFailed(f"the exported model fails onnx.checker: {str(e).splitlines()[0]}") from None
        from torchdeck.training.loop import cpu_threads

        threads = cpu_threads()  # the same for both sides of the latency comparison
        torch.set_num_threads(threads)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(tmp), sess_options=opts, providers=["CPUExecutionProvider"])
        in_name = sess.get_inputs()[0].name
        with torch.no_grad():
            for bs in BATCH_SIZES:
                x = specs.example_input(spec, bs, seed=bs)
                expected = model(x).numpy()
                got = sess.run(None, {in_name: x.numpy()})[0]
                if got.shape != expected.shape:
                    raise OperationFailed(f"ONNX Runtime output shape {got.shape} != PyTorch {expected.shape} at batch {bs}")
                diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
                abs_d = float(diff.max()) if diff.size else 0.0
                rel_d = float((diff / (np.abs(expected) + 1e-12)).max()) if diff.size else 0.0
                ok = bool(np.allclose(got, expected, atol=ATOL, rtol=RTOL))
                report.parity.append(ParityCase(bs, abs_d, rel_d, ok))
            report.max_abs_diff = max(c.max_abs_diff for c in report.parity)
            report.max_rel_diff = max(c.max_rel_diff for c in report.parity)
            x = specs.example_input(spec, 32, seed=32)
            report.torch_latency_ms = _median_ms(lambda: model(x))
            xn = x.numpy()
            report.ort_latency_ms = _median_ms(lambda: sess.run(None, {in_name: xn}))
        report.ok = report.checker_ok and all(c.ok for c in report.parity)
        if not report.ok:
            raise OperationFailed(
                f"ONNX Runtime disagrees with PyTorch: max abs diff {report.max_abs_diff:.3g} "
                f"(tolerance atol={ATOL}, rtol={RTOL})"
            )
        os.replace(tmp, out)
        report.size = out.stat().st_size
        report.seconds = round(time.monotonic() - t0, 3)
        atomic_write_json(report_path(out), report.to_json())
    except OSError as e:  # the disk filled up, the directory went away: told, with --out as the field
        raise from_os_error(e, f"cannot write {out}", field="out") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return report


def check_opset(opset: int) -> int:
    if isinstance(opset, bool) or not isinstance(opset, int) or not (MIN_OPSET <= opset <= MAX_OPSET):
        raise InvalidRequest(f"opset must be between {MIN_OPSET} and {MAX_OPSET}, not {opset}", field="opset")
    return opset


def check_out(out: str | os.PathLike) -> Path:
    """Refuse, before any work, an output that could not be written: not .onnx, an existing
    directory or other non-file, a place that cannot be created or written. An existing .onnx
    file is replaced (atomically, when the export succeeds)."""
    out = Path(out).expanduser()
    if out.is_dir():
        raise Exists(f"output {out} is an existing directory; give a file name ending in .onnx", field="out")
    if out.suffix != ".onnx":
        raise InvalidRequest(f"output file must end in .onnx: {out}", field="out")
    if out.exists() and not out.is_file():
        raise Unreadable(f"output {out} exists and is not a regular file", field="out")
    if out.parent.exists() and not out.parent.is_dir():
        raise InvalidRequest(f"cannot write {out}: {out.parent} is not a directory", field="out", code="unreadable")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe", dir=out.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise from_os_error(e, f"cannot write {out}", field="out") from None
    for p in (out, report_path(out)):
        if p.exists() and not os.access(p, os.W_OK):
            raise Unreadable(f"cannot write {p}: permission denied", field="out")
    return out


def report_path(onnx_path: Path) -> Path:
    return Path(onnx_path).with_suffix(".report.json")


def _median_ms(fn, repeats: int = 30) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return round(times[len(times) // 2] * 1000, 4)


def list_exports(exports_dir: Path) -> list[dict[str, Any]]:
    """Reports of past exports in a workspace, newest first."""
    out = []
    for p in Path(exports_dir).glob("*.report.json"):
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and Path(d.get("path", "")).exists():
            out.append(d)
    out.sort(key=lambda d: d.get("created", 0), reverse=True)
    return out


def default_out(exports_dir: Path, info: "checkpoints.CheckpointInfo") -> Path:
    run_id = info.meta.get("run_id") or info.path.parent.parent.name
    return Path(exports_dir) / f"{run_id}-{info.path.name}.onnx"
