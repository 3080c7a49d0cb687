"""Checkpoint operations on any format: verify, diff, convert, load-check, and the integrity
checks export and resume make first (`check_hashes`, `check_spec_fits`).

Checkpoints are read only through `torchdeck.checkpoints.formats` (`inspect`, `load_weights`),
except that a safetensors file (or a torchdeck directory's model.safetensors) is streamed one
tensor at a time with `safe_open`, after `inspect` has vouched for it.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Iterator

from torchdeck.errors import (
    Corrupt,
    Exists,
    InvalidRequest,
    NotFound,
    TorchdeckError,
    Unreadable,
    from_os_error,
)
from torchdeck.fsutil import remove_dead_temporaries

from . import formats
from .formats import dcp, hf_folder, safetensors_file, torchdeck_dir

PREFIXES = ("model.", "module.", "_orig_mod.")
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
TARGETS = ("safetensors", "pt")
CHUNK = 1 << 20  # elements compared at a time by diff (4 MiB of float32)


def _gone(path: Path) -> NotFound:
    return NotFound(f"checkpoint {path} no longer exists (removed, perhaps by retention)", field="path")


def _safetensors_of(path: Path, info: formats.CheckpointInfo) -> Path | None:
    if info.format == torchdeck_dir.FORMAT:
        return path / torchdeck_dir.WEIGHTS
    if info.format == safetensors_file.NAME:
        return path
    return None


def iter_tensors(path: Path, info: formats.CheckpointInfo | None = None, *,
                 trust: bool = False) -> Iterator[tuple[str, Any]]:
    """(name, CPU tensor), one at a time where the format allows (safetensors), else from load_weights.
    `trust` (an explicit user action) allows full unpickling of a torch file."""
    path = Path(path)
    info = info or formats.inspect(path, trust=trust)
    st = _safetensors_of(path, info)
    if st is None:
        yield from formats.load_weights(path, trust=trust).items()
        return
    try:
        with SafetensorsReader(st) as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
    except FileNotFoundError:
        raise _gone(path) from None
    except OSError as e:
        raise from_os_error(e, f"cannot read {path}", field="path") from None
    except TorchdeckError:
        raise
    except Exception as e:
        raise Corrupt(f"{path}: tensors cannot be read: {e}", field="path") from None


def tensors_named(path: Path, names: list[str], *, trust: bool = False) -> Iterator[tuple[str, Any]]:
    """(name, CPU tensor) for just these names, in their order: read one at a time from a
    safetensors file (a subtree of a big model reads only its own bytes), else picked from
    load_weights. A name the checkpoint lacks is skipped."""
    path = Path(path)
    info = formats.inspect(path, trust=trust)
    st = _safetensors_of(path, info)
    if st is None:
        weights = formats.load_weights(path, trust=trust)
        for name in names:
            if name in weights:
                yield name, weights[name]
        return
    try:
        with SafetensorsReader(st) as f:
            have = set(f.keys())
            for name in names:
                if name in have:
                    yield name, f.get_tensor(name)
    except FileNotFoundError:
        raise _gone(path) from None
    except OSError as e:
        raise from_os_error(e, f"cannot read {path}", field="path") from None


class SafetensorsReader:
    """One tensor at a time from a safetensors file by plain reads at its offsets: unlike an mmap
    (safe_open), the pages read do not stay resident, so memory is the tensors held, no more."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.f = open(self.path, "rb")
        try:
            (n,) = struct.unpack("<Q", self.f.read(8))
            self.size = os.fstat(self.f.fileno()).st_size
            if n > min(self.size - 8, safetensors_file.MAX_HEADER):
                raise Corrupt(f"{self.path}: not a safetensors file (header length {n} is impossible)", field="path")
            header = json.loads(self.f.read(n))
        except (ValueError, struct.error):
            self.f.close()
            raise Corrupt(f"{self.path}: not a safetensors file (its header is not JSON)", field="path") from None
        except BaseException:
            self.f.close()
            raise
        self.base = 8 + n
        self.entries = {k: v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}

    def __enter__(self) -> "SafetensorsReader":
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape_dtype(self, name: str) -> tuple[list[int], str]:
        dtype, shape, _, _ = self._entry(name)
        return shape, str(dtype).removeprefix("torch.")

    def _entry(self, name: str):
        import torch

        rec = self.entries[name]
        try:
            dtype = getattr(torch, safetensors_file._DTYPES[rec["dtype"]])
            shape = [int(d) for d in rec["shape"]]
            start, end = (int(o) for o in rec["data_offsets"])
        except (KeyError, TypeError, ValueError, AttributeError):
            raise Corrupt(f"{self.path}: tensor {name} has a damaged header entry", field="path") from None
        n = _numel(shape)
        item = torch.empty((), dtype=dtype).element_size()
        if end - start != n * item or start < 0 or self.base + end > self.size:
            raise Corrupt(f"{self.path}: tensor {name} lies outside the file or has the wrong size", field="path")
        return dtype, shape, start, end

    def _read(self, name: str, offset: int, nbytes: int, dtype):
        import torch

        buf = bytearray(nbytes)
        self.f.seek(offset)
        if self.f.readinto(buf) != nbytes:
            raise Corrupt(f"{self.path}: tensor {name} is cut short", field="path")
        return torch.frombuffer(buf, dtype=dtype)

    def chunks(self, name: str, elems: int):
        """The tensor flattened, `elems` elements at a time."""
        import torch

        dtype, shape, start, end = self._entry(name)
        step = elems * torch.empty((), dtype=dtype).element_size()
        for off in range(start, end, step):
            yield self._read(name, self.base + off, min(step, end - off), dtype)

    def get_tensor(self, name: str):
        import torch

        dtype, shape, start, end = self._entry(name)
        if start == end:
            return torch.empty(shape, dtype=dtype)
        return self._read(name, self.base + start, end - start, dtype).reshape(shape)


# -- integrity: hashes and the spec's size ------------------------------------------------------
def hash_problems(path: Path) -> list[str]:
    """sha256 and size of each file against meta.json (torchdeck directories; [] for other formats,
    which record no hashes). NotFound when the checkpoint is gone, not a list of damage."""
    path = Path(path)
    if not os.path.lexists(path):
        raise _gone(path)
    if not path.is_dir():
        return []
    if not (path / torchdeck_dir.META).exists() and (hf_folder.claims(path) or dcp.claims(path)):
        return []  # a Hugging Face or torch.distributed folder: it records no hashes to check
    problems = torchdeck_dir.verify(path)
    if problems and not os.path.lexists(path):  # removed while we read it
        raise _gone(path)
    return problems


def check_hashes(path: Path, *, field: str = "checkpoint") -> None:
    """Corrupt unless a torchdeck checkpoint's files match their recorded sha256 and size: the
    check export runs before using one (and resume can run before trusting one)."""
    problems = hash_problems(path)
    if problems:
        raise Corrupt(f"{path}: damaged: {'; '.join(problems)} (ckpt verify lists every problem)", field=field)


def check_spec_fits(spec, info: formats.CheckpointInfo, *, import_root=None, field: str = "checkpoint") -> None:
    """Build the spec on the meta device and compare its parameters with the weights' shapes
    before anything is allocated: a meta.json whose spec disagrees with its weights (hidden=300000
    for a 64-wide MLP) is Corrupt, not a 360 GB allocation."""
    from torchdeck.fmt import fmt_count
    from torchdeck.models import specs

    model, where, _ = specs.build_on_meta(spec, import_root=import_root, field=field)
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    del model
    have = {t.name: list(t.shape) for t in info.tensors}
    n_spec = sum(_numel(s) for s in expected.values())
    n_have = sum(_numel(s) for s in have.values())
    if n_spec != n_have:  # names and shapes are load_state_dict's to tell
        raise Corrupt(f"{info.path}: its model spec {spec.describe()} has {fmt_count(n_spec)} parameters but the "
                      f"weights hold {fmt_count(n_have)}; meta.json and the weights disagree", field=field)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


# -- verify -------------------------------------------------------------------------------------
def verify(path: Path, *, trust: bool = False) -> dict[str, Any]:
    """Every problem with a checkpoint: hashes and sizes (torchdeck), whether its tensors read,
    NaN or inf per tensor. `ok` is True when there is none. `trust`: see iter_tensors."""
    import torch

    path = Path(path)
    problems = hash_problems(path)
    nonfinite = []
    checked = 0
    try:
        info = formats.inspect(path, trust=trust)
        for name, t in iter_tensors(path, info, trust=trust):
            checked += 1
            if t.is_floating_point() or t.is_complex():
                nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
                if nan or inf:
                    nonfinite.append({"name": name, "nan": nan, "inf": inf})
                    problems.append(f"tensor {name}: {nan} NaN, {inf} inf")
    except NotFound:
        raise _gone(path) from None
    except TorchdeckError as e:
        if not os.path.lexists(path):
            raise _gone(path) from None
        problems.append(f"cannot be loaded: {e}")
        info = None
    return {"path": str(path), "format": info.format if info else None, "ok": not problems,
            "problems": problems, "tensors_checked": checked, "nonfinite": nonfinite}


# -- diff ---------------------------------------------------------------------------------------
class _Side:
    """One checkpoint being diffed: a safetensors file read in chunks at its offsets, or any other
    format's tensors in memory (pickles cannot be read in parts)."""

    def __init__(self, path: Path, trust: bool = False):
        self.path = path
        info = formats.inspect(path, trust=trust)
        st = _safetensors_of(path, info)
        self.reader = SafetensorsReader(st) if st is not None else None
        self.weights = None if self.reader else formats.load_weights(path, trust=trust)

    def names(self) -> list[str]:
        return self.reader.keys() if self.reader else list(self.weights)

    def describe(self, name: str) -> tuple[list[int], str]:
        if self.reader:
            return self.reader.shape_dtype(name)
        t = self.weights[name]
        return list(t.shape), str(t.dtype).removeprefix("torch.")

    def chunks(self, name: str):
        if self.reader:
            yield from self.reader.chunks(name, CHUNK)
        else:
            flat = self.weights[name].reshape(-1)
            for i in range(0, flat.numel(), CHUNK):
                yield flat[i:i + CHUNK]

    def close(self) -> None:
        if self.reader:
            self.reader.f.close()


def diff(a: Path, b: Path, *, trust_a: bool = False, trust_b: bool = False) -> dict[str, Any]:
    """Keys only in A or B, shape/dtype changes, max abs difference per common tensor (largest
    first). Safetensors (and torchdeck directories) are compared chunk by chunk from the files:
    memory is a few chunks, whatever the tensors' size."""
    a, b = Path(a), Path(b)
    sa = _Side(a, trust_a)
    try:
        sb = _Side(b, trust_b)
    except BaseException:
        sa.close()
        raise
    try:
        names_b = set(sb.names())
        only_a, changed, tensors = [], [], []
        for name in sa.names():
            if name not in names_b:
                only_a.append(name)
                continue
            (shape_a, dt_a), (shape_b, dt_b) = sa.describe(name), sb.describe(name)
            if shape_a != shape_b or dt_a != dt_b:
                changed.append({"name": name, "a": {"shape": shape_a, "dtype": dt_a}, "b": {"shape": shape_b, "dtype": dt_b}})
                if shape_a != shape_b:
                    continue
            tensors.append({"name": name, "max_abs_diff": _max_abs_diff_chunks(sa.chunks(name), sb.chunks(name))})
        only_b = sorted(names_b - set(sa.names()))
    finally:
        sa.close()
        sb.close()
    tensors.sort(key=lambda r: (-(float("inf") if r["max_abs_diff"] is None else r["max_abs_diff"]), r["name"]))
    return {"a": str(a), "b": str(b), "only_in_a": sorted(only_a), "only_in_b": only_b, "changed": changed,
            "tensors": tensors, "identical": not (only_a or only_b or changed or any(t["max_abs_diff"] != 0 for t in tensors))}


def _max_abs_diff_chunks(xs, ys) -> float | None:
    best = 0.0
    for x, y in zip(xs, ys):
        d = _max_abs_diff(x, y)
        if d is None:
            return None
        best = max(best, d)
    return best


def _max_abs_diff(x, y) -> float | None:
    """Largest |x - y|; equal values (NaN beside NaN, the same inf) differ by 0. None when a NaN
    or inf faces a different value: no finite number says how far apart they are (JSON has no NaN).

    In chunks, in the tensors' own float type where it is float32 or float64 (one subtraction,
    no copies); a chunk whose result is not finite (a NaN or inf, or float32 overflow) is
    redone exactly in float64. Half types and integers are widened first."""
    import torch

    best = 0.0
    x, y = x.reshape(-1), y.reshape(-1)
    native = x.dtype in (torch.float32, torch.float64) and y.dtype == x.dtype
    wide = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) and y.dtype == x.dtype else torch.float64
    for i in range(0, x.numel(), CHUNK):  # in chunks: the widened copies stay small
        a, b = x[i:i + CHUNK], y[i:i + CHUNK]
        if torch.equal(a, b):
            continue
        if not native:
            a, b = a.to(wide), b.to(wide)
        d = torch.sub(a, b).abs_().max().item()
        if d != d or d == float("inf"):
            a, b = a.to(torch.float64), b.to(torch.float64)
            same = (a == b) | (torch.isnan(a) & torch.isnan(b))
            d = torch.where(same, torch.zeros((), dtype=torch.float64), (a - b).abs()).max().item()
            if not (d == d and d != float("inf")):
                return None
        best = max(best, d)
    return best


# -- convert ------------------------------------------------------------------------------------
def check_convert_out(out: str | os.PathLike, to: str) -> Path:
    """Refuse, before any work, an output that could not be written or would overwrite something."""
    out = Path(out).expanduser()
    if out.is_dir():
        raise Exists(f"output {out} is an existing directory; give a file name", field="out")
    if os.path.lexists(out):
        raise Exists(f"output {out} already exists", field="out")
    parent = out.parent
    if not parent.is_dir():
        raise Unreadable(f"cannot write {out}: {parent} is not an existing directory", field="out")
    try:  # a probe: permissions, a read-only mount, /proc; root passes os.access everywhere
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise Unreadable(f"cannot write {out}: {e.strerror or e}", field="out") from None
    return out


def default_convert_out(path: Path, to: str, dtype: str | None) -> Path:
    base = path.name if path.is_dir() else path.stem
    return path.with_name(f"{base}{'-' + dtype if dtype else ''}.{'safetensors' if to == 'safetensors' else 'pt'}")


def convert(path: Path, to: str, *, dtype: str | None = None, out: str | os.PathLike | None = None,
            trust: bool = False) -> dict[str, Any]:
    """Write the weights as a safetensors or torch file, optionally cast (floating tensors only).
    Tensors sharing storage are written once: exact aliases are recorded in the safetensors
    metadata (`torchdeck_aliases`), views of one storage are cloned and said so. The file is
    written to a temporary sibling and renamed: nothing appears under `out` unless it is whole."""
    import torch

    if to not in TARGETS:
        raise InvalidRequest(f"--to must be one of {', '.join(TARGETS)}, not {to!r}")
    if dtype is not None and dtype not in DTYPES:
        raise InvalidRequest(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    path = Path(path)
    if out is not None:
        out = check_convert_out(out, to)
    if not os.path.lexists(path):
        raise _gone(path)
    if out is None:
        out = default_convert_out(path, to, dtype)
        if os.path.lexists(out):
            raise Exists(f"{out} already exists (the default output); give another with --out", field="out")
        out = check_convert_out(out, to)
    weights = formats.load_weights(path, trust=trust)
    cast = getattr(torch, DTYPES[dtype]) if dtype else None
    kept: dict[str, Any] = {}
    aliases: dict[str, str] = {}
    cloned: list[str] = []
    by_view: dict[tuple, str] = {}
    storages: set[int] = set()
    for name, t in weights.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and key in by_view:
            aliases[name] = by_view[key]
            continue
        sid = t.untyped_storage().data_ptr()
        if t.numel():
            by_view[key] = name
        if t.numel() and sid in storages:
            cloned.append(name)
            t = t.clone()
        storages.add(sid)
        if cast is not None and t.is_floating_point():
            t = t.to(cast)
        kept[name] = t.contiguous()
    remove_dead_temporaries(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        if to == "safetensors":
            from safetensors.torch import save_file

            meta = {"format": "pt"}
            if aliases:
                meta["torchdeck_aliases"] = json.dumps(aliases, sort_keys=True)
            # storages shared with other kept tensors were cloned above; safetensors wants each alone
            save_file({k: (v.clone() if k in cloned else v) for k, v in kept.items()}, str(tmp), metadata=meta)
        else:
            state = dict(kept)
            for name, target in aliases.items():
                state[name] = kept[target]  # torch.save keeps the sharing: stored once
            torch.save(state, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.rename(tmp, out)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise from_os_error(e, f"cannot write {out}", field="out") from None
        raise
    return {"path": str(out), "source": str(path), "to": to, "dtype": DTYPES[dtype] if dtype else None,
            "tensors": len(kept), "aliases": aliases, "cloned": cloned, "size": out.stat().st_size}


# -- load-check ---------------------------------------------------------------------------------
def _match(model_keys: dict[str, list[int]], ckpt: dict[str, list[int]]) -> tuple[list, list, list]:
    missing = sorted(set(model_keys) - set(ckpt))
    unexpected = sorted(set(ckpt) - set(model_keys))
    mismatched = sorted(
        ({"name": k, "model": model_keys[k], "checkpoint": ckpt[k]} for k in set(model_keys) & set(ckpt)
         if list(model_keys[k]) != list(ckpt[k])), key=lambda r: r["name"])
    return missing, unexpected, mismatched


def prefix_fix(model_keys: dict[str, list[int]], ckpt: dict[str, list[int]]) -> dict[str, str] | None:
    """{"strip": p} or {"add": p} when stripping or adding one of PREFIXES to the checkpoint's keys
    makes them match the model's exactly (names; shapes are told apart)."""
    want = set(model_keys)
    if set(ckpt) == want:
        return None
    for p in PREFIXES:
        if ckpt and all(k.startswith(p) for k in ckpt) and {k[len(p):] for k in ckpt} == want:
            return {"strip": p}
        if {p + k for k in ckpt} == want:
            return {"add": p}
    return None


def load_check(path: Path, spec, *, import_root=None) -> dict[str, Any]:
    """Would these weights load into the model built from `spec`? Builds on the meta device where
    the model allows (no memory for its weights) and reads only the checkpoint's tensor list."""
    from torchdeck.models import specs

    path = Path(path)
    info = formats.inspect(path)
    tensors = {t.name: list(t.shape) for t in info.tensors}
    if not tensors:
        tensors = {k: list(v.shape) for k, v in formats.load_weights(path).items()}
    model, _, _ = specs.build_on_meta(spec, import_root=import_root, field="model")
    want = {k: list(v.shape) for k, v in model.state_dict().items()}
    del model
    missing, unexpected, mismatched = _match(want, tensors)
    fix = prefix_fix(want, tensors)
    return {"path": str(path), "model": spec.describe(), "ok": not (missing or unexpected or mismatched),
            "missing": missing, "unexpected": unexpected, "mismatched": mismatched, "suggested_prefix_fix": fix}


def weights_for(path: Path, model, *, field: str = "from") -> dict[str, Any]:
    """A checkpoint's weights (any format) as `model.load_state_dict` takes them, its keys
    fixed by the prefix `load_check` would suggest; InvalidRequest naming the keys that do not fit."""
    weights = formats.load_weights(Path(path))
    want = {k: list(v.shape) for k, v in model.state_dict().items()}
    have = {k: list(v.shape) for k, v in weights.items()}
    fix = prefix_fix(want, have)
    if fix and "strip" in fix:
        weights = {k[len(fix["strip"]):]: v for k, v in weights.items()}
    elif fix and "add" in fix:
        weights = {fix["add"] + k: v for k, v in weights.items()}
    missing, unexpected, mismatched = _match(want, {k: list(v.shape) for k, v in weights.items()})
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected),
                            ("shape mismatch", [m["name"] for m in mismatched])):
            if keys:
                parts.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
        raise InvalidRequest(f"the weights in {path} do not fit the model: {'; '.join(parts)} "
                             f"(`torchdeck ckpt load-check {path} --model SPEC` shows them all)", field=field)
    return weights
