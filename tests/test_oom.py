"""CUDA out of memory, on the CPU: this machine has no GPU, so the user's step raises torch's own
torch.cuda.OutOfMemoryError with the allocator's wording (what a real CUDA OOM raises); the
run must end "failed" naming the batch size and the memory asked for, keep its last checkpoint
and suggest a batch size that fits by the model summary's estimate. The real allocator is
exercised by benchmarks/gpu_check.py on a GPU machine."""

from __future__ import annotations

import json
import re
import textwrap

import pytest
from helpers import run_cli
from torchdeck.checkpoints import store as checkpoints
from torchdeck.models import specs
from torchdeck.models.summary import summarize
from torchdeck.runs.store import Run

torch = pytest.importorskip("torch")

STEP = textwrap.dedent('''
    import os

    import torch
    import torch.nn.functional as F

    calls = 0

    def step(model, batch):
        global calls
        calls += 1
        if calls > 5 and os.environ.get("RANK", "1") == "1":
            raise torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 1.50 GiB. GPU 0 has a total capacity of 0.004 GiB of "
                "which 0 bytes is free. Of the allocated memory 3.10 MiB is allocated by PyTorch")
        x, y = batch
        return F.cross_entropy(model(x), y)
''')


@pytest.mark.parametrize("nproc", [1, 2])
def test_out_of_memory_fails_with_the_batch_the_ask_and_a_batch_that_fits(tmp_path, nproc):
    (tmp_path / "oomstep.py").write_text(STEP)
    out = run_cli("--workspace", str(tmp_path / "ws"), "train", "--model", "builtin:cnn", "--step", "oomstep:step",
                  "--dataset-size", "320", "--batch-size", "64", "--epochs", "5", "--checkpoint-every", "2",
                  "--device", "cpu", "--threads", "1", "--nproc", str(nproc), "--json", cwd=tmp_path, timeout=300)
    doc = json.loads(out.stdout)
    run = Run(tmp_path / "ws" / "runs" / doc["id"])
    st = run.status()
    assert out.returncode != 0 and st.state == "failed", run.log_path.read_text()
    # the expected suggestion, from the summary's estimate: 0.004 GiB, 85 % usable
    est = summarize(specs.resolve("builtin:cnn"), batch_size=64, optimizer="sgd").memory
    fits = int((0.004 * 2**30 * 0.85 - (est.weights + est.buffers + est.gradients + est.optimizer_state))
               // (est.activations / 64))
    expected = 1 << (fits.bit_length() - 1)
    assert 1 <= expected < 64
    prefix = "rank 1: " if nproc == 2 else ""
    m = re.match(rf"{prefix}CUDA out of memory at step (\d+) with batch size 64 on cpu \(4\.1 MiB\): it asked for "
                 r"1\.50 GiB more; ", st.message)
    assert m, st.message
    assert f"try batch size {expected} (the model summary estimates" in st.message
    assert "the last checkpoint is kept" in st.message
    failed_at = int(m.group(1))
    kept = checkpoints.latest_complete(run.checkpoints_dir)
    assert kept is not None  # checkpoints every 2 steps and at each epoch's end: the newest before the failure
    assert failed_at - 2 <= json.loads((kept.path / "meta.json").read_text())["step"] < failed_at
