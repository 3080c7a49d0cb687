"""Any `.onnx` file, whoever wrote it: inputs and outputs (names, dtypes, symbolic shapes), opset
and IR version (and whether this ONNX Runtime can run that IR), an operator histogram,
parameters and initializer bytes, external data, metadata; and a benchmark with random inputs
of its declared shapes. Reading a file never runs code from it: ONNX is data."""

from __future__ import annotations

import os
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

from torchdeck.errors import Corrupt, InvalidRequest, OperationFailed

from .common import captured_output, first_line, measure, ort_session

QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
             "QLinearConv", "QLinearMatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}


def _elem_type_name(t: int) -> str:
    import onnx

    try:
        return onnx.helper.tensor_dtype_to_np_dtype(t).name
    except Exception:
        return onnx.TensorProto.DataType.Name(t).lower() if t in onnx.TensorProto.DataType.values() else f"type {t}"


def _value_info(v) -> dict[str, Any]:
    t = v.type
    if not t.HasField("tensor_type"):
        return {"name": v.name, "dtype": t.WhichOneof("value") or "unknown", "shape": None}
    shape: list[int | str] | None = None
    if t.tensor_type.HasField("shape"):
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.tensor_type.shape.dim]
    return {"name": v.name, "dtype": _elem_type_name(t.tensor_type.elem_type), "shape": shape}


def load_proto(path: str | os.PathLike):
    """The ModelProto without its external data; Corrupt when the bytes are not a model."""
    import onnx
    from torchdeck import trust

    path = Path(path)
    trust.check_regular_file(path, field="path", what="an ONNX model")
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise Corrupt(f"{path} is not a readable ONNX model (damaged or truncated?): {first_line(e)}",
                      field="path") from None
    if not m.graph.node and not m.graph.output:
        raise Corrupt(f"{path} is not an ONNX model: it holds no graph (damaged, truncated, or another file)",
                      field="path")
    return m


@cache
def ir_supported(ir: int) -> tuple[bool, int | None]:
    """Whether this ONNX Runtime runs models of IR version `ir` (probed with a one-node model of
    that IR), and the newest it runs when its refusal names it."""
    import re

    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = ir
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return True, None
    except Exception as e:
        found = re.search(r"max supported IR version:?\s*(\d+)", str(e))
        if found or "IR version" in str(e):
            return False, int(found.group(1)) if found else None
        return True, None  # refused for another reason: not the IR's fault


def inspect_onnx(path: str | os.PathLike) -> dict[str, Any]:
    import onnx

    path = Path(path)
    m = load_proto(path)
    g = m.graph
    init_names = {i.name for i in g.initializer}
    ops = Counter((f"{n.domain}:{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type) for n in g.node)
    num_params = 0
    init_bytes = 0
    external: dict[str, int] = {}
    dtypes: Counter[str] = Counter()
    for t in g.initializer:
        n = 1
        for d in t.dims:
            n *= d
        num_params += n
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize if t.data_type else 0
        init_bytes += n * itemsize
        dtypes[_elem_type_name(t.data_type)] += n
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = {e.key: e.value for e in t.external_data}.get("location", "?")
            external[loc] = external.get(loc, 0) + n * itemsize
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    warnings: list[str] = []
    runs, max_ir = ir_supported(int(m.ir_version))
    if not runs:
        import onnxruntime as ort

        warnings.append(f"IR version {m.ir_version} is newer than this ONNX Runtime ({ort.__version__}) runs"
                        + (f" (up to {max_ir})" if max_ir else ""))
    missing = [loc for loc in external if not (path.parent / loc).is_file()]
    for loc in missing:
        warnings.append(f"external data file {loc} is missing beside {path.name}")
    try:
        onnx.checker.check_model(m)  # structure only: full_check needs the external data in memory
    except Exception as e:
        warnings.append(f"onnx.checker: {first_line(e)}")
    return {
        "path": str(path),
        "size": path.stat().st_size + sum((path.parent / loc).stat().st_size for loc in external if loc not in missing),
        "inputs": [_value_info(v) for v in g.input if v.name not in init_names],
        "outputs": [_value_info(v) for v in g.output],
        "opset": opset,
        "opsets": {o.domain or "ai.onnx": o.version for o in m.opset_import},
        "ir_version": m.ir_version,
        "ir_runs_here": runs,
        "producer": f"{m.producer_name} {m.producer_version}".strip(),
        "ops": dict(ops.most_common()),
        "num_nodes": len(g.node),
        "num_params": num_params,
        "initializer_bytes": init_bytes,
        "initializer_dtypes": dict(dtypes),
        "external_data": external,
        "metadata": {p.key: p.value for p in m.metadata_props},
        "warnings": warnings,
    }


def dtype_of_model(info: dict[str, Any]) -> str:
    """Which tolerance row applies: int8 when quantized, fp16 when its inputs or weights are."""
    if QUANT_OPS & {op.split(":")[-1] for op in info["ops"]}:
        return "int8"
    if any(i["dtype"] == "float16" for i in info["inputs"]) or info.get("initializer_dtypes", {}).get("float16"):
        return "fp16"
    return "fp32"


def open_session(path: str | os.PathLike, **kw):
    """An ONNX Runtime session, or a clear error: an IR too new, missing external data, damage."""
    try:
        return ort_session(path, **kw)
    except Exception as e:
        text = first_line(e, 600)
        if "IR version" in text:
            raise OperationFailed(f"{path}: this ONNX Runtime cannot run it: {text}", code="failed",
                                  field="path") from None
        raise Corrupt(f"ONNX Runtime cannot load {path}: {text}", field="path") from None


def parse_dims(text: str | None) -> dict[str, int]:
    """`--dims batch=4,sequence=16` -> {"batch": 4, "sequence": 16}."""
    found: dict[str, int] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, eq, value = part.partition("=")
        if not eq or not name.strip() or not value.strip().isdigit() or int(value) < 1:
            raise InvalidRequest(f"--dims takes NAME=SIZE pairs with sizes of at least 1, like batch=4,seq=16; "
                                 f"not {part.strip()!r}", field="dims")
        found[name.strip()] = int(value)
    return found


_NP_RANDOM = {"float32", "float64", "float16"}


def random_inputs(info: dict[str, Any], batch_size: int, dims: dict[str, int], *, seed: int = 0) -> dict[str, Any]:
    """Random inputs of the declared shapes: the first symbolic axis is the batch, other symbolic
    axes need `dims` (named), integers are drawn from [0, 2) (token ids, masks)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    feeds = {}
    for i in info["inputs"]:
        if i["shape"] is None:
            raise InvalidRequest(f"input {i['name']} is not a tensor ({i['dtype']}); it cannot be fed random data",
                                 field="path")
        shape = []
        for axis, d in enumerate(i["shape"]):
            if isinstance(d, int) and d > 0:
                shape.append(d)
            elif isinstance(d, str) and d in dims:
                shape.append(dims[d])
            elif axis == 0:
                shape.append(batch_size)
            else:
                raise InvalidRequest(f"input {i['name']} has a symbolic axis {axis} ({d!r}): give its size with "
                                     f"--dims {d if d != '?' else 'NAME'}=N", field="dims")
        dtype = np.dtype(i["dtype"]) if i["dtype"] not in ("bool", "string") else np.dtype(bool)
        if dtype.name in _NP_RANDOM:
            feeds[i["name"]] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iub":
            feeds[i["name"]] = rng.integers(0, 2, size=shape).astype(dtype)
        else:
            raise InvalidRequest(f"input {i['name']} has dtype {i['dtype']}; random inputs are numbers only",
                                 field="path")
    return feeds


def bench_file(path: str | os.PathLike, *, batch_sizes=(1, 32), dims: dict[str, int] | None = None,
               threads: int | None = None, log: Path | None = None, budget_s: float = 0.5) -> dict[str, Any]:
    """p50/p95 and throughput of ONNX Runtime on random inputs of the file's declared shapes."""
    from .common import cpu_threads

    info = inspect_onnx(path)
    threads = threads or cpu_threads()
    rows = []
    with captured_output(log):
        sess = open_session(path, threads=threads, providers=["CPUExecutionProvider"])
        for bs in batch_sizes:
            feeds = random_inputs(info, bs, dims or {}, seed=bs)
            try:
                sess.run(None, feeds)
            except Exception as e:
                shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items())
                raise InvalidRequest(f"{Path(path).name} does not run on inputs {shapes}: {first_line(e)}",
                                     field="dims" if dims else "batch_size") from None
            lat = measure(lambda: sess.run(None, feeds), bs, budget_s=budget_s)
            rows.append(lat.to_json())
    return {"path": str(path), "threads": threads, "providers": sess.get_providers(), "rows": rows}
