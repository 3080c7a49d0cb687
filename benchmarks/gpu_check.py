"""The one prepared check for a machine with an NVIDIA GPU (issue 14 item 5), under 5 minutes.

    python3 benchmarks/gpu_check.py            # on the GPU machine, from the repository root
    python3 benchmarks/gpu_check.py --cpu      # a dry run of the same plumbing on a CPU-only machine

It runs the engine from this checkout without installing it (a `torchdeck` link to engine/ in a
temporary folder on PYTHONPATH, for this process and every worker, supervisor and rank it
starts), so the machine needs torch (CUDA), safetensors, numpy and nvidia-ml-py; Textual is not
needed. tomli-w (pure Python, imported by the workspace) must be carried where it is missing:

    # here, once (the wheel folder ignored by git):
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl tomli-w
    # there, before the check (carry .whl):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --json $OUT/gpu_check.json

Checks, each timed, each PASS/FAIL with why; a summary at the end (and --json to a file):
  1. the GPUs as torchdeck sees them: NVML (nvidia-ml-py) and torch.cuda, PCI bus order;
  2. a built-in model trained on cuda with bf16 AMP, then fp16 AMP (GradScaler): finished, loss
     falls, the run's memory figures (allocated, reserved, peak) recorded;
  3. DDP with nproc 1 through torchrun (supervisor, NCCL) on the same run as a single process:
     both finish, their steps/s ratio (target >= 0.97);
  4. CUDA out of memory from the real allocator (the step caps this process's share of the GPU
     with torch.cuda.set_per_process_memory_fraction, then the batch does not fit): the run ends
     "failed" naming the batch size and the memory asked for, keeps its last checkpoint,
     suggests a batch size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
results: list[dict] = []


def say(line: str) -> None:
    print(line, flush=True)


def check(name: str):
    def wrap(fn):
        def run(*a, **kw):
            t0 = time.monotonic()
            try:
                detail = fn(*a, **kw) or ""
                ok = True
            except Exception as e:  # noqa: BLE001  (every check reports; the next one runs)
                import traceback

                traceback.print_exc()
                detail, ok = f"{type(e).__name__}: {e}", False
            took = time.monotonic() - t0
            results.append({"check": name, "ok": ok, "seconds": round(took, 1), "detail": detail})
            say(f"[{'PASS' if ok else 'FAIL'}] {name} ({took:.1f} s): {detail}")
        return run
    return wrap


def link_engine() -> Path:
    """A folder holding `torchdeck` -> engine/, first on PYTHONPATH here and in every child."""
    site = Path(tempfile.mkdtemp(prefix="torchdeck-site-"))
    (site / "torchdeck").symlink_to(REPO / "engine", target_is_directory=True)
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return site


STEP = textwrap.dedent('''
    import torch
    import torch.nn.functional as F

    calls = 0

    def hungry_step(model, batch):
        """The OOM check: from the 6th call on, a step that also wants 1 GiB a sample (a batch of
        256 asks the real allocator for 256 GiB, more than the card has)."""
        global calls
        calls += 1
        x, y = batch
        if calls > 5 and x.is_cuda:
            extra = torch.empty((x.shape[0], 2 ** 28), device=x.device)
            del extra
        return F.cross_entropy(model(x), y)
''')


def run_to_end(store, cfg, *, via_torchrun: bool = False, timeout: float = 150.0):
    from torchdeck.options import FINAL_STATES

    run = store.create(cfg)
    if via_torchrun:  # the supervisor directly: RunStore.launch would pick the one-process worker for nproc 1
        log = open(run.log_path, "ab")
        subprocess.Popen([sys.executable, "-m", "torchdeck.runs.ddp", str(run.path)], cwd=run.path,
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()
    else:
        store.launch(run)
    deadline = time.monotonic() + timeout
    while run.observed_state() not in FINAL_STATES:
        if time.monotonic() > deadline:
            run.stop(grace=10)
            raise TimeoutError(f"run {run.id} did not end in {timeout:.0f} s; log: {run.log_path}")
        time.sleep(0.2)
    return run


def metrics_of(run) -> dict:
    from torchdeck.runs import events as ev

    losses, last = [], {}
    for e in ev.read_all(run.events_path):
        if isinstance(e, ev.Losses):
            losses += [v for v in e.values if v is not None]
        elif isinstance(e, ev.Scalars) and e.values:
            last[e.name] = e.values[-1]
    return {"losses": losses, "last": last}


def loop_rate(run) -> float:
    """Steps a second by the training loop's own clock (its chunk records' `elapsed`), from the end
    of the first chunk to the last: no process start, import or teardown in it, the same measure
    for a single process and a rank."""
    from torchdeck.runs import events as ev

    recs = [e for e in ev.read_all(run.events_path) if isinstance(e, ev.Losses) and e.elapsed is not None]
    if len(recs) < 2 or recs[-1].elapsed <= recs[0].elapsed:
        return run.summary().steps_per_second or 0.0  # too short a run for chunks: the summary's figure
    first, last = recs[0], recs[-1]
    return (last.last_step - first.last_step) / (last.elapsed - first.elapsed)


def config(ws, device: str, **kw):
    from torchdeck.models import specs
    from torchdeck.runs.config import RunConfig

    base = dict(model="builtin:cnn", data="synthetic:image", dataset_size=8192, batch_size=256, epochs=1000,
                max_steps=300, lr=0.01, optimizer="adam", seed=0, device=device, flush_interval=0.25,
                checkpoint_every_epoch=False)
    base.update(kw)
    if device == "cpu":  # the dry run: the same plumbing, sizes a 2-core machine does in seconds
        base.update(dataset_size=512, batch_size=16, max_steps=min(base["max_steps"], 200), threads=1,
                    flush_interval=0.05)
    cfg = RunConfig(**base)
    cfg.model_spec = specs.resolve(cfg.model, ws).to_json()
    return cfg


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="dry run on the CPU (bf16 only, Gloo, no NVML)")
    ap.add_argument("--json", metavar="PATH", help="also write the results there")
    args = ap.parse_args()
    t_all = time.monotonic()
    link_engine()
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    missing = []
    for mod in ("torch", "safetensors", "numpy", "tomli_w"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        say(f"missing Python packages: {', '.join(missing)} (carry their wheels; see the device README)")
        return 2
    import torch

    device = "cpu" if args.cpu else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        say(f"no CUDA device (torch {torch.__version__}): run with --cpu for the dry run")
        return 2
    say(f"torch {torch.__version__}, CUDA {torch.version.cuda}, python {sys.version.split()[0]}, device {device}")
    from torchdeck.runs.store import RunStore
    from torchdeck.workspace import Workspace

    ws = Workspace.open(Path(tempfile.mkdtemp(prefix="torchdeck-gpu-check-")))
    store = RunStore(ws)
    step_dir = Path(tempfile.mkdtemp(prefix="torchdeck-step-"))
    (step_dir / "gpucheck_step.py").write_text(STEP)

    @check("GPUs in view (NVML, torch.cuda, PCI bus order)")
    def gpus():
        from torchdeck.system import SystemReader, gpu_choices

        reader = SystemReader()
        s = reader.sample()
        reader.close()
        lines = [f"source {s.source}" + (f" ({s.note})" if s.note else "")]
        for g in s.gpus:
            lines.append(f"GPU {g.index} {g.name}: {g.mem_used_mb / 1024:.1f}/{g.mem_total_mb / 1024:.1f} GiB, "
                         f"util {g.util}%, {g.temp_c} C, {g.power_w} W of {g.power_limit_w} W, "
                         f"{len(g.processes)} process(es)")
        lines.append(f"host CPU {s.host.cpu_percent} % of {s.host.cores}, memory "
                     f"{(s.host.mem_used_mb or 0) / 1024:.1f}/{(s.host.mem_total_mb or 0) / 1024:.1f} GiB")
        if device == "cuda":
            assert s.source == "nvml", f"NVML not used: {s.note}"
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            assert [g.name for g in s.gpus] == names, (names, [g.name for g in s.gpus])
            lines.append("device field: " + "; ".join(label for _, label in gpu_choices(s)))
        return " | ".join(lines)

    speeds = {}

    def train(precision: str):
        run = run_to_end(store, config(ws, device, precision=precision, name=f"amp-{precision}"))
        st = run.status()
        assert st.state == "finished", f"{st.state}: {st.message} (log {run.log_path})"
        m = metrics_of(run)
        first, last = sum(m["losses"][:20]) / 20, sum(m["losses"][-20:]) / 20
        assert last < first, f"loss did not fall: {first:.4f} -> {last:.4f}"
        mem = {k: round(v, 1) for k, v in m["last"].items() if "cuda" in k}
        if device == "cuda":
            assert mem.get("cuda_allocated_mb", 0) > 0 and mem.get("cuda_peak_mb", 0) >= mem["cuda_allocated_mb"], mem
        return (f"loss {first:.3f} -> {last:.3f}, {loop_rate(run):.1f} steps/s, "
                f"{m['last'].get('samples_per_s', 0):.0f} samples/s, memory MiB {mem}")

    check("train builtin:cnn with bf16 AMP")(train)("bf16")
    if device == "cuda":
        check("train builtin:cnn with fp16 AMP (GradScaler)")(train)("fp16")

    @check("DDP nproc 1 through torchrun vs one process (target >= 0.97)")
    def ddp_one():
        kw = dict(max_steps=1500, precision="bf16", batch_size=128)
        for label, via in (("single", False), ("torchrun", True), ("single", False), ("torchrun", True)):
            run = run_to_end(store, config(ws, device, name=f"{label}", nproc=1, **kw), via_torchrun=via,
                             timeout=200)
            st = run.status()
            assert st.state == "finished", f"{label}: {st.state}: {st.message} (log {run.log_path})"
            if via:
                log = run.log_path.read_text()
                assert "rank 0 of 1 (" in log, "the rank did not run under DDP"
            speeds.setdefault(label, []).append(loop_rate(run))
        single, ddp = max(speeds["single"]), max(speeds["torchrun"])
        ratio = ddp / single
        detail = f"single {single:.1f} steps/s, DDP nproc 1 {ddp:.1f} steps/s, ratio {ratio:.3f}"
        if device == "cuda":
            assert ratio >= 0.97, detail
        return detail

    @check("CUDA out of memory from the real allocator")
    def oom():
        cfg = config(ws, device, batch_size=256, max_steps=50, step="gpucheck_step:hungry_step",
                     checkpoint_every=2, name="oom")
        cfg.import_root = str(step_dir)
        cfg.model_import_root = str(step_dir)
        run = run_to_end(store, cfg)
        st = run.status()
        if device == "cpu":
            return f"(CPU dry run: no allocator cap) {st.state}"
        assert st.state == "failed", f"{st.state}: {st.message}"
        assert "CUDA out of memory" in st.message and "batch size 256" in st.message, st.message
        assert "asked for 256.00 GiB" in st.message and "try batch size" in st.message, st.message
        from torchdeck.checkpoints import store as checkpoints

        kept = checkpoints.latest_complete(run.checkpoints_dir)
        assert kept is not None, "no checkpoint kept"
        return f"{st.message} [kept {kept.path.name}]"

    gpus()
    # (train checks ran above)
    ddp_one()
    oom()
    took = time.monotonic() - t_all
    say("")
    say(f"summary ({took:.0f} s):")
    for r in results:
        say(f"  {'PASS' if r['ok'] else 'FAIL'}  {r['check']}: {r['detail']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"seconds": round(took, 1), "results": results}, indent=1))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
