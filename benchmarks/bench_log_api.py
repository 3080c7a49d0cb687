"""The logging API's cost in a plain loop: nn.Linear(10, 20) at batch 10 (SGD, MSE, random data
made here), steps/s without logging against the same loop with `run.log({"loss": loss})` every
step (torchdeck.init into a temporary workspace), and, when installed, the same loop with
`SummaryWriter.add_scalar("loss", loss, step)` (torch.utils.tensorboard). Modes interleaved in
each repeat; the ratio of each repeat to its own plain run, median over the repeats (target for
torchdeck >= 0.97). Each run is also timed in blocks of 500 steps: the ratio of the fastest
blocks is the figure least moved by a busy neighbour. One torch thread (a 2-core machine shared with others), one process. The
CPU pressure (PSI some, /proc/pressure/cpu) during each mode is recorded: a share of time spent
waiting for a CPU above ~15 % makes the figures noise.

--blocks N: instead, one loop in which the modes take turns every 250 steps (N rounds, the order
reversed each round), with a run open throughout, and each mode's median time a step: modes that
take turns this often meet the same neighbours, so differences of 1 us a step show. Its modes add
`item` (the loop reading its loss with `loss.item()` into a list: what reading a CPU tensor at
once costs by itself) and `bare` (the least any log() written in Python can do: one method call
that walks the dict and appends each CPU tensor's `.item()`, nothing written).

    .venv/bin/python benchmarks/bench_log_api.py [--steps 8000] [--repeats 5] [--json]
    .venv/bin/python benchmarks/bench_log_api.py --blocks 300
    .venv/bin/python benchmarks/bench_log_api.py --blocks 100 --processes 7

--processes K (with --blocks): K fresh processes one after another, each mode's ratio the median
over them: one process's figures move by several us a step from the next one's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time


def pressure_total() -> int | None:
    """Microseconds some task waited for a CPU, since boot (None without PSI)."""
    try:
        with open("/proc/pressure/cpu") as f:
            for line in f:
                if line.startswith("some"):
                    return int(line.split("total=")[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


BLOCK = 500  # steps a timed block: the fastest block of a run is its figure least touched by neighbours


def loop(steps: int, run=None, tb=None) -> tuple[float, float]:
    """(steps/s over the whole run, steps/s of its fastest block of BLOCK steps) of `steps` SGD
    steps of Linear(10, 20) at batch 10, each step's loss logged by `run.log` or `tb.add_scalar`
    when given (called inline, as a script would)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Linear(10, 20)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.MSELoss()
    x = torch.randn(1000, 10, 10)
    y = torch.randn(1000, 10, 20)
    for i in range(200):  # warm-up
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x[i]), y[i]).backward()
        opt.step()
    t0 = t_block = time.perf_counter()
    best = float("inf")
    for step in range(1, steps + 1):
        i = step % 1000
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[i]), y[i])
        loss.backward()
        opt.step()
        if run is not None:
            run.log({"loss": loss})
        elif tb is not None:
            tb.add_scalar("loss", loss, step)
        if step % BLOCK == 0:
            now = time.perf_counter()
            best, t_block = min(best, now - t_block), now
    return steps / (time.perf_counter() - t0), BLOCK / best


class Bare:
    """The floor of a Python `run.log`: the call, the walk of the dict, the read; no checks, no
    steps, nothing ever written."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def log(self, values: dict) -> None:
        for value in values.values():
            self.values.append(value.item())


def blocks(rounds: int, as_json: bool = False) -> int:
    """The modes taking turns every BLOCK_TURN steps in one loop; median microseconds a step."""
    import torch
    import torchdeck
    from torch import nn

    torch.set_num_threads(1)
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        SummaryWriter = None
    torch.manual_seed(0)
    model = nn.Linear(10, 20)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.MSELoss()
    x = torch.randn(1000, 10, 10)
    y = torch.randn(1000, 10, 20)
    tmp = tempfile.TemporaryDirectory(prefix="bench-log-api-")
    run = torchdeck.init(name="bench-blocks", workspace=tmp.name)
    read: list[float] = []
    tb = SummaryWriter(log_dir=f"{tmp.name}/tb") if SummaryWriter is not None else None
    bare = Bare()
    modes = ["plain", "item", "bare", "torchdeck"] + (["tensorboard"] if tb is not None else [])
    per_step: dict[str, list[float]] = {m: [] for m in modes}
    step = 0
    p0, t0 = pressure_total(), time.monotonic()
    for r in range(rounds):
        for mode in (modes if r % 2 == 0 else modes[::-1]):
            start = time.perf_counter()
            for _ in range(BLOCK_TURN):
                step += 1
                i = step % 1000
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(x[i]), y[i])
                loss.backward()
                opt.step()
                if mode == "torchdeck":
                    run.log({"loss": loss})
                elif mode == "item":
                    read.append(loss.item())
                elif mode == "bare":
                    bare.log({"loss": loss})
                elif mode == "tensorboard":
                    tb.add_scalar("loss", loss, step)
            per_step[mode].append((time.perf_counter() - start) / BLOCK_TURN * 1e6)
        del read[:], bare.values[:]
    p1, t1 = pressure_total(), time.monotonic()
    run.finish()
    if tb is not None:
        tb.close()
    tmp.cleanup()
    medians = {mode: statistics.median(per_step[mode]) for mode in modes}
    wait = (p1 - p0) / 1e6 / (t1 - t0) if p0 is not None and p1 is not None else None
    if as_json:
        print(json.dumps({"us_per_step": medians, "cpu_wait": wait}))
        return 0
    base = medians["plain"]
    print(f"Linear(10, 20), batch 10, {rounds} rounds of {BLOCK_TURN} steps a mode, taking turns, 1 torch thread")
    print(f"{'mode':<12} {'us/step':>8} {'added':>7} {'ratio':>7}")
    for mode, m in medians.items():
        print(f"{mode:<12} {m:>8.2f} {m - base:>+7.2f} {base / m:>7.3f}")
    if wait is not None:
        print(f"cpu wait {wait:.0%}")
    return 0


BLOCK_TURN = 250  # steps each mode runs before the next takes its turn (--blocks)


def blocks_in_processes(rounds: int, processes: int) -> int:
    """--blocks in `processes` fresh processes, one after another: the same code's figures move by
    several us a step from one process to the next (where its objects and code landed), more
    than within one; the median over processes of each mode's ratio to its own plain loop."""
    import subprocess

    results = []
    for k in range(processes):
        out = subprocess.run([sys.executable, __file__, "--blocks", str(rounds), "--json"], capture_output=True,
                             text=True, check=True).stdout
        doc = json.loads(out.strip().splitlines()[-1])
        results.append(doc)
        us = doc["us_per_step"]
        print(f"process {k + 1}/{processes}: " + "  ".join(
            f"{m} {us[m] - us['plain']:+.2f}" for m in us if m != "plain") + f"  (plain {us['plain']:.1f} us/step)",
            file=sys.stderr, flush=True)
    modes = list(results[0]["us_per_step"])
    print(f"Linear(10, 20), batch 10, {processes} processes x {rounds} rounds of {BLOCK_TURN} steps a mode, "
          "taking turns, 1 torch thread")
    print(f"{'mode':<12} {'added us':>9} {'ratio':>7} {'min':>7} {'max':>7}")
    for mode in modes:
        ratios = [d["us_per_step"]["plain"] / d["us_per_step"][mode] for d in results]
        added = statistics.median(d["us_per_step"][mode] - d["us_per_step"]["plain"] for d in results)
        print(f"{mode:<12} {added:>+9.2f} {statistics.median(ratios):>7.3f} {min(ratios):>7.3f} {max(ratios):>7.3f}")
    waits = [d["cpu_wait"] for d in results if d["cpu_wait"] is not None]
    if waits:
        print(f"cpu wait {min(waits):.0%}-{max(waits):.0%}")
    return 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--blocks", type=int, default=0, metavar="ROUNDS",
                    help="modes taking turns every 250 steps in one loop, ROUNDS rounds (see above)")
    ap.add_argument("--processes", type=int, default=1, metavar="K",
                    help="with --blocks: K fresh processes one after another, the median of their ratios (see above)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.blocks and args.processes > 1:
        return blocks_in_processes(args.blocks, args.processes)
    if args.blocks:
        return blocks(args.blocks, as_json=args.json)

    import torch

    torch.set_num_threads(1)
    import torchdeck

    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: its column is left out
        SummaryWriter = None

    tmp = tempfile.TemporaryDirectory(prefix="bench-log-api-")
    modes = ["plain", "torchdeck"] + (["tensorboard"] if SummaryWriter is not None else [])
    rates: dict[str, list[float]] = {m: [] for m in modes}
    bests: dict[str, list[float]] = {m: [] for m in modes}
    waits: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(args.repeats):
        order = modes if r % 2 == 0 else list(reversed(modes))
        for mode in order:
            run = tb = finish = None
            if mode == "torchdeck":
                run = torchdeck.init(name=f"bench-{r}", workspace=tmp.name)
                finish = run.finish
            elif mode == "tensorboard":
                tb = SummaryWriter(log_dir=f"{tmp.name}/tb-{r}")
                finish = tb.close
            p0, t0 = pressure_total(), time.monotonic()
            rate, best = loop(args.steps, run=run, tb=tb)
            rates[mode].append(rate)
            bests[mode].append(best)
            if finish is not None:
                finish()
            p1, t1 = pressure_total(), time.monotonic()
            if p0 is not None and p1 is not None:
                waits[mode].append((p1 - p0) / 1e6 / (t1 - t0))
            print(f"repeat {r + 1}/{args.repeats} {mode}: {rates[mode][-1]:,.0f} steps/s", file=sys.stderr)
    tmp.cleanup()

    result = {"steps": args.steps, "repeats": args.repeats, "threads": 1, "modes": {}}
    for mode in modes:
        ratios = [a / b for a, b in zip(rates[mode], rates["plain"])]
        best_ratios = [a / b for a, b in zip(bests[mode], bests["plain"])]
        result["modes"][mode] = {
            "median_steps_per_s": round(statistics.median(rates[mode]), 1),
            "median_ratio": round(statistics.median(ratios), 4),
            "ratios": [round(x, 4) for x in ratios],
            "best_block_steps_per_s": round(max(bests[mode]), 1),
            "median_best_block_ratio": round(statistics.median(best_ratios), 4),
            "max_cpu_pressure": round(max(waits[mode]), 3) if waits[mode] else None,
        }
    result["torchdeck_target_met"] = result["modes"]["torchdeck"]["median_ratio"] >= 0.97
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"Linear(10, 20), batch 10, {args.steps:,} steps x {args.repeats} repeats, 1 torch thread")
    print(f"{'mode':<12} {'steps/s':>10} {'ratio':>7} {'min':>7} {'max':>7} {'best blk/s':>11} {'blk ratio':>10} "
          f"{'cpu wait':>9}")
    for mode, d in result["modes"].items():
        pr = d["max_cpu_pressure"]
        print(f"{mode:<12} {d['median_steps_per_s']:>10,.0f} {d['median_ratio']:>7.3f} {min(d['ratios']):>7.3f} "
              f"{max(d['ratios']):>7.3f} {d['best_block_steps_per_s']:>11,.0f} {d['median_best_block_ratio']:>10.3f} "
              f"{'-' if pr is None else f'{pr:.0%}':>9}")
    print("torchdeck target (>= 0.97):", "met" if result["torchdeck_target_met"] else "MISSED")
    if any(d["max_cpu_pressure"] and d["max_cpu_pressure"] > 0.15 for d in result["modes"].values()):
        print("warning: some run waited for a CPU more than 15 % of its time: the figures are noise")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
