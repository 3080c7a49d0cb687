"""The model catalogue: models registered in the workspace, then the built-ins."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from . import specs
from .errors import TorchdeckError
from .workspace import Workspace


@dataclass
class ModelEntry:
    name: str
    spec: str
    description: str = ""
    num_params: int | None = None  # None until built (needs torch)
    error: str = ""  # why it did not build

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def catalogue(ws: Workspace, *, count_params: bool = False) -> list[ModelEntry]:
    """Registered models first, then built-ins. count_params builds each model (imports torch,
    and a registered spec's module: the user registered it, so that is their code to run)."""
    entries = [ModelEntry(m.name, m.spec, m.description) for m in ws.models()]
    entries += [ModelEntry(f"builtin:{b.name}", f"builtin:{b.name}", b.description) for b in specs.BUILTINS.values()]
    if count_params:
        for e in entries:
            count(ws, e)
    return entries


def count(ws: Workspace, entry: ModelEntry) -> ModelEntry:
    try:
        model = specs.build(specs.resolve(entry.name, ws), import_root=os.getcwd())
        entry.num_params = specs.num_params(model)
    except TorchdeckError as e:
        entry.error = str(e)
    return entry
