"""`torchdeck ckpt ...` and `torchdeck export ...`."""

from __future__ import annotations

import os
from pathlib import Path

from torchdeck.errors import InvalidRequest, NotFound, OperationFailed
from torchdeck.fmt import fmt_bytes, fmt_count, fmt_dims, fmt_loss, fmt_number
from torchdeck.runs.store import RunStore
from torchdeck.workspace import Workspace

from .output import EXIT_FAILED, EXIT_OK, Parser, emit_json, table


def add_parsers(sub, common) -> None:
    ckpt = sub.add_parser("ckpt", help="checkpoints", parents=[common])
    csub = ckpt.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=Parser)
    ins = csub.add_parser("inspect", help="what a checkpoint holds", parents=[common])
    ins.add_argument("path", metavar="PATH", help="a checkpoint directory or file, or a run (its latest checkpoint)")
    ins.add_argument("--trust", action="store_true", help="allow full unpickling (runs code from the file)")
    ins.add_argument("--stats", action="store_true", help="per-tensor min, max, mean, std and NaN/inf counts "
                     "(reads every tensor)")

    ver = csub.add_parser("verify", help="hashes, loadability and NaN/inf of a checkpoint (exit 1 on a problem)",
                          parents=[common])
    ver.add_argument("path", metavar="PATH", help="a checkpoint directory or file, or a run (its latest checkpoint)")
    ver.add_argument("--trust", action="store_true", help="allow full unpickling (runs code from the file)")
    dif = csub.add_parser("diff", help="keys, shapes, dtypes and max abs difference of two checkpoints", parents=[common])
    dif.add_argument("a", metavar="A", help="a checkpoint directory or file, or a run")
    dif.add_argument("b", metavar="B", help="a checkpoint directory or file, or a run")
    dif.add_argument("--trust", action="store_true", help="allow full unpickling (runs code from the file)")
    con = csub.add_parser("convert", help="write a checkpoint's weights as safetensors or a torch file", parents=[common])
    con.add_argument("path", metavar="PATH", help="a checkpoint directory or file, or a run (its latest checkpoint)")
    con.add_argument("--to", required=True, choices=["safetensors", "pt"])
    con.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], help="cast floating tensors")
    con.add_argument("--out", metavar="FILE", help="output file (default: beside PATH); never overwritten")
    con.add_argument("--trust", action="store_true", help="allow full unpickling (runs code from the file)")
    lc = csub.add_parser("load-check", help="would the weights load into a model? (exit 1 when not)", parents=[common])
    lc.add_argument("path", metavar="PATH", help="a checkpoint directory or file, or a run (its latest checkpoint)")
    lc.add_argument("--model", required=True, metavar="SPEC", help="builtin:NAME, a registered name, or module:callable")
    lc.add_argument("--args", metavar="JSON", help="keyword arguments for the model, as a JSON object")
    ls = csub.add_parser("list", help="complete checkpoints of every run, or of one", parents=[common])
    ls.add_argument("run", metavar="RUN", nargs="?", help="a run id, prefix or name (default: every run)")


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
    from torchdeck.checkpoints import formats
    from torchdeck.checkpoints import store as checkpoints
    from torchdeck.models import specs

    path = resolve_checkpoint(ws, args.path)
    info = checkpoints.inspect(path, trust=args.trust)
    doc = info.to_json()
    if info.model_spec:
        try:
            doc["trusted_spec"] = trust.is_trusted(specs.ModelSpec.from_json(info.model_spec), ws)
        except InvalidRequest:  # a damaged spec record: nothing to trust
            doc["trusted_spec"] = False
    stats: dict[str, dict] = {}
    if args.stats:
        from torchdeck.checkpoints.formats.base import tensor_stats

        state = formats.load_weights(path, trust=args.trust)  # a zip file is memory-mapped: read once more, cheaply
        stats = {name: tensor_stats(t) for name, t in state.items()}
        for t in doc["tensors"]:
            t["stats"] = stats.get(t["name"])
    if args.json:
        emit_json(doc)
        return EXIT_OK
    meta = doc["metadata"] if isinstance(doc["metadata"], dict) else {}
    print(f"path        {info.path}")
    print(f"format      {info.format}")
    if info.step is not None or info.epoch is not None:
        print(f"step        {'-' if info.step is None else fmt_count(info.step)}  epoch "
              f"{'-' if info.epoch is None else fmt_number(info.epoch)}")
    if info.metrics:
        print("metrics     " + "  ".join(f"{k} {fmt_loss(v)}" for k, v in info.metrics.items()))
    if info.model_spec:
        print(f"model       {info.model_spec.get('spec')}" + ("" if doc["trusted_spec"] else "  (not trusted here)"))
    print(f"parameters  {fmt_count(info.num_params)}  ({fmt_bytes(info.num_bytes)} of tensors)")
    print(f"size        {fmt_bytes(info.size)} on disk")
    optims = meta.get("optimizer")
    for o in optims if isinstance(optims, list) else [optims] if optims else []:
        if isinstance(o, dict) and "type" in o:
            print(f"optimizer   {o['type']}  {fmt_count(o.get('state_tensors'))} state tensors, "
                  f"{fmt_bytes(o.get('state_bytes'))}")
    for key in ("pytorch-lightning_version", "arch", "library", "shards", "files"):
        if meta.get(key) is not None and info.format != "torchdeck-checkpoint":
            v = meta[key]
            print(f"{key:<11} {', '.join(map(str, v)) if isinstance(v, list) else v}")
    rows = []
    for t in doc["tensors"]:
        row = [t["name"], fmt_dims(t["shape"]), t["dtype"], fmt_bytes(t["bytes"])]
        if args.stats:
            st = t["stats"] or {}
            row += [fmt_number(st.get("min")), fmt_number(st.get("max")), fmt_number(st.get("mean")),
                    fmt_number(st.get("std")), f"{st.get('nan', 0)}/{st.get('inf', 0)}"]
        rows.append(row)
    header = ["TENSOR", "SHAPE", "DTYPE", "BYTES"] + (["MIN", "MAX", "MEAN", "STD", "NAN/INF"] if args.stats else [])
    print(table(rows, header))
    return EXIT_OK


def _resolve_existing(ws: Workspace, ref: str, *, field: str = "path") -> Path:
    return resolve_checkpoint(ws, ref, field=field)


def cmd_ckpt_verify(ws: Workspace, args) -> int:
    from torchdeck.checkpoints import ops

    report = ops.verify(_resolve_existing(ws, args.path), trust=args.trust)
    if args.json:
        emit_json(report)
    else:
        print(f"path        {report['path']}")
        print(f"tensors     {report['tensors_checked']} read")
        for p in report["problems"]:
            print(f"problem     {p}")
        print("ok" if report["ok"] else f"FAILED: {len(report['problems'])} problem(s)")
    return EXIT_OK if report["ok"] else EXIT_FAILED


def cmd_ckpt_diff(ws: Workspace, args) -> int:
    from torchdeck.checkpoints import ops

    report = ops.diff(_resolve_existing(ws, args.a, field="path"), _resolve_existing(ws, args.b, field="path"),
                      trust_a=args.trust, trust_b=args.trust)
    if args.json:
        emit_json(report)
        return EXIT_OK
    for k in report["only_in_a"]:
        print(f"only in A   {k}")
    for k in report["only_in_b"]:
        print(f"only in B   {k}")
    for c in report["changed"]:
        print(f"changed     {c['name']}: {fmt_dims(c['a']['shape'], '')} {c['a']['dtype']} -> "
              f"{fmt_dims(c['b']['shape'], '')} {c['b']['dtype']}")
    if report["tensors"]:
        print(table([[t["name"], "NaN/inf" if t["max_abs_diff"] is None else f"{t['max_abs_diff']:.3g}"] for t in report["tensors"]], ["TENSOR", "MAX ABS DIFF"]))
    print("identical" if report["identical"] else "differ")
    return EXIT_OK


def cmd_ckpt_convert(ws: Workspace, args) -> int:
    from torchdeck.checkpoints import ops

    if args.out:  # refused before any work
        ops.check_convert_out(args.out, args.to)
    report = ops.convert(_resolve_existing(ws, args.path), args.to, dtype=args.dtype, out=args.out, trust=args.trust)
    if args.json:
        emit_json(report)
        return EXIT_OK
    print(f"wrote       {report['path']} ({fmt_bytes(report['size'])}, {report['tensors']} tensors"
          + (f", {report['dtype']}" if report["dtype"] else "") + ")")
    for name, target in report["aliases"].items():
        print(f"shared      {name} is {target}: stored once")
    for name in report["cloned"]:
        print(f"cloned      {name} shared storage with another tensor: written as its own copy")
    return EXIT_OK


def cmd_ckpt_load_check(ws: Workspace, args) -> int:
    import json

    from torchdeck import trust
    from torchdeck.checkpoints import ops
    from torchdeck.models import specs

    kwargs = None
    if args.args:
        try:
            kwargs = json.loads(args.args)
        except ValueError:
            kwargs = None
        if not isinstance(kwargs, dict):
            raise InvalidRequest("--args must be a JSON object, like '{\"hidden\": 32}'", field="args")
    spec = specs.resolve(args.model, ws, kwargs)  # typed here: the user's own choice to build
    path = _resolve_existing(ws, args.path)
    report = ops.load_check(path, spec, import_root=trust.import_root_for(spec, ws, os.getcwd()))
    if args.json:
        emit_json(report)
    else:
        for k in report["missing"]:
            print(f"missing     {k}")
        for k in report["unexpected"]:
            print(f"unexpected  {k}")
        for m in report["mismatched"]:
            print(f"mismatched  {m['name']}: model {fmt_dims(m['model'], '')}, "
                  f"checkpoint {fmt_dims(m['checkpoint'], '')}")
        fix = report["suggested_prefix_fix"]
        if fix:
            how = f"strip the prefix {fix['strip']!r} from" if "strip" in fix else f"add the prefix {fix['add']!r} to"
            print(f"fix         {how} the checkpoint's keys and they match the model")
        print(f"loads into {report['model']}" if report["ok"] else f"does NOT load into {report['model']}")
    return EXIT_OK if report["ok"] else EXIT_FAILED


def cmd_ckpt_list(ws: Workspace, args) -> int:
    from torchdeck.checkpoints import store as checkpoints

    rs = RunStore(ws)
    if args.run:
        run = rs.get(args.run)
        found = [(run.id, c) for c in reversed(checkpoints.list_checkpoints(run.checkpoints_dir))]
    else:
        found = checkpoints.workspace_checkpoints(rs)
    rows = [{"run": rid, "name": c.name, "path": str(c.path), "step": c.step, "epoch": c.epoch,
             "loss": c.metrics.get("loss", c.metrics.get("train_loss")), "metrics": c.metrics, "size": c.size}
            for rid, c in found]
    if args.json:
        emit_json(rows)
        return EXIT_OK
    if not rows:
        print("no checkpoints")
        return EXIT_OK
    print(table([[r["run"], r["name"], str(r["step"]), str(r["epoch"]), fmt_loss(r["loss"]), fmt_bytes(r["size"])]
                 for r in rows], ["RUN", "CHECKPOINT", "STEP", "EPOCH", "LOSS", "SIZE"]))
    return EXIT_OK


COMMANDS = {
    ("ckpt", "inspect"): cmd_ckpt_inspect,
    ("ckpt", "verify"): cmd_ckpt_verify,
    ("ckpt", "diff"): cmd_ckpt_diff,
    ("ckpt", "convert"): cmd_ckpt_convert,
    ("ckpt", "load-check"): cmd_ckpt_load_check,
    ("ckpt", "list"): cmd_ckpt_list,
}
