"""The training loop that a worker process runs.

Losses (and, with clipping on, each step's gradient norm) stay on the device and are copied
out one chunk at a time in one transfer (every `flush_interval` seconds and at epoch end),
never with a per-step `.item()`: on a GPU each is a host sync. Recorded scalars: `lr` (a point
when it changes), `grad_norm` (every step when clipping, else the chunk's last step),
`val_loss` and `val_accuracy` (each epoch, or every `val_every` steps), every other scalar a
user's step returns (by its name), and with fp16 `skipped_steps` (the GradScaler's running count
of steps it skipped for overflowing gradients; their losses are never taken for divergence).

Batches come from torchdeck.training.batches (tensors in memory, or a DataLoader); a step is
torchdeck.training.steps' default or the user's. With `accumulate` N an optimizer step takes N
micro-batches, each loss divided by N before backward; the step's logged loss is their mean.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from torchdeck.checkpoints import store as checkpoints
from torchdeck.data import sources as data_mod
from torchdeck.errors import Corrupt, DataError, InvalidRequest, OperationFailed
from torchdeck.models import specs
from torchdeck.options import build_loss, build_optimizer, build_scheduler
from torchdeck.runs import events as ev
from torchdeck.runs.config import RunConfig
from torchdeck.training import batches as batches_mod
from torchdeck.training import distributed as dist_mod
from torchdeck.training import steps as steps_mod


class Hooks(Protocol):
    """How the loop talks to its host: events out, control requests in."""

    def emit(self, event: ev.Event) -> None: ...
    def progress(self, *, state: str | None = None, step: int | None = None, epoch: int | None = None,
                 last_loss: float | None = None) -> None: ...
    def control(self) -> str | None: ...  # "pause", "continue", "stop" or None
    def stop_requested(self) -> bool: ...


@dataclass
class Outcome:
    state: str  # finished, stopped, diverged
    step: int
    epoch: int
    last_loss: float | None
    message: str = ""


def pick_device(name: str):
    """auto: CUDA when there is one, else the CPU. A device that is not here is refused by name."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise InvalidRequest(f"unknown device {name!r} (auto, cpu, cuda, cuda:N or mps)", field="device") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InvalidRequest(f"device {name} is not available: this machine has no CUDA device "
                                 f"(torch {torch.__version__})", field="device")
        if device.index is not None and device.index >= count:
            raise InvalidRequest(f"device {name} is not available: this machine has {count} CUDA device(s), "
                                 f"cuda:0 to cuda:{count - 1}", field="device")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise InvalidRequest("device mps is not available here (Apple silicon with an MPS build of torch only)",
                                 field="device")
    elif device.type != "cpu":
        raise InvalidRequest(f"unknown device {name!r} (auto, cpu, cuda, cuda:N or mps)", field="device")
    return device


def check_precision(precision: str, device) -> None:
    if precision == "fp16" and device.type != "cuda":
        raise InvalidRequest(f"precision fp16 needs a CUDA device (its GradScaler is CUDA's); this run's device is "
                             f"{device}: use bf16 or fp32", field="precision")


def autocast_dtype(precision: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def set_deterministic(on: bool) -> None:
    """torch.use_deterministic_algorithms and cuDNN's flags (a kernel with no deterministic
    version then raises, naming itself)."""
    import os

    import torch

    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS needs
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False


def describe_batch(batch) -> str:
    """A batch's shapes and dtypes, for messages: "x (4, 3, 64, 64) float32, y (4,) int64"."""
    import torch

    def one(t):
        return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}" if isinstance(t, torch.Tensor) \
            else type(t).__name__

    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return f"x {one(batch[0])}, y {one(batch[1])}"
    if isinstance(batch, dict):
        return ", ".join(f"{k} {one(v)}" for k, v in batch.items())
    if isinstance(batch, (tuple, list)):
        return ", ".join(one(v) for v in batch)
    return one(batch)


def check_first_batch(model, batch, step_fn, *, model_name: str, where: str) -> None:
    """Run one batch through the step (eval mode, no gradients); a failure names the batch's
    shapes and the model."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                steps_mod.split_result(step_fn(model, batch), where)
            except InvalidRequest:
                raise
            except Exception as e:
                msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise DataError(f"the first batch ({describe_batch(batch)}) does not fit {model_name}: {where} "
                                f"raised {type(e).__name__}: {msg}") from None
    finally:
        model.train(was_training)


def first_batch(data, collate, n: int = 4):
    """The first `n` items of a DatasetData, collated (what a DataLoader's first batch holds)."""
    from torch.utils.data import default_collate

    try:
        items = data_mod.peek_items(data.train, n) if data.iterable else \
            [data.train[i] for i in range(min(n, len(data.train)))]
    except Exception as e:
        raise DataError(f"reading the first items of {data.spec} raised {type(e).__name__}: {e}") from None
    try:
        return (collate or default_collate)(items)
    except Exception as e:
        what = "collate" if collate else "torch's default collate"
        raise DataError(f"{what} of the first {len(items)} items of {data.spec} raised {type(e).__name__}: {e}",
                        field="collate" if collate else "data") from None


def cpu_threads() -> int:
    """All cores but one: the TUI, tailers and the OS need one, and an oversubscribed OpenMP
    pool spin-waits so badly that a 2-core box trains 20x slower with a busy neighbour."""
    import os

    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, n - 1)




def seed_everything(seed: int) -> None:
    """torch (CPU and every CUDA device), Python's and NumPy's generators, from the run's seed:
    a user's model or data code may draw from any of them."""
    import torch

    torch.manual_seed(seed)
    random.seed(seed)
    try:
        import numpy as np
    except ImportError:
        return
    np.random.seed(seed % 2**32)


def model_spec_of(config: RunConfig) -> specs.ModelSpec:
    return specs.ModelSpec.from_json(config.model_spec) if config.model_spec else specs.resolve(config.model)


def data_spec_of(config: RunConfig, spec: specs.ModelSpec) -> str:
    """The run's data: the one asked for, else the built-in model's own."""
    builtin = spec.builtin
    data_spec = config.data or (builtin.default_data if builtin else None)
    if data_spec is None:
        raise InvalidRequest(f"model {config.model!r} has no built-in dataset: give a data spec "
                             "(synthetic:NAME, file:PATH or package.module:callable)", field="data")
    return data_spec


def model_label(spec: specs.ModelSpec) -> str:
    return f"model {spec.registered_as}" if spec.registered_as else f"model {spec.describe()}"


def preflight(config: RunConfig) -> str:
    """What a run's worker checks first, checked here before launching one, so that a bad request
    is told where it was made: the model builds, the data loads, one small batch of it goes
    through the model and the loss. Only a few synthetic samples are made; a file or callable is
    read whole. Builds the model, so a user's spec runs their code: the caller checks trust.
    Returns the loss kind the run will use; raises InvalidRequest naming the cause."""
    config.validate()
    spec = model_spec_of(config)
    data_spec = data_spec_of(config, spec)
    model = specs.build(spec, import_root=config.model_import_root or config.import_root)
    if config.init_from:
        from torchdeck.checkpoints import ops

        model.load_state_dict(ops.weights_for(Path(config.init_from), model))
    if config.processes > 1:
        dist_mod.check_devices(config)  # and, on node 0 of several, the rendezvous port
    else:
        check_precision(config.precision, pick_device(config.device))
    d = data_mod.open_data(data_spec, size=min(config.dataset_size or 64, 64), seed=config.seed,
                           val_fraction=config.val_fraction, import_root=config.import_root,
                           in_loader=bool(config.collate))
    loss_kind = config.loss or d.default_loss
    check_data_fits(model, d, config, loss_kind, spec)
    return loss_kind


def check_data_fits(model, d, config: RunConfig, loss_kind: str, spec: specs.ModelSpec, step_fn=None,
                    collate=None) -> None:
    """The first batch through the model and loss (or the user's step): found here, both shapes named."""
    name = model_label(spec)
    user = config.step
    if step_fn is None:
        step_fn = steps_mod.user_step(user, config.import_root) if user else steps_mod.default_step(build_loss(config, default=loss_kind))
    where = f"the step {user}" if user else "the model or loss"
    if isinstance(d, data_mod.TensorData):
        if not user:
            data_mod.check_fits(model, d, loss=loss_kind, input_shape=spec.input_shape, model_name=name)
        else:
            check_first_batch(model, (d.x_train[:4], d.y_train[:4]), step_fn, model_name=name, where=where)
        return
    if collate is None:
        collate = steps_mod.collate_fn(config.collate, config.import_root)
    batch = batches_mod.to_device(first_batch(d, collate), next(model.parameters(), None).device
                                  if any(True for _ in model.parameters()) else "cpu")
    check_first_batch(model, batch, step_fn, model_name=name, where=where)


@dataclass
class Resume:
    """Where a resumed run continues from: a torchdeck checkpoint of the run (None: from the
    start, for a run that ended before its first checkpoint) and the learning rate to use
    instead of the recorded one (a diverged run's; that resume is not exact)."""
    checkpoint: Path | None = None
    lr: float | None = None


TRAINING_STATE_FORMAT = 2

MIB = 1 << 20
try:
    _PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
except (AttributeError, ValueError, OSError):
    _PAGE_BYTES = 4096


def rss_mb() -> float | None:
    """This process's resident memory in MiB, from /proc/self/statm (Linux; None elsewhere):
    one small read, no psutil."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_BYTES / MIB
    except (OSError, ValueError, IndexError):
        return None


def _is_oom(e: BaseException) -> bool:
    import torch

    kinds = tuple(k for k in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
                  if k is not None)
    return bool(kinds) and isinstance(e, kinds)


def _oom_figure(pattern: str, text: str) -> str | None:
    import re

    m = re.search(pattern, text)
    return m.group(1) if m else None


def _bytes_of(figure: str) -> int | None:
    import re

    m = re.fullmatch(r"([\d.]+) ?([KMGT])i?B", figure.strip())
    if not m:
        return None
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2)))


OOM_HEADROOM = 0.85  # of the device's memory: the allocator's cache, fragmentation, CUDA's own context


def suggest_batch_size(spec, config: RunConfig, total_bytes: int | None) -> tuple[int | None, str]:
    """A batch size that fits `total_bytes` of device memory by the summary's estimate (the
    largest power of two below the run's whose weights + gradients + optimizer state +
    activations stay under OOM_HEADROOM of it); half the batch when the estimate cannot tell."""
    bs = config.batch_size
    half = max(1, bs // 2)
    if bs == 1:
        return None, ""
    try:
        from torchdeck.models.summary import summarize

        est = summarize(spec, batch_size=bs, optimizer=config.optimizer, momentum=config.momentum,
                        import_root=config.model_import_root or config.import_root).memory
    except Exception:  # noqa: BLE001  (no estimate: the plain halving)
        est = None
    if est is None or not est.activations or not total_bytes:
        return half, "half the batch: the model summary has no activation estimate"
    per_sample = est.activations / bs
    fixed = est.weights + est.buffers + est.gradients + est.optimizer_state
    room = total_bytes * OOM_HEADROOM - fixed
    fits = int(room // per_sample) if room > 0 else 0
    if fits < 1:
        return None, ""
    size = 1 << (min(fits, bs - 1).bit_length() - 1) if fits < bs else half
    from torchdeck.models.summary import human_bytes

    how = f"the model summary estimates {human_bytes(int(per_sample))} a sample and {human_bytes(int(fixed))} for " \
          f"weights, gradients and optimizer state"
    if fits >= bs:
        how += ": the estimate says the batch fits, so other memory use is in the way; half the batch"
    return size, how


class Trainer:
    ckpt_writer = None  # torchdeck.checkpoints.writer.CheckpointWriter, made at the first save

    def __init__(self, config: RunConfig, hooks: Hooks, *, run_id: str = "", checkpoints_dir=None,
                 clock: Callable[[], float] = time.monotonic, resume: Resume | None = None):
        import torch

        self.config = config.validate()
        self.hooks = hooks
        self.run_id = run_id
        self.checkpoints_dir = checkpoints_dir
        self.clock = clock
        self.spec = model_spec_of(config)
        self.data_spec = data_spec = data_spec_of(config, self.spec)
        state = read_training_state(resume.checkpoint) if resume and resume.checkpoint else None
        loop_state = state["loop"] if state else {}
        # A resumed run keeps the recorded device and thread count: CPU results depend on the
        # number of threads, so another count would not continue the same computation.
        device = config.device
        self.dist = None  # torchdeck.training.distributed.Dist: one of several processes (torchrun)
        if dist_mod.launched():
            self.device = dist_mod.rank_device(device, int(os.environ.get("LOCAL_RANK", "0")))
            self.dist = dist_mod.from_env(self.device.type)
            default_threads = dist_mod.rank_threads(self.dist.local_world)
        else:
            if device == "auto" and loop_state.get("device"):
                device = loop_state["device"]
            self.device = pick_device(device)
            default_threads = cpu_threads()
        check_precision(config.precision, self.device)
        set_deterministic(config.deterministic)
        self.threads = config.threads or loop_state.get("threads") or default_threads
        torch.set_num_threads(self.threads)
        seed_everything(config.seed)
        self.model = specs.build(self.spec, import_root=config.model_import_root or config.import_root).to(self.device)
        self.data = data_mod.open_data(data_spec, size=config.dataset_size, seed=config.seed,
                                       val_fraction=config.val_fraction, import_root=config.import_root,
                                       in_loader=bool(config.collate)).to(self.device)
        # The loss follows the targets (cross-entropy for classes, MSE for floats) unless chosen.
        self.loss_kind = config.loss or self.data.default_loss
        self.loss_fn = build_loss(config, default=self.loss_kind)
        self.user_step = steps_mod.user_step(config.step, config.import_root) if config.step else None
        self.step_fn = self.user_step or steps_mod.default_step(self.loss_fn)
        self.step_where = f"the step {config.step}" if config.step else "the default step"
        self.collate = steps_mod.collate_fn(config.collate, config.import_root)
        check_data_fits(self.model, self.data, config, self.loss_kind, self.spec, self.step_fn, self.collate)
        self.optimizer = build_optimizer(config, self.model.parameters())
        self.order_gen = torch.Generator().manual_seed(config.seed)  # data order, on the host
        bs = config.batch_size
        rank, world = (self.dist.rank, self.dist.world) if self.dist else (0, 1)
        if isinstance(self.data, data_mod.TensorData):
            self.pipeline = batches_mod.MemoryBatches(self.data, bs, self.order_gen, self.device, rank=rank,
                                                      world=world)
            self.val_pipeline = None
            self.pipeline_note = f"{self.pipeline.n} samples{' a rank' if world > 1 else ''} held on {self.device}"
            n = self.pipeline.n
        else:
            d = self.data
            if d.iterable and world > 1:
                raise InvalidRequest(f"{data_spec} is an iterable dataset: several processes need a map-style "
                                     "Dataset (each rank reads its share through a DistributedSampler); use nproc 1",
                                     field="nproc")
            self.pipeline = batches_mod.LoaderBatches(d.train, iterable=d.iterable, batch_size=bs, seed=config.seed,
                                                      device=self.device, num_workers=config.num_workers,
                                                      collate=self.collate, rank=rank, world=world)
            self.val_pipeline = None if d.val is None else batches_mod.LoaderBatches(
                d.val, iterable=d.iterable, batch_size=bs, seed=config.seed, device=self.device,
                num_workers=config.num_workers, collate=self.collate, shuffle=False)
            n = d.train_size if world == 1 or d.train_size is None else -(-d.train_size // world)
            self.pipeline_note = (f"DataLoader: {n if n is not None else 'an iterable of unknown length'}"
                                  f"{' samples' if n is not None else ''}, {self.pipeline.num_workers} worker(s)"
                                  f"{', pinned memory' if self.pipeline.pin else ''}"
                                  f"{', collate ' + config.collate if config.collate else ''}"
                                  f"{'; ' + d.val_note if d.val_note else ''}")
        if n is not None and bs > n:
            print(f"warning: batch size {bs} is larger than the {n} training samples: each epoch is one batch of "
                  f"{n}", file=sys.stderr, flush=True)
        batches = self.pipeline.batches_per_epoch()
        if batches is None and not config.max_steps:
            raise InvalidRequest(f"{data_spec} is an iterable dataset without a length: give max steps "
                                 "(an epoch's length is unknown)", field="max_steps")
        self.accumulate = config.accumulate
        # 0: unknown (an iterable without a length); the epoch ends when the data does.
        self.steps_per_epoch = -(-batches // self.accumulate) if batches else 0
        self.total_steps = config.max_steps or self.steps_per_epoch * config.epochs
        self.last_epoch = math.ceil(self.total_steps / self.steps_per_epoch) if self.steps_per_epoch else 10**12
        self.scheduler = build_scheduler(config, self.optimizer, self.total_steps)
        self.amp_dtype = autocast_dtype(config.precision)
        self.scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None
        self._pending_extra: dict[str, list[tuple[int, Any]]] = {}  # a step's own scalars, on the device
        self._pending_skip: list[Any] = []  # fp16: whether each pending step was skipped (device bools)
        self._skipped_total = 0
        self._best: float | None = None  # early stop: the best value of best_metric so far
        self._bad_validations = 0
        self._data_state_restored = False
        self._micro_extra: dict[str, list[Any]] = {}  # an accumulated step's scalars, per micro-batch
        self.resume_note = ""
        self.step = 0
        self.epoch = 0
        self.last_loss: float | None = None
        self._pending: list[Any] = []  # the chunk's losses: device tensors not yet copied out, or floats
        # On the CPU a loss is read at once (.item() is no sync there): holding each step's loss
        # tensor until the chunk's copy-out cost 2.4% of a small model's step, reading it 1.6%.
        self._host_losses = self.device.type == "cpu"
        self._pending_first = 1
        self._pending_gn: list[Any] = []  # gradient norms (device tensors) not yet copied out
        self._gn_steps: list[int] = []
        self._lr_points: list[tuple[int, float]] = []  # (step, lr) not yet written
        self._lr_last: float | None = None
        self._t0 = 0.0
        self._epoch_sum = 0.0
        self._epoch_count = 0
        self._batch_in_epoch = 0  # batches done in self.epoch
        self._epoch_ended = True  # self.epoch's end (validation, its record, its checkpoint) is done
        self._epoch_order_state = self.order_gen.get_state()  # the data order's state when self.epoch began
        self._last_saved_step = -1
        self._diverged_at: tuple[int, str] | None = None  # (step, "nan"|"inf"|"-inf") of the first bad loss
        if self.dist is not None:
            # The same weights on every rank (built from the run's seed), then each rank's own
            # generators (its dropout, its augmentation draws), seeded from (seed, rank).
            seed_everything(batches_mod.mix(config.seed, self.dist.rank, 0xD15))
        if state is not None:
            self.restore(resume.checkpoint, state, lr=resume.lr)
        elif config.init_from:
            from torchdeck.checkpoints import ops

            self.model.load_state_dict(ops.weights_for(Path(config.init_from), self.model))
        elif resume is not None and resume.lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = resume.lr
        # What the steps run: the model itself, or DDP around it (gradients averaged over ranks in
        # backward). Checkpoints, validation and the summary use the model itself (no "module."
        # prefix; no collective in a forward that only one rank makes).
        self.train_model = self.model
        self._agreed: str | None = None  # a stop or pause the ranks agreed on at a chunk's end
        self._chunk_steps = 1  # steps in the next chunk (rank 0 chooses from its clock; all agree)
        self._chunk_t0 = clock()
        self._collectives = True  # False once an error is being unwound: no rank waits for another
        if self.dist is not None:
            from torch.nn.parallel import DistributedDataParallel

            self.train_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            self.pipeline_note += f"; rank {self.dist.rank} of {self.dist.world} ({self.dist.backend}), " \
                                  f"global batch {bs * self.dist.world}"

    # -- chunks of losses ---------------------------------------------------------------------
    def flush(self, now: float | None = None) -> None:
        """Copy the pending losses (and gradient norms) out in one transfer and emit them as records.
        `now`: a reading of the clock the caller has just taken, stamped on the chunk."""
        if not self._pending:
            return
        import torch

        host_losses = self._host_losses
        if self.dist is not None and self._collectives:
            self._reduce_chunk()
            host_losses = True
        if not self.config.grad_clip:
            norm = self._grad_norm()  # the chunk's last step, computed on the device
            if norm is not None:
                self._pending_gn.append(norm)
                self._gn_steps.append(self.step)
        n_losses = len(self._pending)
        extra = [(name, pts) for name, pts in self._pending_extra.items() if pts]
        tensors = [t.float() for t in self._pending_gn] if host_losses else \
            [t.float() for t in self._pending + self._pending_gn]
        tensors += [v.float() for _, pts in extra for _, v in pts]
        tensors += [t.float() for t in self._pending_skip]
        floats = torch.stack(tensors).cpu().tolist() if tensors else []  # the one sync per chunk
        if host_losses:
            floats = self._pending + floats
        synced_at = self.clock()  # the chunk's device work is done here (the copy-out waited for it)
        elapsed = None if now is None else round(now - self._t0, 4)
        rec = ev.Losses.from_floats(self._pending_first, self.epoch, floats[:n_losses], elapsed)
        n_gn = len(self._pending_gn)
        gn_steps, gn_values = self._gn_steps, floats[n_losses:n_losses + n_gn]
        at = n_losses + n_gn
        extra_recs = []
        for name, pts in extra:
            extra_recs.append(ev.Scalars.from_points(name, [st for st, _ in pts], floats[at:at + len(pts)]))
            at += len(pts)
        skipped = [bool(v) for v in floats[at:]]
        lr_points = self._lr_points
        self._pending, self._pending_gn, self._gn_steps, self._lr_points = [], [], [], []
        self._pending_extra, self._pending_skip = {}, []
        self._pending_first = self.step + 1
        self.hooks.emit(rec)
        if gn_steps:
            self.hooks.emit(ev.Scalars.from_points("grad_norm", gn_steps, gn_values))
        if lr_points:
            self.hooks.emit(ev.Scalars.from_points("lr", [s for s, _ in lr_points], [v for _, v in lr_points]))
        for r in extra_recs:
            self.hooks.emit(r)
        if any(skipped):
            self._skipped_total += sum(skipped)
            self.hooks.emit(ev.Scalars.from_points("skipped_steps", [self.step], [float(self._skipped_total)]))
        for name, value in self._system_metrics(n_losses, synced_at):
            self.hooks.emit(ev.Scalars.from_points(name, [self.step], [value]))
        finite = [v for v in rec.values if v is not None]
        self._epoch_sum += sum(finite)
        self._epoch_count += len(finite)
        if finite:
            self.last_loss = finite[-1]
        # A step the fp16 GradScaler skipped (its gradients overflowed) is not divergence.
        bad = [(i, k) for i, k in rec.nonfinite if not (skipped and i < len(skipped) and skipped[i])]
        if bad and self._diverged_at is None:
            index, kind = bad[0]
            self._diverged_at = (rec.first_step + index, kind)
        self.hooks.progress(step=self.step, epoch=self.epoch, last_loss=self.last_loss)
        if self.ckpt_writer is not None:
            self.ckpt_writer.raise_if_failed()  # a background save that failed ends the run now

    def _oom_message(self, e: BaseException) -> str:
        """What ran out, at which batch size, and a batch size that fits by the model summary's
        training-memory estimate (weights, gradients, optimizer state, activations per sample)."""
        import torch

        text = str(e)
        bs = self.config.batch_size
        asked = _oom_figure(r"Tried to allocate ([\d.]+ ?[KMGT]i?B)", text)
        total = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            try:
                total = torch.cuda.get_device_properties(self.device).total_memory
            except Exception:  # noqa: BLE001
                total = None
        if total is None:
            cap = _oom_figure(r"total capacity of ([\d.]+ ?[KMGT]i?B)", text)
            total = _bytes_of(cap) if cap else None
        from torchdeck.models.summary import human_bytes

        where = f"{self.device}" + (f" ({human_bytes(total)})" if total else "")
        msg = f"CUDA out of memory at step {self.step + 1} with batch size {bs} on {where}" + \
            (f": it asked for {asked} more" if asked else "")
        suggestion, why = suggest_batch_size(self.spec, self.config, total)
        if suggestion:
            msg += f"; try batch size {suggestion} ({why})"
        msg += "; the last checkpoint is kept (resume from it with the smaller batch in a new run: --from)"
        return msg

    def _reduce_chunk(self) -> None:
        """Several processes: the chunk's one collective (distributed.Dist.reduce_chunk). The
        pending losses become their mean over ranks (host floats); a stop (any rank's signal, or
        rank 0's request) or pause is remembered until the loop obeys it; rank 0's next chunk
        length (about flush_interval seconds of steps, by its clock) becomes everyone's."""
        d = self.dist
        control = 0
        next_chunk = self._chunk_steps
        if d.leader:
            now = self.clock()
            took = now - self._chunk_t0
            self._chunk_t0 = now
            steps = len(self._pending)
            if took > 0:
                next_chunk = int(steps * self.config.flush_interval / took)
            next_chunk = min(max(1, next_chunk), dist_mod.MAX_CHUNK_STEPS)
            control = dist_mod.CODES.get(self.hooks.control() or "", 0)
        extra = []
        if self.device.type == "cuda":  # every rank's device memory, for the run's header (rank 0 writes it)
            import torch

            extra = [0.0] * (3 * d.world)
            extra[3 * d.rank:3 * d.rank + 3] = [torch.cuda.memory_allocated(self.device) / MIB,
                                                torch.cuda.memory_reserved(self.device) / MIB,
                                                torch.cuda.max_memory_allocated(self.device) / MIB]
        losses, stop, control, next_chunk, mem = d.reduce_chunk(
            self._pending, stop=self.hooks.stop_requested(), control=control, next_chunk=next_chunk,
            device=self.device, extra=extra)
        self._rank_memory = [mem[3 * r:3 * r + 3] for r in range(d.world)] if mem else None
        self._pending = losses
        self._chunk_steps = max(1, next_chunk)
        if stop or control == dist_mod.CONTROL_STOP:
            self._agreed = "stop"
        elif control == dist_mod.CONTROL_PAUSE and self._agreed is None:
            self._agreed = "pause"

    def _obey_agreed(self) -> str | None:
        """_obey_control for several processes: what the ranks agreed on at the last chunk's end;
        a pause waits in small collectives (every 0.1 s) until rank 0 reads continue or stop."""
        action, self._agreed = self._agreed, None
        if action != "pause":
            return action
        d = self.dist
        self.hooks.progress(state="paused")
        self.hooks.emit(ev.StateChanged("paused", self.step))
        while True:
            time.sleep(0.1)
            control = dist_mod.CODES.get(self.hooks.control() or "", 0) if d.leader else 0
            _, stop, control, _, _ = d.reduce_chunk([], stop=self.hooks.stop_requested(), control=control,
                                                    next_chunk=0, device=self.device)
            if stop or control == dist_mod.CONTROL_STOP:
                action = "stop"
                break
            if control == dist_mod.CONTROL_CONTINUE:
                action = "continue"
                break
        self.hooks.emit(ev.StateChanged("running", self.step))
        self.hooks.progress(state="running")
        self._restart_rate_window()
        self._chunk_t0 = self.clock()
        return action

    # -- system metrics, once per chunk (flush) ------------------------------------------------
    _rate_mark: float | None = None  # the clock when the steps of the chunk being filled began
    _epoch_samples: int | None | bool = False  # the training set's length (None: unknown); False: not looked up
    _chunk_tokens: int = 0  # input_ids elements in the chunk being filled (tokens_per_s)

    def _system_metrics(self, steps: int, synced_at: float) -> list[tuple[str, float]]:
        """(name, value) of the chunk's throughput and memory (events.SYSTEM_METRICS), from what
        flush already knows: its step count, the clock after its copy-out, the epoch position.
        No per-step work and no device sync (the CUDA figures are the allocator's counters)."""
        out: list[tuple[str, float]] = []
        began = self._t0 if self._rate_mark is None else self._rate_mark
        self._rate_mark = synced_at
        seconds = synced_at - began
        if steps > 0 and seconds > 0:
            out.append(("samples_per_s", self._samples_in_chunk(steps) / seconds))
            if self._chunk_tokens:
                out.append(("tokens_per_s", self._chunk_tokens / seconds))
        self._chunk_tokens = 0
        rss = rss_mb()
        if rss is not None:
            out.append(("rss_mb", rss))
        if self._rank_memory:  # several processes on CUDA: every rank's device (rank 0's under the plain names)
            for r, (alloc, reserved, peak) in enumerate(self._rank_memory[1:], start=1):
                out += [(f"rank{r}_cuda_allocated_mb", alloc), (f"rank{r}_cuda_reserved_mb", reserved),
                        (f"rank{r}_cuda_peak_mb", peak)]
        if self.device.type == "cuda":
            import torch

            out += [("cuda_allocated_mb", torch.cuda.memory_allocated(self.device) / MIB),
                    ("cuda_reserved_mb", torch.cuda.memory_reserved(self.device) / MIB),
                    ("cuda_peak_mb", torch.cuda.max_memory_allocated(self.device) / MIB)]
        return out

    def _count_tokens(self, batch, known: bool | None) -> bool:
        """Add a batch's tokens to the chunk's count (the numel of its `input_ids`: shape
        metadata, no device sync); False once the first batch shows it has none."""
        ids = batch.get("input_ids") if isinstance(batch, dict) else None
        if ids is None or not hasattr(ids, "numel"):
            return False if known is None else bool(known)
        self._chunk_tokens += ids.numel()
        return True

    def _samples_in_chunk(self, steps: int) -> int:
        """Samples in this epoch's last `steps` steps. Exact when the training set's length is
        known (tensors in memory, a map-style or sized Dataset: only an epoch's last batch is
        smaller); for an iterable without a length, batch size x accumulate per step (its last
        batch may be smaller: a slight over-count in that one chunk)."""
        per_step = self.config.batch_size * self.accumulate
        world = self.dist.world if self.dist is not None else 1  # every rank's samples (their shares are equal)
        if self._epoch_samples is False:
            self._epoch_samples = self._training_set_length()
        n = self._epoch_samples
        if n is None:
            return steps * per_step * world
        done = self._batch_in_epoch
        return world * max(0, min(done * per_step, n) - min(max(0, done - steps) * per_step, n))

    def _training_set_length(self) -> int | None:
        p = self.pipeline
        if isinstance(p, batches_mod.MemoryBatches):
            return p.n
        try:
            return len(p.dataset)
        except TypeError:
            return None

    def _restart_rate_window(self) -> None:
        """Time spent off the steps (validation, a checkpoint's pause, a user's pause) does not
        count against the next chunk's samples_per_s."""
        self._rate_mark = self.clock()

    def _grad_norm(self):
        """The total 2-norm of the current gradients, as a device tensor (no host sync)."""
        import torch

        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return None
        return torch.nn.utils.get_total_norm(grads, 2.0)

    def _note_lr(self) -> None:
        """Record the learning rate when it changes (a plain float: reading it costs no sync)."""
        lr = self.optimizer.param_groups[0]["lr"]
        if isinstance(lr, (int, float)) and lr != self._lr_last:
            self._lr_last = lr
            self._lr_points.append((self.step, float(lr)))

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> Outcome:
        """Train to an end (_train). At every end the checkpoint writer is waited for, so the last
        checkpoint is complete when this returns; a background write error ends the run here."""
        try:
            outcome = self._train()
        except BaseException:
            self._close_checkpoints(raise_error=False)  # the first error is the one to tell
            raise
        self._close_checkpoints()
        return outcome

    def _train(self) -> Outcome:
        """Announce the run, then train; whatever ends it (a user's forward, step, collate or
        dataset raising, a DataLoader worker dying), the losses of the steps done are written
        and the step recorded first."""
        cfg = self.config
        self.hooks.emit(ev.Started(
            run_id=self.run_id, config=cfg.to_json(), total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch, num_params=specs.num_params(self.model),
            device=str(self.device), time=time.time(), threads=self.threads,
            pipeline=self.pipeline.kind, pipeline_note=self.pipeline_note,
        ))
        print(f"data: {self.pipeline.kind} ({self.pipeline_note})", file=sys.stderr, flush=True)
        if self.resume_note:
            print(f"resume: {self.resume_note}", file=sys.stderr, flush=True)
        self.hooks.progress(state="running", step=self.step, epoch=self.epoch)
        try:
            return self._epochs()
        except BaseException as e:
            if _is_oom(e):
                self._collectives = False
                try:
                    self.flush()
                except BaseException:
                    pass
                raise OperationFailed(self._oom_message(e), field="batch_size") from e
            self._collectives = False  # the other ranks may be gone: this rank's own losses only
            try:
                self.flush()
            except BaseException:
                pass  # the first error is the one to tell
            raise

    def _epochs(self) -> Outcome:
        import torch

        cfg = self.config
        model, opt = self.train_model, self.optimizer
        step_fn, where = self.step_fn, self.step_where
        interval = cfg.flush_interval
        clip = cfg.grad_clip
        accumulate = self.accumulate
        scaler = self.scaler
        amp_dtype, amp_device = self.amp_dtype, self.device.type
        plateau = isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        sched_step = self.scheduler.step if self.scheduler is not None and not plateau else None
        Tensor = torch.Tensor
        params = [p for p in model.parameters() if p.requires_grad]
        host_losses = self._host_losses
        stop_requested, clock = self.hooks.stop_requested, self.clock
        dist = self.dist
        if dist is not None:  # a signal is agreed on at the chunk's end (no rank stops alone)
            stop_requested = lambda: False  # noqa: E731
        token_batches = None  # whether batches carry input_ids (tokens/s): decided at the first batch
        self._t0 = self.clock()
        every = cfg.checkpoint_every
        val_every = cfg.val_every
        spe = self.steps_per_epoch
        # Where to begin: after a resume, inside the checkpoint's epoch (its data order drawn
        # again from the generator's state at that epoch's start, the batches done skipped), or
        # at its end when only the end's work (validation, record, checkpoint) was left.
        first_epoch, skip = self.epoch + 1, 0
        if self.epoch and ((spe and self._batch_in_epoch < spe) or not self._epoch_ended):
            first_epoch, skip = self.epoch, self._batch_in_epoch
            self.order_gen.set_state(self._epoch_order_state)
        for epoch in range(first_epoch, self.last_epoch + 1):
            if self.step >= self.total_steps:
                break
            t_epoch = self.clock()
            if epoch != self.epoch:
                self.epoch = epoch
                self._epoch_sum, self._epoch_count, self._batch_in_epoch = 0.0, 0, 0
            self._epoch_ended = False
            self._epoch_order_state = self.order_gen.get_state()
            if self._data_state_restored:  # an iterable set continues from its own state_dict
                skip, self._data_state_restored = 0, False
            it = self.pipeline.epoch(epoch, skip * accumulate)
            model.train()
            next_flush = self.clock() + interval
            next_flush_step = self.step + self._chunk_steps
            while self.step < self.total_steps:
                if accumulate == 1:
                    batch = next(it, None)
                    if batch is None:
                        break
                    if token_batches is not False:
                        token_batches = self._count_tokens(batch, token_batches)
                    opt.zero_grad(set_to_none=True)
                    if amp_dtype is None:
                        result = step_fn(model, batch)
                    else:
                        with torch.autocast(amp_device, dtype=amp_dtype):
                            result = step_fn(model, batch)
                    if type(result) is not Tensor:
                        result = self._note_extras(result, where, 1)
                    (scaler.scale(result) if scaler is not None else result).backward()
                    loss = result if host_losses else result.detach()  # .item() needs no detach
                else:
                    micro = list(itertools.islice(it, accumulate))
                    if not micro:
                        break
                    k = len(micro)  # an epoch's last step may have fewer
                    opt.zero_grad(set_to_none=True)
                    loss = None
                    for batch in micro:
                        if token_batches is not False:
                            token_batches = self._count_tokens(batch, token_batches)
                        if amp_dtype is None:
                            result = step_fn(model, batch)
                        else:
                            with torch.autocast(amp_device, dtype=amp_dtype):
                                result = step_fn(model, batch)
                        if type(result) is not Tensor:
                            result = self._note_extras(result, where, k)
                        part = result / k
                        (scaler.scale(part) if scaler is not None else part).backward()
                        loss = part.detach() if loss is None else loss + part.detach()
                    self._merge_extras(k)
                if scaler is not None:
                    if clip:
                        scaler.unscale_(opt)
                        self._pending_gn.append(torch.nn.utils.clip_grad_norm_(params, clip).detach())
                        self._gn_steps.append(self.step + 1)
                    scale_before = scaler._scale.clone()
                    scaler.step(opt)
                    scaler.update()
                    self._pending_skip.append(scaler._scale < scale_before)
                else:
                    if clip:
                        self._pending_gn.append(torch.nn.utils.clip_grad_norm_(params, clip).detach())
                        self._gn_steps.append(self.step + 1)
                    opt.step()
                self._pending.append(loss.item() if host_losses else loss)
                self.step += 1
                self._batch_in_epoch += 1
                if sched_step is not None:
                    sched_step()
                self._note_lr()
                if stop_requested():
                    return self._stop("stop requested")
                now = clock()
                if (now >= next_flush) if dist is None else (self.step >= next_flush_step):
                    self.flush(now)
                    next_flush = self.clock() + interval
                    next_flush_step = self.step + self._chunk_steps
                    if self._diverged_at is not None:
                        return self._diverge()
                    action = self._obey_control()
                    if action == "stop":
                        return self._stop("stop requested")
                if val_every and self.step % val_every == 0:
                    self.flush()
                    if self._diverged_at is not None:
                        return self._diverge()
                    _, _, stop = self._validate_and_record()
                    if stop:
                        return self._early_stop(stop)
                if every and self.step % every == 0 and (not spe or self._batch_in_epoch < spe) \
                        and self.step < self.total_steps:
                    self.flush()
                    if self._diverged_at is not None:
                        return self._diverge()
                    self.save_checkpoint("interval", {"train_loss": self.last_loss})
            it.close()
            skip = 0
            self.flush()
            if self._diverged_at is not None:
                return self._diverge()
            val = val_acc = stop = None
            if not val_every:
                val, val_acc, stop = self._validate_and_record()
            train_loss = self._epoch_sum / self._epoch_count if self._epoch_count else None
            self.hooks.emit(ev.EpochEnd(epoch, self.step, train_loss, val, round(self.clock() - t_epoch, 4),
                                        val_acc))
            self._epoch_ended = True
            if stop:
                return self._early_stop(stop)
            # (a resume into this epoch's end starts from a checkpoint of this very step: kept)
            if cfg.checkpoint_every_epoch and not self._saved_this_step():
                self.save_checkpoint("epoch", {"train_loss": train_loss, "val_loss": val, "val_accuracy": val_acc})
            if self._obey_control() == "stop":
                return self._stop("stop requested")
        return Outcome("finished", self.step, self.epoch, self.last_loss)

    def _note_extras(self, result, where: str, k: int):
        """A step's dict result: its loss; the other scalars kept on the device for the chunk."""
        import torch

        loss, extras = steps_mod.split_result(result, where)
        for name, v in extras.items():
            if isinstance(v, torch.Tensor):
                if v.numel() != 1:
                    raise InvalidRequest(f"{where} returned {name!r} of shape {tuple(v.shape)}; a metric is one "
                                         "number", field="step")
                v = v.detach().reshape(())
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                v = torch.tensor(float(v), device=self.device)
            else:
                continue  # not a number: not a metric
            if k == 1:
                self._pending_extra.setdefault(name, []).append((self.step + 1, v))
            else:
                self._micro_extra.setdefault(name, []).append(v)
        return loss

    def _merge_extras(self, k: int) -> None:
        """An accumulated step's scalars: the mean over its micro-batches."""
        import torch

        if not self._micro_extra:
            return
        for name, vals in self._micro_extra.items():
            self._pending_extra.setdefault(name, []).append((self.step + 1, torch.stack([v.float() for v in vals]).mean()))
        self._micro_extra = {}

    def _validate_and_record(self) -> tuple[float | None, float | None, str | None]:
        """Validate now, record val_loss/val_accuracy at this step, step a plateau schedule, and
        judge early stop: (val_loss or None, val_accuracy, why to stop or None)."""
        import torch

        val_raw, val_acc = self.validate()
        if val_raw is not None:
            self.hooks.emit(ev.Scalars.from_points("val_loss", [self.step], [val_raw]))
        if val_acc is not None:
            self.hooks.emit(ev.Scalars.from_points("val_accuracy", [self.step], [val_acc]))
        val = val_raw if val_raw is not None and math.isfinite(val_raw) else None
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and val is not None:
            self.scheduler.step(val_acc if self.config.best_metric == "val_accuracy" and val_acc is not None else val)
            self._note_lr()
        self._restart_rate_window()
        return val, val_acc, self._judge_early_stop(val, val_acc)

    def _judge_early_stop(self, val, val_acc) -> str | None:
        patience = self.config.early_stop_patience
        metric = self.config.best_metric if self.config.best_metric in ("val_loss", "val_accuracy") else "val_loss"
        value = val_acc if metric == "val_accuracy" else val
        if value is None:
            return None
        lower = "loss" in metric
        if self._best is None or (value < self._best if lower else value > self._best):
            self._best, self._bad_validations = value, 0
            return None
        self._bad_validations += 1
        if patience and self._bad_validations >= patience:
            return (f"early stop: no better {metric} in {patience} validation(s) (best {self._best:.6g})")
        return None

    def _early_stop(self, message: str) -> Outcome:
        self.flush()
        if self.step > 0 and not self._saved_this_step():
            self.save_checkpoint("early-stop", {"train_loss": self.last_loss})
        return Outcome("finished", self.step, self.epoch, self.last_loss, message)

    def validate(self) -> tuple[float | None, float | None]:
        """Validation loss (as computed: it may be non-finite) and, for class targets, accuracy:
        with one host sync. None, None when there is no validation set."""
        import torch

        if self.val_pipeline is not None:
            return self._validate_batches(self.val_pipeline.epoch(1, 0))
        if not isinstance(self.data, data_mod.TensorData) or len(self.data.x_val) == 0:
            return None, None
        x, y = self.data.x_val, self.data.y_val
        if self.user_step is not None:
            bs = self.config.batch_size
            return self._validate_batches((x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs))
        n = len(x)
        classes = self.data.target_kind == "classes"
        chunk = max(data_mod.VAL_CHUNK, 8 * self.config.batch_size)
        self.model.eval()
        with torch.no_grad(), self._autocast():
            if n <= chunk and not classes:
                loss_v, acc = self.loss_fn(self.model(x), y).item(), None
            else:
                loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
                correct = torch.zeros((), dtype=torch.float64, device=self.device)
                for i in range(0, n, chunk):
                    out = self.model(x[i : i + chunk])
                    yb = y[i : i + chunk]
                    loss_sum += self.loss_fn(out, yb).double() * len(yb)
                    if classes:
                        correct += (out.argmax(dim=1) == yb).double().mean() * len(yb)
                if classes:
                    loss_v, acc = (torch.stack([loss_sum, correct]) / n).tolist()
                else:
                    loss_v, acc = (loss_sum / n).item(), None
        self.model.train()
        return loss_v, acc

    def _autocast(self):
        import contextlib

        import torch

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _validate_batches(self, batches) -> tuple[float | None, float | None]:
        """Mean loss over the samples of `batches` through the step (eval, no gradients); accuracy
        when the default step scores class logits (N, C) against targets (N,)."""
        import torch

        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.float64, device=self.device)
        n, scored = 0, True
        self.model.eval()
        try:
            with torch.no_grad(), self._autocast():
                for batch in batches:
                    b = batches_mod.batch_size_of(batch)
                    if self.user_step is not None:
                        loss, _ = steps_mod.split_result(self.user_step(self.model, batch), self.step_where)
                        scored = False
                    else:
                        loss, out, target = steps_mod.forward(self.model, batch, self.loss_fn)
                        if scored and isinstance(out, torch.Tensor) and isinstance(target, torch.Tensor) and \
                                out.dim() == 2 and target.dim() == 1 and not target.is_floating_point():
                            correct += (out.argmax(dim=1) == target).double().sum()
                        else:
                            scored = False
                    loss_sum += loss.double() * b
                    n += b
        finally:
            self.model.train()
        if n == 0:
            return None, None
        if scored:
            loss_v, acc = (torch.stack([loss_sum, correct]) / n).tolist()
            return loss_v, acc
        return (loss_sum / n).item(), None

    def _obey_control(self) -> str | None:
        if self.dist is not None:
            return self._obey_agreed()
        action = self.hooks.control()
        if action != "pause":
            return action
        self.hooks.progress(state="paused")
        self.hooks.emit(ev.StateChanged("paused", self.step))
        while True:
            time.sleep(0.05)
            if self.hooks.stop_requested():
                return "stop"
            action = self.hooks.control()
            if action in ("continue", "stop"):
                break
        self.hooks.emit(ev.StateChanged("running", self.step))
        self.hooks.progress(state="running")
        self._restart_rate_window()
        return action

    def _stop(self, message: str) -> Outcome:
        self.flush()
        if self._diverged_at is not None:  # never checkpoint non-finite weights
            return self._diverge()
        # A stop that lands right after an epoch's checkpoint (or while paused there) finds this
        # step already saved: that checkpoint is the stop's, a second save under its name would fail.
        if self.config.checkpoint_on_stop and self.step > 0 and not self._saved_this_step():
            self.save_checkpoint("stop", {"train_loss": self.last_loss})
        return Outcome("stopped", self.step, self.epoch, self.last_loss, message)

    def _diverge(self) -> Outcome:
        step, kind = self._diverged_at
        return Outcome("diverged", self.step, self.epoch, self.last_loss,
                       f"loss became {kind} at step {step} (try a lower learning rate)")

    # -- checkpoints --------------------------------------------------------------------------
    def training_state(self) -> dict[str, Any]:
        """Everything besides the weights that continuing this run exactly needs, readable with
        `torch.load(weights_only=True)`: optimizer, schedule, every RNG (Python's whole state,
        NumPy's, torch's on the CPU and on each CUDA device), the data order's generator now and
        at the start of this epoch, and where the loop is (batches done in the epoch, the
        epoch's running loss sum)."""

        rng = self._rng_state()
        if self._rank_rngs is not None:  # several processes: every rank's own, rank 0's also at the top
            rng["ranks"] = self._rank_rngs
        return {
            "format": TRAINING_STATE_FORMAT,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "data": self._data_state(),
            "rng": rng,
            "loop": {
                "step": self.step, "epoch": self.epoch, "batch_in_epoch": self._batch_in_epoch,
                "epoch_ended": self._epoch_ended, "steps_per_epoch": self.steps_per_epoch,
                "epoch_loss_sum": self._epoch_sum, "epoch_loss_count": self._epoch_count,
                "last_loss": self.last_loss, "lr_last": self._lr_last,
                "threads": self.threads, "device": str(self.device), "seed": self.config.seed,
                "best": self._best, "bad_validations": self._bad_validations,
                "skipped_steps": self._skipped_total, "accumulate": self.accumulate,
                "world": self.dist.world if self.dist is not None else 1,
            },
        }

    _rank_rngs: list[Any] | None = None
    _rank_memory: list[list[float]] | None = None  # each rank's CUDA (allocated, reserved, peak) MiB at the last chunk  # every rank's RNG state, gathered for the checkpoint being saved

    def _rng_state(self) -> dict[str, Any]:
        """This process's generators: Python's whole state, NumPy's, torch's on the CPU and on
        each CUDA device, and the data order's now and at the start of this epoch."""
        import torch

        py_version, py_state, py_gauss = random.getstate()
        rng: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "data_order": self.order_gen.get_state(),
            "data_order_epoch_start": self._epoch_order_state,
            "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64),
                       "gauss_next": py_gauss},
            "numpy": None,
            "cuda": None,
        }
        try:
            import numpy as np
        except ImportError:
            np = None
        if np is not None:
            kind, keys, pos, has_gauss, cached = np.random.get_state()
            rng["numpy"] = {"kind": str(kind), "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return rng

    def _iterable_with_state(self):
        """The iterable training set whose own state_dict() gives its position (read in this
        process: with workers each holds its own copy, so it cannot be asked)."""
        p = self.pipeline
        if isinstance(p, batches_mod.LoaderBatches) and p.iterable and p.num_workers == 0 and \
                callable(getattr(p.dataset, "state_dict", None)) and callable(getattr(p.dataset, "load_state_dict", None)):
            return p.dataset
        return None

    def _data_state(self):
        ds = self._iterable_with_state()
        return ds.state_dict() if ds is not None else None

    def restore(self, checkpoint: Path, state: dict[str, Any], *, lr: float | None = None) -> None:
        """Continue from a checkpoint of this run: weights, optimizer, schedule, RNGs, position.
        `lr` replaces the recorded learning rate (a diverged run's resume; not exact)."""
        import torch

        loop = state["loop"]
        world = self.dist.world if self.dist is not None else 1
        if int(loop.get("world") or 1) != world:
            saved = int(loop.get("world") or 1)
            raise InvalidRequest(f"checkpoint {checkpoint.name} was saved by {saved} process(es), this run has {world}: "
                                 f"resume it with nproc {saved} (each rank's data share and generators differ)",
                                 field="nproc")
        if loop.get("steps_per_epoch") not in (None, self.steps_per_epoch):
            raise InvalidRequest(f"checkpoint {checkpoint.name} was saved with {loop['steps_per_epoch']} steps per "
                                 f"epoch, this run's data gives {self.steps_per_epoch}: its data changed", field="data")
        self.model.load_state_dict(checkpoints.load_weights(checkpoint))
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if lr is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
                if "initial_lr" in group:
                    group["initial_lr"] = lr
            if self.scheduler is not None:
                self.scheduler.base_lrs = [lr for _ in self.optimizer.param_groups]
        # The schedule was built for the run's (possibly new) length; only its step count is restored.
        rng = state["rng"]
        if self.dist is not None:
            rng = rng["ranks"][self.dist.rank]
        torch.set_rng_state(rng["torch"])
        self.order_gen.set_state(rng["data_order"])
        self._epoch_order_state = rng["data_order_epoch_start"]
        py = rng["python"]
        random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
        if rng.get("numpy") is not None:
            try:
                import numpy as np
            except ImportError:
                np = None
            if np is not None:
                r = rng["numpy"]
                np.random.set_state((r["kind"], r["keys"].numpy().astype("uint32"), r["pos"], r["has_gauss"],
                                     r["cached_gaussian"]))
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"][: torch.cuda.device_count()])
        self.step, self.epoch = int(loop["step"]), int(loop["epoch"])
        self._batch_in_epoch = int(loop["batch_in_epoch"])
        self._epoch_ended = bool(loop.get("epoch_ended", self._batch_in_epoch >= self.steps_per_epoch))
        self._epoch_sum, self._epoch_count = float(loop["epoch_loss_sum"]), int(loop["epoch_loss_count"])
        self.last_loss = loop.get("last_loss")
        self._lr_last = loop.get("lr_last") if lr is None else None
        self._pending_first = self.step + 1
        self._last_saved_step = self.step
        self._best, self._bad_validations = loop.get("best"), int(loop.get("bad_validations") or 0)
        self._skipped_total = int(loop.get("skipped_steps") or 0)
        if loop.get("accumulate", 1) != self.accumulate:
            raise InvalidRequest(f"checkpoint {checkpoint.name} was saved with accumulate {loop.get('accumulate', 1)}, "
                                 f"this run has {self.accumulate}: its position in the epoch would differ",
                                 field="accumulate")
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.resume_note = self._resume_note(state)

    def _resume_note(self, state) -> str:
        """Which kind of resume this is, for the log."""
        p, mid = self.pipeline, not self._epoch_ended and self._batch_in_epoch > 0
        if isinstance(p, batches_mod.MemoryBatches):
            return (f"in-memory data: epoch {self.epoch}'s order drawn again, {self._batch_in_epoch} step(s) skipped "
                    "(exact)" if mid else "in-memory data at an epoch boundary (exact)")
        if not p.iterable:
            return (f"DataLoader over a map-style set: epoch {self.epoch}'s order drawn again from (seed, epoch), "
                    f"{self._batch_in_epoch * self.accumulate} batch(es) skipped in the sampler (exact)"
                    if mid else "DataLoader at an epoch boundary (exact)")
        if not mid:
            return "iterable dataset at an epoch boundary (exact)"
        ds = self._iterable_with_state()
        if ds is not None and state.get("data") is not None:
            ds.load_state_dict(state["data"])
            self._data_state_restored = True
            return "iterable dataset mid-epoch through its own state_dict() (exact as far as it is)"
        return (f"iterable dataset mid-epoch without a state_dict(): its first {self._batch_in_epoch * self.accumulate} "
                "batch(es) of the epoch are read again and dropped (exact only when its order depends on the seeds "
                "alone)")

    def _checkpoint_name(self) -> str:
        return f"step-{self.step:08d}"

    def _saved_this_step(self) -> bool:
        return self._last_saved_step == self.step

    def save_checkpoint(self, reason: str, metrics: dict[str, Any]):
        """Hand a checkpoint to the background writer: training pauses only for the wait for the
        previous save and the copy to host memory. `ev.Checkpointed` is emitted (from the writer's
        thread) once it is complete; a background error is raised by the next save or by run()."""
        if self.dist is not None:  # every rank takes part (its RNG state); rank 0 alone writes
            if self._last_saved_step == self.step:
                return None
            self._rank_rngs = self.dist.gather_objects(self._rng_state())
            if not self.dist.leader:
                self._last_saved_step = self.step
                return None
        if self.checkpoints_dir is None:
            return None
        name = self._checkpoint_name()
        if self.ckpt_writer is None:
            cfg = self.config
            self.ckpt_writer = checkpoints.CheckpointWriter(
                self.checkpoints_dir, keep_last=cfg.keep_checkpoints, keep_best=cfg.keep_best,
                best_metric=cfg.best_metric, on_saved=self._checkpointed)
        elif self.ckpt_writer.last_name == name:
            return None  # this step's checkpoint is written or being written (a stop right after an epoch's)
        self._last_saved_step = self.step
        self.hooks.progress(state="saving")
        ticket = self.ckpt_writer.save(
            name, weights=self.model.state_dict(), training_state=self.training_state(),
            meta={
                "step": self.step, "epoch": self.epoch, "reason": reason, "run_id": self.run_id,
                "metrics": {k: v for k, v in metrics.items() if v is not None},
                "model_spec": self.spec.to_json(), "run_config": self.config.to_json(),
                "data": self.data.spec or self.data_spec, "loss": self.loss_kind,
                "target_kind": self.data.target_kind, "num_classes": self.data.num_classes,
                "num_params": specs.num_params(self.model),
                "threads": self.threads, "device": str(self.device),
                "steps_per_epoch": self.steps_per_epoch, "training_state_format": TRAINING_STATE_FORMAT,
            },
        )
        self.hooks.progress(state="running")
        self._restart_rate_window()
        return ticket

    def _checkpointed(self, result) -> None:
        """The writer thread's report of a complete checkpoint (hooks.emit is thread-safe)."""
        r = result
        self.hooks.emit(ev.Checkpointed(
            r.name, r.step, r.meta.get("epoch", 0), r.meta.get("reason", ""), pause_s=round(r.pause_s, 6),
            wait_s=round(r.wait_s, 6), write_s=round(r.write_s, 6), hash_s=round(r.hash_s, 6),
            fsync_s=round(r.fsync_s, 6), bytes=r.bytes,
        ))

    def _close_checkpoints(self, *, raise_error: bool = True) -> None:
        """Wait for the save in flight (shown as "saving") and stop the writer; raise its error."""
        if self.ckpt_writer is None:
            return
        writer, self.ckpt_writer = self.ckpt_writer, None
        if writer.busy():
            self.hooks.progress(state="saving")
        writer.close(raise_error=raise_error)


def read_training_state(checkpoint: Path) -> dict[str, Any]:
    """A torchdeck checkpoint's training state, for a resume, through the trust gate
    (weights_only, nothing beyond tensors, numbers and containers: nothing in it runs)."""
    from torchdeck import trust
    from torchdeck.errors import TorchdeckError

    path = Path(checkpoint) / checkpoints.TRAINING_STATE
    if not path.exists():
        raise Corrupt(f"checkpoint {checkpoint} has no {checkpoints.TRAINING_STATE}: it cannot be resumed from",
                      field="checkpoint")
    try:
        state = trust.torch_load(path, kind="training_state", field="checkpoint")
    except TorchdeckError:
        raise
    except Exception as e:
        raise Corrupt(f"checkpoint {checkpoint}: {checkpoints.TRAINING_STATE} cannot be read: {e}",
                      field="checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != TRAINING_STATE_FORMAT or not isinstance(state.get("loop"), dict):
        raise Corrupt(f"checkpoint {checkpoint} was written before exact resume existed (training state format "
                      f"{state.get('format', 1) if isinstance(state, dict) else '?'}): it cannot be resumed from",
                      field="checkpoint")
    return state
