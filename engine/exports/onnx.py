"""ONNX export of any model with weights: a torchdeck checkpoint (its model rebuilt from its spec)
or any checkpoint the formats open, given a model spec. The dynamo exporter in eval mode, named
dynamic axes, one file below the protobuf limit (`.onnx` + `.onnx.data` above it), the source's
sha256 and torchdeck's version in `metadata_props`; then the validation report and the latency
pair. Nothing is under the final name until all of that passed."""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torchdeck import __version__
from torchdeck.errors import (
    InvalidRequest,
    OperationFailed,
    TorchdeckError,
    from_os_error,
)
from torchdeck.fsutil import remove_dead_temporaries

from .common import (
    captured_output,
    check_out,
    cpu_threads,
    first_line,
    log_path,
    report_path,
    sha256_of,
    strip_ansi,
)

DEFAULT_OPSET = 18
MIN_OPSET, MAX_OPSET = 7, 23  # what torch.onnx.export and onnx.checker accept here
EXPORTERS = ("dynamo", "legacy", "auto")  # auto: dynamo, then the legacy one, said in the report
# Protobuf cannot hold a message of 2 GiB; above this many bytes of weights they go to `.onnx.data`.
EXTERNAL_DATA_BYTES = 1536 << 20
ATOL, RTOL = 1e-4, 1e-3  # fp32, as the report states per output


@dataclass
class ExportReport:
    path: str
    checkpoint: str
    format: str = "onnx"
    model: str = ""
    model_arg: str | None = None  # the --model given (a checkpoint that is not torchdeck's), to validate again
    opset: int = DEFAULT_OPSET
    exporter: str = "dynamo"
    dynamo_error: str = ""  # what the dynamo exporter said when the legacy one was used instead
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    dynamic_axes: dict[str, list[str]] = field(default_factory=dict)
    sample_shape: list[int] = field(default_factory=list)  # one input sample, without the batch axis
    external_data: bool = False
    files: list[str] = field(default_factory=list)
    size: int = 0
    source_sha256: str = ""
    torchdeck_version: str = __version__
    validation: dict[str, Any] = field(default_factory=dict)
    benchmark: dict[str, Any] = field(default_factory=dict)
    checker_ok: bool = False
    max_abs_diff: float = 0.0
    max_rel_diff: float = 0.0
    atol: float = ATOL
    rtol: float = RTOL
    ok: bool = False
    speed_ratio: float | None = None  # eager / ORT latency at batch 32 (above 1: ONNX Runtime is faster)
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    created: float = 0.0
    log: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_opset(opset: int) -> int:
    if isinstance(opset, bool) or not isinstance(opset, int) or not (MIN_OPSET <= opset <= MAX_OPSET):
        raise InvalidRequest(f"opset must be between {MIN_OPSET} and {MAX_OPSET}, not {opset}", field="opset")
    return opset


def check_exporter(exporter: str) -> str:
    if exporter not in EXPORTERS:
        raise InvalidRequest(f"exporter must be one of {', '.join(EXPORTERS)}, not {exporter!r}", field="exporter")
    return exporter


def source_sha256(path: Path) -> str:
    """A file's sha256; for a directory (a torchdeck checkpoint, a HF folder) the sha256 of the
    lines `sha256  name` of its regular files, sorted by name: any changed byte changes it."""
    import hashlib

    path = Path(path)
    if path.is_file():
        return sha256_of(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.iterdir() if q.is_file()):
        h.update(f"{sha256_of(p)}  {p.name}\n".encode())
    return h.hexdigest()


def load_source(checkpoint: Path, *, workspace=None, trust: bool = False, model_spec: str | None = None,
                input_shape: str | None = None):
    """(model in eval mode, ModelSpec, description of the source). A torchdeck checkpoint rebuilds
    its own model through the trust gate; any other checkpoint needs `model_spec`, the user's own
    typed choice (the same rule as `ckpt load-check --model`)."""
    from torchdeck import trust as gate
    from torchdeck.checkpoints import formats
    from torchdeck.checkpoints import store as checkpoints
    from torchdeck.checkpoints.ops import check_hashes, weights_for
    from torchdeck.models import specs

    checkpoint = Path(checkpoint)
    if model_spec:
        from torchdeck.models.catalogue import parse_input_shape

        spec = specs.resolve(model_spec, workspace)
        shape = parse_input_shape(input_shape)
        if shape:
            spec = specs.replace(spec, input_shape=tuple(shape))
        model = specs.build(spec, import_root=gate.import_root_for(spec, workspace, os.getcwd()), field="model")
        model.load_state_dict(weights_for(checkpoint, model, field="checkpoint"))
        return model.eval(), spec
    try:
        info = formats.inspect(checkpoint)
    except TorchdeckError as e:
        e.field = e.field and "checkpoint"
        raise
    if info.format != checkpoints.FORMAT:
        raise InvalidRequest(f"{checkpoint} is a {info.format} file: it holds weights but no model to rebuild; "
                             "give the model with --model SPEC", field="model")
    check_hashes(checkpoint)  # a flipped bit is "damaged", not an ONNX parity failure
    model, spec, _ = checkpoints.load_model(checkpoint, workspace, trust=trust)
    return model, spec


def export_onnx(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    workspace=None,
    trust: bool = False,
    opset: int = DEFAULT_OPSET,
    model_spec: str | None = None,
    dynamic_sequence: bool = False,
    exporter: str = "dynamo",
    data: bool = True,
    input_shape: str | None = None,
) -> ExportReport:
    check_opset(opset)
    check_exporter(exporter)
    out = check_out(out)
    t0 = time.monotonic()
    checkpoint = Path(checkpoint)
    report = ExportReport(path=str(out), checkpoint=str(checkpoint), opset=opset, created=time.time(),
                          log=str(log_path(out)), model_arg=model_spec)
    remove_dead_temporaries(out)
    tmpdir = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with captured_output(log_path(out)):
            import torch

            report.timings["import"] = round(time.monotonic() - t0, 3)
            model, spec = load_source(checkpoint, workspace=workspace, trust=trust, model_spec=model_spec,
                                      input_shape=input_shape)
            report.model = spec.describe()
            report.sample_shape = list(spec.input_shape or [])
            if not spec.input_shape:
                raise InvalidRequest(f"{spec.spec}: no example input shape known; give one with --input-shape, "
                                     "batch first, like 1,10", field="input_shape")
            if dynamic_sequence and len(spec.input_shape) < 1:
                raise InvalidRequest("a sequence axis needs inputs of shape (batch, sequence, ...)", field="dynamic")
            report.timings["load"] = round(time.monotonic() - t0 - report.timings["import"], 3)
            tmpdir.mkdir()
            tmp = tmpdir / out.name
            big = sum(p.numel() * p.element_size() for p in model.state_dict().values()) > EXTERNAL_DATA_BYTES
            t = time.monotonic()
            _export(torch, model, spec, tmp, report, opset=opset, dynamic_sequence=dynamic_sequence,
                    exporter=exporter, external=big)
            report.timings["export"] = round(time.monotonic() - t, 3)
            _stamp(tmp, source_sha256(checkpoint))
            report.source_sha256 = source_sha256(checkpoint)
            from .validate import benchmark_pair, validate_model

            t = time.monotonic()
            val = validate_model(tmp, model, spec, dynamic_sequence=dynamic_sequence,
                                 data=_data_of(checkpoint) if data else None)
            report.validation = val
            report.timings["validate"] = round(time.monotonic() - t, 3)
            report.checker_ok = val["checker_ok"]
            report.max_abs_diff = val["max_abs_diff"]
            report.max_rel_diff = val["max_rel_diff"]
            if not val["checker_ok"]:
                raise OperationFailed(f"the exported model fails onnx.checker: {val['checker_error']}")
            if not val["passed"]:
                bad = next(r for r in val["rows"] if not r["passed"])
                how = "" if report.exporter == "dynamo" else f" ({report.exporter} exporter)"
                raise OperationFailed(
                    f"ONNX Runtime disagrees with PyTorch{how}: output {bad['name']} at {bad['case']}: "
                    + (bad["note"] or f"max abs diff {bad['max_abs_diff']:.3g} (atol {bad['atol']}, rtol {bad['rtol']})"))
            t = time.monotonic()
            report.benchmark = benchmark_pair(tmp, model, spec, threads=cpu_threads())
            report.speed_ratio = report.benchmark.get("ratio_32")
            report.timings["benchmark"] = round(time.monotonic() - t, 3)
        report.ok = True
        files = sorted(tmpdir.iterdir())
        data_files = [p for p in files if p.name != out.name]
        report.external_data = bool(data_files)
        before = _data_files_of(out) if out.exists() else set()
        for p in data_files:  # the data first, under its own name: whichever .onnx is there finds its data
            os.replace(p, out.with_name(p.name))
        os.replace(tmp, out)
        for name in before - {p.name for p in data_files}:  # the replaced export's data, now unused
            stale = out.with_name(name)
            if "/" not in name and stale.name.startswith(out.name + "."):
                stale.unlink(missing_ok=True)
        report.files = [str(out)] + [str(out.with_name(p.name)) for p in data_files]
        report.size = sum(Path(p).stat().st_size for p in report.files)
        report.seconds = round(time.monotonic() - t0, 3)
        from torchdeck.fsutil import atomic_write_json

        atomic_write_json(report_path(out), report.to_json())
    except OSError as e:  # the disk filled up, the directory went away: told, with --out as the field
        raise from_os_error(e, f"cannot write {out}", field="out") from None
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return report


def _export(torch, model, spec, tmp: Path, report: ExportReport, *, opset: int, dynamic_sequence: bool,
            exporter: str, external: bool) -> None:
    from torchdeck.models import specs

    example = specs.example_input(spec, 2)
    report.input_names, report.output_names = ["input"], ["output"]
    axes = {0: "batch"} | ({1: "sequence"} if dynamic_sequence else {})
    report.dynamic_axes = {"input": list(axes.values()), "output": ["batch"]}
    if exporter in ("dynamo", "auto"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecation chatter; real failures raise
                dims = {0: torch.export.Dim("batch", min=1, max=65536)}
                if dynamic_sequence:
                    dims[1] = torch.export.Dim("sequence", min=1, max=max(2, spec.input_shape[0]))
                prog = torch.onnx.export(
                    model, (example,), None, dynamo=True, opset_version=opset,
                    input_names=report.input_names, output_names=report.output_names,
                    dynamic_shapes=(dims,), verbose=False, report=False,
                )
                prog.save(str(tmp), external_data=external)
            report.exporter = "dynamo"
            _name_outputs(tmp, report)
            return
        except OSError:
            raise
        except Exception as e:
            root = e
            while root.__cause__ is not None and root.__cause__ is not root:  # the reason, not "step 1/3 failed"
                root = root.__cause__
            report.dynamo_error = f"{type(root).__name__}: {first_line(root)}"
            print(f"dynamo exporter failed: {type(e).__name__}: {strip_ansi(str(e))}")
            if exporter == "dynamo":
                raise OperationFailed(
                    f"the dynamo exporter cannot export {spec.describe()}: {report.dynamo_error} "
                    "(the legacy TorchScript exporter may: retry with --exporter legacy; the report will say so)",
                    field="exporter") from None
            for p in tmp.parent.iterdir():
                p.unlink()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (example,), str(tmp), dynamo=False, opset_version=opset,
                input_names=report.input_names, output_names=report.output_names,
                dynamic_axes={"input": axes, "output": {0: "batch"}},
            )
    except OSError:
        raise
    except Exception as e:
        before = f"the dynamo exporter raised: {report.dynamo_error}; " if report.dynamo_error else ""
        raise OperationFailed(f"{spec.describe()} cannot be exported to ONNX: {before}the legacy exporter raised "
                              f"{type(e).__name__}: {first_line(e)}", field="exporter") from None
    report.exporter = "legacy" if exporter == "legacy" else "legacy (fallback: dynamo failed)"
    _name_outputs(tmp, report)


def _name_outputs(tmp: Path, report: ExportReport) -> None:
    import onnx

    m = onnx.load(str(tmp), load_external_data=False)
    report.input_names = [i.name for i in m.graph.input]
    report.output_names = [o.name for o in m.graph.output]


def _stamp(tmp: Path, sha: str) -> None:
    """metadata_props: where the model came from and who wrote it. Loaded without its external
    data; the data file gets a name of its own (`<name>.<pid>-<time>.data`), so that the rename
    of a new pair never puts new data under an older `.onnx` that names the same file."""
    import onnx

    m = onnx.load(str(tmp), load_external_data=False)
    props = {p.key: p.value for p in m.metadata_props}
    props.update({"torchdeck_version": __version__, "source_sha256": sha})
    del m.metadata_props[:]
    for k, v in props.items():
        m.metadata_props.add(key=k, value=v)
    m.producer_name = m.producer_name or "torchdeck"
    renamed: dict[str, str] = {}
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                if e.value not in renamed:
                    renamed[e.value] = f"{tmp.name}.{os.getpid()}-{int(time.time() * 1000)}.data"
                e.value = renamed[e.value]
    for old, new in renamed.items():
        os.replace(tmp.parent / old, tmp.parent / new)
    onnx.save(m, str(tmp))


def _data_files_of(onnx_path: Path) -> set[str]:
    """The external data files an existing .onnx names (none when it is not readable)."""
    import onnx

    try:
        m = onnx.load(str(onnx_path), load_external_data=False)
    except Exception:
        return set()
    return {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}


def _data_of(checkpoint: Path) -> dict[str, Any] | None:
    """The run's data settings, for accuracy on its validation split (None: not a run's
    checkpoint). A run that used its model's default data names it here."""
    try:
        meta = json.loads((Path(checkpoint) / "meta.json").read_text())
        cfg = dict(meta.get("run_config") or {})
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    if not cfg.get("data"):
        from torchdeck.models import specs

        try:
            builtin = specs.ModelSpec.from_json(meta.get("model_spec") or {}).builtin
        except (TypeError, ValueError, TorchdeckError):
            builtin = None
        if builtin is not None:
            cfg["data"] = builtin.default_data
    return cfg


def list_exports(exports_dir: Path) -> list[dict[str, Any]]:
    """Reports of past exports in a workspace (exports and their variants), newest first."""
    out = []
    for p in Path(exports_dir).glob("*.report.json"):
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and isinstance(d.get("path"), str) and Path(d["path"]).exists():
            out.append(d)
    out.sort(key=lambda d: d.get("created", 0) if isinstance(d.get("created"), (int, float)) else 0, reverse=True)
    return out


def default_out(exports_dir: Path, info, suffix: str = ".onnx") -> Path:
    run_id = info.meta.get("run_id") or info.path.parent.parent.name
    return Path(exports_dir) / f"{run_id}-{info.path.name}{suffix}"
