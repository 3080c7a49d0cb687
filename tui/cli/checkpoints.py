"""`torchdeck ckpt ...` and `torchdeck export ...`."""

from __future__ import annotations

import os
from pathlib import Path

from torchdeck.errors import InvalidRequest, NotFound, OperationFailed, TorchdeckError
from torchdeck.runs.config import parse_number
from torchdeck.runs.store import RunStore
from torchdeck.workspace import Workspace

from .output import EXIT_OK, Parser, emit_json, fmt_loss, table


def add_parsers(sub, common) -> None:
    ckpt = sub.add_parser("ckpt", help="checkpoints", parents=[common])
    csub = ckpt.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=Parser)
    ins = csub.add_parser("inspect", help="what a checkpoint holds", parents=[common])
    ins.add_argument("path", metavar="PATH", help="a checkpoint directory or file, or a run (its latest checkpoint)")
    ins.add_argument("--trust", action="store_true", help="allow full unpickling (runs code from the file)")

    exp = sub.add_parser("export", help="export a checkpoint", parents=[common])
    esub = exp.add_subparsers(dest="action", metavar="FORMAT", required=True, parser_class=Parser)
    onnx = esub.add_parser("onnx", help="export to ONNX, checked against PyTorch with ONNX Runtime", parents=[common])
    onnx.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint directory, or a run (its latest)")
    onnx.add_argument("--out", metavar="FILE", help="output .onnx file (default: in the workspace's exports/)")
    onnx.add_argument("--opset", metavar="N", default="18")
    onnx.add_argument("--trust", action="store_true", help="allow building a model spec that is not built-in or registered")


def resolve_checkpoint(ws: Workspace, ref: str, *, field: str = "path") -> Path:
    """A checkpoint path, or a run (id, prefix or name) meaning its latest complete checkpoint."""
    from torchdeck.checkpoints import store as checkpoints

    p = Path(ref).expanduser()
    if os.path.lexists(p):
        return p
    try:
        run = RunStore(ws).get(ref)
    except InvalidRequest:
        raise NotFound(f"no such checkpoint: {ref} (not a file, a directory, or a run)", field=field) from None
    latest = checkpoints.latest_complete(run.checkpoints_dir)
    if latest is None:
        raise OperationFailed(f"run {run.id} has no complete checkpoint", code="not_found", field=field)
    return latest.path


def cmd_ckpt_inspect(ws: Workspace, args) -> int:
    from torchdeck import trust
    from torchdeck.checkpoints import store as checkpoints
    from torchdeck.models import specs

    info = checkpoints.inspect(resolve_checkpoint(ws, args.path), trust=args.trust)
    doc = info.to_json()
    if info.model_spec:
        try:
            doc["trusted_spec"] = trust.is_trusted(specs.ModelSpec.from_json(info.model_spec), ws)
        except InvalidRequest:  # a damaged spec record: nothing to trust
            doc["trusted_spec"] = False
    if args.json:
        emit_json(doc)
        return EXIT_OK
    print(f"path        {info.path}")
    print(f"format      {info.format}")
    if info.step is not None:
        print(f"step        {info.step}  epoch {info.epoch}")
    if info.metrics:
        print("metrics     " + "  ".join(f"{k} {fmt_loss(v)}" for k, v in info.metrics.items()))
    if info.model_spec:
        print(f"model       {info.model_spec.get('spec')}" + ("" if doc["trusted_spec"] else "  (not trusted here)"))
    print(f"parameters  {info.num_params:,}")
    print(f"size        {info.size:,} bytes")
    print(table([[t.name, "x".join(map(str, t.shape)) or "scalar", t.dtype] for t in info.tensors],
                 ["TENSOR", "SHAPE", "DTYPE"]))
    return EXIT_OK


def cmd_export_onnx(ws: Workspace, args) -> int:
    from torchdeck.checkpoints import store as checkpoints
    from torchdeck.exports import onnx as exports

    opset = exports.check_opset(parse_number(args.opset, "opset", int))
    if args.out:  # refused before any work: an existing directory, an unwritable place
        exports.check_out(args.out)
    path = resolve_checkpoint(ws, args.checkpoint, field="checkpoint")
    try:
        info = checkpoints.inspect(path)
    except TorchdeckError as e:
        e.field = e.field and "checkpoint"  # the file at fault is the --checkpoint one
        raise
    out = Path(args.out) if args.out else exports.default_out(ws.exports_dir, info)
    report = exports.export_onnx(path, out, workspace=ws, trust=args.trust, opset=opset)
    if args.json:
        emit_json(report.to_json())
    else:
        print(f"exported    {report.path} ({report.size:,} bytes, opset {report.opset}, {report.exporter})")
        print(f"checker     {'ok' if report.checker_ok else 'FAILED'}")
        for c in report.parity:
            print(f"batch {c.batch_size:<5} max abs diff {c.max_abs_diff:.3g}  max rel diff {c.max_rel_diff:.3g}  "
                  f"{'ok' if c.ok else 'FAIL'}")
        print(f"max abs diff {report.max_abs_diff:.3g} (atol {report.atol})")
        print(f"latency     onnxruntime {report.ort_latency_ms} ms, pytorch {report.torch_latency_ms} ms (batch 32)")
    return EXIT_OK


COMMANDS = {
    ("ckpt", "inspect"): cmd_ckpt_inspect,
    ("export", "onnx"): cmd_export_onnx,
}
