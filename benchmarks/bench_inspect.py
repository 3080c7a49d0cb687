"""How much of a large checkpoint `inspect` reads: a ~1 GB .safetensors file (header only) and a
~1 GB zip .pt file (memory-mapped: the pickle is read, the tensors are not), against reading the
whole file. Bytes read are /proc/self/io `rchar` (every read() of this process); tensors touched
through a mapping show as page faults (getrusage minor + major), so both are reported.

    .venv/bin/python benchmarks/bench_inspect.py [--mb 1024] [--dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path


def rchar() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def faults() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt + r.ru_majflt


def measure(fn) -> dict:
    r0, f0, t0 = rchar(), faults(), time.perf_counter()
    out = fn()
    return {"bytes_read": rchar() - r0, "page_faults": faults() - f0, "seconds": time.perf_counter() - t0,
            "result": out}


def read_all(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            n += len(chunk)
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=1024, help="size of each test file in MiB")
    ap.add_argument("--dir", help="where to write the test files (default: a temporary directory)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch
    from safetensors.torch import save_file
    from torchdeck.checkpoints import formats

    tmp = Path(args.dir or tempfile.mkdtemp(prefix="bench-inspect-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        # 64 tensors of equal size, float32: about args.mb MiB in all.
        per = (args.mb << 20) // 64 // 4
        state = {f"layers.{i}.weight": torch.full((per,), float(i)) for i in range(64)}
        st, pt = tmp / "big.safetensors", tmp / "big.pt"
        print(f"writing {args.mb} MiB twice in {tmp} ...", file=sys.stderr)
        save_file(state, str(st))
        torch.save(state, pt)
        del state
        formats.inspect(tmp / "big.safetensors")  # warm the imports, not the measured reads
        rows = []
        for path in (st, pt):
            size = path.stat().st_size
            ins = measure(lambda: formats.inspect(path))
            full = measure(lambda: read_all(path))
            info = ins.pop("result")
            full.pop("result")
            assert info.num_params == per * 64, info.num_params
            rows.append({"file": path.name, "format": info.format, "size": size,
                         "inspect_bytes_read": ins["bytes_read"], "inspect_page_faults": ins["page_faults"],
                         "inspect_seconds": round(ins["seconds"], 4),
                         "full_read_bytes": full["bytes_read"], "full_read_seconds": round(full["seconds"], 3),
                         "ratio_bytes": ins["bytes_read"] / full["bytes_read"],
                         "ratio_seconds": ins["seconds"] / full["seconds"]})
    finally:
        if not args.dir:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'file':<18}{'size':>14}{'inspect read':>14}{'faults':>8}{'inspect s':>11}{'full read s':>13}"
          f"{'bytes ratio':>13}{'time ratio':>12}")
    for r in rows:
        print(f"{r['file']:<18}{r['size']:>14,}{r['inspect_bytes_read']:>14,}{r['inspect_page_faults']:>8}"
              f"{r['inspect_seconds']:>11.4f}{r['full_read_seconds']:>13.3f}{r['ratio_bytes']:>13.2e}"
              f"{r['ratio_seconds']:>12.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
