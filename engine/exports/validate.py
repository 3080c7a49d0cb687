"""The validation report of an exported model against the PyTorch model it came from:
onnx.checker (full check), the providers ONNX Runtime used, names/shapes/max abs and rel
difference per output at batch 1 and a larger batch (and another sequence length when that axis
is dynamic), accuracy on the run's validation split when it has labelled data; and the latency
pair (eager PyTorch against ONNX Runtime, batch 1 and 32, same thread count)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import compare, cpu_threads, first_line, measure_interleaved, ort_session

LARGE_BATCH = 8
BENCH_BATCHES = (1, 32)
ACCURACY_SAMPLES = 2048  # validation samples scored at most (a report, not an evaluation run)


def flat_outputs(out) -> list[Any]:
    """A model's outputs as a flat list of arrays, in the order the exporter flattens them."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out.detach().cpu().numpy()]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [a for o in out for a in flat_outputs(o)]
    raise TypeError(f"the model returned {type(out).__name__}, not tensors")


def cases(spec, dynamic_sequence: bool) -> list[tuple[str, int, int | None]]:
    found = [("batch 1", 1, None), (f"batch {LARGE_BATCH}", LARGE_BATCH, None)]
    if dynamic_sequence and spec.input_shape and spec.input_shape[0] > 1:
        seq = max(1, spec.input_shape[0] // 2)
        found.append((f"batch 2, sequence {seq}", 2, seq))
    return found


def example(spec, batch: int, seq: int | None, seed: int):
    from torchdeck.models import specs

    x = specs.example_input(spec, batch, seed=seed)
    return x if seq is None else x[:, :seq].contiguous()


def checker(path: Path) -> tuple[bool, str]:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
        return True, ""
    except Exception as e:
        return False, first_line(e)


def validate_model(path: Path, model, spec, *, dynamic_sequence: bool = False, data: dict | None = None,
                   dtype: str = "fp32", session=None) -> dict[str, Any]:
    """The report (a dict, as stored): checker_ok/checker_error, providers, rows (one per output
    per case), passed, max_abs_diff, max_rel_diff, accuracy (or accuracy_note)."""
    import torch

    ok, why = checker(path)
    rep: dict[str, Any] = {"checker_ok": ok, "checker_error": why, "providers": [], "rows": [], "passed": False,
                           "max_abs_diff": 0.0, "max_rel_diff": 0.0, "dtype": dtype}
    sess = session or ort_session(path)
    rep["providers"] = sess.get_providers()
    in_name = sess.get_inputs()[0].name
    names = [o.name for o in sess.get_outputs()]
    rows = []
    with torch.no_grad():
        for label, batch, seq in cases(spec, dynamic_sequence):
            x = example(spec, batch, seq, seed=batch + (seq or 0))
            expected = flat_outputs(model(x))
            try:
                got = sess.run(None, {in_name: x.numpy()})
            except Exception as e:
                from .common import OutputRow

                rows.append(OutputRow(label, ",".join(names), [], [list(e.shape) for e in expected][0], None, None,
                                      0, 0, False, f"ONNX Runtime failed: {first_line(e)}"))
                continue
            rows += compare(label, names, got, expected, dtype)
    rep["rows"] = [r.to_json() for r in rows]
    diffs = [r for r in rows if r.max_abs_diff is not None]
    rep["max_abs_diff"] = max((r.max_abs_diff for r in diffs), default=0.0)
    rep["max_rel_diff"] = max((r.max_rel_diff for r in diffs), default=0.0)
    rep["passed"] = ok and all(r.passed for r in rows)
    acc = accuracy(model, sess, spec, data) if data is not None else None
    if isinstance(acc, dict):
        rep["accuracy"] = acc
    else:
        rep["accuracy_note"] = acc or "no labelled data (not a run's checkpoint)"
    return rep


def load_val(data: dict):
    """The run's validation split as tensors (x, y, kind), or a str saying why there is none.
    Only synthetic sets and files: a callable data spec is code, not run by a report."""
    from torchdeck.data import sources
    from torchdeck.errors import TorchdeckError

    spec = data.get("data")
    if not isinstance(spec, str) or not spec:
        return "the run used its model's default data"
    if not (spec.startswith("synthetic:") or spec.startswith("file:")):
        return f"accuracy not measured: {spec} is a callable (code), not run by a report"
    try:
        d = sources.load(spec, size=data.get("dataset_size"), seed=data.get("seed") or 0,
                         val_fraction=data.get("val_fraction") if data.get("val_fraction") is not None else 0.1,
                         import_root=data.get("import_root"))
    except TorchdeckError as e:
        return f"accuracy not measured: {e}"
    if not len(d.x_val):
        return "accuracy not measured: the run has no validation split"
    return d.x_val[:ACCURACY_SAMPLES], d.y_val[:ACCURACY_SAMPLES], d.target_kind


def score(outputs, y, kind: str) -> float:
    import numpy as np

    out = np.asarray(outputs)
    y = np.asarray(y)
    if kind == "classes":
        return float((out.argmax(axis=-1) == y.reshape(-1)).mean())
    return float(((out.reshape(y.shape) - y) ** 2).mean())


def run_batches(fn, x, batch: int = 256):
    import numpy as np

    return np.concatenate([fn(x[i:i + batch]) for i in range(0, len(x), batch)])


def accuracy(model, sess, spec, data: dict | None, *, reference=None) -> dict | str:
    """{metric, pytorch, onnx, samples}: accuracy for classes, MSE for regression. `reference`:
    a second session scored in place of PyTorch (a variant against its source)."""
    import torch

    val = load_val(data or {})
    if isinstance(val, str):
        return val
    x, y, kind = val
    in_name = sess.get_inputs()[0].name
    try:
        with torch.no_grad():
            if reference is not None:
                ref_in = reference.get_inputs()[0].name
                ref = run_batches(lambda b: reference.run(None, {ref_in: b.numpy()})[0], x)
            else:
                ref = run_batches(lambda b: flat_outputs(model(b))[0], x)
            got = run_batches(lambda b: sess.run(None, {in_name: b.numpy()})[0], x)
    except Exception as e:
        return f"accuracy not measured: {first_line(e)}"
    metric = "accuracy" if kind == "classes" else "mse"
    return {"metric": metric, "pytorch" if reference is None else "source": score(ref, y, kind),
            "onnx": score(got, y, kind), "samples": int(len(x))}


def benchmark_pair(path: Path, model, spec, *, threads: int | None = None, batches=BENCH_BATCHES,
                   budget_s: float = 0.6) -> dict[str, Any]:
    """Eager PyTorch against ONNX Runtime (CPU), same thread count, warm-up excluded; the ratio
    eager/ORT per batch size (above 1: ONNX Runtime is faster)."""
    import torch

    threads = threads or cpu_threads()
    torch.set_num_threads(threads)
    sess = ort_session(path, threads=threads, providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    rows = []
    with torch.no_grad():
        for bs in batches:
            x = example(spec, bs, None, seed=bs)
            xn = x.numpy()
            (eager, ort), rounds = measure_interleaved([lambda: model(x), lambda: sess.run(None, {in_name: xn})], bs,
                                                       budget_s=budget_s)
            rows.append({"batch_size": bs, "pytorch": eager.to_json(), "onnxruntime": ort.to_json(),
                         "ratio": round(eager.p50_ms / ort.p50_ms, 3) if ort.p50_ms else None,
                         "round_ratios": [round(a / b, 3) for a, b in zip(*rounds) if b]})
    doc: dict[str, Any] = {"threads": threads, "rows": rows}
    for r in rows:
        doc[f"ratio_{r['batch_size']}"] = r["ratio"]
    return doc


def validate_file(path: Path, checkpoint: Path, *, workspace=None, trust: bool = False,
                  model_spec: str | None = None, log: Path | None = None,
                  input_shape: str | None = None) -> dict[str, Any]:
    """`onnx validate PATH --checkpoint CKPT`: any .onnx against the model a checkpoint rebuilds.
    The dynamic sequence case is tried when the file's input has a symbolic second axis."""
    from .common import captured_output
    from .inspect import dtype_of_model, inspect_onnx
    from .onnx import _data_of, load_source

    info = inspect_onnx(path)
    with captured_output(log):
        model, spec = load_source(Path(checkpoint), workspace=workspace, trust=trust, model_spec=model_spec,
                                  input_shape=input_shape)
        if not spec.input_shape:
            from torchdeck.errors import InvalidRequest

            raise InvalidRequest(f"{spec.spec}: no example input shape known; give one with --input-shape, "
                                 "batch first, like 1,10", field="input_shape")
        from .inspect import open_session

        sess = open_session(path)
        ins = info["inputs"]
        if len(ins) != 1:
            from torchdeck.errors import InvalidRequest

            raise InvalidRequest(f"{path} has {len(ins)} inputs; validation feeds one (the model's input)",
                                 field="path")
        shape = ins[0]["shape"]
        want = [None, *spec.input_shape]
        if len(shape) != len(want) or any(isinstance(a, int) and a != b for a, b in zip(shape[1:], want[1:])):
            from torchdeck.errors import InvalidRequest

            raise InvalidRequest(f"{path} takes input {ins[0]['name']} of shape {shape}; the checkpoint's model "
                                 f"takes (batch, {', '.join(map(str, spec.input_shape))})", field="path")
        dyn_seq = len(shape) > 1 and not isinstance(shape[1], int)
        rep = validate_model(path, model, spec, dynamic_sequence=dyn_seq, data=_data_of(Path(checkpoint)),
                             dtype=dtype_of_model(info), session=sess)
    rep["path"] = str(path)
    rep["checkpoint"] = str(checkpoint)
    rep["model"] = spec.describe()
    return rep
