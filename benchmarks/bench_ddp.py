"""Two Gloo ranks against one process on the same global batch, and where the time goes.

    .venv/bin/python benchmarks/bench_ddp.py [--steps 300] [--repeats 2] [--json]

1. Whole runs through the engine (RunStore.launch: the worker, or the supervisor + torchrun +
   two ranks), builtin:cnn on synthetic:image, global batch 64: one process with batch 64 and
   `cores - 1` threads against two ranks with batch 32 and `(cores - 1) / 2` threads each
   (at least one), interleaved. The rate is the training loop's own (its chunk records'
   clock, first chunk excluded): no start-up or teardown in it; the start-up is reported apart.
2. The breakdown, inside two ranks started by torchrun (this script with --rank-profile): a
   step with DDP, the same step under `no_sync()` (no gradient all-reduce), the chunk's one
   all_reduce of 100 losses; and in one process the full-batch step. The difference between
   the first two is the gradient all-reduce over Gloo; compute is the half-batch step itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODEL, DATA, GLOBAL_BATCH = "builtin:cnn", "synthetic:image", 64


def err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def cores() -> int:
    return len(os.sched_getaffinity(0))


# -- 1. whole runs ------------------------------------------------------------------------------

def whole_run(store, ws, nproc: int, steps: int) -> dict:
    from torchdeck.models import specs
    from torchdeck.options import FINAL_STATES
    from torchdeck.runs import events as ev
    from torchdeck.runs.config import RunConfig

    cfg = RunConfig(model=MODEL, data=DATA, dataset_size=4096, batch_size=GLOBAL_BATCH // nproc, epochs=1000,
                    max_steps=steps, optimizer="adam", seed=0, device="cpu", nproc=nproc,
                    checkpoint_every_epoch=False, checkpoint_on_stop=False, flush_interval=0.25)
    cfg.model_spec = specs.resolve(cfg.model, ws).to_json()
    t0 = time.monotonic()
    run = store.create(cfg)
    store.launch(run)
    first_step_at = None
    while run.observed_state() not in FINAL_STATES:
        if first_step_at is None and run.status().step > 0:
            first_step_at = time.monotonic() - t0
        time.sleep(0.05)
    total = time.monotonic() - t0
    assert run.status().state == "finished", run.log_path.read_text()
    recs = [e for e in ev.read_all(run.events_path) if isinstance(e, ev.Losses) and e.elapsed is not None]
    rate = (recs[-1].last_step - recs[0].last_step) / (recs[-1].elapsed - recs[0].elapsed)
    return {"nproc": nproc, "steps_per_s": rate, "samples_per_s": rate * GLOBAL_BATCH,
            "to_first_step_s": first_step_at, "wall_s": total}


# -- 2. the breakdown ---------------------------------------------------------------------------

def timed(fn, n: int) -> float:
    fn()  # warm
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def step_fns(batch: int, threads: int):
    import torch
    import torch.nn.functional as F
    from torchdeck.models import specs

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = specs.build(specs.resolve(MODEL))
    x = torch.randn(batch, *specs.resolve(MODEL).input_shape)
    y = torch.randint(0, 10, (batch,))
    return model, x, y, F


def rank_profile(n: int) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torchdeck.training.distributed import rank_threads

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model, x, y, F = step_fns(GLOBAL_BATCH // world, rank_threads(world))
    ddp = DistributedDataParallel(model)
    opt = torch.optim.Adam(ddp.parameters())

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(ddp(x), y).backward()
        opt.step()

    def local_step():
        opt.zero_grad(set_to_none=True)
        with ddp.no_sync():
            F.cross_entropy(ddp(x), y).backward()
        opt.step()

    losses = torch.randn(103, dtype=torch.float64)
    t_ddp = timed(step, n)
    t_local = timed(local_step, n)
    t_chunk = timed(lambda: dist.all_reduce(losses), n)
    grads = sum(p.numel() for p in model.parameters())
    if rank == 0:
        print(json.dumps({"ddp_step_s": t_ddp, "no_sync_step_s": t_local, "chunk_all_reduce_s": t_chunk,
                          "gradient_floats": grads, "threads_per_rank": torch.get_num_threads()}), flush=True)
    dist.destroy_process_group()


def breakdown(n: int) -> dict:
    import torch
    from torchdeck.training.loop import cpu_threads

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          __file__, "--rank-profile", "--steps", str(n)], env=env, capture_output=True, text=True,
                         timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    ranks = json.loads(out.stdout.strip().splitlines()[-1])
    model, x, y, F = step_fns(GLOBAL_BATCH, cpu_threads())
    opt = torch.optim.Adam(model.parameters())

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return {**ranks, "single_step_s": timed(step, n), "single_threads": torch.get_num_threads()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rank-profile", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank_profile:
        rank_profile(max(10, args.steps // 5))
        return 0
    from torchdeck.runs.store import RunStore
    from torchdeck.workspace import Workspace

    ws = Workspace.open(Path(tempfile.mkdtemp(prefix="bench-ddp-")))
    store = RunStore(ws)
    runs = []
    for i in range(args.repeats):
        for nproc in (1, 2):
            err(f"repeat {i + 1}: nproc {nproc} ...")
            runs.append(whole_run(store, ws, nproc, args.steps))
    best = {n: max((r for r in runs if r["nproc"] == n), key=lambda r: r["samples_per_s"]) for n in (1, 2)}
    err("breakdown ...")
    b = breakdown(max(10, args.steps // 5))
    doc = {"cores": cores(), "global_batch": GLOBAL_BATCH, "runs": runs,
           "ratio_two_ranks_over_one": best[2]["samples_per_s"] / best[1]["samples_per_s"], "breakdown": b}
    if args.json:
        print(json.dumps(doc, indent=1))
        return 0
    print(f"{cores()} cores, {MODEL} on {DATA}, global batch {GLOBAL_BATCH}, {args.steps} steps a run")
    print(f"{'':24}{'samples/s':>12}{'to 1st step':>13}{'wall':>8}")
    for r in runs:
        print(f"{'one process' if r['nproc'] == 1 else 'two Gloo ranks':24}{r['samples_per_s']:12.0f}"
              f"{r['to_first_step_s']:12.1f}s{r['wall_s']:7.1f}s")
    print(f"ratio (two ranks / one process, best of each): {doc['ratio_two_ranks_over_one']:.2f}")
    grad = b["ddp_step_s"] - b["no_sync_step_s"]
    print(f"one step, ms: one process (batch {GLOBAL_BATCH}, {b['single_threads']} thread(s)) "
          f"{b['single_step_s'] * 1e3:.1f}; a rank (batch {GLOBAL_BATCH // 2}, {b['threads_per_rank']} thread(s)) "
          f"{b['ddp_step_s'] * 1e3:.1f} = compute {b['no_sync_step_s'] * 1e3:.1f} + gradient all-reduce "
          f"{grad * 1e3:.1f} ({b['gradient_floats']:,} floats); the chunk's all_reduce "
          f"{b['chunk_all_reduce_s'] * 1e3:.2f} ms once a chunk")
    return 0


if __name__ == "__main__":
    sys.exit(main())
