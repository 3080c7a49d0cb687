"""Loading a torchdeck checkpoint into a model against `torch.load` of the same weights.

The model is the built-in MLP (in 512, hidden 2048, depth 4, 10 classes: about 13.6M parameters,
52 MiB of fp32). Its weights are saved once as a torchdeck checkpoint (`checkpoints.save`) and
once as a plain `torch.save` file of the same state dict. Each repeat, interleaved, times into
one already-built model:

  torchdeck   `checkpoints.load_weights(dir)` (meta.json and sizes checked, safetensors read)
              + `model.load_state_dict`
  torch.load  `torch.load(file, weights_only=True)` + `model.load_state_dict`

and reports the medians and the ratio torchdeck / torch.load (below 1: torchdeck is faster).
The full sha256 check (`ops.check_hashes`, what export runs first) is timed on its own.

    python benchmarks/bench_ckpt_load.py [--repeats 15] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch
    from torchdeck.checkpoints import ops
    from torchdeck.checkpoints import store as checkpoints
    from torchdeck.models import specs

    spec = specs.resolve("builtin:mlp", None, {"in_features": 512, "hidden": 2048, "depth": 4, "num_classes": 10})
    model = specs.build(spec)
    weights = checkpoints.host_copy(model.state_dict())
    n_params = sum(v.numel() for v in weights.values())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt = checkpoints.save(root / "ckpts", "step-1", weights=weights, training_state={"step": 1},
                                meta={"step": 1, "model_spec": spec.to_json()})
        pt = root / "weights.pt"
        torch.save(weights, pt)

        def torchdeck_load():
            model.load_state_dict(checkpoints.load_weights(ckpt))

        def torch_load():
            model.load_state_dict(torch.load(pt, weights_only=True))

        def hashes():
            ops.check_hashes(ckpt)

        times: dict[str, list[float]] = {"torchdeck": [], "torch_load": [], "sha256_check": []}
        for fn in (torchdeck_load, torch_load):  # warm the page cache and the code paths
            fn()
        for _ in range(args.repeats):
            for name, fn in (("torchdeck", torchdeck_load), ("torch_load", torch_load), ("sha256_check", hashes)):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"params": n_params, "repeats": args.repeats, "median_s": med,
              "ratio_torchdeck_over_torch_load": med["torchdeck"] / med["torch_load"]}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{n_params:,} parameters, {args.repeats} repeats, medians:")
        print(f"  torchdeck load_weights + load_state_dict  {med['torchdeck'] * 1000:8.1f} ms")
        print(f"  torch.load + load_state_dict              {med['torch_load'] * 1000:8.1f} ms")
        print(f"  ratio torchdeck / torch.load              {result['ratio_torchdeck_over_torch_load']:8.2f}")
        print(f"  sha256 check of the checkpoint (export)   {med['sha256_check'] * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
