"""Which workspace to use, and its registered models (`models.toml`)."""

from __future__ import annotations

import fcntl
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from torchdeck.errors import InvalidRequest, OperationFailed
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

    @classmethod
    def open(cls, explicit: str | os.PathLike | None = None) -> "Workspace":
        ws = cls(resolve_root(explicit))
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

    def ensure(self) -> None:
        """Create the workspace on first use; a new one starts with the embedded demo model."""
        try:
            for d in (self.root, self.runs_dir, self.exports_dir, self.logs_dir):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InvalidRequest(f"cannot use workspace {self.root}: {e.strerror or e}") from None
        if not self.models_file.exists():
            with self._models_lock():
                if not self.models_file.exists():
                    self._write_models([DEMO])

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
        try:
            data = tomllib.loads(self.models_file.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            raise OperationFailed(f"{self.models_file} is not valid TOML: {e}") from None
        out = []
        for name, entry in (data.get("models") or {}).items():
            if isinstance(entry, dict) and isinstance(entry.get("spec"), str):
                out.append(
                    RegisteredModel(
                        name=name,
                        spec=entry["spec"],
                        kwargs=dict(entry.get("kwargs") or {}),
                        description=str(entry.get("description", "")),
                        input_shape=[int(x) for x in entry["input_shape"]] if entry.get("input_shape") else None,
                    )
                )
        return out

    def model(self, name: str) -> RegisteredModel | None:
        return next((m for m in self.models() if m.name == name), None)

    def add_model(self, model: RegisteredModel, *, replace: bool = False) -> None:
        """Register a model under the lock, so two writers never lose each other's entries."""
        with self._models_lock():
            current = self.models()
            if any(m.name == model.name for m in current) and not replace:
                raise InvalidRequest(f"a model named {model.name!r} is already registered (remove it first)")
            self._write_models([m for m in current if m.name != model.name] + [model])

    def remove_model(self, name: str) -> RegisteredModel:
        with self._models_lock():
            current = self.models()
            found = next((m for m in current if m.name == name), None)
            if found is None:
                raise InvalidRequest(f"no model named {name!r} is registered in {self.models_file}")
            self._write_models([m for m in current if m.name != name])
            return found

    def _write_models(self, models: list[RegisteredModel]) -> None:
        lines = ["# Models registered in this torchdeck workspace.", ""]
        for m in models:
            lines.append(f"[models.{json.dumps(m.name)}]")
            lines.append(f"spec = {json.dumps(m.spec)}")
            if m.description:
                lines.append(f"description = {json.dumps(m.description)}")
            if m.input_shape:
                lines.append(f"input_shape = {_toml_value(list(m.input_shape))}")
            if m.kwargs:
                # JSON scalars are valid TOML values; nested tables are written inline.
                items = ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in m.kwargs.items())
                lines.append(f"kwargs = {{ {items} }}")
            lines.append("")
        atomic_write_bytes(self.models_file, "\n".join(lines).encode())


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float, str)):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise InvalidRequest(f"cannot store {type(v).__name__} in models.toml")
