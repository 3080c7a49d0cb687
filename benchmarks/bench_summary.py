"""Model summary of a ~100M-parameter transformer: time and memory of `torchdeck.models.summary.summarize`
(meta device) against building the same model for real on the CPU.

The model is `make_wide_transformer` below (token embedding 8192 x 1024, 7 post-norm encoder
layers of d_model 1024, 16 heads, feed-forward 4096, a final LayerNorm and an untied output
projection: 104.9M parameters, 400 MiB of fp32), summarized through its spec
`bench_summary:make_wide_transformer` with this directory as import root, as a user's model is.

Each repeat starts three fresh processes, interleaved: a cold one (import torch, then one
`summarize`: it pays torch's one-off meta-kernel set-up), a summary process (import torch,
`summary.warm_up()`, then the first `summarize` and `--inner` more in the same process), and
the baseline (import torch, `specs.build` on the CPU: weights allocated and initialised). Each
reports its peak RSS (ru_maxrss) growth over the measured part.

    python benchmarks/bench_summary.py [--repeats 5] [--inner 5] [--batch-size 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
VOCAB, D_MODEL, LAYERS, HEADS, FFN, SEQ = 8192, 1024, 7, 16, 4096, 256


def make_wide_transformer(vocab: int = VOCAB, d_model: int = D_MODEL, layers: int = LAYERS, heads: int = HEADS,
                          ffn: int = FFN):
    import torch.nn as nn

    class WideTransformer(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, d_model)
            layer = nn.TransformerEncoderLayer(d_model, heads, ffn, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, vocab)

        def forward(self, ids):
            return self.head(self.norm(self.encoder(self.embed(ids))))

    return WideTransformer()


def spec():
    from torchdeck.models.specs import ModelSpec

    return ModelSpec(spec="bench_summary:make_wide_transformer", input_shape=(SEQ,), input_dtype="int64",
                     input_high=VOCAB)


def maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def child_cold(batch_size: int) -> dict:
    import torch  # noqa: F401
    from torchdeck.models import summary

    rss_a = maxrss_kib()
    t = time.perf_counter()
    s = summary.summarize(spec(), batch_size=batch_size, import_root=HERE)
    cold_s = time.perf_counter() - t
    return {"cold_s": cold_s, "cold_rss_growth_kib": maxrss_kib() - rss_a, "device_used": s.device_used}


def child_summary(inner: int, batch_size: int) -> dict:
    t = time.perf_counter()
    import torch  # noqa: F401

    import_s = time.perf_counter() - t
    from torchdeck.models import summary

    rss_a = maxrss_kib()
    t = time.perf_counter()
    summary.warm_up()
    warm_up_s = time.perf_counter() - t
    rss_b = maxrss_kib()
    t = time.perf_counter()
    s = summary.summarize(spec(), batch_size=batch_size, import_root=HERE)
    first_s = time.perf_counter() - t
    again = []
    for _ in range(inner):
        t = time.perf_counter()
        summary.summarize(spec(), batch_size=batch_size, import_root=HERE)
        again.append(time.perf_counter() - t)
    rss_c = maxrss_kib()
    return {
        "import_torch_s": import_s, "warm_up_s": warm_up_s, "first_s": first_s, "again_s": again,
        "warm_up_rss_growth_kib": rss_b - rss_a, "summary_rss_growth_kib": rss_c - rss_b,
        "device_used": s.device_used, "forward_error": s.forward_error, "params": s.params_total,
        "layers": len(s.layers), "output_shape": s.output_shape, "memory": s.memory.to_json(),
        "sizes": s.sizes["params"],
    }


def child_build() -> dict:
    import torch
    from torchdeck.models import specs

    rss_a = maxrss_kib()
    t = time.perf_counter()
    model = specs.build(spec(), import_root=HERE)
    build_s = time.perf_counter() - t
    rss_b = maxrss_kib()
    return {"build_s": build_s, "build_rss_growth_kib": rss_b - rss_a,
            "params": sum(p.numel() for p in model.parameters()),
            "device": next(model.parameters()).device.type, "torch_threads": torch.get_num_threads()}


def run_child(mode: str, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--inner", str(args.inner),
           "--batch-size", str(args.batch_size)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{mode} child failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def stats(xs: list[float]) -> dict:
    return {"median_s": round(statistics.median(xs), 4), "min_s": round(min(xs), 4), "max_s": round(max(xs), 4)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="fresh processes of each kind (interleaved)")
    ap.add_argument("--inner", type=int, default=5, help="more summaries in each summary process")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", choices=("summary", "build", "cold"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, str(REPO))
        work = {"summary": lambda: child_summary(args.inner, args.batch_size), "build": child_build,
                "cold": lambda: child_cold(args.batch_size)}[args.child]
        print(json.dumps(work()))
        return 0

    sums, builds, colds = [], [], []
    for i in range(args.repeats):  # interleaved: all see the same machine
        print(f"repeat {i + 1}/{args.repeats}", file=sys.stderr)
        colds.append(run_child("cold", args))
        sums.append(run_child("summary", args))
        builds.append(run_child("build", args))
    first = [s["first_s"] for s in sums]
    again = [x for s in sums for x in s["again_s"]]
    build = [b["build_s"] for b in builds]
    s0 = sums[0]
    result = {
        "model": {"params": s0["params"], "encoder_layers": LAYERS, "modules": s0["layers"],
                  "device_used": s0["device_used"], "forward_error": s0["forward_error"],
                  "output_shape": s0["output_shape"],
                  "sizes": s0["sizes"], "memory_estimate": s0["memory"]},
        "summary_cold": stats([c["cold_s"] for c in colds]),
        "summary_first": stats(first),
        "summary_again": stats(again),
        "warm_up": stats([s["warm_up_s"] for s in sums]),
        "import_torch": stats([s["import_torch_s"] for s in sums]),
        "build_cpu": stats(build),
        "ratio_build_over_summary_cold": round(statistics.median(build) / statistics.median(
            [c["cold_s"] for c in colds]), 2),
        "ratio_build_over_summary_first": round(statistics.median(build) / statistics.median(first), 1),
        "ratio_build_over_summary_again": round(statistics.median(build) / statistics.median(again), 1),
        "summary_rss_growth_mib_max": round(max(s["summary_rss_growth_kib"] for s in sums) / 1024, 1),
        "cold_rss_growth_mib_max": round(max(c["cold_rss_growth_kib"] for c in colds) / 1024, 1),
        "warm_up_rss_growth_mib_max": round(max(s["warm_up_rss_growth_kib"] for s in sums) / 1024, 1),
        "build_rss_growth_mib_min": round(min(b["build_rss_growth_kib"] for b in builds) / 1024, 1),
        "repeats": args.repeats, "inner": args.inner, "batch_size": args.batch_size,
        "torch_threads": builds[0]["torch_threads"],
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    m = result["model"]
    mem = m["memory_estimate"]
    mib = 2**20
    print(f"model: {m['params']:,} parameters ({m['sizes']['fp32'] / mib:.0f} MiB fp32), {m['modules']} modules, "
          f"summarized on {m['device_used']}, output {m['output_shape']}")
    print(f"{args.repeats} fresh processes of each, interleaved; "
          f"{args.inner} more summaries in each summary process")
    for label, key in (("summarize, cold (no warm_up)", "summary_cold"),
                       ("summarize, first after warm_up()", "summary_first"), ("summarize, again", "summary_again"),
                       ("build for real on CPU (baseline)", "build_cpu"), ("summary.warm_up() (one-off)", "warm_up"),
                       ("import torch (for scale)", "import_torch")):
        r = result[key]
        print(f"  {label:34s} median {r['median_s']:.4f} s  (min {r['min_s']:.4f}, max {r['max_s']:.4f})")
    print(f"  ratio build / summary: {result['ratio_build_over_summary_cold']}x (cold), "
          f"{result['ratio_build_over_summary_first']}x (first after warm_up), "
          f"{result['ratio_build_over_summary_again']}x (again)   (target: summary < 1 s, no weights allocated)")
    print(f"  peak RSS growth: summary {result['summary_rss_growth_mib_max']} MiB (max over processes), "
          f"cold summary {result['cold_rss_growth_mib_max']} MiB (torch's one-off imports included), "
          f"warm_up {result['warm_up_rss_growth_mib_max']} MiB, "
          f"real build {result['build_rss_growth_mib_min']} MiB (min)")
    print(f"  training estimate at batch {args.batch_size}, adam: weights {mem['weights'] / mib:.0f} MiB, gradients "
          f"{mem['gradients'] / mib:.0f} MiB, optimizer {mem['optimizer_state'] / mib:.0f} MiB, activations "
          f"{mem['activations'] / mib:.0f} MiB, total {mem['total'] / mib:.0f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
