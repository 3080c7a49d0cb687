"""Memory of `ckpt diff` on two ~1 GiB checkpoints against the obvious way (load both, compare).

Two torchdeck checkpoint directories (model.safetensors inside) of 16 float32 tensors of
64 MiB each are written once; B differs from A in a few elements of every tensor. Each side then
runs in its own fresh process (so that its peak RSS is its own), interleaved, and reports the
growth of its peak RSS (VmHWM, reset through /proc/self/clear_refs after the imports) over
the timed part and its time:

  torchdeck     `torchdeck.checkpoints.ops.diff(a, b)`: streams each tensor in chunks
  load both     `safetensors.torch.load_file` of both files, then the same max |a - b| per tensor

The target: the diff's memory stays under 2x the largest tensor (128 MiB here).

    .venv/bin/python benchmarks/bench_diff.py [--mb 1024] [--repeats 3] [--dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
import torch
from safetensors.torch import load_file
from torchdeck.checkpoints import ops
kind, a, b = sys.argv[1:4]
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
open("/proc/self/clear_refs", "w").write("5")  # reset the peak: imports are not the diff's
base = hwm()
t0 = time.perf_counter()
if kind == "torchdeck":
    report = ops.diff(a, b)
    worst = report["tensors"][0]["max_abs_diff"]
else:
    x, y = load_file(a + "/model.safetensors"), load_file(b + "/model.safetensors")
    worst = max((x[k] - y[k]).abs().max().item() for k in x)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "rss_growth": hwm() - base, "worst": worst}))
"""


def write_pair(tmp: Path, mb: int) -> tuple[Path, Path, int]:
    import torch
    from torchdeck.checkpoints import store

    per = (mb << 20) // 16 // 4
    gen = torch.Generator().manual_seed(0)
    state = {f"layers.{i}.weight": torch.randn(per, generator=gen) for i in range(16)}
    a = store.save(tmp, "a", weights=state, training_state={}, meta={"step": 1})
    for t in state.values():
        t[:: per // 7] += 0.5
    b = store.save(tmp, "b", weights=state, training_state={}, meta={"step": 2})
    return a, b, per * 4


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=1024, help="size of each checkpoint in MiB")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", help="where to write the checkpoints (default: a temporary directory)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    tmp = Path(args.dir or tempfile.mkdtemp(prefix="bench-diff-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        print(f"writing two {args.mb} MiB checkpoints in {tmp} ...", file=sys.stderr)
        a, b, largest = write_pair(tmp, args.mb)
        runs: dict[str, list[dict]] = {"torchdeck": [], "load both": []}
        for i in range(args.repeats):
            for kind in runs:
                out = subprocess.run([sys.executable, "-c", CHILD, kind, str(a), str(b)], check=True,
                                     capture_output=True, text=True).stdout
                runs[kind].append(json.loads(out))
                print(f"  {kind} #{i + 1}: {runs[kind][-1]}", file=sys.stderr)
    finally:
        if not args.dir:
            shutil.rmtree(tmp, ignore_errors=True)
    worst = {r["worst"] for rs in runs.values() for r in rs}
    assert len(worst) == 1, f"the two sides disagree on the largest difference: {worst}"
    rows = {kind: {"seconds": statistics.median(r["seconds"] for r in rs),
                   "rss_growth": statistics.median(r["rss_growth"] for r in rs)} for kind, rs in runs.items()}
    result = {"checkpoint_bytes": largest * 16, "largest_tensor": largest, "sides": rows,
              "diff_rss_over_largest_tensor": rows["torchdeck"]["rss_growth"] / largest,
              "rss_ratio": rows["torchdeck"]["rss_growth"] / rows["load both"]["rss_growth"],
              "time_ratio": rows["torchdeck"]["seconds"] / rows["load both"]["seconds"]}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    mib = 1 << 20
    print(f"two checkpoints of {largest * 16 / mib:,.0f} MiB, largest tensor {largest / mib:,.0f} MiB; "
          f"medians of {args.repeats}")
    print(f"{'':<12}{'seconds':>10}{'peak RSS growth':>18}")
    for kind, r in rows.items():
        print(f"{kind:<12}{r['seconds']:>10.2f}{r['rss_growth'] / mib:>14,.0f} MiB")
    print(f"diff memory / largest tensor: {result['diff_rss_over_largest_tensor']:.2f}x (target < 2x); "
          f"memory ratio to loading both {result['rss_ratio']:.3f}, time ratio {result['time_ratio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
