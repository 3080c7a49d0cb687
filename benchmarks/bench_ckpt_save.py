"""Saving a checkpoint of a ~1 GB training state (weights + Adam's two moments) in the background.

The state is an MLP of 8 Linear(3328, 3328) layers (88.6M parameters, 354 MB of fp32 weights) after
one Adam step: weights + exp_avg + exp_avg_sq, about 1.06 GB. Each repeat, interleaved:

  (a) the training pause
      pause      `CheckpointWriter.save(...)` until it returns (the loop's only wait; the previous
                 save is complete, so it is the copy to host memory and the handover)
      copy       copying the same weights + optimizer state to host memory, nothing else
                 (`clone` of every tensor): the floor. Target: pause <= 1.2x copy.
      and what the background thread then spent: write, sha256 (overlapping the write), fsync.
  (b) a crash-safe save against a plain one, of the same host tensors
      torchdeck  `CheckpointWriter.write_now`: safetensors + training_state.pt written and hashed
                 while writing, each fsynced, meta.json, rename, fsync of the parent
      torch.save `torch.save({weights, optimizer}, file)` then fsync of the file.
                 Target: torchdeck <= 1.2x torch.save + fsync.

Medians and the two ratios (in one run). The disk and the page cache are shared with whatever
else the machine does: run it on an idle machine, and read the spread.

    python benchmarks/bench_ckpt_save.py [--repeats 5] [--dir DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--width", type=int, default=3328)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--dir", help="where to write (default: a temporary directory under the system's)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch
    from torchdeck.checkpoints import writer as ckw

    torch.manual_seed(0)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    model = torch.nn.Sequential(*[torch.nn.Linear(args.width, args.width) for _ in range(args.layers)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model(torch.randn(2, args.width)).sum().backward()
    opt.step()
    model.zero_grad(set_to_none=True)
    n_params = sum(p.numel() for p in model.parameters())

    def training_state():
        return {"optimizer": opt.state_dict(), "rng": {"torch": torch.get_rng_state()}, "loop": {"step": 1}}

    state_bytes = ckw.tensor_bytes(model.state_dict()) + ckw.tensor_bytes(training_state())
    base = Path(tempfile.mkdtemp(prefix="bench-ckpt-save-", dir=args.dir))
    times: dict[str, list[float]] = {k: [] for k in (
        "copy", "pause", "bg_write", "bg_hash", "bg_fsync", "bg_total", "torchdeck_save", "td_write", "td_hash",
        "td_fsync", "torch_save_fsync", "torch_save_write", "torch_save_fsync_only")}

    def copy_only():
        t = time.perf_counter()
        w = {k: v.detach().clone() for k, v in model.state_dict().items()}
        s = ckw.host_copy_tree(training_state())
        dt = time.perf_counter() - t
        del w, s
        return dt

    def background_save(i):
        results = []
        w = ckw.CheckpointWriter(base / "bg", keep_last=1, on_saved=results.append)
        t = time.perf_counter()
        w.save(f"step-{i}", weights=model.state_dict(), training_state=training_state(), meta={"step": i})
        pause = time.perf_counter() - t
        w.close()
        r = results[0]
        return pause, r

    host_w = {k: v.detach().clone() for k, v in model.state_dict().items()}
    host_s = ckw.host_copy_tree(training_state())

    def torchdeck_save(i):
        root = base / "td"
        w = ckw.CheckpointWriter(root, keep_last=None)
        t = time.perf_counter()
        r = w.write_now(f"step-{i}", weights=host_w, training_state=host_s, meta={"step": i})
        dt = time.perf_counter() - t
        shutil.rmtree(root)
        return dt, r

    def torch_save(i):
        path = base / f"plain-{i}.pt"
        t = time.perf_counter()
        with open(path, "wb") as f:
            torch.save({"weights": host_w, "training_state": host_s}, f)
            f.flush()
            t_write = time.perf_counter()
            os.fsync(f.fileno())
        dt = time.perf_counter() - t
        path.unlink()
        return dt, t_write - t, dt - (t_write - t)

    try:
        copy_only(), background_save(-1), torchdeck_save(-1), torch_save(-1)  # warm up
        shutil.rmtree(base / "bg", ignore_errors=True)
        for i in range(args.repeats):
            times["copy"].append(copy_only())
            pause, r = background_save(i)
            times["pause"].append(pause)
            times["bg_write"].append(r.write_s)
            times["bg_hash"].append(r.hash_s)
            times["bg_fsync"].append(r.fsync_s)
            times["bg_total"].append(r.total_s)
            # alternate which of the two goes first, so neither always meets the other's writeback
            order = (("td", torchdeck_save), ("ts", torch_save)) if i % 2 == 0 else (("ts", torch_save), ("td", torchdeck_save))
            for kind, fn in order:
                if kind == "td":
                    dt, r = fn(i)
                    times["torchdeck_save"].append(dt)
                    times["td_write"].append(r.write_s)
                    times["td_hash"].append(r.hash_s)
                    times["td_fsync"].append(r.fsync_s)
                else:
                    dt, wr, fs = fn(i)
                    times["torch_save_fsync"].append(dt)
                    times["torch_save_write"].append(wr)
                    times["torch_save_fsync_only"].append(fs)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items() if v}
    spread = {k: [round(min(v), 4), round(max(v), 4)] for k, v in times.items() if v}
    result = {
        "params": n_params, "state_bytes": state_bytes, "repeats": args.repeats, "median_s": med, "range_s": spread,
        "ratio_pause_over_copy": med["pause"] / med["copy"],
        "ratio_torchdeck_over_torch_save_fsync": med["torchdeck_save"] / med["torch_save_fsync"],
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return
    gb = state_bytes / 1e9
    print(f"{n_params:,} parameters, state {gb:.2f} GB (weights + Adam), {args.repeats} repeats, medians:")
    print("(a) the training pause per checkpoint")
    print(f"  save() returns after                      {med['pause'] * 1000:8.1f} ms")
    print(f"  copy of weights + optimizer state alone   {med['copy'] * 1000:8.1f} ms")
    print(f"  ratio pause / copy                        {result['ratio_pause_over_copy']:8.2f}   (target <= 1.2)")
    print(f"  in the background: write {med['bg_write']:.2f} s, sha256 {med['bg_hash']:.2f} s (overlapping the write), "
          f"fsync {med['bg_fsync']:.2f} s; all {med['bg_total']:.2f} s")
    print("(b) a crash-safe save of the same host tensors")
    print(f"  torchdeck (write+hash+fsync+rename)       {med['torchdeck_save'] * 1000:8.1f} ms"
          f"   write {med['td_write']:.2f} s, sha256 {med['td_hash']:.2f} s, fsync {med['td_fsync']:.2f} s")
    print(f"  torch.save + fsync                        {med['torch_save_fsync'] * 1000:8.1f} ms"
          f"   write {med['torch_save_write']:.2f} s, fsync {med['torch_save_fsync_only']:.2f} s")
    print(f"  ratio torchdeck / torch.save+fsync        {result['ratio_torchdeck_over_torch_save_fsync']:8.2f}"
          "   (target <= 1.2)")


if __name__ == "__main__":
    main()
