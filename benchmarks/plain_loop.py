"""The baseline for bench_train_throughput.py: the fastest honest plain PyTorch loop.

The same work as a `torchdeck train --model builtin:linear --no-checkpoints` run, with none of
torchdeck around it: nn.Linear(10, 20), the same synthetic:regression data (built by
torchdeck.data.sources.load, which is plain torch), the same seeds, batch size, SGD and MSE loss, a fresh
random permutation of the training set each epoch, and one validation pass per epoch (the
torchdeck loop does one too, inside the time it reports for the epoch).

What it leaves out on purpose, so it is the fastest honest loop and the comparison measures
torchdeck's overhead: no per-step `loss.item()`, no loss bookkeeping at all, no events, no
status files. One `.item()` per epoch reads the last batch's loss (for the parity check below).

With the same seed it does bit-for-bit the same arithmetic as torchdeck's Trainer (same model
initialisation, same data, same permutation generator), so its last loss equals the
`last_loss` that `torchdeck train --json` reports; the benchmark checks that.

Run as a script it prints steps/s (or one JSON document with --json):

    .venv/bin/python benchmarks/plain_loop.py --epochs 7 --dataset-size 49152 --batch-size 16 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere: find this checkout's engine/
    sys.path.insert(0, str(REPO))


def train(*, epochs: int, dataset_size: int, batch_size: int = 16, lr: float = 0.01, seed: int = 0,
          validate: bool = True, threads: int = 0) -> dict[str, Any]:
    """Train nn.Linear(10, 20) on synthetic:regression; return steps, per-epoch seconds, steps/s.

    Only the epochs are timed (permutation, steps, validation), the same span torchdeck's
    `epoch` event reports in `seconds`; imports, model and data set-up are not.
    """
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from torchdeck.data.sources import load

    if threads:
        torch.set_num_threads(threads)  # torchdeck's Trainer sets its count the same way
    # The same order of seeding and construction as torchdeck.training.loop.Trainer.__init__.
    torch.manual_seed(seed)
    random.seed(seed)
    model = nn.Linear(10, 20)
    data = load("synthetic:regression", size=dataset_size, seed=seed)
    x_all, y_all, x_val, y_val = data.x_train, data.y_train, data.x_val, data.y_val
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    order_gen = torch.Generator().manual_seed(seed)
    n = len(x_all)
    steps_per_epoch = math.ceil(n / batch_size)

    epoch_seconds: list[float] = []
    last_loss = val_loss = None
    started = time.time()  # wall clock, like the `time` of torchdeck's `started` record
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=order_gen)
        model.train()
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss = F.mse_loss(model(x_all[idx]), y_all[idx])
            loss.backward()
            opt.step()
        last_loss = loss.item()  # one sync per epoch, not per step
        if validate:
            model.eval()
            with torch.no_grad():
                val_loss = F.mse_loss(model(x_val), y_val).item()
        epoch_seconds.append(time.perf_counter() - t0)

    steps = steps_per_epoch * epochs
    seconds = sum(epoch_seconds)
    return {
        "steps": steps,
        "steps_per_epoch": steps_per_epoch,
        "epoch_seconds": epoch_seconds,
        "train_seconds": seconds,
        "steps_per_s": steps / seconds if seconds > 0 else float("nan"),
        "last_loss": last_loss,
        "val_loss": val_loss,
        "started_time": started,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def train_dataloader(*, epochs: int, batch_size: int = 64, lr: float = 0.01, seed: int = 0, threads: int = 0,
                     num_workers: int | None = None) -> dict[str, Any]:
    """The DataLoader case: benchmarks/bench_data.py's Images through a torch DataLoader with the
    settings torchdeck's DataLoader path uses (the same workers, a fresh seeded permutation each
    epoch, pinned memory on CUDA only, workers seeded once each), model bench_data.model, SGD and
    cross-entropy, one validation pass per epoch. What torchdeck adds (per-item seeding in the
    workers, loss chunks, events) is what the ratio measures."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, Subset

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_data
    from torchdeck.training.batches import default_workers

    if threads:
        torch.set_num_threads(threads)
    workers = default_workers() if num_workers is None else num_workers
    torch.manual_seed(seed)
    random.seed(seed)
    model = bench_data.model()
    ds = bench_data.images()
    n = len(ds)
    n_val = int(n * 0.1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0x5EED + seed)).tolist()
    train_ds, val_ds = Subset(ds, perm[n_val:]), Subset(ds, perm[:n_val])
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(train_ds) / batch_size)

    def init(worker_id):
        torch.manual_seed(seed * 1000 + worker_id)
        torch.set_num_threads(1)

    epoch_seconds: list[float] = []
    last_loss = val_loss = None
    started = time.time()
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        order = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()
        loader = DataLoader(train_ds, batch_size=batch_size, sampler=order, num_workers=workers,
                            worker_init_fn=init if workers else None, prefetch_factor=4 if workers else None)
        model.train()
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        last_loss = loss.item()
        model.eval()
        total, count = torch.zeros(()), 0
        with torch.no_grad():
            for x, y in DataLoader(val_ds, batch_size=batch_size, num_workers=workers,
                                   worker_init_fn=init if workers else None, prefetch_factor=4 if workers else None):
                total += F.cross_entropy(model(x), y) * len(y)
                count += len(y)
        val_loss = (total / count).item()
        epoch_seconds.append(time.perf_counter() - t0)
    steps = steps_per_epoch * epochs
    seconds = sum(epoch_seconds)
    return {"steps": steps, "steps_per_epoch": steps_per_epoch, "epoch_seconds": epoch_seconds,
            "train_seconds": seconds, "steps_per_s": steps / seconds, "last_loss": last_loss, "val_loss": val_loss,
            "started_time": started, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "num_workers": workers}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=7)
    p.add_argument("--dataset-size", type=int, default=49152)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, metavar="N",
                   help="torch CPU threads (default 0: torch's own default, all cores)")
    p.add_argument("--no-validate", action="store_true", help="skip the per-epoch validation pass")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--dataloader", action="store_true",
                   help="the DataLoader case: bench_data.py's images through a DataLoader (train_dataloader)")
    a = p.parse_args(argv)
    if a.dataloader:
        r = train_dataloader(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, seed=a.seed, threads=a.threads)
        print(json.dumps(r) if a.json else f"plain DataLoader loop: {r['steps_per_s']:,.1f} steps/s")
        return 0
    r = train(epochs=a.epochs, dataset_size=a.dataset_size, batch_size=a.batch_size, lr=a.lr, seed=a.seed,
              validate=not a.no_validate, threads=a.threads)
    if a.json:
        print(json.dumps(r))
    else:
        print(f"plain loop: {r['steps']} steps in {r['train_seconds']:.3f} s of epochs = "
              f"{r['steps_per_s']:,.0f} steps/s (last loss {r['last_loss']:.6g}, {r['threads']} torch threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
