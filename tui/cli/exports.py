"""`torchdeck export onnx|pt2|safetensors` and `torchdeck onnx inspect|validate|bench|quantize|optimize`.

Heavy work runs with fd 1 and 2 pointed at a log (the exporter's and ONNX Runtime's chatter):
stdout carries only the result, stderr only torchdeck's own lines."""

from __future__ import annotations

from pathlib import Path

from torchdeck.errors import TorchdeckError
from torchdeck.fmt import fmt_bytes, fmt_count
from torchdeck.runs.config import parse_number
from torchdeck.workspace import Workspace

from .checkpoints import resolve_checkpoint
from .output import EXIT_FAILED, EXIT_OK, Parser, emit_json, table


def add_parsers(sub, common) -> None:
    exp = sub.add_parser("export", help="export a checkpoint (ONNX, torch.export .pt2, safetensors)",
                         parents=[common])
    esub = exp.add_subparsers(dest="action", metavar="FORMAT", required=True, parser_class=Parser)
    for fmt, help_ in (("onnx", "export to ONNX, validated against PyTorch with ONNX Runtime"),
                       ("pt2", "torch.export to a .pt2 file, its round trip validated"),
                       ("safetensors", "weights only, as one .safetensors file")):
        p = esub.add_parser(fmt, help=help_, parents=[common])
        p.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint directory or file, or a run "
                       "(its latest)")
        p.add_argument("--out", metavar="FILE", help="output file (default: in the workspace's exports/)")
        if fmt == "safetensors":
            continue
        p.add_argument("--model", metavar="SPEC", help="the model to load the weights into (needed for a "
                       "checkpoint that is not torchdeck's: builtin:NAME, a registered name, module:callable)")
        p.add_argument("--trust", action="store_true", help="allow building a model spec that is not built-in or "
                       "registered")
        p.add_argument("--input-shape", metavar="SHAPE", help="an example input's shape, batch first (1,10), for "
                       "a model spec that does not say")
        p.add_argument("--dynamic", metavar="AXES", default="batch",
                       help="dynamic input axes: batch (default) or batch,sequence")
        if fmt == "onnx":
            p.add_argument("--opset", metavar="N", default="18")
            p.add_argument("--exporter", default="dynamo", choices=["dynamo", "legacy", "auto"],
                           help="dynamo (default); legacy: the TorchScript exporter; auto: dynamo, then legacy "
                                "when it fails (the report says so)")

    mv = esub.add_parser("move", help="a checkpoint cast to bf16/fp16 or run on another device: the output "
                         "difference it causes (and the cast weights with --out)", parents=[common])
    mv.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint directory or file, or a run")
    mv.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    mv.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps")
    mv.add_argument("--out", metavar="FILE", help="write the cast weights here (.safetensors)")
    mv.add_argument("--model", metavar="SPEC", help="the model for a checkpoint that is not torchdeck's")
    mv.add_argument("--trust", action="store_true", help="allow building a model spec that is not built-in or "
                    "registered")
    mv.add_argument("--input-shape", metavar="SHAPE", help="an example input's shape, batch first (1,10)")

    onnx = sub.add_parser("onnx", help="any .onnx file: inspect, validate, benchmark, quantize, optimize",
                          parents=[common])
    osub = onnx.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=Parser)
    ins = osub.add_parser("inspect", help="inputs, outputs, opset, IR version, operators, parameters", parents=[common])
    ins.add_argument("path", metavar="PATH", help="an .onnx file")
    val = osub.add_parser("validate", help="an .onnx file against a checkpoint's model (exit 1 when it fails)",
                          parents=[common])
    val.add_argument("path", metavar="PATH", help="an .onnx file")
    val.add_argument("--checkpoint", required=True, metavar="CKPT", help="checkpoint directory or file, or a run")
    val.add_argument("--model", metavar="SPEC", help="the model for a checkpoint that is not torchdeck's")
    val.add_argument("--trust", action="store_true", help="allow building a model spec that is not built-in or "
                     "registered")
    val.add_argument("--input-shape", metavar="SHAPE", help="an example input's shape, batch first (1,10)")
    ben = osub.add_parser("bench", help="ONNX Runtime latency on random inputs of the declared shapes",
                          parents=[common])
    ben.add_argument("path", metavar="PATH", help="an .onnx file")
    ben.add_argument("--batch-size", metavar="N", action="append",
                     help="batch size for the first symbolic axis (repeatable; default 1 and 32)")
    ben.add_argument("--dims", metavar="NAME=N,...", help="sizes of other symbolic axes, e.g. sequence=16")
    qua = osub.add_parser("quantize", help="an int8 variant with its report and verdict", parents=[common])
    qua.add_argument("path", metavar="PATH", help="an .onnx file")
    qua.add_argument("--mode", default="dynamic", choices=["dynamic", "static"],
                     help="dynamic (default; transformers, RNNs) or static QDQ S8S8 calibrated on data (CNNs)")
    qua.add_argument("--data", metavar="SPEC", help="calibration and accuracy data (default: the run data of the "
                     "checkpoint the file was exported from)")
    qua.add_argument("--out", metavar="FILE", help="output .onnx (default: beside PATH)")
    qua.add_argument("--dims", metavar="NAME=N,...", help="sizes of symbolic axes past the batch (default: the "
                     "exported sample's)")
    f16 = osub.add_parser("fp16", help="an fp16 variant (float16 weights and math, float32 inputs and outputs)",
                          parents=[common])
    f16.add_argument("path", metavar="PATH", help="an .onnx file")
    f16.add_argument("--data", metavar="SPEC", help="accuracy data (default: the source checkpoint's run data)")
    f16.add_argument("--out", metavar="FILE", help="output .onnx (default: beside PATH)")
    f16.add_argument("--dims", metavar="NAME=N,...", help="sizes of symbolic axes past the batch")
    opt = osub.add_parser("optimize", help="ONNX Runtime graph optimizations saved as a variant", parents=[common])
    opt.add_argument("path", metavar="PATH", help="an .onnx file")
    opt.add_argument("--data", metavar="SPEC", help="accuracy data (default: the source checkpoint's run data)")
    opt.add_argument("--out", metavar="FILE", help="output .onnx (default: beside PATH)")
    opt.add_argument("--dims", metavar="NAME=N,...", help="sizes of symbolic axes past the batch")


def _dynamic_sequence(text: str) -> bool:
    from torchdeck.errors import InvalidRequest

    axes = [a.strip() for a in text.split(",") if a.strip()]
    if not axes or axes[0] != "batch" or any(a not in ("batch", "sequence") for a in axes) or len(set(axes)) != len(axes):
        raise InvalidRequest(f"--dynamic takes batch or batch,sequence, not {text!r}", field="dynamic")
    return "sequence" in axes


def _source(ws: Workspace, args, suffix: str) -> tuple[Path, Path]:
    """The checkpoint and the output path (default: the workspace's exports/)."""
    from torchdeck.checkpoints import formats
    from torchdeck.checkpoints import store as checkpoints
    from torchdeck.exports import common
    from torchdeck.exports.onnx import default_out

    if args.out:  # refused before any work: an existing directory, an unwritable place
        common.check_out(args.out, suffix)
    path = resolve_checkpoint(ws, args.checkpoint, field="checkpoint")
    if args.out:
        return path, Path(args.out)
    try:
        info = formats.inspect(path)
    except TorchdeckError as e:
        e.field = e.field and "checkpoint"  # the file at fault is the --checkpoint one
        raise
    if info.format == checkpoints.FORMAT:
        return path, default_out(ws.exports_dir, info, suffix)
    return path, ws.exports_dir / f"{path.stem if path.is_file() else path.name}{suffix}"


def _rows_table(rows: list[dict]) -> str:
    return table([[r["case"], r["name"], "x".join(map(str, r["shape"])) or "-",
                   "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.3g}",
                   "-" if r["max_rel_diff"] is None else f"{r['max_rel_diff']:.3g}",
                   f"{r['atol']:g}/{r['rtol']:g}", ("ok" if r["passed"] else "FAIL") + (f" ({r['note']})" if r["note"] else "")]
                  for r in rows], ["CASE", "OUTPUT", "SHAPE", "MAX ABS", "MAX REL", "ATOL/RTOL", "RESULT"])


def _print_validation(v: dict) -> None:
    print(f"checker     {'ok' if v['checker_ok'] else 'FAILED: ' + v['checker_error']} (full check)")
    print(f"providers   {', '.join(v['providers'])}")
    print(_rows_table(v["rows"]))
    acc = v.get("accuracy")
    if acc:
        ref = acc.get("pytorch", acc.get("source"))
        print(f"{acc['metric']:<11} pytorch {ref:.4g}, onnx {acc['onnx']:.4g} ({acc['samples']} validation samples)")
    elif v.get("accuracy_note"):
        print(f"accuracy    {v['accuracy_note']}")


def _print_pair(b: dict) -> None:
    print(table([[str(r["batch_size"]), f"{r['pytorch']['p50_ms']:.3f}", f"{r['pytorch']['p95_ms']:.3f}",
                  f"{r['onnxruntime']['p50_ms']:.3f}", f"{r['onnxruntime']['p95_ms']:.3f}",
                  f"{r['onnxruntime']['throughput']:,.0f}/s", f"{r['ratio']:.2f}x"] for r in b["rows"]],
                ["BATCH", "TORCH P50 MS", "P95", "ORT P50 MS", "P95", "ORT THROUGHPUT", "EAGER/ORT"]))
    print(f"threads     {b['threads']} for both")


def cmd_export_onnx(ws: Workspace, args) -> int:
    from torchdeck.exports import onnx as exports

    opset = exports.check_opset(parse_number(args.opset, "opset", int))
    dyn = _dynamic_sequence(args.dynamic)
    path, out = _source(ws, args, ".onnx")
    report = exports.export_onnx(path, out, workspace=ws, trust=args.trust, opset=opset, model_spec=args.model,
                                 dynamic_sequence=dyn, exporter=args.exporter, input_shape=args.input_shape)
    if args.json:
        emit_json(report.to_json())
        return EXIT_OK
    print(f"exported    {report.path} ({fmt_bytes(report.size)}, opset {report.opset}, {report.exporter})")
    if report.dynamo_error:
        print(f"dynamo      failed: {report.dynamo_error}")
    if report.external_data:
        print(f"data        {', '.join(report.files[1:])} (keep beside the .onnx)")
    print(f"axes        {', '.join(report.dynamic_axes['input'])} dynamic")
    _print_validation(report.validation)
    print(f"max abs diff {report.max_abs_diff:.3g} (fp32: atol {report.atol}, rtol {report.rtol})")
    _print_pair(report.benchmark)
    print(f"took        {report.seconds:.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in report.timings.items())})")
    return EXIT_OK


def cmd_export_pt2(ws: Workspace, args) -> int:
    from torchdeck.exports import pt2

    dyn = _dynamic_sequence(args.dynamic)
    path, out = _source(ws, args, ".pt2")
    report = pt2.export_pt2(path, out, workspace=ws, trust=args.trust, model_spec=args.model, dynamic_sequence=dyn,
                            input_shape=args.input_shape)
    if args.json:
        emit_json(report)
        return EXIT_OK
    print(f"exported    {report['path']} ({fmt_bytes(report['size'])}, torch.export)")
    print(_rows_table(report["rows"]))
    return EXIT_OK


def cmd_export_safetensors(ws: Workspace, args) -> int:
    from torchdeck.exports import pt2

    path, out = _source(ws, args, ".safetensors")
    report = pt2.export_safetensors(path, out)
    if args.json:
        emit_json(report)
        return EXIT_OK
    print(f"exported    {report['path']} ({fmt_bytes(report['size'])}, {report['tensors']} tensors, read back identical)")
    return EXIT_OK


def cmd_export_move(ws: Workspace, args) -> int:
    from torchdeck.exports import pt2

    if args.out:
        from torchdeck.exports.common import check_out

        check_out(args.out, ".safetensors")
    path = resolve_checkpoint(ws, args.checkpoint, field="checkpoint")
    r = pt2.move(path, dtype=args.dtype, device=args.device, out=args.out, workspace=ws, trust=args.trust,
                 model_spec=args.model, input_shape=args.input_shape)
    if args.json:
        emit_json(r)
        return EXIT_OK
    print(f"moved       {r['model']} to {r['dtype']} on {r['device']}")
    print(_rows_table(r["rows"]))
    if r["path"]:
        print(f"wrote       {r['path']} ({fmt_bytes(r['size'])})")
    return EXIT_OK


def cmd_onnx_inspect(ws: Workspace, args) -> int:
    from torchdeck.exports.inspect import inspect_onnx

    info = inspect_onnx(args.path)
    if args.json:
        emit_json(info)
        return EXIT_OK
    print(f"path        {info['path']} ({fmt_bytes(info['size'])})")
    print(f"producer    {info['producer'] or '-'}")
    print(f"opset       {info['opset']}  IR version {info['ir_version']}")
    for label, vs in (("input", info["inputs"]), ("output", info["outputs"])):
        for v in vs:
            shape = "?" if v["shape"] is None else "[" + ", ".join(map(str, v["shape"])) + "]"
            print(f"{label:<11} {v['name']}  {v['dtype']}  {shape}")
    print(f"parameters  {fmt_count(info['num_params'])} ({fmt_bytes(info['initializer_bytes'])} of initializers)")
    for loc, n in info["external_data"].items():
        print(f"external    {loc} ({fmt_bytes(n)})")
    for k, v in info["metadata"].items():
        print(f"metadata    {k} = {v}")
    print(table([[op, str(n)] for op, n in info["ops"].items()], ["OPERATOR", "COUNT"]))
    for w in info["warnings"]:
        print(f"warning     {w}")
    return EXIT_OK


def cmd_onnx_validate(ws: Workspace, args) -> int:
    from torchdeck.exports.validate import validate_file

    path = resolve_checkpoint(ws, args.checkpoint, field="checkpoint")
    rep = validate_file(Path(args.path), path, workspace=ws, trust=args.trust, model_spec=args.model,
                        log=ws.logs_dir / "onnx.log", input_shape=args.input_shape)
    if args.json:
        emit_json(rep)
    else:
        _print_validation(rep)
        print("passed" if rep["passed"] else "FAILED")
    return EXIT_OK if rep["passed"] else EXIT_FAILED


def cmd_onnx_bench(ws: Workspace, args) -> int:
    from torchdeck.exports.inspect import bench_file, parse_dims

    sizes = [parse_number(b, "batch size", int) for b in args.batch_size or ["1", "32"]]
    for b in sizes:
        if b < 1:
            from torchdeck.errors import InvalidRequest

            raise InvalidRequest(f"batch size must be at least 1, not {b}", field="batch_size")
    rep = bench_file(args.path, batch_sizes=sizes, dims=parse_dims(args.dims), log=ws.logs_dir / "onnx.log")
    if args.json:
        emit_json(rep)
        return EXIT_OK
    print(table([[str(r["batch_size"]), f"{r['p50_ms']:.3f}", f"{r['p95_ms']:.3f}", f"{r['throughput']:,.0f}/s",
                  str(r["runs"])] for r in rep["rows"]], ["BATCH", "P50 MS", "P95 MS", "THROUGHPUT", "RUNS"]))
    print(f"threads     {rep['threads']}, {', '.join(rep['providers'])}")
    return EXIT_OK


def _print_variant(r: dict) -> None:
    print(f"wrote       {r['path']} ({fmt_bytes(r['size'])}, {r['variant']}, from {Path(r['source']).name})")
    print(_rows_table(r["rows"]))
    print(table([[str(b["batch_size"]), f"{b['source']['p50_ms']:.3f}", f"{b['variant']['p50_ms']:.3f}",
                  f"{b['ratio']:.2f}x"] for b in r["benchmark"]], ["BATCH", "SOURCE P50 MS", "VARIANT P50 MS", "SPEEDUP"]))
    if r.get("accuracy_note"):
        print(f"accuracy    {r['accuracy_note']}")
    for line in r["verdict"]:
        print(f"verdict     {line}")
    print(f"recommend   {r['recommendation']}")


def cmd_onnx_quantize(ws: Workspace, args) -> int:
    from torchdeck.exports.inspect import parse_dims
    from torchdeck.exports.variants import make_variant

    r = make_variant(args.path, f"int8-{args.mode}", out=args.out, data_spec=args.data, dims=parse_dims(args.dims))
    emit_json(r) if args.json else _print_variant(r)
    return EXIT_OK


def cmd_onnx_optimize(ws: Workspace, args) -> int:
    from torchdeck.exports.inspect import parse_dims
    from torchdeck.exports.variants import make_variant

    r = make_variant(args.path, "optimized", out=args.out, data_spec=args.data, dims=parse_dims(args.dims))
    emit_json(r) if args.json else _print_variant(r)
    return EXIT_OK


def cmd_onnx_fp16(ws: Workspace, args) -> int:
    from torchdeck.exports.inspect import parse_dims
    from torchdeck.exports.variants import make_variant

    r = make_variant(args.path, "fp16", out=args.out, data_spec=args.data, dims=parse_dims(args.dims))
    emit_json(r) if args.json else _print_variant(r)
    return EXIT_OK


COMMANDS = {
    ("export", "onnx"): cmd_export_onnx,
    ("export", "pt2"): cmd_export_pt2,
    ("export", "safetensors"): cmd_export_safetensors,
    ("export", "move"): cmd_export_move,
    ("onnx", "inspect"): cmd_onnx_inspect,
    ("onnx", "validate"): cmd_onnx_validate,
    ("onnx", "bench"): cmd_onnx_bench,
    ("onnx", "quantize"): cmd_onnx_quantize,
    ("onnx", "optimize"): cmd_onnx_optimize,
    ("onnx", "fp16"): cmd_onnx_fp16,
}
