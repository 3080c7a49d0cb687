"""A run's settings in a TOML file (`torchdeck train --config FILE`, the Training form's load and
save). Its keys are `torchdeck train`'s flags with `_` for `-` (`max_steps`, `warmup_steps`,
`keep`, `clip_grad_norm`, `from`); values are TOML's own types (a number, a string, true/false;
`betas` a list of two numbers). Flags override the file, the file overrides the defaults.

Every problem names the key and the file, and carries the setting's field, so the command line
exits 2 with one line and the form marks the field.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib
from torchdeck.errors import InvalidRequest, from_os_error
from torchdeck.runs.config import RunConfig

MAX_FILE_BYTES = 1 << 20  # a config is a few hundred bytes; a huge file is a wrong path


@dataclass(frozen=True)
class Key:
    """One key of a config file: the RunConfig field it sets and the TOML type it takes."""

    field: str
    kind: str  # "int", "float", "str", "bool", "betas"


# key (a flag's name, `_` for `-`) -> what it sets. Flags that only say how the command runs
# (--detach, --json, --workspace, --resume) are not settings and have no key.
KEYS: dict[str, Key] = {
    "model": Key("model", "str"),
    "data": Key("data", "str"),
    "epochs": Key("epochs", "int"),
    "max_steps": Key("max_steps", "int"),
    "batch_size": Key("batch_size", "int"),
    "lr": Key("lr", "float"),
    "optimizer": Key("optimizer", "str"),
    "momentum": Key("momentum", "float"),
    "nesterov": Key("nesterov", "bool"),
    "weight_decay": Key("weight_decay", "float"),
    "betas": Key("betas", "betas"),
    "schedule": Key("schedule", "str"),
    "warmup_steps": Key("warmup_steps", "int"),
    "loss": Key("loss", "str"),
    "label_smoothing": Key("label_smoothing", "float"),
    "clip_grad_norm": Key("grad_clip", "float"),
    "grad_clip": Key("grad_clip", "float"),
    "accumulate": Key("accumulate", "int"),
    "precision": Key("precision", "str"),
    "device": Key("device", "str"),
    "deterministic": Key("deterministic", "bool"),
    "val_fraction": Key("val_fraction", "float"),
    "val_every": Key("val_every", "int"),
    "early_stop_patience": Key("early_stop_patience", "int"),
    "num_workers": Key("num_workers", "int"),
    "collate": Key("collate", "str"),
    "step": Key("step", "str"),
    "seed": Key("seed", "int"),
    "name": Key("name", "str"),
    "threads": Key("threads", "int"),
    "dataset_size": Key("dataset_size", "int"),
    "checkpoint_every": Key("checkpoint_every", "int"),
    "keep": Key("keep_checkpoints", "int"),
    "keep_best": Key("keep_best", "int"),
    "best_metric": Key("best_metric", "str"),
    "from": Key("init_from", "str"),
    "no_checkpoints": Key("no_checkpoints", "bool"),
}
# field -> the key a saved file uses for it (the first key that sets it)
KEY_FOR_FIELD: dict[str, str] = {}
for _key, _spec in KEYS.items():
    KEY_FOR_FIELD.setdefault(_spec.field, _key)

_KIND_WORDS = {"int": "a whole number", "float": "a number", "str": "a string (in quotes)", "bool": "true or false",
               "betas": "two numbers, like [0.9, 0.999]"}


@dataclass
class ConfigFile:
    """A config file's settings: field -> value, each checked for its type (ranges are
    RunConfig.validate's), and which key set each field (to name it in later errors)."""

    path: str
    values: dict[str, Any]
    keys: dict[str, str]  # field -> the key in the file

    def apply(self, cfg: RunConfig) -> RunConfig:
        for field, value in self.values.items():
            if field == "no_checkpoints":
                if value:
                    cfg.checkpoint_every_epoch = cfg.checkpoint_on_stop = False
            else:
                setattr(cfg, field, value)
        return cfg

    def blame(self, error: InvalidRequest) -> InvalidRequest:
        """The same error, naming the key and this file when the field came from it."""
        key = self.keys.get(error.field or "")
        if key is None:
            return error
        return type(error)(f"{self.path}: {key}: {error}", code=error.code, field=error.field)


def load(path: str | os.PathLike) -> ConfigFile:
    """Read and check a config file; InvalidRequest (field "config", or the field of a bad value)
    naming the file and the key."""
    shown = str(path)
    p = Path(os.path.expanduser(shown))
    try:
        if p.is_dir():
            raise InvalidRequest(f"{shown}: is a directory, not a TOML config file", field="config")
        with open(p, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise from_os_error(e, f"config file {shown}", field="config") from None
    if len(raw) > MAX_FILE_BYTES:
        raise InvalidRequest(f"{shown}: larger than {MAX_FILE_BYTES >> 10} KiB; is it a config file?", field="config")
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidRequest(f"{shown}: not UTF-8 text, not a TOML config file", field="config") from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidRequest(f"{shown}: not valid TOML: {e}", field="config") from None
    return from_mapping(doc, shown)


def from_mapping(doc: dict[str, Any], shown: str) -> ConfigFile:
    values: dict[str, Any] = {}
    keys: dict[str, str] = {}
    for key, value in doc.items():
        spec = KEYS.get(key)
        if spec is None:
            import difflib

            close = difflib.get_close_matches(key.replace("-", "_"), KEYS, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise InvalidRequest(f"{shown}: unknown key {key!r}{hint}; keys are train's flags with _ for -: "
                                 f"{', '.join(KEYS)}", field="config")
        if spec.field in keys:
            raise InvalidRequest(f"{shown}: {key} and {keys[spec.field]} set the same thing; keep one",
                                 field=spec.field)
        values[spec.field] = _checked(value, spec, key, shown)
        keys[spec.field] = key
    return ConfigFile(shown, values, keys)


def _checked(value: Any, spec: Key, key: str, shown: str) -> Any:
    kind = spec.kind
    ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "str": lambda v: isinstance(v, str),
          "bool": lambda v: isinstance(v, bool),
          "betas": lambda v: isinstance(v, list) and len(v) == 2
          and all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in v)}[kind](value)
    if not ok:
        text = repr(value)
        text = text if len(text) <= 40 else text[:30] + "…"
        raise InvalidRequest(f"{shown}: {key} must be {_KIND_WORDS[kind]}, not {text} ({_toml_type(value)})",
                             field=spec.field)
    if kind == "float":
        value = float(value)
        if not math.isfinite(value):
            raise InvalidRequest(f"{shown}: {key} must be a finite number, not {value}", field=spec.field)
    if kind == "betas":
        value = [float(b) for b in value]
    if kind == "str" and spec.field in ("optimizer", "schedule", "loss", "precision", "device"):
        value = value.strip().lower()
    return value


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


# -- writing -------------------------------------------------------------------------------------
def dumps(cfg: RunConfig) -> str:
    """A config file holding cfg's settings (those not set are left out: TOML has no null)."""
    lines = ["# torchdeck train --config FILE: keys are train's flags with _ for -; flags override them"]
    for field, key in KEY_FOR_FIELD.items():
        if field == "no_checkpoints":
            if not cfg.checkpoint_every_epoch and not cfg.checkpoint_on_stop:
                lines.append("no_checkpoints = true")
            continue
        value = getattr(cfg, field)
        if value is None or (field == "name" and not value):
            continue
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {type(value).__name__}")


def save(cfg: RunConfig, path: str | os.PathLike) -> Path:
    """Write cfg to path atomically (a temporary sibling renamed over it); the path written."""
    shown = str(path)
    p = Path(os.path.expanduser(shown))
    if p.is_dir():
        raise InvalidRequest(f"{shown} is a directory; give a file name, like run.toml", field="config")
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(dumps(cfg))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise from_os_error(e, f"config file {shown}", field="config") from None
    return p
