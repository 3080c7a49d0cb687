"""Which workspace to use, and its registered models (`models.toml`)."""

from __future__ import annotations

import fcntl
import math
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import tomli_w
from torchdeck.errors import Corrupt, InvalidRequest, NotFound, from_os_error
from torchdeck.fsutil import atomic_write_bytes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_HOME = "TORCHDECK_HOME"
PROJECT_DIR = ".torchdeck"


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    spec: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    input_shape: list[int] | None = None  # one sample, without the batch axis
    # Where its module is imported from: the directory it was registered from. Only this root is
    # ever used for it (never one recorded in a checkpoint); None for entries older than roots.
    import_root: str | None = None


DEMO = RegisteredModel(
    name="demo",
    spec="builtin:linear",
    description="Linear(10, 20) trained with MSE and SGD(lr=0.01) on synthetic regression data",
)


def resolve_root(explicit: str | os.PathLike | None = None, cwd: Path | None = None) -> Path:
    """--workspace, else $TORCHDECK_HOME, else a .torchdeck/ here or in a parent, else the user data dir."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser().resolve()
    here = (cwd or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / PROJECT_DIR).is_dir():
            return d / PROJECT_DIR
    import platformdirs

    return Path(platformdirs.user_data_dir("torchdeck", appauthor=False))


class Workspace:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.created = False  # this process made the workspace (open/ensure)
        # Why models.toml could not be read (file and line), or None: the rest of the tool goes on.
        self.registry_problem: str | None = None

    @classmethod
    def open(cls, explicit: str | os.PathLike | None = None, *, create: bool = True) -> "Workspace":
        """The workspace to use. `create=False` (read-only commands): an explicit directory that
        does not exist is an error (a typo), not a new workspace."""
        ws = cls(resolve_root(explicit))
        if not create and explicit and not ws.root.exists():
            raise NotFound(f"no workspace at {ws.root} (a command that only reads does not create one)",
                           field="workspace")
        ws.ensure()
        return ws

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def models_file(self) -> Path:
        return self.root / "models.toml"

    @property
    def sources_file(self) -> Path:
        return self.root / "sources.toml"

    def ensure(self) -> None:
        """Create the workspace on first use; a new one starts with the embedded demo model."""
        self.created = not self.root.exists()
        try:
            for d in (self.root, self.runs_dir, self.exports_dir, self.logs_dir):
                d.mkdir(parents=True, exist_ok=True)
            if not self.models_file.exists():
                with self._models_lock():
                    if not self.models_file.exists():
                        self._write_models([DEMO])
        except OSError as e:
            raise InvalidRequest(f"cannot use workspace {self.root}: {e.strerror or e}", field="workspace",
                                 code="unreadable" if isinstance(e, PermissionError) else None) from None
        self.models()  # reads the registry once, so a damaged one is noticed (registry_problem)

    def remove_if_untouched(self) -> bool:
        """Remove a workspace this process just created when nothing was put in it since (a
        writing command that failed leaves no workspace behind). True when removed."""
        if not self.created:
            return False
        made = {"runs", "exports", "logs", "models.toml", ".models.lock", ".sources.lock"}
        try:
            names = {p.name for p in self.root.iterdir()}
            if not names <= made or any(any((self.root / d).iterdir()) for d in ("runs", "exports", "logs")
                                        if (self.root / d).is_dir()):
                return False
            for d in ("runs", "exports", "logs"):
                if (self.root / d).is_dir():
                    (self.root / d).rmdir()
            for f in ("models.toml", ".models.lock"):
                (self.root / f).unlink(missing_ok=True)
            self.root.rmdir()
        except OSError:
            return False
        self.created = False
        return True

    # -- registered models -------------------------------------------------------------------
    @contextmanager
    def _models_lock(self) -> Iterator[None]:
        with open(self.root / ".models.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def models(self) -> list[RegisteredModel]:
        """The registered models. A damaged models.toml yields none and sets `registry_problem`
        (naming the file and line): built-ins, runs and checkpoints go on working."""
        try:
            data = tomllib.loads(self.models_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self.registry_problem = None
            return []
        except (OSError, ValueError) as e:  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
            self.registry_problem = f"{self.models_file} is damaged and was not read: {e}"
            return []
        self.registry_problem = None
        out = []
        for name, entry in (data.get("models") or {}).items():
            if not (isinstance(entry, dict) and isinstance(entry.get("spec"), str)):
                continue
            try:
                shape = entry.get("input_shape")
                out.append(
                    RegisteredModel(
                        name=name,
                        spec=entry["spec"],
                        kwargs=dict(entry.get("kwargs") or {}),
                        description=str(entry.get("description", "")),
                        input_shape=[int(x) for x in shape] if shape else None,
                        import_root=str(entry["import_root"]) if entry.get("import_root") else None,
                    )
                )
            except (TypeError, ValueError) as e:
                self.registry_problem = f"{self.models_file}: model {name!r} is damaged and was skipped: {e}"
        return out

    def _models_for_writing(self) -> list[RegisteredModel]:
        current = self.models()
        if self.registry_problem:
            raise Corrupt(f"{self.registry_problem}; fix or move it before changing the registry")
        return current

    def model(self, name: str) -> RegisteredModel | None:
        return next((m for m in self.models() if m.name == name), None)

    def add_model(self, model: RegisteredModel, *, replace: bool = False) -> None:
        """Register a model under the lock, so two writers never lose each other's entries."""
        with self._models_lock():
            current = self._models_for_writing()
            if any(m.name == model.name for m in current) and not replace:
                raise InvalidRequest(f"a model named {model.name!r} is already registered (remove it first)",
                                     code="exists", field="name")
            self._write_models([m for m in current if m.name != model.name] + [model])

    def remove_model(self, name: str) -> RegisteredModel:
        with self._models_lock():
            current = self._models_for_writing()
            found = next((m for m in current if m.name == name), None)
            if found is None:
                raise NotFound(f"no model named {name!r} is registered in {self.models_file}", field="name")
            self._write_models([m for m in current if m.name != name])
            return found

    def _write_models(self, models: list[RegisteredModel]) -> None:
        doc = {"models": {m.name: toml_entry(m) for m in models}}
        text = "# Models registered in this torchdeck workspace.\n\n" + tomli_w.dumps(doc)
        tomllib.loads(text)  # what is written must read back: tomli-w and toml_entry make sure
        try:
            atomic_write_bytes(self.models_file, text.encode("utf-8"))
        except OSError as e:
            raise from_os_error(e, f"cannot write {self.models_file}") from None


    # -- directories of other tools' logs (torchdeck open) ---------------------------------------
    @contextmanager
    def _sources_lock(self) -> Iterator[None]:
        with open(self.root / ".sources.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def source_dirs(self) -> list[Path]:
        """The directories of other tools' logs this workspace scans at start (`torchdeck open`),
        in the order added. A damaged sources.toml reads as none (Corrupt when changing it)."""
        return self._read_source_dirs()[0]

    def _read_source_dirs(self) -> tuple[list[Path], str | None]:
        try:
            data = tomllib.loads(self.sources_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return [], None
        except (OSError, ValueError) as e:
            return [], f"{self.sources_file} is damaged and was not read: {e}"
        dirs = data.get("directories")
        if not isinstance(dirs, list):
            return [], None
        return [Path(d) for d in dirs if isinstance(d, str) and d], None

    def add_source_dir(self, path: Path) -> bool:
        """Remember a directory (absolute); False when it already was. Under the lock, atomically."""
        path = Path(path)
        with self._sources_lock():
            current, problem = self._read_source_dirs()
            if problem:
                raise Corrupt(f"{problem}; fix or move it before adding a directory")
            if path in current:
                return False
            self._write_source_dirs([*current, path])
            return True

    def forget_source_dir(self, path: Path) -> None:
        path = Path(path)
        with self._sources_lock():
            current, problem = self._read_source_dirs()
            if problem:
                raise Corrupt(f"{problem}; fix or move it first")
            if path not in current:
                raise NotFound(f"{path} is not among the directories this workspace scans "
                               f"({self.sources_file})", field="path")
            self._write_source_dirs([d for d in current if d != path])

    def _write_source_dirs(self, dirs: list[Path]) -> None:
        for d in dirs:
            _check_text(str(d), "path")
        text = ("# Directories of other tools' logs (TensorBoard, Hugging Face, Lightning, MLflow) scanned at "
                "start; `torchdeck open DIR` adds, `torchdeck open --forget DIR` removes.\n\n"
                + tomli_w.dumps({"directories": [str(d) for d in dirs]}))
        try:
            atomic_write_bytes(self.sources_file, text.encode("utf-8"))
        except OSError as e:
            raise from_os_error(e, f"cannot write {self.sources_file}") from None


def toml_entry(m: RegisteredModel) -> dict[str, Any]:
    """The models.toml table of one model; InvalidRequest naming the field for a value TOML
    cannot hold (null, a lone surrogate, a number too large, NaN or infinity)."""
    _check_text(m.name, "name")
    _check_text(m.spec, "spec")
    _check_text(m.description, "description")
    entry: dict[str, Any] = {"spec": m.spec}
    if m.description:
        entry["description"] = m.description
    if m.input_shape:
        entry["input_shape"] = list(m.input_shape)
    if m.import_root:
        _check_text(m.import_root, "path")
        entry["import_root"] = m.import_root
    if m.kwargs:
        entry["kwargs"] = {str(k): check_toml_value(v, "args", str(k)) for k, v in m.kwargs.items()}
    return entry


def _check_text(text: str, field: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"the {field} holds a character that cannot be stored (a lone surrogate): {text!r}",
                             field=field) from None


def check_toml_value(v: Any, field: str, where: str) -> Any:
    if v is None:
        raise InvalidRequest(f"argument {where} is null, which models.toml cannot store (leave it out to take "
                             "the default)", field=field)
    if isinstance(v, bool) or isinstance(v, str):
        if isinstance(v, str):
            _check_text(v, field)
        return v
    if isinstance(v, int):
        if not -(2**63) <= v < 2**63:
            raise InvalidRequest(f"argument {where} = {v} does not fit 64 bits", field=field)
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise InvalidRequest(f"argument {where} = {v} is not a finite number", field=field)
        return v
    if isinstance(v, (list, tuple)):
        return [check_toml_value(x, field, f"{where}[{i}]") for i, x in enumerate(v)]
    if isinstance(v, dict):
        return {str(k): check_toml_value(x, field, f"{where}.{k}") for k, x in v.items()}
    raise InvalidRequest(f"argument {where} is a {type(v).__name__}, which models.toml cannot store", field=field)
