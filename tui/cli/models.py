"""`torchdeck models ...` and `torchdeck data ...`."""

from __future__ import annotations

import os

from torchdeck.errors import InvalidRequest
from torchdeck.options import check_optimizer
from torchdeck.runs.config import MAX_BATCH_SIZE, parse_number
from torchdeck.workspace import Workspace

from .output import EXIT_OK, Parser, emit_json, err, table


def add_parsers(sub, common) -> None:
    models = sub.add_parser("models", help="registered and built-in models", parents=[common])
    msub = models.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=Parser)
    msub.add_parser("list", help="list models", parents=[common])
    add = msub.add_parser("add", help="register a model: package.module:callable with keyword arguments", parents=[common])
    add.add_argument("name", metavar="NAME")
    add.add_argument("spec", metavar="SPEC", help="package.module:callable, importable from the current directory")
    add.add_argument("--args", metavar="JSON", help='keyword arguments as a JSON object, e.g. \'{"hidden": 64}\'')
    add.add_argument("--input-shape", metavar="SHAPE", help="an example input's shape, batch first, e.g. 1,10")
    add.add_argument("--description", default="", help="a line about the model")
    rm = msub.add_parser("remove", help="unregister a model (its runs and checkpoints stay)", parents=[common])
    rm.add_argument("name", metavar="NAME")
    show = msub.add_parser("show", help="a model's summary: layers, shapes, sizes, training memory", parents=[common])
    show.add_argument("name", metavar="NAME", help="a registered name, builtin:NAME or package.module:callable")
    show.add_argument("--batch-size", metavar="N", default="32", help="for the training memory estimate (default 32)")
    show.add_argument("--optimizer", metavar="NAME", default="adam", help="for the training memory estimate (default adam)")

    data = sub.add_parser("data", help="datasets", parents=[common])
    dsub = data.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=Parser)
    dshow = dsub.add_parser("show", help="size, sample shapes and dtypes, target kind", parents=[common])
    dshow.add_argument("spec", metavar="SPEC", help="synthetic:NAME, file:PATH or package.module:callable")


def cmd_models_list(ws: Workspace, args) -> int:
    from torchdeck.models.catalogue import catalogue

    entries = catalogue(ws, count_params=True)
    if args.json:
        emit_json({"models": [e.to_json() for e in entries], "registry_error": ws.registry_problem})
    else:
        if ws.registry_problem:
            print(f"(the registry is damaged: {ws.registry_problem}; only built-in models are listed)")
        print(table([[e.name, e.spec, f"{e.num_params:,}" if e.num_params is not None else "?", e.description]
                      for e in entries], ["NAME", "SPEC", "PARAMS", "DESCRIPTION"]))
    return EXIT_OK


def cmd_models_add(ws: Workspace, args) -> int:
    from torchdeck.models import catalogue as models

    entry, result = models.register(
        ws, args.name, args.spec, kwargs=models.parse_kwargs(args.args),
        input_shape=models.parse_input_shape(args.input_shape), description=args.description,
        import_root=os.getcwd())
    if args.json:
        emit_json({"name": entry.name, "spec": entry.spec, "kwargs": entry.kwargs, "input_shape": entry.input_shape,
                   "num_params": result.num_params, "output_shape": result.output_shape})
    else:
        err(f"registered {entry.name}: {entry.spec}, {result.describe()}")
    return EXIT_OK


def cmd_models_remove(ws: Workspace, args) -> int:
    removed = ws.remove_model(args.name)
    if args.json:
        emit_json({"removed": removed.name, "spec": removed.spec})
    else:
        err(f"removed {removed.name} ({removed.spec}); its runs and checkpoints stay")
    return EXIT_OK


def cmd_models_show(ws: Workspace, args) -> int:
    from torchdeck.models import specs, summary

    spec = specs.resolve(args.name, ws)
    batch = parse_number(args.batch_size, "batch size", int)
    if not 1 <= batch <= MAX_BATCH_SIZE:
        raise InvalidRequest(f"batch size must be between 1 and {MAX_BATCH_SIZE:,}, not {batch}", field="batch_size")
    optimizer = check_optimizer(args.optimizer.lower())
    s = summary.summarize(spec, batch_size=batch, optimizer=optimizer, import_root=os.getcwd(), workspace=ws)
    if args.json:
        emit_json({"name": args.name, **s.to_json()})
        return EXIT_OK
    from .summary_view import render_text

    print(render_text(s))
    return EXIT_OK


def cmd_data_show(ws: Workspace, args) -> int:
    from torchdeck.data import sources as data

    info = data.describe(args.spec, import_root=os.getcwd())
    if args.json:
        emit_json(info.to_json())
    else:
        for line in info.lines():
            print(line)
    return EXIT_OK


COMMANDS = {
    ("models", "list"): cmd_models_list,
    ("models", "add"): cmd_models_add,
    ("models", "remove"): cmd_models_remove,
    ("models", "show"): cmd_models_show,
    ("data", "show"): cmd_data_show,
}
