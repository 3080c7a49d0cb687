"""Data specs: where a run's samples come from, loaded as tensors and split into train/validation.

Spec syntax
-----------
``synthetic:NAME``
    Generated in memory; ``size`` samples (each set has its own default, below), drawn from a
    fixed structure (the "teacher" is part of the data set, not of the run) with the run's seed.

    - ``regression``      x (10,) float32 -> y (20,) float32: a fixed random linear teacher plus
                          noise, features on scales from 1 to 0.03 (the demo's data: its loss keeps
                          falling over a whole run; default 49152 samples).
    - ``classification``  x (20,) float32 -> y int64 in 0..4: 5 classes, each a mixture of two
                          Gaussian clusters in R^20, overlapping a little (default 8192).
    - ``image``           x (1, 28, 28) float32 -> y int64 in 0..9: one smooth random pattern per
                          class, randomly scaled, shifted by up to 2 pixels, plus noise (default 4096).
    - ``sequence``        x (32,) int64 token ids in 0..63 -> y int64 in {0, 1}: y = 1 when at
                          least 4 of the 32 tokens are "markers" (ids 0..7) (default 4096).

``file:PATH[?OPTION=VALUE&...]``
    PATH relative to the directory torchdeck was started in (the run's import root).

    - ``.npz``: arrays named ``x`` and ``y`` (loaded with ``allow_pickle=False``).
    - ``.csv``: a header row of column names (a first row of numbers only means there is no
      header; the columns are then named ``0``, ``1``, ...), one sample a row, every value a
      number. The target is the column named by ``?target=NAME``, else the LAST column; x is
      every other column, as float32.
    - ``.pt`` / ``.pth``: two tensors, as a tuple or list ``(x, y)`` or a dict with keys ``x`` and
      ``y``; loaded with ``torch.load(weights_only=True)`` (a file that needs more is refused).

    Options: ``target=COLUMN`` (csv only); ``kind=classes`` or ``kind=regression`` to override
    the target kind found from the targets' dtype (classes need whole numbers from 0).

``package.module:callable``
    Called with no arguments; it returns a ``torch.utils.data.Dataset`` (map-style or iterable),
    or a pair ``(train, val)`` of them. The module is imported from the import root, appended to
    the end of ``sys.path``. How a run reads it (`open_data`, the run's header says which):

    - **in memory** (fastest): a ``TensorDataset`` of two tensors of at most
      ``IN_MEMORY_LIMIT`` bytes (and no collate function named): indexed on the device.
    - **DataLoader**: anything else (a Dataset class of the user's, whose ``__getitem__`` may
      compute or augment each time, large sets, iterable sets, dict batches such as
      ``{"input_ids": ..., "labels": ...}``, a ``(train, val)`` pair): items are read by a
      ``torch.utils.data.DataLoader`` while training (see torchdeck.training.batches), so a set
      far larger than memory trains. A map-style set is split by a seeded index permutation; an
      iterable one is validated only when the callable returns ``(train, val)``.

    Randomness inside ``__getitem__`` (augmentation): in DataLoader worker processes torchdeck
    seeds torch, ``random`` and NumPy from (seed, epoch, index of the batch's first item) before
    each batch, so a sample's randomness does not depend on which worker read it and a resumed
    run draws the same.

Target kind: integer (or bool) targets are classes (``num_classes`` = largest + 1; a CSV target
column counts as integer when every value is written as a whole number), float targets are
regression. Floating x becomes float32; integer x (token ids) int64; float targets float32.

Split: synthetic sets are drawn i.i.d., so their first ``val_fraction`` are the validation set;
every other source is shuffled by a generator seeded with the seed, then split the same way:
the same spec and seed give the same split.
"""

from __future__ import annotations

import csv
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from torchdeck import trust as gate
from torchdeck.errors import DataError, InvalidRequest, TorchdeckError, UnsafeFile

SYNTHETIC_SIZES = {"regression": 49152,  # the demo: 10-30 s of training on 2 cores
                   "classification": 8192, "image": 4096, "sequence": 4096}
SYNTHETIC = tuple(SYNTHETIC_SIZES)
SYNTHETIC_DESCRIPTIONS = {
    "regression": "synthetic regression: a fixed random linear teacher R^10 -> R^20 plus noise, features on "
                  "scales 1 to 0.03",
    "classification": "synthetic classification: 5 classes, each two Gaussian clusters in R^20",
    "image": "synthetic images 1x28x28: 10 classes, one smooth pattern each, scaled, shifted, noisy",
    "sequence": "synthetic sequences of 32 tokens (vocab 64): class 1 when at least 4 tokens are ids 0..7",
}
FILE_SUFFIXES = (".npz", ".csv", ".pt", ".pth")
FILE_OPTIONS = ("target", "kind")
KINDS = ("classes", "regression")
VAL_CHUNK = 1024  # validation runs in chunks of this many samples (at least 8 batches)
IN_MEMORY_LIMIT = 256 << 20  # a map-style set up to this many bytes (estimated) is read into memory


@dataclass
class TensorData:
    """A dataset held as tensors, split deterministically into train and validation."""

    x_train: Any
    y_train: Any
    x_val: Any
    y_val: Any
    target_kind: str  # "regression" (float targets) or "classes"
    num_classes: int | None = None  # classes: largest target + 1
    source: str = ""  # where it came from, for people
    spec: str = ""
    feature_names: list[str] | None = None  # csv: the x columns
    target_name: str | None = None  # csv: the target column

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def target_shape(self) -> tuple[int, ...]:
        return tuple(self.y_train.shape[1:])

    @property
    def default_loss(self) -> str:
        """The loss that follows the targets: cross-entropy for classes, MSE for floats."""
        return "cross_entropy" if self.target_kind == "classes" else "mse"

    def to(self, device) -> "TensorData":
        return replace(self, x_train=self.x_train.to(device), y_train=self.y_train.to(device),
                       x_val=self.x_val.to(device), y_val=self.y_val.to(device))


@dataclass
class DataInfo:
    """What `torchdeck data show` prints about a data spec."""

    spec: str
    source: str
    train_size: int
    val_size: int
    x_shape: list[int]  # one sample, without the batch axis
    x_dtype: str
    y_shape: list[int]
    y_dtype: str
    target_kind: str  # "classes" or "regression"
    num_classes: int | None
    default_loss: str
    class_counts: list[int] | None = None  # classes: samples per class, train and validation together
    x_min: float | None = None
    x_max: float | None = None
    x_mean: float | None = None
    x_std: float | None = None
    y_min: float | None = None
    y_max: float | None = None
    feature_names: list[str] | None = None
    target_name: str | None = None
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """Plain text, one fact a line (for the command line and the TUI)."""
        def shape(s):
            return str(tuple(s)) if s else "scalar"

        out = [
            f"spec         {self.spec}",
            f"source       {self.source}",
            f"size         {self.train_size + self.val_size} ({self.train_size} train, {self.val_size} validation, seed {self.seed})",
            f"x            {shape(self.x_shape)} {self.x_dtype}"
            + (f"  range {self.x_min:.4g} .. {self.x_max:.4g}, mean {self.x_mean:.4g}, std {self.x_std:.4g}"
               if self.x_min is not None else ""),
            f"y            {shape(self.y_shape)} {self.y_dtype}"
            + (f"  range {self.y_min:.4g} .. {self.y_max:.4g}" if self.y_min is not None else ""),
        ]
        if self.target_kind == "classes":
            out.append(f"target       classes: {self.num_classes} (loss {self.default_loss})")
            if self.class_counts is not None:
                out.append("per class    " + ", ".join(f"{i}: {n}" for i, n in enumerate(self.class_counts)))
        else:
            out.append(f"target       regression (loss {self.default_loss})")
        if self.feature_names is not None:
            shown = ", ".join(self.feature_names[:12]) + (" ..." if len(self.feature_names) > 12 else "")
            out.append(f"features     {shown}")
        if self.target_name is not None:
            out.append(f"target col   {self.target_name}")
        return out


# -- specs -------------------------------------------------------------------------------------
@dataclass
class _Parsed:
    kind: str  # "synthetic", "file", "callable"
    text: str  # normalized spec
    name: str = ""  # synthetic name or callable spec
    path: Path | None = None
    options: dict[str, str] = field(default_factory=dict)


def _available() -> str:
    return ", ".join("synthetic:" + n for n in SYNTHETIC) + ", file:PATH (.npz, .csv, .pt) or package.module:callable"


def _parse(text: str, root: str | os.PathLike | None, *, must_exist: bool = True) -> _Parsed:
    text = (text or "").strip()
    if not text:
        raise DataError("no data spec given")
    kind, sep, rest = text.partition(":")
    if sep and kind == "synthetic":
        if rest not in SYNTHETIC:
            raise DataError(f"unknown synthetic data set {rest!r} (synthetic sets: {', '.join(SYNTHETIC)})")
        return _Parsed("synthetic", text, name=rest)
    if sep and kind == "file":
        return _parse_file(rest, root, must_exist=must_exist)
    module, _, attr = text.partition(":")
    if sep and module and attr and all(p.isidentifier() for p in module.split(".")) and all(
        p.isidentifier() for p in attr.split(".")
    ):
        return _Parsed("callable", text, name=text)
    raise DataError(f"unknown data spec {text!r} (available: {_available()})")


def _parse_file(rest: str, root, *, must_exist: bool) -> _Parsed:
    path_text, options = rest, {}
    if "?" in rest:
        head, _, query = rest.rpartition("?")
        pairs = [p for p in query.split("&") if p]
        if pairs and all("=" in p for p in pairs):
            path_text = head
            for p in pairs:
                k, _, v = p.partition("=")
                if k not in FILE_OPTIONS:
                    raise DataError(f"unknown data file option {k!r} (options: {', '.join(FILE_OPTIONS)})")
                options[k] = v
    if not path_text:
        raise DataError("file: needs a path, e.g. file:data.npz")
    if "kind" in options and options["kind"] not in KINDS:
        raise DataError(f"kind must be classes or regression, not {options['kind']!r}")
    path = Path(path_text).expanduser()
    if not path.is_absolute():
        path = Path(root if root is not None else os.getcwd()) / path
    path = Path(os.path.abspath(path))
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise DataError(f"{path}: unknown data file type {suffix or '(no suffix)'!r} "
                             f"(expected {', '.join(FILE_SUFFIXES)})")
    if "target" in options and suffix != ".csv":
        raise DataError(f"{path}: the target= option is for .csv files")
    if must_exist:
        if not path.exists():
            raise DataError(f"data file {path} does not exist")
        if not path.is_file():
            raise DataError(f"data file {path} is not a file")
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return _Parsed("file", f"file:{path}" + (f"?{query}" if query else ""), path=path, options=options)


def check_spec(text: str, *, import_root: str | os.PathLike | None = None) -> str:
    """Check a data spec without loading it (no torch import, no user code); return it
    normalized: a file's path made absolute against `import_root` (default: the current
    directory), so that the worker, which runs elsewhere, finds it. Raises InvalidRequest naming
    what is wrong (an unknown synthetic set, a file that does not exist, a bad option, ...)."""
    return _parse(text, import_root).text


# -- loading -----------------------------------------------------------------------------------
def load(text: str, *, size: int | None = None, val_fraction: float = 0.1, seed: int = 0,
         import_root: str | os.PathLike | None = None, _dataset=None) -> TensorData:
    """Load a data spec as tensors, split into train and validation.

    `size` is the number of samples of a synthetic set (None: its default); files and callables
    have the size they have. `import_root` is where relative paths and callables' modules are
    found (default: the current directory)."""
    parsed = _parse(text, import_root)
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 2):
        raise InvalidRequest(f"dataset size must be a whole number of at least 2, not {size!r}", field="dataset_size")
    if not (0 <= val_fraction < 1):
        raise InvalidRequest(f"validation fraction must be at least 0 and below 1, not {val_fraction!r}")
    if parsed.kind == "synthetic":
        return _synthetic(parsed.name, size or SYNTHETIC_SIZES[parsed.name], val_fraction, seed, parsed.text)
    if parsed.kind == "file":
        x, y, extra = _load_file(parsed)
        source = f"file {parsed.path}"
    else:
        x, y = _load_callable(parsed.name, import_root, _dataset)
        extra = {}
        source = f"callable {parsed.name}"
    label = parsed.path.name if parsed.path is not None else parsed.name
    x, y, kind, num_classes = _normalize(x, y, label, parsed.options.get("kind"))
    return _split(x, y, kind, num_classes, val_fraction, seed, source=source, spec=parsed.text, **extra)


@dataclass
class DatasetData:
    """A dataset read through a DataLoader while training (not held in memory)."""

    train: Any  # torch.utils.data.Dataset
    val: Any | None  # a Dataset, or None: no validation (`val_note` says why)
    iterable: bool  # an IterableDataset: no sampler, no index split
    target_kind: str | None  # "classes", "regression" or None (dict batches the model scores itself)
    source: str = ""
    spec: str = ""
    val_note: str = ""  # why there is no validation set, for the run's log
    sample: Any = None  # item 0 of train (for preflight messages and the default loss)
    num_classes: int | None = None  # unknown without reading every item

    @property
    def default_loss(self) -> str:
        return "mse" if self.target_kind == "regression" else "cross_entropy"

    @property
    def train_size(self) -> int | None:
        return None if self.iterable else len(self.train)

    def to(self, device) -> "DatasetData":
        return self  # batches are moved as they are read


def open_data(text: str, *, size: int | None = None, val_fraction: float | None = None, seed: int = 0,
              import_root: str | os.PathLike | None = None, in_loader: bool = False) -> "TensorData | DatasetData":
    """A run's data: TensorData (in memory) when that is possible and small, else DatasetData
    (read through a DataLoader). Synthetic sets and files are always in memory; a callable's
    dataset as the module docstring says (`in_loader`: a DataLoader even for a small
    TensorDataset, as a collate function asks). `val_fraction` None: 0.1; 0: no validation."""
    vf = 0.1 if val_fraction is None else val_fraction
    parsed = _parse(text, import_root)
    if parsed.kind != "callable":
        return load(text, size=size, val_fraction=vf, seed=seed, import_root=import_root)
    import torch
    from torch.utils.data import Dataset, IterableDataset, Subset, TensorDataset

    spec = parsed.name
    ds = _call_data(spec, import_root)
    val = None
    if isinstance(ds, (tuple, list)) and len(ds) == 2 and all(isinstance(d, Dataset) for d in ds):
        ds, val = ds
    elif not isinstance(ds, Dataset):
        raise DataError(f"{spec} returned {type(ds).__name__}, not a torch.utils.data.Dataset "
                        "(or a pair (train, val) of them)")
    iterable = isinstance(ds, IterableDataset)
    if val is None and not in_loader and isinstance(ds, TensorDataset) and _small_pairs(ds):
        return load(text, size=size, val_fraction=vf, seed=seed, import_root=import_root, _dataset=ds)
    try:
        sample = peek_items(ds, 1)[0] if iterable else ds[0]
    except (StopIteration, IndexError):
        raise DataError(f"{spec} returned an empty dataset") from None
    except Exception as e:
        raise DataError(f"reading {spec}'s item 0 raised {type(e).__name__}: {e}") from None
    note = ""
    if val is None and not iterable and vf > 0:
        n = len(ds)
        if n < 2:
            raise DataError(f"{spec} has {n} sample(s); a train/validation split needs at least 2")
        n_val = min(n - 1, max(1, int(n * vf)))
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(0x5EED + seed)).tolist()
        ds, val = Subset(ds, perm[n_val:]), Subset(ds, perm[:n_val])
    elif val is None:
        note = ("no validation: an iterable dataset cannot be split; return (train, val) from the callable "
                "to validate" if iterable else "no validation (validation fraction 0)")
    return DatasetData(ds, val, iterable, _target_kind_of(sample), source=f"callable {spec}", spec=parsed.text,
                       val_note=note, sample=sample)


def peek_items(ds, n: int) -> list[Any]:
    """The first `n` items of an iterable dataset, leaving it where it was: a set that keeps its
    position (a `state_dict()`) is put back, so training still starts at its first item."""
    import itertools

    state = ds.state_dict() if callable(getattr(ds, "state_dict", None)) and \
        callable(getattr(ds, "load_state_dict", None)) else None
    items = list(itertools.islice(iter(ds), n))
    if state is not None:
        ds.load_state_dict(state)
    if not items:
        raise StopIteration
    return items


def _target_kind_of(sample) -> str | None:
    import torch

    y = None
    if isinstance(sample, (tuple, list)) and len(sample) == 2:
        y = sample[1]
    elif isinstance(sample, dict):
        y = next((sample[k] for k in TARGET_KEYS if k in sample), None)
    if y is None:
        return None
    t = torch.as_tensor(y)
    return "regression" if t.is_floating_point() else "classes"


TARGET_KEYS = ("labels", "label", "y", "target", "targets")


def _small_pairs(ds) -> bool:
    """A map-style set of (x, y) tensor pairs whose whole size (item 0's times the length) is at
    most IN_MEMORY_LIMIT."""
    import torch

    try:
        n = len(ds)
        item = ds[0]
    except Exception:
        return False  # the DataLoader path reads it and says what went wrong
    if isinstance(item, dict) and set(item) == {"x", "y"}:
        item = (item["x"], item["y"])
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        return False
    try:
        x, y = torch.as_tensor(item[0]), torch.as_tensor(item[1])
    except Exception:
        return False
    return n * (x.numel() * x.element_size() + y.numel() * y.element_size()) <= IN_MEMORY_LIMIT


def _synthetic(name: str, size: int, val_fraction: float, seed: int, spec: str) -> TensorData:
    import torch

    n_val = max(1, int(size * val_fraction)) if val_fraction > 0 else 0
    num_classes = None
    if name == "regression":
        g = torch.Generator().manual_seed(1234)  # the teacher is part of the dataset, not the run
        teacher_w = torch.randn(20, 10, generator=g) / 10**0.5
        teacher_b = torch.randn(20, generator=g) * 0.5
        gx = torch.Generator().manual_seed(5678 + seed)
        # Features on scales from 1 down to 0.03: the directions a gradient step learns at very
        # different rates, so the loss keeps falling over a whole 20-epoch demo run (from ~1.5 to
        # ~0.0015) instead of flattening within its first epoch; the noise floor is 1e-4.
        x = torch.randn(size, 10, generator=gx) * torch.logspace(0, -1.5, 10)
        y = x @ teacher_w.T + teacher_b + 0.01 * torch.randn(size, 20, generator=gx)
        kind = "regression"
    elif name == "classification":
        num_classes, clusters, dim = 5, 2, 20
        g = torch.Generator().manual_seed(4321)
        centers = torch.randn(num_classes, clusters, dim, generator=g) * 0.6
        gx = torch.Generator().manual_seed(8765 + seed)
        y = torch.randint(0, num_classes, (size,), generator=gx)
        k = torch.randint(0, clusters, (size,), generator=gx)
        x = centers[y, k] + 0.5 * torch.randn(size, dim, generator=gx)
        kind = "classes"
    elif name == "image":
        import torch.nn.functional as F

        num_classes, side, shift = 10, 28, 2
        g = torch.Generator().manual_seed(2468)
        coarse = torch.randn(num_classes, 1, 7, 7, generator=g)
        templates = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
        templates = (templates - templates.mean(dim=(2, 3), keepdim=True)) / templates.std(dim=(2, 3), keepdim=True)
        gx = torch.Generator().manual_seed(1357 + seed)
        y = torch.randint(0, num_classes, (size,), generator=gx)
        amp = 0.3 + 0.7 * torch.rand(size, 1, 1, 1, generator=gx)
        offsets = torch.randint(0, (2 * shift + 1) ** 2, (size,), generator=gx)
        x = torch.empty(size, 1, side, side)
        for o in range((2 * shift + 1) ** 2):
            dy, dx = o // (2 * shift + 1) - shift, o % (2 * shift + 1) - shift
            sel = (offsets == o).nonzero(as_tuple=True)[0]
            if len(sel):
                x[sel] = torch.roll(templates, shifts=(dy, dx), dims=(2, 3))[y[sel]]
        x = x * amp + 2.0 * torch.randn(size, 1, side, side, generator=gx)
        kind = "classes"
    elif name == "sequence":
        num_classes, vocab, length, markers, threshold = 2, 64, 32, 8, 4
        gx = torch.Generator().manual_seed(9753 + seed)
        x = torch.randint(0, vocab, (size, length), generator=gx)
        y = ((x < markers).sum(dim=1) >= threshold).long()
        kind = "classes"
    else:  # pragma: no cover - _parse checked the name
        raise DataError(f"unknown synthetic data set {name!r}")
    return TensorData(x[n_val:], y[n_val:], x[:n_val], y[:n_val], kind, num_classes,
                      source=SYNTHETIC_DESCRIPTIONS[name], spec=spec)


def _load_file(parsed: _Parsed) -> tuple[Any, Any, dict[str, Any]]:
    path = parsed.path
    assert path is not None
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return (*_load_npz(path), {})
    if suffix == ".csv":
        return _load_csv(path, parsed.options.get("target"))
    return (*_load_pt(path), {})


def _load_npz(path: Path):
    import zipfile

    import numpy as np

    if not zipfile.is_zipfile(path):
        raise DataError(f"{path.name} is not a readable .npz file (not a zip archive of arrays; "
                             "make one with numpy.savez(path, x=..., y=...))")
    try:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            missing = [k for k in ("x", "y") if k not in names]
            if missing:
                has = ", ".join(repr(n) for n in names) if names else "no arrays"
                raise DataError(f"{path.name} has no {' or '.join(repr(m) for m in missing)} array "
                                     f"(it has {has}); a .npz data file needs arrays named 'x' and 'y'")
            return z["x"], z["y"]
    except InvalidRequest:
        raise
    except ValueError as e:  # object arrays need pickle, which a data file never gets
        raise DataError(f"{path.name}: cannot read its arrays without pickle ({e})") from None
    except Exception as e:
        raise DataError(f"{path.name} is not a readable .npz file ({type(e).__name__}: {e})") from None


def _load_pt(path: Path):
    import torch

    try:
        obj = gate.torch_load(path, kind="data", field="data")
    except UnsafeFile as e:
        names = ", ".join(getattr(e, "globals", ())) or "a global"
        raise DataError(f"{path.name} needs more than plain tensors to load: it wants {names}, and "
                        "loading that would run code from the file (torchdeck loads data with "
                        "weights_only=True); save plain tensors: torch.save((x, y), path)", code="untrusted") from None
    except TorchdeckError as e:  # corrupt, unreadable: the same words, about the data field
        raise DataError(f"{path.name} is not a readable .pt file ({e})", code=e.code) from None
    expected = "expected two tensors: a tuple or list (x, y) or a dict with keys 'x' and 'y'"
    if isinstance(obj, dict):
        missing = [k for k in ("x", "y") if k not in obj]
        if missing:
            keys = ", ".join(repr(k) for k in obj) or "none"
            raise DataError(f"{path.name} holds a dict without {' or '.join(repr(m) for m in missing)} "
                                 f"(its keys: {keys}); {expected}")
        x, y = obj["x"], obj["y"]
    elif isinstance(obj, (tuple, list)):
        if len(obj) != 2:
            raise DataError(f"{path.name} holds a {type(obj).__name__} of {len(obj)} items; {expected}")
        x, y = obj
    else:
        raise DataError(f"{path.name} holds a {type(obj).__name__}; {expected}")
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise DataError(f"{path.name}: {name} is a {type(t).__name__}, not a tensor; {expected}")
    return x, y


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _load_csv(path: Path, target: str | None):
    import numpy as np

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [(i, r) for i, r in enumerate(csv.reader(f), start=1) if any(c.strip() for c in r)]
    except UnicodeDecodeError as e:
        raise DataError(f"{path.name} is not a text .csv file ({e})") from None
    except csv.Error as e:
        raise DataError(f"{path.name} is not a valid .csv file: {e}") from None
    if not rows:
        raise DataError(f"{path.name} is empty")
    first = [c.strip() for c in rows[0][1]]
    if all(_is_number(c) for c in first):
        columns = [str(i) for i in range(len(first))]  # no header row
    else:
        columns = first
        rows = rows[1:]
    if len(columns) < 2:
        raise DataError(f"{path.name} has {len(columns)} column; it needs at least one feature and a target")
    if len(set(columns)) != len(columns):
        dup = sorted({c for c in columns if columns.count(c) > 1})
        raise DataError(f"{path.name}: column names repeat: {', '.join(dup)}")
    if target is None:
        t = len(columns) - 1
    elif target in columns:
        t = columns.index(target)
    else:
        raise DataError(f"{path.name} has no column {target!r} (its columns: {', '.join(columns)})")
    if not rows:
        raise DataError(f"{path.name} has a header but no rows")
    values = np.empty((len(rows), len(columns)), dtype=np.float64)
    integral = True
    for r, (line, row) in enumerate(rows):
        if len(row) != len(columns):
            raise DataError(f"{path.name} line {line} has {len(row)} values; the header has {len(columns)} columns")
        for c, cell in enumerate(row):
            cell = cell.strip()
            try:
                values[r, c] = float(cell)
            except ValueError:
                what = "an empty value" if not cell else f"{cell!r}, not a number"
                raise DataError(f"{path.name} line {line}, column {columns[c]!r}: {what} "
                                     "(every value of a .csv data file must be numeric)") from None
            if c == t and integral:
                try:
                    int(cell)
                except ValueError:
                    integral = False
    y = values[:, t]
    y = y.astype(np.int64) if integral else y.astype(np.float32)
    x = np.delete(values, t, axis=1).astype(np.float32)
    features = [c for i, c in enumerate(columns) if i != t]
    return x, y, {"feature_names": features, "target_name": columns[t]}


def _call_data(spec: str, import_root):
    from torchdeck.models.specs import import_callable

    fn = import_callable(spec, import_root if import_root is not None else os.getcwd(), field="data")
    try:
        return fn()
    except Exception as e:  # the user's code: its message is the cause
        raise DataError(f"{spec} raised {type(e).__name__}: {e}") from None


def _load_callable(spec: str, import_root, ds=None) -> tuple[Any, Any]:
    import torch
    from torch.utils.data import Dataset

    if ds is None:
        ds = _call_data(spec, import_root)
    if not isinstance(ds, Dataset):
        raise DataError(f"{spec} returned {type(ds).__name__}, not a torch.utils.data.Dataset")
    if isinstance(ds, torch.utils.data.TensorDataset):
        if len(ds.tensors) != 2:
            raise DataError(f"{spec} returned a TensorDataset of {len(ds.tensors)} tensors, not (x, y)")
        return ds.tensors[0], ds.tensors[1]
    xs, ys = [], []
    try:
        if hasattr(ds, "__len__") and not isinstance(ds, torch.utils.data.IterableDataset):
            items = (ds[i] for i in range(len(ds)))
        else:
            items = iter(ds)
        for i, item in enumerate(items):
            if isinstance(item, dict) and "x" in item and "y" in item:
                item = (item["x"], item["y"])
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise DataError(f"{spec}: item {i} is a {type(item).__name__}"
                                     f"{' of ' + str(len(item)) + ' items' if isinstance(item, (tuple, list)) else ''}"
                                     ", not an (x, y) pair")
            xs.append(torch.as_tensor(item[0]))
            ys.append(torch.as_tensor(item[1]))
    except InvalidRequest:
        raise
    except Exception as e:
        raise DataError(f"reading {spec}'s items raised {type(e).__name__}: {e}") from None
    if not xs:
        raise DataError(f"{spec} returned an empty dataset")
    for name, seq in (("x", xs), ("y", ys)):
        shape = seq[0].shape
        for i, t in enumerate(seq):
            if t.shape != shape:
                raise DataError(f"{spec}: item {i}'s {name} has shape {tuple(t.shape)}, "
                                     f"item 0's has {tuple(shape)}; every sample must have the same shape")
    return torch.stack(xs), torch.stack(ys)


def _normalize(x, y, label: str, kind: str | None):
    """Tensors with the dtypes training wants; the target kind and number of classes."""
    import numpy as np
    import torch

    def as_tensor(a, name):
        if isinstance(a, torch.Tensor):
            return a.detach().cpu()
        try:
            return torch.from_numpy(np.ascontiguousarray(a))
        except TypeError as e:
            raise DataError(f"{label}: {name} cannot be a tensor ({e})") from None

    x, y = as_tensor(x, "x"), as_tensor(y, "y")
    if x.dim() == 0 or y.dim() == 0:
        raise DataError(f"{label}: x and y need a sample axis first (x is {tuple(x.shape)}, y is {tuple(y.shape)})")
    if len(x) != len(y):
        raise DataError(f"{label}: x has {len(x)} samples but y has {len(y)}; they must have the same length")
    if len(x) < 2:
        raise DataError(f"{label} has {len(x)} sample(s); a train/validation split needs at least 2")
    if x.is_complex() or y.is_complex():
        raise DataError(f"{label}: complex values are not supported")
    x = x.float() if x.is_floating_point() or x.dtype == torch.bool else x.long()
    if kind is None:
        kind = "regression" if y.is_floating_point() else "classes"
    num_classes = None
    if kind == "classes":
        if y.is_floating_point():
            if not bool(torch.isfinite(y).all()) or not bool((y == y.round()).all()):
                raise DataError(f"{label}: kind=classes needs whole-number targets; y has fractions")
        y = y.long()
        if y.dim() == 2 and y.shape[1] == 1:
            y = y[:, 0]
        low = int(y.min())
        if low < 0:
            raise DataError(f"{label}: class targets must be whole numbers from 0, found {low} "
                                 "(for numeric targets use kind=regression)")
        num_classes = int(y.max()) + 1
    else:
        y = y.float()
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise DataError(f"{label}: x holds NaN or infinite values")
    if y.is_floating_point() and not bool(torch.isfinite(y).all()):
        raise DataError(f"{label}: y holds NaN or infinite values")
    return x, y, kind, num_classes


def _split(x, y, kind, num_classes, val_fraction, seed, **extra) -> TensorData:
    import torch

    n = len(x)
    n_val = min(n - 1, max(1, int(n * val_fraction))) if val_fraction > 0 else 0
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0x5EED + seed))
    val, train = perm[:n_val], perm[n_val:]
    return TensorData(x[train], y[train], x[val], y[val], kind, num_classes, **extra)


# -- facts and fit -----------------------------------------------------------------------------
def describe(text: str, *, size: int | None = None, seed: int = 0, val_fraction: float = 0.1,
             import_root: str | os.PathLike | None = None, data: TensorData | None = None) -> DataInfo:
    """Load a data spec (or take `data`, already loaded from it) and say what it holds."""
    import torch

    d = data if data is not None else load(text, size=size, seed=seed, val_fraction=val_fraction, import_root=import_root)
    x = torch.cat([d.x_train, d.x_val])
    y = torch.cat([d.y_train, d.y_val])
    xf = x.double()
    info = DataInfo(
        spec=d.spec or text, source=d.source, train_size=len(d.x_train), val_size=len(d.x_val),
        x_shape=list(d.sample_shape), x_dtype=str(x.dtype).removeprefix("torch."),
        y_shape=list(d.target_shape), y_dtype=str(y.dtype).removeprefix("torch."),
        target_kind=d.target_kind, num_classes=d.num_classes, default_loss=d.default_loss,
        x_min=float(xf.min()), x_max=float(xf.max()), x_mean=float(xf.mean()),
        x_std=float(xf.std()) if xf.numel() > 1 else 0.0,
        y_min=float(y.min()), y_max=float(y.max()),
        feature_names=d.feature_names, target_name=d.target_name, seed=seed,
    )
    if d.target_kind == "classes" and d.num_classes is not None:
        info.class_counts = torch.bincount(y.reshape(-1), minlength=d.num_classes).tolist()
    return info


def _shape(t) -> str:
    return str(tuple(int(d) for d in t))


def check_fits(model, data: TensorData, *, loss: str | None = None, input_shape=None,
               model_name: str = "the model", batch: int = 4) -> None:
    """Run one small batch of `data` through `model` and its loss; raise InvalidRequest naming the
    sample and target shapes, what the model expects and the exception's message when they do
    not fit. The model is run in eval mode without gradients: nothing about it changes."""
    import torch

    loss = loss or data.default_loss
    xb, yb = data.x_train[:batch], data.y_train[:batch]
    sample = f"samples {_shape(data.sample_shape)} {str(xb.dtype).removeprefix('torch.')}"
    wants = f" (it takes {_shape(input_shape)})" if input_shape else ""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                out = model(xb)
            except Exception as e:
                msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise DataError(f"{data.spec or 'the data'} does not fit {model_name}{wants}: its {sample} "
                                     f"raised {type(e).__name__}: {msg}") from None
            if not isinstance(out, torch.Tensor):
                raise InvalidRequest(f"{model_name} returned {type(out).__name__}, not a tensor; "
                                     "training needs one output tensor", field="model")
            problem = _target_problem(out, yb, data, loss)
            if problem:
                raise DataError(f"{model_name}'s output does not fit the targets of {data.spec or 'the data'}: "
                                     f"{problem}")
            try:
                from torchdeck.options import make_loss

                make_loss(loss)(out, yb)
            except Exception as e:
                msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise DataError(f"{loss} loss of {model_name}'s output {_shape(out.shape[1:])} against targets "
                                     f"{_shape(data.target_shape)} raised {type(e).__name__}: {msg}") from None
    finally:
        model.train(was_training)


def _target_problem(out, y, data: TensorData, loss: str) -> str:
    """Why `out` cannot be scored against `y` with `loss`; "" when it can."""
    o, t = tuple(out.shape[1:]), data.target_shape
    if data.target_kind == "classes":
        if len(o) != len(t) + 1 or o[1:] != t:
            return (f"output {_shape(o)} per sample cannot hold class scores for targets {_shape(t)} "
                    f"({data.num_classes} classes need output ({data.num_classes},))")
        if data.num_classes is not None and o[0] < data.num_classes:
            return f"output has {o[0]} class scores but the data has {data.num_classes} classes"
        return ""
    if o != t:
        return (f"output {_shape(o)} per sample, targets {_shape(t)} per sample; "
                f"{'mse' if loss == 'mse' else 'cross-entropy on float targets'} needs the same shape")
    return ""
