"""The in-memory loop's overhead in one process: torchdeck's Trainer against a plain loop doing
the same steps (same model, data on the same device, same permutation generator, SGD), repeats
interleaved, median ratio of steps/s over the epochs. Two cases: an MLP 512-2048-2048-10 at
batch 256 (compute-bound: the loop's Python is invisible) and nn.Linear(10, 20) at batch 10
(the loop's own Python is most of a step); and `dataloader`: bench_data.py's generated images
through torchdeck's DataLoader path against plain_loop.train_dataloader (the same DataLoader
settings). In process, so start-up and process scheduling do
not enter; bench_train_throughput.py measures the whole `torchdeck train` command.

    .venv/bin/python benchmarks/bench_loop_overhead.py [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CASES = {
    # name: (layers, classes, samples, batch, epochs)
    "mlp": ([512, 2048, 2048, 10], True, 4608, 256, 1),
    "linear": ([10, 20], False, 20000, 10, 2),
}

DATA = '''
import torch
from torch.utils.data import TensorDataset
from torch import nn

def make(layers, classes, n):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, layers[0], generator=g)
    y = torch.randint(0, layers[-1], (n,), generator=g) if classes else torch.randn(n, layers[-1], generator=g)
    return TensorDataset(x, y)

def model(layers):
    mods = []
    for a, b in zip(layers, layers[1:]):
        mods += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*mods[:-1])
'''


class Hooks:
    def __init__(self):
        self.seconds = []

    def emit(self, e):
        if type(e).__name__ == "EpochEnd":
            self.seconds.append(e.seconds)

    def progress(self, **kw):
        pass

    def control(self):
        return None

    def stop_requested(self):
        return False


def torchdeck_dataloader(threads):
    """bench_data.py's images through torchdeck's DataLoader path (1 epoch, batch 64)."""
    from torchdeck.models import specs
    from torchdeck.runs.config import RunConfig
    from torchdeck.training.loop import Trainer

    here = str(Path(__file__).resolve().parent)
    cfg = RunConfig(model="bench_data:model", data="bench_data:images", batch_size=64, epochs=1, lr=0.01,
                    import_root=here, model_import_root=here, device="cpu", threads=threads,
                    checkpoint_every_epoch=False)
    cfg.model_spec = specs.resolve(cfg.model).to_json()
    hooks = Hooks()
    t = Trainer(cfg, hooks)
    t.run()
    return t.total_steps / sum(hooks.seconds)


def plain_dataloader(threads):
    """plain_loop.train_dataloader: the same DataLoader settings, no torchdeck."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import plain_loop

    return plain_loop.train_dataloader(epochs=1, batch_size=64, threads=threads)["steps_per_s"]


def torchdeck_side(case, root, threads):
    if case == "dataloader":
        return torchdeck_dataloader(threads)
    from torchdeck.models import specs
    from torchdeck.runs.config import RunConfig
    from torchdeck.training.loop import Trainer

    layers, classes, n, bs, epochs = CASES[case]
    cfg = RunConfig(model="benchdata:model", data=f"benchdata:{case}", batch_size=bs, epochs=epochs, lr=0.01,
                    import_root=root, model_import_root=root, device="cpu", threads=threads, val_fraction=0.1,
                    checkpoint_every_epoch=False)
    cfg.model_spec = specs.resolve(cfg.model, None, {"layers": layers}).to_json()
    hooks = Hooks()
    t = Trainer(cfg, hooks)
    t.run()
    return t.total_steps / sum(hooks.seconds)


def plain_side(case, root, threads):
    if case == "dataloader":
        return plain_dataloader(threads)
    import torch
    import torch.nn.functional as F

    sys.path.append(root)
    import benchdata

    layers, classes, n, bs, epochs = CASES[case]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = benchdata.model(layers)
    ds = benchdata.make(layers, classes, n)
    x, y = ds.tensors
    n_val = int(n * 0.1)
    perm0 = torch.randperm(n, generator=torch.Generator().manual_seed(0x5EED))
    xt, yt, xv, yv = x[perm0[n_val:]], y[perm0[n_val:]], x[perm0[:n_val]], y[perm0[:n_val]]
    loss_fn = F.cross_entropy if classes else F.mse_loss
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    m = len(xt)
    steps, seconds = 0, 0.0
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(m, generator=gen)
        model.train()
        for i in range(0, m, bs):
            idx = perm[i:i + bs]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            steps += 1
        loss.item()
        model.eval()
        with torch.no_grad():
            loss_fn(model(xv), yv).item()
        seconds += time.perf_counter() - t0
    return steps / seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cases", default="mlp,linear,dataloader")
    a = p.parse_args(argv)
    root = tempfile.mkdtemp(prefix="bench-loop-")
    Path(root, "benchdata.py").write_text(DATA + "".join(
        f"\ndef {c}():\n    return make({CASES[c][0]!r}, {CASES[c][1]!r}, {CASES[c][2]!r})\n" for c in CASES))
    for case in a.cases.split(","):
        td, pl = [], []
        for _ in range(a.repeats):
            td.append(torchdeck_side(case, root, a.threads))
            pl.append(plain_side(case, root, a.threads))
        ratios = [t / q for t, q in zip(td, pl)]
        print(f"{case:7} torchdeck {statistics.median(td):9,.1f} steps/s ({min(td):,.1f}-{max(td):,.1f})  "
              f"plain {statistics.median(pl):9,.1f} ({min(pl):,.1f}-{max(pl):,.1f})  "
              f"ratio of medians {statistics.median(td) / statistics.median(pl):.3f} "
              f"(pairwise {min(ratios):.3f}-{max(ratios):.3f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
