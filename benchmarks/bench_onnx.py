"""ONNX exports of the built-in models (MLP, CNN, tiny transformer), in one run:

    python benchmarks/bench_onnx.py [--json] [--repeats 5]

1. Each model exported with `torchdeck export onnx --json` in a fresh process; the eager/ORT
   latency ratio its report holds (what the Exports screen shows) against an independent
   measurement in this process of the same file and the same weights, same thread count,
   interleaved repeats, median of medians. They should agree within 10%.
2. int8/fp32: `onnx quantize --mode dynamic` of each (and `--mode static` of the CNN), the
   variant's latency over its source's at batch 32 (below 1: int8 is faster).
3. Time to export and validate a small model: the whole command in a fresh process (with its
   own breakdown), the same request to the TUI's warm export process, and `torch.onnx.export`
   alone in a warm process (its second export): the start-up share is what the fresh process
   spends before and around the export that a warm one does not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("mlp", "cnn", "tiny-transformer")


def cli(*args: str, cwd: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "torchdeck.tui.cli", *args, "--json"], cwd=cwd,
                          capture_output=True, text=True)
    doc = json.loads(proc.stdout) if proc.stdout.strip() else {}
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {doc.get('error') or proc.stderr[-400:]}")
    return doc


def weights(tmp: Path, name: str) -> Path:
    import torch
    from safetensors.torch import save_file
    from torchdeck.models import specs

    torch.manual_seed(0)
    model = specs.build(specs.resolve(f"builtin:{name}"))
    path = tmp / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def independent_ratio(onnx_path: str, name: str, ckpt: Path, threads: int, repeats: int, batch: int = 32) -> float:
    """eager/ORT p50 at `batch`, measured here with plain loops: its own code, not the report's."""
    import onnxruntime as ort
    import torch
    from safetensors.torch import load_file
    from torchdeck.models import specs

    spec = specs.resolve(f"builtin:{name}")
    model = specs.build(spec).eval()
    model.load_state_dict(load_file(str(ckpt)))
    torch.set_num_threads(threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
    x = specs.example_input(spec, batch, seed=batch)
    xn = {sess.get_inputs()[0].name: x.numpy()}

    def median_ms(fn, n=100):
        for _ in range(5):
            fn()
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts) * 1000

    eager, onnx_ = [], []
    with torch.no_grad():
        for _ in range(repeats):  # interleaved, so a busy moment hits both sides
            eager.append(median_ms(lambda: model(x)))
            onnx_.append(median_ms(lambda: sess.run(None, xn)))
    return statistics.median(eager) / statistics.median(onnx_)


def warm_times(tmp: Path, ckpt: Path, ws: Path) -> dict:
    """The export request in the TUI's warm child, and torch.onnx.export alone, warm."""
    import torch
    from torchdeck.models import specs
    from torchdeck.tui.export_child import ExportChild

    child = ExportChild(tmp / "child.log")
    t = time.perf_counter()
    child.warm()
    code, _, err = child.run(["onnx", "inspect", str(tmp / "mlp.onnx"), "--json"], cwd=str(tmp))
    warm_up = time.perf_counter() - t
    runs = []
    for i in range(3):
        t = time.perf_counter()
        code, out, err = child.run(["--workspace", str(ws), "export", "onnx", "--checkpoint", str(ckpt), "--model",
                                    "builtin:mlp", "--out", str(tmp / f"warm{i}.onnx"), "--json"], cwd=str(tmp))
        runs.append(time.perf_counter() - t)
        if code != 0:
            raise SystemExit(f"warm export failed: {out} {err}")
    child.close()
    spec = specs.resolve("builtin:mlp")
    model = specs.build(spec).eval()
    x = specs.example_input(spec, 2)
    bare = []
    for i in range(3):  # the first builds the exporter's registry; the next are "warm"
        t = time.perf_counter()
        torch.onnx.export(model, (x,), str(tmp / f"bare{i}.onnx"), dynamo=True, external_data=False,
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},), verbose=False)
        bare.append(time.perf_counter() - t)
    return {"child_start_s": round(warm_up, 2), "warm_export_s": round(statistics.median(runs), 2),
            "bare_first_s": round(bare[0], 2), "bare_warm_s": round(statistics.median(bare[1:]), 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated built-ins (default: all three)")
    args = p.parse_args()
    out: dict = {"models": {}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        ws = tmp / "ws"
        for name in args.models.split(","):
            print(f"{name}: export ...", file=sys.stderr)
            ckpt = weights(tmp, name)
            axes = ["--dynamic", "batch,sequence"] if name == "tiny-transformer" else []
            t = time.perf_counter()
            r = cli("--workspace", str(ws), "export", "onnx", "--checkpoint", str(ckpt), "--model", f"builtin:{name}",
                    "--out", str(tmp / f"{name}.onnx"), *axes, cwd=tmp)
            wall = time.perf_counter() - t
            threads = r["benchmark"]["threads"]
            mine = independent_ratio(r["path"], name, ckpt, threads, args.repeats)
            row = {"export_wall_s": round(wall, 2), "timings": r["timings"], "threads": threads,
                   "screen_ratio_32": r["speed_ratio"], "independent_ratio_32": round(mine, 3),
                   "agreement": round(r["speed_ratio"] / mine, 3), "ratio_1": r["benchmark"]["ratio_1"],
                   "max_abs_diff": r["max_abs_diff"]}
            modes = ["dynamic", "static"] if name == "cnn" else ["dynamic"]
            for mode in modes:
                print(f"{name}: quantize {mode} ...", file=sys.stderr)
                q = cli("--workspace", str(ws), "onnx", "quantize", r["path"], "--mode", mode, cwd=tmp)
                row[f"int8_{mode}_over_fp32_32"] = round(1 / q["speed_ratio"], 3) if q["speed_ratio"] else None
                row[f"int8_{mode}_size_ratio"] = q["size_ratio"]
                row[f"int8_{mode}_max_abs_diff"] = round(q["max_abs_diff"], 4)
                row[f"int8_{mode}_verdict"] = q["verdict"][0]
            out["models"][name] = row
        if "mlp" not in out["models"]:
            print(json.dumps(out) if args.json else json.dumps(out, indent=1))
            return 0
        print("warm export process and bare torch.onnx.export ...", file=sys.stderr)
        out["startup"] = warm_times(tmp, tmp / "mlp.safetensors", ws)
        fresh = out["models"]["mlp"]
        out["startup"]["fresh_command_s"] = fresh["export_wall_s"]
        out["startup"]["fresh_export_step_s"] = fresh["timings"]["export"]
        share = 1 - out["startup"]["bare_warm_s"] / fresh["export_wall_s"]
        out["startup"]["startup_share_of_fresh"] = round(share, 3)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{'model':<17} {'screen e/ORT':>12} {'independent':>11} {'agree':>6} {'int8dyn/fp32':>12} "
          f"{'int8 size':>9}  verdict")
    for name, r in out["models"].items():
        print(f"{name:<17} {r['screen_ratio_32']:>12.2f} {r['independent_ratio_32']:>11.2f} {r['agreement']:>6.2f} "
              f"{r['int8_dynamic_over_fp32_32']:>12.2f} {r['int8_dynamic_size_ratio']:>9.2f}  {r['int8_dynamic_verdict']}")
        if "int8_static_over_fp32_32" in r:
            print(f"{'  static QDQ':<17} {'':>12} {'':>11} {'':>6} {r['int8_static_over_fp32_32']:>12.2f} "
                  f"{r['int8_static_size_ratio']:>9.2f}  {r['int8_static_verdict']}")
    s = out["startup"]
    print(f"export + validate of the MLP: fresh command {s['fresh_command_s']:.2f} s "
          f"({', '.join(f'{k} {v:.2f}' for k, v in out['models']['mlp']['timings'].items())}); warm export process "
          f"{s['warm_export_s']:.2f} s (it starts in {s['child_start_s']:.2f} s, once); torch.onnx.export alone: "
          f"first {s['bare_first_s']:.2f} s, warm {s['bare_warm_s']:.2f} s; start-up share of the fresh command "
          f"{s['startup_share_of_fresh'] * 100:.0f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
