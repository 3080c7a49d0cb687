"""Checkpoints written in the background: the training loop pauses only to copy its state to host
memory; one writer thread writes the files (hashing them as they are written, not in a second
pass), fsyncs them, writes meta.json, renames the temporary into place, fsyncs the parent, and
only then applies retention (new before old).

    writer = CheckpointWriter(root, keep_last=3, keep_best=1, best_metric="val_loss", on_saved=...)
    ticket = writer.save("step-00000100", weights=model.state_dict(), training_state=..., meta=...)
    ...                      # training goes on while the thread writes
    writer.close()           # waits for the save in flight; raises its error

At most one save is in flight: a second `save` waits for it (the wait is measured and reported).
An error in the background (a full disk, EIO) is raised by the next `save`, `wait` or `close`;
its temporary is removed, the previous checkpoint is untouched, and nothing partial is listed.

The on-disk format is torchdeck's checkpoint directory (formats.torchdeck_dir): model.safetensors
is written here, byte for byte in the safetensors format (8-byte little-endian header length, a
JSON header padded with spaces to a multiple of 8, the raw tensor bytes), so that it can be
hashed on its way to the disk.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torchdeck.errors import NoSpace, OperationFailed, from_os_error
from torchdeck.fsutil import fsync_dir

from .formats.torchdeck_dir import FORMAT, FORMAT_VERSION, META, TRAINING_STATE, WEIGHTS

TMP_MARK = ".tmp-"
REMOVING_MARK = ".removing-"
CHUNK = 8 << 20  # bytes per os.write and per sha256 update
SMALL_WRITE = 64 << 10  # writes below this are gathered (torch.save writes many small records)
GATHER = 1 << 20
EARLY_WRITEBACK = 64 << 20  # ask the kernel to start writing back every this many bytes
MARGIN = 4 << 20  # meta.json, safetensors header, zip records, directory entries

# torch dtype name -> safetensors dtype
ST_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
             "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
             "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "uint16": "U16", "uint32": "U32",
             "uint64": "U64", "complex64": "C64"}
# The order safetensors' own writer lays tensors out in (its dtype enum, descending; then by name):
# the same order makes the same bytes, and every tensor starts aligned to its element size.
ST_ORDER = ("U64", "I64", "F64", "C64", "F32", "U32", "I32", "BF16", "F16", "U16", "I16", "F8_E4M3", "F8_E5M2",
            "I8", "U8", "BOOL")


@dataclass
class SaveResult:
    """One completed checkpoint and what it cost. `copy_s` + `wait_s` is the training loop's pause;
    write, hash and fsync happened in the background (write and hash overlap)."""

    name: str
    path: Path
    step: int | None
    copy_s: float
    wait_s: float
    write_s: float
    hash_s: float
    fsync_s: float
    bytes: int
    removed: list[Path] = field(default_factory=list)
    total_s: float = 0.0  # from the handover to the writer thread to the end of retention
    meta: dict[str, Any] = field(default_factory=dict)  # the caller's meta (step, epoch, reason, metrics...)

    @property
    def pause_s(self) -> float:
        return self.copy_s + self.wait_s


class SaveTicket:
    """A save handed to the writer: what the caller paused for, and the result once written."""

    def __init__(self, name: str, step: int | None, wait_s: float, copy_s: float):
        self.name, self.step, self.wait_s, self.copy_s = name, step, wait_s, copy_s
        self._done = threading.Event()
        self._result: SaveResult | None = None
        self._error: BaseException | None = None

    @property
    def pause_s(self) -> float:
        return self.wait_s + self.copy_s

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> SaveResult:
        """The SaveResult once written; raises the save's error. (The writer also raises it from
        its next save/wait/close, unless it was taken here first.)"""
        if not self._done.wait(timeout):
            raise TimeoutError(f"checkpoint {self.name} is still being written")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


# -- host copies -------------------------------------------------------------------------------
def host_copy_tree(obj: Any) -> Any:
    """A copy of `obj` whose every tensor (in nested dicts, lists and tuples) is a contiguous
    host tensor that training can no longer change: a CPU tensor is cloned (parameters and
    optimizer moments are updated in place), a CUDA one lands in pinned memory through a
    non-blocking copy; one synchronize at the end (the caller must not change them before)."""
    import torch

    cuda = []

    def walk(o: Any) -> Any:
        if isinstance(o, torch.Tensor):
            t = o.detach()
            if t.device.type == "cuda":
                dst = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                dst.copy_(t, non_blocking=True)
                cuda.append(t.device)
                return dst
            if t.device.type != "cpu":
                return t.to("cpu", copy=True).contiguous()
            return t.clone(memory_format=torch.contiguous_format)
        if isinstance(o, dict):
            items = {k: walk(v) for k, v in o.items()}
            if type(o) is dict:
                return items
            try:
                return type(o)(items)  # an OrderedDict stays one
            except TypeError:
                return items
        if isinstance(o, list):
            return [walk(v) for v in o]
        if isinstance(o, tuple) and not hasattr(o, "_fields"):
            return tuple(walk(v) for v in o)
        return o

    out = walk(obj)
    for dev in set(cuda):
        torch.cuda.synchronize(dev)
    return out


def tensor_bytes(obj: Any) -> int:
    """Bytes held by every tensor in nested dicts, lists and tuples (what writing them needs)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


# -- which disk --------------------------------------------------------------------------------
def mount_point(path: Path) -> Path:
    """The mount point holding `path` (walking up while the device stays the same)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        dev = p.stat().st_dev
        while p != p.parent and p.parent.stat().st_dev == dev:
            p = p.parent
    except OSError:
        pass
    return p


def describe_disk(path: Path) -> str:
    """'/data (/dev/nvme0n1p2)': the mount point holding `path` and, when known, its device."""
    mount = mount_point(path)
    source = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                if len(parts) > 4 and parts[4] == str(mount) and " - " in line:
                    after = line.split(" - ", 1)[1].split()
                    source = after[1] if len(after) > 1 else after[0]
    except OSError:
        pass
    return f"{mount} ({source})" if source and source != str(mount) else str(mount)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def no_space(root: Path, name: str, need: int) -> NoSpace:
    from torchdeck.fmt import fmt_bytes

    try:
        free = fmt_bytes(free_bytes(root))
    except OSError:
        free = "?"
    return NoSpace(f"no space left on {describe_disk(root)} writing checkpoint {name}: {free} free, "
                   f"about {fmt_bytes(need)} needed", field="checkpoint")


# -- writing with a hash -----------------------------------------------------------------------
class _Hasher:
    """One thread that hashes while the writer thread writes (hashlib and os.write both release
    the GIL on large buffers, so the two overlap)."""

    def __init__(self):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ckpt-hash")

    def submit(self, fn, *args):
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class HashingFile:
    """A write-only file that sha256-hashes exactly the bytes that pass through `write`, the
    hashing pipelined with the writing. A file-like object for torch.save too."""

    def __init__(self, path: Path, hasher: _Hasher | None = None):
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
        self.sha = hashlib.sha256()
        self.size = 0
        self.write_s = 0.0
        self.hash_s = 0.0
        self.fsync_s = 0.0
        self._hasher = hasher
        self._gather = bytearray()
        self._advised = 0  # bytes already handed to early writeback

    # file protocol (torch.save needs write and flush)
    def write(self, data) -> int:
        mv = memoryview(data)
        if mv.format != "B" or mv.ndim != 1:
            mv = mv.cast("B")
        n = mv.nbytes
        if n < SMALL_WRITE:
            self._gather += mv
            if len(self._gather) >= GATHER:
                self._flush_gathered()
            return n
        self._flush_gathered()
        self._write_hashed(mv)
        return n

    def flush(self) -> None:
        self._flush_gathered()

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size + len(self._gather)

    def _flush_gathered(self) -> None:
        if self._gather:
            buf, self._gather = self._gather, bytearray()
            self._write_hashed(memoryview(buf))

    def _hash(self, mv: memoryview) -> None:
        t = time.perf_counter()
        for off in range(0, len(mv), CHUNK):
            self.sha.update(mv[off : off + CHUNK])
        self.hash_s += time.perf_counter() - t

    def _write_hashed(self, mv: memoryview) -> None:
        fut = self._hasher.submit(self._hash, mv) if self._hasher is not None and len(mv) > CHUNK else None
        if fut is None:
            self._hash(mv)
        try:
            t = time.perf_counter()
            for off in range(0, len(mv), CHUNK):
                piece = mv[off : off + CHUNK]
                while piece:
                    k = os.write(self.fd, piece)
                    piece = piece[k:]
                self.size += min(CHUNK, len(mv) - off)
                self._early_writeback()
            self.write_s += time.perf_counter() - t
        finally:
            if fut is not None:
                fut.result()  # the buffer must outlive its hashing

    def _early_writeback(self) -> None:
        """Start writing back what is written so far, so the final fsync has little left: with
        POSIX_FADV_DONTNEED Linux starts writeback of the range's dirty pages without waiting,
        and drops the checkpoint's clean pages from the page cache (nobody reads them soon)."""
        if self.size - self._advised >= EARLY_WRITEBACK and hasattr(os, "posix_fadvise"):
            try:
                os.posix_fadvise(self.fd, self._advised, self.size - self._advised, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass
            self._advised = self.size

    def finish(self) -> dict[str, Any]:
        """Flush, fsync; {"size", "sha256"} as meta.json records them."""
        self._flush_gathered()
        t = time.perf_counter()
        os.fsync(self.fd)
        self.fsync_s += time.perf_counter() - t
        return {"size": self.size, "sha256": self.sha.hexdigest()}

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_safetensors(f: HashingFile, weights: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    """The safetensors format, written through `f`: each name's tensor once (host copies, so
    tied tensors are written under each name), laid out as safetensors' save_file does."""
    import torch

    items = []
    for name, t in weights.items():
        if not isinstance(t, torch.Tensor):
            raise OperationFailed(f"weight {name!r} is not a tensor")
        dt = ST_DTYPES.get(str(t.dtype).removeprefix("torch."))
        if dt is None:
            raise OperationFailed(f"weight {name!r} has dtype {t.dtype}, which safetensors cannot hold")
        if t.device.type != "cpu":
            t = t.to("cpu")
        items.append((name, t.contiguous()))
    rank = {d: i for i, d in enumerate(ST_ORDER)}
    items.sort(key=lambda kv: (rank[ST_DTYPES[str(kv[1].dtype).removeprefix("torch.")]], kv[0]))
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, t in items:
        n = t.numel() * t.element_size()
        header[name] = {"dtype": ST_DTYPES[str(t.dtype).removeprefix("torch.")], "shape": list(t.shape),
                        "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    f.write(struct.pack("<Q", len(raw)) + raw)
    for _, t in items:
        if t.numel():
            f.write(t.reshape(-1).view(torch.uint8).numpy())


# -- the writer ----------------------------------------------------------------------------------
@dataclass
class _Job:
    name: str
    weights: dict[str, Any]
    training_state: Any
    meta: dict[str, Any]
    need: int
    ticket: SaveTicket
    handed: float = 0.0


class CheckpointWriter:
    """Writes checkpoints under `root` in one background thread (see the module's docstring).

    keep_last: keep the newest N complete checkpoints (None: keep all); keep_best: also keep the
    best K by `best_metric` from each checkpoint's meta "metrics" (lowest for names with "loss",
    highest for "acc"/"accuracy", else lowest; a checkpoint without it never counts as best).
    on_saved(SaveResult) is called from the writer thread once a checkpoint is complete and
    retention is applied; an exception it raises is the save's error."""

    def __init__(self, root: Path, *, keep_last: int | None, keep_best: int = 0, best_metric: str | None = "val_loss",
                 on_saved: Callable[[SaveResult], None] | None = None, margin: int = MARGIN):
        self.root = Path(root)
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.best_metric = best_metric
        self.on_saved = on_saved
        self.margin = margin
        self._cond = threading.Condition()
        self._job: _Job | None = None  # handed to the thread, not yet done
        self._error: BaseException | None = None  # a background error nobody has raised yet
        self._thread: threading.Thread | None = None
        self._closed = False
        self._hasher: _Hasher | None = None
        self.last_name: str | None = None  # the last save handed over (written or in flight)

    # -- the caller's side ---------------------------------------------------------------------
    def save(self, name: str, *, weights: dict[str, Any], training_state: Any, meta: dict[str, Any]) -> SaveTicket:
        """Wait for the save in flight (raising its error), copy `weights` and every tensor of
        `training_state` to host memory, hand them to the writer thread and return: the caller
        may change its tensors from then on. Raises NoSpace without writing when the disk cannot
        hold the checkpoint."""
        if self._closed:
            raise OperationFailed("the checkpoint writer is closed")
        t0 = time.perf_counter()
        self._wait_idle()
        self._raise_pending()
        wait_s = time.perf_counter() - t0
        self._check_name(name)
        t1 = time.perf_counter()
        weights = host_copy_tree(dict(weights))
        training_state = host_copy_tree(training_state)
        copy_s = time.perf_counter() - t1
        need = self._check_space(name, weights, training_state)
        ticket = SaveTicket(name, meta.get("step"), wait_s, copy_s)
        job = _Job(name, weights, training_state, dict(meta), need, ticket, handed=time.perf_counter())
        with self._cond:
            self._ensure_thread()
            self._job = job
            self.last_name = name
            self._cond.notify_all()
        return ticket

    def write_now(self, name: str, *, weights: dict[str, Any], training_state: Any, meta: dict[str, Any]) -> SaveResult:
        """The same save in the calling thread, without copies (the caller does not change the
        tensors meanwhile): what `store.save` does."""
        self._wait_idle()
        self._raise_pending()
        self._check_name(name)
        need = self._check_space(name, weights, training_state)
        ticket = SaveTicket(name, meta.get("step"), 0.0, 0.0)
        job = _Job(name, weights, training_state, dict(meta), need, ticket, handed=time.perf_counter())
        self.last_name = name
        own_hasher = self._hasher is None
        if own_hasher:
            self._hasher = _Hasher()
        try:
            result = self._write(job)
        finally:
            if own_hasher:
                self._hasher.close()
                self._hasher = None
        if self.on_saved is not None:
            self.on_saved(result)
        return result

    def busy(self) -> bool:
        with self._cond:
            return self._job is not None

    def raise_if_failed(self) -> None:
        """Raise a background error not yet raised, without waiting (the loop asks at each chunk,
        so a failed save ends the run within a second, not at the next checkpoint)."""
        self._raise_pending()

    def wait(self) -> SaveResult | None:
        """Block until the save in flight is written; raise a background error not yet raised."""
        self._wait_idle()
        self._raise_pending()
        return None

    def close(self, *, raise_error: bool = True) -> None:
        """Wait for the save in flight, stop the thread; raise a background error not yet raised
        (unless raise_error is False: the caller is already failing for another reason)."""
        try:
            self._wait_idle()
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            if self._thread is not None:
                self._thread.join()
            if self._hasher is not None:
                self._hasher.close()
                self._hasher = None
        if raise_error:
            self._raise_pending()
        else:
            self._error = None

    # -- checks ----------------------------------------------------------------------------------
    def _check_name(self, name: str) -> None:
        if not name or "/" in name or name.startswith("."):
            raise OperationFailed(f"bad checkpoint name {name!r}")
        if (self.root / name).exists():
            raise OperationFailed(f"checkpoint {self.root / name} already exists", code="exists")

    def _check_space(self, name: str, weights: Any, training_state: Any) -> int:
        """Weights, every tensor of the training state (Adam's moments are two more copies of the
        weights) and RNG states, plus a margin; NoSpace naming the disk when it does not fit."""
        need = tensor_bytes(weights) + tensor_bytes(training_state) + self.margin
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            free = free_bytes(self.root)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise no_space(self.root, name, need) from None
            raise from_os_error(e, f"cannot write checkpoint {name} in {self.root}", field="checkpoint") from None
        if free < need:
            raise no_space(self.root, name, need)
        return need

    def _raise_pending(self) -> None:
        with self._cond:
            err, self._error = self._error, None
        if err is not None:
            raise err

    def _wait_idle(self) -> None:
        with self._cond:
            while self._job is not None:
                self._cond.wait()

    # -- the thread ------------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._hasher = _Hasher()
            self._thread = threading.Thread(target=self._serve, name="ckpt-writer", daemon=True)
            self._thread.start()

    def _serve(self) -> None:
        while True:
            with self._cond:
                while self._job is None and not self._closed:
                    self._cond.wait()
                if self._job is None:
                    return
                job = self._job
            try:
                result = self._write(job)
                if self.on_saved is not None:
                    self.on_saved(result)
                job.ticket._result = result
            except BaseException as e:  # noqa: BLE001  (handed to the training loop)
                job.ticket._error = e
                with self._cond:
                    self._error = e
            finally:
                job.weights = job.training_state = None  # free the host copies now
                job.ticket._done.set()
                with self._cond:
                    self._job = None
                    self._cond.notify_all()

    def _write(self, job: _Job) -> SaveResult:
        """Write, hash, fsync, rename, fsync the parent, apply retention. On any error the
        temporary is removed and a TorchdeckError naming the cause is raised."""
        import torch

        root, name = self.root, job.name
        tmp = root / f".{name}{TMP_MARK}{os.getpid()}"
        final = root / name
        files: dict[str, Any] = {}
        write_s = hash_s = fsync_s = 0.0
        try:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            for fname in (WEIGHTS, TRAINING_STATE):
                with HashingFile(tmp / fname, self._hasher) as f:
                    if fname == WEIGHTS:
                        write_safetensors(f, job.weights)
                    else:
                        torch.save(job.training_state, f)
                    files[fname] = f.finish()
                    write_s, hash_s, fsync_s = write_s + f.write_s, hash_s + f.hash_s, fsync_s + f.fsync_s
            full_meta = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "torch_version": torch.__version__,
                "created": time.time(),
                **job.meta,
                "files": files,
            }
            t = time.perf_counter()
            with open(tmp / META, "w") as mf:
                json.dump(full_meta, mf, indent=1, sort_keys=True, allow_nan=False)
                mf.flush()
                os.fsync(mf.fileno())
            fsync_dir(tmp)
            os.rename(tmp, final)
            fsync_dir(root)
            fsync_s += time.perf_counter() - t
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError):
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise no_space(root, name, job.need) from e
                raise from_os_error(e, f"writing checkpoint {name} in {root}", field="checkpoint") from e
            raise
        removed = []
        if self.keep_last is not None:
            removed = apply_retention(root, self.keep_last, keep_best=self.keep_best,
                                      best_metric=self.best_metric, protect=name)
        size = sum(r["size"] for r in files.values())
        return SaveResult(name, final, job.meta.get("step"), job.ticket.copy_s, job.ticket.wait_s, write_s, hash_s,
                          fsync_s, size, removed, total_s=time.perf_counter() - job.handed, meta=job.meta)


# -- retention -----------------------------------------------------------------------------------
def metric_direction(metric: str) -> int:
    """+1 when higher is better (accuracy), -1 when lower is (loss, and anything else)."""
    m = metric.lower()
    if "loss" in m:
        return -1
    if "accuracy" in m or "acc" in m.replace("-", "_").split("_") or m.endswith("acc"):
        return 1
    return -1


def retained(infos: list, keep_last: int, keep_best: int = 0, best_metric: str | None = None) -> set[str]:
    """Names to keep among complete checkpoints (oldest first): the newest `keep_last` and the
    best `keep_best` by `best_metric` (checkpoints without a finite value for it never count)."""
    import math

    keep = {i.path.name for i in (infos[-keep_last:] if keep_last > 0 else [])}
    if keep_best > 0 and best_metric:
        sign = metric_direction(best_metric)
        scored = []
        for i in infos:
            v = (i.metrics or {}).get(best_metric)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                scored.append((-sign * v, -(i.step or 0), i.path.name))  # ties: the newer wins
        keep |= {n for _, _, n in sorted(scored)[:keep_best]}
    return keep


def apply_retention(root: Path, keep: int, *, keep_best: int = 0, best_metric: str | None = None,
                    protect: str | None = None) -> list[Path]:
    """Remove complete checkpoints outside the newest `keep` and the best `keep_best` (called
    only after the newest one is complete). A removal renames first, so a half-deleted
    checkpoint is never listed."""
    from .store import list_checkpoints

    complete = list_checkpoints(root)
    keep_names = retained(complete, keep, keep_best, best_metric)
    if protect:
        keep_names.add(protect)
    removed = []
    for info in complete:
        if info.path.name in keep_names:
            continue
        trash = info.path.with_name(f".{info.path.name}{REMOVING_MARK}{os.getpid()}")
        try:
            os.rename(info.path, trash)
        except FileNotFoundError:
            continue  # removed meanwhile (runs rm)
        shutil.rmtree(trash, ignore_errors=True)
        removed.append(info.path)
    return removed
