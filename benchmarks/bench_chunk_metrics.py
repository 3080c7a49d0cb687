"""What the per-chunk system metrics (samples_per_s, rss_mb; on CUDA three allocator counters)
cost the training loop: the time to gather them and to write their records through a real
RunWriter, per chunk, against the chunk's length (flush_interval, 0.15 s by default). A direct
figure, steady on a busy machine where bench_loop_overhead.py's ratios move by +-20%.

    .venv/bin/python benchmarks/bench_chunk_metrics.py [--chunks 20000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from torchdeck.runs import events as ev
from torchdeck.runs.config import RunConfig
from torchdeck.runs.store import RunStore
from torchdeck.runs.writer import RunWriter
from torchdeck.training.loop import Trainer
from torchdeck.workspace import Workspace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_loop_overhead import Hooks  # noqa: E402  (the loop's hooks that only keep epoch times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chunks", type=int, default=20000)
    args = p.parse_args()
    cfg = RunConfig(model="builtin:linear", epochs=1, dataset_size=2048, batch_size=16, device="cpu", threads=1)
    trainer = Trainer(cfg, Hooks(), run_id="b", checkpoints_dir=None)
    trainer._batch_in_epoch = 100
    with tempfile.TemporaryDirectory() as tmp:
        run = RunStore(Workspace.open(Path(tmp) / "ws")).create(cfg)
        writer = RunWriter(run)
        rounds = []
        for _ in range(5):
            t0 = time.perf_counter()
            for i in range(args.chunks):
                for name, value in trainer._system_metrics(100, time.monotonic()):
                    writer.emit(ev.Scalars.from_points(name, [i + 1], [value]))
            rounds.append((time.perf_counter() - t0) / args.chunks)
        writer.ended("finished", args.chunks, None)
    per_chunk = statistics.median(rounds)
    share = per_chunk / cfg.flush_interval
    print(f"per chunk: {per_chunk * 1e6:.1f} us (rounds {', '.join(f'{r * 1e6:.1f}' for r in rounds)}); "
          f"against a {cfg.flush_interval:g} s chunk: {share:.4%} of training time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
