"""What every export shares: output capture (nothing reaches the terminal), tolerances, the
comparison of two sets of outputs, ONNX Runtime sessions, latency measurement, output paths."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from torchdeck.errors import Exists, InvalidRequest, Unreadable, from_os_error

# (atol, rtol) per dtype of the compared outputs; np.allclose semantics: |a - b| <= atol + rtol * |b|.
# fp16 keeps about 3 decimal digits; int8 variants are judged by their accuracy more than by this.
TOLERANCES: dict[str, tuple[float, float]] = {"fp32": (1e-4, 1e-3), "fp16": (1e-2, 1e-2), "bf16": (5e-2, 5e-2),
                                              "int8": (5e-2, 5e-2)}
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


def first_line(e: BaseException, limit: int = 400) -> str:
    lines = [s.strip() for s in strip_ansi(str(e)).splitlines() if s.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


@contextlib.contextmanager
def captured_output(log_path: Path | None) -> Iterator[None]:
    """Point fd 1 and fd 2 (what C++ code writes to: the exporter, ONNX Runtime) and Python's
    sys.stdout/stderr (print, logging's stream handlers, warnings) at `log_path`, appended; None
    drops it. On the command line stdout then carries only the result and stderr only
    torchdeck's own lines; in the TUI's child nothing reaches the terminal."""
    import logging

    sys.stdout.flush()
    sys.stderr.flush()
    if log_path is not None:
        try:
            Path(log_path).parent.mkdir(parents=True, exist_ok=True)
            sink = open(log_path, "a", buffering=1)
        except OSError:
            sink = open(os.devnull, "w")
    else:
        sink = open(os.devnull, "w")
    saved = os.dup(1), os.dup(2)
    old_streams = sys.stdout, sys.stderr
    handler = logging.StreamHandler(sink)
    root = logging.getLogger()
    try:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        sys.stdout = sys.stderr = sink
        root.addHandler(handler)  # logging's last resort writes to the old stderr object; this goes to the log
        for name in ("torch.onnx", "onnxscript", "onnx_ir", "torch.export", "torch._dynamo"):
            logging.getLogger(name).setLevel(logging.WARNING)
        yield
    finally:
        root.removeHandler(handler)
        for s in (sys.stdout, sys.stderr, *old_streams):
            with contextlib.suppress(Exception):
                s.flush()
        sys.stdout, sys.stderr = old_streams
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        sink.close()


@dataclass
class OutputRow:
    """One output at one input shape: names, shapes, and how far apart the two sides are."""

    case: str  # "batch 1", "batch 8, sequence 16"
    name: str
    shape: list[int]
    expected_shape: list[int]
    max_abs_diff: float | None
    max_rel_diff: float | None
    atol: float
    rtol: float
    passed: bool
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def compare(case: str, names: list[str], got: list[Any], expected: list[Any], dtype: str = "fp32") -> list[OutputRow]:
    """Optimum's order: names, then shapes, then values within (atol, rtol) per output."""
    import numpy as np

    atol, rtol = TOLERANCES[dtype]
    rows = []
    if len(got) != len(expected):
        return [OutputRow(case, ",".join(names), [], [], None, None, atol, rtol, False,
                          f"{len(got)} output(s), PyTorch gives {len(expected)}")]
    for name, g, e in zip(names, got, expected):
        g = np.asarray(g)
        e = np.asarray(e)
        if g.shape != e.shape:
            rows.append(OutputRow(case, name, list(g.shape), list(e.shape), None, None, atol, rtol, False,
                                  "shapes differ"))
            continue
        g64, e64 = g.astype(np.float64), e.astype(np.float64)
        finite = np.isfinite(g64).all() and np.isfinite(e64).all()
        diff = np.abs(g64 - e64)
        abs_d = float(np.nanmax(diff)) if diff.size else 0.0
        rel_d = float(np.nanmax(diff / (np.abs(e64) + 1e-12))) if diff.size else 0.0
        ok = bool(np.allclose(g64, e64, atol=atol, rtol=rtol, equal_nan=True))
        rows.append(OutputRow(case, name, list(g.shape), list(e.shape), abs_d, rel_d, atol, rtol, ok,
                              "" if finite else "non-finite values"))
    return rows


def cpu_threads() -> int:
    from torchdeck.training.loop import cpu_threads as threads

    return threads()


def ort_session(path: str | os.PathLike, *, threads: int | None = None, providers: list[str] | None = None,
                optimized_out: str | None = None, level: str | None = None):
    """An ONNX Runtime session, its own logging quiet (warnings and above go to the captured log)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or cpu_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if level is not None:
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    if optimized_out is not None:
        opts.optimized_model_filepath = str(optimized_out)
    if providers is None:
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


@dataclass
class Latency:
    batch_size: int
    p50_ms: float
    p95_ms: float
    throughput: float  # samples per second, from the median
    runs: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def measure(fn: Callable[[], Any], batch_size: int, *, warmup: int = 3, min_runs: int = 10, max_runs: int = 200,
            budget_s: float = 0.5) -> Latency:
    """p50/p95 of `fn`, warm-up excluded: at least `min_runs`, then more until `budget_s` is spent."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    p50 = times[len(times) // 2]
    p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
    return Latency(batch_size, round(p50 * 1000, 4), round(p95 * 1000, 4),
                   round(batch_size / p50, 1) if p50 > 0 else 0.0, len(times))


def measure_interleaved(fns: list[Callable[[], Any]], batch_size: int, *, rounds: int = 3, budget_s: float = 0.6,
                        warmup: int = 3, min_runs: int = 5) -> tuple[list[Latency], list[list[float]]]:
    """The latency of several functions measured in alternating rounds, so that a busy moment of
    the machine hits each of them alike: (one Latency each over all its runs, the p50 of each
    round per function). Warm-up excluded; about `budget_s` in all."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    round_p50: list[list[float]] = [[] for _ in fns]
    per = budget_s / (rounds * len(fns))
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            times: list[float] = []
            start = time.perf_counter()
            while len(times) < 200 and (len(times) < min_runs or time.perf_counter() - start < per):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            times.sort()
            round_p50[i].append(times[len(times) // 2] * 1000)
            samples[i] += times
    out = []
    for times in samples:
        times.sort()
        p50 = times[len(times) // 2]
        p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
        out.append(Latency(batch_size, round(p50 * 1000, 4), round(p95 * 1000, 4),
                           round(batch_size / p50, 1) if p50 > 0 else 0.0, len(times)))
    return out, round_p50


def check_out(out: str | os.PathLike, suffix: str = ".onnx", *, field: str = "out") -> Path:
    """Refuse, before any work, an output that could not be written: the wrong suffix, an existing
    directory or other non-file, a place that cannot be created or written. An existing file is
    replaced (atomically, when the work succeeds)."""
    out = Path(out).expanduser()
    if out.is_dir():
        raise Exists(f"output {out} is an existing directory; give a file name ending in {suffix}", field=field)
    if out.suffix != suffix:
        raise InvalidRequest(f"output file must end in {suffix}: {out}", field=field)
    if out.exists() and not out.is_file():
        raise Unreadable(f"output {out} exists and is not a regular file", field=field)
    if out.parent.exists() and not out.parent.is_dir():
        raise InvalidRequest(f"cannot write {out}: {out.parent} is not a directory", field=field, code="unreadable")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe", dir=out.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise from_os_error(e, f"cannot write {out}", field=field) from None
    for p in (out, report_path(out)):
        if p.exists() and not os.access(p, os.W_OK):
            raise Unreadable(f"cannot write {p}: permission denied", field=field)
    return out


def report_path(path: str | os.PathLike) -> Path:
    """`m.onnx` -> `m.report.json` (as torchdeck always wrote them); `m.pt2` -> `m.pt2.report.json`,
    so that exports of one checkpoint in several formats do not share a report."""
    path = Path(path)
    return path.with_suffix(".report.json") if path.suffix == ".onnx" else path.with_name(path.name + ".report.json")


def log_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_suffix(".log") if path.suffix == ".onnx" else path.with_name(path.name + ".log")


def sha256_of(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
