"""The one trust gate: everything that could run code from a file or a spec is decided here.

- **Model specs.** A built-in always builds. A spec registered in the user's workspace builds
  from the import root recorded in `models.toml` when it was registered, never from one read in
  a checkpoint (its `run_config.import_root` is information only). Anything else found in a
  file is refused (`untrusted`) unless the caller passes explicit trust (`--trust`, the TUI's
  dialog); then it is imported from the root the file records, which the message names.
- **Pickles.** `torch.load` always runs with `weights_only=True`, plus a small allowlist of
  globals per format (plain data types, nothing that executes). A file that needs more is
  refused naming the globals it wanted; only explicit trust loads it fully. There is no
  fallback to unsafe loading.
- **Files.** Anything opened for reading must be a regular file: a FIFO or a device would
  block the reader forever.

Importing this module needs no torch.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchdeck.errors import Corrupt, NotFound, Unreadable, UnsafeFile, from_os_error
from torchdeck.models import specs

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torchdeck.workspace import RegisteredModel, Workspace

# -- files ------------------------------------------------------------------------------------------


def check_regular_file(path: str | os.PathLike, *, field: str | None = "path", what: str = "") -> os.stat_result:
    """stat() a file that is about to be read; refuse what is missing, unreadable or not a regular
    file (a FIFO would block the reader forever) with a clear one-line error."""
    p = Path(path)
    label = f"{what} {p}".strip()
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise NotFound(f"{label}: no such file", field=field) from None
    except OSError as e:
        raise from_os_error(e, label, field=field) from None
    if not stat.S_ISREG(st.st_mode):
        kind = _kind(st.st_mode)
        raise Unreadable(f"{label} is {kind}, not a regular file", field=field)
    if not os.access(p, os.R_OK):
        raise Unreadable(f"{label}: permission denied", field=field)
    return st


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def read_regular_bytes(path: str | os.PathLike, *, field: str | None = "path", limit: int | None = None) -> bytes:
    """The bytes of a regular file (opened with O_NONBLOCK, so a FIFO swapped in between the
    check and the open cannot block either)."""
    p = Path(path)
    check_regular_file(p, field=field)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise from_os_error(e, str(p), field=field) from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise Unreadable(f"{p} is not a regular file", field=field)
        return f.read() if limit is None else f.read(limit)


# -- pickles ----------------------------------------------------------------------------------------

# What a weights-only load may construct beyond tensors and containers, per kind of file: plain
# data types that training dicts of other tools hold (Lightning's hparams as a Namespace, paths,
# numpy scalars and arrays), and nothing that calls code on load.
_PLAIN_GLOBALS = (
    "argparse.Namespace",
    "pathlib.PosixPath",
    "pathlib.PurePosixPath",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.ndarray",
    "numpy.dtype",
)
# Dict subclasses that only add attribute access (Lightning's hparams), and defaultdict (every
# omegaconf container pickles a `defaultdict(dict)` resolver cache): loaded as plain dicts, so their
# classes (and their modules, and a defaultdict's factory) are never imported or called.
_PLAIN_DICTS = (
    "collections.defaultdict",
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "pytorch_lightning.utilities.parsing.AttributeDict",
)
ALLOWED_GLOBALS: dict[str, tuple[str, ...]] = {
    "checkpoint": _PLAIN_GLOBALS + _PLAIN_DICTS,  # .pt/.pth/.bin/.ckpt state dicts and training dicts
    "training_state": (),  # torchdeck's own training_state.pt: tensors, numbers, containers
    "data": (),  # a data file: tensors in a tuple, list or dict
}


def _resolve_global(name: str) -> Any | None:
    import importlib

    module, _, attr = name.rpartition(".")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    except Exception:  # e.g. numpy.core on numpy 2, numpy._core on numpy 1
        return None


class _PlainDict:
    """Stands in for an allowlisted dict subclass: what unpickles is a plain dict."""

    def __new__(cls, *args: Any) -> Any:  # noqa: D102
        return dict()


def _allowed(kind: str) -> list[Any]:
    import numpy as np

    out: list[Any] = []
    for name in ALLOWED_GLOBALS[kind]:
        if name in _PLAIN_DICTS:
            out.append((_PlainDict, name))
            continue
        if not name.startswith("numpy."):
            obj = _resolve_global(name)
            if obj is not None:
                out.append(obj)
            continue
        if name.endswith("._reconstruct"):
            out.append((np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct,
                        name))
        elif name.endswith(".scalar"):
            out.append((np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar, name))
        else:
            obj = _resolve_global(name)
            if obj is not None:
                out.append(obj)
    if kind == "checkpoint":
        # numpy dtypes pickle as their classes (numpy.dtypes.Float32DType, ...).
        dtypes = getattr(np, "dtypes", None)
        if dtypes is not None:
            out += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and isinstance(getattr(dtypes, n), type)]
    return out


def _unsafe_globals(path: Path, kind: str, message: str) -> list[str]:
    """The globals a refused pickle wants beyond what `kind` allows, read without running it."""
    import torch

    names: list[str] = []
    try:
        names = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(path)
                 if n not in ALLOWED_GLOBALS[kind]]
    except Exception:  # not a zip checkpoint (legacy format): the loader's message names the first
        pass
    if not names:
        m = re.search(r"GLOBAL ([\w.]+)", message) or re.search(r"global[s]? ([\w.]+)", message)
        if m:
            names = [m.group(1)]
    return names


def check_torch_magic(p: Path, *, field: str | None = "path") -> bytes:
    """A PyTorch file is a zip archive (torch.save since 1.6) or a bare pickle (protocol 2+ opens
    with 0x80; the legacy format too): anything else is told as such, not as an unpickler's
    IndexError on a text file."""
    head = read_regular_bytes(p, field=field, limit=4)
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        what = "an empty file" if not head else "neither a zip archive nor a pickle"
        raise Corrupt(f"{p}: not a readable PyTorch file ({what})", field=field)
    return head


def torch_load(path: str | os.PathLike, *, kind: str = "checkpoint", trust: bool = False,
               field: str | None = "path") -> Any:
    """torch.load with weights_only=True and `kind`'s allowlist; UnsafeFile naming the globals a
    file wants beyond them, Corrupt for what is no PyTorch file at all. Only `trust=True` (an
    explicit user action) loads with full unpickling."""
    import pickle

    import torch

    p = Path(path)
    check_torch_magic(p, field=field)  # a regular file (read_regular_bytes checks), then its magic
    try:
        if trust:
            return torch.load(p, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(_allowed(kind)):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        names = _unsafe_globals(p, kind, str(e))
        if not names:
            # Not a refused global but a broken pickle (e.g. "Unsupported operand 177" for random
            # bytes): a corrupt file, which --trust would not make readable.
            detail = str(e).split("WeightsUnpickler error:", 1)[-1].strip()
            first = detail.splitlines()[0] if detail else type(e).__name__
            raise Corrupt(f"{p}: not a readable PyTorch file: {first}", field=field) from None
        refused = UnsafeFile(
            f"{p}: refused: loading it would run code from the file (it needs {', '.join(names)}); "
            "pass --trust to allow", field=field,
        )
        refused.globals = names  # type: ignore[attr-defined]
        raise refused from None
    except OSError as e:
        raise from_os_error(e, str(p), field=field) from None
    except Exception as e:  # RuntimeError, EOFError, ... and KeyError from a garbled pickle stream
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, LookupError):  # its message alone is a bare key, e.g. "101"
            first = f"{type(e).__name__}: {first}"
        raise Corrupt(f"{p}: not a readable PyTorch file: {first}", field=field) from None


# -- model specs ------------------------------------------------------------------------------------


def registered_entry(spec: specs.ModelSpec, workspace: "Workspace | None") -> "RegisteredModel | None":
    """The workspace's registration of this spec: the one of the same name when the spec says
    it was registered as one, else the first with the same `module:callable`."""
    if workspace is None or spec.builtin is not None:
        return None
    try:
        entries = [m for m in workspace.models() if m.spec == spec.spec]
    except Exception:  # a damaged registry vouches for nothing
        return None
    named = [m for m in entries if m.name == spec.registered_as]
    return (named or entries or [None])[0]


def is_trusted(spec: specs.ModelSpec, workspace: "Workspace | None") -> bool:
    """Built-ins and specs registered in this workspace may be built from a file's say-so."""
    return spec.builtin is not None or registered_entry(spec, workspace) is not None


def import_root_for(spec: specs.ModelSpec, workspace: "Workspace | None", default: str | os.PathLike | None = None):
    """Where a spec's module is imported from: a registered spec's recorded root (an entry
    registered before roots were recorded: `default`); otherwise `default`."""
    entry = registered_entry(spec, workspace)
    if entry is not None and entry.import_root:
        return entry.import_root
    return default


def untrusted_error(spec: specs.ModelSpec, recorded_root: str | None = None, *, field: str | None = None) -> UnsafeFile:
    where = f" from {recorded_root}" if recorded_root else ""
    return UnsafeFile(
        f"model spec {spec.spec!r} is neither built-in nor registered in this workspace; building it would "
        f"import and run its code{where} (pass --trust to allow)", field=field,
    )


def build_from_file(spec: specs.ModelSpec, workspace: "Workspace | None", *, trust: bool = False,
                    recorded_root: str | None = None, field: str | None = "checkpoint") -> "torch.nn.Module":
    """Build a spec read from a file (a checkpoint's meta.json): a built-in; a registered spec
    from its registered import root; anything else only with explicit trust, from the root the
    file records. The recorded root never decides where a registered spec comes from."""
    if spec.builtin is not None:
        return specs.build(spec)
    entry = registered_entry(spec, workspace)
    if entry is not None:
        return specs.build(spec, import_root=entry.import_root or os.getcwd())
    if not trust:
        raise untrusted_error(spec, recorded_root, field=field)
    return specs.build(spec, import_root=recorded_root or os.getcwd())


def check_spec_trusted(spec: specs.ModelSpec, workspace: "Workspace | None", *, field: str | None = None) -> None:
    """UnsafeFile unless the spec is built-in or registered (for specs that came from a file)."""
    if not is_trusted(spec, workspace):
        raise untrusted_error(spec, field=field)


# -- a restricted unpickler for other people's files ------------------------------------------------
#
# torch's weights-only unpickler reads only pickle protocol 2 and refuses every unknown class, so
# a Lightning file whose hyper-parameters hold an omegaconf container, or any protocol-4 save,
# cannot be inspected without full (code-running) unpickling. This unpickler resolves globals
# through torch's own weights-only allowlist plus the format's, and reads any other global as a
# named placeholder: an object rebuilt the way pickle builds plain instances (NEWOBJ + state) is
# kept as data under its class name; CALLING a placeholder (REDUCE, OBJ, INST, which is what a
# `__reduce__` payload does) raises RefusedGlobal naming it. The real callable is never imported.


class RefusedGlobal(Exception):
    """A pickle asked to call a global that is not allowlisted."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class _PlaceholderMeta(type):
    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise RefusedGlobal(cls.__qualname__)


class Placeholder(dict, metaclass=_PlaceholderMeta):
    """An instance of a class the file names but torchdeck does not import: its dict items,
    list items and pickled state, kept as data."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "Placeholder":
        self = dict.__new__(cls)
        self.__dict__["_state"] = None
        self.__dict__["_items"] = []
        self.__dict__["_args"] = list(args)
        return self

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state

    def append(self, item: Any) -> None:
        self.__dict__["_items"].append(item)

    def extend(self, items: Any) -> None:
        self.__dict__["_items"].extend(items)

    @property
    def class_name(self) -> str:
        return type(self).__qualname__

    def content(self) -> Any:
        """The data this object was pickled with, as plain containers."""
        state = self.__dict__["_state"]
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            merged = dict(state[0] or {})  # (dict state, slot state)
            merged.update(state[1] or {})
            state = merged
        if dict(self):
            return dict(self) if state is None else {**dict(self), "__state__": state}
        if self.__dict__["_items"]:
            return list(self.__dict__["_items"])
        return state


_placeholder_classes: dict[str, type] = {}


def placeholder_class(name: str) -> type:
    cls = _placeholder_classes.get(name)
    if cls is None:
        cls = _PlaceholderMeta(name, (Placeholder,), {"__qualname__": name, "__module__": "torchdeck.placeholder"})
        _placeholder_classes[name] = cls
    return cls


def _restricted_globals(kind: str) -> dict[str, Any]:
    from torch import _weights_only_unpickler as wo

    out = dict(wo._get_allowed_globals())
    for entry in _allowed(kind):
        if isinstance(entry, tuple):
            out[entry[1]] = entry[0]
        else:
            out[f"{entry.__module__}.{entry.__qualname__}"] = entry
    return out


def restricted_pickle_module(kind: str = "checkpoint", *, seen: list[str] | None = None,
                             extra: dict[str, Any] | None = None):
    """A module usable as torch.load's `pickle_module` (and for plain pickles) whose Unpickler
    resolves only allowlisted globals and reads the rest as placeholders; `seen` collects the
    placeholder names."""
    import _compat_pickle
    import pickle
    import types

    allowed = _restricted_globals(kind)
    allowed.update(extra or {})
    seen_names = seen if seen is not None else []

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            # Protocol 2 spells some globals the Python 2 way (__builtin__.set): as pickle does.
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
            full = f"{module}.{name}"
            if full in allowed:
                return allowed[full]
            if full not in seen_names:
                seen_names.append(full)
            return placeholder_class(full)

    def load(f, **kwargs: Any) -> Any:
        return Unpickler(f, **kwargs).load()

    def loads(data: bytes, **kwargs: Any) -> Any:
        import io

        return Unpickler(io.BytesIO(data), **kwargs).load()

    mod = types.ModuleType("torchdeck_restricted_pickle")
    mod.Unpickler = Unpickler  # type: ignore[attr-defined]
    mod.load = load  # type: ignore[attr-defined]
    mod.loads = loads  # type: ignore[attr-defined]
    mod.__name__ = "pickle"  # torch only reads the name for its messages
    return mod


def refused_error(p: Path, names: list[str], field: str | None = "path", why: str = "") -> UnsafeFile:
    err = UnsafeFile(
        f"{p}: refused: {why or 'loading it would run code from the file'} (it needs {', '.join(names)}); "
        "pass --trust to allow", field=field,
    )
    err.globals = names  # type: ignore[attr-defined]
    return err


def restricted_torch_load(path: str | os.PathLike, *, kind: str = "checkpoint", field: str | None = "path",
                          mmap: bool = True, seen: list[str] | None = None) -> Any:
    """torch.load of any torch file (zip or legacy, pickle protocols 2-5) through the restricted
    unpickler: allowlisted globals resolve, other classes read as named placeholders, any call to
    an unknown global is refused (UnsafeFile naming it). Zip files are memory-mapped, so
    describing one does not read its tensors."""
    import pickle
    import warnings

    import torch

    p = Path(path)
    head = check_torch_magic(p, field=field)  # a regular file (read_regular_bytes checks), then its magic
    module = restricted_pickle_module(kind, seen=seen)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if p.suffix.lower() == ".safetensors":  # torch.load hands such a *name* to safetensors
                with open(p, "rb") as f:
                    return torch.load(f, map_location="cpu", weights_only=False, pickle_module=module)
            return torch.load(p, map_location="cpu", weights_only=False, pickle_module=module,
                              mmap=mmap and head.startswith(b"PK"))
    except RefusedGlobal as e:
        raise refused_error(p, [e.name], field) from None
    except OSError as e:
        raise from_os_error(e, str(p), field=field) from None
    except RecursionError:
        raise Corrupt(f"{p}: not a readable PyTorch file (nested too deeply)", field=field) from None
    except MemoryError:
        raise Corrupt(f"{p}: not a readable PyTorch file (it claims more memory than exists)", field=field) from None
    except Exception as e:  # pickle.UnpicklingError, RuntimeError, EOFError, KeyError ... from a damaged file
        text = str(e).strip()
        first = text.splitlines()[0] if text else type(e).__name__
        if isinstance(e, (LookupError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError)):
            first = f"{type(e).__name__}: {first}" if text else type(e).__name__
        raise Corrupt(f"{p}: not a readable PyTorch file: {first[:200]}", field=field) from None
